//! Existing koda databases (every documented generation) open in place: rows,
//! unknown tables and columns survive, and the old data reads through the
//! contract.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod common;

use common::koda_db;
use std::path::Path;
use std::sync::Arc;

use koda_persistence_api::{ManualClock, Persistence, PersistenceError, Role};
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};
use rusqlite::Connection;

const NOW: i64 = 1_795_669_624_123; // 2026-11-26T05:07:04.123Z

mod koda_generations;

use koda_generations::Generation;

fn build(path: &Path, generation: Generation) -> Connection {
    // Each generation's own schema (the shared fixture module), plus a
    // table koda-persistence does not know.
    generation.create_file(path);
    let conn = Connection::open(path).expect("open fixture");
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO notes (body) VALUES ('a table koda-persistence does not know');",
    )
    .expect("unknown table");
    if generation == Generation::Newest {
        conn.execute(
            "INSERT INTO owned_files (session_id, path, created_at)
             VALUES ('s-old', 'src/main.rs', '2025-01-02 03:05:00')",
            [],
        )
        .expect("owned file");
    }
    // A column a newer koda added that we do not know.
    conn.execute_batch("ALTER TABLE messages ADD COLUMN future_col TEXT;").expect("unknown column");
    conn.execute(
        "INSERT INTO sessions (id, created_at, agent_name) VALUES ('s-old', '2025-01-02 03:04:05', 'main')",
        [],
    )
    .expect("session");
    // (role, content, tool_calls, tool_call_id, prompt, completion)
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<i64>, Option<i64>);
    let msgs: [Row<'_>; 4] = [
        ("user", Some("fix the bug"), None, None, None, None),
        ("assistant", Some("reading"), Some(r#"[{"id":"call_a"}]"#), None, Some(100), Some(20)),
        ("tool", Some("file contents"), None, Some("call_a"), None, None),
        ("assistant", Some("fixed it"), None, None, Some(50), Some(5)),
    ];
    for (i, (role, content, calls, call_id, p, c)) in msgs.iter().enumerate() {
        conn.execute(
            "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id,
                                   prompt_tokens, completion_tokens, created_at, future_col)
             VALUES ('s-old', ?1, ?2, ?3, ?4, ?5, ?6, ?7, 'kept')",
            rusqlite::params![role, content, calls, call_id, p, c, format!("2025-01-02 03:04:0{}", 6 + i)],
        )
        .expect("message");
    }
    conn.execute(
        "INSERT INTO session_metadata (session_id, key, value, updated_at)
         VALUES ('s-old', 'todo', '- [ ] ship', '2025-01-02 03:04:10')",
        [],
    )
    .expect("metadata");
    if generation != Generation::Oldest {
        conn.execute_batch(
            "INSERT INTO sessions (id, created_at, agent_name, project_root, last_accessed_at)
                 VALUES ('s-proj', '2025-02-01 00:00:00', 'main', '/proj', '2025-02-01 00:10:00');
             INSERT INTO messages (session_id, role, content, created_at, compacted_at, prompt_tokens,
                                   completion_tokens, cache_read_tokens, agent_name)
                 VALUES ('s-proj', 'user', 'old question', '2025-02-01 00:01:00', '2025-02-01 00:09:00', NULL, NULL, NULL, NULL),
                        ('s-proj', 'assistant', 'old answer', '2025-02-01 00:02:00', '2025-02-01 00:09:00', 10, 2, 7, 'sub'),
                        ('s-proj', 'user', 'kept question', '2025-02-01 00:03:00', NULL, NULL, NULL, NULL, NULL),
                        ('s-proj', 'system', 'koda summary after the tail', '2025-02-01 00:09:00', NULL, NULL, NULL, NULL, NULL);",
        )
        .expect("middle rows");
    }
    if generation == Generation::Newest {
        conn.execute_batch(
            "UPDATE sessions SET title = 'Old title', mode = 'plan' WHERE id = 's-old';
             UPDATE messages SET completed_at = created_at WHERE role = 'assistant';
             UPDATE messages SET full_content = 'full file contents' WHERE role = 'tool';
             INSERT INTO messages (session_id, role, content, created_at)
                 VALUES ('s-old', 'user', 'one more thing', '2025-01-02 03:05:00');
             INSERT INTO messages (session_id, role, content, created_at, completed_at)
                 VALUES ('s-old', 'assistant', 'interrupted answ', '2025-01-02 03:05:01', NULL);",
        )
        .expect("newest rows");
    }
    conn
}

/// The file is at this build's schema version and records the generation
/// it came from.
fn assert_adopted(raw: &Connection, generation: Generation) {
    assert_eq!(count(raw, "PRAGMA user_version"), 8);
    // An older koda may still read this file: its large outputs stay inline.
    let bodies: String =
        raw.query_row("SELECT value FROM kp_meta WHERE key = 'bodies'", [], |r| r.get(0)).expect("body mode recorded");
    assert_eq!(bodies, "off");
    let recorded: String = raw
        .query_row("SELECT value FROM kp_meta WHERE key = 'koda_generation'", [], |r| r.get(0))
        .expect("the generation is recorded");
    let want = match generation {
        Generation::Oldest => "oldest",
        Generation::Middle => "middle",
        Generation::Newest => "newest",
    };
    assert_eq!(recorded, want);
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(
        SqliteOptions { location: Location::File(path.to_owned()), ..SqliteOptions::default() },
        Arc::new(ManualClock::new(NOW)),
    )
    .await
    .expect("open legacy file")
}

async fn migrates(generation: Generation) {
    let (_dir, path) = koda_db();
    let fixture = build(&path, generation);
    let before_messages = count(&fixture, "SELECT COUNT(*) FROM messages");
    let before_sessions = count(&fixture, "SELECT COUNT(*) FROM sessions");
    drop(fixture);

    let store = open(&path).await;

    // Rows, unknown tables and unknown columns are intact.
    let raw = Connection::open(&path).expect("raw");
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM messages"), before_messages);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM sessions"), before_sessions);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM notes"), 1);
    assert_eq!(
        count(&raw, "SELECT COUNT(*) FROM messages WHERE future_col = 'kept'"),
        before_messages
            - if generation == Generation::Oldest { 0 } else { 4 }
            - if generation == Generation::Newest { 2 } else { 0 }
    );
    assert_adopted(&raw, generation);
    assert_eq!(
        raw.query_row("SELECT created_at FROM messages ORDER BY id LIMIT 1", [], |r| r.get::<_, String>(0))
            .expect("legacy text kept"),
        "2025-01-02 03:04:06"
    );
    if generation == Generation::Newest {
        assert_eq!(count(&raw, "SELECT COUNT(*) FROM owned_files"), 1);
    }

    // Old data through the contract.
    let all = store.load_all_messages("s-old").await.expect("load");
    let contents: Vec<&str> = all.iter().filter_map(|m| m.content.as_deref()).collect();
    let mut want = vec!["fix the bug", "reading", "file contents", "fixed it"];
    if generation == Generation::Newest {
        want.extend(["one more thing", "interrupted answ"]);
    }
    assert_eq!(contents, want);
    assert_eq!(all[0].created_at.as_deref(), Some("2025-01-02T03:04:06.000Z"));
    assert_eq!(all[1].prompt_tokens, Some(100));
    assert_eq!(all[1].cache_read_tokens, None);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "id order kept");

    // Pre-existing assistant rows count as complete; an interrupted one does not.
    let ctx: Vec<String> =
        store.load_context("s-old").await.expect("context").into_iter().filter_map(|m| m.content).collect();
    let mut want_ctx = vec!["fix the bug", "reading", "file contents", "fixed it"];
    if generation == Generation::Newest {
        want_ctx.push("one more thing");
    }
    assert_eq!(ctx, want_ctx);

    // The legacy session has no root: it is listed under every root.
    for root in ["/proj", "/anything", ""] {
        let listed = store.list_sessions(10, Path::new(root)).await.expect("list");
        let old = listed.iter().find(|s| s.id == "s-old").expect("legacy session listed");
        assert_eq!(old.created_at, "2025-01-02T03:04:05.000Z");
        assert_eq!(old.message_count, if generation == Generation::Newest { 6 } else { 4 });
        assert_eq!(old.total_tokens, 175);
        assert_eq!(old.agent_name, "main");
        if generation == Generation::Newest {
            assert_eq!((old.title.as_deref(), old.mode.as_deref()), (Some("Old title"), Some("plan")));
        }
    }
    assert_eq!(store.get_todo("s-old").await.expect("todo").as_deref(), Some("- [ ] ship"));
    let usage = store.session_token_usage("s-old").await.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.api_calls), (150, 25, 2));

    if generation != Generation::Oldest {
        let listed = store.list_sessions(10, Path::new("/proj")).await.expect("list");
        assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s-proj", "s-old"]);
        assert_eq!(store.get_session_idle_secs("s-proj").await.expect("idle"), Some((NOW - 1_738_368_600_000) / 1000));
        // koda's summary sits after the preserved tail in id order, and stays there.
        let ctx: Vec<String> =
            store.load_context("s-proj").await.expect("ctx").into_iter().filter_map(|m| m.content).collect();
        assert_eq!(ctx, ["kept question", "koda summary after the tail"]);
        let stats = store.compacted_stats().await.expect("stats");
        assert_eq!((stats.message_count, stats.session_count), (2, 1));
        assert_eq!(stats.oldest.as_deref(), Some("2025-02-01T00:09:00.000Z"));
        let by = store.session_usage_by_agent("s-proj").await.expect("by agent");
        assert_eq!(by.len(), 1);
        assert_eq!((by[0].0.as_str(), by[0].1.cache_read_tokens), ("sub", 7));
    }

    // New writes continue the id sequence; a second open migrates nothing.
    let max_old = all.iter().map(|m| m.id).max().unwrap_or(0);
    let id = store.insert_message("s-old", &Role::User, Some("after upgrade"), None, None, None).await.expect("insert");
    assert!(id > max_old);
    drop(store);
    let again = open(&path).await;
    assert_eq!(again.load_all_messages("s-old").await.expect("load").last().map(|m| m.id), Some(id));
    assert_adopted(&raw, generation);
}

#[tokio::test]
async fn migrates_the_oldest_generation() {
    migrates(Generation::Oldest).await;
}

#[tokio::test]
async fn migrates_the_middle_generation() {
    migrates(Generation::Middle).await;
}

#[tokio::test]
async fn migrates_the_newest_generation() {
    migrates(Generation::Newest).await;
}

/// Rows written by an older koda after the upgrade get an order, a time and
/// counters from the triggers, so they read like our own.
#[tokio::test]
async fn rows_from_an_older_koda_writer_are_adopted() {
    let (_dir, path) = koda_db();
    drop(build(&path, Generation::Newest));
    let store = open(&path).await;
    let ours = store.insert_message("s-old", &Role::User, Some("ours"), None, None, None).await.expect("insert");
    let old_koda = Connection::open(&path).expect("raw");
    old_koda
        .execute_batch(
            "INSERT INTO sessions (id, created_at, agent_name, project_root) VALUES ('s-new-by-old', '2026-01-01 00:00:00', 'main', '/proj');
             INSERT INTO messages (session_id, role, content, prompt_tokens, completion_tokens, created_at)
                 VALUES ('s-old', 'assistant', 'from old koda', 3, 4, '2026-01-01 00:00:01');
             UPDATE messages SET completed_at = '2026-01-01 00:00:02' WHERE content = 'from old koda';",
        )
        .expect("old koda writes");
    let all = store.load_all_messages("s-old").await.expect("load");
    let tail: Vec<(&str, Option<&str>)> =
        all.iter().rev().take(2).map(|m| (m.content.as_deref().unwrap_or(""), m.created_at.as_deref())).collect();
    assert_eq!(tail, [("from old koda", Some("2026-01-01T00:00:01.000Z")), ("ours", Some("2026-11-26T05:07:04.123Z"))]);
    assert!(all.last().map(|m| m.id) > Some(ours));
    let ctx = store.load_context("s-old").await.expect("ctx");
    assert_eq!(ctx.last().and_then(|m| m.content.as_deref()), Some("from old koda"));
    let listed = store.list_sessions(10, Path::new("/proj")).await.expect("list");
    assert_eq!(listed[0].id, "s-new-by-old");
    let old = listed.iter().find(|s| s.id == "s-old").expect("listed");
    assert_eq!((old.message_count, old.total_tokens), (8, 182));
    // Its usage is kept as the layer's own: counted on insert, moved when
    // it edits a counter or the agent, gone with the rows it deletes.
    let usage = |store: &SqliteStore| {
        let store = store.clone();
        async move {
            store
                .session_usage_by_agent("s-old")
                .await
                .expect("usage")
                .into_iter()
                .map(|(a, u)| (a, u.prompt_tokens, u.completion_tokens, u.api_calls))
                .collect::<Vec<_>>()
        }
    };
    let before = usage(&store).await;
    let main = before.iter().find(|g| g.0 == "main").cloned().expect("main");
    old_koda
        .execute_batch("UPDATE messages SET prompt_tokens = 30, agent_name = 'helper' WHERE content = 'from old koda';")
        .expect("old koda edits");
    let after = usage(&store).await;
    assert!(after.contains(&("helper".to_owned(), 30, 4, 1)), "{after:?}");
    assert!(after.contains(&("main".to_owned(), main.1 - 3, main.2 - 4, main.3 - 1)), "{before:?} then {after:?}");
    // An edit that clears both counters uncounts the message; setting them
    // again counts it again.
    old_koda
        .execute_batch(
            "UPDATE messages SET prompt_tokens = NULL, completion_tokens = NULL WHERE content = 'from old koda';",
        )
        .expect("old koda clears the counters");
    let cleared = usage(&store).await;
    assert!(!cleared.iter().any(|g| g.0 == "helper"), "{cleared:?}");
    old_koda
        .execute_batch("UPDATE messages SET prompt_tokens = 30, completion_tokens = 4 WHERE content = 'from old koda';")
        .expect("old koda sets the counters");
    let again = usage(&store).await;
    assert!(again.contains(&("helper".to_owned(), 30, 4, 1)), "{again:?}");
    old_koda.execute_batch("DELETE FROM messages WHERE content = 'from old koda';").expect("old koda deletes");
    assert!(!usage(&store).await.iter().any(|g| g.0 == "helper"));
    assert_eq!(koda_persistence_api::Health::health(&store).await.expect("health").problems, Vec::<String>::new());
    // The store's own check sees kept usage that left its rows.
    old_koda.execute_batch("UPDATE kp_usage SET thinking = thinking + 1 WHERE session_id = 's-old';").expect("tamper");
    let problems = koda_persistence_api::Health::health(&store).await.expect("health").problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("s-old"), "{problems:?}");
}

/// A stored row with an unknown role, or text that is not UTF-8, is `Corrupt`.
#[tokio::test]
async fn undecodable_legacy_rows_are_corrupt() {
    let (_dir, path) = koda_db();
    let raw = build(&path, Generation::Middle);
    raw.execute_batch(
        "INSERT INTO sessions (id, created_at, agent_name) VALUES ('bad-role', '2025-01-01 00:00:00', 'main');
         INSERT INTO messages (session_id, role, content, created_at) VALUES ('bad-role', 'developer', 'x', '2025-01-01 00:00:00');
         INSERT INTO sessions (id, created_at, agent_name) VALUES ('bad-utf8', '2025-01-01 00:00:00', 'main');
         INSERT INTO messages (session_id, role, content, created_at) VALUES ('bad-utf8', 'user', CAST(x'66ff6f' AS TEXT), '2025-01-01 00:00:00');",
    )
    .expect("bad rows");
    drop(raw);
    let store = open(&path).await;
    for sid in ["bad-role", "bad-utf8"] {
        let err = store.load_all_messages(sid).await.expect_err("must fail");
        assert!(matches!(PersistenceError::of(&err), Some(PersistenceError::Corrupt(_))), "{sid}: {err:#}");
    }
    // The rest of the file still reads.
    assert_eq!(store.load_all_messages("s-old").await.expect("load").len(), 4);
}

/// A file adopted from an older koda keeps no grace period unless the URL
/// asks: a delete removes the rows that koda reads, at once.
#[tokio::test]
async fn an_adopted_file_deletes_at_once_by_default() {
    use koda_persistence_api::Trash;
    let (_dir, path) = koda_db();
    drop(build(&path, Generation::Newest));
    let store = open(&path).await;
    assert!(store.delete_session("s-old").await.expect("delete"));
    let raw = Connection::open(&path).expect("raw");
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM messages WHERE session_id = 's-old'"), 0);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM kp_trash_messages"), 0);
    assert!(store.list_deleted().await.expect("trash").is_empty());
}

/// On a file this layer created, a delete moves the rows out of the tables
/// an older koda reads (it sees the session gone); a later open after the
/// grace period removes them for good; a column a newer koda added to a
/// live table meanwhile travels with the rows.
#[tokio::test]
async fn the_trash_is_out_of_an_older_kodas_sight_and_purged_on_open() {
    use koda_persistence_api::Trash;
    use koda_persistence_api::trash::DAY_MS;
    let (_dir, path) = koda_db();
    let clock = ManualClock::new(NOW);
    let options = SqliteOptions { location: Location::File(path.clone()), ..SqliteOptions::default() };
    let store = SqliteStore::open(options.clone(), Arc::new(clock.clone())).await.expect("open");
    let sid = store.create_session("main", Path::new("/p")).await.expect("create");
    store.insert_message(&sid, &Role::User, Some("secret"), None, None, None).await.expect("insert");
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch("ALTER TABLE messages ADD COLUMN newer_koda TEXT; UPDATE messages SET newer_koda = 'kept';")
        .expect("a newer koda adds a column");
    assert!(store.delete_session(&sid).await.expect("delete"));
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM messages"), 0);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM sessions"), 0);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM kp_trash_messages WHERE newer_koda = 'kept'"), 1);
    store.restore_session(&sid).await.expect("restore");
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM messages WHERE newer_koda = 'kept'"), 1);
    assert!(store.delete_session(&sid).await.expect("delete again"));
    drop(store);
    clock.advance(7 * DAY_MS - 1);
    let store = SqliteStore::open(options.clone(), Arc::new(clock.clone())).await.expect("reopen");
    assert_eq!(store.list_deleted().await.expect("trash").len(), 1);
    drop(store);
    clock.advance(1);
    let store = SqliteStore::open(options, Arc::new(clock.clone())).await.expect("reopen after the period");
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM kp_trash"), 0);
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM kp_trash_messages"), 0);
    assert!(store.purge_deleted(true).await.expect("dry run").is_empty());
}
