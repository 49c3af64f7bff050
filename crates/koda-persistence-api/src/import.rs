//! The [`Import`] trait: whole sessions out of one store and into another,
//! with every stored field, for `koda-store export`, `import` and `copy`.
//!
//! [`Persistence`] stays what koda calls; it stamps its own ids and times.
//! Moving a history needs the rows as they are: original ids, timestamps,
//! completion and compaction states, agents and conversation order.

use anyhow::Result;

use crate::bodies::BodyStats;
use crate::persistence::Persistence;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord, session_checksum};
use crate::search::{SearchHit, SearchScope};
use crate::trash::DeletedSession;

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
    /// Large outputs stored once ([`crate::bodies`]): how many, how many
    /// references, logical against stored bytes. `problems` holds any
    /// reference without its body and any body whose count disagrees with
    /// its references.
    pub bodies: BodyStats,
}

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
///   [`MAX_SESSION_ID_BYTES`](crate::MAX_SESSION_ID_BYTES) bytes without NUL; anything else is
///   `InvalidInput` and writes nothing.
#[async_trait::async_trait]
pub trait Import: Persistence {
    /// Every session id, oldest first.
    async fn export_session_ids(&self) -> Result<Vec<String>>;

    /// The store's schema version and its own consistency check (SQLite:
    /// `PRAGMA integrity_check`; PostgreSQL and sled: every session's
    /// position counter against its messages, sled also its id index;
    /// every backend: body references against bodies both ways and every
    /// body against its address), with the body accounting
    /// ([`StoreHealth::bodies`]). Reads every body once: for `doctor`.
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
    /// A session id in the trash is `Conflict`: restore or purge it first.
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

    /// Forks the session at message `at` (all of it when `None`) and
    /// returns the new session's id. The fork is a new session (a fresh
    /// UUID v7, created now, never accessed) with the same agent, root and
    /// mode, the title suffixed (see [`fork_title`](crate::fork::fork_title)),
    /// the same metadata, and copies of the messages up to and including
    /// `at` in conversation order, with their roles, text, calls, states
    /// (complete, compacted), times, agents and usage, under fresh ids; if
    /// `at` cuts between a tool call and its result, the fork ends before
    /// the call ([`fork_len`](crate::fork::fork_len)). Its `SessionInfo`
    /// counts its own messages and tokens. One atomic step; bodies are
    /// shared (one more reference each), not copied.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session; `MessageNotFound` when
    /// `at` is not one of its messages. Nothing is written on error.
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String>;

    /// The sessions in the trash that have not expired, the latest
    /// deletion first (ties by id), each with when it goes for good
    /// ([`crate::trash`]: the rules of the grace period). Empty when the
    /// store keeps no grace period.
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>>;

    /// Brings a trashed, unexpired session back byte-exact: its record
    /// (id, agent, root, times, title, mode, listing order), every message
    /// with its id, position, text, states, times, agent and usage, its
    /// metadata, and the counters `list_sessions` and the usage calls
    /// read. One atomic step.
    ///
    /// # Errors
    /// `SessionNotFound` when the id is not in the trash (never deleted,
    /// deleted for good, or expired); `Conflict` when a live session holds
    /// the id (only an import can make one). Nothing is written on error.
    async fn restore_session(&self, session_id: &str) -> Result<()>;

    /// Removes for good every trashed session that has expired (see
    /// [`crate::trash`]), with its messages, metadata and the references
    /// to its bodies (a body another session still uses stays), and
    /// returns them; with `dry_run`, changes nothing and returns what it
    /// would remove. Sessions still in their grace period are untouched.
    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>>;

    /// Searches the messages of every session in `scope` for `query` and
    /// returns up to `limit` hits (at most
    /// [`MAX_SEARCH_HITS`](crate::search::MAX_SEARCH_HITS)), best first.
    /// The words, the grammar, which messages are hits and their order are
    /// [`crate::search`]'s, the same on every backend; a search sees every
    /// write acknowledged before it started.
    ///
    /// - **Set**: the messages in scope whose `content` or `full_content`
    ///   (each on its own) hold every required item and neither holds an
    ///   excluded one; of those, the `limit` with the highest message ids.
    /// - **Order**: [`SearchHit::rank`] (occurrences of the items)
    ///   descending, then message id descending.
    /// - **Scope**: [`SearchScope`]: a root (root-less sessions count under
    ///   every root), one session, roles, compacted messages only when
    ///   asked. A deleted session's messages are never found.
    /// - Indexes only narrow candidates; an index that lags behind the
    ///   rows (an older koda's writes on SQLite, rows not yet indexed on
    ///   PostgreSQL) changes no result.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or oversized query
    /// ([`Query::parse`](crate::search::Query::parse)) and for a root that
    /// is not UTF-8; no other input is an error (an unknown session finds
    /// nothing).
    async fn search_messages(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>>;

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
