//! `load_context`: active messages and the three sanitising passes.

use anyhow::Result;
use koda_persistence_api::{COMPACTION_HINT, InterruptionKind, Role, detect_interruption};

use super::{assistant, calls, eq, ids, roles, session, tool, user};
use crate::Ctx;

/// Compacted messages never reach the context.
pub async fn context_excludes_compacted(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    user(cx, &sid, "old").await?;
    assistant(cx, &sid, Some("old answer"), None, true).await?;
    let kept = user(cx, &sid, "new").await?;
    cx.store.compact_session(&sid, "sum", 1).await?;
    let ctx = cx.store.load_context(&sid).await?;
    eq(
        "roles",
        roles(&ctx),
        vec![Role::System, Role::Assistant, Role::User],
    )?;
    eq("tail", ctx.last().map(|m| m.id), Some(kept))
}

/// Pass 1: an assistant message that was never completed is dropped.
pub async fn context_drops_incomplete_assistant(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    assistant(cx, &sid, Some("interrupted"), None, false).await?;
    let done = assistant(cx, &sid, Some("complete"), None, true).await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![u, done],
    )
}

/// Pass 2: a call and its result both stay.
pub async fn context_pairs_calls_with_results(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "list files").await?;
    let a = assistant(cx, &sid, Some("running"), Some(&calls(&["c1", "c2"])), true).await?;
    let t1 = tool(cx, &sid, Some("c1"), "a.rs").await?;
    let t2 = tool(cx, &sid, Some("c2"), "b.rs").await?;
    let f = assistant(cx, &sid, Some("two files"), None, true).await?;
    let ctx = cx.store.load_context(&sid).await?;
    eq("context", ids(&ctx), vec![u, a, t1, t2, f])?;
    eq("unmodified", ctx, cx.store.load_all_messages(&sid).await?)
}

/// Pass 2: an assistant with one unanswered call is dropped along with the
/// results of its other calls (no orphan is left).
pub async fn context_drops_partially_answered_call_and_its_results(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    assistant(cx, &sid, None, Some(&calls(&["c1", "c2"])), true).await?;
    tool(cx, &sid, Some("c1"), "answered").await?;
    eq("context", ids(&cx.store.load_context(&sid).await?), vec![u])
}

/// Pass 2: tool results with no call id, or naming no remaining call, are dropped.
pub async fn context_drops_orphan_results(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    tool(cx, &sid, None, "no id").await?;
    tool(cx, &sid, Some("ghost"), "nobody asked").await?;
    cx.store
        .insert_tool_message_with_full(&sid, "s", "ghost2", "full")
        .await?;
    eq("context", ids(&cx.store.load_context(&sid).await?), vec![u])
}

/// Only tool messages answer calls: a user or system message carrying the
/// call's id does not, so the caller is dropped.
pub async fn context_only_tool_messages_answer_calls(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    assistant(cx, &sid, None, Some(&calls(&["c1"])), true).await?;
    let not_tool = cx
        .store
        .insert_message(
            &sid,
            &Role::User,
            Some("looks like a result"),
            None,
            Some("c1"),
            None,
        )
        .await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![u, not_tool],
    )
}

/// Pass 2 matches ids as sets: duplicates, order and position do not matter.
pub async fn context_pairing_is_by_id_set(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let t_early = tool(cx, &sid, Some("b"), "result before call").await?;
    let a = assistant(cx, &sid, None, Some(&calls(&["a", "b", "a"])), true).await?;
    let t_a1 = tool(cx, &sid, Some("a"), "first a").await?;
    let t_a2 = tool(cx, &sid, Some("a"), "second a").await?;
    let ctx = cx.store.load_context(&sid).await?;
    eq("context", ids(&ctx), vec![t_early, a, t_a1, t_a2])
}

/// Unparseable JSON, non-arrays and objects without a string id name no
/// call: such an assistant stays, and results pointing at it are orphans.
pub async fn context_unparseable_calls_name_nothing(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let a1 = assistant(cx, &sid, Some("x"), Some("{broken"), true).await?;
    tool(cx, &sid, Some("broken"), "orphan").await?;
    let a2 = assistant(cx, &sid, None, Some(r#"{"id":"obj"}"#), true).await?;
    tool(cx, &sid, Some("obj"), "orphan").await?;
    let a3 = assistant(
        cx,
        &sid,
        None,
        Some(r#"[{"id":7},{"name":"x"},"str"]"#),
        true,
    )
    .await?;
    tool(cx, &sid, Some("7"), "orphan").await?;
    let a4 = assistant(cx, &sid, None, Some(r#"[{"id":"ok"},{"id":null}]"#), true).await?;
    let t = tool(cx, &sid, Some("ok"), "answer").await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![a1, a2, a3, a4, t],
    )
}

/// Pass 3: assistant messages without calls and with no text are dropped.
pub async fn context_drops_blank_assistant_without_calls(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    assistant(cx, &sid, None, None, true).await?;
    assistant(cx, &sid, Some(""), None, true).await?;
    assistant(cx, &sid, Some(" \t\n\u{3000}"), None, true).await?;
    let nul = assistant(cx, &sid, Some("\0"), None, true).await?;
    let blank_user = user(cx, &sid, "   ").await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![u, nul, blank_user],
    )
}

/// Pass 3 keeps a blank assistant that has tool calls (even `[]`).
pub async fn context_keeps_blank_assistant_with_calls(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let a = assistant(cx, &sid, None, Some("[]"), true).await?;
    let b = assistant(cx, &sid, Some(" "), Some(&calls(&["c"])), true).await?;
    let t = tool(cx, &sid, Some("c"), "r").await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![a, b, t],
    )
}

/// The passes run in order: an incomplete caller is dropped first, so its
/// results become orphans and go too.
pub async fn context_passes_run_in_order(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let u = user(cx, &sid, "q").await?;
    assistant(cx, &sid, Some("calling"), Some(&calls(&["c1"])), false).await?;
    tool(cx, &sid, Some("c1"), "result").await?;
    // A blank caller survives pass 3 because it has calls; its result stays.
    let b = assistant(cx, &sid, Some(""), Some(&calls(&["c2"])), true).await?;
    let t = tool(cx, &sid, Some("c2"), "r2").await?;
    eq(
        "context",
        ids(&cx.store.load_context(&sid).await?),
        vec![u, b, t],
    )
}

/// The context of an unknown session is empty.
pub async fn context_of_unknown_session_is_empty(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    user(cx, &sid, "x").await?;
    eq("unknown", cx.store.load_context("missing").await?.len(), 0)
}

/// After compaction the context starts with the summary and the hint.
pub async fn context_after_compaction_starts_with_summary(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    for i in 0..4 {
        user(cx, &sid, &format!("q{i}")).await?;
        assistant(cx, &sid, Some(&format!("a{i}")), None, true).await?;
    }
    eq(
        "marked",
        cx.store.compact_session(&sid, "the summary", 2).await?,
        6,
    )?;
    let ctx = cx.store.load_context(&sid).await?;
    let texts: Vec<Option<&str>> = ctx.iter().map(|m| m.content.as_deref()).collect();
    eq(
        "context",
        texts,
        vec![
            Some("the summary"),
            Some(COMPACTION_HINT),
            Some("q3"),
            Some("a3"),
        ],
    )?;
    eq(
        "roles",
        roles(&ctx)[..2].to_vec(),
        vec![Role::System, Role::Assistant],
    )
}

/// Loading context is a read: it does not set `last_accessed_at`.
pub async fn context_does_not_touch_last_accessed(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    cx.store.load_context(&sid).await?;
    eq(
        "never accessed",
        cx.store.get_session_idle_secs(&sid).await?,
        None,
    )?;
    user(cx, &sid, "x").await?;
    cx.clock.advance(3_000);
    cx.store.load_context(&sid).await?;
    eq("idle", cx.store.get_session_idle_secs(&sid).await?, Some(3))
}

/// `detect_interruption` over a stored history finds an unanswered prompt
/// (first 80 characters) or an unprocessed tool result.
pub async fn interruption_is_detected_from_stored_history(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let prompt = "ü".repeat(100);
    user(cx, &sid, &prompt).await?;
    assistant(cx, &sid, Some("partial"), None, false).await?;
    let ctx = cx.store.load_context(&sid).await?;
    eq(
        "prompt",
        detect_interruption(&ctx),
        Some(InterruptionKind::Prompt("ü".repeat(80))),
    )?;
    let other = session(cx).await?;
    user(cx, &other, "q").await?;
    assistant(cx, &other, None, Some(&calls(&["c"])), true).await?;
    tool(cx, &other, Some("c"), "r").await?;
    eq(
        "tool",
        detect_interruption(&cx.store.load_context(&other).await?),
        Some(InterruptionKind::Tool),
    )?;
    assistant(cx, &other, Some("done"), None, true).await?;
    eq(
        "answered",
        detect_interruption(&cx.store.load_context(&other).await?),
        None,
    )
}
