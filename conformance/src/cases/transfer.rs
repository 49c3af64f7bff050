//! The [`Transfer`](koda_persistence_api::Transfer) capability: export reads every
//! stored field, import writes them back, ids are claimed before they are
//! kept.

use std::path::Path;

use anyhow::Result;
use koda_persistence_api::{MessageRecord, MetadataRecord, PersistenceError, Role, SessionRecord};

use super::{ROOT, assistant, calls, check, eq, expect_err, is_invalid, is_session_not_found, session, usage, user};
use crate::Fixture;
use crate::factory::START_MS;

/// A session holding every kind of row: a title and mode, user and
/// assistant messages with usage and agents, a tool call and its result
/// with full output, a compaction, a still-streaming answer, metadata.
pub(crate) async fn rich_session(fx: &Fixture) -> Result<String> {
    let sid = session(fx).await?;
    fx.store.set_session_title(&sid, "title ✓").await?;
    fx.store.set_session_mode(&sid, "auto").await?;
    user(fx, &sid, "first question").await?;
    fx.clock.advance(1_500);
    let a = fx
        .store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some("calling"),
            Some(&calls(&["c1"])),
            None,
            Some(&usage(10, 20, 3, 4, 5)),
            Some("scout"),
        )
        .await?;
    fx.clock.advance(700);
    fx.store.mark_message_complete(a).await?;
    fx.store.insert_tool_message_with_full(&sid, "short", "c1", "the\0full output").await?;
    fx.clock.advance(10);
    fx.store.compact_session(&sid, "summary so far", 1).await?;
    fx.clock.advance(10);
    user(fx, &sid, "second question").await?;
    assistant(fx, &sid, Some("still streaming"), None, false).await?;
    fx.store.set_metadata(&sid, "zeta", "last").await?;
    fx.store.set_metadata(&sid, "alpha", "first\0").await?;
    fx.store.set_todo(&sid, "- [ ] ship").await?;
    Ok(sid)
}

/// A session record under [`ROOT`] created at `created_ms`, with no title,
/// mode or access time.
pub(super) fn session_record(id: &str, created_ms: i64) -> SessionRecord {
    SessionRecord {
        id: id.to_owned(),
        agent_name: "main".into(),
        project_root: Some(ROOT.into()),
        created_ms,
        last_accessed_ms: None,
        title: None,
        mode: None,
    }
}

/// A record with nothing but its id, role and creation time.
pub(super) fn bare_record(id: i64, role: Role) -> MessageRecord {
    MessageRecord::bare(id, role, START_MS)
}

/// The export of a session, ids left out.
async fn export_without_ids(
    fx: &Fixture,
    sid: &str,
) -> Result<(Option<SessionRecord>, Vec<MessageRecord>, Vec<MetadataRecord>)> {
    let mut s = fx.store.export_session(sid).await?;
    if let Some(s) = s.as_mut() {
        s.id = String::new();
    }
    let mut ms = fx.store.export_messages(sid).await?;
    for m in &mut ms {
        m.id = 0;
    }
    Ok((s, ms, fx.store.export_metadata(sid).await?))
}

/// role, content, completed, compacted, agent, created.
type Row<'a> = (Role, Option<&'a str>, Option<i64>, Option<i64>, Option<&'a str>, i64);

/// Export reads what the trait wrote: the session's fields, every message
/// in conversation order with its id, state, times and agent, and the
/// metadata by key.
pub async fn export_reads_every_stored_field(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    let s = fx.store.export_session(&sid).await?;
    eq(
        "session",
        s,
        Some(SessionRecord {
            id: sid.clone(),
            agent_name: "main".into(),
            project_root: Some(ROOT.into()),
            created_ms: START_MS,
            last_accessed_ms: Some(START_MS + 2_220),
            title: Some("title ✓".into()),
            mode: Some("auto".into()),
        }),
    )?;
    let all = fx.store.load_all_messages(&sid).await?;
    let ms = fx.store.export_messages(&sid).await?;
    eq("ids in conversation order", ms.iter().map(|m| m.id).collect::<Vec<_>>(), all.iter().map(|m| m.id).collect())?;
    let t0 = START_MS;
    let want: Vec<Row<'_>> = vec![
        (Role::User, Some("first question"), None, Some(t0 + 2_210), None, t0),
        (Role::Assistant, Some("calling"), Some(t0 + 2_200), Some(t0 + 2_210), Some("scout"), t0 + 1_500),
        (Role::System, Some("summary so far"), None, None, None, t0 + 2_210),
        (Role::Assistant, Some(koda_persistence_api::COMPACTION_HINT), Some(t0 + 2_210), None, None, t0 + 2_210),
        (Role::Tool, Some("short"), None, None, None, t0 + 2_200),
        (Role::User, Some("second question"), None, None, None, t0 + 2_220),
        (Role::Assistant, Some("still streaming"), None, None, None, t0 + 2_220),
    ];
    eq(
        "rows",
        ms.iter()
            .map(|m| (m.role, m.content.as_deref(), m.completed_ms, m.compacted_ms, m.agent.as_deref(), m.created_ms))
            .collect::<Vec<_>>(),
        want,
    )?;
    let call = ms.get(1).map(|m| (m.tool_calls.clone(), m.counters()));
    eq(
        "assistant's calls and usage",
        call,
        Some((Some(calls(&["c1"])), [Some(10), Some(20), Some(3), Some(4), Some(5)])),
    )?;
    let result = ms.get(4).map(|m| (m.tool_call_id.as_deref(), m.full_content.as_deref(), m.counters()));
    eq("tool result", result, Some((Some("c1"), Some("the\0full output"), [None; 5])))?;
    eq(
        "metadata by key",
        fx.store.export_metadata(&sid).await?,
        vec![
            MetadataRecord { key: "alpha".into(), value: "first\0".into() },
            MetadataRecord { key: "todo".into(), value: "- [ ] ship".into() },
            MetadataRecord { key: "zeta".into(), value: "last".into() },
        ],
    )
}

/// Export of an unknown session: `None` and empty lists; an empty store
/// has no id range.
pub async fn export_of_unknown_session_is_empty(fx: &Fixture) -> Result<()> {
    eq("id range", fx.store.message_id_range().await?, None)?;
    eq("session", fx.store.export_session("nope").await?, None)?;
    eq("messages", fx.store.export_messages("nope").await?, vec![])?;
    eq("metadata", fx.store.export_metadata("nope").await?, vec![])
}

/// Every session, oldest first, ties in creation order, whatever the root.
pub async fn export_lists_every_session_oldest_first(fx: &Fixture) -> Result<()> {
    let a = fx.store.create_session("main", Path::new("/a")).await?;
    let b = fx.store.create_session("main", Path::new("/b")).await?;
    fx.clock.advance(-5_000);
    let older = fx.store.create_session("main", Path::new("/c")).await?;
    eq("ids", fx.store.export_session_ids().await?, vec![older, a, b])
}

/// Exported, then imported under another id without keeping ids: the
/// copy reads back field for field, and behaves like the original.
pub async fn import_of_an_export_reads_back_the_same(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    let mut record = fx.store.export_session(&sid).await?.ok_or_else(|| anyhow::anyhow!("no export"))?;
    record.id = "copy-1".into();
    check("created", fx.store.import_session(&record).await?)?;
    let messages = fx.store.export_messages(&sid).await?;
    let (head, tail) = messages.split_at(3);
    let mut got = fx.store.import_messages("copy-1", head, false).await?;
    got.extend(fx.store.import_messages("copy-1", tail, false).await?);
    fx.store.import_metadata("copy-1", &fx.store.export_metadata(&sid).await?).await?;
    eq(
        "ids returned are the stored ones",
        got.clone(),
        fx.store.load_all_messages("copy-1").await?.iter().map(|m| m.id).collect(),
    )?;
    check("fresh ids, none of the original's", got.iter().all(|id| !messages.iter().any(|m| m.id == *id)))?;
    eq("export of the copy", export_without_ids(fx, "copy-1").await?, export_without_ids(fx, &sid).await?)?;
    // Behaves as the original: context, usage, listing, pending calls.
    let strip = |ms: Vec<koda_persistence_api::Message>| -> Vec<(Role, Option<String>)> {
        ms.into_iter().map(|m| (m.role, m.content)).collect()
    };
    eq("context", strip(fx.store.load_context("copy-1").await?), strip(fx.store.load_context(&sid).await?))?;
    eq("usage", fx.store.session_token_usage("copy-1").await?, fx.store.session_token_usage(&sid).await?)?;
    eq(
        "usage by agent",
        fx.store.session_usage_by_agent("copy-1").await?,
        fx.store.session_usage_by_agent(&sid).await?,
    )?;
    let listed = fx.store.list_sessions(10, Path::new(ROOT)).await?;
    let counts: Vec<(i64, i64)> = ["copy-1", sid.as_str()]
        .iter()
        .filter_map(|id| listed.iter().find(|s| s.id == *id))
        .map(|s| (s.message_count, s.total_tokens))
        .collect();
    eq("listed counts", counts, vec![(7, 30), (7, 30)])?;
    eq(
        "idle from the record",
        fx.store.get_session_idle_secs("copy-1").await?,
        fx.store.get_session_idle_secs(&sid).await?,
    )?;
    eq("compacted stats count both", fx.store.compacted_stats().await?.message_count, 4)?;
    eq("purge removes both sessions' compacted rows", fx.store.purge_compacted(0).await?, 4)?;
    eq("messages left", fx.store.load_all_messages("copy-1").await?.len(), 5)
}

/// `claim_ids` grants a range only above every id the store handed out,
/// and the store's own ids then come after it; kept ids read back as
/// recorded.
pub async fn claimed_ids_are_kept_and_never_handed_out(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let first = user(fx, &sid, "before").await?;
    eq("a range the store reached", fx.store.claim_ids(first, first + 10).await?, false)?;
    let base = first + 1_000;
    check("a range above the sequence", fx.store.claim_ids(base, base + 99).await?)?;
    eq("the same range again", fx.store.claim_ids(base, base + 99).await?, false)?;
    let own = user(fx, &sid, "after the claim").await?;
    check(&format!("own id {own} is past the claim"), own > base + 99)?;
    let records: Vec<MessageRecord> = [base + 7, base + 3, base + 50]
        .iter()
        .map(|&id| MessageRecord { content: Some(format!("kept {id}")), ..bare_record(id, Role::User) })
        .collect();
    eq("kept ids", fx.store.import_messages(&sid, &records, true).await?, vec![base + 7, base + 3, base + 50])?;
    eq(
        "read back in the given order",
        fx.store.load_all_messages(&sid).await?.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![first, own, base + 7, base + 3, base + 50],
    )?;
    eq("smallest and largest id", fx.store.message_id_range().await?, Some((first, own)))?;
    expect_err("a kept id that is taken", fx.store.import_messages(&sid, &records[..1], true).await, |e| {
        matches!(e, PersistenceError::Conflict(_))
    })?;
    let mut beyond = records[0].clone();
    beyond.id = own + 1_000_000;
    expect_err("a kept id nobody claimed", fx.store.import_messages(&sid, &[beyond], true).await, is_invalid)?;
    expect_err("first < 1", fx.store.claim_ids(0, 5).await, is_invalid)?;
    expect_err("first > last", fx.store.claim_ids(9, 5).await, is_invalid)?;
    eq("nothing written by the refusals", fx.store.load_all_messages(&sid).await?.len(), 5)
}

/// Importing a session that exists returns `false` and changes nothing.
pub async fn import_session_is_idempotent(fx: &Fixture) -> Result<()> {
    let record = session_record("s-1", START_MS - 86_400_000);
    check("created", fx.store.import_session(&record).await?)?;
    let mut changed = record.clone();
    changed.title = Some("other".into());
    changed.agent_name = "other".into();
    eq("second import", fx.store.import_session(&changed).await?, false)?;
    eq("unchanged", fx.store.export_session("s-1").await?, Some(record))?;
    let listed = fx.store.list_sessions(5, Path::new(ROOT)).await?;
    eq(
        "listed with its own time",
        listed.iter().map(|s| (s.id.as_str(), s.created_at.as_str())).collect::<Vec<_>>(),
        vec![("s-1", "2026-11-25T05:07:04.123Z")],
    )
}

/// A root-less session (an older koda's) is listed under every root and
/// exports without one.
pub async fn rootless_sessions_list_under_every_root(fx: &Fixture) -> Result<()> {
    let own = session(fx).await?;
    let record = SessionRecord { project_root: None, ..session_record("legacy", START_MS - 1) };
    check("created", fx.store.import_session(&record).await?)?;
    eq(
        "under ROOT, newest first",
        fx.store.list_sessions(10, Path::new(ROOT)).await?.into_iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![own, "legacy".to_owned()],
    )?;
    eq(
        "under another root",
        fx.store.list_sessions(10, Path::new("/elsewhere")).await?.into_iter().map(|s| s.id).collect::<Vec<_>>(),
        vec!["legacy".to_owned()],
    )?;
    eq("limit counts it", fx.store.list_sessions(1, Path::new(ROOT)).await?.len(), 1)?;
    eq("export", fx.store.export_session("legacy").await?, Some(record))?;
    check("deleted", fx.store.delete_session("legacy").await?)?;
    eq("gone from every listing", fx.store.list_sessions(10, Path::new("/elsewhere")).await?.len(), 0)
}

/// Bad records are `InvalidInput`, an unknown session `SessionNotFound`;
/// neither writes anything.
pub async fn import_refuses_bad_records(fx: &Fixture) -> Result<()> {
    let good = session_record("ok", START_MS);
    let bad_sessions = [
        SessionRecord { id: String::new(), ..good.clone() },
        SessionRecord { id: "a\0b".into(), ..good.clone() },
        SessionRecord { id: "x".repeat(koda_persistence_api::MAX_SESSION_ID_BYTES + 1), ..good.clone() },
        SessionRecord { created_ms: koda_persistence_api::MAX_TIMESTAMP_MS + 1, ..good.clone() },
        SessionRecord { last_accessed_ms: Some(koda_persistence_api::MIN_TIMESTAMP_MS - 1), ..good.clone() },
    ];
    for (i, s) in bad_sessions.iter().enumerate() {
        expect_err(&format!("bad session {i}"), fx.store.import_session(s).await, is_invalid)?;
    }
    eq("no session written", fx.store.export_session_ids().await?, vec![])?;
    check("good one", fx.store.import_session(&good).await?)?;
    let message =
        MessageRecord { content: Some("x".into()), prompt_tokens: Some(1), ..bare_record(1, Role::Assistant) };
    let bad_messages = [
        MessageRecord { id: 0, ..message.clone() },
        MessageRecord { thinking_tokens: Some(-1), ..message.clone() },
        MessageRecord { completed_ms: Some(koda_persistence_api::MAX_TIMESTAMP_MS + 1), ..message.clone() },
        MessageRecord { compacted_ms: Some(koda_persistence_api::MIN_TIMESTAMP_MS - 1), ..message.clone() },
        MessageRecord { created_ms: i64::MIN, ..message.clone() },
    ];
    for (i, m) in bad_messages.iter().enumerate() {
        // The good record first: a refusal must take the whole batch.
        expect_err(
            &format!("bad message {i}"),
            fx.store.import_messages("ok", &[message.clone(), m.clone()], false).await,
            is_invalid,
        )?;
    }
    expect_err(
        "unknown session",
        fx.store.import_messages("missing", std::slice::from_ref(&message), false).await,
        is_session_not_found,
    )?;
    expect_err(
        "metadata of an unknown session",
        fx.store.import_metadata("missing", &[MetadataRecord { key: "k".into(), value: "v".into() }]).await,
        is_session_not_found,
    )?;
    eq("no message written", fx.store.export_messages("ok").await?, vec![])?;
    eq(
        "counters untouched",
        fx.store.list_sessions(1, Path::new(ROOT)).await?.first().map(|s| (s.message_count, s.total_tokens)),
        Some((0, 0)),
    )?;
    eq("an empty batch is fine", fx.store.import_messages("ok", &[], false).await?, vec![])
}

/// An older koda's row has only some counters (no cache or thinking
/// tokens): imported, it exports with exactly those, and counts in usage
/// and the session's total as they are.
pub async fn import_keeps_partial_counters(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let partial = MessageRecord {
        prompt_tokens: Some(5),
        completion_tokens: Some(7),
        agent: Some("main".into()),
        completed_ms: Some(START_MS),
        ..bare_record(1, Role::Assistant)
    };
    let only_thinking = MessageRecord { thinking_tokens: Some(0), ..bare_record(2, Role::Assistant) };
    fx.store.import_messages(&sid, &[partial.clone(), only_thinking.clone()], false).await?;
    eq(
        "counters",
        fx.store.export_messages(&sid).await?.iter().map(MessageRecord::counters).collect::<Vec<_>>(),
        vec![partial.counters(), only_thinking.counters()],
    )?;
    let u = fx.store.session_token_usage(&sid).await?;
    eq("usage", (u.prompt_tokens, u.completion_tokens), (5, 7))?;
    eq("listed total", fx.store.list_sessions(1, Path::new(ROOT)).await?.first().map(|s| s.total_tokens), Some(12))
}

/// Imported messages count in usage as written ones do, and purging the
/// imported compacted ones takes exactly their counters away again, even
/// past a saturated sum.
pub async fn usage_counts_imported_messages_until_purged(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some("own"),
            None,
            None,
            Some(&usage(5, 1, 0, 0, 0)),
            Some("x"),
        )
        .await?;
    let old = MessageRecord {
        prompt_tokens: Some(i64::MAX),
        completion_tokens: Some(2),
        cache_read_tokens: Some(3),
        agent: Some("x".into()),
        compacted_ms: Some(START_MS),
        completed_ms: Some(START_MS),
        ..bare_record(1, Role::Assistant)
    };
    let kept = MessageRecord {
        prompt_tokens: Some(7),
        agent: None,
        completed_ms: Some(START_MS),
        ..bare_record(2, Role::Assistant)
    };
    fx.store.import_messages(&sid, &[old, kept], false).await?;
    let by = fx.store.session_usage_by_agent(&sid).await?;
    let x = by.iter().find(|(a, _)| a == "x").map(|(_, u)| *u);
    eq(
        "x before purge",
        x.map(|u| (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.api_calls)),
        Some((i64::MAX, 3, 3, 2)),
    )?;
    eq("groups before purge", by.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), vec!["x", "main"])?;
    fx.store.purge_compacted(0).await?;
    eq(
        "after purge",
        fx.store.session_usage_by_agent(&sid).await?,
        vec![
            ("main".to_owned(), super::usage::totals(7, 0, 0, 0, 0, 1)),
            ("x".to_owned(), super::usage::totals(5, 1, 0, 0, 0, 1)),
        ],
    )
}

/// A store written only through the trait is sound by its own check, at
/// the newest schema this build knows.
pub async fn health_of_a_sound_store_has_no_problems(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    fx.store.purge_compacted(0).await?;
    user(fx, &sid, "after the purge").await?;
    let h = fx.store.health().await?;
    eq("problems", h.problems, Vec::<String>::new())?;
    eq("schema version", h.schema_version, h.latest_schema_version)?;
    check(&format!("a size that holds the rows, if any: {:?}", h.size_bytes), h.size_bytes.is_none_or(|b| b >= 4_096))?;
    check("a version", h.schema_version >= 1)
}

/// `session_checksum` is [`session_checksum`](koda_persistence_api::session_checksum)
/// of the export, whoever computes it (a server computes it over its own
/// rows), and tells a changed session from the original.
pub async fn session_checksum_is_the_exports(fx: &Fixture) -> Result<()> {
    let sid = rich_session(fx).await?;
    let expected =
        |ms: &[MessageRecord], md: &[MetadataRecord]| (ms.len(), koda_persistence_api::session_checksum(ms, md));
    let (ms, md) = (fx.store.export_messages(&sid).await?, fx.store.export_metadata(&sid).await?);
    eq("rich session", fx.store.session_checksum(&sid).await?, expected(&ms, &md))?;
    eq("unknown session", fx.store.session_checksum("nope").await?, expected(&[], &[]))?;
    let before = fx.store.session_checksum(&sid).await?;
    fx.store.set_metadata(&sid, "alpha", "changed").await?;
    let after = fx.store.session_checksum(&sid).await?;
    check("a metadata change shows", after != before)?;
    let id = ms.first().map(|m| m.id).unwrap_or(0);
    fx.store.clear_message_content(&[id], "").await?;
    check("a content change shows", fx.store.session_checksum(&sid).await? != after)
}
