//! Full-text search across sessions (`Search::search_messages`): the
//! grammar, the scope, the order, bodies, every write path, hostile input.

use std::path::Path;

use anyhow::Result;
use koda_persistence_api::search::{MAX_QUERY_ITEMS, MAX_SEARCH_HITS};
use koda_persistence_api::{Role, SearchHit, SearchScope, SessionRecord};

use super::{ROOT, assistant, calls, check, eq, expect_err, incompressible, is_invalid, session, tool, user};
use crate::Fixture;

/// The message ids of `hits`, in the order returned.
fn ids(hits: &[SearchHit]) -> Vec<i64> {
    hits.iter().map(|h| h.message_id).collect()
}

/// The ids `scope` finds for "marker", sorted.
async fn scoped(fx: &Fixture, scope: SearchScope<'_>) -> Result<Vec<i64>> {
    Ok(set(ids(&fx.store.search_messages("marker", &scope, 100).await?)))
}

/// Searches everywhere for `query`, up to 100 hits.
async fn find(fx: &Fixture, query: &str) -> Result<Vec<i64>> {
    Ok(ids(&fx.store.search_messages(query, &SearchScope::default(), 100).await?))
}

/// Sorted, for comparing sets.
fn set(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

/// Words match whole, case-insensitively (Unicode), anywhere in
/// `content` or `full_content`; every item must match; `"phrases"` are
/// consecutive words; `-item` excludes (a query of exclusions only finds
/// every other message, one without text too); `word*` is a prefix; CJK
/// text matches by substring.
pub async fn search_follows_the_query_grammar(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let a = user(fx, &sid, "Which test is FLAKY? The flaky test in std::io").await?;
    let b = assistant(fx, &sid, Some("The test of ÜBER-parsing is flaky"), None, true).await?;
    let c = tool(fx, &sid, Some("c1"), "tokio runtime panicked at src/main.rs").await?;
    let d = fx.store.insert_tool_message_with_full(&sid, "summary only", "c2", "full output: flaky network").await?;
    let e = user(fx, &sid, "修复了不稳定的测试 (fixed the unstable test)").await?;
    let f = user(fx, &sid, "flakyness is not a word; test").await?;
    // A call without text: found by exclusions only, by nothing else.
    let g = assistant(fx, &sid, None, Some(&calls(&["c9"])), true).await?;
    eq("words, any case", set(find(fx, "flaky test").await?), vec![a, b])?;
    eq("unicode case", find(fx, "über").await?, vec![b])?;
    eq("full_content is searched", find(fx, "network").await?, vec![d])?;
    eq("a phrase is consecutive words", find(fx, "\"flaky test\"").await?, vec![a])?;
    eq("punctuation joins a phrase", find(fx, "std::io").await?, vec![a])?;
    eq("an exclusion", find(fx, "flaky -parsing").await?, vec![a, d])?;
    eq("a prefix", set(find(fx, "flak*").await?), vec![a, b, d, f])?;
    eq("a prefix inside a path", find(fx, "src/ma*").await?, vec![c])?;
    eq("CJK by substring", find(fx, "测试").await?, vec![e])?;
    eq("no partial words", find(fx, "flak").await?, Vec::<i64>::new())?;
    eq(
        "exclusions only: everything else, a message without text too",
        set(find(fx, "-flaky -test").await?),
        vec![c, g],
    )?;
    eq("OR and NEAR are words", find(fx, "flaky OR network").await?, Vec::<i64>::new())?;
    Ok(())
}

/// Hits are the newest `limit` matches (by message id), returned by rank
/// (occurrences), then newest first; the snippet marks every occurrence
/// that fits and carries the role, session and creation time.
pub async fn search_ranks_and_keeps_the_newest_limit(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let once = user(fx, &sid, "one needle here").await?;
    fx.clock.advance(1_000);
    let thrice = assistant(fx, &sid, Some("needle, needle and NEEDLE"), None, true).await?;
    let twice = user(fx, &sid, "needle needle").await?;
    let other = user(fx, &sid, "another needle").await?;
    eq("rank, then newest", find(fx, "needle").await?, vec![thrice, twice, other, once])?;
    let top = fx.store.search_messages("needle", &SearchScope::default(), 2).await?;
    eq("the newest two matches, ranked", ids(&top), vec![twice, other])?;
    let all = fx.store.search_messages("needle", &SearchScope::default(), usize::MAX).await?;
    check("a huge limit is capped", all.len() <= MAX_SEARCH_HITS)?;
    let h = all.iter().find(|h| h.message_id == thrice).ok_or_else(|| anyhow::anyhow!("no hit"))?;
    eq("rank", h.rank, 3)?;
    eq("role", h.role, Role::Assistant)?;
    eq("session", h.session_id.as_str(), sid.as_str())?;
    let stored = fx.store.load_all_messages(&sid).await?;
    eq(
        "created",
        Some(h.created_at.clone()),
        stored.iter().find(|m| m.id == thrice).and_then(|m| m.created_at.clone()),
    )?;
    eq("marked", h.marked("[", "]"), "[needle], [needle] and [NEEDLE]".to_owned())?;
    eq("limit 0", fx.store.search_messages("needle", &SearchScope::default(), 0).await?, Vec::new())?;
    Ok(())
}

/// A scope narrows to a root (root-less sessions count under every root,
/// as listings show them), a session, roles, and active messages unless
/// compacted ones are asked for.
pub async fn search_stays_in_its_scope(fx: &Fixture) -> Result<()> {
    let here = session(fx).await?;
    let there = fx.store.create_session("main", Path::new("/elsewhere")).await?;
    let rootless = "0190aaaa-0000-7000-8000-000000000001";
    fx.store
        .import_session(&SessionRecord {
            project_root: None,
            ..super::transfer::session_record(rootless, crate::START_MS)
        })
        .await?;
    let old = user(fx, &here, "marker before compaction").await?;
    assistant(fx, &here, Some("ok"), None, true).await?;
    fx.store.compact_session(&here, "summary", 0).await?;
    let a = user(fx, &here, "marker here").await?;
    let t = tool(fx, &here, Some("x"), "marker from a tool").await?;
    let b = user(fx, &there, "marker there").await?;
    let r = fx
        .store
        .import_messages(
            rootless,
            &[koda_persistence_api::MessageRecord {
                content: Some("marker rootless".to_owned()),
                ..super::transfer::bare_record(1, Role::User)
            }],
            false,
        )
        .await?;
    let r = r.first().copied().unwrap_or(0);
    eq("everywhere, active only", scoped(fx, SearchScope::default()).await?, set(vec![a, t, b, r]))?;
    eq(
        "one root (and root-less)",
        scoped(fx, SearchScope { project_root: Some(Path::new(ROOT)), ..SearchScope::default() }).await?,
        set(vec![a, t, r]),
    )?;
    eq(
        "a root with no sessions of its own",
        scoped(fx, SearchScope { project_root: Some(Path::new("/nowhere")), ..SearchScope::default() }).await?,
        vec![r],
    )?;
    eq(
        "one session",
        scoped(fx, SearchScope { session: Some(&here), ..SearchScope::default() }).await?,
        set(vec![a, t]),
    )?;
    eq("roles", scoped(fx, SearchScope { roles: &[Role::Tool], ..SearchScope::default() }).await?, vec![t])?;
    eq(
        "compacted too",
        scoped(fx, SearchScope { session: Some(&here), include_compacted: true, ..SearchScope::default() }).await?,
        set(vec![old, a, t]),
    )?;
    eq(
        "an unknown session",
        scoped(fx, SearchScope { session: Some("no-such-session"), ..SearchScope::default() }).await?,
        Vec::new(),
    )?;
    Ok(())
}

/// Search reads stored-once bodies, follows `clear_message_content`,
/// deletes, purges, imports and forks: what it finds is what reads return.
pub async fn search_follows_every_write(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let big = format!("{} deadbeef-marker {}", incompressible(9_000, 3), incompressible(100, 4));
    assistant(fx, &sid, None, Some(&calls(&["c1", "c2"])), true).await?;
    let t1 = tool(fx, &sid, Some("c1"), &big).await?;
    let t2 = fx.store.insert_tool_message_with_full(&sid, "short", "c2", &big).await?;
    eq("bodies are searched", set(find(fx, "deadbeef").await?), vec![t1, t2])?;
    fx.store.clear_message_content(&[t1], "[cleared output]").await?;
    eq("a cleared field is gone", find(fx, "deadbeef").await?, vec![t2])?;
    eq("the stub is found", find(fx, "cleared").await?, vec![t1])?;
    let fork = fx.store.fork_session(&sid, None).await?;
    let forked = fx.store.export_messages(&fork).await?;
    let copy = forked
        .iter()
        .find(|m| m.full_content.is_some())
        .map(|m| m.id)
        .ok_or_else(|| anyhow::anyhow!("fork lost a message"))?;
    eq("a fork is searchable", find(fx, "deadbeef").await?, vec![copy, t2])?;
    check("deleted", fx.store.delete_session(&sid).await?)?;
    eq("a deleted session is gone", find(fx, "deadbeef").await?, vec![copy])?;
    let u = user(fx, &fork, "after the fork").await?;
    eq("new writes are seen at once", find(fx, "after").await?, vec![u])?;
    Ok(())
}

/// Hostile queries (quotes, `*` alone, `NEAR`, `OR`, parentheses,
/// backslashes, NUL, SQL, 10 KB of text) return hits or nothing, never an
/// error; only an empty query is `InvalidInput`. Snippets and marks are
/// always valid.
pub async fn hostile_queries_find_or_return_nothing(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let a = user(fx, &sid, "it's a \"quoted\" word: O'Brien\\path (x OR y) NEAR z").await?;
    user(fx, &sid, "plain").await?;
    let ten_kb = "lorem ipsum dolor ".repeat(600);
    let hostile = [
        "\"",
        "\"\"",
        "\"unterminated",
        "*",
        "**",
        "-",
        "--",
        "- -x",
        "*quoted*",
        "NEAR(a b)",
        "a OR b",
        "a AND NOT b",
        "(",
        ")",
        "\\",
        "\\\\\"",
        "\0",
        "a\0b",
        "'; DROP TABLE messages; --",
        "%",
        "_",
        "^",
        "{a}",
        "col:word",
        "x:*",
        "a & b | !c",
        "'",
        "''",
        "😀",
        "\u{feff}",
        "O'Brien",
        "\\path",
        ten_kb.as_str(),
    ];
    for q in hostile {
        let got = fx.store.search_messages(q, &SearchScope::default(), 10).await;
        let hits = match got {
            Ok(h) => h,
            Err(e) => anyhow::bail!("query {q:?} failed: {e:#}"),
        };
        for h in &hits {
            check("a hit is a stored message", h.message_id == a || h.session_id == sid)?;
            for m in &h.marks {
                check("marks are inside the snippet, on characters", h.snippet.get(m.clone()).is_some())?;
            }
        }
    }
    eq("O'Brien", find(fx, "O'Brien").await?, vec![a])?;
    eq("a backslashed path", find(fx, "\\path").await?, vec![a])?;
    eq("quoted", find(fx, "\"quoted\"").await?, vec![a])?;
    eq("OR inside", find(fx, "x OR y").await?, vec![a])?;
    // As many distinct words as a query may hold: no index's expression
    // limit (FTS5's depth, a tsquery's size) may turn it into an error.
    let widest: Vec<String> = (0..MAX_QUERY_ITEMS).map(|i| format!("w{i}")).collect();
    eq("the widest query", find(fx, &widest.join(" ")).await?, Vec::<i64>::new())?;
    let prefixes: Vec<String> = (0..MAX_QUERY_ITEMS).map(|i| format!("p{i}*")).collect();
    eq("the widest query of prefixes", find(fx, &prefixes.join(" ")).await?, Vec::<i64>::new())?;
    expect_err(
        "one item too many",
        fx.store.search_messages(&format!("{} one-more", widest.join(" ")), &SearchScope::default(), 10).await,
        is_invalid,
    )?;
    for empty in ["", " ", "\t\n "] {
        expect_err("an empty query", fx.store.search_messages(empty, &SearchScope::default(), 10).await, is_invalid)?;
    }
    Ok(())
}

/// What a word index cannot hold exactly is still found: a phrase in a
/// message repeating a word past 256 times, in one of more than 16,383
/// words, in one with more distinct words than an index row holds; an
/// exclusion of a long word that only shares its first 128 bytes with the
/// message's; a phrase exclusion whose words the message holds in another
/// order. Exclusions that do hold (a prefix, a phrase) still exclude.
pub async fn search_finds_what_an_index_cannot_hold(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let repeated = user(fx, &sid, &format!("{}the flaky test", "w ".repeat(300))).await?;
    let numbered: String = (0..17_000).map(|i| format!("n{i} ")).collect();
    let many_words = tool(fx, &sid, None, &format!("{numbered}the flaky test")).await?;
    let distinct: String = (0..100_000).map(|i| format!("d{i} ")).collect();
    let too_many = tool(fx, &sid, None, &format!("{distinct}the flaky test")).await?;
    let long = "a".repeat(200);
    let long_word = user(fx, &sid, &format!("needle {long}")).await?;
    let reversed = user(fx, &sid, "needle b a").await?;
    let phrased = user(fx, &sid, "needle a b").await?;
    let tokio = user(fx, &sid, "needle tokio").await?;
    eq(
        "a phrase wherever the index lost positions",
        set(find(fx, "\"flaky test\"").await?),
        vec![repeated, many_words, too_many],
    )?;
    eq("words in a row too large to index", find(fx, "d99999").await?, vec![too_many])?;
    let other_long = "a".repeat(150);
    eq(
        "a long exclusion sharing only its first 128 bytes",
        set(find(fx, &format!("needle -{other_long}")).await?),
        vec![long_word, reversed, phrased, tokio],
    )?;
    eq(
        "the long word itself excludes",
        set(find(fx, &format!("needle -{long}")).await?),
        vec![reversed, phrased, tokio],
    )?;
    eq("a phrase exclusion", set(find(fx, "needle -\"a b\"").await?), vec![long_word, reversed, tokio])?;
    eq("a prefix exclusion", set(find(fx, "needle -tok*").await?), vec![long_word, reversed, phrased])?;
    Ok(())
}

/// Two writers, a compactor and a searcher at once (the index catching
/// up while rows are written and compacted): every search succeeds and
/// finds only written messages; afterwards a search finds every
/// acknowledged message, and the active ones alone without compacted.
pub async fn searches_racing_writers_and_a_compactor_miss_nothing(fx: &Fixture) -> Result<()> {
    const WRITES: usize = 40;
    let sessions = [session(fx).await?, session(fx).await?];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Compaction rounds and searches so far: the writers hold their second
    // half until both have run, so the race happens on every backend,
    // however fast its writes (a fast store once finished before the
    // compactor's first round).
    let progress =
        std::sync::Arc::new([std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0)]);
    let mut writers = Vec::new();
    for (w, sid) in sessions.iter().enumerate() {
        let (store, sid, progress) = (fx.store.clone(), sid.clone(), progress.clone());
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(WRITES);
            for i in 0..WRITES {
                if i == WRITES / 2 {
                    let waiting = std::time::Instant::now();
                    while progress.iter().any(|p| p.load(std::sync::atomic::Ordering::SeqCst) == 0) {
                        anyhow::ensure!(
                            waiting.elapsed() < std::time::Duration::from_secs(60),
                            "the compactor or the searcher never ran"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                let text = format!("racemark writer{w} n{i}");
                ids.push(store.insert_message(&sid, &Role::User, Some(&text), None, None, None).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let compactor = {
        let (store, sessions, done, progress) = (fx.store.clone(), sessions.clone(), done.clone(), progress.clone());
        tokio::spawn(async move {
            let mut rounds = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for sid in &sessions {
                    store.compact_session(sid, "summary", 5).await?;
                }
                rounds += 1;
                progress[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(rounds)
        })
    };
    let searcher = {
        let (store, done, progress) = (fx.store.clone(), done.clone(), progress.clone());
        tokio::spawn(async move {
            let scope = SearchScope { include_compacted: true, ..SearchScope::default() };
            let mut searches = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for h in store.search_messages("racemark", &scope, 1000).await? {
                    anyhow::ensure!(h.snippet.contains("racemark writer"), "a hit that no writer wrote: {h:?}");
                }
                searches += 1;
                progress[1].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(searches)
        })
    };
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await??);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (rounds, searches) = (compactor.await??, searcher.await??);
    check("the compactor ran", rounds > 0)?;
    check("the searcher ran", searches > 0)?;
    let everything = SearchScope { include_compacted: true, ..SearchScope::default() };
    let found = fx.store.search_messages("racemark", &everything, 1000).await?;
    eq("every acknowledged message", set(ids(&found)), set(written.clone()))?;
    let mut active = Vec::new();
    for sid in &sessions {
        active.extend(
            fx.store
                .export_messages(sid)
                .await?
                .iter()
                .filter(|m| m.compacted_ms.is_none() && m.role == Role::User)
                .map(|m| m.id),
        );
    }
    eq("active ones without compacted", set(find(fx, "racemark").await?), set(active))?;
    Ok(())
}
