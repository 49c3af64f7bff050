//! An older koda on a file this layer adopted, for each documented
//! generation, issuing exactly its own SQL (see `koda_generations`): each
//! sees the other's rows right, with the documented differences only.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod common;

use common::koda_db;
mod koda_generations;

use std::path::Path;
use std::sync::Arc;

use koda_generations::{ALL, Generation};
use koda_persistence_api::{ManualClock, Message, Persistence, Role};
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

const ROOT: &str = "/work/repo";
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

async fn layer(path: &Path, clock: &ManualClock) -> SqliteStore {
    SqliteStore::open(
        SqliteOptions { location: Location::File(path.to_owned()), ..SqliteOptions::default() },
        Arc::new(clock.clone()),
    )
    .await
    .expect("the layer opens the koda file")
}

fn ids(ms: &[Message]) -> Vec<i64> {
    ms.iter().map(|m| m.id).collect()
}

/// The layer's text for an instant, as koda writes it.
fn koda_text(rfc3339: &str) -> String {
    format!("{} {}", &rfc3339[..10], &rfc3339[11..19])
}

/// The layer and an older koda take turns on one file: the layer sees the
/// older writer's answers (complete unless its generation still streams
/// them), its sessions in the right order, its usage, access times,
/// compactions, purges and deletes; the older koda orders the layer's
/// sessions right and its purge cutoff deletes what it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_and_an_older_koda_take_turns() {
    for g in ALL {
        let (_dir, path) = koda_db();
        g.create_file(&path);
        let clock = ManualClock::new(now_ms() - 60_000);
        let store = layer(&path, &clock).await;
        let koda = g.open(&path);

        // The layer asks, the older koda answers (a tool call, its result,
        // the final answer).
        let s1 = store.create_session("main", Path::new(ROOT)).await.expect("session");
        let q = store.insert_message(&s1, &Role::User, Some("fix the bug"), None, None, None).await.expect("question");
        let a1 = koda.insert_message(
            &s1,
            "assistant",
            Some("reading"),
            Some(r#"[{"id":"call_a","type":"function"}]"#),
            None,
            Some([100, 20, 5, 5, 1]),
            Some("main"),
        );
        if g.tracks_completion() {
            koda.complete(a1);
        }
        let t = koda.insert_message(&s1, "tool", Some("file"), None, Some("call_a"), None, None);
        let a2 = koda.insert_message(&s1, "assistant", Some("fixed it"), None, None, Some([50, 5, 0, 0, 0]), None);
        if g.tracks_completion() {
            let streaming = store.load_context(&s1).await.expect("context");
            assert_eq!(ids(&streaming), [q, a1, t], "{g:?}: an answer still streaming is not shown early");
            koda.complete(a2);
        }
        let context = store.load_context(&s1).await.expect("context");
        assert_eq!(ids(&context), [q, a1, t, a2], "{g:?}: the older koda's answers are in the context");
        let usage = store.session_token_usage(&s1).await.expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.api_calls), koda.usage(&s1), "{g:?}: usage");

        // A session the older koda creates now (the layer's clock is a
        // minute behind) is the newest for both.
        koda.create_session("s-older", "main", ROOT);
        let older_list = koda.list_sessions(ROOT, 10);
        assert_eq!(
            older_list.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["s-older", s1.as_str()],
            "{g:?}: the older koda orders the layer's session by its text time"
        );
        let layer_list = store.list_sessions(10, Path::new(ROOT)).await.expect("list");
        assert_eq!(
            layer_list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["s-older", s1.as_str()],
            "{g:?}: the layer orders the older koda's session"
        );
        for (mine, theirs) in layer_list.iter().zip(&older_list) {
            assert_eq!(
                (mine.message_count, mine.total_tokens),
                (theirs.messages, theirs.tokens),
                "{g:?}: counters of {}",
                mine.id
            );
        }
        assert_eq!(
            older_list[1].created_at,
            koda_text(&layer_list[1].created_at),
            "{g:?}: created_at in koda's own format"
        );

        if g.has_roots() {
            clock.set(now_ms() + 5_000);
            koda.touch_session(&s1);
            let idle = store.get_session_idle_secs(&s1).await.expect("idle").expect("accessed");
            assert!((3..=7).contains(&idle), "{g:?}: idle {idle} s after a touch");
        }

        if g.compacts() {
            // The older koda compacts (its summary after the tail)...
            let marked = koda.compact(&s1, "summary by koda", 1);
            assert_eq!(marked, 3, "{g:?}");
            let stats = store.compacted_stats().await.expect("stats");
            assert_eq!(stats.message_count, 3, "{g:?}");
            let context = store.load_context(&s1).await.expect("context");
            assert_eq!(
                context.iter().map(|m| m.role).collect::<Vec<_>>(),
                [Role::Assistant, Role::System, Role::Assistant],
                "{g:?}: the last answer, koda's summary and its hint (complete)"
            );
            // ...and purges by its own cutoff what the layer compacted.
            let now = now_ms();
            let mut sessions = Vec::new();
            for age_days in [3, 1] {
                clock.set(now - age_days * DAY_MS);
                let s = store.create_session("main", Path::new(ROOT)).await.expect("session");
                for i in 0..3 {
                    store
                        .insert_message(&s, &Role::User, Some(&format!("m{i}")), None, None, None)
                        .await
                        .expect("insert");
                }
                assert_eq!(store.compact_session(&s, "sum", 1).await.expect("compact"), 2);
                sessions.push(s);
            }
            assert_eq!(
                koda.purge(2),
                2,
                "{g:?}: the older koda's 2-day cutoff takes the layer's 3-day-old compaction only"
            );
            let counts: Vec<i64> = store
                .list_sessions(10, Path::new(ROOT))
                .await
                .expect("list")
                .into_iter()
                .filter(|s| sessions.contains(&s.id))
                .map(|s| s.message_count)
                .collect();
            assert_eq!(counts, [5, 3], "{g:?}: counters follow the older purge");
        }

        store.set_todo(&s1, "- [ ] ship").await.expect("todo");
        let text_times: Vec<String> = koda
            .conn
            .prepare(
                "SELECT updated_at FROM session_metadata
                 UNION ALL SELECT created_at FROM sessions
                 UNION ALL SELECT created_at FROM messages
                 UNION ALL SELECT compacted_at FROM messages WHERE compacted_at IS NOT NULL
                 UNION ALL SELECT last_accessed_at FROM sessions WHERE last_accessed_at IS NOT NULL",
            )
            .expect("text times")
            .query_map([], |r| r.get(0))
            .expect("text times")
            .collect::<rusqlite::Result<_>>()
            .expect("text times");
        for t in &text_times {
            assert!(
                t.len() == 19 && t.as_bytes()[10] == b' ' && !t.contains('T'),
                "{g:?}: {t:?} is not koda's YYYY-MM-DD HH:MM:SS"
            );
        }
        koda.delete_session("s-older");
        assert!(
            !store.list_sessions(10, Path::new(ROOT)).await.expect("list").iter().any(|s| s.id == "s-older"),
            "{g:?}: the older koda's delete"
        );
        assert!(koda.integrity_ok(), "{g:?}: integrity_check");
    }
}

/// Rolling back: after the layer wrote sessions, messages, compactions and
/// a purge, the older koda's own queries return what the layer returns,
/// up to the documented differences (compaction summaries sit before the
/// preserved tail in the layer's order; the oldest generation knows no
/// compaction and shows compacted rows as history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_koda_brought_back_reads_what_the_layer_wrote() {
    for g in ALL {
        let (_dir, path) = koda_db();
        g.create_file(&path);
        let now = now_ms();
        let clock = ManualClock::new(now - 5 * DAY_MS);
        let store = layer(&path, &clock).await;
        let mut sessions = Vec::new();
        for (age_days, keep) in [(5, Some(2)), (1, Some(1)), (0, None)] {
            clock.set(now - age_days * DAY_MS - 60_000);
            let s = store.create_session("main", Path::new(ROOT)).await.expect("session");
            for turn in 0..2 {
                store.insert_message(&s, &Role::User, Some(&format!("q{turn}")), None, None, None).await.expect("q");
                let a = store
                    .insert_message_with_agent(
                        &s,
                        &Role::Assistant,
                        Some("calling"),
                        Some(&format!(r#"[{{"id":"c{turn}"}}]"#)),
                        None,
                        Some(&koda_persistence_api::TokenUsage {
                            prompt_tokens: 100,
                            completion_tokens: 10 + turn,
                            cache_read_tokens: 1,
                            cache_creation_tokens: 2,
                            thinking_tokens: 3,
                        }),
                        Some("helper"),
                    )
                    .await
                    .expect("a");
                store.mark_message_complete(a).await.expect("complete");
                store.insert_tool_message_with_full(&s, "out", &format!("c{turn}"), "full out").await.expect("tool");
            }
            if let Some(keep) = keep {
                store.compact_session(&s, "summary", keep).await.expect("compact");
            }
            sessions.push(s);
        }
        clock.set(now);
        assert_eq!(store.purge_compacted(3).await.expect("purge"), 4 + 2 - 2);
        let layer_list = store.list_sessions(10, Path::new(ROOT)).await.expect("list");
        let mut layer_history = Vec::new();
        for s in &sessions {
            let mut all = store.load_all_messages(s).await.expect("all");
            all.sort_by_key(|m| m.id);
            let stats_usage = store.session_token_usage(s).await.expect("usage");
            layer_history.push((all, stats_usage));
        }
        let stats = store.compacted_stats().await.expect("stats");
        drop(store);

        let koda = g.open(&path);
        let older_list = koda.list_sessions(ROOT, 10);
        assert_eq!(
            older_list.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
            layer_list.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            "{g:?}: session order"
        );
        for (mine, theirs) in layer_list.iter().zip(&older_list) {
            assert_eq!(
                (mine.message_count, mine.total_tokens, koda_text(&mine.created_at)),
                (theirs.messages, theirs.tokens, theirs.created_at.clone()),
                "{g:?}: {}",
                mine.id
            );
        }
        for (s, (all, usage)) in sessions.iter().zip(&layer_history) {
            let shown: Vec<(i64, String, Option<String>)> = all
                .iter()
                .filter(|m| !g.compacts() || !is_compacted(&path, m.id))
                .map(|m| (m.id, m.role.as_str().to_owned(), m.content.clone()))
                .collect();
            assert_eq!(koda.load_messages(s), shown, "{g:?}: history of {s}");
            assert_eq!(
                koda.usage(s),
                (usage.prompt_tokens, usage.completion_tokens, usage.api_calls),
                "{g:?}: usage of {s}"
            );
        }
        if g.compacts() {
            let (count, in_sessions, oldest) = koda.compacted_stats();
            assert_eq!(
                (count, in_sessions, oldest),
                (stats.message_count, stats.session_count, stats.oldest.as_deref().map(koda_text)),
                "{g:?}: compacted stats"
            );
        }
        assert!(koda.integrity_ok(), "{g:?}: integrity_check");
    }
}

fn is_compacted(path: &Path, id: i64) -> bool {
    rusqlite::Connection::open(path)
        .expect("raw")
        .query_row("SELECT compacted_ms IS NOT NULL FROM messages WHERE id = ?1", [id], |r| r.get(0))
        .expect("row")
}

/// A file this layer created is of the newest kind: an assistant row
/// another writer inserts without `completed_at` is still streaming.
#[tokio::test]
async fn on_a_new_file_a_foreign_answer_without_completion_is_streaming() {
    let (_dir, path) = koda_db();
    let clock = ManualClock::new(now_ms());
    let store = layer(&path, &clock).await;
    let s = store.create_session("main", Path::new(ROOT)).await.expect("session");
    let koda = Generation::Newest.open(&path);
    let a = koda.insert_message(&s, "assistant", Some("typing…"), None, None, None, None);
    assert!(store.load_context(&s).await.expect("context").is_empty());
    koda.complete(a);
    assert_eq!(ids(&store.load_context(&s).await.expect("context")), [a]);
}

/// Large outputs on a file an older koda may still read: they stay inline
/// (the older koda reads them, and its own are read by the layer) until
/// the user opts in with `compact_bodies` (`koda-store compact-bodies`),
/// which moves every one into a body, shares equal ones, and keeps storing
/// once on later opens. The older koda's deletes then release the bodies
/// (the triggers run in its SQLite too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_stay_inline_until_the_user_opts_in() {
    use koda_persistence_api::Health;
    for g in ALL {
        let (_dir, path) = koda_db();
        g.create_file(&path);
        let clock = ManualClock::new(now_ms());
        let store = layer(&path, &clock).await;
        assert!(!store.stores_bodies_once(), "{g:?}: adopted files stay inline");
        let output = "a large test log line\n".repeat(500);
        let sid = store.create_session("main", Path::new(ROOT)).await.expect("session");
        let mine =
            store.insert_message(&sid, &Role::Tool, Some(&output), None, Some("c1"), None).await.expect("tool result");
        let older = g.open(&path);
        older.create_session("old-session", "main", ROOT);
        let theirs = older.insert_message("old-session", "tool", Some(&output), None, Some("c2"), None, None);
        let read = older.load_messages(&sid);
        assert_eq!(read[0].2.as_deref(), Some(output.as_str()), "{g:?}: the older koda reads the layer's output");
        assert_eq!(store.health().await.expect("health").bodies.references, 0);

        let dry = store.compact_bodies(true).await.expect("dry run");
        assert_eq!((dry.rows, dry.fields, dry.new_bodies), (2, 2, 1), "{g:?}: {dry:?}");
        assert_eq!(dry.inline_bytes, 2 * output.len() as u64);
        assert!(dry.packed_bytes < output.len() as u64 / 10, "{dry:?}");
        assert_eq!(store.health().await.expect("health").bodies.references, 0, "a dry run moves nothing");

        let moved = store.compact_bodies(false).await.expect("compact bodies");
        assert_eq!((moved.rows, moved.fields, moved.new_bodies), (dry.rows, dry.fields, dry.new_bodies));
        let health = store.health().await.expect("health");
        assert!(health.problems.is_empty(), "{:?}", health.problems);
        assert_eq!((health.bodies.bodies, health.bodies.references), (1, 2));
        assert!(store.stores_bodies_once());
        assert_eq!(older.load_messages(&sid)[0].2, None, "{g:?}: documented: an older koda sees no text");
        for (s, id) in [(&sid, mine), (&"old-session".to_owned(), theirs)] {
            let all = store.load_all_messages(s).await.expect("load");
            let m = all.iter().find(|m| m.id == id).expect("message");
            assert_eq!(m.content.as_deref(), Some(output.as_str()), "{g:?}: the layer reads it back");
        }
        drop(store);
        let store = layer(&path, &clock).await;
        assert!(store.stores_bodies_once(), "the opt-in is recorded in the file");
        let again = store.compact_bodies(false).await.expect("a re-run");
        assert_eq!(again.fields, 0, "nothing left to move");

        // The older koda's own microcompact of a row that is now a body:
        // its text wins, and the body's reference goes.
        older
            .conn
            .execute("UPDATE messages SET content = '[cleared]' WHERE id = ?1", [theirs])
            .expect("older koda clears a tool result");
        let all = store.load_all_messages("old-session").await.expect("load");
        let cleared = all.iter().find(|m| m.id == theirs).expect("message");
        assert_eq!(cleared.content.as_deref(), Some("[cleared]"), "{g:?}");
        let health = store.health().await.expect("health");
        assert!(health.problems.is_empty(), "{:?}", health.problems);
        assert_eq!((health.bodies.bodies, health.bodies.references), (1, 1));
        older.delete_session("old-session");
        older.delete_session(&sid);
        let health = store.health().await.expect("health");
        assert!(health.problems.is_empty(), "{:?}", health.problems);
        assert_eq!(
            health.bodies,
            koda_persistence_api::BodyStats::default(),
            "{g:?}: released by the older koda's deletes"
        );
        assert!(older.integrity_ok());
    }
}

/// An older koda's inserts, rewrites and deletes are searched at once
/// (the triggers mark them for the index in its own transaction), and
/// no trigger an older koda fires touches the FTS5 table: a koda whose
/// SQLite lacks FTS5 never fails a write because of the search index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_kodas_writes_are_searched_and_never_touch_fts5() {
    use koda_persistence_api::{Search, SearchScope};
    for g in ALL {
        let (_dir, path) = koda_db();
        g.create_file(&path);
        let clock = ManualClock::new(now_ms() - 60_000);
        let store = layer(&path, &clock).await;
        let koda = g.open(&path);
        let find = |q: &'static str| {
            let store = store.clone();
            async move {
                let hits = store.search_messages(q, &SearchScope::default(), 50).await.expect("search");
                let mut ids: Vec<i64> = hits.iter().map(|h| h.message_id).collect();
                ids.sort_unstable();
                ids
            }
        };
        let sid = store.create_session("main", Path::new(ROOT)).await.expect("session");
        let mine =
            store.insert_message(&sid, &Role::User, Some("layer needle"), None, None, None).await.expect("insert");
        assert_eq!(find("needle").await, [mine], "{g:?}: the layer's own row");
        koda.create_session("older-1", "main", ROOT);
        let theirs = koda.insert_message("older-1", "user", Some("older koda needle"), None, None, None, None);
        assert_eq!(find("needle").await, [mine, theirs], "{g:?}: an older koda's insert is found at once");
        koda.conn
            .execute("UPDATE messages SET content = 'rewritten haystack' WHERE id = ?1", [theirs])
            .expect("older koda rewrites a message");
        assert_eq!(find("needle").await, [mine], "{g:?}: the old text is gone");
        assert_eq!(find("haystack").await, [theirs], "{g:?}: the new text");
        koda.delete_session("older-1");
        assert_eq!(find("haystack").await, Vec::<i64>::new(), "{g:?}: deleted");
        let triggers: Vec<String> = {
            let mut stmt = koda.conn.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger'").expect("triggers");
            stmt.query_map([], |r| r.get(0)).expect("triggers").collect::<Result<_, _>>().expect("triggers")
        };
        assert!(triggers.iter().any(|t| t.contains("kp_search_dirty")));
        // `kp_search` as a whole identifier (trigger names and
        // `kp_search_dirty` only start with it).
        for t in &triggers {
            let names_fts5 = t
                .match_indices("kp_search")
                .any(|(at, m)| !t[at + m.len()..].starts_with(|c: char| c == '_' || c.is_alphanumeric()));
            assert!(!names_fts5, "{g:?}: a trigger touches the FTS5 table: {t}");
        }
    }
}

/// The usage ledger on a file an older koda wrote: the adoption fills it
/// from the messages already there, and every later insert by the older
/// koda counts too (the trigger parses on its SQLite); its delete lowers
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_kodas_spend_is_in_the_ledger() {
    use koda_persistence_api::Ledger;
    use koda_persistence_api::ledger::{UsageBy, UsageQuery};
    for g in ALL {
        let (_dir, path) = koda_db();
        g.create_file(&path);
        let koda = g.open(&path);
        koda.create_session("old", "main", ROOT);
        koda.insert_message("old", "user", Some("q"), None, None, None, None);
        koda.insert_message("old", "assistant", Some("a"), None, None, Some([100, 20, 0, 0, 0]), None);
        let clock = ManualClock::new(now_ms());
        let store = layer(&path, &clock).await;
        let q = UsageQuery {
            since_ms: 0,
            until_ms: now_ms() + DAY_MS,
            by: UsageBy::Session,
            project_root: None,
            agent: None,
        };
        let filled = store.usage(&q).await.expect("usage");
        assert_eq!(filled.len(), 1, "{g:?}: {filled:?}");
        assert_eq!((filled[0].sums.prompt_tokens, filled[0].sums.messages), (100, 2), "{g:?}: filled on adoption");
        koda.insert_message("old", "assistant", Some("b"), None, None, Some([7, 1, 0, 0, 0]), None);
        let counted = store.usage(&q).await.expect("usage");
        assert_eq!(
            (counted[0].sums.prompt_tokens, counted[0].sums.messages),
            (107, 3),
            "{g:?}: the older koda's insert"
        );
        koda.delete_session("old");
        let kept = store.usage(&q).await.expect("usage");
        assert_eq!((kept[0].sums.prompt_tokens, kept[0].deleted), (107, true), "{g:?}: kept after its delete");
    }
}
