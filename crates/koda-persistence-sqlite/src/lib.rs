//! `SqliteStore`: koda's embedded default backend, on rusqlite with a bundled
//! SQLite.
//!
//! - **Drop-in**: opening any generation of koda's own `koda.db` migrates it in
//!   place, in one transaction, keeping every row, table and column (see
//!   [`schema`]). `PRAGMA user_version` records the schema version.
//! - **Concurrency**: WAL mode; one writer thread and a few reader threads
//!   own the connections, so async callers never block a runtime worker and
//!   readers never wait for the writer. Every write runs in a
//!   `BEGIN IMMEDIATE` transaction; a database locked by another process (a
//!   second koda window on the same file) is waited for and retried up to
//!   [`SqliteOptions::busy_timeout`], then reported as `Unavailable`.
//! - **Group commit**: writes that are waiting when the writer thread takes
//!   one (concurrent callers) share that transaction, each in a savepoint of
//!   its own, so one commit (one fsync with `Full`) serves them all. A group
//!   smaller than the last one waits for more writes for up to half the last
//!   transaction's time (at most 250 µs); a lone writer never waits. A write
//!   that fails is rolled back to its savepoint and fails alone; every
//!   caller is answered only after the commit, so a crash loses no
//!   acknowledged write (what it can lose is written below under
//!   Durability: the same as without grouping). A group whose transaction
//!   fails as a whole (its commit, a lock held past the timeout) is run
//!   again write by write, so each caller gets its own outcome. One
//!   writer and SQLite's single database lock make the lock order trivial:
//!   a write holds the whole database, so two writes cannot deadlock.
//! - **Checkpoints**: the WAL is copied into the database file by a
//!   checkpointer thread with a connection of its own, nudged at each 1,000
//!   WAL frames, instead of by the commit that crosses SQLite's threshold
//!   (which then paid the copy, and with `Full` two fsyncs, before
//!   returning). Past 4,000 frames (a checkpointer that cannot keep up) the
//!   writer checkpoints itself, so the WAL stays bounded. Durability is
//!   unchanged: a checkpoint only moves committed pages.
//! - **Closing**: dropping the last handle waits (at most `busy_timeout`) for
//!   the threads to close their connections; the writer first checkpoints
//!   the WAL into the database file, so a copy of the `.db` file alone (a
//!   backup, a bug report) holds every row. A process that exits without
//!   dropping the store loses nothing either: the next open replays the WAL.
//! - **Failures**: a failed write (a full disk, a lock held past the
//!   timeout) is rolled back and leaves nothing; the same handle writes
//!   again once the cause is gone.
//! - **Durability** ([`Synchronous`]): with `Normal` (the default) a call that
//!   returned survives a crash of the process, but the last transactions
//!   before a power failure or OS crash may be rolled back (never corrupted);
//!   with `Full` every returned call also survives power loss, at the cost of
//!   an fsync per write.
//! - **Security**: a database file this store creates is mode 0600, and a
//!   directory it creates 0700 (conversation history holds secrets). All SQL
//!   is parameterised.
//! - **Integrity**: a file that is not a SQLite database, or is corrupt,
//!   gives `Corrupt` naming the path, and is never written to.
//! - **Usage**: `session_token_usage` and `session_usage_by_agent` read one
//!   row per agent from `kp_usage`, which triggers keep in each write's own
//!   transaction; a sum that passed `i64::MAX` is kept as a REAL (inexact)
//!   and the session's messages are recounted instead, so the answer is
//!   always the exact sum, saturated.
//!
//! # Running an older koda on the same file
//!
//! An older koda may keep running on a file this store adopted (a second
//! terminal), or be brought back after it. Each sees the other's rows:
//!
//! - The file records the koda generation it came from
//!   (`kp_meta.koda_generation`: `oldest`, `middle`, `newest`, `new` for a
//!   file this store created, `unknown` for one an earlier build adopted).
//!   Triggers give rows an older koda inserts their conversation position,
//!   counters and millisecond instants (from its text), and keep the usage
//!   by agent (`kp_usage`, schema version 3) right for its inserts, edits
//!   and deletes as for this store's. An answer inserted by a generation
//!   without completion tracking (`oldest`, `middle`, `unknown`) counts as
//!   complete: it was delivered. The newest generation
//!   marks completion itself, so its answer stays hidden while it streams;
//!   the first time a foreign writer marks a completion, the file counts as
//!   `newest` from then on.
//! - This store writes koda's own `YYYY-MM-DD HH:MM:SS` UTC text into the
//!   columns an older koda reads and compares as text (`created_at`,
//!   `last_accessed_at`, `completed_at`, `compacted_at`, `updated_at`), so
//!   its session order and its purge cutoff (`compacted_at <
//!   datetime('now', '-N days')`) stay right; the milliseconds live in the
//!   `*_ms` columns.
//! - An older koda's list, history, usage and compacted-stats queries return
//!   what this store returns, with these differences:
//!   - compaction summaries: this store places its summary and hint before
//!     the preserved tail, an older koda reads them by id (after the tail);
//!     and a summary an older koda writes after the tail stays there in this
//!     store's order;
//!   - the oldest generation knows no compaction: it shows compacted messages
//!     and summaries as ordinary history and never purges;
//!   - an older koda sees whole seconds: sessions created within one second
//!     may list in another order there;
//!   - a row with an unknown role is `Corrupt` here, where koda reads it as a
//!     user message;
//!   - on a file of a generation without completion tracking, the first
//!     answer a newest-generation koda streams counts as complete before it
//!     finishes (until that koda marks its first completion).
#![deny(missing_docs)]

mod checkpoint;
mod error;
mod open;
mod options;
mod queries;
mod rows;
pub mod schema;
mod worker;

pub use crate::options::{Location, MAX_READERS, SCHEMES, SqliteOptions, Synchronous, parse_url};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use koda_persistence_api::backend::{
    ContextCache, NewMessage, SharedContextCache, check_claim, check_limit, check_message_records,
    check_session_record, check_usage, root_to_str, usage_total,
};
use koda_persistence_api::{
    Clock, CompactedStats, Import, Message, MessageRecord, MetadataRecord, Persistence, Role,
    SessionInfo, SessionRecord, SessionUsage, StoreHealth, SystemClock,
};
use rusqlite::Connection;

use crate::error::classify;
use crate::open::open_blocking;
use crate::worker::Worker;

/// The SQLite backend. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    // Readers are declared (so dropped) first: the writer closes the last
    // connection, after its checkpoint, and SQLite then removes the WAL.
    readers: Worker,
    writer: Worker,
    clock: Arc<dyn Clock>,
    location: Location,
    options: SqliteOptions,
    /// Recently loaded contexts, trusted while `sessions.version` matches.
    cache: Arc<SharedContextCache>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if allowed) the database file at `path` with default
    /// options on the system clock.
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(
            Location::File(path.as_ref().to_owned()),
            SqliteOptions::default(),
            Arc::new(SystemClock),
        )
        .await
    }

    /// A private in-memory database on the given clock.
    ///
    /// # Errors
    /// `Unavailable` if SQLite or its thread cannot start.
    pub async fn open_in_memory(clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_with(Location::Memory, SqliteOptions::default(), clock).await
    }

    /// Opens a `sqlite://…` / `sqlite::memory:` URL (see [`parse_url`]).
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL; otherwise as [`SqliteStore::open_with`].
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let (location, options) = parse_url(url)?;
        Self::open_with(location, options, clock).await
    }

    /// Opens the database at `location`, migrating it to the current schema.
    ///
    /// # Errors
    /// `Corrupt` when the file is not a SQLite database (it is left untouched);
    /// `Unavailable` when it cannot be opened or stays locked past the busy
    /// timeout, or was written by a newer schema; `InvalidInput` when it does
    /// not exist and `create` is off.
    pub async fn open_with(
        location: Location,
        options: SqliteOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        options.validate()?;
        let loc = location.clone();
        let opts = options.clone();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&loc, &opts))
            .await
            .context("sqlite open task failed")?
            .map_err(|e| classify(e, &location))?;
        let wait = options.busy_timeout;
        let writer = Worker::spawn(
            "koda-sqlite-writer",
            vec![opened.writer],
            true,
            opened.checkpointer,
            wait,
        )?;
        let readers = if opened.readers.is_empty() {
            writer.clone()
        } else {
            Worker::spawn("koda-sqlite-reader", opened.readers, false, None, wait)?
        };
        Ok(Self {
            writer,
            readers,
            clock,
            location,
            options,
            cache: Arc::new(SharedContextCache::default()),
        })
    }

    /// Where this store's database lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The `synchronous` level the writer connection runs at, as SQLite
    /// reports it (`1` = NORMAL, `2` = FULL).
    ///
    /// # Errors
    /// Store failures.
    pub async fn synchronous(&self) -> Result<i64> {
        let location = self.location.clone();
        self.writer
            .run(|conn| Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
            .await
            .map_err(|e| classify(e, &location))
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let location = self.location.clone();
        self.readers
            .run(move |conn| f(conn))
            .await
            .map_err(|e| classify(e, &location))
    }

    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>) -> Result<R> + Send + 'static,
    {
        self.write_then(f, |_, out| out).await
    }

    /// Runs `f` in one write transaction, then `after` on the writer thread
    /// with the context cache, in commit order.
    async fn write_then<R, T, F, A>(&self, f: F, after: A) -> Result<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>) -> Result<R> + Send + 'static,
        A: FnOnce(&mut ContextCache, R) -> T + Send + 'static,
    {
        let location = self.location.clone();
        let timeout = self.options.busy_timeout;
        let cache = self.cache.clone();
        self.writer
            .write(timeout, f, move |out| after(&mut cache.lock(), out))
            .await
            .map_err(|e| classify(e, &location))
    }
}

/// Drops `session` from the context cache in a write's after-commit step
/// (on the writer thread), freeing its rows only once the write's callers
/// were answered.
fn forget_after_answer(cache: &mut ContextCache, session: &str) {
    if let Some(rows) = cache.remove(session) {
        worker::drop_after_answer(rows);
    }
}

#[async_trait::async_trait]
impl Persistence for SqliteStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let agent = agent_name.to_owned();
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.clone();
        self.write(move |tx| queries::create_session(tx, &sid, &agent, &root, now))
            .await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        check_limit(limit)?;
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |c| queries::list_sessions(c, limit, &root))
            .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        let gone = sid.clone();
        self.write_then(
            move |tx| queries::delete_session(tx, &sid),
            move |cache, existed| {
                forget_after_answer(cache, &gone);
                existed
            },
        )
        .await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |tx| queries::set_session_text(tx, "title", &sid, &v))
            .await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |tx| queries::set_session_text(tx, "mode", &sid, &v))
            .await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::get_session_mode(c, &sid)).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self.read(move |c| queries::last_accessed(c, &sid)).await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        check_usage(m.usage.as_ref())?;
        let now = self.clock.now_ms();
        let m = Arc::new(m);
        let written = m.clone();
        self.write_then(
            move |tx| queries::insert_message(tx, &written, now),
            move |cache, (id, version)| {
                cache.append_new(&m, id, now, version);
                id
            },
        )
        .await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        let cache = self.cache.clone();
        self.read(move |c| {
            // One snapshot for the version and the rows it describes.
            let snapshot = c.unchecked_transaction()?;
            let Some(version) = queries::session_version(c, &sid)? else {
                return Ok(Vec::new());
            };
            let context = cache.load(&sid, version, || queries::load_active(c, &sid))?;
            snapshot.finish()?;
            Ok(context)
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::load_all(c, &sid)).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        check_limit(limit)?;
        self.read(move |c| queries::recent_user_messages(c, limit))
            .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::last_content(c, &sid, Role::Assistant))
            .await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::last_content(c, &sid, Role::User))
            .await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::has_pending_tool_calls(c, &sid))
            .await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.write_then(
            move |tx| queries::mark_complete(tx, message_id, now),
            move |cache, (session, version)| cache.completed(&session, version, message_id),
        )
        .await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        Ok(usage_total(&self.session_usage_by_agent(session_id).await?))
    }

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        let sid = session_id.to_owned();
        self.read(move |c| match queries::usage_kept(c, &sid)? {
            Some(groups) => Ok(groups),
            None => Ok(queries::usage_groups(&queries::usage_rows(c, &sid)?)),
        })
        .await
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        let (sid, text) = (session_id.to_owned(), summary.to_owned());
        let now = self.clock.now_ms();
        let compacted = sid.clone();
        self.write_then(
            move |tx| queries::compact(tx, &sid, &text, preserve_count, now),
            move |cache, n| {
                forget_after_answer(cache, &compacted);
                n
            },
        )
        .await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        let (ids, stub) = (message_ids.to_vec(), stub.to_owned());
        self.write_then(
            move |tx| queries::clear_content(tx, &ids, &stub),
            |cache, touched| {
                for s in touched {
                    forget_after_answer(cache, &s);
                }
            },
        )
        .await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.read(queries::compacted_stats).await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        self.write_then(
            move |tx| queries::purge(tx, min_age_days, now),
            |cache, (n, touched)| {
                for s in touched {
                    forget_after_answer(cache, &s);
                }
                n
            },
        )
        .await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        let (sid, key) = (session_id.to_owned(), key.to_owned());
        self.read(move |c| queries::get_metadata(c, &sid, &key))
            .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        let now = self.clock.now_ms();
        self.write(move |tx| queries::set_metadata(tx, &sid, &key, &value, now))
            .await
    }
}

#[async_trait::async_trait]
impl Import for SqliteStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.read(queries::export_session_ids).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::export_session(c, &sid)).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::export_messages(c, &sid)).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::export_metadata(c, &sid)).await
    }

    async fn health(&self) -> Result<StoreHealth> {
        self.read(queries::health).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.read(queries::message_id_range).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        self.write(move |tx| queries::claim_ids(tx, first, last))
            .await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        let session = session.clone();
        self.write(move |tx| queries::import_session(tx, &session))
            .await
    }

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        check_message_records(messages)?;
        let sid = session_id.to_owned();
        let messages = messages.to_vec();
        self.write(move |tx| queries::import_messages(tx, &sid, &messages, keep_ids))
            .await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let sid = session_id.to_owned();
        let entries = entries.to_vec();
        let now = self.clock.now_ms();
        self.write(move |tx| queries::import_metadata(tx, &sid, &entries, now))
            .await
    }
}
