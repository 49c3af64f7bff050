//! Opening a directory: private files, and the lock a just-closed handle
//! may still hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use std::sync::{Arc, RwLock};

use crate::cipher::Tree;
use anyhow::{Context as _, Result};
use koda_persistence_api::backend::{ContextCache, DEFAULT_CACHED_SESSIONS, options_of};
use koda_persistence_api::{Clock, PersistenceError};

use crate::error::{is_locked, storage};
use crate::exec::{Inner, SessionCache};
use crate::options::{FlushPolicy, SledOptions};
use crate::{Sled, SledStore};

impl SledStore {
    /// Opens a `sled://PATH?…` URL (see [`SledOptions::from_url`]) reading
    /// time from `clock`.
    ///
    /// # Errors
    /// `InvalidInput` for another scheme or a bad parameter; otherwise as
    /// [`SledStore::open`].
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open(options_of::<Sled>(url)?, clock).await
    }

    /// Opens (creating) the store in `options.path`.
    ///
    /// # Errors
    /// `InvalidInput` for options that fail [`SledOptions::validate`];
    /// `Unavailable` when the directory is in use by another process or
    /// cannot be opened; `Corrupt` when sled finds it corrupt.
    pub async fn open(options: SledOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        options.validate()?;
        let opts = options.clone();
        let db = tokio::task::spawn_blocking(move || open_db(&opts.path, &opts))
            .await
            .context("sled open task failed")??;
        let keep_deleted_days = options
            .trash
            .days_or(koda_persistence_api::trash::DEFAULT_KEEP_DELETED_DAYS);
        let purge_on_open = options.trash.purge_on_open;
        let store = Self {
            keep_deleted_days,
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                path: options.path.clone(),
                options,
                cache: std::sync::Mutex::new(SessionCache {
                    versions: std::collections::HashMap::new(),
                    contexts: ContextCache::new(DEFAULT_CACHED_SESSIONS),
                }),
            }),
            clock,
        };
        // Trashed sessions whose grace period has ended go for good (an
        // open writes nothing when none has); a failure (a trash record
        // that does not decode, a full disk) is only warned: every later
        // purge tries again and says why.
        if purge_on_open && let Err(e) = store.purge_expired_on_open().await {
            tracing::warn!(error = %format!("{e:#}"), "purging expired deleted sessions");
        }
        Ok(store)
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

pub(crate) fn closing(path: &Path) {
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

/// Opens sled in `path`: creates the directory 0700 when missing, waits up
/// to [`RELOCK_WAIT`] for a lock a handle this process just dropped still
/// holds (else [`FOREIGN_LOCK_WAIT`]), then checks the key of an encrypted
/// store (before anything is written), makes sled's files private and
/// upgrades session records an earlier build wrote.
pub(crate) fn open_db(path: &Path, options: &SledOptions) -> Result<Tree> {
    // The key first: a missing or exposed key file touches nothing.
    let key = match &options.key_file {
        Some(file) => Some(koda_persistence_api::cipher::read_key_file(file)?),
        None => None,
    };
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
    let db = Tree::unlock(db, key.as_ref(), path).inspect_err(|_| {
        // The handle is dropped: sled frees the directory's lock from its
        // own threads, so the next open here (the right key) waits for it.
        closing(path);
    })?;
    let upgraded = crate::schema::upgrade(&db)?;
    if upgraded > 0 {
        tracing::info!(path = %path.display(), sessions = upgraded, "kept usage by agent in the session records");
    }
    Ok(db)
}
