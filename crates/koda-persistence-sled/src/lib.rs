//! `SledStore`: the contract on a plain ordered key-value store (sled 0.34),
//! proof that the trait is not SQL-shaped.
//!
//! - **Layout**: one tree, namespaced keys, documented in [`keys`]; values are
//!   a version byte plus postcard.
//! - **Atomicity**: every call that writes applies one `sled::Batch`, which
//!   sled applies atomically, crash included: a message never exists without
//!   its session's counters and indexes.
//! - **Concurrency**: calls run on tokio's blocking pool, never on a runtime
//!   worker; a reader-writer lock makes writes exclusive and reads see whole
//!   writes, so calls are linearizable. That single writer lock is the whole
//!   lock order: two writes cannot deadlock. A sled directory belongs to one
//!   process: a second open of the same path is `Unavailable` (after 250 ms;
//!   up to 10 s when this process itself closed a handle on it within the
//!   last 30 s, because sled releases that lock from its background threads).
//! - **Failures**: a write whose batch or flush fails (a full disk) drops the
//!   sled handle, because sled keeps an I/O error for good and its memory may
//!   still hold the failed batch; the next call reopens the directory from
//!   what reached the disk. So a failed write leaves nothing visible, and the
//!   store writes again once space is back, without its caller reopening it.
//! - **Privacy**: a directory the store creates is 0700, and on every open the
//!   files and directories sled keeps in it are set to 0600 / 0700, whatever
//!   the umask. Files sled adds while running (snapshots) inherit the umask
//!   until the next open, inside the private directory.
//! - **Durability** ([`FlushPolicy`]): with `EveryWrite` (the default) each
//!   write is flushed (fsync) before it returns, so it survives a process
//!   crash and a power failure; with `Every(d)` sled flushes in the
//!   background every `d`, and a crash (of the process or the machine) may
//!   lose the writes of the last `d`; with `Manual` nothing is flushed until
//!   [`SledStore::flush`] or a clean drop.
//! - **Damage on disk is not reported**: sled 0.34 recovers a data file
//!   damaged on disk by cutting its log at the first invalid record, without
//!   an error. Seen: garbage over the last 7/8 of the `db` file of a store
//!   with 200 flushed messages reopened without error and held the first 30
//!   (a consistent prefix: batches stay atomic), so neither `Corrupt` nor
//!   `koda-store doctor` can tell. Keep copies (`koda-store export`).
//! - **Reads** never scan the store: one session's questions are prefix scans
//!   of that session's keys; `list_sessions` walks one root's index,
//!   `recent_user_messages` the user-message index from the newest; usage
//!   by agent is kept (exact) in the session record by every write, so
//!   reading it reads one record. Session records are at value format 2; a
//!   store an earlier build wrote is upgraded on open (its usage counted
//!   once, every record in one atomic batch: a process killed during it
//!   leaves the store for the next open to finish), and an earlier build
//!   refuses it afterwards (`Corrupt`).
#![deny(missing_docs)]

mod codec;
mod error;
pub mod keys;
mod open;
mod options;
mod queries;

pub use crate::options::{FlushPolicy, MAX_CACHE_MB, SCHEMES, SledOptions, parse_location};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use anyhow::{Context as _, Result};
use koda_persistence_api::backend::{
    ContextCache, ContextRow, DEFAULT_CACHED_SESSIONS, NewMessage, check_claim, check_limit,
    check_message_records, check_session_record, check_usage, root_to_str, usage_total,
};
use koda_persistence_api::{
    Clock, CompactedStats, Import, Message, MessageRecord, MetadataRecord, Persistence,
    PersistenceError, Role, SessionInfo, SessionRecord, SessionUsage, StoreHealth, SystemClock,
};
use sled::{Batch, Db};

use crate::error::storage;
use crate::open::{closing, open_db};

/// The sled backend. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

struct Inner {
    /// The open database. Writers take the lock exclusively, readers
    /// shared. `None` after a write failed: sled keeps an I/O error for
    /// good and its memory may hold the failed write, so the handle is
    /// dropped and the next call opens the directory again, from what
    /// reached the disk.
    db: RwLock<Option<Db>>,
    options: SledOptions,
    path: PathBuf,
    /// Loaded contexts. The directory belongs to this process, so the
    /// per-session change counters can live in memory.
    cache: Mutex<SessionCache>,
}

/// Per-session change counters and the contexts read at them.
#[derive(Debug)]
struct SessionCache {
    versions: HashMap<String, i64>,
    contexts: ContextCache,
}

impl SessionCache {
    fn version(&self, session: &str) -> i64 {
        self.versions.get(session).copied().unwrap_or(0)
    }

    /// Counts a write to `session`'s messages; returns the new version.
    fn bump(&mut self, session: &str) -> i64 {
        let v = self.versions.entry(session.to_owned()).or_insert(0);
        *v += 1;
        *v
    }

    /// A write the cache does not follow row by row.
    fn changed(&mut self, session: &str) {
        self.bump(session);
        self.contexts.forget(session);
    }
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, SessionCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, Option<Db>> {
        // A panic under the lock leaves either a usable handle or `None`.
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open handle in `slot`, reopening the directory if a failed
    /// write dropped it.
    fn ensure_open<'a>(&self, slot: &'a mut Option<Db>) -> Result<&'a Db> {
        if slot.is_none() {
            *slot = Some(open_db(&self.path, &self.options)?);
            tracing::info!(path = %self.path.display(), "reopened the sled store");
        }
        slot.as_ref()
            .ok_or_else(|| PersistenceError::Unavailable("sled handle missing".into()).into())
    }

    /// Drops the handle after a failed write (see [`Inner::db`]) and
    /// forgets every cached context, which may hold the failed write.
    fn discard(&self, slot: &mut Option<Db>) {
        tracing::warn!(
            path = %self.path.display(),
            "a sled write failed; dropping the handle, the next call reopens the store"
        );
        *slot = None;
        closing(&self.path);
        self.cache().contexts = ContextCache::new(DEFAULT_CACHED_SESSIONS);
    }

    fn classify(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast::<sled::Error>() {
            Ok(se) => storage(se, &self.path),
            Err(e) => e,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The handle closes right after this (its fields drop next).
        closing(&self.path);
    }
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("flush", &self.inner.options.flush)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens `sled://`'s part after the scheme: a directory path, optionally
    /// with `?flush=…` (see [`parse_location`]).
    ///
    /// # Errors
    /// As [`SledStore::open_with`].
    pub async fn open_path(spec: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let (path, options) = parse_location(spec)?;
        Self::open_with(path, options, clock).await
    }

    /// Opens a `sled://PATH?…` URL (see [`parse_location`]) reading time
    /// from `clock`.
    ///
    /// # Errors
    /// `InvalidInput` for another scheme or a bad parameter; otherwise as
    /// [`SledStore::open_with`].
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let spec = url.trim().strip_prefix("sled://").ok_or_else(|| {
            PersistenceError::InvalidInput(
                "a sled URL is sled://PATH, e.g. sled:///var/lib/koda/store".into(),
            )
        })?;
        Self::open_path(spec, clock).await
    }

    /// Opens (creating) the store in `path` on the system clock.
    ///
    /// # Errors
    /// As [`SledStore::open_with`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(
            path.as_ref().to_owned(),
            SledOptions::default(),
            Arc::new(SystemClock),
        )
        .await
    }

    /// Opens (creating) the store in directory `path`.
    ///
    /// # Errors
    /// `Unavailable` when the directory is in use by another process or
    /// cannot be opened; `Corrupt` when sled finds it corrupt.
    pub async fn open_with(
        path: PathBuf,
        options: SledOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        options.validate()?;
        let p = path.clone();
        let opts = options.clone();
        let db = tokio::task::spawn_blocking(move || open_db(&p, &opts))
            .await
            .context("sled open task failed")??;
        Ok(Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                options,
                path,
                cache: Mutex::new(SessionCache {
                    versions: HashMap::new(),
                    contexts: ContextCache::new(DEFAULT_CACHED_SESSIONS),
                }),
            }),
            clock,
        })
    }

    /// Writes everything to disk now (what [`FlushPolicy::Manual`] waits for).
    ///
    /// # Errors
    /// `Unavailable` when the disk write fails.
    pub async fn flush(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = inner.exclusive();
            let db = inner.ensure_open(&mut slot)?;
            match db.flush() {
                Ok(_) => Ok(()),
                Err(e) => {
                    inner.discard(&mut slot);
                    Err(storage(e, &inner.path))
                }
            }
        })
        .await
        .context("sled flush task failed")?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Db) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            {
                let shared = inner.db.read().unwrap_or_else(|p| p.into_inner());
                if let Some(db) = shared.as_ref() {
                    return f(db).map_err(|e| inner.classify(e));
                }
            }
            // A failed write dropped the handle: reopen, then read under
            // the exclusive lock this once.
            let mut slot = inner.exclusive();
            let db = inner.ensure_open(&mut slot)?;
            f(db).map_err(|e| inner.classify(e))
        })
        .await
        .context("sled read task failed")?
    }

    /// Runs `f` under the write lock; it returns a batch to apply and a
    /// result. The batch is applied atomically and flushed per the policy.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Db) -> Result<(Batch, R)> + Send + 'static,
    {
        self.write_then(f, |_, out| out).await
    }

    /// Like `write`, then `after` with the cache, still under the write
    /// lock. A write whose batch or flush fails drops the handle (see
    /// [`Inner::db`]): nothing of it stays visible, and the next call
    /// reopens the directory.
    async fn write_then<R, T, F, A>(&self, f: F, after: A) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<(Batch, R)> + Send + 'static,
        A: FnOnce(&mut SessionCache, R) -> T + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = inner.exclusive();
            let db = inner.ensure_open(&mut slot)?;
            let (batch, out) = match f(db) {
                Ok(made) => made,
                Err(e) if e.downcast_ref::<sled::Error>().is_some() => {
                    inner.discard(&mut slot);
                    return Err(inner.classify(e));
                }
                Err(e) => return Err(e),
            };
            let applied = db.apply_batch(batch).and_then(|()| {
                if inner.options.flush == FlushPolicy::EveryWrite {
                    db.flush().map(|_| ())
                } else {
                    Ok(())
                }
            });
            match applied {
                Ok(()) => Ok(after(&mut inner.cache(), out)),
                Err(e) => {
                    inner.discard(&mut slot);
                    Err(storage(e, &inner.path))
                }
            }
        })
        .await
        .context("sled write task failed")?
    }
}

#[async_trait::async_trait]
impl Persistence for SledStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let agent = agent_name.to_owned();
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.clone();
        self.write(move |db| Ok((queries::create_session(db, &sid, &agent, &root, now)?, ())))
            .await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let limit = check_limit(limit)?;
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |db| queries::list_sessions(db, &root, limit))
            .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        let gone = sid.clone();
        self.write_then(
            move |db| queries::delete_session(db, &sid),
            move |cache, existed| {
                cache.changed(&gone);
                existed
            },
        )
        .await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, false, &v)?, ())))
            .await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, true, &v)?, ())))
            .await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.mode)))
            .await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self
            .read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.last_accessed_ms)))
            .await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        check_usage(m.usage.as_ref())?;
        let now = self.clock.now_ms();
        let session = m.session_id.clone();
        self.write_then(
            move |db| queries::append_message(db, m, now),
            move |cache, record| {
                let version = cache.bump(&session);
                let id = i64::try_from(record.id).unwrap_or(i64::MAX);
                if cache.contexts.holds(&session)
                    && let Ok(message) = queries::to_message(&session, &record)
                {
                    let row = ContextRow {
                        message,
                        complete: false,
                    };
                    cache.contexts.appended(&session, version, row);
                }
                id
            },
        )
        .await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        let inner = self.inner.clone();
        self.read(move |db| {
            // Writers are excluded while we hold the read lock, so the
            // version and the rows agree.
            let version = inner.cache().version(&sid);
            if let Some(context) = inner.cache().contexts.get(&sid, version) {
                return Ok(context);
            }
            let rows = queries::active_rows(db, &sid)?;
            Ok(inner.cache().contexts.put(&sid, version, rows))
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::load_all(db, &sid)).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        let limit = check_limit(limit)?;
        self.read(move |db| queries::recent_user_messages(db, limit))
            .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::Assistant))
            .await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::User))
            .await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::has_pending_tool_calls(db, &sid))
            .await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| queries::mark_complete(db, message_id, now),
            move |cache, session| {
                if let Some(s) = session {
                    let version = cache.bump(&s);
                    cache.contexts.completed(&s, version, message_id);
                }
            },
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
        self.read(move |db| queries::usage_groups(db, &sid)).await
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        let (sid, summary) = (session_id.to_owned(), summary.to_owned());
        let now = self.clock.now_ms();
        let compacted = sid.clone();
        self.write_then(
            move |db| queries::compact(db, &sid, &summary, preserve_count, now),
            move |cache, marked| {
                cache.changed(&compacted);
                marked
            },
        )
        .await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        let (ids, stub) = (message_ids.to_vec(), stub.to_owned());
        self.write_then(
            move |db| queries::clear_content(db, &ids, &stub),
            |cache, touched| {
                for s in touched {
                    cache.changed(&s);
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
            move |db| queries::purge(db, min_age_days, now),
            |cache, (n, touched)| {
                for s in touched {
                    cache.changed(&s);
                }
                n
            },
        )
        .await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        let (sid, key) = (session_id.to_owned(), key.to_owned());
        self.read(move |db| queries::get_metadata(db, &sid, &key))
            .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |db| Ok((queries::set_metadata(db, &sid, &key, &value)?, ())))
            .await
    }
}

#[async_trait::async_trait]
impl Import for SledStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.read(queries::export_session_ids).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_session(db, &sid)).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_messages(db, &sid))
            .await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_metadata(db, &sid))
            .await
    }

    async fn health(&self) -> Result<StoreHealth> {
        self.read(queries::health).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.read(queries::message_id_range).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        let (first, last) = (queries::as_u64(first), queries::as_u64(last));
        self.write(move |db| queries::claim_ids(db, first, last))
            .await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        let session = session.clone();
        self.write(move |db| queries::import_session(db, &session))
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
        let changed = sid.clone();
        let messages = messages.to_vec();
        self.write_then(
            move |db| queries::import_messages(db, &sid, &messages, keep_ids),
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
        self.write(move |db| Ok((queries::import_metadata(db, &sid, &entries)?, ())))
            .await
    }
}
