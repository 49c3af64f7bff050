//! `load_context`: active messages and the three sanitising passes.

use anyhow::Result;
use koda_persistence_api::{COMPACTION_HINT, InterruptionKind, Role, detect_interruption};

use super::{assistant, calls, eq, ids, roles, session, tool, user};
use crate::Fixture;

/// Compacted messages never reach the context.
pub async fn context_excludes_compacted(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "old").await?;
    assistant(fx, &sid, Some("old answer"), None, true).await?;
    let kept = user(fx, &sid, "new").await?;
    fx.store.compact_session(&sid, "sum", 1).await?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("roles", roles(&ctx), vec![Role::System, Role::Assistant, Role::User])?;
    eq("tail", ctx.last().map(|m| m.id), Some(kept))
}

/// Pass 1: an assistant message that was never completed is dropped.
pub async fn context_drops_incomplete_assistant(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    assistant(fx, &sid, Some("interrupted"), None, false).await?;
    let done = assistant(fx, &sid, Some("complete"), None, true).await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u, done])
}

/// Pass 2: a call and its result both stay.
pub async fn context_pairs_calls_with_results(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "list files").await?;
    let a = assistant(fx, &sid, Some("running"), Some(&calls(&["c1", "c2"])), true).await?;
    let t1 = tool(fx, &sid, Some("c1"), "a.rs").await?;
    let t2 = tool(fx, &sid, Some("c2"), "b.rs").await?;
    let f = assistant(fx, &sid, Some("two files"), None, true).await?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("context", ids(&ctx), vec![u, a, t1, t2, f])?;
    eq("unmodified", ctx, fx.store.load_all_messages(&sid).await?)
}

/// Pass 2: an assistant with one unanswered call is dropped along with the
/// results of its other calls (no orphan is left).
pub async fn context_drops_partially_answered_call_and_its_results(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    assistant(fx, &sid, None, Some(&calls(&["c1", "c2"])), true).await?;
    tool(fx, &sid, Some("c1"), "answered").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u])
}

/// Pass 2: tool results with no call id, or naming no remaining call, are dropped.
pub async fn context_drops_orphan_results(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    tool(fx, &sid, None, "no id").await?;
    tool(fx, &sid, Some("ghost"), "nobody asked").await?;
    fx.store.insert_tool_message_with_full(&sid, "s", "ghost2", "full").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u])
}

/// Only tool messages answer calls: a user or system message carrying the
/// call's id does not, so the caller is dropped.
pub async fn context_only_tool_messages_answer_calls(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    assistant(fx, &sid, None, Some(&calls(&["c1"])), true).await?;
    let not_tool =
        fx.store.insert_message(&sid, &Role::User, Some("looks like a result"), None, Some("c1"), None).await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u, not_tool])
}

/// Pass 2 matches ids as sets: duplicates, order and position do not matter.
pub async fn context_pairing_is_by_id_set(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let t_early = tool(fx, &sid, Some("b"), "result before call").await?;
    let a = assistant(fx, &sid, None, Some(&calls(&["a", "b", "a"])), true).await?;
    let t_a1 = tool(fx, &sid, Some("a"), "first a").await?;
    let t_a2 = tool(fx, &sid, Some("a"), "second a").await?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("context", ids(&ctx), vec![t_early, a, t_a1, t_a2])
}

/// Unparseable JSON, non-arrays and objects without a string id name no
/// call: such an assistant stays, and results pointing at it are orphans.
pub async fn context_unparseable_calls_name_nothing(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let a1 = assistant(fx, &sid, Some("x"), Some("{broken"), true).await?;
    tool(fx, &sid, Some("broken"), "orphan").await?;
    let a2 = assistant(fx, &sid, None, Some(r#"{"id":"obj"}"#), true).await?;
    tool(fx, &sid, Some("obj"), "orphan").await?;
    let a3 = assistant(fx, &sid, None, Some(r#"[{"id":7},{"name":"x"},"str"]"#), true).await?;
    tool(fx, &sid, Some("7"), "orphan").await?;
    let a4 = assistant(fx, &sid, None, Some(r#"[{"id":"ok"},{"id":null}]"#), true).await?;
    let t = tool(fx, &sid, Some("ok"), "answer").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![a1, a2, a3, a4, t])
}

/// Pass 3: assistant messages without calls and with no text are dropped.
pub async fn context_drops_blank_assistant_without_calls(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    assistant(fx, &sid, None, None, true).await?;
    assistant(fx, &sid, Some(""), None, true).await?;
    assistant(fx, &sid, Some(" \t\n\u{3000}"), None, true).await?;
    let nul = assistant(fx, &sid, Some("\0"), None, true).await?;
    let blank_user = user(fx, &sid, "   ").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u, nul, blank_user])
}

/// Pass 3 keeps a blank assistant that has tool calls (even `[]`).
pub async fn context_keeps_blank_assistant_with_calls(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let a = assistant(fx, &sid, None, Some("[]"), true).await?;
    let b = assistant(fx, &sid, Some(" "), Some(&calls(&["c"])), true).await?;
    let t = tool(fx, &sid, Some("c"), "r").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![a, b, t])
}

/// The passes run in order: an incomplete caller is dropped first, so its
/// results become orphans and go too.
pub async fn context_passes_run_in_order(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    assistant(fx, &sid, Some("calling"), Some(&calls(&["c1"])), false).await?;
    tool(fx, &sid, Some("c1"), "result").await?;
    // A blank caller survives pass 3 because it has calls; its result stays.
    let b = assistant(fx, &sid, Some(""), Some(&calls(&["c2"])), true).await?;
    let t = tool(fx, &sid, Some("c2"), "r2").await?;
    eq("context", ids(&fx.store.load_context(&sid).await?), vec![u, b, t])
}

/// The context of an unknown session is empty.
pub async fn context_of_unknown_session_is_empty(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "x").await?;
    eq("unknown", fx.store.load_context("missing").await?.len(), 0)
}

/// After compaction the context starts with the summary and the hint.
pub async fn context_after_compaction_starts_with_summary(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    for i in 0..4 {
        user(fx, &sid, &format!("q{i}")).await?;
        assistant(fx, &sid, Some(&format!("a{i}")), None, true).await?;
    }
    eq("marked", fx.store.compact_session(&sid, "the summary", 2).await?, 6)?;
    let ctx = fx.store.load_context(&sid).await?;
    let texts: Vec<Option<&str>> = ctx.iter().map(|m| m.content.as_deref()).collect();
    eq("context", texts, vec![Some("the summary"), Some(COMPACTION_HINT), Some("q3"), Some("a3")])?;
    eq("roles", roles(&ctx)[..2].to_vec(), vec![Role::System, Role::Assistant])
}

/// Loading context is a read: it does not set `last_accessed_at`.
pub async fn context_does_not_touch_last_accessed(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.load_context(&sid).await?;
    eq("never accessed", fx.store.get_session_idle_secs(&sid).await?, None)?;
    user(fx, &sid, "x").await?;
    fx.clock.advance(3_000);
    fx.store.load_context(&sid).await?;
    eq("idle", fx.store.get_session_idle_secs(&sid).await?, Some(3))
}

/// `detect_interruption` over a stored history finds an unanswered prompt
/// (first 80 characters) or an unprocessed tool result.
pub async fn interruption_is_detected_from_stored_history(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let prompt = "ü".repeat(100);
    user(fx, &sid, &prompt).await?;
    assistant(fx, &sid, Some("partial"), None, false).await?;
    let ctx = fx.store.load_context(&sid).await?;
    eq("prompt", detect_interruption(&ctx), Some(InterruptionKind::Prompt("ü".repeat(80))))?;
    let other = session(fx).await?;
    user(fx, &other, "q").await?;
    assistant(fx, &other, None, Some(&calls(&["c"])), true).await?;
    tool(fx, &other, Some("c"), "r").await?;
    eq("tool", detect_interruption(&fx.store.load_context(&other).await?), Some(InterruptionKind::Tool))?;
    assistant(fx, &other, Some("done"), None, true).await?;
    eq("answered", detect_interruption(&fx.store.load_context(&other).await?), None)
}
