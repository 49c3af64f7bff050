//! Forking a session at a message (`Fork::fork_session`).

use std::path::Path;

use anyhow::Result;
use koda_persistence_api::{MessageRecord, PersistenceError, Role};

use super::transfer::rich_session;
use super::{ROOT, assistant, calls, check, eq, expect_err, incompressible, is_session_not_found, session, tool, user};
use crate::Fixture;

/// A message record without its id (a fork gives fresh ids).
fn unnumbered(mut m: MessageRecord) -> MessageRecord {
    m.id = 0;
    m
}

/// A fork copies every message in order, with text, calls, states,
/// times, agents and usage, under fresh ids, and the session's agent,
/// root, mode and metadata; its title is suffixed; it is new (created
/// now, never accessed) and counts its own messages and tokens.
pub async fn fork_copies_every_message_with_states_and_metadata(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    fx.clock.advance(5_000);
    let fork = fx.store.fork_session(&sid, None).await?;
    check("a new id", fork != sid)?;
    let (a, b) = (fx.store.export_messages(&sid).await?, fx.store.export_messages(&fork).await?);
    eq(
        "the same messages, in order",
        b.iter().cloned().map(unnumbered).collect::<Vec<_>>(),
        a.iter().cloned().map(unnumbered).collect::<Vec<_>>(),
    )?;
    check("fresh ids", b.iter().all(|m| a.iter().all(|o| o.id != m.id)))?;
    let record = fx.store.export_session(&fork).await?.ok_or_else(|| anyhow::anyhow!("no fork"))?;
    let original = fx.store.export_session(&sid).await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    eq("agent", &record.agent_name, &original.agent_name)?;
    eq("root", &record.project_root, &original.project_root)?;
    eq("mode", &record.mode, &original.mode)?;
    eq("title", record.title.as_deref(), Some("title ✓ (fork)"))?;
    eq("created now", record.created_ms, koda_persistence_api::Clock::now_ms(&fx.clock))?;
    eq("never accessed", fx.store.get_session_idle_secs(&fork).await?, None)?;
    eq("metadata", fx.store.export_metadata(&fork).await?, fx.store.export_metadata(&sid).await?)?;
    eq("usage by agent", fx.store.session_usage_by_agent(&fork).await?, fx.store.session_usage_by_agent(&sid).await?)?;
    let listed = fx.store.list_sessions(10, Path::new(ROOT)).await?;
    let info = |id: &str| listed.iter().find(|s| s.id == id).map(|s| (s.message_count, s.total_tokens));
    check("the fork is listed", info(&fork).is_some())?;
    eq("its own counters", info(&fork), info(&sid))?;
    let strip = |ms: Vec<koda_persistence_api::Message>| -> Vec<(Role, Option<String>)> {
        ms.into_iter().map(|m| (m.role, m.content)).collect()
    };
    eq("the same context", strip(fx.store.load_context(&fork).await?), strip(fx.store.load_context(&sid).await?))?;
    user(fx, &fork, "only in the fork").await?;
    eq("the original does not see the fork's writes", fx.store.export_messages(&sid).await?.len(), a.len())
}

/// A fork at a message copies up to and including it; a cut between a
/// tool call and its results ends before the call. An unknown session is
/// `SessionNotFound`, a message of another session `MessageNotFound`,
/// and neither writes anything.
pub async fn fork_at_a_message_ends_before_an_unanswered_call(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let q = user(fx, &sid, "question").await?;
    let call = assistant(fx, &sid, Some("two calls"), Some(&calls(&["c1", "c2"])), true).await?;
    let r1 = tool(fx, &sid, Some("c1"), "first result").await?;
    let r2 = tool(fx, &sid, Some("c2"), "second result").await?;
    let after = user(fx, &sid, "next").await?;
    let ids_of = |ms: Vec<MessageRecord>| ms.into_iter().map(|m| m.content).collect::<Vec<_>>();
    for (at, want) in [
        (q, vec![Some("question")]),
        (call, vec![Some("question")]),
        (r1, vec![Some("question")]),
        (r2, vec![Some("question"), Some("two calls"), Some("first result"), Some("second result")]),
        (after, vec![Some("question"), Some("two calls"), Some("first result"), Some("second result"), Some("next")]),
    ] {
        let fork = fx.store.fork_session(&sid, Some(at)).await?;
        eq(
            &format!("fork at {at}"),
            ids_of(fx.store.export_messages(&fork).await?),
            want.into_iter().map(|s| s.map(str::to_owned)).collect::<Vec<_>>(),
        )?;
    }
    let sessions = fx.store.export_session_ids().await?.len();
    expect_err("unknown session", fx.store.fork_session("no-such-session", None).await, is_session_not_found)?;
    let other = session(fx).await?;
    let foreign = user(fx, &other, "elsewhere").await?;
    expect_err(
        "a message of another session",
        fx.store.fork_session(&sid, Some(foreign)).await,
        |e| matches!(e, PersistenceError::MessageNotFound(id) if *id == foreign),
    )?;
    eq("nothing written by the refused forks", fx.store.export_session_ids().await?.len(), sessions + 1)
}

/// A fork shares its bodies (one more reference each, no new body) and
/// keeps them when the original is deleted.
pub async fn a_fork_shares_bodies_and_outlives_its_original(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let out = incompressible(20_000, 21);
    tool(fx, &sid, Some("x"), &out).await?;
    let fork = fx.store.fork_session(&sid, None).await?;
    let b = fx.store.health().await?.bodies;
    eq("one body, two references", (b.bodies, b.references), (1, 2))?;
    check("delete the original", super::trash::delete_for_good(fx, &sid).await?)?;
    let b = fx.store.health().await?.bodies;
    eq("the fork keeps it", (b.bodies, b.references), (1, 1))?;
    eq("and reads it", fx.store.load_all_messages(&fork).await?[0].content.clone(), Some(out))
}
