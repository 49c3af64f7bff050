//! Whole sessions out and in, every field kept: the Transfer capability.

use crate::db::{Tree, Writes};
use crate::keys;
use crate::rows::{StoredMessage, StoredSession, decode, encode, role_byte, role_of, usage_of};
use anyhow::Result;
use koda_persistence_api::Transfer;
use koda_persistence_api::backend::{check_kept, id_taken, session_not_found};
use koda_persistence_api::{MessageRecord, MetadataRecord, SessionRecord};
use koda_persistence_api::{PersistenceError, Role};

use crate::SledStore;
use crate::bodies::Refs;
use crate::queries;
use crate::queries::as_u64;
use crate::queries::get_session;
use crate::queries::id_floor;
use crate::queries::next_id;
use crate::queries::read_messages;

/// Every session id, oldest first.
pub(crate) fn export_session_ids(db: &Tree) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for kv in db.sessions() {
        let (id, s) = kv?;
        let s = s?;
        all.push(((s.created_ms, s.seq), id));
    }
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

pub(crate) fn export_session(db: &Tree, sid: &str) -> Result<Option<SessionRecord>> {
    let Some(s) = get_session(db, sid)? else {
        return Ok(None);
    };
    let rootless = db.index(keys::rootless(as_u64(s.created_ms), s.seq))?.is_some_and(|v| v == sid.as_bytes());
    Ok(Some(SessionRecord {
        id: sid.to_owned(),
        agent_name: s.agent_name,
        project_root: (!rootless).then_some(s.project_root),
        created_ms: s.created_ms,
        last_accessed_ms: s.last_accessed_ms,
        title: s.title,
        mode: s.mode,
    }))
}

pub(crate) fn export_messages(db: &Tree, sid: &str) -> Result<Vec<MessageRecord>> {
    read_messages(db, sid)?
        .into_iter()
        .map(|m| {
            let [p, c, cr, cc, t] = m.counters();
            Ok(MessageRecord {
                id: i64::try_from(m.id).map_err(|_| PersistenceError::Corrupt(format!("message id {}", m.id)))?,
                role: role_of(m.role)?,
                content: m.content,
                full_content: m.full_content,
                tool_calls: m.tool_calls,
                tool_call_id: m.tool_call_id,
                prompt_tokens: p,
                completion_tokens: c,
                cache_read_tokens: cr,
                cache_creation_tokens: cc,
                thinking_tokens: t,
                agent: m.agent_name,
                created_ms: m.created_ms,
                completed_ms: m.completed_ms,
                compacted_ms: m.compacted_ms,
            })
        })
        .collect()
}

pub(crate) fn export_metadata(db: &Tree, sid: &str) -> Result<Vec<MetadataRecord>> {
    Ok(db.values(sid)?.into_iter().map(|(key, value)| MetadataRecord { key, value }).collect())
}

pub(crate) fn message_id_range(db: &Tree) -> Result<Option<(i64, i64)>> {
    let id_of = |k: &[u8]| -> Result<i64> {
        let bytes: [u8; 8] = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PersistenceError::Corrupt("bad message id key".into()))?;
        Ok(i64::try_from(u64::from_be_bytes(bytes)).unwrap_or(i64::MAX))
    };
    let mut ids = db.keys([keys::BY_ID]);
    let Some(first) = ids.next() else {
        return Ok(None);
    };
    let lo = id_of(&first?)?;
    let hi = match ids.next_back() {
        Some(last) => id_of(&last?)?,
        None => lo,
    };
    Ok(Some((lo, hi)))
}

/// The last id handed out or claimed (`generate_id` consumes one: ids
/// need not be contiguous).
pub(crate) fn id_position(db: &Tree) -> Result<u64> {
    Ok(id_floor(db)?.saturating_add(db.generate_id()?))
}

pub(crate) fn claim_ids(db: &Tree, first: u64, last: u64) -> Result<(Writes, bool)> {
    let mut w = db.writes();
    if id_position(db)? >= first {
        return Ok((w, false));
    }
    w.index(keys::id_floor(), encode(&last)?);
    Ok((w, true))
}

pub(crate) fn import_session(db: &Tree, s: &SessionRecord) -> Result<(Writes, bool)> {
    let mut w = db.writes();
    if get_session(db, &s.id)?.is_some() {
        return Ok((w, false));
    }
    crate::trash::refuse_trashed(db, &s.id)?;
    new_session(db, s, &mut w)?;
    Ok((w, true))
}

/// Puts session `s` (known to be new) into `w`; returns its record.
pub(crate) fn new_session(db: &Tree, s: &SessionRecord, w: &mut Writes) -> Result<StoredSession> {
    let seq = match db.index(keys::seq_counter())? {
        Some(v) => decode::<u64>(&v, "the session counter")? + 1,
        None => 1,
    };
    let record = StoredSession {
        agent_name: s.agent_name.clone(),
        project_root: s.project_root.clone().unwrap_or_default(),
        created_ms: s.created_ms,
        seq,
        last_accessed_ms: s.last_accessed_ms,
        title: s.title.clone(),
        mode: s.mode.clone(),
        message_count: 0,
        next_ord: 0,
        usage: Vec::new(),
    };
    w.index(keys::seq_counter(), encode(&seq)?);
    let listed = match &s.project_root {
        Some(root) => keys::by_root(root, as_u64(s.created_ms), seq),
        None => keys::rootless(as_u64(s.created_ms), seq),
    };
    w.index(listed, s.id.as_bytes());
    w.session(&s.id, &record)?;
    Ok(record)
}

/// Counters a record leaves unset are stored as [`crate::codec::UNSET`].
pub(crate) fn import_messages(
    db: &Tree,
    sid: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
) -> Result<(Writes, Vec<i64>)> {
    let session = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let root = crate::ledger::root_of(db, sid, &session)?;
    let mut w = db.writes();
    let ids = append_imported(db, sid, session, messages, keep_ids, &mut w)?;
    // An import carries its spend, on the messages' own days (a fork,
    // which also goes through append_imported, does not).
    let mut counts = crate::ledger::Counts::default();
    for m in messages {
        counts.add(sid, root.as_deref(), m.created_ms, m.agent.as_deref(), m.counters());
    }
    counts.finish(db, &mut w)?;
    Ok((w, ids))
}

/// Puts `messages` after the last message of session `sid` (whose record
/// is `session`) into `w`, with the session's new record.
pub(crate) fn append_imported(
    db: &Tree,
    sid: &str,
    mut session: StoredSession,
    messages: &[MessageRecord],
    keep_ids: bool,
    w: &mut Writes,
) -> Result<Vec<i64>> {
    let ids: Vec<i64> = if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        let position = i64::try_from(id_position(db)?).unwrap_or(i64::MAX);
        check_kept(&ids, position)?;
        for &id in &ids {
            if db.has(keys::numbered(keys::BY_ID, as_u64(id)))? {
                return Err(id_taken(id).into());
            }
        }
        ids
    } else {
        messages.iter().map(|_| Ok(i64::try_from(next_id(db)?).unwrap_or(i64::MAX))).collect::<Result<_>>()?
    };
    let mut refs = Refs::default();
    let mut tally = session.tally();
    for (m, &id) in messages.iter().zip(&ids) {
        let usage = usage_of(m.counters());
        tally.add(m.agent.as_deref(), m.counters());
        session.next_ord += 1;
        session.message_count += 1;
        let key = keys::message(sid, session.next_ord);
        let id = as_u64(id);
        let mut record = StoredMessage {
            id,
            role: role_byte(m.role),
            content: m.content.clone(),
            full_content: m.full_content.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            usage,
            agent_name: m.agent.clone(),
            created_ms: m.created_ms,
            completed_ms: m.completed_ms,
            compacted_ms: m.compacted_ms,
            bodies: [None; 3],
        };
        refs.intern(db, &mut record)?;
        w.index(keys::numbered(keys::BY_ID, id), key.clone());
        if m.role == Role::User {
            w.index(keys::numbered(keys::USER, id), key.clone());
        }
        if let Some(at) = m.compacted_ms {
            w.index(keys::compacted(as_u64(at), id), key.clone());
        }
        w.message(key, &record)?;
    }
    refs.finish(db, w)?;
    session.set_tally(&tally);
    w.session(sid, &session)?;
    Ok(ids)
}

pub(crate) fn import_metadata(db: &Tree, sid: &str, entries: &[MetadataRecord]) -> Result<Writes> {
    if get_session(db, sid)?.is_none() {
        return Err(session_not_found(sid));
    }
    let mut w = db.writes();
    for e in entries {
        w.value(sid, &e.key, &e.value)?;
    }
    Ok(w)
}

#[async_trait::async_trait]
impl Transfer for SledStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.read(export_session_ids).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| export_session(db, &sid)).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| export_messages(db, &sid)).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| export_metadata(db, &sid)).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.read(message_id_range).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        let (first, last) = (queries::as_u64(first), queries::as_u64(last));
        self.write(move |db| claim_ids(db, first, last)).await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        let session = session.clone();
        self.write(move |db| import_session(db, &session)).await
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        let sid = session_id.to_owned();
        let changed = sid.clone();
        let messages = messages.to_vec();
        self.write_then(
            move |db| import_messages(db, &sid, &messages, keep_ids),
            move |cache, ids| {
                cache.changed(&changed);
                ids
            },
        )
        .await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let sid = session_id.to_owned();
        let entries = entries.to_vec();
        self.write(move |db| Ok((import_metadata(db, &sid, &entries)?, ()))).await
    }
}
