//! Field encryption (`key_file=`): nothing of a planted secret on disk and
//! search still finds it; a wrong, missing or public key refused with
//! `PermissionDenied` before anything is written; a plaintext store opened
//! with a key refused the same way; a changed or moved value `Corrupt`,
//! never wrong text.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use koda_persistence_api::{Import, ManualClock, Persistence, PersistenceError, Role};
use koda_persistence_sled::{SledOptions, SledStore};

use koda_persistence_conformance::secrets::{
    PLANTED_HITS, PLANTED_MESSAGES, SECRET, contains, plant, planted_output,
};

fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    koda_persistence_conformance::secrets::key_file(dir, name, bytes, mode).unwrap()
}

async fn open(store: &Path, key: Option<&Path>) -> anyhow::Result<SledStore> {
    let mut options = SledOptions::at(store);
    options.key_file = key.map(Path::to_owned);
    SledStore::open(options, Arc::new(ManualClock::new(1_795_669_624_123))).await
}

fn kind(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

fn denied(e: &anyhow::Error) -> bool {
    matches!(kind(e), Some(PersistenceError::PermissionDenied(_)))
}

/// Every file under `dir`, by path, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// [`plant`], flushed.
async fn fill(store: &SledStore) -> String {
    let sid = plant(store).await.unwrap();
    store.flush().await.unwrap();
    sid
}

/// Opens the directory with sled itself (waiting for the lock a dropped
/// store's threads may still hold), for a test to change raw values.
fn raw(dir: &Path) -> sled::Db {
    for _ in 0..400 {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
    panic!("sled's lock on {} was never released", dir.display())
}

/// The raw `M` entries of the store, in key order.
fn messages(db: &sled::Db) -> Vec<(sled::IVec, sled::IVec)> {
    db.scan_prefix(b"M").map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_secret_reaches_the_disk_and_search_still_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let raw_key = key_file(dir.path(), "raw.key", &[7u8; 32], 0o600);
    let pass = key_file(
        dir.path(),
        "pass.key",
        b"correct horse battery staple\n",
        0o600,
    );
    for (name, key) in [("raw", &raw_key), ("pass", &pass)] {
        let path = dir.path().join(name);
        let store = open(&path, Some(key)).await.unwrap();
        let sid = fill(&store).await;
        let hits = store
            .search_messages("planted", &Default::default(), 10)
            .await
            .unwrap();
        assert_eq!(hits.len(), PLANTED_HITS, "{name}: search, encrypted");
        let health = store.health().await.unwrap();
        assert!(health.problems.is_empty(), "{:?}", health.problems);
        assert_eq!(health.bodies.bodies, 1, "{name}: the tool output is a body");
        drop(store);
        // Nor the plain SHA-256 of the tool output: a body's address is
        // keyed, so it confirms no guess of the text.
        let plain_address = koda_persistence_api::bodies::body_hash(&planted_output());
        for (file, bytes) in files(&path) {
            assert!(
                !contains(&bytes, SECRET.as_bytes()),
                "{name}: the secret is in {}",
                file.display()
            );
            assert!(
                !contains(&bytes, &plain_address),
                "{name}: the output's plain hash is in {}",
                file.display()
            );
        }
        let store = open(&path, Some(key)).await.unwrap();
        let back = store.load_all_messages(&sid).await.unwrap();
        assert_eq!(back.len(), PLANTED_MESSAGES);
        assert_eq!(
            back[0].content.as_deref(),
            Some(&*format!("token {SECRET}"))
        );
        assert_eq!(
            store.get_metadata(&sid, "env").await.unwrap().as_deref(),
            Some(SECRET)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let right = key_file(dir.path(), "right.key", &[1u8; 32], 0o600);
    let wrong = key_file(dir.path(), "wrong.key", &[2u8; 32], 0o600);
    let pass = key_file(dir.path(), "pass.key", b"a passphrase\n", 0o600);
    let path = dir.path().join("store");
    let store = open(&path, Some(&right)).await.unwrap();
    let sid = fill(&store).await;
    drop(store);
    // Let the dropped handle's threads finish with the files.
    drop(raw(&path));
    let before = files(&path);
    for key in [Some(wrong.as_path()), Some(pass.as_path()), None] {
        let e = open(&path, key)
            .await
            .expect_err("opened with the wrong key");
        assert!(denied(&e), "{e:#}");
        assert!(format!("{e:#}").contains("key"), "{e:#}");
        assert!(!format!("{e:?}").contains("0202"), "the key leaked: {e:?}");
        drop(raw(&path));
        assert!(files(&path) == before, "a refused open changed the store");
    }
    // Right after a refusal, with no pause, the right key opens it.
    let e = open(&path, Some(&wrong)).await.expect_err("the wrong key");
    assert!(denied(&e), "{e:#}");
    let store = open(&path, Some(&right))
        .await
        .expect("the right key still opens it, at once");
    assert_eq!(
        store.load_all_messages(&sid).await.unwrap().len(),
        PLANTED_MESSAGES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_store_opened_with_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "k.key", &[3u8; 32], 0o600);
    let path = dir.path().join("plain");
    let store = open(&path, None).await.unwrap();
    let sid = fill(&store).await;
    drop(store);
    let e = open(&path, Some(&key))
        .await
        .expect_err("a plaintext store with a key");
    assert!(denied(&e), "{e:#}");
    let store = open(&path, None).await.expect("still opens without a key");
    assert_eq!(
        store.load_all_messages(&sid).await.unwrap().len(),
        PLANTED_MESSAGES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_public_or_empty_key_file_is_refused_with_the_mend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let e = open(&path, Some(&dir.path().join("nope.key")))
        .await
        .unwrap_err();
    assert!(denied(&e), "{e:#}");
    let public = key_file(dir.path(), "public.key", &[4u8; 32], 0o644);
    let e = open(&path, Some(&public)).await.unwrap_err();
    assert!(
        denied(&e) && format!("{e:#}").contains("chmod 600"),
        "{e:#}"
    );
    let empty = key_file(dir.path(), "empty.key", b"", 0o600);
    let e = open(&path, Some(&empty)).await.unwrap_err();
    assert!(
        matches!(kind(&e), Some(PersistenceError::InvalidInput(_))),
        "{e:#}"
    );
    assert!(!path.exists(), "a refused key created the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_moved_value_is_corrupt_never_wrong_text() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "k.key", &[5u8; 32], 0o600);
    let path = dir.path().join("store");
    let store = open(&path, Some(&key)).await.unwrap();
    let a = fill(&store).await;
    let b = store.create_session("main", Path::new("/p")).await.unwrap();
    store
        .insert_message(&b, &Role::User, Some("b's own text"), None, None, None)
        .await
        .unwrap();
    store.flush().await.unwrap();
    drop(store);

    // One byte of a's first message changed.
    let db = raw(&path);
    let all = messages(&db);
    let (a_first, a_value) = all
        .iter()
        .find(|(k, _)| contains(k, a.as_bytes()))
        .cloned()
        .unwrap();
    let mut changed = a_value.to_vec();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    db.insert(&a_first, changed).unwrap();
    db.flush().unwrap();
    drop(db);
    let store = open(&path, Some(&key)).await.unwrap();
    let e = store.load_all_messages(&a).await.unwrap_err();
    assert!(
        matches!(kind(&e), Some(PersistenceError::Corrupt(_))),
        "{e:#}"
    );
    drop(store);

    // a's first message (intact) put in place of b's message.
    let db = raw(&path);
    db.insert(&a_first, a_value.clone()).unwrap();
    let (b_key, _) = messages(&db)
        .into_iter()
        .find(|(k, _)| contains(k, b.as_bytes()))
        .unwrap();
    db.insert(&b_key, a_value).unwrap();
    db.flush().unwrap();
    drop(db);
    let store = open(&path, Some(&key)).await.unwrap();
    assert_eq!(
        store.load_all_messages(&a).await.unwrap().len(),
        PLANTED_MESSAGES
    );
    let e = store.load_all_messages(&b).await.unwrap_err();
    assert!(
        matches!(kind(&e), Some(PersistenceError::Corrupt(_))),
        "{e:#}"
    );
    let health = store.health().await.unwrap();
    assert!(!health.problems.is_empty(), "doctor saw nothing");
}
