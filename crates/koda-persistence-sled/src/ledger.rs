//! Usage history that survives pruning: the Ledger capability over the
//! `W` namespace (see `crate::keys`): one entry per day × session ×
//! agent, holding the session's root and the six sums in clear (as the
//! `R` index holds roots), added to in the batch of every insert and
//! import ([`Counts`]); a fork, a restore and a compaction's summary add
//! nothing.

use std::collections::BTreeMap;

use anyhow::Result;
use koda_persistence_api::ledger::{
    GroupKey, Ledger, LedgerSums, UsageBy, UsageQuery, UsageRow, day_of, finish, ledger_agent,
};

use crate::SledStore;
use crate::db::{Tree, Writes};
use crate::keys;
use crate::rows::{decode, encode};

/// A ledger entry's value: the session's root and the sums.
type Entry = (Option<String>, LedgerSums);

/// What one write adds to the ledger, by entry key.
#[derive(Default)]
pub(crate) struct Counts {
    adds: BTreeMap<Vec<u8>, Entry>,
}

impl Counts {
    /// Counts one inserted message of session `sid` (of root `root`).
    pub(crate) fn add(
        &mut self,
        sid: &str,
        root: Option<&str>,
        created_ms: i64,
        agent: Option<&str>,
        usage: [Option<i64>; 5],
    ) {
        let key = keys::ledger(day_of(created_ms), sid, ledger_agent(agent));
        let slot = self.adds.entry(key).or_insert_with(|| (root.map(str::to_owned), LedgerSums::default()));
        slot.1.add(&LedgerSums::of_message(usage));
    }

    /// Puts the entries, with what they held before, into `w`.
    pub(crate) fn finish(self, db: &Tree, w: &mut Writes) -> Result<()> {
        for (key, (root, add)) in self.adds {
            let mut sums = match db.index(&key)? {
                Some(v) => decode::<Entry>(&v, "a usage ledger entry")?.1,
                None => LedgerSums::default(),
            };
            sums.add(&add);
            w.index(key, encode(&(root, sums))?);
        }
        Ok(())
    }
}

/// The root of session `sid` as an export gives it (`None` for an older
/// koda's root-less session).
pub(crate) fn root_of(db: &Tree, sid: &str, s: &crate::rows::StoredSession) -> Result<Option<String>> {
    let rootless =
        db.index(keys::rootless(u64::try_from(s.created_ms).unwrap_or(0), s.seq))?.is_some_and(|v| v == sid.as_bytes());
    Ok((!rootless).then(|| s.project_root.clone()))
}

/// Fills the ledger from the messages the store holds, once (an earlier
/// build kept none); returns how many messages it counted.
pub(crate) fn fill(db: &Tree) -> Result<usize> {
    if db.index(keys::ledger_filled())?.is_some() {
        return Ok(0);
    }
    let mut counts = Counts::default();
    let mut n = 0;
    for s in db.sessions() {
        let (sid, session) = s?;
        let root = root_of(db, &sid, &session?)?;
        for m in db.messages(keys::messages_of(&sid)) {
            let (_, m) = m?;
            let usage = m.usage.map_or([None; 5], |u| u.map(Some));
            counts.add(&sid, root.as_deref(), m.created_ms, m.agent_name.as_deref(), usage);
            n += 1;
        }
    }
    let mut w = db.writes();
    counts.finish(db, &mut w)?;
    w.index(keys::ledger_filled(), &b"1"[..]);
    db.apply(w)?;
    if n > 0 {
        tracing::info!(messages = n, "usage ledger filled from the messages this store still holds");
    }
    Ok(n)
}

fn usage(db: &Tree, q: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
    let (first, end) = q.days();
    let root = q.root()?;
    let mut rows = Vec::new();
    for kv in db.index_range(keys::ledger_day(first), keys::ledger_day(end)) {
        let (key, value) = kv?;
        let Some((day, sid, agent)) = keys::ledger_parts(&key) else { continue };
        let (r, sums): Entry = decode(&value, "a usage ledger entry")?;
        if root.is_some_and(|want| r.as_deref() != Some(want)) || q.agent.is_some_and(|want| want != agent) {
            continue;
        }
        let deleted = q.by == UsageBy::Session && db.session(&sid)?.is_none();
        let key = match q.by {
            UsageBy::Day | UsageBy::Week | UsageBy::Month => GroupKey::Day(day),
            UsageBy::Root => GroupKey::Text(r.unwrap_or_default()),
            UsageBy::Agent => GroupKey::Text(agent),
            UsageBy::Session => GroupKey::Text(sid),
        };
        rows.push((key, sums, deleted));
    }
    Ok(finish(q.by, rows))
}

#[async_trait::async_trait]
impl Ledger for SledStore {
    async fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
        let q = query.to_owned_query();
        self.read(move |db| usage(db, &q.query())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::{append_message, create_session};
    use koda_persistence_api::backend::NewMessage;
    use koda_persistence_api::{Role, TokenUsage};

    /// A store an earlier build wrote has no ledger: the first open fills it
    /// from the stored messages, once.
    #[test]
    fn an_earlier_builds_store_gets_its_ledger_filled_once() -> Result<()> {
        let db = sled::Config::new().temporary(true).open()?;
        let db = Tree::unlock(db, None, std::path::Path::new("temporary"), None)?;
        db.apply(create_session(&db, "s", "main", "/r", 1)?)?;
        for (agent, at) in [(None, 5), (Some("x"), 86_400_000 * 3)] {
            let mut m = NewMessage::message("s", Role::Assistant, Some("a"), None, None, None, agent);
            m.usage = Some(TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 2,
                cache_read_tokens: 1,
                cache_creation_tokens: 0,
                thinking_tokens: 3,
            });
            db.apply(append_message(&db, m, at)?.0)?;
        }
        let q = UsageQuery { since_ms: 0, until_ms: i64::MAX / 2, by: UsageBy::Agent, project_root: None, agent: None };
        let want = usage(&db, &q)?;
        assert_eq!(want.len(), 2, "{want:?}");
        // The store as an earlier build left it: no ledger, no marker.
        let mut w = db.writes();
        for kv in db.index_scan([keys::LEDGER]) {
            w.remove(kv?.0);
        }
        w.remove(keys::ledger_filled());
        db.apply(w)?;
        assert_eq!(usage(&db, &q)?, vec![]);
        assert_eq!(fill(&db)?, 2);
        assert_eq!(usage(&db, &q)?, want);
        assert_eq!(fill(&db)?, 0, "filled once");
        assert_eq!(usage(&db, &q)?, want);
        Ok(())
    }
}
