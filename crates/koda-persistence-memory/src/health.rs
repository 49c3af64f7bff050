//! The store's check of itself: the Health capability.

use crate::MemoryStore;
use anyhow::Result;
use koda_persistence_api::Health;
use koda_persistence_api::StoreHealth;

pub(crate) fn health(store: &MemoryStore) -> Result<StoreHealth> {
    // Every mutation completes under one lock: nothing to drift apart
    // but the counters `doctor` checks through the trait.
    Ok(StoreHealth {
        schema_version: 1,
        latest_schema_version: 1,
        problems: Vec::new(),
        size_bytes: None,
        bodies: store.lock().bodies.stats(),
    })
}

#[async_trait::async_trait]
impl Health for MemoryStore {
    async fn health(&self) -> Result<StoreHealth> {
        health(self)
    }
}
