//! The [`Import`] trait: whole sessions out of one store and into another,
//! with every stored field, for `koda-store export`, `import` and `copy`.
//!
//! [`Persistence`] stays what koda calls; it stamps its own ids and times.
//! Moving a history needs the rows as they are: original ids, timestamps,
//! completion and compaction states, agents and conversation order.

use anyhow::Result;

use crate::clock::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::error::PersistenceError;
use crate::persistence::Persistence;
use crate::types::{Message, Role};

/// A session with every field a store keeps of it (its counters are derived
/// from its messages and not part of the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id: 1 to [`MAX_SESSION_ID_BYTES`] bytes, no NUL.
    pub id: String,
    /// Agent the session was created with.
    pub agent_name: String,
    /// Project root; `None` for the root-less sessions of an older koda,
    /// which every root's listing includes.
    pub project_root: Option<String>,
    /// Creation time, epoch milliseconds.
    pub created_ms: i64,
    /// Last access (`get_session_idle_secs`), epoch milliseconds.
    pub last_accessed_ms: Option<i64>,
    /// Title, if set.
    pub title: Option<String>,
    /// Approval mode, if set.
    pub mode: Option<String>,
}

/// A message with every field a store keeps of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Its id in the store it came from.
    pub id: i64,
    /// Role.
    pub role: Role,
    /// Text content.
    pub content: Option<String>,
    /// Full tool output.
    pub full_content: Option<String>,
    /// Tool calls JSON, verbatim.
    pub tool_calls: Option<String>,
    /// Tool call answered.
    pub tool_call_id: Option<String>,
    /// Input tokens.
    pub prompt_tokens: Option<i64>,
    /// Output tokens.
    pub completion_tokens: Option<i64>,
    /// Cached input tokens.
    pub cache_read_tokens: Option<i64>,
    /// Tokens written to cache.
    pub cache_creation_tokens: Option<i64>,
    /// Reasoning tokens.
    pub thinking_tokens: Option<i64>,
    /// Agent that wrote it (`None` counts as `"main"`).
    pub agent: Option<String>,
    /// Creation time, epoch milliseconds.
    pub created_ms: i64,
    /// When an answer was marked complete; `None`: still streaming (or a
    /// row of an older koda that never marks completion).
    pub completed_ms: Option<i64>,
    /// When compaction archived it; `None`: active.
    pub compacted_ms: Option<i64>,
}

impl MessageRecord {
    /// The record of a stored message `m` and the fields [`Message`] does
    /// not carry.
    pub fn from_message(
        m: Message,
        agent: Option<String>,
        created_ms: i64,
        completed_ms: Option<i64>,
        compacted_ms: Option<i64>,
    ) -> Self {
        Self {
            id: m.id,
            role: m.role,
            content: m.content,
            full_content: m.full_content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
            cache_read_tokens: m.cache_read_tokens,
            cache_creation_tokens: m.cache_creation_tokens,
            thinking_tokens: m.thinking_tokens,
            agent,
            created_ms,
            completed_ms,
            compacted_ms,
        }
    }

    /// The message as stored in `session_id` under `id`.
    pub fn to_message(&self, session_id: &str, id: i64) -> Message {
        Message {
            id,
            session_id: session_id.to_owned(),
            role: self.role,
            content: self.content.clone(),
            full_content: self.full_content.clone(),
            tool_calls: self.tool_calls.clone(),
            tool_call_id: self.tool_call_id.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_creation_tokens: self.cache_creation_tokens,
            thinking_tokens: self.thinking_tokens,
            created_at: Some(crate::clock::format_timestamp(self.created_ms)),
        }
    }

    /// The five counters, in [`TokenUsage`](crate::TokenUsage) field order.
    pub fn counters(&self) -> [Option<i64>; 5] {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            self.thinking_tokens,
        ]
    }
}

/// One metadata entry of a session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetadataRecord {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// What a store says of its own state (`koda-store doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The schema (or value format) version the store holds.
    pub schema_version: i64,
    /// The newest version this build knows: more than `schema_version`
    /// means migrations are pending (an open that may not run DDL left
    /// them), less means a newer build wrote the store.
    pub latest_schema_version: i64,
    /// What the store's own consistency check found; empty when sound.
    pub problems: Vec<String>,
    /// Bytes the store occupies (a SQLite file, a sled directory, a
    /// PostgreSQL schema's tables and indexes); `None` in memory.
    pub size_bytes: Option<u64>,
}

/// The longest session id an import accepts, in bytes (ids a store makes
/// are 36).
pub const MAX_SESSION_ID_BYTES: usize = 1024;

/// Whole sessions out of a store and into another, every field kept.
///
/// Rules, checked by the conformance suite on every backend:
///
/// - **Export** reads what is stored: every session (oldest first, ties in
///   creation order), every message of a session in conversation order,
///   compacted ones included, and every metadata entry (by key, bytewise).
/// - **Ids**: [`claim_ids`](Self::claim_ids) asks the store for a range of
///   message ids; it grants it when its own sequence has not reached the
///   range's start, and moves the sequence past its end, so the store never
///   hands those ids out itself. [`import_messages`](Self::import_messages)
///   with `keep_ids` then stores each message under its recorded id: an id
///   the store has not handed out or granted is `InvalidInput` (claim it
///   first), a taken one `Conflict`; without `keep_ids` it gives fresh
///   ids, in the records' order. Tool-call pairing (by `tool_call_id`) and
///   conversation order do not depend on ids, so both survive either way.
/// - **Sessions**: [`import_session`](Self::import_session) creates the
///   session as recorded and returns `true`, or returns `false` and changes
///   nothing when a session with that id exists (a re-run resumes).
/// - **Messages** are appended after the session's last message, in the
///   given order, with their states and times, in one atomic step; counters
///   (`message_count`, tokens) follow as for any insert. An unknown session
///   is `SessionNotFound`.
/// - **Metadata** entries are set as by `set_metadata` (one atomic step,
///   the store's clock stamps them).
/// - **Validation** as everywhere: times within
///   [`MIN_TIMESTAMP_MS`](crate::MIN_TIMESTAMP_MS)..=[`MAX_TIMESTAMP_MS`](crate::MAX_TIMESTAMP_MS),
///   no negative token counter, a session id of 1 to
///   [`MAX_SESSION_ID_BYTES`] bytes without NUL; anything else is
///   `InvalidInput` and writes nothing.
#[async_trait::async_trait]
pub trait Import: Persistence {
    /// Every session id, oldest first.
    async fn export_session_ids(&self) -> Result<Vec<String>>;

    /// The store's schema version and its own consistency check (SQLite:
    /// `PRAGMA integrity_check`; PostgreSQL and sled: every session's
    /// position counter against its messages, sled also its id index).
    async fn health(&self) -> Result<StoreHealth>;

    /// The session's record, or `None` when there is no such session.
    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>>;

    /// Every message of the session in conversation order (empty for an
    /// unknown session).
    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>>;

    /// Every metadata entry of the session, by key (bytewise).
    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>>;

    /// The smallest and largest message id stored (`None`: no messages): the
    /// range a copy of this store claims in its target.
    async fn message_id_range(&self) -> Result<Option<(i64, i64)>>;

    /// Grants `first..=last` to an importer when the store's id sequence
    /// has not reached `first` (returns `true` and moves the sequence to
    /// `last`); otherwise changes nothing and returns `false`. `first > last`
    /// or `first < 1` is `InvalidInput`.
    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool>;

    /// Creates the session as recorded; `false` when it already exists.
    async fn import_session(&self, session: &SessionRecord) -> Result<bool>;

    /// Appends `messages` to the session; returns the id each one got.
    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>>;

    /// Sets each entry on the session.
    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()>;

    /// The session's message count and [`session_checksum`] (of its
    /// messages in conversation order and its metadata), for verifying a
    /// copy. The provided method reads the export; a server-side store
    /// computes the same digest where the rows are.
    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        let messages = self.export_messages(session_id).await?;
        let metadata = self.export_metadata(session_id).await?;
        Ok((messages.len(), session_checksum(&messages, &metadata)))
    }
}

/// A content checksum of a session, independent of message ids (which a
/// copy may map): the first 16 hex digits of
/// `SHA-256(n ‖ h(m1) ‖ … ‖ h(mn) ‖ k ‖ h(e1) ‖ … ‖ h(ek))`, where `n` and
/// `k` are the message and metadata counts as 8-byte big-endian integers,
/// `h` is SHA-256, a message's bytes are its role name, content,
/// full content, tool calls, call id and agent, its five counters and
/// its created, completed and compacted times, and an entry's bytes its
/// key and value. Each field is `0x00` when unset, else `0x01` and then,
/// for text, its length (8 bytes, big-endian) and UTF-8 bytes, for a
/// number its 8 big-endian bytes.
pub fn session_checksum(messages: &[MessageRecord], metadata: &[MetadataRecord]) -> String {
    use sha2::{Digest, Sha256};
    fn text(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    fn number(h: &mut Sha256, n: Option<i64>) {
        match n {
            None => h.update([0u8]),
            Some(n) => {
                h.update([1u8]);
                h.update(n.to_be_bytes());
            }
        }
    }
    let mut outer = Sha256::new();
    outer.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        let mut h = Sha256::new();
        text(&mut h, Some(m.role.as_str()));
        for t in [
            &m.content,
            &m.full_content,
            &m.tool_calls,
            &m.tool_call_id,
            &m.agent,
        ] {
            text(&mut h, t.as_deref());
        }
        for n in m.counters() {
            number(&mut h, n);
        }
        for n in [Some(m.created_ms), m.completed_ms, m.compacted_ms] {
            number(&mut h, n);
        }
        outer.update(h.finalize());
    }
    outer.update((metadata.len() as u64).to_be_bytes());
    for e in metadata {
        let mut h = Sha256::new();
        text(&mut h, Some(&e.key));
        text(&mut h, Some(&e.value));
        outer.update(h.finalize());
    }
    outer
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn invalid(what: String) -> PersistenceError {
    PersistenceError::InvalidInput(what)
}

fn check_time(what: &str, ms: i64) -> Result<(), PersistenceError> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {ms} is outside {MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS} ms"
        )))
    }
}

/// Checks a session id an importer supplies.
///
/// # Errors
/// `InvalidInput` for an empty id, a NUL byte, or more than
/// [`MAX_SESSION_ID_BYTES`] bytes.
pub fn check_session_id(id: &str) -> Result<(), PersistenceError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || id.contains('\0') {
        return Err(invalid(format!(
            "a session id has 1 to {MAX_SESSION_ID_BYTES} bytes and no NUL; got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

/// Checks a session record before [`Import::import_session`] writes it.
///
/// # Errors
/// `InvalidInput` naming the bad field.
pub fn check_session_record(s: &SessionRecord) -> Result<(), PersistenceError> {
    check_session_id(&s.id)?;
    check_time("created_ms", s.created_ms)?;
    if let Some(at) = s.last_accessed_ms {
        check_time("last_accessed_ms", at)?;
    }
    Ok(())
}

/// Checks message records before [`Import::import_messages`] writes them.
///
/// # Errors
/// `InvalidInput` naming the message and field.
pub fn check_message_records(messages: &[MessageRecord]) -> Result<(), PersistenceError> {
    for m in messages {
        let at = |what: &str| format!("message {}: {what}", m.id);
        if m.id < 1 {
            return Err(invalid(format!(
                "message id must be positive, got {}",
                m.id
            )));
        }
        check_time(&at("created_ms"), m.created_ms)?;
        for (what, t) in [
            ("completed_ms", m.completed_ms),
            ("compacted_ms", m.compacted_ms),
        ] {
            if let Some(t) = t {
                check_time(&at(what), t)?;
            }
        }
        if let Some(v) = m.counters().into_iter().flatten().find(|v| *v < 0) {
            return Err(invalid(format!(
                "{} must not be negative, got {v}",
                at("a token counter")
            )));
        }
    }
    Ok(())
}

/// Checks a range for [`Import::claim_ids`].
///
/// # Errors
/// `InvalidInput` unless `1 <= first <= last`.
pub fn check_claim(first: i64, last: i64) -> Result<(), PersistenceError> {
    if first < 1 || first > last {
        return Err(invalid(format!(
            "an id claim needs 1 <= first <= last, got {first}..={last}"
        )));
    }
    Ok(())
}

/// The ids `import_messages` gives: the recorded ones with `keep_ids`,
/// else fresh ones counted on from `next`. Returns them and the store's
/// next fresh id.
///
/// # Errors
/// With `keep_ids`: `InvalidInput` for an id the store has not handed out
/// or granted (`>= next`) and for an id given twice.
pub fn assign_ids(
    messages: &[MessageRecord],
    keep_ids: bool,
    next: i64,
) -> Result<(Vec<i64>, i64), PersistenceError> {
    if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        check_kept(&ids, next.saturating_sub(1))?;
        Ok((ids, next))
    } else {
        let ids: Vec<i64> = (0..messages.len())
            .map(|i| next.saturating_add(i64::try_from(i).unwrap_or(i64::MAX)))
            .collect();
        let after = ids.last().map_or(next, |l| l.saturating_add(1));
        Ok((ids, after))
    }
}

/// Checks ids to be kept against the store's sequence `position` (the last
/// id handed out or granted).
///
/// # Errors
/// `InvalidInput` for an id past `position` (claim it first) and for an id
/// given twice.
pub fn check_kept(ids: &[i64], position: i64) -> Result<(), PersistenceError> {
    if let Some(id) = ids.iter().find(|id| **id > position) {
        return Err(invalid(format!(
            "message id {id} is past this store's id sequence ({position}); claim_ids first"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(id) = ids.iter().find(|id| !seen.insert(**id)) {
        return Err(invalid(format!("message id {id} is given twice")));
    }
    Ok(())
}

/// `Conflict` for a kept id that is taken.
pub fn id_taken(id: i64) -> PersistenceError {
    PersistenceError::Conflict(format!(
        "message id {id} is taken in this store; import without keeping ids"
    ))
}
