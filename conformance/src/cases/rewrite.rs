//! Stored text replaced in place (the Rewrite capability, what
//! `koda-store redact` cleans a history with): the given text replaced,
//! every other field kept, search following, bodies re-addressed, and a
//! bad rewrite writing nothing.

use anyhow::Result;
use koda_persistence_api::rewrite::{MessageText, SessionText};
use koda_persistence_api::{MessageRecord, MetadataRecord, SearchScope, TODO_KEY};

use super::{assistant, calls, check, eq, expect_err, incompressible, is_invalid, is_session_not_found, session, user};
use crate::Fixture;

/// The ids of the messages a search for `word` finds.
async fn found(fx: &Fixture, word: &str) -> Result<Vec<i64>> {
    let hits = fx.store.search_messages(word, &SearchScope::default(), 100).await?;
    Ok(hits.iter().map(|h| h.message_id).collect())
}

/// Title, mode, a metadata entry, the TODO list, a message's content, a
/// tool result's full output (a body) and an assistant's tool calls are
/// replaced; every other field of the export stays, reads and the
/// checksum follow, and search finds the new words, not the old.
pub async fn a_rewrite_replaces_the_text_and_keeps_every_other_field(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let sid = session(fx).await?;
    s.set_session_title(&sid, "title oldtitleword").await?;
    s.set_session_mode(&sid, "auto").await?;
    s.set_metadata(&sid, "env", "HOME=oldmetaword").await?;
    s.set_todo(&sid, "- [ ] oldtodoword").await?;
    let said = user(fx, &sid, "the password is oldsecretword").await?;
    let asked = assistant(fx, &sid, Some("running"), Some(&calls(&["c1"])), true).await?;
    let big = format!("{} oldbodyword {}", incompressible(6_000, 3), incompressible(6_000, 4));
    let answered = s.insert_tool_message_with_full(&sid, "short", "c1", &big).await?;
    let other = user(fx, &sid, "untouched oldsecretword").await?;
    let before = s.export_messages(&sid).await?;
    let session_before = s.export_session(&sid).await?;
    eq("the old word is found", found(fx, "oldsecretword").await?.len(), 2)?;

    let new_big = format!("{} newbodyword", incompressible(6_000, 5));
    let new_calls = calls(&["c1"]).replace("bash", "sh");
    let text = SessionText {
        title: Some("title newtitleword".into()),
        mode: Some("ask".into()),
        messages: vec![
            MessageText { id: said, content: Some("the password is newsecretword".into()), ..Default::default() },
            MessageText { id: asked, tool_calls: Some(new_calls.clone()), ..Default::default() },
            MessageText { id: answered, full_content: Some(new_big.clone()), ..Default::default() },
        ],
        metadata: vec![
            MetadataRecord { key: "env".into(), value: "HOME=newmetaword".into() },
            MetadataRecord { key: TODO_KEY.into(), value: "- [x] newtodoword".into() },
        ],
    };
    s.rewrite_session(&sid, &text).await?;

    let want: Vec<MessageRecord> = before
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.id == said {
                m.content = Some("the password is newsecretword".into());
            } else if m.id == asked {
                m.tool_calls = Some(new_calls.clone());
            } else if m.id == answered {
                m.full_content = Some(new_big.clone());
            }
            m
        })
        .collect();
    eq("every other field kept", s.export_messages(&sid).await?, want.clone())?;
    let mut session_want = session_before.clone();
    if let Some(w) = session_want.as_mut() {
        w.title = Some("title newtitleword".into());
        w.mode = Some("ask".into());
    }
    eq("the session record", s.export_session(&sid).await?, session_want)?;
    eq("metadata", s.get_metadata(&sid, "env").await?.as_deref(), Some("HOME=newmetaword"))?;
    eq("todo", s.get_todo(&sid).await?.as_deref(), Some("- [x] newtodoword"))?;
    let context = s.load_context(&sid).await?;
    eq(
        "context content",
        context.iter().find(|m| m.id == said).and_then(|m| m.content.clone()),
        want[0].content.clone(),
    )?;
    eq(
        "the checksum is the new export's",
        s.session_checksum(&sid).await?,
        (want.len(), koda_persistence_api::session_checksum(&want, &s.export_metadata(&sid).await?)),
    )?;
    eq("an old word only the untouched message holds", found(fx, "oldsecretword").await?, vec![other])?;
    eq("the new word", found(fx, "newsecretword").await?, vec![said])?;
    eq("the old word of the full output", found(fx, "oldbodyword").await?, Vec::<i64>::new())?;
    eq("the new word of the full output", found(fx, "newbodyword").await?, vec![answered])?;
    eq(
        "the session is listed with its new title",
        s.list_sessions(10, std::path::Path::new(super::ROOT)).await?[0].title.as_deref(),
        Some("title newtitleword"),
    )?;
    Ok(())
}

/// A body two sessions share: rewriting it in one re-addresses that
/// session's message only (the other still reads the old text); once both
/// are rewritten the old body is gone.
pub async fn a_shared_body_is_re_addressed_and_released_with_its_last_reference(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let (a, b) = (session(fx).await?, session(fx).await?);
    let out = incompressible(20_000, 31);
    let ia = super::tool(fx, &a, Some("x"), &out).await?;
    let ib = super::tool(fx, &b, Some("x"), &out).await?;
    let shared = s.health().await?.bodies;
    let new_out = incompressible(20_000, 32);
    let text = |id| SessionText {
        messages: vec![MessageText { id, content: Some(new_out.clone()), ..Default::default() }],
        ..Default::default()
    };
    s.rewrite_session(&a, &text(ia)).await?;
    eq("a reads the new text", s.load_all_messages(&a).await?[0].content.as_deref(), Some(new_out.as_str()))?;
    eq("b still reads the old", s.load_all_messages(&b).await?[0].content.as_deref(), Some(out.as_str()))?;
    s.rewrite_session(&b, &text(ib)).await?;
    eq("b reads the new text", s.load_all_messages(&b).await?[0].content.as_deref(), Some(new_out.as_str()))?;
    let after = s.health().await?;
    eq("health problems", after.problems, Vec::<String>::new())?;
    let new_len = if shared.bodies == 0 { 0 } else { new_out.len() as u64 };
    eq(
        "the new body alone, with the old one's references",
        (after.bodies.bodies, after.bodies.references, after.bodies.unique_bytes),
        (shared.bodies, shared.references, new_len),
    )
}

/// An unknown session is `SessionNotFound`; a message of another session,
/// an id given twice or a key given twice is `InvalidInput`; each writes
/// nothing, not even the parts of the call that were fine.
pub async fn a_bad_rewrite_writes_nothing(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let (a, b) = (session(fx).await?, session(fx).await?);
    let mine = user(fx, &a, "mine").await?;
    let theirs = user(fx, &b, "theirs").await?;
    s.set_session_title(&a, "kept").await?;
    let before = (s.export_session(&a).await?, s.export_messages(&a).await?, s.export_metadata(&a).await?);
    let with = |messages: Vec<MessageText>, metadata: Vec<MetadataRecord>| SessionText {
        title: Some("changed".into()),
        mode: None,
        messages,
        metadata,
    };
    let msg = |id, t: &str| MessageText { id, content: Some(t.into()), ..Default::default() };
    let entry = |v: &str| MetadataRecord { key: "k".into(), value: v.into() };
    expect_err(
        "unknown session",
        s.rewrite_session("no-such-session", &with(vec![], vec![])).await,
        is_session_not_found,
    )?;
    expect_err(
        "a message of another session",
        s.rewrite_session(&a, &with(vec![msg(mine, "x"), msg(theirs, "x")], vec![entry("v")])).await,
        is_invalid,
    )?;
    expect_err("an unknown message", s.rewrite_session(&a, &with(vec![msg(i64::MAX, "x")], vec![])).await, is_invalid)?;
    expect_err("id 0", s.rewrite_session(&a, &with(vec![msg(0, "x")], vec![])).await, is_invalid)?;
    expect_err(
        "an id twice",
        s.rewrite_session(&a, &with(vec![msg(mine, "x"), msg(mine, "y")], vec![])).await,
        is_invalid,
    )?;
    expect_err("a key twice", s.rewrite_session(&a, &with(vec![], vec![entry("1"), entry("2")])).await, is_invalid)?;
    let after = (s.export_session(&a).await?, s.export_messages(&a).await?, s.export_metadata(&a).await?);
    eq("nothing written", after, before)?;
    eq("the other session untouched", s.load_all_messages(&b).await?[0].content.as_deref(), Some("theirs"))?;
    check("a deleted session", s.delete_session(&a).await?)?;
    expect_err("a deleted session", s.rewrite_session(&a, &with(vec![], vec![])).await, is_session_not_found)?;
    s.reclaim().await?;
    eq("the other session after reclaim", s.load_all_messages(&b).await?[0].content.as_deref(), Some("theirs"))?;
    Ok(())
}
