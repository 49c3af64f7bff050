//! Compaction and purging of old history: compact_session, clear_message_content, compacted_stats and purge_compacted.

use crate::bodies::Refs;
use crate::bodies::body_len;
use crate::db::{Tree, Writes};
use crate::keys;
use crate::queries::as_u64;
use crate::queries::get_session;
use crate::queries::next_id;
use crate::queries::session_messages;
use crate::rows::{StoredMessage, StoredSession, role_byte, session_of};
use anyhow::Result;
use koda_persistence_api::backend::{format_timestamp, purge_cutoff, session_not_found};
use koda_persistence_api::bodies::BodyHash;
use koda_persistence_api::{COMPACTION_HINT, CompactedStats, PersistenceError, Role};
use sled::IVec;
use std::collections::HashMap;

pub(crate) fn compact(db: &Tree, sid: &str, summary: &str, keep: usize, now: i64) -> Result<(Writes, usize)> {
    let mut session = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let all = session_messages(db, sid)?;
    let active: Vec<usize> = (0..all.len()).filter(|&i| all[i].1.compacted_ms.is_none()).collect();
    let marked = active.len().saturating_sub(keep);
    let mut w = db.writes();
    if marked == 0 {
        return Ok((w, 0));
    }
    for &i in &active[..marked] {
        let (key, m) = &all[i];
        let mut m = m.clone();
        m.compacted_ms = Some(now);
        w.index(keys::compacted(as_u64(now), m.id), key.clone());
        w.message(key.clone(), &m)?;
    }
    // The summary and hint take the first preserved message's place;
    // it and everything after it move two places on.
    let first = active.get(marked).copied();
    let at = match first {
        Some(i) => keys::ord_of(&all[i].0).ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?,
        None => session.next_ord + 1,
    };
    if let Some(i) = first {
        let tail = &all[i..];
        for (key, _) in tail {
            w.remove(key.clone());
        }
        for (key, m) in tail {
            let ord = keys::ord_of(key).ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
            let moved = keys::message(sid, ord + 2);
            w.index(keys::numbered(keys::BY_ID, m.id), moved.clone());
            if m.role == role_byte(Role::User) {
                w.index(keys::numbered(keys::USER, m.id), moved.clone());
            }
            w.message(moved, m)?;
        }
    }
    let mut refs = Refs::default();
    for (offset, role, text, completed) in
        [(0, Role::System, summary, None), (1, Role::Assistant, COMPACTION_HINT, Some(now))]
    {
        let id = next_id(db)?;
        let key = keys::message(sid, at + offset);
        let mut record = StoredMessage {
            id,
            role: role_byte(role),
            content: Some(text.to_owned()),
            full_content: None,
            tool_calls: None,
            tool_call_id: None,
            usage: None,
            agent_name: None,
            created_ms: now,
            completed_ms: completed,
            compacted_ms: None,
            bodies: [None; 3],
        };
        refs.intern(db, &mut record)?;
        w.index(keys::numbered(keys::BY_ID, id), key.clone());
        w.message(key, &record)?;
    }
    refs.finish(db, &mut w)?;
    session.next_ord += 2;
    session.message_count += 2;
    w.session(sid, &session)?;
    Ok((w, marked))
}

/// Sets the content of the listed messages; returns the batch and the sessions touched.
pub(crate) fn clear_content(db: &Tree, ids: &[i64], stub: &str) -> Result<(Writes, Vec<String>)> {
    let mut changed: HashMap<IVec, StoredMessage> = HashMap::new();
    let mut refs = Refs::default();
    for id in ids.iter().filter_map(|id| u64::try_from(*id).ok()) {
        let Some(key) = db.index(keys::numbered(keys::BY_ID, id))? else {
            continue;
        };
        if changed.contains_key(&key) {
            continue;
        }
        let Some(mut m) = db.message(&key)? else { continue };
        if let Some(old) = m.bodies[0].take() {
            refs.release_one(old);
        }
        m.content = Some(stub.to_owned());
        refs.intern(db, &mut m)?;
        changed.insert(key, m);
    }
    let mut w = db.writes();
    let mut touched = Vec::new();
    for (key, m) in changed {
        touched.extend(session_of(&key));
        w.message(key, &m)?;
    }
    refs.finish(db, &mut w)?;
    Ok((w, touched))
}

pub(crate) fn compacted_stats(db: &Tree) -> Result<CompactedStats> {
    let mut stats = CompactedStats::default();
    let mut sessions = std::collections::HashSet::new();
    let mut oldest = None;
    for kv in db.index_scan([keys::COMPACTED]) {
        let (_, key) = kv?;
        let Some(m) = db.message(&key)? else { continue };
        oldest = oldest.or(m.compacted_ms);
        stats.message_count += 1;
        if let Some(s) = session_of(&key) {
            sessions.insert(s);
        }
        let len = |text: &Option<String>, body: &Option<BodyHash>| -> Result<usize> {
            match body {
                Some(hash) => body_len(db, hash),
                None => Ok(text.as_deref().map_or(0, str::len)),
            }
        };
        let bytes = len(&m.content, &m.bodies[0])? + len(&m.tool_calls, &m.bodies[2])?;
        stats.size_bytes = stats.size_bytes.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    stats.session_count = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
    stats.oldest = oldest.map(format_timestamp);
    Ok(stats)
}

/// Deletes the old compacted messages; returns the batch, the count and the sessions touched.
#[allow(clippy::type_complexity)]
pub(crate) fn purge(db: &Tree, days: u32, now: i64) -> Result<(Writes, (usize, Vec<String>))> {
    let cutoff = purge_cutoff(now, days);
    let end = if days == 0 { vec![keys::COMPACTED + 1] } else { keys::compacted_before(as_u64(cutoff)) };
    let mut w = db.writes();
    let mut sessions: HashMap<String, StoredSession> = HashMap::new();
    let mut refs = Refs::default();
    let mut n = 0;
    if days != 0 && cutoff <= 0 {
        return Ok((w, (0, Vec::new())));
    }
    for kv in db.index_range(vec![keys::COMPACTED], end) {
        let (ckey, key) = kv?;
        let Some(m) = db.message(&key)? else { continue };
        let sid = session_of(&key).ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
        if !sessions.contains_key(&sid) {
            let s = get_session(db, &sid)?
                .ok_or_else(|| PersistenceError::Corrupt(format!("message of missing session {sid:?}")))?;
            sessions.insert(sid.clone(), s);
        }
        if let Some(s) = sessions.get_mut(&sid) {
            s.message_count -= 1;
            s.uncount(m.agent_name.as_deref(), m.counters());
        }
        refs.release(&m);
        w.remove(ckey);
        w.remove(key);
        w.remove(keys::numbered(keys::BY_ID, m.id));
        w.remove(keys::numbered(keys::USER, m.id));
        n += 1;
    }
    let mut touched = Vec::with_capacity(sessions.len());
    for (sid, s) in sessions {
        w.session(&sid, &s)?;
        touched.push(sid);
    }
    refs.finish(db, &mut w)?;
    Ok((w, (n, touched)))
}
