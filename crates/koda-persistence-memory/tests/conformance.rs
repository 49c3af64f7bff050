//! The whole conformance suite against `MemoryStore`.

use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_api::backend::open_checked;
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_memory::{Memory, MemoryOptions};

/// A fresh store behind the checks layer, as the facade opens it.
struct Fresh;

#[async_trait::async_trait]
impl Factory for Fresh {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let clock = ManualClock::new(start_ms);
        let store = open_checked::<Memory>(MemoryOptions::default(), Arc::new(clock.clone())).await?;
        Ok(Fixture::new(Arc::new(store), clock).with_grace_opener(|days| async move {
            let clock = ManualClock::new(koda_persistence_conformance::START_MS);
            let mut options = MemoryOptions::default();
            options.trash.keep_deleted_days = Some(days);
            let store = open_checked::<Memory>(options, Arc::new(clock.clone())).await?;
            Ok(Fixture::new(Arc::new(store), clock))
        }))
    }
}

koda_persistence_conformance::conformance_tests!(Fresh);
