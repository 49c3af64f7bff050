//! Token usage totals per session and per agent.

use anyhow::Result;
use koda_persistence_api::{Role, SessionUsage};

use super::{eq, session, usage, user};
use crate::Fixture;

/// A `SessionUsage` from its six fields, in declaration order.
pub(super) fn totals(p: i64, c: i64, cr: i64, cc: i64, t: i64, calls: i64) -> SessionUsage {
    SessionUsage {
        prompt_tokens: p,
        completion_tokens: c,
        cache_read_tokens: cr,
        cache_creation_tokens: cc,
        thinking_tokens: t,
        api_calls: calls,
    }
}

/// The five counters are summed over the session's counted messages.
pub async fn usage_sums_counted_messages(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let other = session(fx).await?;
    user(fx, &sid, "q").await?;
    for u in [usage(10, 1, 2, 3, 4), usage(20, 5, 6, 7, 8)] {
        fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, Some(&u)).await?;
    }
    fx.store.insert_message(&other, &Role::Assistant, Some("a"), None, None, Some(&usage(1000, 0, 0, 0, 0))).await?;
    eq("usage", fx.store.session_token_usage(&sid).await?, totals(30, 6, 8, 10, 12, 2))
}

/// Only messages with usage stored count as API calls; `Some(zeros)` counts.
pub async fn usage_counts_messages_with_prompt_or_completion(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, None).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("b"), None, None, Some(&usage(0, 0, 0, 0, 0))).await?;
    fx.store.insert_message(&sid, &Role::User, Some("c"), None, None, Some(&usage(0, 0, 9, 0, 0))).await?;
    eq("usage", fx.store.session_token_usage(&sid).await?, totals(0, 0, 9, 0, 0, 2))
}

/// Compacted messages still count until they are purged; a purge takes
/// every one of the five counters away.
pub async fn usage_includes_compacted_until_purged(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("old"), None, None, Some(&usage(7, 3, 5, 2, 4))).await?;
    user(fx, &sid, "recent").await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("new"), None, None, Some(&usage(1, 1, 1, 1, 1))).await?;
    fx.store.compact_session(&sid, "sum", 2).await?;
    eq("compacted", fx.store.session_token_usage(&sid).await?, totals(8, 4, 6, 3, 5, 2))?;
    fx.store.purge_compacted(0).await?;
    eq("purged", fx.store.session_token_usage(&sid).await?, totals(1, 1, 1, 1, 1, 1))
}

/// An agent whose every counted message was purged is no longer listed by
/// `session_usage_by_agent`, and the other agents keep their sums.
pub async fn usage_by_agent_forgets_a_purged_agent(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some("helper's"),
            None,
            None,
            Some(&usage(2, 1, 1, 1, 1)),
            Some("helper"),
        )
        .await?;
    user(fx, &sid, "recent").await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("main's"), None, None, Some(&usage(5, 4, 3, 2, 1))).await?;
    fx.store.compact_session(&sid, "sum", 2).await?;
    eq("compacted, not purged", fx.store.session_usage_by_agent(&sid).await?.len(), 2)?;
    fx.store.purge_compacted(0).await?;
    eq("purged", fx.store.session_usage_by_agent(&sid).await?, vec![("main".to_owned(), totals(5, 4, 3, 2, 1, 1))])
}

/// An unknown session has zero usage and no agents.
pub async fn usage_of_unknown_session_is_zero(fx: &Fixture) -> Result<()> {
    eq("usage", fx.store.session_token_usage("nope").await?, SessionUsage::default())?;
    eq("by agent", fx.store.session_usage_by_agent("nope").await?.len(), 0)
}

/// Sums saturate at `i64::MAX`.
pub async fn usage_sums_saturate(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let big = usage(i64::MAX, i64::MAX - 1, i64::MAX, 1, i64::MAX);
    for _ in 0..3 {
        fx.store
            .insert_message_with_agent(&sid, &Role::Assistant, Some("a"), None, None, Some(&big), Some("x"))
            .await?;
    }
    let want = totals(i64::MAX, i64::MAX, i64::MAX, 3, i64::MAX, 3);
    eq("usage", fx.store.session_token_usage(&sid).await?, want)?;
    eq("by agent", fx.store.session_usage_by_agent(&sid).await?, vec![("x".to_owned(), want)])
}

/// No agent and `"main"` are one group named `"main"`.
pub async fn usage_by_agent_merges_none_and_main(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, Some(&usage(1, 2, 0, 0, 0))).await?;
    fx.store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some("b"),
            None,
            None,
            Some(&usage(10, 20, 1, 1, 1)),
            Some("main"),
        )
        .await?;
    fx.store.insert_message_with_agent(&sid, &Role::Assistant, Some("c"), None, None, None, Some("idle-agent")).await?;
    eq("groups", fx.store.session_usage_by_agent(&sid).await?, vec![("main".to_owned(), totals(11, 22, 1, 1, 1, 2))])
}

/// Groups are ordered by prompt + completion descending, ties by name bytes.
pub async fn usage_by_agent_orders_by_total_then_name_bytes(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let rows = [
        ("b", usage(5, 5, 0, 0, 0)),
        ("Z", usage(1, 9, 0, 0, 0)),
        ("é", usage(10, 0, 0, 0, 0)),
        ("a", usage(1, 0, 0, 0, 0)),
        ("big", usage(100, 0, 0, 0, 0)),
    ];
    for (agent, u) in rows {
        fx.store
            .insert_message_with_agent(&sid, &Role::Assistant, Some("x"), None, None, Some(&u), Some(agent))
            .await?;
    }
    let names: Vec<String> = fx.store.session_usage_by_agent(&sid).await?.into_iter().map(|(n, _)| n).collect();
    eq("order", names, ["big", "Z", "b", "é", "a"].map(String::from).to_vec())
}

/// Deleting the session removes its usage.
pub async fn usage_drops_with_deleted_session(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, Some(&usage(1, 1, 1, 1, 1))).await?;
    fx.store.delete_session(&sid).await?;
    eq("usage", fx.store.session_token_usage(&sid).await?, SessionUsage::default())
}
