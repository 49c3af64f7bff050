//! Opening a store: creating, connecting to and migrating the database
//! file, and starting the threads that own the connections.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context as _, Result};
use koda_persistence_api::backend::{SharedContextCache, options_of};
use koda_persistence_api::{Clock, PersistenceError};
use rusqlite::{Connection, OpenFlags};

use crate::cipher::read_key;
use crate::cipher::schema_objects;
use crate::cipher::{self, Key};
use crate::error::classify;
use crate::options::{Location, SqliteOptions};
use crate::worker::Worker;
use crate::{Sqlite, SqliteStore, checkpoint, schema, worker};

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Read-write, no create (the store creates files itself, 0600), no mutex
/// (each connection has one thread), no URI.
fn flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// What to hand SQLite for `path`: the path itself, except that a relative
/// path starting with `file:` gets a `./` in front, because the bundled
/// SQLite reads such a name as a URI whatever the flags say (so
/// `file:x.db?mode=ro` would open another file, read-only).
fn sqlite_name(path: &Path) -> std::borrow::Cow<'_, Path> {
    if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        std::borrow::Cow::Owned(Path::new(".").join(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// What a connection is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Sets WAL, turns SQLite's busy handler off (see
    /// [`worker::retry_busy`]) and records its commits' WAL size for the
    /// checkpointer instead of checkpointing (see [`checkpoint`]).
    Writer,
    /// Query-only.
    Reader,
    /// Runs the checkpoints the writer leaves to it.
    Checkpointer,
}

/// Opens a connection to `path`, keyed when the store is encrypted.
pub(crate) fn open_keyed(path: &Path, key: Option<&Key>) -> Result<Connection> {
    let conn = Connection::open_with_flags(sqlite_name(path), flags())?;
    if let Some(key) = key {
        cipher::apply(&conn, key)?;
    }
    Ok(conn)
}

/// Opens one connection with the store's pragmas, set up for `role`.
fn connect(path: &Path, options: &SqliteOptions, role: Role, key: Option<&Key>) -> Result<Connection> {
    let writer = role == Role::Writer;
    let conn = open_keyed(path, key)?;
    conn.busy_timeout(if writer { Duration::ZERO } else { options.busy_timeout })?;
    // Reading the schema proves the file is a database (and the key its
    // key) before anything writes.
    let objects = cipher::schema_objects(&conn, path, key.is_some())?;
    match role {
        Role::Writer => {
            if objects == 0 {
                // New databases start with koda's incremental auto-vacuum. It
                // only takes while the file is new: before WAL mode writes the
                // first page.
                conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            }
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(PersistenceError::Unavailable(format!(
                    "{} cannot use WAL (journal_mode stayed {mode})",
                    path.display()
                ))
                .into());
            }
            checkpoint::install_hook(&conn);
        }
        Role::Reader => conn.pragma_update(None, "query_only", true)?,
        Role::Checkpointer => {}
    }
    // Also decides how a checkpoint syncs (so set on the checkpointer too).
    conn.pragma_update(None, "synchronous", options.synchronous.pragma())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// The connections of an open store.
pub(crate) struct Opened {
    pub(crate) writer: Connection,
    /// Empty for an in-memory database (the writer serves reads).
    pub(crate) readers: Vec<Connection>,
    /// `None` for an in-memory database (no WAL).
    pub(crate) checkpointer: Option<Connection>,
    /// Whether the file stores bodies once (`schema::body_mode`).
    pub(crate) blobs: bool,
    /// The grace period of deleted sessions (see [`keep_deleted_days`]).
    pub(crate) keep_deleted_days: u32,
    /// The key every connection is keyed with (an encrypted file).
    pub(crate) key: Option<Key>,
}

/// The grace period a handle keeps ([`TrashOptions::days`](koda_persistence_api::trash::TrashOptions::days)):
/// a file this layer created, or one adopted from an older koda.
fn keep_deleted_days(conn: &Connection, options: &SqliteOptions) -> Result<u32> {
    // The file's origin is read only when the URL names no grace period.
    Ok(match options.trash.keep_deleted_days {
        Some(days) => days,
        None => options.trash.days(schema::created_here(conn)?),
    })
}

pub(crate) fn open_blocking(location: &Location, options: &SqliteOptions) -> Result<Opened> {
    match location {
        Location::Memory => {
            let mut conn = Connection::open_in_memory()?;
            conn.pragma_update(None, "foreign_keys", true)?;
            // A private in-memory database is never busy: no deadline.
            schema::migrate(&mut conn, Instant::now(), options)?;
            let blobs = schema::body_mode(&conn, options.blobs)?;
            let keep_deleted_days = keep_deleted_days(&conn, options)?;
            Ok(Opened { writer: conn, readers: Vec::new(), checkpointer: None, blobs, keep_deleted_days, key: None })
        }
        Location::File(path) => {
            let key = options.key_file.as_deref().map(cipher::read_key).transpose()?;
            if !path.exists() {
                if !options.create {
                    return Err(PersistenceError::InvalidInput(format!(
                        "{} does not exist and create is off",
                        path.display()
                    ))
                    .into());
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                    koda_persistence_api::backend::create_private_dir(dir)
                        .with_context(|| format!("creating directory {}", dir.display()))
                        .map_err(|e| PersistenceError::Unavailable(format!("{e:#}")))?;
                }
                create_private_file(path)
                    .with_context(|| format!("creating {}", path.display()))
                    .map_err(|e| PersistenceError::Unavailable(format!("{e:#}")))?;
            }
            // One deadline for the whole open: another process (a running
            // koda mid-turn) may hold the write lock while we adopt the file.
            let deadline = Instant::now() + options.busy_timeout;
            let mut writer = worker::retry_busy(deadline, options.busy_timeout, || {
                connect(path, options, Role::Writer, key.as_ref())
            })?;
            schema::migrate(&mut writer, deadline, options)?;
            let blobs =
                worker::retry_busy(deadline, options.busy_timeout, || schema::body_mode(&writer, options.blobs))?;
            let readers = (0..options.readers)
                .map(|_| connect(path, options, Role::Reader, key.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            let checkpointer = connect(path, options, Role::Checkpointer, key.as_ref())?;
            let keep_deleted_days = keep_deleted_days(&writer, options)?;
            Ok(Opened { writer, readers, checkpointer: Some(checkpointer), blobs, keep_deleted_days, key })
        }
    }
}

impl SqliteStore {
    /// Opens the database `options.location` names (creating the file if
    /// `create` allows), migrating it to the current schema. The store is
    /// bare: the contract's argument checks live in the `Checked` layer,
    /// which the facade's `open` puts around it.
    ///
    /// # Errors
    /// `InvalidInput` for options out of range, or a file that does not
    /// exist while `create` is off; `Corrupt` when the file is not a SQLite
    /// database (it is left untouched); `Unavailable` when it cannot be
    /// opened or stays locked past the busy timeout, or was written by a
    /// newer schema.
    pub async fn open(options: SqliteOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        options.validate()?;
        let location = options.location.clone();
        let opts = options.clone();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&opts.location, &opts))
            .await
            .context("sqlite open task failed")?
            .map_err(|e| classify(e, &location))?;
        let wait = options.busy_timeout;
        let writer = Worker::spawn("koda-sqlite-writer", vec![opened.writer], true, opened.checkpointer, wait)?;
        let readers = if opened.readers.is_empty() {
            writer.clone()
        } else {
            Worker::spawn("koda-sqlite-reader", opened.readers, false, None, wait)?
        };
        let store = Self {
            writer,
            readers,
            clock,
            location,
            options,
            cache: Arc::new(SharedContextCache::default()),
            blobs: Arc::new(std::sync::atomic::AtomicBool::new(opened.blobs)),
            keep_deleted_days: opened.keep_deleted_days,
            key: opened.key,
        };
        // Trashed sessions whose grace period has ended go for good; a
        // file another process keeps busy is purged on a later open.
        let (now, days) = (store.clock.now_ms(), store.keep_deleted_days);
        let expired = store.read(move |conn| crate::trash::any_expired(conn, now, days));
        koda_persistence_api::trash::purge_on_open(&store, &store.options.trash, expired).await;
        Ok(store)
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

    /// Opens a `sqlite://…` / `sqlite::memory:` URL (see
    /// [`SqliteOptions::from_url`]).
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL; otherwise as [`SqliteStore::open`].
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open(options_of::<Sqlite>(url)?, clock).await
    }
}

impl crate::SqliteStore {
    /// Re-encrypts the file `options` names (keyed by `options.key_file`)
    /// under the key in `new_key_file`, in place. No other connection may
    /// have the file open: the file leaves WAL mode for the rekey, which
    /// SQLite only allows to its one user, and goes back to WAL after.
    ///
    /// # Errors
    /// `InvalidInput` without `key_file` or for an in-memory database;
    /// `PermissionDenied` for a wrong key or a key file others may read;
    /// `Unavailable` while another connection holds the file.
    pub async fn rekey_file(options: crate::SqliteOptions, new_key_file: &Path) -> anyhow::Result<()> {
        options.validate()?;
        let crate::Location::File(path) = options.location.clone() else {
            return Err(PersistenceError::InvalidInput("rekey needs a database file".into()).into());
        };
        let old_file = options.key_file.clone().ok_or_else(|| {
            PersistenceError::InvalidInput(
                "rekey needs the current key_file (a plain file: use `koda-store encrypt`)".into(),
            )
        })?;
        let (old, new) = (read_key(&old_file)?, read_key(new_key_file)?);
        let location = options.location.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let conn = crate::open::open_keyed(&path, Some(&old))?;
            conn.busy_timeout(options.busy_timeout)?;
            schema_objects(&conn, &path, true)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("delete") {
                return Err(PersistenceError::Unavailable(format!(
                    "{} is open elsewhere (it stays in {mode} mode): stop koda, then rekey",
                    path.display()
                ))
                .into());
            }
            conn.pragma_update(None, "rekey", &new.0)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "back to WAL: {mode}");
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("rekey task failed: {e}"))?
        .map_err(|e| crate::error::classify(e, &location))
    }
}
