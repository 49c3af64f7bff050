//! Whole-file encryption (feature `sqlcipher`): nothing of a planted secret
//! on disk; a wrong, missing or public key refused with `PermissionDenied`
//! and the file untouched; a plaintext file opened with a key refused the
//! same way; a tampered page `Corrupt`, never wrong text.

#![cfg(feature = "sqlcipher")]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::sync::Arc;

use koda_persistence_api::{Import, ManualClock, Persistence, PersistenceError};
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

use koda_persistence_conformance::secrets::{
    PLANTED_HITS, PLANTED_MESSAGES, SECRET, contains, plant,
};

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
    SqliteStore::open(
        options(db, key),
        Arc::new(ManualClock::new(1_795_669_624_123)),
    )
    .await
}

fn kind(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

fn denied(e: &anyhow::Error) -> bool {
    matches!(kind(e), Some(PersistenceError::PermissionDenied(_)))
}

/// Every file of the store (the database, its WAL and shared memory).
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
async fn nothing_of_a_secret_reaches_the_disk_and_search_still_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let raw = key_file(dir.path(), "raw.key", &[7u8; 32], 0o600);
    let pass = key_file(
        dir.path(),
        "pass.key",
        b"correct horse battery staple\n",
        0o600,
    );
    for (name, key) in [("raw.db", &raw), ("pass.db", &pass)] {
        let db = dir.path().join(name);
        let store = open(&db, Some(key)).await.unwrap();
        let sid = fill(&store).await;
        let hits = store
            .search_messages("planted", &Default::default(), 10)
            .await
            .unwrap();
        assert_eq!(hits.len(), PLANTED_HITS, "search inside the encrypted file");
        assert!(store.health().await.unwrap().problems.is_empty());
        let on_disk = bytes_on_disk(dir.path());
        assert!(
            !contains(&on_disk, SECRET.as_bytes()),
            "{name}: the secret is on disk"
        );
        assert!(
            !contains(&on_disk, b"SQLite format 3"),
            "{name}: a plain header"
        );
        drop(store);
        let store = open(&db, Some(key)).await.unwrap();
        assert_eq!(
            store.load_all_messages(&sid).await.unwrap().len(),
            PLANTED_MESSAGES
        );
        let on_disk = bytes_on_disk(dir.path());
        assert!(
            !contains(&on_disk, SECRET.as_bytes()),
            "{name}: after a checkpoint"
        );
    }
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_and_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let right = key_file(dir.path(), "right.key", &[1u8; 32], 0o600);
    let wrong = key_file(dir.path(), "wrong.key", &[2u8; 32], 0o600);
    let db = dir.path().join("koda.db");
    drop(open(&db, Some(&right)).await.unwrap());
    let before = std::fs::read(&db).unwrap();
    for key in [Some(wrong.as_path()), None] {
        let e = open(&db, key).await.expect_err("opened with the wrong key");
        assert!(denied(&e), "{e:#}");
        assert!(format!("{e:#}").contains("wrong key"), "{e:#}");
        assert!(!format!("{e:?}").contains("0202"), "the key leaked: {e:?}");
        assert_eq!(std::fs::read(&db).unwrap(), before, "the file changed");
    }
    open(&db, Some(&right))
        .await
        .expect("the right key still opens it");
}

#[tokio::test]
async fn a_plaintext_file_opened_with_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "k.key", &[3u8; 32], 0o600);
    let db = dir.path().join("plain.db");
    let store = open(&db, None).await.unwrap();
    fill(&store).await;
    drop(store);
    let before = std::fs::read(&db).unwrap();
    let e = open(&db, Some(&key))
        .await
        .expect_err("a plaintext file with a key");
    assert!(denied(&e), "{e:#}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[tokio::test]
async fn a_missing_public_or_empty_key_file_is_refused_with_the_mend() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    let e = open(&db, Some(&dir.path().join("nope.key")))
        .await
        .unwrap_err();
    assert!(denied(&e), "{e:#}");
    let public = key_file(dir.path(), "public.key", &[4u8; 32], 0o644);
    let e = open(&db, Some(&public)).await.unwrap_err();
    assert!(
        denied(&e) && format!("{e:#}").contains("chmod 600"),
        "{e:#}"
    );
    let empty = key_file(dir.path(), "empty.key", b"", 0o600);
    let e = open(&db, Some(&empty)).await.unwrap_err();
    assert!(
        matches!(kind(&e), Some(PersistenceError::InvalidInput(_))),
        "{e:#}"
    );
    assert!(!db.exists() || std::fs::metadata(&db).unwrap().len() == 0);
}

#[tokio::test]
async fn a_tampered_page_is_corrupt_never_wrong_text() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "k.key", &[5u8; 32], 0o600);
    let db = dir.path().join("koda.db");
    let store = open(&db, Some(&key)).await.unwrap();
    let sid = fill(&store).await;
    drop(store);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 8192);
    // Flip a byte in every page after the first: whatever holds the rows.
    let page = 4096;
    for p in (page..bytes.len()).step_by(page) {
        bytes[p + 100] ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    match open(&db, Some(&key)).await {
        Err(e) => assert!(
            matches!(
                kind(&e),
                Some(PersistenceError::Corrupt(_) | PersistenceError::PermissionDenied(_))
            ),
            "{e:#}"
        ),
        Ok(store) => match store.load_all_messages(&sid).await {
            Err(e) => assert!(
                matches!(kind(&e), Some(PersistenceError::Corrupt(_))),
                "{e:#}"
            ),
            Ok(ms) => panic!("a tampered file read back {} messages", ms.len()),
        },
    }
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
    let e = SqliteStore::rekey_file(busy.clone(), &new)
        .await
        .unwrap_err();
    assert!(
        matches!(kind(&e), Some(PersistenceError::Unavailable(_))),
        "{e:#}"
    );
    drop(store);
    SqliteStore::rekey_file(busy, &new).await.unwrap();
    assert!(denied(&open(&db, Some(&old)).await.unwrap_err()));
    let store = open(&db, Some(&new)).await.unwrap();
    assert_eq!(store.export_messages(&sid).await.unwrap(), before);
    assert!(!contains(&bytes_on_disk(dir.path()), SECRET.as_bytes()));
}
