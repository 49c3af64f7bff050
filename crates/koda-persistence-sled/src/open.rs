//! Opening a directory: private files, and the lock a just-closed handle
//! may still hold.

use std::sync::{Arc, RwLock};

use crate::db::Tree;
use anyhow::{Context as _, Result};
use koda_persistence_api::Clock;
use koda_persistence_api::backend::{ContextCache, DEFAULT_CACHED_SESSIONS, options_of};

use crate::db::open_db;
use crate::exec::{Inner, SessionCache};
use crate::options::SledOptions;
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
        let db = tokio::task::spawn_blocking(move || -> Result<Tree> {
            let db = open_db(&opts.path, &opts)?;
            let upgraded = crate::schema::upgrade(&db)?;
            crate::ledger::fill(&db)?;
            if upgraded > 0 {
                tracing::info!(path = %opts.path.display(), sessions = upgraded, "kept usage by agent in the session records");
            }
            Ok(db)
        })
        .await
        .context("sled open task failed")??;
        let keep_deleted_days = options.trash.days(true);
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
        let expired = store.any_expired();
        koda_persistence_api::trash::purge_on_open(&store, &store.inner.options.trash, expired).await;
        Ok(store)
    }
}
