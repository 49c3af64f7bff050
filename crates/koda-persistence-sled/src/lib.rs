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
//! - **Reads** never scan the store: one session's questions are prefix scans
//!   of that session's keys; `list_sessions` walks one root's index,
//!   `recent_user_messages` the user-message index from the newest.
#![deny(missing_docs)]

mod codec;
pub mod keys;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{Context as _, Result};
use koda_persistence_api::backend::{
    ContextCache, ContextRow, DEFAULT_CACHED_SESSIONS, NewMessage, check_limit, check_usage,
    format_timestamp, purge_cutoff, root_to_str, usage_by_agent, usage_total,
};
use koda_persistence_api::{
    COMPACTION_HINT, Clock, CompactedStats, Message, Persistence, PersistenceError, Role,
    SessionInfo, SessionUsage, SystemClock,
};
use sled::{Batch, Db, IVec};

use crate::codec::{MessageRecord, SessionRecord, decode, encode, role_byte, role_of};

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flush (fsync) after every write, before it returns. Nothing that
    /// returned is lost, even on power failure. The default.
    EveryWrite,
    /// sled flushes in the background at this interval; a crash may lose
    /// the writes of the last interval.
    Every(Duration),
    /// Only [`SledStore::flush`] (or a clean shutdown) writes to disk.
    Manual,
}

/// How to open a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// When writes reach the disk.
    pub flush: FlushPolicy,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            flush: FlushPolicy::EveryWrite,
            cache_capacity: 256 * 1024 * 1024,
        }
    }
}

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
        }
        slot.as_ref()
            .ok_or_else(|| PersistenceError::Unavailable("sled handle missing".into()).into())
    }

    /// Drops the handle after a failed write (see [`Inner::db`]) and
    /// forgets every cached context, which may hold the failed write.
    fn discard(&self, slot: &mut Option<Db>) {
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

fn storage(e: sled::Error, path: &Path) -> anyhow::Error {
    let place = path.display();
    match e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            PersistenceError::Unavailable(format!("{place} is in use by another process ({io})"))
                .into()
        }
        sled::Error::Io(io) => PersistenceError::Unavailable(format!("{place}: {io}")).into(),
        sled::Error::Corruption { at, bt: _ } => {
            PersistenceError::Corrupt(format!("{place} is corrupt (at {at:?})")).into()
        }
        other => anyhow::anyhow!("sled backend ({place}): {other}"),
    }
}

fn not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

/// The URL schemes this backend opens (`sled://PATH`).
pub const SCHEMES: &[&str] = &["sled"];

/// The largest page cache a URL may ask for, in MiB (64 GiB).
pub const MAX_CACHE_MB: u64 = 65_536;

const PARAMETERS: [&str; 3] = ["flush", "flush_every_ms", "cache_mb"];

/// Splits `PATH?flush=every_write|manual`, `?flush_every_ms=N` (1 to
/// 3,600,000) and `?cache_mb=N` (1 to [`MAX_CACHE_MB`]). The path and the
/// parameters are percent-decoded; each parameter may appear once.
///
/// # Errors
/// `InvalidInput` naming the parameter and what it accepts, for an unknown
/// parameter or value, or an empty path.
pub fn parse_location(spec: &str) -> Result<(PathBuf, SledOptions), PersistenceError> {
    let (path, params) = koda_persistence_api::backend::url::split_query(spec)?;
    let path = koda_persistence_api::backend::url::decode(path)?;
    if path.is_empty() {
        return Err(PersistenceError::InvalidInput(
            "sled needs a directory path, e.g. sled:///var/lib/koda/store".into(),
        ));
    }
    let mut options = SledOptions::default();
    let mut flush_given = false;
    for p in &params {
        match p.key.as_str() {
            "flush" | "flush_every_ms" if flush_given => {
                return Err(PersistenceError::InvalidInput(
                    "sled URL: give either flush or flush_every_ms, not both".into(),
                ));
            }
            "flush" => {
                flush_given = true;
                options.flush = match p.one_of(&["every_write", "manual"])? {
                    "manual" => FlushPolicy::Manual,
                    _ => FlushPolicy::EveryWrite,
                }
            }
            "flush_every_ms" => {
                flush_given = true;
                options.flush = FlushPolicy::Every(p.millis()?);
            }
            "cache_mb" => options.cache_capacity = p.number(1, MAX_CACHE_MB)? << 20,
            _ => return Err(p.unknown("sled", &PARAMETERS)),
        }
    }
    Ok((PathBuf::from(path), options))
}

impl SledOptions {
    /// Checks options built in code as a URL's are checked.
    ///
    /// # Errors
    /// `InvalidInput` naming the option and what it accepts.
    pub fn validate(&self) -> Result<(), PersistenceError> {
        if let FlushPolicy::Every(d) = self.flush {
            koda_persistence_api::backend::url::check_timeout("flush interval", d)?;
        }
        if self.cache_capacity == 0 || self.cache_capacity > MAX_CACHE_MB << 20 {
            return Err(PersistenceError::InvalidInput(format!(
                "cache_capacity must be from 1 byte to {MAX_CACHE_MB} MiB, got {}",
                self.cache_capacity
            )));
        }
        Ok(())
    }
}

/// How long an open waits for the directory's lock when this process
/// closed a handle on it within [`RECENTLY`]: sled releases the lock from
/// its background threads after the last handle is dropped, which on a
/// loaded machine took over 2 s.
const RELOCK_WAIT: Duration = Duration::from_secs(10);

/// How long an open waits for a lock held by someone else (another
/// process, or a handle of this process still open).
const FOREIGN_LOCK_WAIT: Duration = Duration::from_millis(250);

/// What "a moment ago" means for [`RELOCK_WAIT`].
const RECENTLY: Duration = Duration::from_secs(30);

/// Directories this process dropped a sled handle on, and when.
static CLOSED_HERE: std::sync::LazyLock<Mutex<HashMap<PathBuf, std::time::Instant>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

fn closing(path: &Path) {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut closed = CLOSED_HERE.lock().unwrap_or_else(|p| p.into_inner());
    closed.retain(|_, at| at.elapsed() < RECENTLY);
    closed.insert(key, std::time::Instant::now());
}

fn closed_recently(path: &Path) -> bool {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    CLOSED_HERE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .is_some_and(|at| at.elapsed() < RECENTLY)
}

/// Makes `dir` (and missing parents) private to the owner: 0700.
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Gives every file sled keeps in `dir` mode 0600 and every directory in it
/// 0700, whatever the umask was when sled created them.
#[cfg(unix)]
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700))?;
            make_private(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens sled in `path`: creates the directory 0700 when missing, waits up
/// to [`RELOCK_WAIT`] for a lock a handle this process just dropped still
/// holds (else [`FOREIGN_LOCK_WAIT`]), then makes sled's files private.
fn open_db(path: &Path, options: &SledOptions) -> Result<Db> {
    if !path.exists() {
        create_private_dir(path).map_err(|e| {
            PersistenceError::Unavailable(format!("creating {}: {e}", path.display()))
        })?;
    }
    let flush_ms = match options.flush {
        FlushPolicy::Every(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
        FlushPolicy::EveryWrite | FlushPolicy::Manual => None,
    };
    let started = std::time::Instant::now();
    let db = loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(flush_ms)
            .open()
        {
            Ok(db) => break db,
            Err(e)
                if is_locked(&e)
                    && (started.elapsed() < FOREIGN_LOCK_WAIT
                        || (started.elapsed() < RELOCK_WAIT && closed_recently(path))) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(storage(e, path)),
        }
    };
    make_private(path).map_err(|e| {
        PersistenceError::Unavailable(format!("making {} private: {e}", path.display()))
    })?;
    Ok(db)
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

fn get_session(db: &Db, id: &str) -> Result<Option<SessionRecord>> {
    match db.get(keys::session(id))? {
        Some(v) => Ok(Some(decode(&v, &format!("session {id:?}"))?)),
        None => Ok(None),
    }
}

fn decode_message(v: &IVec) -> Result<MessageRecord, PersistenceError> {
    decode(v, "a message")
}

/// A session's messages in conversation order, with their keys.
fn session_messages(db: &Db, id: &str) -> Result<Vec<(IVec, MessageRecord)>> {
    db.scan_prefix(keys::messages_of(id))
        .map(|kv| {
            let (k, v) = kv?;
            Ok((k, decode_message(&v)?))
        })
        .collect()
}

fn to_message(session_id: &str, m: &MessageRecord) -> Result<Message, PersistenceError> {
    let [p, c, cr, cc, t] = match m.usage {
        Some(u) => u.map(Some),
        None => [None; 5],
    };
    Ok(Message {
        id: i64::try_from(m.id).unwrap_or(i64::MAX),
        session_id: session_id.to_owned(),
        role: role_of(m.role)?,
        content: m.content.clone(),
        full_content: m.full_content.clone(),
        tool_calls: m.tool_calls.clone(),
        tool_call_id: m.tool_call_id.clone(),
        prompt_tokens: p,
        completion_tokens: c,
        cache_read_tokens: cr,
        cache_creation_tokens: cc,
        thinking_tokens: t,
        created_at: Some(format_timestamp(m.created_ms)),
    })
}

/// The session id inside a message key (`M` + len + id + ord).
fn session_of(message_key: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(message_key.get(1..5)?.try_into().ok()?) as usize;
    String::from_utf8(message_key.get(5..5 + len)?.to_vec()).ok()
}

fn as_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

#[async_trait::async_trait]
impl Persistence for SledStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let agent = agent_name.to_owned();
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.clone();
        self.write(move |db| {
            let seq = match db.get(keys::seq_counter())? {
                Some(v) => decode::<u64>(&v, "the session counter")? + 1,
                None => 1,
            };
            let record = SessionRecord {
                agent_name: agent,
                project_root: root.clone(),
                created_ms: now,
                seq,
                last_accessed_ms: None,
                title: None,
                mode: None,
                message_count: 0,
                total_tokens: 0,
                next_ord: 0,
            };
            let mut batch = Batch::default();
            batch.insert(keys::seq_counter(), encode(&seq)?);
            batch.insert(keys::by_root(&root, as_u64(now), seq), sid.as_bytes());
            batch.insert(keys::session(&sid), encode(&record)?);
            Ok((batch, ()))
        })
        .await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let limit = check_limit(limit)?;
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |db| {
            let mut out = Vec::new();
            for kv in db.scan_prefix(keys::root_prefix(&root)).take(limit) {
                let (_, sid) = kv?;
                let id = String::from_utf8(sid.to_vec())
                    .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))?;
                let s = get_session(db, &id)?.ok_or_else(|| {
                    PersistenceError::Corrupt(format!("root index names missing session {id:?}"))
                })?;
                out.push(SessionInfo {
                    agent_name: s.agent_name,
                    created_at: format_timestamp(s.created_ms),
                    message_count: s.message_count,
                    total_tokens: i64::try_from(s.total_tokens).unwrap_or(i64::MAX),
                    title: s.title,
                    mode: s.mode,
                    id,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        let gone = sid.clone();
        self.write_then(
            move |db| {
                let mut batch = Batch::default();
                let Some(s) = get_session(db, &sid)? else {
                    return Ok((batch, false));
                };
                for (key, m) in session_messages(db, &sid)? {
                    batch.remove(key);
                    batch.remove(keys::numbered(keys::BY_ID, m.id));
                    batch.remove(keys::numbered(keys::USER, m.id));
                    if let Some(at) = m.compacted_ms {
                        batch.remove(keys::compacted(as_u64(at), m.id));
                    }
                }
                for kv in db.scan_prefix(keys::metadata_of(&sid)) {
                    batch.remove(kv?.0);
                }
                batch.remove(keys::by_root(&s.project_root, as_u64(s.created_ms), s.seq));
                batch.remove(keys::session(&sid));
                Ok((batch, true))
            },
            move |cache, existed| {
                cache.changed(&gone);
                existed
            },
        )
        .await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |db| {
            let mut s = get_session(db, &sid)?.ok_or_else(|| not_found(&sid))?;
            s.title = Some(v);
            let mut batch = Batch::default();
            batch.insert(keys::session(&sid), encode(&s)?);
            Ok((batch, ()))
        })
        .await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |db| {
            let mut s = get_session(db, &sid)?.ok_or_else(|| not_found(&sid))?;
            s.mode = Some(v);
            let mut batch = Batch::default();
            batch.insert(keys::session(&sid), encode(&s)?);
            Ok((batch, ()))
        })
        .await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |db| Ok(get_session(db, &sid)?.and_then(|s| s.mode)))
            .await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self
            .read(move |db| Ok(get_session(db, &sid)?.and_then(|s| s.last_accessed_ms)))
            .await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        check_usage(m.usage.as_ref())?;
        let now = self.clock.now_ms();
        self.write_then(
            move |db| {
                let mut session =
                    get_session(db, &m.session_id)?.ok_or_else(|| not_found(&m.session_id))?;
                let id = db.generate_id()? + 1;
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
                session.total_tokens += usage.map_or(0, |u| i128::from(u[0]) + i128::from(u[1]));
                let key = keys::message(&m.session_id, session.next_ord);
                let record = MessageRecord {
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
                };
                let mut batch = Batch::default();
                batch.insert(keys::session(&m.session_id), encode(&session)?);
                batch.insert(keys::numbered(keys::BY_ID, id), key.clone());
                if m.role == Role::User {
                    batch.insert(keys::numbered(keys::USER, id), key.clone());
                }
                batch.insert(key, encode(&record)?);
                Ok((batch, (m.session_id, record)))
            },
            |cache, (session, record)| {
                let version = cache.bump(&session);
                let id = i64::try_from(record.id).unwrap_or(i64::MAX);
                if cache.contexts.holds(&session)
                    && let Ok(message) = to_message(&session, &record)
                {
                    cache.contexts.appended(
                        &session,
                        version,
                        ContextRow {
                            message,
                            complete: false,
                        },
                    );
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
            let rows = session_messages(db, &sid)?
                .iter()
                .filter(|(_, m)| m.compacted_ms.is_none())
                .map(|(_, m)| {
                    Ok(ContextRow {
                        message: to_message(&sid, m)?,
                        complete: m.completed_ms.is_some(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(inner.cache().contexts.put(&sid, version, rows))
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        self.read(move |db| {
            session_messages(db, &sid)?
                .iter()
                .map(|(_, m)| Ok(to_message(&sid, m)?))
                .collect()
        })
        .await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        let limit = check_limit(limit)?;
        self.read(move |db| {
            let mut out = Vec::new();
            for kv in db.scan_prefix([keys::USER]).rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, key) = kv?;
                let Some(v) = db.get(&key)? else { continue };
                if let Some(c) = decode_message(&v)?.content.filter(|c| !c.is_empty()) {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        self.last_content(session_id, Role::Assistant).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        self.last_content(session_id, Role::User).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |db| {
            for kv in db.scan_prefix(keys::messages_of(&sid)).rev() {
                let m = decode_message(&kv?.1)?;
                if m.compacted_ms.is_none() {
                    return Ok(role_of(m.role)? == Role::Assistant && m.tool_calls.is_some());
                }
            }
            Ok(false)
        })
        .await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| {
                let missing = || anyhow::Error::from(PersistenceError::MessageNotFound(message_id));
                let id = u64::try_from(message_id).map_err(|_| missing())?;
                let key = db
                    .get(keys::numbered(keys::BY_ID, id))?
                    .ok_or_else(missing)?;
                let v = db.get(&key)?.ok_or_else(missing)?;
                let mut m = decode_message(&v)?;
                m.completed_ms = Some(now);
                let session = session_of(&key);
                let mut batch = Batch::default();
                batch.insert(key, encode(&m)?);
                Ok((batch, session))
            },
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
        self.read(move |db| {
            let messages = session_messages(db, &sid)?;
            Ok(usage_by_agent(messages.iter().map(|(_, m)| {
                (
                    m.agent_name.as_deref(),
                    m.usage.map_or([None; 5], |u| u.map(Some)),
                )
            })))
        })
        .await
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
            move |db| {
                let mut session = get_session(db, &sid)?.ok_or_else(|| not_found(&sid))?;
                let all = session_messages(db, &sid)?;
                let active: Vec<usize> = (0..all.len())
                    .filter(|&i| all[i].1.compacted_ms.is_none())
                    .collect();
                let marked = active.len().saturating_sub(preserve_count);
                let mut batch = Batch::default();
                if marked == 0 {
                    return Ok((batch, 0));
                }
                for &i in &active[..marked] {
                    let (key, m) = &all[i];
                    let mut m = m.clone();
                    m.compacted_ms = Some(now);
                    batch.insert(keys::compacted(as_u64(now), m.id), key.clone());
                    batch.insert(key.clone(), encode(&m)?);
                }
                // The summary and hint take the first preserved message's place;
                // it and everything after it move two places on.
                let first = active.get(marked).copied();
                let at = match first {
                    Some(i) => keys::ord_of(&all[i].0)
                        .ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?,
                    None => session.next_ord + 1,
                };
                if let Some(i) = first {
                    let tail = &all[i..];
                    for (key, _) in tail {
                        batch.remove(key.clone());
                    }
                    for (key, m) in tail {
                        let ord = keys::ord_of(key)
                            .ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
                        let moved = keys::message(&sid, ord + 2);
                        batch.insert(keys::numbered(keys::BY_ID, m.id), moved.clone());
                        if m.role == role_byte(Role::User) {
                            batch.insert(keys::numbered(keys::USER, m.id), moved.clone());
                        }
                        batch.insert(moved, encode(m)?);
                    }
                }
                for (offset, role, text, completed) in [
                    (0, Role::System, summary.as_str(), None),
                    (1, Role::Assistant, COMPACTION_HINT, Some(now)),
                ] {
                    let id = db.generate_id()? + 1;
                    let key = keys::message(&sid, at + offset);
                    let record = MessageRecord {
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
                    };
                    batch.insert(keys::numbered(keys::BY_ID, id), key.clone());
                    batch.insert(key, encode(&record)?);
                }
                session.next_ord += 2;
                session.message_count += 2;
                batch.insert(keys::session(&sid), encode(&session)?);
                Ok((batch, marked))
            },
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
            move |db| {
                let mut changed: HashMap<IVec, MessageRecord> = HashMap::new();
                for id in ids.into_iter().filter_map(|id| u64::try_from(id).ok()) {
                    let Some(key) = db.get(keys::numbered(keys::BY_ID, id))? else {
                        continue;
                    };
                    if changed.contains_key(&key) {
                        continue;
                    }
                    let Some(v) = db.get(&key)? else { continue };
                    let mut m = decode_message(&v)?;
                    m.content = Some(stub.clone());
                    changed.insert(key, m);
                }
                let mut batch = Batch::default();
                let mut touched = Vec::new();
                for (key, m) in changed {
                    touched.extend(session_of(&key));
                    batch.insert(key, encode(&m)?);
                }
                Ok((batch, touched))
            },
            |cache, touched| {
                for s in touched {
                    cache.changed(&s);
                }
            },
        )
        .await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.read(|db| {
            let mut stats = CompactedStats::default();
            let mut sessions = std::collections::HashSet::new();
            let mut oldest = None;
            for kv in db.scan_prefix([keys::COMPACTED]) {
                let (_, key) = kv?;
                let Some(v) = db.get(&key)? else { continue };
                let m = decode_message(&v)?;
                oldest = oldest.or(m.compacted_ms);
                stats.message_count += 1;
                if let Some(s) = session_of(&key) {
                    sessions.insert(s);
                }
                let bytes = m.content.as_deref().map_or(0, str::len)
                    + m.tool_calls.as_deref().map_or(0, str::len);
                stats.size_bytes = stats
                    .size_bytes
                    .saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            stats.session_count = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
            stats.oldest = oldest.map(format_timestamp);
            Ok(stats)
        })
        .await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| {
                let cutoff = purge_cutoff(now, min_age_days);
                let end = if min_age_days == 0 {
                    vec![keys::COMPACTED + 1]
                } else {
                    keys::compacted_before(as_u64(cutoff))
                };
                let mut batch = Batch::default();
                let mut sessions: HashMap<String, SessionRecord> = HashMap::new();
                let mut n = 0;
                if min_age_days != 0 && cutoff <= 0 {
                    return Ok((batch, (0, Vec::new())));
                }
                for kv in db.range(vec![keys::COMPACTED]..end) {
                    let (ckey, key) = kv?;
                    let Some(v) = db.get(&key)? else { continue };
                    let m = decode_message(&v)?;
                    let sid = session_of(&key)
                        .ok_or_else(|| PersistenceError::Corrupt("bad message key".into()))?;
                    if !sessions.contains_key(&sid) {
                        let s = get_session(db, &sid)?.ok_or_else(|| {
                            PersistenceError::Corrupt(format!("message of missing session {sid:?}"))
                        })?;
                        sessions.insert(sid.clone(), s);
                    }
                    if let Some(s) = sessions.get_mut(&sid) {
                        s.message_count -= 1;
                        s.total_tokens -=
                            m.usage.map_or(0, |u| i128::from(u[0]) + i128::from(u[1]));
                    }
                    batch.remove(ckey);
                    batch.remove(key);
                    batch.remove(keys::numbered(keys::BY_ID, m.id));
                    batch.remove(keys::numbered(keys::USER, m.id));
                    n += 1;
                }
                let mut touched = Vec::with_capacity(sessions.len());
                for (sid, s) in sessions {
                    batch.insert(keys::session(&sid), encode(&s)?);
                    touched.push(sid);
                }
                Ok((batch, (n, touched)))
            },
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
        self.read(move |db| match db.get(keys::metadata(&sid, &key))? {
            Some(v) => Ok(Some(decode::<String>(&v, "a metadata value")?)),
            None => Ok(None),
        })
        .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |db| {
            if get_session(db, &sid)?.is_none() {
                return Err(not_found(&sid));
            }
            let mut batch = Batch::default();
            batch.insert(keys::metadata(&sid, &key), encode(&value)?);
            Ok((batch, ()))
        })
        .await
    }
}

impl SledStore {
    async fn last_content(&self, session_id: &str, role: Role) -> Result<String> {
        let sid = session_id.to_owned();
        let want = role_byte(role);
        self.read(move |db| {
            for kv in db.scan_prefix(keys::messages_of(&sid)).rev() {
                let m = decode_message(&kv?.1)?;
                if m.role == want
                    && let Some(c) = m.content
                {
                    return Ok(c);
                }
            }
            Ok(String::new())
        })
        .await
    }
}
