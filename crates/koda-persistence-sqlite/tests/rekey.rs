//! Rekeying an encrypted SQLite file in place (feature `sqlcipher`): a
//! backend-only operation (`SqliteStore::rekey_file`). What every store
//! encrypted at rest owes is the conformance suite's cipher area.

#![cfg(feature = "sqlcipher")]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::sync::Arc;

use koda_persistence_api::{ManualClock, PersistenceError, Transfer};
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

use koda_persistence_conformance::secrets::{SECRET, contains, plant};

fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    koda_persistence_conformance::secrets::key_file(dir, name, bytes, mode).unwrap()
}

fn options(db: &Path, key: Option<&Path>) -> SqliteOptions {
    SqliteOptions {
        location: Location::File(db.to_owned()),
        key_file: key.map(Path::to_owned),
        ..SqliteOptions::default()
    }
}

async fn open(db: &Path, key: Option<&Path>) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(options(db, key), Arc::new(ManualClock::new(1_795_669_624_123))).await
}

fn kind(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

fn denied(e: &anyhow::Error) -> bool {
    matches!(kind(e), Some(PersistenceError::PermissionDenied(_)))
}

fn bytes_on_disk(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "key") && p.is_file() {
            all.extend(std::fs::read(p).unwrap());
        }
    }
    all
}

async fn fill(store: &SqliteStore) -> String {
    plant(store).await.unwrap()
}

#[tokio::test]
async fn rekey_changes_the_key_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let old = key_file(dir.path(), "old.key", &[6u8; 32], 0o600);
    let new = key_file(dir.path(), "new.key", b"a new passphrase\n", 0o600);
    let db = dir.path().join("koda.db");
    let store = open(&db, Some(&old)).await.unwrap();
    let sid = fill(&store).await;
    let before = store.export_messages(&sid).await.unwrap();
    // While a handle has the file open, the rekey waits, then refuses.
    let mut busy = options(&db, Some(&old));
    busy.busy_timeout = std::time::Duration::from_millis(200);
    let e = SqliteStore::rekey_file(busy.clone(), &new).await.unwrap_err();
    assert!(matches!(kind(&e), Some(PersistenceError::Unavailable(_))), "{e:#}");
    drop(store);
    SqliteStore::rekey_file(busy, &new).await.unwrap();
    assert!(denied(&open(&db, Some(&old)).await.unwrap_err()));
    let store = open(&db, Some(&new)).await.unwrap();
    assert_eq!(store.export_messages(&sid).await.unwrap(), before);
    assert!(!contains(&bytes_on_disk(dir.path()), SECRET.as_bytes()));
}
