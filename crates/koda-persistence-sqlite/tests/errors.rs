//! How the SQLite backend names what went wrong, and how it waits: each
//! driver failure class maps to the contract's typed error, a lock released
//! within the busy timeout is waited for, new files get koda's
//! auto-vacuum.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod common;

use common::{clock, koda_db, open_file as open};
use std::path::Path;
use std::time::{Duration, Instant};

use koda_persistence_api::{Persistence, PersistenceError, Role};
use koda_persistence_sqlite::{SqliteOptions, SqliteStore};
use rusqlite::Connection;

fn kind(e: &anyhow::Error) -> &'static str {
    match PersistenceError::of(e) {
        Some(PersistenceError::Unavailable(_)) => "Unavailable",
        Some(PersistenceError::Corrupt(_)) => "Corrupt",
        Some(PersistenceError::InvalidInput(_)) => "InvalidInput",
        Some(_) => "another PersistenceError",
        None => "untyped",
    }
}

/// Another writer holding the lock for 300 ms, well within the busy
/// timeout: the write waits for it and succeeds (the store's own retry
/// loop does the waiting; SQLite's handler is off on the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_released_within_the_timeout_is_waited_for() {
    let (_dir, path) = koda_db();
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    let sid = store.create_session("main", Path::new("/p")).await.expect("session");
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
        let other = Connection::open(&holder_path).expect("raw");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(Duration::from_millis(300));
        other.execute_batch("COMMIT").expect("release");
    });
    locked.recv().expect("holder locked");
    let started = Instant::now();
    store
        .insert_message(&sid, &Role::User, Some("waited"), None, None, None)
        .await
        .expect("the write waits for the lock and succeeds");
    assert!(started.elapsed() >= Duration::from_millis(200), "did not wait: {:?}", started.elapsed());
    holder.join().expect("holder");
    assert_eq!(store.load_all_messages(&sid).await.expect("read").len(), 1);
}

/// A path that is a directory cannot be opened: `Unavailable`.
#[tokio::test]
async fn a_directory_as_the_path_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = open(dir.path(), SqliteOptions::default()).await.expect_err("a directory is not a database file");
    assert_eq!(kind(&err), "Unavailable", "{err:#}");
    assert!(
        err.chain().any(|c| c.downcast_ref::<rusqlite::Error>().is_some()),
        "the driver error stays attached as the source: {err:#}"
    );
    let under_a_file = dir.path().join("file");
    std::fs::write(&under_a_file, b"x").expect("file");
    let err = open(&under_a_file.join("koda.db"), SqliteOptions::default())
        .await
        .expect_err("a file as the parent directory");
    assert_eq!(kind(&err), "Unavailable", "{err:#}");
}

/// A database on a file system mounted read-only (as root; SKIPPED where
/// mounting is refused) opens to an `Unavailable`, not an untyped error.
#[tokio::test]
async fn a_read_only_file_system_is_unavailable() {
    let disk = match koda_persistence_conformance::disk::SmallDisk::mount(4) {
        Ok(d) => d,
        Err(why) => {
            koda_persistence_conformance::say_skipped("a_read_only_file_system_is_unavailable", &format!("{why:#}"));
            return;
        }
    };
    let path = disk.path().join("koda.db");
    {
        let store = open(&path, SqliteOptions::default()).await.expect("open");
        store.create_session("main", Path::new("/p")).await.expect("session");
    }
    let remount =
        std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(disk.path()).status().expect("mount");
    assert!(remount.success(), "remount read-only");
    let outcome = open(&path, SqliteOptions::default()).await;
    let _ = std::process::Command::new("mount").args(["-o", "remount,rw"]).arg(disk.path()).status();
    let err = outcome.expect_err("a read-only file system");
    assert_eq!(kind(&err), "Unavailable", "{err:#}");
}

/// Rows another writer stored that cannot be decoded are `Corrupt`, naming
/// what is wrong: an unknown role, text that is not UTF-8, a number that is
/// text.
#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let (_dir, path) = koda_db();
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    let raw = Connection::open(&path).expect("raw");
    for (what, plant) in [
        ("unknown role", "UPDATE messages SET role = 'wizard' WHERE session_id = ?1"),
        ("content that is not UTF-8", "UPDATE messages SET content = CAST(X'C328' AS TEXT) WHERE session_id = ?1"),
        ("a token counter that is text", "UPDATE messages SET prompt_tokens = 'many' WHERE session_id = ?1"),
    ] {
        let sid = store.create_session("main", Path::new("/p")).await.expect("session");
        store.insert_message(&sid, &Role::User, Some("fine"), None, None, None).await.expect("insert");
        raw.execute(plant, [&sid]).expect(what);
        let err = store.load_all_messages(&sid).await.expect_err(what);
        assert_eq!(kind(&err), "Corrupt", "{what}: {err:#}");
    }
    // A value the store reads for itself (the session's change counter).
    let sid = store.create_session("main", Path::new("/p")).await.expect("session");
    raw.execute("UPDATE sessions SET version = 'many' WHERE id = ?1", [&sid]).expect("plant");
    let err = store.load_context(&sid).await.expect_err("text version");
    assert_eq!(kind(&err), "Corrupt", "a text version: {err:#}");
    assert!(
        err.chain().any(|c| c.downcast_ref::<rusqlite::Error>().is_some()),
        "the driver error stays attached as the source: {err:#}"
    );
}

/// Options built in code are checked like a URL's before anything opens:
/// a zero or huge busy timeout, no readers or too many are `InvalidInput`
/// naming the option (a huge timeout used to panic inside rusqlite).
#[tokio::test]
async fn options_built_in_code_are_checked() {
    let (_dir, path) = koda_db();
    let cases = [
        (Duration::MAX, 2, "busy_timeout"),
        (Duration::ZERO, 2, "busy_timeout"),
        (Duration::from_secs(1), 0, "readers"),
        (Duration::from_secs(1), 10_000, "readers"),
    ];
    for (busy_timeout, readers, name) in cases {
        let options = SqliteOptions { busy_timeout, readers, ..SqliteOptions::default() };
        let err = open(&path, options).await.expect_err(name);
        assert_eq!(kind(&err), "InvalidInput", "{name}: {err:#}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(!path.exists(), "{name}: a refused open created the file");
    }
}

/// `Debug` names the store and where it lives.
#[tokio::test]
async fn debug_names_the_location() {
    let (_dir, path) = koda_db();
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    let shown = format!("{store:?}");
    assert!(shown.starts_with("SqliteStore") && shown.contains("koda.db"), "{shown}");
}

/// A new file starts with koda's `auto_vacuum = INCREMENTAL`; an existing
/// database keeps the mode it has.
#[tokio::test]
async fn new_files_use_incremental_auto_vacuum() {
    let (dir, path) = koda_db();
    drop(open(&path, SqliteOptions::default()).await.expect("open"));
    let mode: i64 =
        Connection::open(&path).expect("raw").query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).expect("pragma");
    assert_eq!(mode, 2, "INCREMENTAL");
    let existing = dir.path().join("existing.db");
    Connection::open(&existing).expect("raw").execute_batch("CREATE TABLE unrelated (x)").expect("existing database");
    drop(open(&existing, SqliteOptions::default()).await.expect("adopt"));
    let mode: i64 =
        Connection::open(&existing).expect("raw").query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).expect("pragma");
    assert_eq!(mode, 0, "an existing database keeps its mode");
}

/// `create=false` refuses a missing file without creating it; `create=true`
/// and the default create it; `synchronous=normal` is NORMAL.
#[tokio::test]
async fn create_and_synchronous_options_from_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.db");
    for off in ["false", "0", "no", "OFF"] {
        let url = format!("sqlite://{}?create={off}", path.display());
        let err = SqliteStore::open_url(&url, clock()).await.expect_err("create off");
        assert_eq!(kind(&err), "InvalidInput", "{url}: {err:#}");
        assert!(!path.exists(), "{url} created the file");
    }
    let url = format!("sqlite://{}?create=yes&synchronous=normal", path.display());
    let store = SqliteStore::open_url(&url, clock()).await.expect("create on");
    assert_eq!(store.synchronous().await.expect("pragma"), 1);
    assert!(path.exists());
}

/// A row whose text does not decode (another writer's bytes that are not
/// UTF-8) does not stop the search index: the rows after it are indexed,
/// it alone stays waiting, and a search that reaches it is `Corrupt`, as
/// every read of it is.
#[tokio::test]
async fn an_undecodable_row_does_not_stop_the_search_index() {
    use koda_persistence_api::{Search, SearchScope};
    let (_dir, path) = koda_db();
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    let raw = Connection::open(&path).expect("raw");
    let sid = store.create_session("main", Path::new("/p")).await.expect("session");
    let bad = store.insert_message(&sid, &Role::User, Some("needle broken"), None, None, None).await.expect("insert");
    raw.execute("UPDATE messages SET content = CAST(X'C328' AS TEXT) WHERE id = ?1", [bad]).expect("plant");
    for i in 0..3_000 {
        store
            .insert_message(&sid, &Role::User, Some(&format!("needle later {i}")), None, None, None)
            .await
            .expect("insert");
    }
    let hits = store
        .search_messages("later", &SearchScope::default(), 5)
        .await
        .expect("the newest hits do not reach the bad row");
    assert_eq!(hits.len(), 5);
    let waiting: Vec<i64> = {
        let mut stmt = raw.prepare("SELECT id FROM kp_search_dirty").expect("dirty");
        stmt.query_map([], |r| r.get(0)).expect("dirty").collect::<Result<_, _>>().expect("dirty")
    };
    assert_eq!(waiting, [bad], "only the row that does not decode waits");
    // A word no row holds: every candidate is decided, the bad row too.
    match store.search_messages("nowhere", &SearchScope::default(), 10).await {
        Ok(hits) => panic!("a search that reaches it answered {} hits", hits.len()),
        Err(err) => assert_eq!(kind(&err), "Corrupt", "{err:#}"),
    }
}

/// `health` reports a file whose index disagrees with its table (here an
/// index whose definition another writer changed under it), as
/// `integrity_check` finds it.
#[tokio::test]
async fn health_reports_an_index_that_disagrees_with_its_table() {
    use koda_persistence_api::Health;
    let (_dir, path) = koda_db();
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    for i in 0..3 {
        let sid = store.create_session("main", Path::new("/p")).await.expect("session");
        store.insert_message(&sid, &Role::User, Some(&format!("m{i}")), None, None, None).await.expect("insert");
    }
    assert!(store.health().await.expect("health").problems.is_empty());
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_schema
             SET sql = 'CREATE INDEX kp_messages_session_ord ON messages(role, ord)'
             WHERE name = 'kp_messages_session_ord';
         PRAGMA writable_schema = RESET;",
    )
    .expect("plant");
    let problems = store.health().await.expect("health").problems;
    assert!(problems.iter().any(|p| p.starts_with("integrity_check:")), "{problems:?}");
}

/// Without the `sqlcipher` feature a `key_file` is refused, naming the
/// feature: a file meant to be encrypted is never written in clear.
#[cfg(not(feature = "sqlcipher"))]
#[tokio::test]
async fn a_key_file_without_the_sqlcipher_feature_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("koda.db");
    let url = format!("sqlite://{}?key_file={}", db.display(), dir.path().join("k.key").display());
    let err =
        koda_persistence_sqlite::SqliteStore::open_url(&url, std::sync::Arc::new(koda_persistence_api::SystemClock))
            .await
            .expect_err("a key_file without encryption compiled in");
    assert!(
        matches!(
            koda_persistence_api::PersistenceError::of(&err),
            Some(koda_persistence_api::PersistenceError::InvalidInput(m)) if m.contains("sqlcipher")
        ),
        "{err:#}"
    );
    assert!(!db.exists(), "the plaintext file was created");
}
