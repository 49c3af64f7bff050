//! Opening: a fresh, empty store.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use koda_persistence_api::backend::options_of;
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
        Self::fresh(Arc::new(SystemClock))
    }

    /// A fresh, empty store reading time from `clock`. The store is bare:
    /// the contract's argument checks live in the `Checked` layer, which
    /// the facade's `open` puts around it.
    ///
    /// # Errors
    /// None today; the signature is every backend's.
    pub async fn open(options: MemoryOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        let MemoryOptions {} = options;
        Ok(Self::fresh(clock))
    }

    /// Opens `memory:` (or `memory://`); it takes no parameters.
    ///
    /// # Errors
    /// `InvalidInput` for another scheme, a location or any parameter.
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open(options_of::<Memory>(url)?, clock).await
    }

    fn fresh(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::new(State {
                next_message_id: 1,
                ..State::default()
            }),
        }
    }
}
