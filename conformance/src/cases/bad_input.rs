//! Bad and awkward input: typed errors, nothing written, exact round trips.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use koda_persistence_api::{
    CompactedStats, MAX_SESSION_ID_BYTES, MAX_TIMESTAMP_MS, MetadataRecord, PersistenceError, Role, SessionUsage,
    session_checksum,
};

use super::{ROOT, clip, eq, expect_err, is_invalid, is_session_not_found, session, usage, user};
use crate::Fixture;

/// Every write to an unknown session is `SessionNotFound` and writes nothing.
pub async fn writes_to_unknown_session_fail_and_write_nothing(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let m = "missing-session";
    let u = usage(1, 1, 1, 1, 1);
    expect_err(
        "insert_message",
        s.insert_message(m, &Role::User, Some("x"), None, None, Some(&u)).await,
        is_session_not_found,
    )?;
    expect_err(
        "insert_message_with_agent",
        s.insert_message_with_agent(m, &Role::User, Some("x"), None, None, None, Some("a")).await,
        is_session_not_found,
    )?;
    expect_err(
        "insert_tool_message_with_full",
        s.insert_tool_message_with_full(m, "x", "c", "f").await,
        is_session_not_found,
    )?;
    expect_err("set_session_title", s.set_session_title(m, "t").await, is_session_not_found)?;
    expect_err("set_session_mode", s.set_session_mode(m, "m").await, is_session_not_found)?;
    expect_err("set_metadata", s.set_metadata(m, "k", "v").await, is_session_not_found)?;
    expect_err("set_todo", s.set_todo(m, "t").await, is_session_not_found)?;
    expect_err("compact_session", s.compact_session(m, "s", 0).await, is_session_not_found)?;
    let err = s.set_session_title(m, "t").await.err();
    eq(
        "names the session",
        err.and_then(|e| PersistenceError::of(&e).cloned()),
        Some(PersistenceError::SessionNotFound(m.to_owned())),
    )?;
    eq("messages", s.load_all_messages(m).await?.len(), 0)?;
    eq("recent", s.recent_user_messages(10).await?.len(), 0)?;
    eq("metadata", s.get_metadata(m, "k").await?, None)?;
    eq("mode", s.get_session_mode(m).await?, None)?;
    eq("usage", s.session_token_usage(m).await?.api_calls, 0)?;
    eq("stats", s.compacted_stats().await?, CompactedStats::default())?;
    eq("sessions", s.list_sessions(10, Path::new(ROOT)).await?.len(), 0)
}

/// A session id no store can hold (empty, longer than
/// `MAX_SESSION_ID_BYTES`, or with NUL: ids are created as UUIDs and imports
/// refuse any other) names no session: every read answers as for an unknown
/// session and every write is `SessionNotFound`, on every backend (PostgreSQL
/// could not even send a NUL in a text parameter). Argument checks still come
/// first: a negative counter for such an id is `InvalidInput`.
pub async fn ids_no_store_can_hold_name_no_session(fx: &Fixture) -> Result<()> {
    let real = session(fx).await?;
    user(fx, &real, "kept").await?;
    let long = "a".repeat(MAX_SESSION_ID_BYTES + 1);
    let s = &fx.store;
    for id in ["", "\0", "x\0y", &format!("{real}\0"), long.as_str()] {
        let what = |f: &str| format!("{f} of {:?}", clip(id));
        eq(&what("delete"), s.delete_session(id).await?, false)?;
        eq(&what("mode"), s.get_session_mode(id).await?, None)?;
        eq(&what("idle"), s.get_session_idle_secs(id).await?, None)?;
        eq(&what("context"), s.load_context(id).await?.len(), 0)?;
        eq(&what("all"), s.load_all_messages(id).await?.len(), 0)?;
        eq(&what("last assistant"), s.last_assistant_message(id).await?, String::new())?;
        eq(&what("last user"), s.last_user_message(id).await?, String::new())?;
        eq(&what("pending"), s.has_pending_tool_calls(id).await?, false)?;
        eq(&what("usage"), s.session_token_usage(id).await?, SessionUsage::default())?;
        eq(&what("by agent"), s.session_usage_by_agent(id).await?.len(), 0)?;
        eq(&what("metadata"), s.get_metadata(id, "k").await?, None)?;
        eq(&what("export"), s.export_session(id).await?.is_none(), true)?;
        eq(&what("export messages"), s.export_messages(id).await?.len(), 0)?;
        eq(&what("export metadata"), s.export_metadata(id).await?.len(), 0)?;
        eq(&what("checksum"), s.session_checksum(id).await?, (0, session_checksum(&[], &[])))?;
        let u = usage(1, 1, 0, 0, 0);
        expect_err(
            &what("insert"),
            s.insert_message(id, &Role::User, Some("x"), None, None, Some(&u)).await,
            is_session_not_found,
        )?;
        expect_err(
            &what("negative counter"),
            s.insert_message(id, &Role::User, Some("x"), None, None, Some(&usage(-1, 0, 0, 0, 0))).await,
            is_invalid,
        )?;
        expect_err(&what("fork"), s.fork_session(id, None).await, is_session_not_found)?;
        expect_err(&what("title"), s.set_session_title(id, "t").await, is_session_not_found)?;
        expect_err(&what("mode"), s.set_session_mode(id, "m").await, is_session_not_found)?;
        expect_err(&what("set metadata"), s.set_metadata(id, "k", "v").await, is_session_not_found)?;
        expect_err(&what("compact"), s.compact_session(id, "s", 0).await, is_session_not_found)?;
        expect_err(&what("import messages"), s.import_messages(id, &[], false).await, is_session_not_found)?;
        let entry = MetadataRecord { key: "k".into(), value: "v".into() };
        expect_err(&what("import metadata"), s.import_metadata(id, &[entry]).await, is_session_not_found)?;
    }
    eq("the real session", s.load_all_messages(&real).await?.len(), 1)?;
    eq("sessions", s.list_sessions(10, Path::new(ROOT)).await?.len(), 1)
}

/// Negative limits are `InvalidInput`.
pub async fn negative_limits_are_invalid(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "x").await?;
    for limit in [-1, i64::MIN] {
        expect_err("list_sessions", fx.store.list_sessions(limit, Path::new(ROOT)).await, is_invalid)?;
        expect_err("recent_user_messages", fx.store.recent_user_messages(limit).await, is_invalid)?;
    }
    Ok(())
}

/// Any negative token counter is `InvalidInput`, and nothing is written.
pub async fn negative_token_counters_are_invalid(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let bad = [
        usage(-1, 0, 0, 0, 0),
        usage(0, -1, 0, 0, 0),
        usage(0, 0, -1, 0, 0),
        usage(0, 0, 0, -1, 0),
        usage(0, 0, 0, 0, i64::MIN),
    ];
    for u in bad {
        expect_err(
            &format!("insert_message {u:?}"),
            fx.store.insert_message(&sid, &Role::Assistant, Some("a"), None, None, Some(&u)).await,
            is_invalid,
        )?;
        expect_err(
            &format!("insert_message_with_agent {u:?}"),
            fx.store
                .insert_message_with_agent(&sid, &Role::Assistant, Some("a"), None, None, Some(&u), Some("x"))
                .await,
            is_invalid,
        )?;
    }
    eq("nothing written", fx.store.load_all_messages(&sid).await?.len(), 0)?;
    eq("never accessed", fx.store.get_session_idle_secs(&sid).await?, None)
}

#[cfg(unix)]
fn non_utf8_root() -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(OsString::from_vec(b"/work/\xff\xfeproject".to_vec()))
}

#[cfg(windows)]
fn non_utf8_root() -> PathBuf {
    use std::os::windows::ffi::OsStringExt;
    PathBuf::from(OsString::from_wide(&[0x43, 0x3a, 0xd800]))
}

/// A project root that is not valid UTF-8 is `InvalidInput`, never merged
/// with another root.
pub async fn non_utf8_roots_are_invalid(fx: &Fixture) -> Result<()> {
    let root = non_utf8_root();
    expect_err("create_session", fx.store.create_session("main", &root).await, is_invalid)?;
    expect_err("list_sessions", fx.store.list_sessions(10, &root).await, is_invalid)?;
    eq("nothing created", fx.store.list_sessions(10, Path::new("/work/project")).await?.len(), 0)
}

const AWKWARD: [&str; 10] = [
    "",
    " ",
    "\t\n\r ",
    "héllo wörld 🎉 日本語",
    "a\0b",
    "\0",
    "'; DROP TABLE messages; --",
    "\u{FEFF}bom",
    "e\u{301}",
    "\\x00 $1 %s {} \"quoted\"",
];

/// Every string field and lookup argument round-trips byte for byte.
pub async fn strings_round_trip_byte_for_byte(fx: &Fixture) -> Result<()> {
    for text in AWKWARD {
        let what = |f: &str| format!("{f} of {text:?}");
        let sid = fx.store.create_session(text, Path::new(text)).await?;
        fx.store.set_session_title(&sid, text).await?;
        fx.store.set_session_mode(&sid, text).await?;
        fx.store.set_metadata(&sid, text, text).await?;
        let id = fx
            .store
            .insert_message_with_agent(
                &sid,
                &Role::User,
                Some(text),
                Some(text),
                Some(text),
                Some(&usage(1, 1, 0, 0, 0)),
                Some(text),
            )
            .await?;
        fx.store.insert_tool_message_with_full(&sid, text, text, text).await?;
        let listed = fx.store.list_sessions(10, Path::new(text)).await?;
        eq(&what("listed"), listed.len(), 1)?;
        eq(&what("agent"), listed[0].agent_name.as_str(), text)?;
        eq(&what("title"), listed[0].title.as_deref(), Some(text))?;
        eq(&what("mode"), fx.store.get_session_mode(&sid).await?.as_deref(), Some(text))?;
        eq(&what("metadata"), fx.store.get_metadata(&sid, text).await?.as_deref(), Some(text))?;
        let all = fx.store.load_all_messages(&sid).await?;
        eq(&what("count"), all.len(), 2)?;
        eq(&what("id"), all[0].id, id)?;
        eq(&what("content"), all[0].content.as_deref(), Some(text))?;
        eq(&what("tool_calls"), all[0].tool_calls.as_deref(), Some(text))?;
        eq(&what("tool_call_id"), all[0].tool_call_id.as_deref(), Some(text))?;
        eq(&what("tool content"), all[1].content.as_deref(), Some(text))?;
        eq(&what("full"), all[1].full_content.as_deref(), Some(text))?;
        eq(&what("tool call id"), all[1].tool_call_id.as_deref(), Some(text))?;
        let by = fx.store.session_usage_by_agent(&sid).await?;
        eq(&what("agent group"), by.first().map(|(n, _)| n.as_str()), Some(text))?;
        eq(&what("last user"), fx.store.last_user_message(&sid).await?.as_str(), text)?;
        fx.store.compact_session(&sid, text, 0).await?;
        let ctx = fx.store.load_context(&sid).await?;
        eq(&what("summary"), ctx.first().and_then(|m| m.content.as_deref()), Some(text))?;
        fx.store.clear_message_content(&[id], text).await?;
        fx.store.delete_session(&sid).await?;
    }
    Ok(())
}

/// Multi-megabyte strings round-trip in every large field.
pub async fn multi_megabyte_strings_round_trip(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let big: String = "0123456789abcdé\0".repeat(200_000); // 3.4 MB
    let id = fx.store.insert_message(&sid, &Role::User, Some(&big), Some(&big), Some(&big), None).await?;
    fx.store.insert_tool_message_with_full(&sid, &big, "c", &big).await?;
    fx.store.set_metadata(&sid, "big", &big).await?;
    fx.store.set_todo(&sid, &big).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("id", all.first().map(|m| m.id), Some(id))?;
    eq("content", all[0].content.as_deref().map(str::len), Some(big.len()))?;
    eq("content bytes", all[0].content.as_deref() == Some(big.as_str()), true)?;
    eq("tool_calls", all[0].tool_calls.as_deref() == Some(big.as_str()), true)?;
    eq("tool_call_id", all[0].tool_call_id.as_deref() == Some(big.as_str()), true)?;
    eq("full", all[1].full_content.as_deref() == Some(big.as_str()), true)?;
    eq("metadata", fx.store.get_metadata(&sid, "big").await?.as_deref() == Some(big.as_str()), true)?;
    eq("todo", fx.store.get_todo(&sid).await? == Some(big.clone()), true)?;
    eq("recent", fx.store.recent_user_messages(1).await? == vec![big.clone()], true)?;
    fx.store.compact_session(&sid, "s", 0).await?;
    let stats = fx.store.compacted_stats().await?;
    eq("size_bytes", stats.size_bytes, i64::try_from(big.len() * 3)?)
}

/// `None` and `Some("")` stay distinct in every optional field.
pub async fn none_and_empty_stay_distinct(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.insert_message(&sid, &Role::Tool, None, None, None, None).await?;
    fx.store.insert_message(&sid, &Role::Tool, Some(""), Some(""), Some(""), None).await?;
    fx.store.insert_tool_message_with_full(&sid, "", "", "").await?;
    fx.store.set_metadata(&sid, "k", "").await?;
    let all = fx.store.load_all_messages(&sid).await?;
    let fields: Vec<_> = all
        .iter()
        .map(|m| (m.content.as_deref(), m.tool_calls.as_deref(), m.tool_call_id.as_deref(), m.full_content.as_deref()))
        .collect();
    eq(
        "fields",
        fields,
        vec![(None, None, None, None), (Some(""), Some(""), Some(""), None), (Some(""), None, Some(""), Some(""))],
    )?;
    eq("metadata", fx.store.get_metadata(&sid, "k").await?, Some(String::new()))
}

/// Roots with NULs and non-ASCII are exact keys.
pub async fn roots_with_nul_and_unicode_round_trip(fx: &Fixture) -> Result<()> {
    let roots = ["/a\0b", "/a", "/проект/ü", "/проект/u\u{308}", "C:\\work"];
    let mut made = Vec::new();
    for r in roots {
        made.push(fx.store.create_session("main", Path::new(r)).await?);
    }
    for (r, id) in roots.iter().zip(&made) {
        let got: Vec<String> = fx.store.list_sessions(10, Path::new(r)).await?.into_iter().map(|s| s.id).collect();
        eq(&format!("root {r:?}"), got, vec![id.clone()])?;
    }
    Ok(())
}

/// Clock values at 1970 and 9999 format and subtract correctly.
pub async fn clock_extremes_format_as_rfc3339(fx: &Fixture) -> Result<()> {
    fx.clock.set(0);
    let sid = session(fx).await?;
    user(fx, &sid, "epoch").await?;
    fx.clock.set(MAX_TIMESTAMP_MS);
    user(fx, &sid, "far future").await?;
    let list = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("session", list.first().map(|s| s.created_at.as_str()), Some("1970-01-01T00:00:00.000Z"))?;
    let times: Vec<Option<String>> =
        fx.store.load_all_messages(&sid).await?.into_iter().map(|m| m.created_at).collect();
    eq("messages", times, vec![Some("1970-01-01T00:00:00.000Z".into()), Some("9999-12-31T23:59:59.999Z".into())])?;
    eq("idle", fx.store.get_session_idle_secs(&sid).await?, Some(0))?;
    fx.clock.set(0);
    eq("idle, clock back", fx.store.get_session_idle_secs(&sid).await?, Some(0))?;
    let other = session(fx).await?;
    user(fx, &other, "x").await?;
    fx.clock.set(MAX_TIMESTAMP_MS);
    eq("idle across range", fx.store.get_session_idle_secs(&other).await?, Some(MAX_TIMESTAMP_MS / 1000))
}

/// Limits near `i64::MAX` are honoured without preallocating.
pub async fn huge_limits_are_honoured(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    user(fx, &sid, "a").await?;
    user(fx, &sid, "b").await?;
    for limit in [i64::MAX, i64::MAX - 1, 1 << 40] {
        eq("sessions", fx.store.list_sessions(limit, Path::new(ROOT)).await?.len(), 1)?;
        eq("recent", fx.store.recent_user_messages(limit).await?.len(), 2)?;
    }
    eq("limit 1", fx.store.recent_user_messages(1).await?, vec!["b".to_owned()])
}

/// Strings too big for any database index entry, and 16 MiB ones, fit
/// every field and every lookup: roots (listed by them), agent names,
/// titles, modes, metadata keys and values, message fields, summaries and
/// stubs, all byte for byte.
pub async fn strings_of_any_size_fit_every_field(fx: &Fixture) -> Result<()> {
    for size in [9_000, 16 << 20] {
        // Distinct, incompressible strings of `size` bytes and a little more.
        let base = super::incompressible(size, 1);
        let big = |n: u64| format!("{n}{base}");
        let (root, agent, key) = (big(1), big(2), big(3));
        let sid = fx.store.create_session(&agent, Path::new(&root)).await?;
        let other = fx.store.create_session("main", Path::new(&big(4))).await?;
        let listed = fx.store.list_sessions(10, Path::new(&root)).await?;
        eq(
            &format!("sessions listed under a {size}-byte root"),
            listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            vec![sid.as_str()],
        )?;
        eq("agent name", listed.first().map(|s| s.agent_name == agent), Some(true))?;
        eq(
            "other root lists only its own",
            fx.store.list_sessions(10, Path::new(&big(4))).await?.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            vec![other.clone()],
        )?;
        let (title, mode) = (big(5), big(6));
        fx.store.set_session_title(&sid, &title).await?;
        fx.store.set_session_mode(&sid, &mode).await?;
        let listed = fx.store.list_sessions(1, Path::new(&root)).await?;
        eq("title", listed.first().and_then(|s| s.title.as_ref()) == Some(&title), true)?;
        eq("mode", fx.store.get_session_mode(&sid).await? == Some(mode), true)?;
        let value = big(7);
        fx.store.set_metadata(&sid, &key, &value).await?;
        fx.store.set_metadata(&sid, &key, &value).await?; // an upsert of a big key
        fx.store.set_metadata(&other, &key, "other").await?;
        eq("metadata under a big key", fx.store.get_metadata(&sid, &key).await? == Some(value), true)?;
        eq("a key one byte longer is another key", fx.store.get_metadata(&sid, &format!("{key}!")).await?, None)?;
        let (calls, call_id, full) = (big(8), big(9), big(10));
        let id = fx
            .store
            .insert_message_with_agent(
                &sid,
                &Role::Assistant,
                Some(&big(11)),
                Some(&calls),
                Some(&call_id),
                None,
                Some(&agent),
            )
            .await?;
        fx.store.insert_tool_message_with_full(&sid, &big(12), &call_id, &full).await?;
        let all = fx.store.load_all_messages(&sid).await?;
        eq("messages stored", all.len(), 2)?;
        eq(
            "every message field",
            all.first().map(|m| {
                m.id == id
                    && m.content.as_deref() == Some(big(11).as_str())
                    && m.tool_calls.as_deref() == Some(calls.as_str())
                    && m.tool_call_id.as_deref() == Some(call_id.as_str())
            }),
            Some(true),
        )?;
        eq("full content", all.get(1).and_then(|m| m.full_content.as_deref()) == Some(full.as_str()), true)?;
        let usage_groups = fx.store.session_usage_by_agent(&sid).await?;
        eq("no usage yet", usage_groups.len(), 0)?;
        let summary = big(13);
        eq("compacted", fx.store.compact_session(&sid, &summary, 0).await?, 2)?;
        let all = fx.store.load_all_messages(&sid).await?;
        eq("summary", all.get(2).and_then(|m| m.content.as_deref()) == Some(summary.as_str()), true)?;
        let stub = big(14);
        fx.store.clear_message_content(&[id], &stub).await?;
        eq(
            "stub",
            fx.store.load_all_messages(&sid).await?.first().and_then(|m| m.content.clone()) == Some(stub),
            true,
        )?;
        eq("deleted", fx.store.delete_session(&sid).await?, true)?;
        eq("deleted", fx.store.delete_session(&other).await?, true)?;
    }
    Ok(())
}
