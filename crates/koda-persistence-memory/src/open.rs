//! Opening: a fresh, empty store.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use koda_persistence_api::backend::options_of;
use koda_persistence_api::trash::DEFAULT_KEEP_DELETED_DAYS;
use koda_persistence_api::{Clock, SystemClock};

use crate::options::MemoryOptions;
use crate::schema::State;
use crate::{Memory, MemoryStore};

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::fresh(Arc::new(SystemClock), DEFAULT_KEEP_DELETED_DAYS)
    }

    /// A fresh, empty store reading time from `clock`. The store is bare:
    /// the contract's argument checks live in the `Checked` layer, which
    /// the facade's `open` puts around it.
    ///
    /// # Errors
    /// `InvalidInput` for a grace period over
    /// [`MAX_KEEP_DELETED_DAYS`](koda_persistence_api::trash::MAX_KEEP_DELETED_DAYS).
    pub async fn open(options: MemoryOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        let MemoryOptions { trash } = options;
        trash.validate()?;
        Ok(Self::fresh(clock, trash.days(true)))
    }

    /// Opens `memory:` (or `memory://`); it takes the trash's parameters,
    /// `keep_deleted_days` and `purge_on_open` (a new store has nothing to
    /// purge).
    ///
    /// # Errors
    /// `InvalidInput` for another scheme, a location or any other parameter.
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open(options_of::<Memory>(url)?, clock).await
    }

    fn fresh(clock: Arc<dyn Clock>, keep_deleted_days: u32) -> Self {
        Self { clock, keep_deleted_days, state: Mutex::new(State { next_message_id: 1, ..State::default() }) }
    }
}
