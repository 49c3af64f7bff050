//! One function per operation: each reads through `db` and returns what
//! the call answers, or the batch a write applies (the store applies it
//! atomically under its write lock, see `lib.rs`). Key layout in
//! [`crate::schema`], values in [`crate::rows`].

use std::collections::HashMap;

use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, UsageTally, check_kept, format_timestamp, id_taken, purge_cutoff,
    session_not_found,
};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, PersistenceError, Role, SessionInfo, SessionUsage,
};
use koda_persistence_api::{MessageRecord, MetadataRecord, SessionRecord};
use sled::{Batch, IVec};

use crate::cipher::Tree;

use koda_persistence_api::BodyStats;
use koda_persistence_api::bodies::{
    BodyField, BodyHash, body_name, is_body, pack, packed_len, unpack,
};

use crate::rows::{
    StoredMessage, StoredSession, decode, encode, role_byte, role_of, session_of, to_message,
    usage_of,
};
use crate::schema;

/// The fields that may be bodies, in `StoredMessage::bodies` order.
const FIELDS: [BodyField; 3] = [
    BodyField::Content,
    BodyField::FullContent,
    BodyField::ToolCalls,
];

/// The body reference changes of one write, put into its batch by
/// [`Refs::finish`]: the count (`b`) moves by the sum of the changes, a
/// new body (`B`) is written with its first reference and removed with
/// its last, all in the write's one atomic batch (under the write lock,
/// so no other write reads the counts in between).
#[derive(Default)]
pub(crate) struct Refs {
    changes: HashMap<BodyHash, (i64, Option<Vec<u8>>)>,
}

impl Refs {
    /// Moves every field of `m` that is a body into a body (one more
    /// reference each).
    fn intern(&mut self, db: &Tree, m: &mut StoredMessage) -> Result<()> {
        let role = role_of(m.role)?;
        let mut found = [None, None, None];
        for (i, slot) in m.fields_mut().into_iter().enumerate() {
            let field = FIELDS[i];
            if let Some(text) = slot.take_if(|v| is_body(&role, field, v)) {
                found[i] = Some(text);
            }
        }
        for (i, text) in found.into_iter().enumerate() {
            let Some(text) = text else { continue };
            let hash = db.address(&text);
            let change = self.changes.entry(hash).or_insert((0, None));
            change.0 += 1;
            if change.1.is_none() && !db.contains_key(schema::body(&hash))? {
                change.1 = Some(db.seal_body(&hash, pack(&text)?)?);
            }
            m.bodies[i] = Some(hash);
        }
        Ok(())
    }

    /// One reference fewer to each body of `m`.
    pub(crate) fn release(&mut self, m: &StoredMessage) {
        for hash in m.bodies.iter().flatten() {
            self.release_one(*hash);
        }
    }

    fn release_one(&mut self, hash: BodyHash) {
        self.changes.entry(hash).or_insert((0, None)).0 -= 1;
    }

    /// Puts the counts, new bodies and dropped bodies into `batch`.
    pub(crate) fn finish(self, db: &Tree, batch: &mut Batch) -> Result<()> {
        for (hash, (change, data)) in self.changes {
            if change == 0 {
                continue;
            }
            let now = body_count(db, &hash)?;
            let next = i64::try_from(now)
                .unwrap_or(i64::MAX)
                .saturating_add(change);
            if next <= 0 {
                batch.remove(schema::body(&hash));
                batch.remove(schema::body_refs(&hash));
            } else {
                batch.insert(
                    schema::body_refs(&hash),
                    &u64::try_from(next).unwrap_or(0).to_be_bytes()[..],
                );
                if let Some(data) = data {
                    batch.insert(schema::body(&hash), data);
                }
            }
        }
        Ok(())
    }
}

/// How many message fields refer to the body `hash` (0: no such body).
fn body_count(db: &Tree, hash: &BodyHash) -> Result<u64> {
    Ok(match db.get(schema::body_refs(hash))? {
        Some(v) => u64::from_be_bytes(<[u8; 8]>::try_from(&v[..]).map_err(|_| {
            PersistenceError::Corrupt("a body reference count is not 8 bytes".into())
        })?),
        None => 0,
    })
}

/// `m` with the text of each of its bodies in place, for a read (never
/// written back: writes keep the addresses).
pub(crate) fn resolve(db: &Tree, mut m: StoredMessage) -> Result<StoredMessage> {
    let bodies = m.bodies;
    let id = m.id;
    for (slot, hash) in m.fields_mut().into_iter().zip(bodies) {
        if let Some(hash) = hash {
            let data = db.get(schema::body(&hash))?.ok_or_else(|| {
                PersistenceError::Corrupt(format!("message {id}: a body it refers to is missing"))
            })?;
            *slot = Some(unpack(&db.open_body(&hash, &data)?)?);
        }
    }
    Ok(m)
}

/// The text length of body `hash`, from its frame header.
fn body_len(db: &Tree, hash: &BodyHash) -> Result<usize> {
    let data = db
        .get(schema::body(hash))?
        .ok_or_else(|| PersistenceError::Corrupt("a body a message refers to is missing".into()))?;
    Ok(packed_len(&db.open_body(hash, &data)?)?)
}

pub(crate) fn get_session(db: &Tree, id: &str) -> Result<Option<StoredSession>> {
    match db.get(schema::session(id))? {
        Some(v) => Ok(Some(db.open_session(id, &v, &format!("session {id:?}"))?)),
        None => Ok(None),
    }
}

/// A session's messages in conversation order, bodies resolved, for a read.
fn read_messages(db: &Tree, id: &str) -> Result<Vec<StoredMessage>> {
    session_messages(db, id)?
        .into_iter()
        .map(|(_, m)| resolve(db, m))
        .collect()
}

/// A session's messages in conversation order, with their keys (bodies
/// by address, as stored).
fn session_messages(db: &Tree, id: &str) -> Result<Vec<(IVec, StoredMessage)>> {
    db.scan_prefix(schema::messages_of(id))
        .map(|kv| {
            let (k, v) = kv?;
            let m = db.open_message(&k, &v)?;
            Ok((k, m))
        })
        .collect()
}

pub(crate) fn as_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

pub(crate) fn create_session(
    db: &Tree,
    sid: &str,
    agent: &str,
    root: &str,
    now: i64,
) -> Result<Batch> {
    let seq = match db.get(schema::seq_counter())? {
        Some(v) => decode::<u64>(&v, "the session counter")? + 1,
        None => 1,
    };
    let record = StoredSession {
        agent_name: agent.to_owned(),
        project_root: root.to_owned(),
        created_ms: now,
        seq,
        last_accessed_ms: None,
        title: None,
        mode: None,
        message_count: 0,
        next_ord: 0,
        usage: Vec::new(),
    };
    let mut batch = Batch::default();
    batch.insert(schema::seq_counter(), encode(&seq)?);
    batch.insert(schema::by_root(root, as_u64(now), seq), sid.as_bytes());
    batch.insert(schema::session(sid), db.seal_session(sid, &record)?);
    Ok(batch)
}

/// The highest id an importer claimed (0: none).
fn id_floor(db: &Tree) -> Result<u64> {
    match db.get(schema::id_floor())? {
        Some(v) => Ok(decode::<u64>(&v, "the id floor")?),
        None => Ok(0),
    }
}

/// A fresh message id: above every id handed out or claimed.
fn next_id(db: &Tree) -> Result<u64> {
    Ok(id_floor(db)?
        .saturating_add(db.generate_id()?)
        .saturating_add(1))
}

/// The root's sessions and the root-less ones, merged newest first (both
/// indexes order by `!created, !seq` after their prefix): O(limit).
fn listed_ids(db: &Tree, root: &str, limit: usize) -> Result<Vec<IVec>> {
    let prefix = schema::root_prefix(root);
    let rooted: Vec<(IVec, IVec)> = db
        .scan_prefix(&prefix)
        .take(limit)
        .collect::<Result<_, _>>()?;
    let rootless: Vec<(IVec, IVec)> = db
        .scan_prefix([schema::ROOTLESS])
        .take(limit)
        .collect::<Result<_, _>>()?;
    let mut both: Vec<(&[u8], IVec)> = rooted
        .iter()
        .map(|(k, v)| (&k[prefix.len()..], v.clone()))
        .chain(rootless.iter().map(|(k, v)| (&k[1..], v.clone())))
        .collect();
    both.sort_by(|a, b| a.0.cmp(b.0));
    Ok(both.into_iter().take(limit).map(|(_, v)| v).collect())
}

pub(crate) fn list_sessions(db: &Tree, root: &str, limit: usize) -> Result<Vec<SessionInfo>> {
    let mut out = Vec::new();
    for sid in listed_ids(db, root, limit)? {
        let id = String::from_utf8(sid.to_vec())
            .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))?;
        let s = get_session(db, &id)?.ok_or_else(|| {
            PersistenceError::Corrupt(format!("root index names missing session {id:?}"))
        })?;
        let tokens = s.tally().tokens();
        out.push(SessionInfo {
            agent_name: s.agent_name,
            created_at: format_timestamp(s.created_ms),
            message_count: s.message_count,
            total_tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
            title: s.title,
            mode: s.mode,
            id,
        });
    }
    Ok(out)
}

pub(crate) fn delete_session(db: &Tree, sid: &str) -> Result<(Batch, bool)> {
    let mut batch = Batch::default();
    let Some(s) = get_session(db, sid)? else {
        return Ok((batch, false));
    };
    let mut refs = Refs::default();
    for (key, m) in session_messages(db, sid)? {
        refs.release(&m);
        batch.remove(key);
        unindex_message(&mut batch, &m);
    }
    for kv in db.scan_prefix(schema::metadata_of(sid)) {
        batch.remove(kv?.0);
    }
    unlist_session(&mut batch, &s, sid);
    refs.finish(db, &mut batch)?;
    Ok((batch, true))
}

/// Removes a message's index keys (`I`, `U`, `C`).
pub(crate) fn unindex_message(batch: &mut Batch, m: &StoredMessage) {
    batch.remove(schema::numbered(schema::BY_ID, m.id));
    batch.remove(schema::numbered(schema::USER, m.id));
    if let Some(at) = m.compacted_ms {
        batch.remove(schema::compacted(as_u64(at), m.id));
    }
}

/// Removes a session's record and its listing keys (`S`, `R`, `L`).
pub(crate) fn unlist_session(batch: &mut Batch, s: &StoredSession, sid: &str) {
    batch.remove(schema::by_root(
        &s.project_root,
        as_u64(s.created_ms),
        s.seq,
    ));
    batch.remove(schema::rootless(as_u64(s.created_ms), s.seq));
    batch.remove(schema::session(sid));
}

/// Sets the session's mode (`mode`) or title.
pub(crate) fn set_session_text(db: &Tree, sid: &str, mode: bool, value: &str) -> Result<Batch> {
    let mut s = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    if mode {
        s.mode = Some(value.to_owned());
    } else {
        s.title = Some(value.to_owned());
    }
    let mut batch = Batch::default();
    batch.insert(schema::session(sid), db.seal_session(sid, &s)?);
    Ok(batch)
}

pub(crate) fn append_message(db: &Tree, m: NewMessage, now: i64) -> Result<(Batch, StoredMessage)> {
    let mut session =
        get_session(db, &m.session_id)?.ok_or_else(|| session_not_found(&m.session_id))?;
    let id = next_id(db)?;
    session.next_ord += 1;
    session.message_count += 1;
    session.last_accessed_ms = Some(now);
    let usage = m.usage.map(|u| {
        [
            u.prompt_tokens,
            u.completion_tokens,
            u.cache_read_tokens,
            u.cache_creation_tokens,
            u.thinking_tokens,
        ]
    });
    if let Some(u) = usage {
        session.count(m.agent.as_deref(), u.map(Some));
    }
    let key = schema::message(&m.session_id, session.next_ord);
    let record = StoredMessage {
        id,
        role: role_byte(m.role),
        content: m.content,
        full_content: m.full_content,
        tool_calls: m.tool_calls,
        tool_call_id: m.tool_call_id,
        usage,
        agent_name: m.agent,
        created_ms: now,
        completed_ms: None,
        compacted_ms: None,
        bodies: [None; 3],
    };
    let mut batch = Batch::default();
    let mut stored = record.clone();
    let mut refs = Refs::default();
    refs.intern(db, &mut stored)?;
    refs.finish(db, &mut batch)?;
    batch.insert(
        schema::session(&m.session_id),
        db.seal_session(&m.session_id, &session)?,
    );
    batch.insert(schema::numbered(schema::BY_ID, id), key.clone());
    if m.role == Role::User {
        batch.insert(schema::numbered(schema::USER, id), key.clone());
    }
    let sealed = db.seal_message(&key, &stored)?;
    batch.insert(key, sealed);
    Ok((batch, record))
}

/// The session's active rows (not compacted), in conversation order.
pub(crate) fn active_rows(db: &Tree, sid: &str) -> Result<Vec<ContextRow>> {
    session_messages(db, sid)?
        .into_iter()
        .filter(|(_, m)| m.compacted_ms.is_none())
        .map(|(_, m)| {
            let m = &resolve(db, m)?;
            Ok(ContextRow {
                message: to_message(sid, m)?,
                complete: m.completed_ms.is_some(),
            })
        })
        .collect()
}

pub(crate) fn load_all(db: &Tree, sid: &str) -> Result<Vec<Message>> {
    read_messages(db, sid)?
        .iter()
        .map(|m| Ok(to_message(sid, m)?))
        .collect()
}

pub(crate) fn recent_user_messages(db: &Tree, limit: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for kv in db.scan_prefix([schema::USER]).rev() {
        if out.len() >= limit {
            break;
        }
        let (_, key) = kv?;
        let Some(v) = db.get(&key)? else { continue };
        if let Some(c) = resolve(db, db.open_message(&key, &v)?)?
            .content
            .filter(|c| !c.is_empty())
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// The content of the last message of `role` (in conversation order) that has one.
pub(crate) fn last_content(db: &Tree, sid: &str, role: Role) -> Result<String> {
    let want = role_byte(role);
    for kv in db.scan_prefix(schema::messages_of(sid)).rev() {
        let (k, v) = kv?;
        let m = db.open_message(&k, &v)?;
        if m.role == want && (m.content.is_some() || m.bodies[0].is_some()) {
            return Ok(resolve(db, m)?.content.unwrap_or_default());
        }
    }
    Ok(String::new())
}

pub(crate) fn has_pending_tool_calls(db: &Tree, sid: &str) -> Result<bool> {
    for kv in db.scan_prefix(schema::messages_of(sid)).rev() {
        let (k, v) = kv?;
        let m = db.open_message(&k, &v)?;
        if m.compacted_ms.is_none() {
            return Ok(role_of(m.role)? == Role::Assistant
                && (m.tool_calls.is_some() || m.bodies[2].is_some()));
        }
    }
    Ok(false)
}

/// Completes message `message_id`; returns the batch and its session.
pub(crate) fn mark_complete(
    db: &Tree,
    message_id: i64,
    now: i64,
) -> Result<(Batch, Option<String>)> {
    let missing = || anyhow::Error::from(PersistenceError::MessageNotFound(message_id));
    let id = u64::try_from(message_id).map_err(|_| missing())?;
    let key = db
        .get(schema::numbered(schema::BY_ID, id))?
        .ok_or_else(missing)?;
    let v = db.get(&key)?.ok_or_else(missing)?;
    let mut m = db.open_message(&key, &v)?;
    m.completed_ms = Some(now);
    let session = session_of(&key);
    let mut batch = Batch::default();
    let sealed = db.seal_message(&key, &m)?;
    batch.insert(key, sealed);
    Ok((batch, session))
}

/// Usage by agent, as the session record keeps it (O(agents)).
pub(crate) fn usage_groups(db: &Tree, sid: &str) -> Result<Vec<(String, SessionUsage)>> {
    Ok(get_session(db, sid)?
        .map(|s| s.tally().groups())
        .unwrap_or_default())
}

/// The usage a session's stored messages add up to.
pub(crate) fn counted_usage(db: &Tree, sid: &str) -> Result<UsageTally> {
    let mut tally = UsageTally::default();
    for (_, m) in session_messages(db, sid)? {
        tally.add(m.agent_name.as_deref(), m.counters());
    }
    Ok(tally)
}

pub(crate) fn compact(
    db: &Tree,
    sid: &str,
    summary: &str,
    keep: usize,
    now: i64,
) -> Result<(Batch, usize)> {
    let mut session = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let all = session_messages(db, sid)?;
    let active: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].1.compacted_ms.is_none())
        .collect();
    let marked = active.len().saturating_sub(keep);
    let mut batch = Batch::default();
    if marked == 0 {
        return Ok((batch, 0));
    }
    for &i in &active[..marked] {
        let (key, m) = &all[i];
        let mut m = m.clone();
        m.compacted_ms = Some(now);
        batch.insert(schema::compacted(as_u64(now), m.id), key.clone());
        let sealed = db.seal_message(key, &m)?;
        batch.insert(key.clone(), sealed);
    }
    // The summary and hint take the first preserved message's place;
    // it and everything after it move two places on.
    let first = active.get(marked).copied();
    let at = match first {
        Some(i) => schema::ord_of(&all[i].0)
            .ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?,
        None => session.next_ord + 1,
    };
    if let Some(i) = first {
        let tail = &all[i..];
        for (key, _) in tail {
            batch.remove(key.clone());
        }
        for (key, m) in tail {
            let ord = schema::ord_of(key)
                .ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
            let moved = schema::message(sid, ord + 2);
            batch.insert(schema::numbered(schema::BY_ID, m.id), moved.clone());
            if m.role == role_byte(Role::User) {
                batch.insert(schema::numbered(schema::USER, m.id), moved.clone());
            }
            let sealed = db.seal_message(&moved, m)?;
            batch.insert(moved, sealed);
        }
    }
    let mut refs = Refs::default();
    for (offset, role, text, completed) in [
        (0, Role::System, summary, None),
        (1, Role::Assistant, COMPACTION_HINT, Some(now)),
    ] {
        let id = next_id(db)?;
        let key = schema::message(sid, at + offset);
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
        batch.insert(schema::numbered(schema::BY_ID, id), key.clone());
        let sealed = db.seal_message(&key, &record)?;
        batch.insert(key, sealed);
    }
    refs.finish(db, &mut batch)?;
    session.next_ord += 2;
    session.message_count += 2;
    batch.insert(schema::session(sid), db.seal_session(sid, &session)?);
    Ok((batch, marked))
}

/// Sets the content of the listed messages; returns the batch and the sessions touched.
pub(crate) fn clear_content(db: &Tree, ids: &[i64], stub: &str) -> Result<(Batch, Vec<String>)> {
    let mut changed: HashMap<IVec, StoredMessage> = HashMap::new();
    let mut refs = Refs::default();
    for id in ids.iter().filter_map(|id| u64::try_from(*id).ok()) {
        let Some(key) = db.get(schema::numbered(schema::BY_ID, id))? else {
            continue;
        };
        if changed.contains_key(&key) {
            continue;
        }
        let Some(v) = db.get(&key)? else { continue };
        let mut m = db.open_message(&key, &v)?;
        if let Some(old) = m.bodies[0].take() {
            refs.release_one(old);
        }
        m.content = Some(stub.to_owned());
        refs.intern(db, &mut m)?;
        changed.insert(key, m);
    }
    let mut batch = Batch::default();
    let mut touched = Vec::new();
    for (key, m) in changed {
        touched.extend(session_of(&key));
        let sealed = db.seal_message(&key, &m)?;
        batch.insert(key, sealed);
    }
    refs.finish(db, &mut batch)?;
    Ok((batch, touched))
}

pub(crate) fn compacted_stats(db: &Tree) -> Result<CompactedStats> {
    let mut stats = CompactedStats::default();
    let mut sessions = std::collections::HashSet::new();
    let mut oldest = None;
    for kv in db.scan_prefix([schema::COMPACTED]) {
        let (_, key) = kv?;
        let Some(v) = db.get(&key)? else { continue };
        let m = db.open_message(&key, &v)?;
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
        stats.size_bytes = stats
            .size_bytes
            .saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    stats.session_count = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
    stats.oldest = oldest.map(format_timestamp);
    Ok(stats)
}

/// Deletes the old compacted messages; returns the batch, the count and the sessions touched.
#[allow(clippy::type_complexity)]
pub(crate) fn purge(db: &Tree, days: u32, now: i64) -> Result<(Batch, (usize, Vec<String>))> {
    let cutoff = purge_cutoff(now, days);
    let end = if days == 0 {
        vec![schema::COMPACTED + 1]
    } else {
        schema::compacted_before(as_u64(cutoff))
    };
    let mut batch = Batch::default();
    let mut sessions: HashMap<String, StoredSession> = HashMap::new();
    let mut refs = Refs::default();
    let mut n = 0;
    if days != 0 && cutoff <= 0 {
        return Ok((batch, (0, Vec::new())));
    }
    for kv in db.range(vec![schema::COMPACTED]..end) {
        let (ckey, key) = kv?;
        let Some(v) = db.get(&key)? else { continue };
        let m = db.open_message(&key, &v)?;
        let sid =
            session_of(&key).ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
        if !sessions.contains_key(&sid) {
            let s = get_session(db, &sid)?.ok_or_else(|| {
                PersistenceError::Corrupt(format!("message of missing session {sid:?}"))
            })?;
            sessions.insert(sid.clone(), s);
        }
        if let Some(s) = sessions.get_mut(&sid) {
            s.message_count -= 1;
            s.uncount(m.agent_name.as_deref(), m.counters());
        }
        refs.release(&m);
        batch.remove(ckey);
        batch.remove(key);
        batch.remove(schema::numbered(schema::BY_ID, m.id));
        batch.remove(schema::numbered(schema::USER, m.id));
        n += 1;
    }
    let mut touched = Vec::with_capacity(sessions.len());
    for (sid, s) in sessions {
        batch.insert(schema::session(&sid), db.seal_session(&sid, &s)?);
        touched.push(sid);
    }
    refs.finish(db, &mut batch)?;
    Ok((batch, (n, touched)))
}

pub(crate) fn get_metadata(db: &Tree, sid: &str, key: &str) -> Result<Option<String>> {
    match db.get(schema::metadata(sid, key))? {
        Some(v) => Ok(Some(db.open_value(sid, key, &v)?)),
        None => Ok(None),
    }
}

pub(crate) fn set_metadata(db: &Tree, sid: &str, key: &str, value: &str) -> Result<Batch> {
    if get_session(db, sid)?.is_none() {
        return Err(session_not_found(sid));
    }
    let mut batch = Batch::default();
    batch.insert(schema::metadata(sid, key), db.seal_value(sid, key, value)?);
    Ok(batch)
}

/// Every session id, oldest first.
pub(crate) fn export_session_ids(db: &Tree) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for kv in db.scan_prefix([schema::SESSION]) {
        let (k, v) = kv?;
        let id = String::from_utf8(k[1..].to_vec())
            .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))?;
        let s = db.open_session(&id, &v, &format!("session {id:?}"))?;
        all.push(((s.created_ms, s.seq), id));
    }
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

pub(crate) fn export_session(db: &Tree, sid: &str) -> Result<Option<SessionRecord>> {
    let Some(s) = get_session(db, sid)? else {
        return Ok(None);
    };
    let rootless = db
        .get(schema::rootless(as_u64(s.created_ms), s.seq))?
        .is_some_and(|v| v == sid.as_bytes());
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
                id: i64::try_from(m.id)
                    .map_err(|_| PersistenceError::Corrupt(format!("message id {}", m.id)))?,
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
    let prefix = schema::metadata_of(sid);
    let mut out = Vec::new();
    for kv in db.scan_prefix(&prefix) {
        let (k, v) = kv?;
        let key = String::from_utf8(k[prefix.len()..].to_vec())
            .map_err(|_| PersistenceError::Corrupt("a metadata key is not UTF-8".into()))?;
        let value = db.open_value(sid, &key, &v)?;
        out.push(MetadataRecord { key, value });
    }
    Ok(out)
}

/// Every value decodes; every id index entry names a stored message of
/// that id; every session's position counter is at or past its last
/// message. O(store): for `doctor`, not for koda's calls.
pub(crate) fn health(db: &Tree) -> Result<koda_persistence_api::StoreHealth> {
    let mut problems = Vec::new();
    for kv in db.scan_prefix([schema::BY_ID]) {
        let (k, key) = kv?;
        let id = k
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        match (id, db.get(&key)?) {
            (Some(id), Some(v)) => match db.open_message(&key, &v) {
                Ok(m) if m.id == id => {}
                Ok(m) => problems.push(format!("id index: {id} names message {}", m.id)),
                Err(e) => problems.push(format!("message {id}: {e}")),
            },
            (Some(id), None) => problems.push(format!("id index: message {id} is missing")),
            (None, _) => problems.push("id index: a key without an id".to_owned()),
        }
    }
    for kv in db.scan_prefix([schema::SESSION]) {
        let (k, v) = kv?;
        let sid = String::from_utf8_lossy(&k[1..]).into_owned();
        let s = match db.open_session(&sid, &v, &format!("session {sid:?}")) {
            Ok(s) => s,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if let Some(last) = db.scan_prefix(schema::messages_of(&sid)).next_back() {
            let (key, _) = last?;
            let ord = schema::ord_of(&key).unwrap_or(u64::MAX);
            if ord > s.next_ord {
                problems.push(format!(
                    "session {sid}: position counter {} is behind its last message's {ord}",
                    s.next_ord
                ));
            }
        }
        // A message that does not read is a problem to report, not a
        // reason for the check itself to fail.
        match counted_usage(db, &sid) {
            Ok(usage) if usage != s.tally() => problems.push(format!(
                "session {sid}: the usage kept by agent differs from its messages' counters"
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("session {sid}: {e:#}")),
        }
    }
    let bodies = body_health(db, &mut problems)?;
    Ok(koda_persistence_api::StoreHealth {
        schema_version: i64::from(crate::rows::SESSION_VERSION),
        latest_schema_version: i64::from(crate::rows::SESSION_VERSION),
        problems,
        size_bytes: Some(db.size_on_disk()?),
        bodies,
    })
}

/// Bodies against the references to them, both ways (every reference has
/// its body, every count is the number of fields using it, no body is kept
/// unused), and every body against its address. Reads every body once.
fn body_health(db: &Tree, problems: &mut Vec<String>) -> Result<BodyStats> {
    let mut uses: HashMap<BodyHash, u64> = HashMap::new();
    for kv in db
        .scan_prefix([schema::MESSAGE])
        .chain(crate::trash::trashed_messages(db))
    {
        let (k, v) = kv?;
        let Ok(m) = db.open_message(&k, &v) else {
            continue;
        };
        for hash in m.bodies.iter().flatten() {
            *uses.entry(*hash).or_default() += 1;
        }
    }
    let mut stats = BodyStats::default();
    for kv in db.scan_prefix([schema::BODY]) {
        let (k, data) = kv?;
        let Ok(hash) = BodyHash::try_from(&k[1..]) else {
            problems.push("a body key without a 32-byte address".into());
            continue;
        };
        let name = body_name(&hash);
        let len = match db.check_body(&hash, &data) {
            Ok(text) => text.len() as u64,
            Err(e) => {
                problems.push(format!("body {name}: {}", e.reason()));
                0
            }
        };
        let count = body_count(db, &hash)?;
        let used = uses.remove(&hash).unwrap_or(0);
        if count != used {
            problems.push(format!(
                "body {name}: counts {count} references, {used} message fields use it"
            ));
        }
        let packed = data.len() as u64;
        stats.add_body(len, packed, used);
    }
    for kv in db.scan_prefix([schema::BODY_REFS]) {
        let (k, _) = kv?;
        if !db.contains_key(schema::body(
            &BodyHash::try_from(&k[1..]).unwrap_or([0; 32]),
        ))? {
            problems.push("a body reference count without its body".into());
        }
    }
    for (hash, n) in uses {
        let name = body_name(&hash);
        problems.push(format!(
            "{n} message fields refer to body {name}, which is missing"
        ));
    }
    Ok(stats)
}

pub(crate) fn message_id_range(db: &Tree) -> Result<Option<(i64, i64)>> {
    let id_of = |k: &[u8]| -> Result<i64> {
        let bytes: [u8; 8] = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PersistenceError::Corrupt("bad message id key".into()))?;
        Ok(i64::try_from(u64::from_be_bytes(bytes)).unwrap_or(i64::MAX))
    };
    let mut ids = db.scan_prefix([schema::BY_ID]);
    let Some(first) = ids.next() else {
        return Ok(None);
    };
    let lo = id_of(&first?.0)?;
    let hi = match ids.next_back() {
        Some(last) => id_of(&last?.0)?,
        None => lo,
    };
    Ok(Some((lo, hi)))
}

/// The last id handed out or claimed (`generate_id` consumes one: ids
/// need not be contiguous).
fn id_position(db: &Tree) -> Result<u64> {
    Ok(id_floor(db)?.saturating_add(db.generate_id()?))
}

pub(crate) fn claim_ids(db: &Tree, first: u64, last: u64) -> Result<(Batch, bool)> {
    let mut batch = Batch::default();
    if id_position(db)? >= first {
        return Ok((batch, false));
    }
    batch.insert(schema::id_floor(), encode(&last)?);
    Ok((batch, true))
}

pub(crate) fn import_session(db: &Tree, s: &SessionRecord) -> Result<(Batch, bool)> {
    let mut batch = Batch::default();
    if get_session(db, &s.id)?.is_some() {
        return Ok((batch, false));
    }
    crate::trash::refuse_trashed(db, &s.id)?;
    new_session(db, s, &mut batch)?;
    Ok((batch, true))
}

/// Puts session `s` (known to be new) into `batch`; returns its record.
fn new_session(db: &Tree, s: &SessionRecord, batch: &mut Batch) -> Result<StoredSession> {
    let seq = match db.get(schema::seq_counter())? {
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
    batch.insert(schema::seq_counter(), encode(&seq)?);
    let listed = match &s.project_root {
        Some(root) => schema::by_root(root, as_u64(s.created_ms), seq),
        None => schema::rootless(as_u64(s.created_ms), seq),
    };
    batch.insert(listed, s.id.as_bytes());
    batch.insert(schema::session(&s.id), db.seal_session(&s.id, &record)?);
    Ok(record)
}

/// Counters a record leaves unset are stored as [`crate::codec::UNSET`].
pub(crate) fn import_messages(
    db: &Tree,
    sid: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
) -> Result<(Batch, Vec<i64>)> {
    let session = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let mut batch = Batch::default();
    let ids = append_imported(db, sid, session, messages, keep_ids, &mut batch)?;
    Ok((batch, ids))
}

/// Puts `messages` after the last message of session `sid` (whose record
/// is `session`) into `batch`, with the session's new record.
fn append_imported(
    db: &Tree,
    sid: &str,
    mut session: StoredSession,
    messages: &[MessageRecord],
    keep_ids: bool,
    batch: &mut Batch,
) -> Result<Vec<i64>> {
    let ids: Vec<i64> = if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        let position = i64::try_from(id_position(db)?).unwrap_or(i64::MAX);
        check_kept(&ids, position)?;
        for &id in &ids {
            if db.contains_key(schema::numbered(schema::BY_ID, as_u64(id)))? {
                return Err(id_taken(id).into());
            }
        }
        ids
    } else {
        messages
            .iter()
            .map(|_| Ok(i64::try_from(next_id(db)?).unwrap_or(i64::MAX)))
            .collect::<Result<_>>()?
    };
    let mut refs = Refs::default();
    let mut tally = session.tally();
    for (m, &id) in messages.iter().zip(&ids) {
        let usage = usage_of(m.counters());
        tally.add(m.agent.as_deref(), m.counters());
        session.next_ord += 1;
        session.message_count += 1;
        let key = schema::message(sid, session.next_ord);
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
        batch.insert(schema::numbered(schema::BY_ID, id), key.clone());
        if m.role == Role::User {
            batch.insert(schema::numbered(schema::USER, id), key.clone());
        }
        if let Some(at) = m.compacted_ms {
            batch.insert(schema::compacted(as_u64(at), id), key.clone());
        }
        let sealed = db.seal_message(&key, &record)?;
        batch.insert(key, sealed);
    }
    refs.finish(db, batch)?;
    session.set_tally(&tally);
    batch.insert(schema::session(sid), db.seal_session(sid, &session)?);
    Ok(ids)
}

pub(crate) fn import_metadata(db: &Tree, sid: &str, entries: &[MetadataRecord]) -> Result<Batch> {
    if get_session(db, sid)?.is_none() {
        return Err(session_not_found(sid));
    }
    let mut batch = Batch::default();
    for e in entries {
        batch.insert(
            schema::metadata(sid, &e.key),
            db.seal_value(sid, &e.key, &e.value)?,
        );
    }
    Ok(batch)
}

/// Forks `sid` at `at` into session `new_id`, in one batch: the original's
/// export, cut by [`fork_len`](koda_persistence_api::fork::fork_len), put
/// in as a new session with its metadata (each body one more reference).
pub(crate) fn fork(
    db: &Tree,
    sid: &str,
    at: Option<i64>,
    new_id: &str,
    now: i64,
) -> Result<(Batch, String)> {
    use koda_persistence_api::fork::{fork_len, fork_record};
    let original = export_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let messages = export_messages(db, sid)?;
    let n = fork_len(&messages, at)?;
    if get_session(db, new_id)?.is_some() {
        return Err(PersistenceError::Conflict(format!("session id {new_id} is taken")).into());
    }
    let mut batch = Batch::default();
    let session = new_session(db, &fork_record(&original, new_id, now), &mut batch)?;
    append_imported(db, new_id, session, &messages[..n], false, &mut batch)?;
    for e in export_metadata(db, sid)? {
        batch.insert(
            schema::metadata(new_id, &e.key),
            db.seal_value(new_id, &e.key, &e.value)?,
        );
    }
    Ok((batch, new_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::StoredSessionV1;
    use crate::schema::upgrade;
    use koda_persistence_api::TokenUsage;

    fn usage(p: i64, c: i64) -> Option<TokenUsage> {
        Some(TokenUsage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read_tokens: 1,
            cache_creation_tokens: 0,
            thinking_tokens: 2,
        })
    }

    /// A store an earlier build wrote keeps its session records at format 1,
    /// without usage: opening it upgrades them once, counting the messages.
    #[test]
    fn format_one_session_records_are_upgraded_with_their_usage() -> Result<()> {
        let db = sled::Config::new().temporary(true).open()?;
        let db = Tree::unlock(db, None, std::path::Path::new("temporary"))?;
        db.apply_batch(create_session(&db, "s", "main", "/r", 1)?)?;
        for (agent, u) in [
            (None, usage(5, 1)),
            (Some("x"), usage(i64::MAX, 0)),
            (None, None),
        ] {
            let mut m =
                NewMessage::message("s", Role::Assistant, Some("a"), None, None, None, agent);
            m.usage = u;
            db.apply_batch(append_message(&db, m, 2)?.0)?;
        }
        let want = usage_groups(&db, "s")?;
        assert_eq!(want.len(), 2, "{want:?}");
        // Rewrite the record as an earlier build stored it.
        downgrade(&db)?;
        assert!(
            get_session(&db, "s").is_err(),
            "a format-1 record is not read as format 2"
        );
        assert_eq!(upgrade(&db)?, 1);
        assert_eq!(usage_groups(&db, "s")?, want);
        assert_eq!(upgrade(&db)?, 0, "nothing is upgraded twice");
        assert_eq!(health(&db)?.problems, Vec::<String>::new());
        // The store's own check sees kept usage that left its rows.
        let mut s = get_session(&db, "s")?.ok_or_else(|| anyhow::anyhow!("no session"))?;
        s.count(Some("x"), [Some(1), None, None, None, None]);
        db.insert(schema::session("s"), db.seal_session("s", &s)?)?;
        let problems = health(&db)?.problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("usage"), "{problems:?}");
        Ok(())
    }

    /// Rewrites every session record of `db` as an earlier build stored it
    /// (format 1: a running token total, no usage by agent).
    fn downgrade(db: &Tree) -> Result<()> {
        for kv in db.scan_prefix([schema::SESSION]) {
            let (k, _) = kv?;
            let sid = String::from_utf8(k[1..].to_vec())?;
            let s = get_session(db, &sid)?.ok_or_else(|| anyhow::anyhow!("no session {sid}"))?;
            let total_tokens = s.tally().tokens();
            let old = StoredSessionV1 {
                agent_name: s.agent_name,
                project_root: s.project_root,
                created_ms: s.created_ms,
                seq: s.seq,
                last_accessed_ms: s.last_accessed_ms,
                title: s.title,
                mode: s.mode,
                message_count: s.message_count,
                total_tokens,
                next_ord: s.next_ord,
            };
            db.insert(k, encode(&old)?)?;
        }
        Ok(())
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_dir(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }

    const UPGRADE_CHILD: &str = "KODA_SLED_UPGRADE_CHILD";

    /// The child of `an_upgrade_killed_midway_is_finished_by_the_next_open`:
    /// opens the store it is given, says so, upgrades it and flushes.
    #[test]
    #[ignore = "run as a child process by an_upgrade_killed_midway_is_finished_by_the_next_open"]
    fn upgrade_child() -> Result<()> {
        use std::io::Write as _;
        let Ok(path) = std::env::var(UPGRADE_CHILD) else {
            return Ok(());
        };
        let db = Tree::unlock(
            sled::Config::new().path(path).open()?,
            None,
            std::path::Path::new("test"),
        )?;
        println!("open");
        std::io::stdout().flush()?;
        let n = upgrade(&db)?;
        db.flush()?;
        println!("upgraded {n}");
        Ok(())
    }

    /// A process killed (SIGKILL) while it upgrades a format-1 store leaves
    /// one the next open finishes: every session at format 2 with the usage
    /// its messages add up to, nothing else changed, the store's own check
    /// clean. Kills land from just after the store opened to past the end
    /// of the upgrade.
    #[test]
    fn an_upgrade_killed_midway_is_finished_by_the_next_open() -> Result<()> {
        use std::io::BufRead as _;
        const SESSIONS: usize = 300;
        const ROUNDS: u32 = 12;
        let dir = tempfile::tempdir()?;
        let pristine = dir.path().join("pristine");
        let mut want = Vec::new();
        {
            let db = Tree::unlock(
                sled::Config::new().path(&pristine).open()?,
                None,
                std::path::Path::new("test"),
            )?;
            for s in 0..SESSIONS {
                let sid = format!("s{s:04}");
                db.apply_batch(create_session(&db, &sid, "main", "/r", 1)?)?;
                for i in 0..20i64 {
                    let agent = ["main", "helper", "x"][(s + i as usize) % 3];
                    let mut m = NewMessage::message(
                        &sid,
                        Role::Assistant,
                        Some("answer"),
                        None,
                        None,
                        None,
                        Some(agent),
                    );
                    m.usage = usage(i + 1, s as i64);
                    db.apply_batch(append_message(&db, m, 2)?.0)?;
                }
                let made = get_session(&db, &sid)?.ok_or_else(|| anyhow::anyhow!("no {sid}"))?;
                want.push((
                    sid.clone(),
                    usage_groups(&db, &sid)?,
                    (made.message_count, made.next_ord),
                ));
            }
            downgrade(&db)?;
            db.flush()?;
        }
        let exe = std::env::current_exe()?;
        // A child upgrading a fresh copy of the pristine store at `path`,
        // with its stdout as lines.
        let child = |path: &std::path::Path| -> Result<_> {
            copy_dir(&pristine, path)?;
            let mut c = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "queries::tests::upgrade_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env(UPGRADE_CHILD, path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let out = c
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            Ok((c, std::io::BufReader::new(out).lines()))
        };
        // How long the child's upgrade takes here, run to completion.
        let (mut c, mut lines) = child(&dir.path().join("timed"))?;
        let mut opened = None;
        let mut upgraded = None;
        for line in lines.by_ref() {
            let line = line?;
            if line == "open" {
                opened = Some(std::time::Instant::now());
            } else if line.starts_with("upgraded ") {
                upgraded = Some((std::time::Instant::now(), line));
            }
        }
        c.wait()?;
        let (Some(opened), Some((done, line))) = (opened, upgraded) else {
            anyhow::bail!("the child never upgraded");
        };
        assert_eq!(line, format!("upgraded {SESSIONS}"));
        let span = done.duration_since(opened);
        let (mut unfinished, mut finished) = (0, 0);
        for round in 0..ROUNDS {
            let path = dir.path().join(format!("round{round}"));
            let (mut c, mut lines) = child(&path)?;
            // Wait for the open, then kill somewhere in 0..=1.2x the upgrade.
            for line in lines.by_ref() {
                if line? == "open" {
                    break;
                }
            }
            std::thread::sleep(span.mul_f64(f64::from(round) * 1.2 / f64::from(ROUNDS - 1)));
            c.kill()?;
            c.wait()?;
            let db = Tree::unlock(
                sled::Config::new().path(&path).open()?,
                None,
                std::path::Path::new("test"),
            )?;
            match upgrade(&db)? {
                0 => finished += 1,
                n => {
                    assert!(n <= SESSIONS, "{n}");
                    unfinished += 1;
                }
            }
            assert_eq!(upgrade(&db)?, 0, "round {round}: nothing is upgraded twice");
            for (sid, groups, counters) in &want {
                assert_eq!(
                    &usage_groups(&db, sid)?,
                    groups,
                    "round {round}, session {sid}"
                );
                let s = get_session(&db, sid)?.ok_or_else(|| anyhow::anyhow!("{sid} gone"))?;
                assert_eq!(&(s.message_count, s.next_ord), counters, "round {round}");
            }
            assert_eq!(health(&db)?.problems, Vec::<String>::new(), "round {round}");
        }
        eprintln!(
            "upgrade of {SESSIONS} sessions took {span:?}; {unfinished} of {ROUNDS} kills left it \
             for the next open, {finished} came after it landed"
        );
        assert!(unfinished > 0, "no kill landed before the upgrade did");
        Ok(())
    }
}
