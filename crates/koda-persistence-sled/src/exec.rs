//! Running calls: on tokio's blocking pool, under one reader-writer lock
//! (writes exclusive, reads shared), each write one atomic `sled::Batch`;
//! a write that fails drops the handle and the next call reopens the
//! directory. Also the per-session change counters the context cache
//! trusts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use anyhow::{Context as _, Result};
use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::{ContextCache, DEFAULT_CACHED_SESSIONS};

use crate::db::{Tree, Writes};

use crate::SledStore;
use crate::db::{closing, open_db};
use crate::error::storage;
use crate::options::{FlushPolicy, SledOptions};

pub(crate) struct Inner {
    /// The open database. Writers take the lock exclusively, readers
    /// shared. `None` after a write failed: sled keeps an I/O error for
    /// good and its memory may hold the failed write, so the handle is
    /// dropped and the next call opens the directory again, from what
    /// reached the disk.
    pub(crate) db: RwLock<Option<Tree>>,
    pub(crate) options: SledOptions,
    pub(crate) path: PathBuf,
    /// Loaded contexts. The directory belongs to this process, so the
    /// per-session change counters can live in memory.
    pub(crate) cache: Mutex<SessionCache>,
}

/// Per-session change counters and the contexts read at them.
#[derive(Debug)]
pub(crate) struct SessionCache {
    pub(crate) versions: HashMap<String, i64>,
    pub(crate) contexts: ContextCache,
}

impl SessionCache {
    pub(crate) fn version(&self, session: &str) -> i64 {
        self.versions.get(session).copied().unwrap_or(0)
    }

    /// Counts a write to `session`'s messages; returns the new version.
    pub(crate) fn bump(&mut self, session: &str) -> i64 {
        let v = self.versions.entry(session.to_owned()).or_insert(0);
        *v += 1;
        *v
    }

    /// A write the cache does not follow row by row.
    pub(crate) fn changed(&mut self, session: &str) {
        self.bump(session);
        self.contexts.forget(session);
    }
}

impl Inner {
    pub(crate) fn cache(&self) -> MutexGuard<'_, SessionCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, Option<Tree>> {
        // A panic under the lock leaves either a usable handle or `None`.
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open handle in `slot`, reopening the directory if a failed
    /// write dropped it.
    fn ensure_open<'a>(&self, slot: &'a mut Option<Tree>) -> Result<&'a Tree> {
        if slot.is_none() {
            *slot = Some(open_db(&self.path, &self.options)?);
            tracing::info!(path = %self.path.display(), "reopened the sled store");
        }
        slot.as_ref().ok_or_else(|| PersistenceError::Unavailable("sled handle missing".into()).into())
    }

    /// Drops the handle after a failed write (see [`Inner::db`]) and
    /// forgets every cached context, which may hold the failed write.
    fn discard(&self, slot: &mut Option<Tree>) {
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

impl SledStore {
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

    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Tree) -> Result<R> + Send + 'static,
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
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Tree) -> Result<(Writes, R)> + Send + 'static,
    {
        self.write_then(f, |_, out| out).await
    }

    /// Like `write`, then `after` with the cache, still under the write
    /// lock. A write whose batch or flush fails drops the handle (see
    /// [`Inner::db`]): nothing of it stays visible, and the next call
    /// reopens the directory.
    pub(crate) async fn write_then<R, T, F, A>(&self, f: F, after: A) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tree) -> Result<(Writes, R)> + Send + 'static,
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
            let applied = db.apply(batch).and_then(|()| {
                if inner.options.flush == FlushPolicy::EveryWrite { db.flush().map(|_| ()) } else { Ok(()) }
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
