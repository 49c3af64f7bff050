//! Deleted sessions kept for a grace period (`keep_deleted_days`): hidden
//! from every call as if deleted, listed in the trash, restored
//! byte-exact, gone for good once the period ends.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use koda_persistence_api::trash::DAY_MS;
use koda_persistence_api::{DeletedSession, PersistenceError, Role, SearchScope, SessionInfo, Store};

use super::transfer::rich_session;
use super::{ROOT, assistant, calls, check, eq, expect_err, incompressible, is_session_not_found, session, tool, user};
use crate::Fixture;

/// A result as text, errors by their kind and `id` as a placeholder, so
/// a trashed session's answers compare with an unknown one's.
fn outcome<T: Debug>(r: Result<T>, id: &str) -> String {
    let text = match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => match PersistenceError::of(&e) {
            Some(PersistenceError::SessionNotFound(_)) => "SessionNotFound".to_owned(),
            Some(PersistenceError::MessageNotFound(_)) => "MessageNotFound".to_owned(),
            Some(p) => format!("Err({p:?})"),
            None => format!("Err({e:#})"),
        },
    };
    // Errors are compared by kind; an `Ok` never holds a message id.
    text.replace(id, "<session>")
}

/// What every session-keyed call answers for `sid` (messages `msgs`),
/// reads and writes alike.
async fn answers(store: &Arc<dyn Store>, sid: &str, msgs: &[i64]) -> Vec<String> {
    let o = |name: &str, s: String| format!("{name}: {s}");
    let scope = SearchScope { project_root: None, session: Some(sid), roles: &[], include_compacted: true };
    vec![
        o("mode", outcome(store.get_session_mode(sid).await, sid)),
        o("idle", outcome(store.get_session_idle_secs(sid).await, sid)),
        o("context", outcome(store.load_context(sid).await, sid)),
        o("all", outcome(store.load_all_messages(sid).await, sid)),
        o("last assistant", outcome(store.last_assistant_message(sid).await, sid)),
        o("last user", outcome(store.last_user_message(sid).await, sid)),
        o("pending", outcome(store.has_pending_tool_calls(sid).await, sid)),
        o("usage", outcome(store.session_token_usage(sid).await, sid)),
        o("by agent", outcome(store.session_usage_by_agent(sid).await, sid)),
        o("meta", outcome(store.get_metadata(sid, "zeta").await, sid)),
        o("todo", outcome(store.get_todo(sid).await, sid)),
        o("export", outcome(store.export_session(sid).await, sid)),
        o("export messages", outcome(store.export_messages(sid).await, sid)),
        o("export metadata", outcome(store.export_metadata(sid).await, sid)),
        o("checksum", outcome(store.session_checksum(sid).await, sid)),
        o("search", outcome(store.search_messages("question", &scope, 10).await, sid)),
        o("fork", outcome(store.fork_session(sid, None).await, sid)),
        o("insert", outcome(store.insert_message(sid, &Role::User, Some("x"), None, None, None).await, sid)),
        o("title", outcome(store.set_session_title(sid, "t").await, sid)),
        o("set mode", outcome(store.set_session_mode(sid, "m").await, sid)),
        o("set meta", outcome(store.set_metadata(sid, "k", "v").await, sid)),
        o("compact", outcome(store.compact_session(sid, "s", 0).await, sid)),
        o(
            "complete",
            outcome(
                match msgs.first() {
                    Some(m) => store.mark_message_complete(*m).await,
                    None => Ok(()),
                },
                sid,
            ),
        ),
        o("clear", outcome(store.clear_message_content(msgs, "[cleared]").await, sid)),
        o("delete", outcome(store.delete_session(sid).await, sid)),
    ]
}

/// Every global read, as a comparable value.
async fn globals(fx: &Fixture) -> Result<Vec<String>> {
    let scope = SearchScope { project_root: Some(Path::new(ROOT)), session: None, roles: &[], include_compacted: true };
    Ok(vec![
        format!("{:?}", fx.store.list_sessions(100, Path::new(ROOT)).await?),
        format!("{:?}", fx.store.recent_user_messages(100).await?),
        format!("{:?}", fx.store.compacted_stats().await?),
        format!("{:?}", fx.store.export_session_ids().await?),
        format!("{:?}", fx.store.search_messages("question", &scope, 100).await?),
        format!("{:?}", fx.store.search_messages("output", &SearchScope::default(), 100).await?),
    ])
}

fn listed(list: &[SessionInfo], sid: &str) -> bool {
    list.iter().any(|s| s.id == sid)
}

/// The trash entry of `sid`, or an error naming what the trash holds.
async fn entry(fx: &Fixture, sid: &str) -> Result<DeletedSession> {
    let trash = fx.store.list_deleted().await?;
    match trash.iter().find(|d| d.id == sid) {
        Some(d) => Ok(d.clone()),
        None => bail!("{sid} is not in the trash: {trash:?}"),
    }
}

/// Deletes `sid` and, when the store keeps a grace period, waits it out
/// (moves the clock to its end) and purges: the session is gone for good.
pub(crate) async fn delete_for_good(fx: &Fixture, sid: &str) -> Result<bool> {
    if !fx.store.delete_session(sid).await? {
        return Ok(false);
    }
    if let Some(d) = fx.store.list_deleted().await?.iter().find(|d| d.id == sid) {
        fx.clock.set(d.purge_at_ms);
        fx.store.purge_deleted(false).await?;
    }
    Ok(true)
}

/// A deleted session answers every call (reads, writes, export, search,
/// fork) exactly as a session that never existed, and leaves every
/// global read (listings, recent user messages, compacted stats, export
/// ids, search) as if it had never been written; it returns `true` once,
/// and is listed in the trash with its deletion and purge instants.
pub async fn a_trashed_session_answers_as_if_deleted(fx: &Fixture) -> Result<()> {
    let keep = session(fx).await?;
    user(fx, &keep, "kept question").await?;
    let before = globals(fx).await?;
    let sid = rich_session(fx).await?;
    tool(fx, &sid, Some("c9"), &format!("output {}", incompressible(6_000, 3))).await?;
    let msgs: Vec<i64> = fx.store.load_all_messages(&sid).await?.iter().map(|m| m.id).collect();
    fx.clock.advance(5_000);
    let deleted_at = koda_persistence_api::Clock::now_ms(&fx.clock);
    eq("delete", fx.store.delete_session(&sid).await?, true)?;
    fx.clock.advance(1_000);
    eq("global reads", globals(fx).await?, before)?;
    let ghost = "019aa000-0000-7000-8000-00000000abcd".to_owned();
    // Message ids no store has handed out, one per trashed message.
    let unknown: Vec<i64> = (0..msgs.len() as i64).map(|i| i64::MAX - 10 - i).collect();
    let trashed = answers(&fx.store, &sid, &msgs).await;
    let never = answers(&fx.store, &ghost, &unknown).await;
    eq("every call", trashed, never)?;
    let d = entry(fx, &sid).await?;
    eq("deleted at", d.deleted_ms, deleted_at)?;
    check("purge after deletion", d.purge_at_ms > deleted_at)?;
    eq("purge at a whole number of days", (d.purge_at_ms - deleted_at) % DAY_MS, 0)?;
    eq("message count", d.message_count, msgs.len() as i64)?;
    eq("title", d.title.as_deref(), Some("title ✓"))?;
    eq("root", d.project_root.as_deref(), Some(ROOT))?;
    eq("trash", fx.store.list_deleted().await?.len(), 1)?;
    check("the kept session is listed", listed(&fx.store.list_sessions(10, Path::new(ROOT)).await?, &keep))
}

/// A restore brings the session back byte-exact: its record, listing,
/// messages (ids, order, text, states, times, agents, usage), metadata,
/// usage sums, checksum, search hits and context, and the store's global
/// reads; new writes then go on after its last message.
pub async fn restore_brings_everything_back_byte_exact(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    tool(fx, &sid, Some("c9"), &format!("output {}", incompressible(6_000, 4))).await?;
    let record = fx.store.export_session(&sid).await?;
    let messages = fx.store.export_messages(&sid).await?;
    let metadata = fx.store.export_metadata(&sid).await?;
    let checksum = fx.store.session_checksum(&sid).await?;
    let usage = fx.store.session_token_usage(&sid).await?;
    let by_agent = fx.store.session_usage_by_agent(&sid).await?;
    let context = fx.store.load_context(&sid).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    let mode = fx.store.get_session_mode(&sid).await?;
    let idle = fx.store.get_session_idle_secs(&sid).await?;
    let global = globals(fx).await?;
    let bodies = fx.store.health().await?.bodies;
    fx.clock.advance(DAY_MS);
    fx.store.delete_session(&sid).await?;
    let other = session(fx).await?;
    user(fx, &other, "a question written while it was away").await?;
    fx.clock.advance(DAY_MS);
    fx.store.restore_session(&sid).await?;
    fx.store.delete_session(&other).await?;
    eq("record", fx.store.export_session(&sid).await?, record)?;
    eq("messages", fx.store.export_messages(&sid).await?, messages)?;
    eq("metadata", fx.store.export_metadata(&sid).await?, metadata)?;
    eq("checksum", fx.store.session_checksum(&sid).await?, checksum)?;
    eq("usage", fx.store.session_token_usage(&sid).await?, usage)?;
    eq("usage by agent", fx.store.session_usage_by_agent(&sid).await?, by_agent)?;
    eq("context", fx.store.load_context(&sid).await?, context)?;
    eq("all", fx.store.load_all_messages(&sid).await?, all.clone())?;
    eq("mode", fx.store.get_session_mode(&sid).await?, mode)?;
    eq("idle (two days more)", fx.store.get_session_idle_secs(&sid).await?, idle.map(|s| s + 2 * DAY_MS / 1000))?;
    eq("global reads", globals(fx).await?, global)?;
    eq("bodies", fx.store.health().await?.bodies, bodies)?;
    eq("trash after restore", fx.store.list_deleted().await?.len(), 1)?;
    let next = user(fx, &sid, "after the restore").await?;
    let last = all.last().map_or(0, |m| m.id);
    check("new ids go on", next > last)?;
    let after = fx.store.load_all_messages(&sid).await?;
    eq("appended last", after.last().map(|m| m.id), Some(next))?;
    eq("count", after.len(), all.len() + 1)?;
    let listed_count =
        fx.store.list_sessions(10, Path::new(ROOT)).await?.into_iter().find(|s| s.id == sid).map(|s| s.message_count);
    eq("listed count", listed_count, Some(after.len() as i64))?;
    check("problems", fx.store.health().await?.problems.is_empty())
}

/// A trashed session can be restored until its grace period ends; from
/// that instant it is no longer listed, a restore is `SessionNotFound`,
/// a dry-run purge names it and changes nothing, and a purge removes it
/// for good with the references to its bodies (a body a live session
/// shares stays).
pub async fn restore_after_the_purge_boundary_is_not_found(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let big = format!("output {}", incompressible(8_000, 5));
    assistant(fx, &sid, Some("call"), Some(&calls(&["c1"])), true).await?;
    tool(fx, &sid, Some("c1"), &big).await?;
    let fork = fx.store.fork_session(&sid, None).await?;
    let own = session(fx).await?;
    tool(fx, &own, Some("c2"), &format!("own {}", incompressible(8_000, 6))).await?;
    let full = fx.store.health().await?.bodies;
    eq("two bodies", full.bodies, 2)?;

    fx.store.delete_session(&sid).await?;
    let d = entry(fx, &sid).await?;
    fx.clock.set(d.purge_at_ms - 1);
    eq("dry run before", fx.store.purge_deleted(true).await?, vec![])?;
    eq("purge before", fx.store.purge_deleted(false).await?, vec![])?;
    entry(fx, &sid).await?;
    fx.store.restore_session(&sid).await?;
    check("restored just before the boundary", listed(&fx.store.list_sessions(10, Path::new(ROOT)).await?, &sid))?;

    fx.store.delete_session(&sid).await?;
    fx.store.delete_session(&own).await?;
    let d = entry(fx, &sid).await?;
    let o = entry(fx, &own).await?;
    fx.clock.set(d.purge_at_ms);
    eq("expired ones are not listed", fx.store.list_deleted().await?, vec![])?;
    expect_err("restore at the boundary", fx.store.restore_session(&sid).await, is_session_not_found)?;
    let mut want = vec![d.clone(), o.clone()];
    koda_persistence_api::trash::sort_deleted(&mut want);
    eq("dry run", fx.store.purge_deleted(true).await?, want.clone())?;
    eq("dry run changes nothing", fx.store.health().await?.bodies, full)?;
    eq("purge", fx.store.purge_deleted(false).await?, want)?;
    eq("purge again", fx.store.purge_deleted(false).await?, vec![])?;
    let left = fx.store.health().await?;
    eq("the shared body stays, the other goes", (left.bodies.bodies, left.bodies.references), (1, 1))?;
    check("problems", left.problems.is_empty())?;
    expect_err("restore after the purge", fx.store.restore_session(&sid).await, is_session_not_found)?;
    eq("the fork keeps its copy", fx.store.load_all_messages(&fork).await?.len(), 2)?;
    eq("delete after purge", fx.store.delete_session(&sid).await?, false)
}

/// A restore of a session that is not in the trash (never existed, live,
/// a malformed id) is `SessionNotFound` and writes nothing; importing a
/// session whose id is in the trash is `Conflict`, and a live session
/// under a trashed id keeps the trashed one from coming back (`Conflict`).
pub async fn restore_and_import_refuse_what_they_cannot_do(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "hello").await?;
    for id in [sid.as_str(), "nope", "", "a\0b"] {
        expect_err(&format!("restore {id:?}"), fx.store.restore_session(id).await, is_session_not_found)?;
    }
    let record = fx.store.export_session(&sid).await?.ok_or_else(|| anyhow::anyhow!("no record"))?;
    fx.store.delete_session(&sid).await?;
    expect_err("import of a trashed id", fx.store.import_session(&record).await, |e| {
        matches!(e, PersistenceError::Conflict(_))
    })?;
    eq("nothing imported", fx.store.export_session(&sid).await?, None)?;
    fx.store.restore_session(&sid).await?;
    eq("restored", fx.store.load_all_messages(&sid).await?.len(), 1)?;
    expect_err("restore twice", fx.store.restore_session(&sid).await, is_session_not_found)?;
    eq("empty trash", fx.store.list_deleted().await?, vec![])
}

/// A store opened with `keep_deleted_days=0` deletes for good at once:
/// nothing in the trash, a restore is `SessionNotFound`, and the bodies'
/// references go with the session.
pub async fn without_a_grace_period_delete_is_for_good(fx: &Fixture) -> Result<()> {
    let Some(zero) = fx.fresh_with_grace(0).await? else {
        crate::say_skipped(
            "trash::without_a_grace_period_delete_is_for_good",
            "the factory opens no store with keep_deleted_days=0",
        );
        return Ok(());
    };
    let outcome = async {
        let sid = session(&zero).await?;
        tool(&zero, &sid, Some("c1"), &format!("output {}", incompressible(8_000, 7))).await?;
        eq("one body", zero.store.health().await?.bodies.bodies, 1)?;
        eq("delete", zero.store.delete_session(&sid).await?, true)?;
        eq("trash", zero.store.list_deleted().await?, vec![])?;
        eq("no body", zero.store.health().await?.bodies.bodies, 0)?;
        expect_err("restore", zero.store.restore_session(&sid).await, is_session_not_found)
    }
    .await;
    zero.finish(outcome).await
}

/// A delete racing two writers of the same session loses no acknowledged
/// message: after a restore the session holds exactly the inserts that
/// succeeded, in order, and every other insert failed with
/// `SessionNotFound`.
pub async fn a_delete_racing_writers_loses_no_acknowledged_message(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let first = user(fx, &sid, "before").await?;
    let writer = |n: usize| {
        let store = fx.store.clone();
        let sid = sid.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..40 {
                match store.insert_message(&sid, &Role::User, Some(&format!("w{n} m{i}")), None, None, None).await {
                    Ok(id) => ok.push(id),
                    Err(e) if PersistenceError::of(&e).is_some_and(is_session_not_found) => {}
                    Err(e) => return Err(e),
                }
                tokio::task::yield_now().await;
            }
            Ok(ok)
        })
    };
    let (a, b) = (writer(0), writer(1));
    tokio::task::yield_now().await;
    eq("delete", fx.store.delete_session(&sid).await?, true)?;
    let mut acked = vec![first];
    for h in [a, b] {
        acked.extend(h.await??);
    }
    acked.sort_unstable();
    fx.store.restore_session(&sid).await?;
    let mut got: Vec<i64> = fx.store.load_all_messages(&sid).await?.iter().map(|m| m.id).collect();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    got.sort_unstable();
    eq("every acknowledged message, nothing else", got, acked)?;
    check("conversation order is id order", in_order)
}

/// `count_deleted` counts what `list_deleted` lists: 0 at first, one more
/// per session moved to the trash, one fewer on a restore, and none once
/// the grace period has passed (before any purge).
pub async fn count_deleted_counts_what_list_deleted_lists(fx: &Fixture) -> Result<()> {
    let days = i64::from(fx.store.capabilities().keep_deleted_days);
    if days == 0 {
        crate::say_skipped(
            "trash::count_deleted_counts_what_list_deleted_lists",
            "the store keeps no grace period (keep_deleted_days=0)",
        );
        return Ok(());
    }
    eq("an empty trash", fx.store.count_deleted().await?, 0)?;
    let (a, b) = (session(fx).await?, session(fx).await?);
    fx.store.delete_session(&a).await?;
    fx.clock.advance(1_000);
    fx.store.delete_session(&b).await?;
    let listed = fx.store.list_deleted().await?.len();
    eq("two trashed", (fx.store.count_deleted().await?, listed), (2, 2))?;
    fx.store.restore_session(&a).await?;
    eq("one restored", fx.store.count_deleted().await?, 1)?;
    fx.clock.advance(days * DAY_MS);
    let listed = fx.store.list_deleted().await?.len();
    eq("expired", (fx.store.count_deleted().await?, listed), (0, 0))?;
    Ok(())
}
