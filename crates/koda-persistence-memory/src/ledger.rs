//! Usage history that survives pruning: the Ledger capability.

use anyhow::Result;
use koda_persistence_api::ledger::{GroupKey, Ledger, UsageBy, UsageQuery, UsageRow, finish};

use crate::MemoryStore;

#[async_trait::async_trait]
impl Ledger for MemoryStore {
    async fn usage(&self, q: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
        let (first, end) = q.days();
        let root = q.root()?;
        let st = self.lock();
        let rows = st.ledger.iter().filter_map(|((sid, day, agent), (r, sums))| {
            let wanted = (first..end).contains(day)
                && root.is_none_or(|want| r.as_deref() == Some(want))
                && q.agent.is_none_or(|want| want == agent);
            if !wanted {
                return None;
            }
            let key = match q.by {
                UsageBy::Day | UsageBy::Week | UsageBy::Month => GroupKey::Day(*day),
                UsageBy::Root => GroupKey::Text(r.clone().unwrap_or_default()),
                UsageBy::Agent => GroupKey::Text(agent.clone()),
                UsageBy::Session => GroupKey::Text(sid.clone()),
            };
            let deleted = q.by == UsageBy::Session && !st.sessions.contains_key(sid);
            Some((key, *sums, deleted))
        });
        Ok(finish(q.by, rows.collect::<Vec<_>>()))
    }
}
