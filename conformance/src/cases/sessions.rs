//! Sessions: creation, listing, deletion, title, mode and idle time.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Result;
use koda_persistence_api::Role;
use koda_persistence_api::backend::format_timestamp;

use super::{ROOT, assistant, check, eq, session, tool, usage, user};
use crate::{Fixture, START_MS};

/// Every created session gets a new, unique id.
pub async fn create_returns_unique_ids(fx: &Fixture) -> Result<()> {
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let id = session(fx).await?;
        check(&format!("duplicate session id {id}"), seen.insert(id))?;
    }
    Ok(())
}

/// A new session has no messages, no title, no mode and is listed under its root.
pub async fn new_session_is_empty_untitled_and_listed(fx: &Fixture) -> Result<()> {
    let id = fx.store.create_session("coder", Path::new(ROOT)).await?;
    eq("messages", fx.store.load_all_messages(&id).await?.len(), 0)?;
    eq("mode", fx.store.get_session_mode(&id).await?, None)?;
    let list = fx.store.list_sessions(10, Path::new(ROOT)).await?;
    eq("listed", list.len(), 1)?;
    let info = &list[0];
    eq("id", info.id.as_str(), id.as_str())?;
    eq("agent", info.agent_name.as_str(), "coder")?;
    eq("title", info.title.as_deref(), None)?;
    eq("mode", info.mode.as_deref(), None)?;
    eq("message_count", info.message_count, 0)?;
    eq("total_tokens", info.total_tokens, 0)
}

/// `created_at` is the clock's now, as UTC RFC 3339 with milliseconds.
pub async fn created_at_comes_from_clock_in_rfc3339_millis(fx: &Fixture) -> Result<()> {
    let id = session(fx).await?;
    let list = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("id", list.first().map(|s| s.id.as_str()), Some(id.as_str()))?;
    eq("created_at", list[0].created_at.as_str(), "2026-11-26T05:07:04.123Z")?;
    eq("matches format_timestamp", list[0].created_at.clone(), format_timestamp(START_MS))
}

/// A new session was never accessed: idle time is `None`.
pub async fn new_session_was_never_accessed(fx: &Fixture) -> Result<()> {
    let id = session(fx).await?;
    fx.clock.advance(10_000);
    eq("idle", fx.store.get_session_idle_secs(&id).await?, None)?;
    eq("idle of unknown", fx.store.get_session_idle_secs("no-such-session").await?, None)
}

/// `list_sessions` matches roots by exact bytes: `/a/b` and `/a/b/` differ.
pub async fn list_filters_by_exact_root_bytes(fx: &Fixture) -> Result<()> {
    let a = fx.store.create_session("main", Path::new("/a/b")).await?;
    let b = fx.store.create_session("main", Path::new("/a/b/")).await?;
    let c = fx.store.create_session("main", Path::new("/a")).await?;
    for (root, want) in [("/a/b", &a), ("/a/b/", &b), ("/a", &c)] {
        let got: Vec<String> = fx.store.list_sessions(10, Path::new(root)).await?.into_iter().map(|s| s.id).collect();
        eq(&format!("sessions of {root}"), got, vec![want.clone()])?;
    }
    eq("sessions of /A/B", fx.store.list_sessions(10, Path::new("/A/B")).await?.len(), 0)
}

/// The empty path is an ordinary root, distinct from every other.
pub async fn empty_path_is_an_ordinary_root(fx: &Fixture) -> Result<()> {
    let e = fx.store.create_session("main", Path::new("")).await?;
    session(fx).await?;
    let got: Vec<String> = fx.store.list_sessions(10, Path::new("")).await?.into_iter().map(|s| s.id).collect();
    eq("sessions of empty root", got, vec![e])?;
    eq("sessions of ROOT", fx.store.list_sessions(10, Path::new(ROOT)).await?.len(), 1)
}

/// Sessions are listed newest `created_at` first.
pub async fn list_orders_newest_first(fx: &Fixture) -> Result<()> {
    let old = session(fx).await?;
    fx.clock.advance(1_000);
    let new = session(fx).await?;
    fx.clock.advance(-5_000);
    let oldest = session(fx).await?;
    let got: Vec<String> = fx.store.list_sessions(10, Path::new(ROOT)).await?.into_iter().map(|s| s.id).collect();
    eq("order", got, vec![new, old, oldest])
}

/// Sessions created at the same instant list later-created first.
pub async fn list_ties_break_by_creation_sequence(fx: &Fixture) -> Result<()> {
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(session(fx).await?);
    }
    made.reverse();
    let got: Vec<String> = fx.store.list_sessions(10, Path::new(ROOT)).await?.into_iter().map(|s| s.id).collect();
    eq("order", got, made)
}

/// At most `limit` sessions come back; 0 gives none.
pub async fn list_honours_limit(fx: &Fixture) -> Result<()> {
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(session(fx).await?);
        fx.clock.advance(1);
    }
    made.reverse();
    let root = Path::new(ROOT);
    eq("limit 0", fx.store.list_sessions(0, root).await?.len(), 0)?;
    let two: Vec<String> = fx.store.list_sessions(2, root).await?.into_iter().map(|s| s.id).collect();
    eq("limit 2", two, made[..2].to_vec())?;
    eq("limit 4", fx.store.list_sessions(4, root).await?.len(), 4)?;
    eq("limit max", fx.store.list_sessions(i64::MAX, root).await?.len(), 4)
}

/// `message_count` counts stored messages (compacted included); `total_tokens`
/// sums prompt + completion, unset counting 0.
pub async fn list_counts_messages_and_tokens(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "hello").await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("hi"), None, None, Some(&usage(100, 20, 7, 8, 9))).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("more"), None, None, Some(&usage(5, 0, 0, 0, 0))).await?;
    tool(fx, &sid, Some("c1"), "out").await?;
    fx.store.compact_session(&sid, "summary", 1).await?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("listed", info.len(), 1)?;
    // 4 inserted + summary + hint.
    eq("message_count", info[0].message_count, 6)?;
    eq("total_tokens", info[0].total_tokens, 125)
}

/// `total_tokens` saturates at `i64::MAX` instead of overflowing.
pub async fn list_total_tokens_saturate(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    for _ in 0..3 {
        fx.store
            .insert_message(&sid, &Role::Assistant, Some("x"), None, None, Some(&usage(i64::MAX, i64::MAX, 0, 0, 0)))
            .await?;
    }
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("total_tokens", info.first().map(|s| s.total_tokens), Some(i64::MAX))
}

/// `total_tokens` stays exact when saturating messages are purged: the sum
/// of what remains, not a saturated total minus a saturated part.
pub async fn list_total_tokens_exact_after_purge(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store
        .insert_message(&sid, &Role::Assistant, Some("huge"), None, None, Some(&usage(1, i64::MAX, 0, 0, 0)))
        .await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("small"), None, None, Some(&usage(2, 3, 0, 0, 0))).await?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("saturated", info.first().map(|s| s.total_tokens), Some(i64::MAX))?;
    fx.store.compact_session(&sid, "s", 1).await?;
    eq("purged", fx.store.purge_compacted(0).await?, 1)?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("after purge", info.first().map(|s| s.total_tokens), Some(5))
}

/// The title and mode set on a session show in `list_sessions`.
pub async fn list_shows_title_and_mode(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.set_session_title(&sid, "Fix the parser").await?;
    fx.store.set_session_mode(&sid, "auto").await?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("title", info[0].title.as_deref(), Some("Fix the parser"))?;
    eq("mode", info[0].mode.as_deref(), Some("auto"))
}

/// Deleting a session removes it, its messages, usage and metadata.
pub async fn delete_removes_session_messages_and_metadata(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let uid = user(fx, &sid, "secret prompt").await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, Some(&usage(1, 2, 3, 4, 5))).await?;
    fx.store.set_metadata(&sid, "k", "v").await?;
    fx.store.set_todo(&sid, "- [ ] x").await?;
    eq("delete", fx.store.delete_session(&sid).await?, true)?;
    eq("messages", fx.store.load_all_messages(&sid).await?.len(), 0)?;
    eq("listed", fx.store.list_sessions(10, Path::new(ROOT)).await?.len(), 0)?;
    eq("metadata", fx.store.get_metadata(&sid, "k").await?, None)?;
    eq("todo", fx.store.get_todo(&sid).await?, None)?;
    eq("usage calls", fx.store.session_token_usage(&sid).await?.api_calls, 0)?;
    eq("recent", fx.store.recent_user_messages(10).await?, Vec::<String>::new())?;
    super::expect_err(
        "mark deleted message",
        fx.store.mark_message_complete(uid).await,
        |e| matches!(e, koda_persistence_api::PersistenceError::MessageNotFound(id) if *id == uid),
    )
}

/// Deleting an unknown (or already deleted) session returns `false`.
pub async fn delete_unknown_returns_false(fx: &Fixture) -> Result<()> {
    eq("unknown", fx.store.delete_session("nope").await?, false)?;
    let sid = session(fx).await?;
    eq("first", fx.store.delete_session(&sid).await?, true)?;
    eq("second", fx.store.delete_session(&sid).await?, false)
}

/// Deleting one session leaves every other untouched.
pub async fn delete_leaves_other_sessions_alone(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    user(fx, &a, "a").await?;
    let kept = user(fx, &b, "b").await?;
    fx.store.set_metadata(&b, "k", "v").await?;
    fx.store.delete_session(&a).await?;
    eq("b messages", super::ids(&fx.store.load_all_messages(&b).await?), vec![kept])?;
    eq("b metadata", fx.store.get_metadata(&b, "k").await?.as_deref(), Some("v"))?;
    eq("recent", fx.store.recent_user_messages(10).await?, vec!["b".to_owned()])
}

/// Title and mode are overwritten by each set; the mode read is the last set.
pub async fn title_and_mode_overwrite(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.set_session_title(&sid, "one").await?;
    fx.store.set_session_title(&sid, "two").await?;
    fx.store.set_session_mode(&sid, "plan").await?;
    fx.store.set_session_mode(&sid, "").await?;
    eq("mode", fx.store.get_session_mode(&sid).await?.as_deref(), Some(""))?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("title", info[0].title.as_deref(), Some("two"))?;
    eq("listed mode", info[0].mode.as_deref(), Some(""))
}

/// The mode of an unknown session, or one never set, is `None`.
pub async fn mode_of_unknown_session_is_none(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    eq("unset", fx.store.get_session_mode(&sid).await?, None)?;
    eq("unknown", fx.store.get_session_mode("missing").await?, None)
}

/// Idle time counts whole seconds since the last insert.
pub async fn idle_secs_count_from_last_insert(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "hi").await?;
    eq("now", fx.store.get_session_idle_secs(&sid).await?, Some(0))?;
    fx.clock.advance(2_500);
    eq("2.5 s", fx.store.get_session_idle_secs(&sid).await?, Some(2))?;
    user(fx, &sid, "again").await?;
    fx.clock.advance(61_000);
    eq("61 s", fx.store.get_session_idle_secs(&sid).await?, Some(61))
}

/// Idle time floor-divides milliseconds and never goes below 0.
pub async fn idle_secs_floor_and_clamp_at_zero(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "hi").await?;
    fx.clock.advance(999);
    eq("999 ms", fx.store.get_session_idle_secs(&sid).await?, Some(0))?;
    fx.clock.advance(1);
    eq("1000 ms", fx.store.get_session_idle_secs(&sid).await?, Some(1))?;
    fx.clock.advance(-10_000);
    eq("clock went back", fx.store.get_session_idle_secs(&sid).await?, Some(0))
}

/// Only inserts set `last_accessed_at`: reads, compaction, completion,
/// clearing, titles, modes and metadata do not.
pub async fn idle_secs_ignore_reads_compaction_and_other_writes(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let id = user(fx, &sid, "hi").await?;
    user(fx, &sid, "again").await?;
    fx.clock.advance(5_000);
    fx.store.load_context(&sid).await?;
    fx.store.load_all_messages(&sid).await?;
    fx.store.last_user_message(&sid).await?;
    fx.store.mark_message_complete(id).await?;
    fx.store.clear_message_content(&[id], "[cleared]").await?;
    fx.store.set_session_title(&sid, "t").await?;
    fx.store.set_session_mode(&sid, "m").await?;
    fx.store.set_metadata(&sid, "k", "v").await?;
    fx.store.set_todo(&sid, "todo").await?;
    fx.store.compact_session(&sid, "sum", 1).await?;
    eq("idle", fx.store.get_session_idle_secs(&sid).await?, Some(5))
}

/// All three inserting methods set `last_accessed_at` to now.
pub async fn every_insert_kind_touches_last_accessed(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    let c = session(fx).await?;
    fx.clock.advance(3_000);
    user(fx, &a, "x").await?;
    fx.store.insert_message_with_agent(&b, &Role::Assistant, Some("x"), None, None, None, Some("sub")).await?;
    fx.store.insert_tool_message_with_full(&c, "sum", "call", "full").await?;
    assistant(fx, &a, Some("y"), None, true).await?;
    fx.clock.advance(4_000);
    for s in [&a, &b, &c] {
        eq("idle", fx.store.get_session_idle_secs(s).await?, Some(4))?;
    }
    Ok(())
}
