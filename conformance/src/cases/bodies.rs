//! Large outputs stored once (`koda_persistence_api::bodies`): identical
//! bodies share one copy, every read returns the original bytes, and every
//! path that drops a reference releases it, all seen through the store's
//! own accounting (`StoreHealth::bodies`), never its tables.

use anyhow::Result;
use koda_persistence_api::bodies::{BODY_THRESHOLD, TOOL_BODY_MIN};
use koda_persistence_api::{BodyStats, Role};

use super::{calls, check, eq, expect_err, incompressible, session, tool, user};
use crate::Fixture;

async fn stats(fx: &Fixture) -> Result<BodyStats> {
    let health = fx.store.health().await?;
    eq("health problems", health.problems, Vec::<String>::new())?;
    Ok(health.bodies)
}

/// Checks the counts a store reports: distinct bodies, references, and
/// the text bytes of each (logical: every reference; unique: once).
fn counts(what: &str, got: BodyStats, bodies: u64, references: u64, logical: u64, unique: u64) -> Result<()> {
    eq(what, (got.bodies, got.references, got.logical_bytes, got.unique_bytes), (bodies, references, logical, unique))?;
    check(
        &format!("{what}: stored bytes ({}) at most the unique text ({unique}) plus framing", got.stored_bytes),
        got.stored_bytes <= unique + 64 * bodies,
    )
}

fn len(s: &str) -> u64 {
    s.len() as u64
}

/// The same tool output in two sessions, and twice in one, is one body
/// with three references; short text (a small tool result, a user line)
/// is no body; `full_content` and a long `tool_calls` are bodies too.
pub async fn identical_bodies_are_stored_once(fx: &Fixture) -> Result<()> {
    eq("empty store", stats(fx).await?, BodyStats::default())?;
    let a = session(fx).await?;
    let b = session(fx).await?;
    let out = incompressible(10_000, 1);
    tool(fx, &a, Some("c1"), &out).await?;
    tool(fx, &a, Some("c2"), &out).await?;
    tool(fx, &b, Some("c1"), &out).await?;
    let short = "x".repeat(TOOL_BODY_MIN - 1);
    tool(fx, &b, Some("c2"), &short).await?;
    user(fx, &b, &"u".repeat(BODY_THRESHOLD - 1)).await?;
    counts("one output, three times", stats(fx).await?, 1, 3, 3 * len(&out), len(&out))?;
    let full = incompressible(50_000, 2);
    let shown = "truncated ".repeat(30);
    fx.store.insert_tool_message_with_full(&b, &shown, "c3", &full).await?;
    let long_calls = calls(&["call_with_a_long_id_0123456789"; 200]);
    fx.store.insert_message(&a, &Role::Assistant, None, Some(&long_calls), None, None).await?;
    counts(
        "with a full output and long tool calls",
        stats(fx).await?,
        4,
        6,
        3 * len(&out) + len(&shown) + len(&full) + len(&long_calls),
        len(&out) + len(&shown) + len(&full) + len(&long_calls),
    )?;
    Ok(())
}

/// Bodies come back exactly: NUL, JSON escapes that look like broken
/// UTF-16, every script, several megabytes, through every read.
pub async fn bodies_read_back_byte_for_byte(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let odd =
        format!("{}\0{{\"s\":\"\\ud800\\udfff \\u0000 é 漢 🚀\"}}\r\n{}", "a".repeat(300), incompressible(5_000, 3));
    let big = incompressible(6 << 20, 4) + &"z".repeat(2 << 20);
    let question = incompressible(BODY_THRESHOLD + 1, 5);
    let answer = incompressible(BODY_THRESHOLD, 6);
    let long_calls = calls(&["id_0123456789_0123456789"; 300]);
    user(fx, &sid, &question).await?;
    let calling = fx.store.insert_message(&sid, &Role::Assistant, Some(&answer), Some(&long_calls), None, None).await?;
    fx.store.mark_message_complete(calling).await?;
    tool(fx, &sid, Some("id_0123456789_0123456789"), &odd).await?;
    fx.store.insert_tool_message_with_full(&sid, &odd, "id_0123456789_0123456789", &big).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("messages", all.len(), 4)?;
    eq("user", all[0].content.as_deref(), Some(question.as_str()))?;
    eq("answer", all[1].content.as_deref(), Some(answer.as_str()))?;
    eq("calls", all[1].tool_calls.as_deref(), Some(long_calls.as_str()))?;
    eq("odd", all[2].content.as_deref(), Some(odd.as_str()))?;
    check("big full_content", all[3].full_content.as_deref() == Some(big.as_str()))?;
    let context = fx.store.load_context(&sid).await?;
    check("context has every message, bodies whole", context == all)?;
    let exported = fx.store.export_messages(&sid).await?;
    check(
        "export writes bodies inline",
        exported
            .iter()
            .zip(&all)
            .all(|(r, m)| r.content == m.content && r.full_content == m.full_content && r.tool_calls == m.tool_calls)
            && exported.len() == all.len(),
    )?;
    eq("last user", fx.store.last_user_message(&sid).await?, question.clone())?;
    eq("last assistant", fx.store.last_assistant_message(&sid).await?, answer)?;
    eq("recent", fx.store.recent_user_messages(1).await?, vec![question])?;
    let pending = session(fx).await?;
    fx.store.insert_message(&pending, &Role::Assistant, None, Some(&long_calls), None, None).await?;
    check("calls held as a body are pending", fx.store.has_pending_tool_calls(&pending).await?)
}

/// Every path that drops a reference releases it, and a body goes with
/// its last reference: clearing content, purging compacted rows, deleting
/// a session. A body shared with a live session stays readable.
pub async fn every_delete_path_releases_references(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    let shared = incompressible(8_000, 7);
    let cleared = incompressible(9_000, 8);
    let purged = incompressible(7_000, 9);
    let deleted = incompressible(6_000, 10);
    tool(fx, &a, Some("s"), &shared).await?;
    tool(fx, &b, Some("s"), &shared).await?;
    let clear_me = tool(fx, &a, Some("c"), &cleared).await?;
    tool(fx, &a, Some("p"), &purged).await?;
    tool(fx, &b, Some("d"), &deleted).await?;
    let all = [&shared, &cleared, &purged, &deleted].map(|s| len(s));
    counts("written", stats(fx).await?, 4, 5, all.iter().sum::<u64>() + all[0], all.iter().sum())?;
    fx.store.clear_message_content(&[clear_me], "[cleared]").await?;
    counts("content cleared", stats(fx).await?, 3, 4, 2 * all[0] + all[2] + all[3], all[0] + all[2] + all[3])?;
    // Compact all of a but its last message (the purged output), keep b.
    fx.store.compact_session(&a, "summary", 0).await?;
    fx.store.purge_compacted(0).await?;
    counts("a compacted and purged", stats(fx).await?, 2, 2, all[0] + all[3], all[0] + all[3])?;
    check("b still has a and b's shared body", {
        let m = fx.store.load_all_messages(&b).await?;
        m.first().and_then(|m| m.content.as_deref()) == Some(shared.as_str())
    })?;
    check("delete b", super::trash::delete_for_good(fx, &b).await?)?;
    counts("b deleted", stats(fx).await?, 0, 0, 0, 0)?;
    // A stub that is itself a body is counted like any body.
    let c = session(fx).await?;
    let id = tool(fx, &c, Some("x"), &shared).await?;
    let stub = "[output elided] ".repeat(40);
    fx.store.clear_message_content(&[id], &stub).await?;
    counts("a body stub", stats(fx).await?, 1, 1, len(&stub), len(&stub))?;
    eq("stub reads back", fx.store.load_all_messages(&c).await?[0].content.clone(), Some(stub))?;
    check("delete c", super::trash::delete_for_good(fx, &c).await?)?;
    counts("all gone", stats(fx).await?, 0, 0, 0, 0)
}

/// A write that fails leaves no body and no reference: an import whose
/// last record takes an id already in use is refused whole, after the
/// store has begun storing the bodies of the records before it.
pub async fn a_failed_write_leaves_no_body(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let kept = tool(fx, &sid, Some("k"), &incompressible(5_000, 11)).await?;
    let before = stats(fx).await?;
    let mut records = fx.store.export_messages(&sid).await?;
    let Some(mut record) = records.pop() else { anyhow::bail!("export lost the message") };
    let fresh = fx.store.message_id_range().await?.map_or(1, |(_, hi)| hi + 1);
    check("claim", fx.store.claim_ids(fresh, fresh).await?)?;
    let mut first = record.clone();
    first.id = fresh;
    first.content = Some(incompressible(20_000, 12));
    record.id = kept;
    record.content = Some(incompressible(30_000, 13));
    expect_err("import onto a taken id", fx.store.import_messages(&sid, &[first, record], true).await, |e| {
        matches!(e, koda_persistence_api::PersistenceError::Conflict(_))
    })?;
    eq("bodies after the failed import", stats(fx).await?, before)?;
    expect_err(
        "a body for an unknown session",
        tool(fx, "no-such-session", Some("k"), &incompressible(5_000, 14)).await,
        super::is_session_not_found,
    )?;
    eq("bodies after the refused insert", stats(fx).await?, before)
}

/// An import of an export stores its bodies once: importing a session's
/// export as a new session adds references, not bodies; the store's
/// checksum of such a session is its export's (a server digests a body by
/// its address).
pub async fn import_shares_the_bodies_it_finds(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let out = incompressible(12_000, 15);
    tool(fx, &sid, Some("a"), &out).await?;
    tool(fx, &sid, Some("b"), &out).await?;
    let mut record = fx.store.export_session(&sid).await?.ok_or_else(|| anyhow::anyhow!("no export"))?;
    record.id = "imported-copy".into();
    let messages = fx.store.export_messages(&sid).await?;
    check("import", fx.store.import_session(&record).await?)?;
    fx.store.import_messages(&record.id, &messages, false).await?;
    let metadata = fx.store.export_metadata(&sid).await?;
    eq(
        "the store's checksum of a session holding bodies is its export's",
        fx.store.session_checksum(&sid).await?,
        (messages.len(), koda_persistence_api::session_checksum(&messages, &metadata)),
    )?;
    eq(
        "the copy's checksum is the original's",
        fx.store.session_checksum(&record.id).await?,
        fx.store.session_checksum(&sid).await?,
    )?;
    counts("two sessions, one body", stats(fx).await?, 1, 4, 4 * len(&out), len(&out))?;
    eq(
        "the copy reads back",
        fx.store.export_messages(&record.id).await?.iter().map(|m| m.content.clone()).collect::<Vec<_>>(),
        messages.iter().map(|m| m.content.clone()).collect::<Vec<_>>(),
    )
}
