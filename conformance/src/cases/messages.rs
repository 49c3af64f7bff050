//! Messages: inserting, ids, loading, completion, recent/last lookups and clearing.

use anyhow::Result;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::{Message, PersistenceError, Role};

use super::{assistant, calls, check, eq, expect_err, ids, session, tool, usage, user};
use crate::{Fixture, START_MS};

/// Ids grow with every insert, across sessions.
pub async fn ids_increase_across_sessions(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    let mut last = i64::MIN;
    for i in 0..20 {
        let sid = if i % 3 == 0 { &a } else { &b };
        let id = user(fx, sid, "m").await?;
        check(&format!("id {id} not above {last}"), id > last)?;
        last = id;
    }
    Ok(())
}

/// Ids of deleted sessions' messages are never handed out again.
pub async fn ids_never_reused_after_delete(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let mut top = 0;
    for _ in 0..5 {
        top = user(fx, &a, "m").await?;
    }
    fx.store.delete_session(&a).await?;
    let b = session(fx).await?;
    let next = user(fx, &b, "n").await?;
    check(&format!("id {next} reused (max was {top})"), next > top)
}

/// Ids of purged messages are never handed out again.
pub async fn ids_never_reused_after_purge(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "a").await?;
    user(fx, &sid, "b").await?;
    fx.store.compact_session(&sid, "s", 0).await?;
    let top = ids(&fx.store.load_all_messages(&sid).await?).into_iter().max().unwrap_or(0);
    eq("purged", fx.store.purge_compacted(0).await?, 2)?;
    let next = user(fx, &sid, "c").await?;
    check(&format!("id {next} reused (max was {top})"), next > top)
}

/// Every field written comes back exactly, in insertion order.
pub async fn insert_round_trips_every_field(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = usage(11, 22, 33, 44, 55);
    let id = fx
        .store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some("answer"),
            Some(r#"[{"id":"c1"}]"#),
            Some("parent"),
            Some(&u),
            Some("reviewer"),
        )
        .await?;
    let all = fx.store.load_all_messages(&sid).await?;
    let want = Message {
        id,
        session_id: sid.clone(),
        role: Role::Assistant,
        content: Some("answer".into()),
        full_content: None,
        tool_calls: Some(r#"[{"id":"c1"}]"#.into()),
        tool_call_id: Some("parent".into()),
        prompt_tokens: Some(11),
        completion_tokens: Some(22),
        cache_read_tokens: Some(33),
        cache_creation_tokens: Some(44),
        thinking_tokens: Some(55),
        created_at: Some(format_timestamp(START_MS)),
    };
    eq("stored message", all, vec![want])
}

/// `usage: None` stores five `None`s; `Some(zeros)` stores five zeros.
pub async fn usage_none_and_zero_stay_distinct(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, None).await?;
    fx.store.insert_message(&sid, &Role::Assistant, Some("b"), None, None, Some(&usage(0, 0, 0, 0, 0))).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 2)?;
    eq("none", all[0].usage_counters(), [None; 5])?;
    eq("zeros", all[1].usage_counters(), [Some(0); 5])
}

/// `insert_message` behaves as `insert_message_with_agent(.., None)`: same
/// fields, and its usage counts for agent `main`.
pub async fn insert_message_is_with_agent_none(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = usage(3, 4, 0, 0, 0);
    let a = fx.store.insert_message(&sid, &Role::User, Some("q"), None, None, Some(&u)).await?;
    let b = fx.store.insert_message_with_agent(&sid, &Role::User, Some("q"), None, None, Some(&u), None).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("ids", ids(&all), vec![a, b])?;
    let strip = |m: &Message| Message { id: 0, ..m.clone() };
    eq("same fields", strip(&all[0]), strip(&all[1]))?;
    let by = fx.store.session_usage_by_agent(&sid).await?;
    eq("groups", by.iter().map(|(n, u)| (n.as_str(), u.api_calls)).collect::<Vec<_>>(), vec![("main", 2)])
}

/// `insert_tool_message_with_full` stores a tool message with content,
/// full content and call id, and no usage.
pub async fn tool_message_with_full_sets_tool_fields(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let id = fx.store.insert_tool_message_with_full(&sid, "3 lines", "call_9", "line1\nline2\nline3").await?;
    let all = fx.store.load_all_messages(&sid).await?;
    let m = all.first().ok_or_else(|| anyhow::anyhow!("no message"))?;
    eq("id", m.id, id)?;
    eq("role", m.role, Role::Tool)?;
    eq("content", m.content.as_deref(), Some("3 lines"))?;
    eq("full", m.full_content.as_deref(), Some("line1\nline2\nline3"))?;
    eq("call id", m.tool_call_id.as_deref(), Some("call_9"))?;
    eq("tool_calls", m.tool_calls.as_deref(), None)?;
    eq("usage", m.usage_counters(), [None; 5])?;
    eq("usage calls", fx.store.session_token_usage(&sid).await?.api_calls, 0)
}

/// A message's `created_at` is the clock's now at insert.
pub async fn message_created_at_comes_from_clock(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "a").await?;
    fx.clock.advance(1_234);
    user(fx, &sid, "b").await?;
    let all = fx.store.load_all_messages(&sid).await?;
    let times: Vec<Option<String>> = all.into_iter().map(|m| m.created_at).collect();
    eq(
        "created_at",
        times,
        vec![Some("2026-11-26T05:07:04.123Z".to_owned()), Some("2026-11-26T05:07:05.357Z".to_owned())],
    )
}

/// `load_all_messages` returns compacted and incomplete messages too.
pub async fn load_all_includes_compacted_and_incomplete(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u1 = user(fx, &sid, "one").await?;
    let a1 = assistant(fx, &sid, Some("partial"), None, false).await?;
    fx.store.compact_session(&sid, "sum", 0).await?;
    let u2 = user(fx, &sid, "two").await?;
    let a2 = assistant(fx, &sid, Some("cut off"), None, false).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 6)?;
    let got = ids(&all);
    eq("stored ones", (got[0], got[1], got[4], got[5]), (u1, a1, u2, a2))
}

/// Loading an unknown session gives an empty list.
pub async fn load_all_of_unknown_session_is_empty(fx: &Fixture) -> Result<()> {
    session(fx).await?;
    eq("all", fx.store.load_all_messages("missing").await?.len(), 0)
}

/// Completing an unknown message id is `MessageNotFound`.
pub async fn mark_complete_unknown_id_is_message_not_found(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let id = user(fx, &sid, "x").await?;
    for bad in [id + 1_000, -1, 0, i64::MAX] {
        expect_err(
            &format!("mark {bad}"),
            fx.store.mark_message_complete(bad).await,
            |e| matches!(e, PersistenceError::MessageNotFound(got) if *got == bad),
        )?;
    }
    Ok(())
}

/// Completion works on any role and may be repeated.
pub async fn mark_complete_works_on_any_role_and_is_idempotent(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let u = user(fx, &sid, "q").await?;
    let a = assistant(fx, &sid, Some("a"), None, false).await?;
    let t = tool(fx, &sid, Some("c"), "r").await?;
    for id in [u, a, t, a] {
        fx.store.mark_message_complete(id).await?;
    }
    let ctx = fx.store.load_context(&sid).await?;
    eq("context", ids(&ctx), vec![u, a])
}

/// `tool_calls` is stored verbatim, valid JSON or not.
pub async fn tool_calls_are_stored_verbatim(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let texts = ["[ {\"id\" : \"x\"} ]", "{not json", "", "null", "[]"];
    for t in texts {
        assistant(fx, &sid, None, Some(t), false).await?;
    }
    let got: Vec<Option<String>> = fx.store.load_all_messages(&sid).await?.into_iter().map(|m| m.tool_calls).collect();
    eq("tool_calls", got, texts.iter().map(|t| Some((*t).to_owned())).collect())
}

/// Recent user messages come from all sessions, highest id first.
pub async fn recent_user_messages_newest_first_across_sessions(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    user(fx, &a, "a1").await?;
    user(fx, &b, "b1").await?;
    assistant(fx, &a, Some("not a user"), None, true).await?;
    user(fx, &a, "a2").await?;
    eq("recent", fx.store.recent_user_messages(10).await?, vec!["a2".to_owned(), "b1".to_owned(), "a1".to_owned()])
}

/// Empty and unset user contents are skipped; compacted ones and repeats are kept.
pub async fn recent_user_messages_skip_empty_include_compacted(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "same").await?;
    user(fx, &sid, "").await?;
    fx.store.insert_message(&sid, &Role::User, None, None, None, None).await?;
    user(fx, &sid, "same").await?;
    fx.store.compact_session(&sid, "sum", 0).await?;
    user(fx, &sid, " ").await?;
    eq("recent", fx.store.recent_user_messages(10).await?, vec![" ".to_owned(), "same".to_owned(), "same".to_owned()])
}

/// Compaction moves the preserved tail; the recent prompts still read the
/// user messages themselves, never a summary, hint or answer.
pub async fn recent_user_messages_follow_moved_messages(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "u1").await?;
    assistant(fx, &sid, Some("a1"), None, true).await?;
    user(fx, &sid, "u2").await?;
    assistant(fx, &sid, Some("a2"), None, true).await?;
    user(fx, &sid, "u3").await?;
    // Keeps u2, a2, u3: they move behind the summary and hint.
    fx.store.compact_session(&sid, "summary", 3).await?;
    eq(
        "after one compaction",
        fx.store.recent_user_messages(10).await?,
        vec!["u3".to_owned(), "u2".to_owned(), "u1".to_owned()],
    )?;
    fx.store.compact_session(&sid, "again", 2).await?;
    user(fx, &sid, "u4").await?;
    eq(
        "after two",
        fx.store.recent_user_messages(10).await?,
        vec!["u4".to_owned(), "u3".to_owned(), "u2".to_owned(), "u1".to_owned()],
    )
}

/// `limit` bounds the count; 0 gives none.
pub async fn recent_user_messages_honour_limit(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    for i in 0..5 {
        user(fx, &sid, &format!("u{i}")).await?;
    }
    eq("0", fx.store.recent_user_messages(0).await?.len(), 0)?;
    eq("2", fx.store.recent_user_messages(2).await?, vec!["u4".to_owned(), "u3".to_owned()])?;
    eq("max", fx.store.recent_user_messages(i64::MAX).await?.len(), 5)
}

/// "Last" follows conversation order, where compaction's hint sits before the tail.
pub async fn last_messages_follow_conversation_order(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "first question").await?;
    assistant(fx, &sid, Some("first answer"), None, true).await?;
    user(fx, &sid, "second question").await?;
    eq("last user", fx.store.last_user_message(&sid).await?.as_str(), "second question")?;
    eq("last assistant", fx.store.last_assistant_message(&sid).await?.as_str(), "first answer")?;
    // Keep only the last user message: the hint lands before it.
    fx.store.compact_session(&sid, "sum", 1).await?;
    eq(
        "last assistant is the hint",
        fx.store.last_assistant_message(&sid).await?.as_str(),
        koda_persistence_api::COMPACTION_HINT,
    )?;
    eq("last user", fx.store.last_user_message(&sid).await?.as_str(), "second question")?;
    assistant(fx, &sid, Some("incomplete answer"), None, false).await?;
    eq("incomplete counts", fx.store.last_assistant_message(&sid).await?.as_str(), "incomplete answer")
}

/// Messages whose content is unset are skipped by the "last" lookups.
pub async fn last_messages_skip_unset_content(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "real").await?;
    assistant(fx, &sid, Some(""), None, true).await?;
    fx.store.insert_message(&sid, &Role::User, None, None, None, None).await?;
    assistant(fx, &sid, None, Some(&calls(&["c"])), true).await?;
    eq("user", fx.store.last_user_message(&sid).await?.as_str(), "real")?;
    eq("assistant (empty string is set)", fx.store.last_assistant_message(&sid).await?.as_str(), "")?;
    let other = session(fx).await?;
    assistant(fx, &other, Some("kept"), None, false).await?;
    assistant(fx, &other, None, None, true).await?;
    eq("assistant", fx.store.last_assistant_message(&other).await?.as_str(), "kept")
}

/// Unknown sessions, or sessions without that role, give `""`.
pub async fn last_messages_of_unknown_session_are_empty(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    tool(fx, &sid, Some("c"), "r").await?;
    eq("user", fx.store.last_user_message(&sid).await?.as_str(), "")?;
    eq("assistant", fx.store.last_assistant_message(&sid).await?.as_str(), "")?;
    eq("unknown user", fx.store.last_user_message("nope").await?.as_str(), "")?;
    eq("unknown assistant", fx.store.last_assistant_message("nope").await?.as_str(), "")
}

/// Pending tool calls: the last active message is an assistant with tool
/// calls, complete or not, whatever its JSON holds.
pub async fn pending_tool_calls_when_last_active_is_calling_assistant(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    eq("empty", fx.store.has_pending_tool_calls(&sid).await?, false)?;
    user(fx, &sid, "go").await?;
    eq("after user", fx.store.has_pending_tool_calls(&sid).await?, false)?;
    assistant(fx, &sid, None, Some(&calls(&["c1"])), false).await?;
    eq("incomplete caller", fx.store.has_pending_tool_calls(&sid).await?, true)?;
    tool(fx, &sid, Some("c1"), "done").await?;
    assistant(fx, &sid, Some("x"), Some("not json"), true).await?;
    eq("invalid json still has calls", fx.store.has_pending_tool_calls(&sid).await?, true)
}

/// No pending calls once a result follows, after compaction's hint, or for
/// an unknown session.
pub async fn no_pending_tool_calls_after_result_or_compaction(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    assistant(fx, &sid, None, Some(&calls(&["c1"])), true).await?;
    tool(fx, &sid, Some("c1"), "out").await?;
    eq("answered", fx.store.has_pending_tool_calls(&sid).await?, false)?;
    assistant(fx, &sid, None, Some(&calls(&["c2"])), true).await?;
    eq("pending", fx.store.has_pending_tool_calls(&sid).await?, true)?;
    fx.store.compact_session(&sid, "sum", 0).await?;
    eq("after compaction", fx.store.has_pending_tool_calls(&sid).await?, false)?;
    eq("unknown", fx.store.has_pending_tool_calls("nope").await?, false)
}

/// Clearing sets `content` on listed messages of any session, compacted or
/// not, and changes nothing else.
pub async fn clear_content_sets_stub_only(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    let t1 = fx.store.insert_tool_message_with_full(&a, "summary", "c1", "full output").await?;
    let u1 = user(fx, &a, "keep me").await?;
    fx.store.compact_session(&a, "sum", 1).await?;
    let t2 = tool(fx, &b, Some("c2"), "other").await?;
    fx.clock.advance(7_000);
    let before_a = fx.store.load_all_messages(&a).await?;
    let before_b = fx.store.load_all_messages(&b).await?;
    fx.store.clear_message_content(&[t1, t2, t1], "[cleared]").await?;
    let expect = |ms: Vec<Message>| -> Vec<Message> {
        ms.into_iter()
            .map(|m| if m.id == t1 || m.id == t2 { Message { content: Some("[cleared]".into()), ..m } } else { m })
            .collect()
    };
    eq("session a", fx.store.load_all_messages(&a).await?, expect(before_a))?;
    eq("session b", fx.store.load_all_messages(&b).await?, expect(before_b))?;
    eq("idle untouched", fx.store.get_session_idle_secs(&a).await?, Some(7))?;
    eq("other untouched", fx.store.last_user_message(&a).await?.as_str(), "keep me")?;
    check("u1 exists", u1 > 0)
}

/// Unknown ids are ignored; an empty list is a no-op.
pub async fn clear_content_ignores_unknown_ids(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let id = user(fx, &sid, "x").await?;
    fx.store.clear_message_content(&[], "stub").await?;
    fx.store.clear_message_content(&[id + 100, -5, i64::MAX], "stub").await?;
    eq("untouched", fx.store.last_user_message(&sid).await?.as_str(), "x")?;
    fx.store.clear_message_content(&[id + 100, id], "").await?;
    eq("cleared to empty", fx.store.load_all_messages(&sid).await?[0].content.as_deref(), Some(""))
}
