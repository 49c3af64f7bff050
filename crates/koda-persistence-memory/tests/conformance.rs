//! The whole conformance suite against `MemoryStore`.

use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_memory::MemoryStore;

struct Memory;

#[async_trait::async_trait]
impl Factory for Memory {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let clock = ManualClock::new(start_ms);
        Ok(Fixture::new(
            Arc::new(MemoryStore::with_clock(Arc::new(clock.clone()))),
            clock,
        ))
    }
}

koda_persistence_conformance::conformance_tests!(Memory);
