//! The whole conformance suite against `SqliteStore`, on a temp file, on
//! `sqlite::memory:` and (feature `sqlcipher`) on an encrypted file, with
//! the raw file access the cipher area needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use koda_persistence_api::backend::open_checked;
use koda_persistence_api::trash::TrashOptions;
use koda_persistence_api::{ManualClock, Store};
use koda_persistence_conformance::at_rest::{AtRest, Scratch, Tamper, files_under};
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_sqlite::{Location, Sqlite, SqliteOptions};

/// Database files at named places, each in a directory of its own, under
/// one temp directory.
struct Files(Scratch);

impl Files {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(Scratch::new()?))
    }

    fn db(&self, name: &str) -> PathBuf {
        self.0.path(name).join("koda.db")
    }
}

#[async_trait::async_trait]
impl AtRest for Files {
    fn key_dir(&self) -> &Path {
        self.0.keys()
    }

    async fn open(&self, name: &str, key: Option<&Path>) -> anyhow::Result<Arc<dyn Store>> {
        let options = SqliteOptions {
            location: Location::File(self.db(name)),
            key_file: key.map(Path::to_owned),
            ..SqliteOptions::default()
        };
        let clock = ManualClock::new(koda_persistence_conformance::START_MS);
        Ok(Arc::new(open_checked::<Sqlite>(options, Arc::new(clock)).await?))
    }

    async fn files(&self, name: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
        files_under(&self.0.path(name))
    }

    fn created(&self, name: &str) -> bool {
        std::fs::metadata(self.db(name)).is_ok_and(|m| m.len() > 0)
    }

    /// A whole-file cipher: every page but the first gets one byte
    /// changed (which page holds a row is the file's business); nothing
    /// to move.
    async fn tamper(&self, name: &str, tamper: Tamper<'_>) -> anyhow::Result<bool> {
        let Tamper::Flip { .. } = tamper else {
            return Ok(false);
        };
        let db = self.db(name);
        let mut bytes = std::fs::read(&db)?;
        let page = 4096;
        anyhow::ensure!(bytes.len() > 2 * page, "the file has too few pages");
        for p in (page..bytes.len()).step_by(page) {
            bytes[p + 100] ^= 0x5a;
        }
        std::fs::write(&db, &bytes)?;
        Ok(true)
    }
}

/// A fresh database file in its own temp directory, SQLCipher-encrypted
/// when `encrypted` (feature `sqlcipher`).
struct TempFile {
    encrypted: bool,
}

/// Options for `koda.db` in `dir`; with a raw key file there when
/// `encrypted` (no passphrase derivation on each of the many opens).
fn options(dir: &std::path::Path, encrypted: bool) -> anyhow::Result<SqliteOptions> {
    let key_file = if encrypted {
        let key = [0x5au8; 32];
        Some(koda_persistence_conformance::secrets::key_file(dir, "store.key", &key, 0o600)?)
    } else {
        None
    };
    Ok(SqliteOptions { location: Location::File(dir.join("koda.db")), key_file, ..SqliteOptions::default() })
}

#[async_trait::async_trait]
impl Factory for TempFile {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start_ms);
        let opened = options(dir.path(), self.encrypted)?;
        let open = || open_checked::<Sqlite>(opened.clone(), Arc::new(clock.clone()));
        let store = open().await?;
        let second = open().await?;
        let encrypted = self.encrypted;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_second_handle(Arc::new(second))
            .with_guard(dir)
            .with_at_rest(Arc::new(Files::new()?))
            .with_grace_opener(move |days| async move {
                let dir = tempfile::tempdir()?;
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let mut options = options(dir.path(), encrypted)?;
                options.trash = TrashOptions { keep_deleted_days: Some(days), ..TrashOptions::default() };
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
        let store = open_checked::<Sqlite>(SqliteOptions::default(), Arc::new(clock.clone())).await?;
        Ok(Fixture::new(Arc::new(store), clock).with_grace_opener(|days| async move {
            let clock = ManualClock::new(koda_persistence_conformance::START_MS);
            let options = SqliteOptions {
                trash: TrashOptions { keep_deleted_days: Some(days), ..TrashOptions::default() },
                ..SqliteOptions::default()
            };
            let store = open_checked::<Sqlite>(options, Arc::new(clock.clone())).await?;
            Ok(Fixture::new(Arc::new(store), clock))
        }))
    }
}

mod file {
    use super::*;
    koda_persistence_conformance::conformance_tests!(TempFile { encrypted: false });
}

mod memory {
    use super::*;
    koda_persistence_conformance::conformance_tests!(InMemory);
}

/// The whole suite and the state machine on a SQLCipher-encrypted file
/// (feature `sqlcipher`).
#[cfg(feature = "sqlcipher")]
mod encrypted {
    use super::*;
    koda_persistence_conformance::conformance_tests!(TempFile { encrypted: true });
}
