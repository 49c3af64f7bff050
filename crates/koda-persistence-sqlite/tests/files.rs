//! File-level concerns of the SQLite backend: permissions, foreign files,
//! locks held by other processes, schema versions, options.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod common;

use common::{clock, koda_db, open_file as open_with};
use std::path::Path;
use std::time::{Duration, Instant};

use koda_persistence_api::{Persistence, PersistenceError, Role};
use koda_persistence_sqlite::{Location, Sqlite, SqliteOptions, SqliteStore, Synchronous};

/// A URL read as the facade reads it: parsed once, every parameter taken.
fn parse_url(url: &str) -> Result<(Location, SqliteOptions), PersistenceError> {
    let options = koda_persistence_api::backend::options_of::<Sqlite>(url)?;
    Ok((options.location.clone(), options))
}
use rusqlite::Connection;

/// A store on `path` with `options` and one session in it (agent `main`,
/// root `/p`).
async fn open_session(path: &Path, options: SqliteOptions) -> (SqliteStore, String) {
    let store = open_with(path, options).await.expect("open");
    let sid = store.create_session("main", Path::new("/p")).await.expect("session");
    (store, sid)
}

fn typed(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

#[cfg(unix)]
#[tokio::test]
async fn new_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("config").join("koda").join("db");
    let path = nested.join("koda.db");
    let (store, sid) = open_session(&path, SqliteOptions::default()).await;
    store.insert_message(&sid, &Role::User, Some("api key: sk-…"), None, None, None).await.expect("insert");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "database file");
    for created in [&nested, nested.parent().expect("koda"), nested.parent().and_then(Path::parent).expect("config")] {
        assert_eq!(mode(created), 0o700, "{}", created.display());
    }
    for side in ["koda.db-wal", "koda.db-shm"] {
        let p = nested.join(side);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{side}");
        }
    }
    // An existing directory is not re-permissioned.
    assert_eq!(mode(dir.path()) & 0o700, 0o700);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_corrupt_and_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    let bytes = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &bytes).expect("write");
    let err = open_with(&path, SqliteOptions::default()).await.expect_err("must fail");
    match typed(&err) {
        Some(PersistenceError::Corrupt(m)) => assert!(m.contains("notes.txt"), "{m}"),
        other => panic!("expected Corrupt, got {other:?}: {err:#}"),
    }
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    assert!(!dir.path().join("notes.txt-wal").exists());
}

#[tokio::test]
async fn a_corrupted_database_is_corrupt() {
    let (_dir, path) = koda_db();
    {
        let (store, sid) = open_session(&path, SqliteOptions::default()).await;
        for i in 0..200 {
            store
                .insert_message(&sid, &Role::User, Some(&format!("message {i} {}", "x".repeat(500))), None, None, None)
                .await
                .expect("insert");
        }
    }
    // Checkpoint into the main file, then scribble over its pages.
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;").expect("checkpoint");
    drop(raw);
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut().skip(4096).take(8192) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("scribble");
    let outcome = async {
        let store = open_with(&path, SqliteOptions::default()).await?;
        store.list_sessions(10, Path::new("/p")).await?;
        store.recent_user_messages(1000).await.map(|_| ())
    }
    .await;
    let err = outcome.expect_err("must fail");
    assert!(matches!(typed(&err), Some(PersistenceError::Corrupt(_))), "{err:#}");
}

#[tokio::test]
async fn a_missing_file_with_create_off_is_invalid_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.db");
    let options = SqliteOptions { create: false, ..SqliteOptions::default() };
    let err = open_with(&path, options).await.expect_err("must fail");
    assert!(matches!(typed(&err), Some(PersistenceError::InvalidInput(_))), "{err:#}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (_dir, path) = koda_db();
    drop(open_with(&path, SqliteOptions::default()).await.expect("create"));
    Connection::open(&path).expect("raw").execute_batch("PRAGMA user_version = 99").expect("bump");
    let err = open_with(&path, SqliteOptions::default()).await.expect_err("must fail");
    assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(m)) if m.contains("newer")), "{err:#}");
}

/// A lock held by another process is waited for; past the busy timeout the
/// caller gets `Unavailable` and nothing is written; once released, writes work.
#[tokio::test]
async fn a_held_lock_is_waited_for_then_unavailable() {
    let (_dir, path) = koda_db();
    let options = SqliteOptions { busy_timeout: Duration::from_millis(300), ..SqliteOptions::default() };
    let (store, sid) = open_session(&path, options).await;
    let other = Connection::open(&path).expect("raw");
    other.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let started = Instant::now();
    let err =
        store.insert_message(&sid, &Role::User, Some("blocked"), None, None, None).await.expect_err("must time out");
    assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");
    assert!(started.elapsed() >= Duration::from_millis(250), "gave up after {:?}", started.elapsed());
    // Reads are not blocked by the writer (WAL).
    assert_eq!(store.load_all_messages(&sid).await.expect("read").len(), 0);
    other.execute_batch("COMMIT").expect("release");
    store.insert_message(&sid, &Role::User, Some("after"), None, None, None).await.expect("insert");
    assert_eq!(store.load_all_messages(&sid).await.expect("read").len(), 1);
}

/// Two stores on one file (two koda windows) see each other's writes.
#[tokio::test]
async fn two_stores_share_one_file() {
    let (_dir, path) = koda_db();
    let a = open_with(&path, SqliteOptions::default()).await.expect("a");
    let b = open_with(&path, SqliteOptions::default()).await.expect("b");
    let sid = a.create_session("main", Path::new("/p")).await.expect("session");
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                store.insert_message(&sid, &Role::User, Some(&format!("{i}-{n}")), None, None, None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("inserts");
    }
    assert_eq!(b.load_all_messages(&sid).await.expect("load").len(), 200);
    assert_eq!(a.list_sessions(1, Path::new("/p")).await.expect("list")[0].message_count, 200);
}

#[test]
fn urls_parse_into_locations_and_options() {
    let (loc, opts) =
        parse_url("sqlite:///var/lib/koda.db?synchronous=full&busy_timeout_ms=250&readers=4").expect("parse");
    assert_eq!(loc, Location::File("/var/lib/koda.db".into()));
    assert_eq!((opts.synchronous, opts.busy_timeout, opts.readers), (Synchronous::Full, Duration::from_millis(250), 4));
    assert_eq!(parse_url("sqlite::memory:").expect("memory").0, Location::Memory);
    assert_eq!(parse_url("sqlite://rel/koda.db").expect("relative").0, Location::File("rel/koda.db".into()));
    assert_eq!(parse_url("sqlite://x.db").expect("defaults").1.synchronous, Synchronous::Normal);
    assert_eq!(
        parse_url("sqlite:///tmp/my%20dir/x%3F.db?synchronous=FULL&create=off")
            .map(|(l, o)| (l, o.synchronous, o.create))
            .expect("percent-decoded"),
        (Location::File("/tmp/my dir/x?.db".into()), Synchronous::Full, false)
    );
    for bad in [
        "sqlite://",
        "sqlite://x.db?synchronous=maybe",
        "sqlite://x.db?cache=big",
        "sqlite://x.db?readers=-1",
        "sqlite://x.db?readers=0",
        "sqlite://x.db?readers=65",
        "sqlite://x.db?busy_timeout_ms=0",
        "sqlite://x.db?busy_timeout_ms=18446744073709551615",
        "sqlite://x.db?busy_timeout_ms=9223372036854775807",
        "sqlite://x.db?busy_timeout_ms=1&busy_timeout_ms=2",
        "sqlite://file:/tmp/x.db",
        "sqlite:file:x.db?mode=ro",
        "sqlite://x.db?synchronous=%",
        "mysql://x",
    ] {
        assert!(matches!(parse_url(bad), Err(PersistenceError::InvalidInput(_))), "{bad}");
    }
}

/// The `synchronous` option reaches the connections.
#[tokio::test]
async fn synchronous_full_is_applied() {
    let (_dir, path) = koda_db();
    let url = format!("sqlite://{}?synchronous=full", path.display());
    let store = SqliteStore::open_url(&url, clock()).await.expect("open");
    assert_eq!(store.synchronous().await.expect("pragma"), 2);
    let normal = open_with(&path, SqliteOptions::default()).await.expect("open");
    assert_eq!(normal.synchronous().await.expect("pragma"), 1);
}

/// A store's cached contexts never hide writes made through another store
/// on the same file, or by an older koda writing SQL directly.
#[tokio::test]
async fn cached_contexts_see_other_writers() {
    let (_dir, path) = koda_db();
    let a = open_with(&path, SqliteOptions::default()).await.expect("a");
    let b = open_with(&path, SqliteOptions::default()).await.expect("b");
    let sid = a.create_session("main", Path::new("/p")).await.expect("session");
    a.insert_message(&sid, &Role::User, Some("q"), None, None, None).await.expect("insert");
    let ids = |ms: Vec<koda_persistence_api::Message>| ms.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(a.load_context(&sid).await.expect("load").len(), 1);

    // Another store appends and completes.
    let answer = b.insert_message(&sid, &Role::Assistant, Some("answer"), None, None, None).await.expect("insert");
    assert_eq!(a.load_context(&sid).await.expect("load").len(), 1, "incomplete answer hidden");
    b.mark_message_complete(answer).await.expect("complete");
    assert_eq!(ids(a.load_context(&sid).await.expect("load")).last(), Some(&answer));

    // An older koda writes SQL directly: the triggers bump the version.
    let raw = Connection::open(&path).expect("raw");
    raw.execute("UPDATE messages SET content = 'edited' WHERE id = ?1", [answer]).expect("edit");
    assert_eq!(
        a.load_context(&sid).await.expect("load").last().and_then(|m| m.content.clone()).as_deref(),
        Some("edited")
    );
    raw.execute(
        "INSERT INTO messages (session_id, role, content, created_at) VALUES (?1, 'user', 'from old koda', '2026-01-01 00:00:00')",
        [&sid],
    )
    .expect("old insert");
    let ctx = a.load_context(&sid).await.expect("load");
    assert_eq!(ctx.last().and_then(|m| m.content.as_deref()), Some("from old koda"));
    // Whatever a sees equals what a store with no cache reads.
    let c = open_with(&path, SqliteOptions::default()).await.expect("c");
    assert_eq!(a.load_context(&sid).await.expect("a"), c.load_context(&sid).await.expect("c"));
    // Our own clear and compaction are followed too.
    a.clear_message_content(&[answer], "[cleared]").await.expect("clear");
    assert_eq!(a.load_context(&sid).await.expect("a"), c.load_context(&sid).await.expect("c"));
    b.compact_session(&sid, "summary", 1).await.expect("compact");
    assert_eq!(a.load_context(&sid).await.expect("a"), c.load_context(&sid).await.expect("c"));
}

/// Dropping the last handle checkpoints the WAL into the database file: a
/// copy of the `.db` file alone (a backup, a bug report) holds every row,
/// and no `-wal` file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_leaves_every_row_in_the_db_file() {
    let (dir, path) = koda_db();
    let store = open_with(&path, SqliteOptions::default()).await.expect("open");
    let clone = store.clone();
    let sid = store.create_session("main", Path::new("/p")).await.expect("session");
    for i in 0..300 {
        clone.insert_message(&sid, &Role::User, Some(&format!("m{i}")), None, None, None).await.expect("insert");
    }
    store.set_todo(&sid, "- [ ] ship").await.expect("todo");
    let wal = dir.path().join("koda.db-wal");
    assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0), "the rows sit in the WAL while the store is open");
    drop(store);
    drop(clone);
    assert!(std::fs::metadata(&wal).map_or(true, |m| m.len() == 0), "the WAL is gone or empty after a clean close");
    let copy = tempfile::tempdir().expect("tempdir");
    let alone = copy.path().join("backup.db");
    std::fs::copy(&path, &alone).expect("copy the .db file alone");
    let conn = Connection::open(&alone).expect("open the copy");
    let count: i64 =
        conn.query_row("SELECT COUNT(*) FROM messages WHERE session_id = ?1", [&sid], |r| r.get(0)).expect("count");
    assert_eq!(count, 300);
    let todo: String = conn
        .query_row("SELECT value FROM session_metadata WHERE session_id = ?1 AND key = 'todo'", [&sid], |r| r.get(0))
        .expect("todo");
    assert_eq!(todo, "- [ ] ship");
}

/// The WAL is checkpointed by the store's checkpointer thread while it
/// writes (not only at close), and never grows far past its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_while_writing_and_stays_bounded() {
    let (dir, path) = koda_db();
    let wal = dir.path().join("koda.db-wal");
    // Inline rows: stored once, 1,000 copies of one text would be a single
    // small body, and this test needs the WAL to fill.
    let options = SqliteOptions { blobs: Some(false), ..SqliteOptions::default() };
    let (store, sid) = open_session(&path, options).await;
    let text = "x".repeat(40 * 1024);
    let insert = || store.insert_message(&sid, &Role::User, Some(&text), None, None, None);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // 200 messages, ~2,600 WAL frames: past the checkpointer's threshold
    // (1,000) and below the writer's own (4,000), so only the
    // checkpointer can move them into the database file.
    for _ in 0..200 {
        insert().await.expect("insert");
    }
    // Checkpoints run at each 1,000 frames, so the last few hundred may
    // still be in the WAL only.
    let half = 100 * text.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while size(&path) < half && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        size(&path) >= half,
        "the database file holds {} bytes, less than half of those written: \
         nothing checkpointed it",
        size(&path)
    );
    // 800 more (~10,000 frames): whatever the checkpointer manages, the
    // writer checkpoints at 4,000 frames and a later write starts the WAL
    // over (that checkpoint waits while the checkpointer's runs: hence
    // the margin).
    for _ in 0..800 {
        insert().await.expect("insert");
        let frames = size(&wal) / (4096 + 24);
        assert!(frames < 6_000, "the WAL grew to {frames} frames");
    }
    assert_eq!(store.load_all_messages(&sid).await.expect("load").len(), 1_000);
}

/// `blobs=on|off` chooses how new rows store large outputs, is recorded in
/// the file for later opens, and never changes what reads return: a file
/// holding both kinds of row reads both back. A bad value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_chooses_inline_or_once_and_reads_return_both() {
    use koda_persistence_api::Health;
    let (_dir, path) = koda_db();
    let output = "cargo test output\n".repeat(300);
    let (store, sid) = open_session(&path, SqliteOptions::default()).await;
    assert!(store.stores_bodies_once(), "a new file stores once");
    store.insert_message(&sid, &Role::Tool, Some(&output), None, Some("a"), None).await.expect("as a body");
    drop(store);
    let inline = SqliteOptions { blobs: Some(false), ..SqliteOptions::default() };
    let store = open_with(&path, inline).await.expect("blobs=off");
    assert!(!store.stores_bodies_once());
    store.insert_message(&sid, &Role::Tool, Some(&output), None, Some("b"), None).await.expect("inline");
    let health = store.health().await.expect("health");
    assert_eq!((health.bodies.bodies, health.bodies.references), (1, 1));
    drop(store);
    let store = open_with(&path, SqliteOptions::default()).await.expect("reopen");
    assert!(!store.stores_bodies_once(), "blobs=off is recorded");
    let all = store.load_all_messages(&sid).await.expect("load");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| m.content.as_deref() == Some(output.as_str())));
    let inline_rows: i64 = Connection::open(&path)
        .expect("raw")
        .query_row("SELECT COUNT(*) FROM messages WHERE content IS NOT NULL AND content_body IS NULL", [], |r| r.get(0))
        .expect("count");
    assert_eq!(inline_rows, 1, "one row inline, one a body");
    let bad = parse_url("sqlite:///tmp/x.db?blobs=sometimes");
    assert!(matches!(bad, Err(PersistenceError::InvalidInput(_))), "{bad:?}");
    let (_, on) = parse_url("sqlite:///tmp/x.db?blobs=on").expect("blobs=on");
    assert_eq!(on.blobs, Some(true));
}
