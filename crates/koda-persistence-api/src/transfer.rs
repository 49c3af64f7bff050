//! The [`Transfer`] capability: whole sessions out of one store and into
//! another, with every stored field, for `koda-store export`, `import` and
//! `copy`.
//!
//! [`Persistence`] stays what koda calls; it stamps its own ids and times.
//! Moving a history needs the rows as they are: original ids, timestamps,
//! completion and compaction states, agents and conversation order.

use anyhow::Result;

use crate::records::{MessageRecord, MetadataRecord, SessionRecord, session_checksum};

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
///   no negative token counter, every record's message id at least 1
///   (with or without `keep_ids`: an id of 0 or less is `InvalidInput`
///   even when the store would give a fresh one), a session id of 1 to
///   [`MAX_SESSION_ID_BYTES`](crate::MAX_SESSION_ID_BYTES) bytes without NUL; anything else is
///   `InvalidInput` and writes nothing.
#[async_trait::async_trait]
pub trait Transfer: Send + Sync {
    /// Every session id, oldest first.
    async fn export_session_ids(&self) -> Result<Vec<String>>;

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
    /// A session id in the trash is `Conflict`: restore or purge it first.
    async fn import_session(&self, session: &SessionRecord) -> Result<bool>;

    /// Appends `messages` to the session; returns the id each one got.
    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>>;

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
