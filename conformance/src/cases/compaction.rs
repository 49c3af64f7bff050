//! Compaction, compacted stats and purge.

use std::path::Path;

use anyhow::Result;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::{COMPACTION_HINT, CompactedStats, Message, Role};

use super::{ROOT, assistant, check, eq, expect_err, ids, is_session_not_found, roles, session, user};
use crate::{Fixture, START_MS};

const DAY: i64 = 86_400_000;

async fn fill(fx: &Fixture, sid: &str, n: usize) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(user(fx, sid, &format!("m{i}")).await?);
    }
    Ok(out)
}

/// All but the last `keep` active messages are marked; the count is returned.
pub async fn compact_marks_all_but_keep(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let made = fill(fx, &sid, 5).await?;
    eq("marked", fx.store.compact_session(&sid, "sum", 2).await?, 3)?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("active tail", ids(&ctx)[2..].to_vec(), made[3..].to_vec())?;
    let stats = fx.store.compacted_stats().await?;
    eq("compacted count", stats.message_count, 3)
}

/// The summary and hint sit right before the first preserved message.
pub async fn compact_places_summary_and_hint_before_tail(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let made = fill(fx, &sid, 4).await?;
    fx.store.compact_session(&sid, "summary text", 1).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 6)?;
    eq("head", ids(&all)[..3].to_vec(), made[..3].to_vec())?;
    eq("summary", (all[3].role, all[3].content.as_deref()), (Role::System, Some("summary text")))?;
    eq("hint", (all[4].role, all[4].content.as_deref()), (Role::Assistant, Some(COMPACTION_HINT)))?;
    eq("tail", all[5].id, made[3])?;
    check("summary id is new", all[3].id > made[3] && all[4].id > all[3].id)
}

/// With `keep = 0` everything is marked and the pair goes at the end.
pub async fn compact_with_keep_zero_appends_at_end(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 3).await?;
    eq("marked", fx.store.compact_session(&sid, "s", 0).await?, 3)?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("roles", roles(&all), vec![Role::User, Role::User, Role::User, Role::System, Role::Assistant])?;
    eq("context", roles(&fx.store.load_context(&sid).await?), vec![Role::System, Role::Assistant])
}

/// When nothing would be marked, compaction returns 0 and adds nothing.
pub async fn compact_with_nothing_to_mark_changes_nothing(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    eq("empty session", fx.store.compact_session(&sid, "s", 0).await?, 0)?;
    fill(fx, &sid, 3).await?;
    let before = fx.store.load_all_messages(&sid).await?;
    eq("keep = len", fx.store.compact_session(&sid, "s", 3).await?, 0)?;
    eq("keep > len", fx.store.compact_session(&sid, "s", 10).await?, 0)?;
    eq("unchanged", fx.store.load_all_messages(&sid).await?, before)?;
    eq("no stats", fx.store.compacted_stats().await?, CompactedStats::default())
}

/// A second compaction counts only active messages, including the first
/// summary and hint.
pub async fn compact_again_counts_only_active(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 4).await?;
    eq("first", fx.store.compact_session(&sid, "one", 2).await?, 2)?;
    // Active: summary, hint, m2, m3.
    eq("second", fx.store.compact_session(&sid, "two", 1).await?, 3)?;
    let all = fx.store.load_all_messages(&sid).await?;
    let texts: Vec<Option<&str>> = all.iter().map(|m| m.content.as_deref()).collect();
    eq(
        "order",
        texts,
        vec![
            Some("m0"),
            Some("m1"),
            Some("one"),
            Some(COMPACTION_HINT),
            Some("m2"),
            Some("two"),
            Some(COMPACTION_HINT),
            Some("m3"),
        ],
    )?;
    eq("compacted", fx.store.compacted_stats().await?.message_count, 5)
}

/// The summary and hint carry no tool calls, usage, agent or full content;
/// the hint is complete and the summary survives the context passes.
pub async fn compact_hint_is_bare_and_complete(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 2).await?;
    fx.clock.advance(500);
    fx.store.compact_session(&sid, "sum", 0).await?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("context size", ctx.len(), 2)?;
    let bare = |m: &Message, role: Role, text: &str| Message {
        created_at: Some(format_timestamp(START_MS + 500)),
        ..Message::bare(m.id, &sid, role, Some(text.to_owned()))
    };
    eq("summary", ctx[0].clone(), bare(&ctx[0], Role::System, "sum"))?;
    eq("hint", ctx[1].clone(), bare(&ctx[1], Role::Assistant, COMPACTION_HINT))?;
    eq("no usage", fx.store.session_usage_by_agent(&sid).await?.len(), 0)
}

/// Compaction does not set `last_accessed_at`.
pub async fn compact_does_not_touch_last_accessed(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 3).await?;
    fx.clock.advance(9_000);
    fx.store.compact_session(&sid, "s", 1).await?;
    eq("idle", fx.store.get_session_idle_secs(&sid).await?, Some(9))
}

/// `keep` up to `usize::MAX` is honoured; an unknown session is `SessionNotFound`.
pub async fn compact_honours_huge_keep(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 3).await?;
    eq("huge keep", fx.store.compact_session(&sid, "s", usize::MAX).await?, 0)?;
    expect_err("unknown session", fx.store.compact_session("nope", "s", 0).await, is_session_not_found)
}

/// Stats count compacted messages, their sessions, the UTF-8 bytes of
/// content and tool calls, and the earliest compaction time.
pub async fn compacted_stats_count_bytes_sessions_and_oldest(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    user(fx, &a, "héllo").await?; // 6 bytes
    assistant(fx, &a, None, Some("[]"), true).await?; // 2 bytes
    fx.store.insert_message(&a, &Role::User, None, None, None, None).await?; // 0 bytes
    user(fx, &a, "kept").await?;
    fx.store.compact_session(&a, "sa", 1).await?;
    fx.clock.advance(2 * DAY);
    user(fx, &b, "a\0b").await?; // 3 bytes
    user(fx, &b, "kept").await?;
    fx.store.compact_session(&b, "sb", 1).await?;
    let stats = fx.store.compacted_stats().await?;
    eq(
        "stats",
        stats,
        CompactedStats { message_count: 4, session_count: 2, size_bytes: 11, oldest: Some(format_timestamp(START_MS)) },
    )
}

/// An empty store has zeroed stats and no oldest.
pub async fn compacted_stats_of_empty_store(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "active").await?;
    eq("stats", fx.store.compacted_stats().await?, CompactedStats::default())
}

/// Purge deletes compacted messages strictly older than the cutoff.
pub async fn purge_deletes_only_older_than_cutoff(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 2).await?;
    fx.store.compact_session(&sid, "first", 0).await?; // 2 marked at START
    fx.clock.advance(DAY);
    fill(fx, &sid, 1).await?;
    fx.store.compact_session(&sid, "second", 0).await?; // 3 marked at START + 1 day
    fx.clock.advance(2 * DAY); // now = START + 3 days
    eq("3 days: exactly at cutoff stays", fx.store.purge_compacted(3).await?, 0)?;
    fx.clock.advance(1);
    eq("3 days + 1 ms", fx.store.purge_compacted(3).await?, 2)?;
    eq("second batch is younger", fx.store.purge_compacted(3).await?, 0)?;
    fx.clock.advance(DAY);
    eq("second batch now old enough", fx.store.purge_compacted(3).await?, 3)?;
    eq("remaining", fx.store.load_all_messages(&sid).await?.len(), 2)?;
    eq("stats", fx.store.compacted_stats().await?, CompactedStats::default())
}

/// `days = 0` deletes every compacted message, even one compacted just now.
pub async fn purge_zero_days_deletes_every_compacted(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    fill(fx, &a, 3).await?;
    fill(fx, &b, 2).await?;
    fx.store.compact_session(&a, "s", 1).await?;
    fx.store.compact_session(&b, "s", 0).await?;
    eq("deleted", fx.store.purge_compacted(0).await?, 4)?;
    eq("again", fx.store.purge_compacted(0).await?, 0)
}

/// Active messages are never purged, however old.
pub async fn purge_never_touches_active(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let made = fill(fx, &sid, 3).await?;
    fx.clock.advance(1_000 * DAY);
    eq("deleted", fx.store.purge_compacted(0).await?, 0)?;
    eq("kept", ids(&fx.store.load_all_messages(&sid).await?), made)
}

/// `days = u32::MAX` puts the cutoff before 1970: nothing is deleted.
pub async fn purge_with_huge_days_deletes_nothing(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 2).await?;
    fx.store.compact_session(&sid, "s", 0).await?;
    fx.clock.set(koda_persistence_api::MAX_TIMESTAMP_MS);
    eq("deleted", fx.store.purge_compacted(u32::MAX).await?, 0)?;
    eq("still compacted", fx.store.compacted_stats().await?.message_count, 2)
}

/// Purged messages leave the session's message count and the context intact.
pub async fn purge_lowers_message_counts(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fill(fx, &sid, 4).await?;
    fx.store.compact_session(&sid, "s", 1).await?;
    let context = fx.store.load_context(&sid).await?;
    fx.store.purge_compacted(0).await?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("message_count", info.first().map(|s| s.message_count), Some(3))?;
    eq("context unchanged", fx.store.load_context(&sid).await?, context)
}
