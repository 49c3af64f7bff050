//! The whole conformance suite against `SqliteStore`, on a temp file and on
//! `sqlite::memory:`.

use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_api::backend::open_checked;
use koda_persistence_api::trash::TrashOptions;
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_sqlite::{Location, Sqlite, SqliteOptions};

/// A fresh database file in its own temp directory.
struct TempFile;

#[async_trait::async_trait]
impl Factory for TempFile {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start_ms);
        let open = || {
            open_checked::<Sqlite>(
                SqliteOptions {
                    location: Location::File(dir.path().join("koda.db")),
                    ..SqliteOptions::default()
                },
                Arc::new(clock.clone()),
            )
        };
        let store = open().await?;
        let second = open().await?;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_second_handle(Arc::new(second))
            .with_guard(dir)
            .with_grace_opener(|days| async move {
                let dir = tempfile::tempdir()?;
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let options = SqliteOptions {
                    location: Location::File(dir.path().join("koda.db")),
                    trash: TrashOptions {
                        keep_deleted_days: Some(days),
                        ..TrashOptions::default()
                    },
                    ..SqliteOptions::default()
                };
                let store = open_checked::<Sqlite>(options, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock).with_guard(dir))
            }))
    }
}

/// A fresh private in-memory database.
struct InMemory;

#[async_trait::async_trait]
impl Factory for InMemory {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let clock = ManualClock::new(start_ms);
        let store =
            open_checked::<Sqlite>(SqliteOptions::default(), Arc::new(clock.clone())).await?;
        Ok(
            Fixture::new(Arc::new(store), clock).with_grace_opener(|days| async move {
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let options = SqliteOptions {
                    trash: TrashOptions {
                        keep_deleted_days: Some(days),
                        ..TrashOptions::default()
                    },
                    ..SqliteOptions::default()
                };
                let store = open_checked::<Sqlite>(options, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock))
            }),
        )
    }
}

mod file {
    use super::*;
    koda_persistence_conformance::conformance_tests!(TempFile);
}

mod memory {
    use super::*;
    koda_persistence_conformance::conformance_tests!(InMemory);
}

/// A fresh SQLCipher-encrypted file (feature `sqlcipher`): the whole suite
/// and the state machine on an encrypted store.
#[cfg(feature = "sqlcipher")]
struct EncryptedFile;

#[cfg(feature = "sqlcipher")]
#[async_trait::async_trait]
impl Factory for EncryptedFile {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("store.key");
        // A raw key: no passphrase derivation on each of the many opens.
        std::fs::write(&key, [0x5au8; 32])?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let clock = ManualClock::new(start_ms);
        let open = || {
            open_checked::<Sqlite>(
                SqliteOptions {
                    location: Location::File(dir.path().join("koda.db")),
                    key_file: Some(key.clone()),
                    ..SqliteOptions::default()
                },
                Arc::new(clock.clone()),
            )
        };
        let store = open().await?;
        let second = open().await?;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_second_handle(Arc::new(second))
            .with_guard(dir))
    }
}

#[cfg(feature = "sqlcipher")]
mod encrypted {
    use super::*;
    koda_persistence_conformance::conformance_tests!(EncryptedFile);
}
