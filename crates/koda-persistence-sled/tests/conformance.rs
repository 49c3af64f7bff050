//! The whole conformance suite against `SledStore`, each case in its own
//! temp directory.

use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_api::backend::open_checked;
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_sled::{Sled, SledOptions};

struct TempDir;

#[async_trait::async_trait]
impl Factory for TempDir {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start_ms);
        let store = open_checked::<Sled>(
            SledOptions::at(dir.path().join("store")),
            Arc::new(clock.clone()),
        )
        .await?;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_guard(dir)
            .with_grace_opener(|days| async move {
                let dir = tempfile::tempdir()?;
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let mut options = SledOptions::at(dir.path().join("store"));
                options.trash.keep_deleted_days = Some(days);
                let store = open_checked::<Sled>(options, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock).with_guard(dir))
            }))
    }
}

koda_persistence_conformance::conformance_tests!(TempDir);
