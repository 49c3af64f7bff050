//! The whole conformance suite against `SledStore`, each case in its own
//! temp directory: once as it is, once encrypted (`key_file=`).

use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_api::backend::open_checked;
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_sled::{Sled, SledOptions};

/// A store in a fresh temp directory, encrypted when `encrypted`.
struct TempDir {
    encrypted: bool,
}

/// Options for a store in `dir`; with a raw key file there when
/// `encrypted` (no passphrase derivation on each of the many opens).
fn options(dir: &std::path::Path, encrypted: bool) -> anyhow::Result<SledOptions> {
    let mut options = SledOptions::at(dir.join("store"));
    if encrypted {
        let key = [0xa5u8; 32];
        options.key_file = Some(koda_persistence_conformance::secrets::key_file(
            dir,
            "store.key",
            &key,
            0o600,
        )?);
    }
    Ok(options)
}

#[async_trait::async_trait]
impl Factory for TempDir {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start_ms);
        let store = open_checked::<Sled>(
            options(dir.path(), self.encrypted)?,
            Arc::new(clock.clone()),
        )
        .await?;
        let encrypted = self.encrypted;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_guard(dir)
            .with_grace_opener(move |days| async move {
                let dir = tempfile::tempdir()?;
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let mut options = options(dir.path(), encrypted)?;
                options.trash.keep_deleted_days = Some(days);
                let store = open_checked::<Sled>(options, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock).with_guard(dir))
            }))
    }
}

koda_persistence_conformance::conformance_tests!(TempDir { encrypted: false });

/// The whole suite and the state machine on a field-encrypted store.
mod encrypted {
    use super::*;
    koda_persistence_conformance::conformance_tests!(TempDir { encrypted: true });
}
