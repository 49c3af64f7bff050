//! Secrets redacted as they are written (a store with redaction mode
//! `secrets`, through `redaction::with_redaction` as the facade opens it):
//! every write path, every read path, stored-once outputs, JSON tool calls,
//! the recorded mode; and a store with mode `off` keeps every byte.
//!
//! The credentials are made up here at run time from their documented
//! shapes, so no file of the repository holds one.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, ensure};
use koda_persistence_api::redaction::{record_mode, recorded_mode, with_redaction};
use koda_persistence_api::secrets::RedactMode;
use koda_persistence_api::{MessageRecord, MetadataRecord, Role, SearchScope, SessionRecord, Store};

use super::{ROOT, check, eq, expect_err, is_invalid, session};
use crate::{Fixture, START_MS};

/// A GitHub token of the documented shape, different for each `n`.
fn github_token(n: u64) -> String {
    let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".chars().collect();
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: String = (0..36)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize]
        })
        .collect();
    format!("gh{}_{body}", "p")
}

/// `fx.store` with redaction mode `secrets`, as a `redact=secrets` URL
/// opens it.
async fn redacting(fx: &Fixture) -> Result<Arc<dyn Store>> {
    with_redaction(fx.store.clone(), Some(RedactMode::Secrets)).await
}

/// Every text `store` gives back about session `sid` and the whole store:
/// messages, metadata, the TODO list, mode, listings, the trash-free
/// export, recent prompts and a search for `probe`.
async fn everything_read(store: &Arc<dyn Store>, sid: &str, probe: &str) -> Result<String> {
    let mut out = String::new();
    for m in store.load_all_messages(sid).await? {
        out.push_str(&format!("{:?}{:?}{:?}\n", m.content, m.full_content, m.tool_calls));
    }
    for m in store.load_context(sid).await? {
        out.push_str(&format!("{:?}\n", m.content));
    }
    for s in store.list_sessions(100, Path::new(ROOT)).await? {
        out.push_str(&format!("{:?}{:?}\n", s.title, s.mode));
    }
    out.push_str(&format!("{:?}{:?}\n", store.get_todo(sid).await?, store.get_session_mode(sid).await?));
    out.push_str(&format!("{:?}\n", store.get_metadata(sid, "env").await?));
    out.push_str(&format!("{:?}\n", store.recent_user_messages(100).await?));
    out.push_str(&store.last_user_message(sid).await?);
    out.push_str(&store.last_assistant_message(sid).await?);
    out.push_str(&format!("{:?}\n", store.export_session(sid).await?));
    out.push_str(&format!("{:?}\n", store.export_messages(sid).await?));
    out.push_str(&format!("{:?}\n", store.export_metadata(sid).await?));
    let scope = SearchScope { include_compacted: true, ..SearchScope::default() };
    for h in store.search_messages(probe, &scope, 100).await? {
        out.push_str(&format!("{:?}\n", h));
    }
    Ok(out)
}

/// A credential in every field of every write path (inserts, a tool
/// result with its full output, tool calls, the title and mode, metadata
/// and the TODO list, a compaction summary, a cleared message's stub) is
/// stored redacted: no read gives it back, each place holds
/// `[REDACTED:github-token:…]`, and tool calls are still JSON.
pub async fn every_write_path_stores_credentials_redacted(fx: &Fixture) -> Result<()> {
    let store = redacting(fx).await?;
    let sid = store.create_session("main", Path::new(ROOT)).await?;
    let t: Vec<String> = (0..12).map(github_token).collect();
    store.set_session_title(&sid, &format!("deploy with {}", t[0])).await?;
    store.set_session_mode(&sid, &format!("mode {}", t[1])).await?;
    store.insert_message(&sid, &Role::User, Some(&format!("my token is {} ok", t[2])), None, None, None).await?;
    let calls = format!(
        r#"[{{"id":"call_1","type":"function","function":{{"name":"bash","arguments":"{{\"cmd\":\"git push https://x:{}@github.com/a/b\"}}"}}}}]"#,
        t[3]
    );
    let answer = store
        .insert_message_with_agent(
            &sid,
            &Role::Assistant,
            Some(&format!("using {}", t[4])),
            Some(&calls),
            None,
            None,
            Some("helper"),
        )
        .await?;
    store.mark_message_complete(answer).await?;
    store.insert_tool_message_with_full(&sid, &format!("out {}", t[5]), "call_1", &format!("full {}", t[6])).await?;
    store.set_metadata(&sid, "env", &format!("GITHUB_TOKEN={}", t[7])).await?;
    store.set_todo(&sid, &format!("- [ ] rotate {}", t[8])).await?;
    let cleared = store.insert_message(&sid, &Role::User, Some("to be cleared"), None, None, None).await?;
    store.clear_message_content(&[cleared], &format!("[cleared {}]", t[9])).await?;
    store.insert_message(&sid, &Role::User, Some("one more"), None, None, None).await?;
    store.compact_session(&sid, &format!("summary mentions {}", t[10]), 1).await?;
    let read = everything_read(&store, &sid, "token").await?;
    for (i, token) in t.iter().enumerate().take(11) {
        ensure!(!read.contains(token.as_str()), "credential {i} came back: {read}");
    }
    let raw = everything_read(&fx.store, &sid, "token").await?;
    for token in t.iter().take(11) {
        ensure!(!raw.contains(token.as_str()), "the store inside holds a credential: {raw}");
    }
    check("the placeholder is stored", raw.contains("[REDACTED:github-token:"))?;
    let stored = fx.store.load_all_messages(&sid).await?;
    let calls = stored.iter().find_map(|m| m.tool_calls.clone()).unwrap_or_default();
    check(&format!("tool calls are still JSON: {calls}"), serde_json::from_str::<serde_json::Value>(&calls).is_ok())?;
    check("the rest of the tool calls is unchanged", calls.starts_with(r#"[{"id":"call_1","type":"function""#))?;
    Ok(())
}

/// Imported records (a session's title and mode, messages' content, full
/// output and tool calls, metadata values) are redacted as written ones.
pub async fn imported_records_are_redacted(fx: &Fixture) -> Result<()> {
    let store = redacting(fx).await?;
    let t: Vec<String> = (20..26).map(github_token).collect();
    let record = SessionRecord {
        title: Some(format!("title {}", t[0])),
        mode: Some(format!("mode {}", t[1])),
        ..super::transfer::session_record("imported-with-secrets", START_MS)
    };
    store.import_session(&record).await?;
    let messages = vec![MessageRecord {
        content: Some(format!("content {}", t[2])),
        full_content: Some(format!("full {}", t[3])),
        tool_calls: Some(format!(r#"[{{"id":"c","function":{{"arguments":"{}"}}}}]"#, t[4])),
        ..MessageRecord::bare(1, Role::Assistant, START_MS)
    }];
    store.import_messages(&record.id, &messages, false).await?;
    store.import_metadata(&record.id, &[MetadataRecord { key: "k".into(), value: format!("value {}", t[5]) }]).await?;
    let read = everything_read(&fx.store, &record.id, "content").await?;
    for token in &t {
        ensure!(!read.contains(token.as_str()), "an imported credential was stored: {read}");
    }
    eq("the imported session's metadata", fx.store.export_metadata(&record.id).await?.len(), 1)?;
    Ok(())
}

/// Text given to a rewrite (title, mode, messages' three fields, metadata
/// values) is redacted as written text is.
pub async fn rewritten_text_is_redacted(fx: &Fixture) -> Result<()> {
    use koda_persistence_api::rewrite::{MessageText, SessionText};
    let store = redacting(fx).await?;
    let sid = session(fx).await?;
    let id = store.insert_message(&sid, &Role::Assistant, Some("plain"), None, None, None).await?;
    let t: Vec<String> = (40..46).map(github_token).collect();
    let text = SessionText {
        title: Some(format!("title {}", t[0])),
        mode: Some(format!("mode {}", t[1])),
        messages: vec![MessageText {
            id,
            content: Some(format!("content {}", t[2])),
            full_content: Some(format!("full {}", t[3])),
            tool_calls: Some(format!(r#"[{{"id":"c","function":{{"arguments":"{}"}}}}]"#, t[4])),
        }],
        metadata: vec![MetadataRecord { key: "k".into(), value: format!("value {}", t[5]) }],
    };
    store.rewrite_session(&sid, &text).await?;
    let read = everything_read(&fx.store, &sid, "content").await?;
    for token in &t {
        ensure!(!read.contains(token.as_str()), "a rewritten credential was stored: {read}");
    }
    let m = &fx.store.export_messages(&sid).await?[0];
    check("the placeholder is stored", m.content.as_deref().is_some_and(|c| c.contains("[REDACTED:github-token:")))?;
    let calls: serde_json::Value = serde_json::from_str(m.tool_calls.as_deref().unwrap_or_default())?;
    check("tool calls still JSON", calls.is_array())?;
    eq(
        "the metadata entry",
        fx.store.get_metadata(&sid, "k").await?.is_some_and(|v| v.starts_with("value [REDACTED:")),
        true,
    )
}

/// A tool output stored once (a body) that holds a credential is redacted
/// before it is addressed: the same output in two sessions is one body,
/// holding the redacted text.
pub async fn a_stored_once_output_is_redacted_once(fx: &Fixture) -> Result<()> {
    let store = redacting(fx).await?;
    let token = github_token(40);
    let output = format!("{}\nGITHUB_TOKEN={token}\n{}", "log line\n".repeat(600), "tail\n".repeat(100));
    let before = fx.store.health().await?.bodies;
    for _ in 0..2 {
        let sid = store.create_session("main", Path::new(ROOT)).await?;
        store.insert_tool_message_with_full(&sid, "summary", "call_1", &output).await?;
        let got = fx.store.load_all_messages(&sid).await?;
        let full = got.first().and_then(|m| m.full_content.clone()).unwrap_or_default();
        ensure!(
            !full.contains(token.as_str()) && full.contains("[REDACTED:github-token:"),
            "stored: {}",
            &full[full.len() - 200..]
        );
    }
    let after = fx.store.health().await?;
    check("the store's own check is clean", after.problems.is_empty())?;
    let once = matches!(
        fx.store.capabilities().bodies,
        koda_persistence_api::Bodies::Always | koda_persistence_api::Bodies::OptIn { stored_once: true }
    );
    if once {
        eq("one body for both sessions", after.bodies.bodies - before.bodies, 1)?;
        eq("two references to it", after.bodies.references - before.references, 2)?;
    }
    Ok(())
}

/// The first open with `redact=secrets` records the mode: a later open
/// without the parameter redacts too, with the same tag for the same
/// secret (the salt is the store's); one asking `redact=off` is
/// `InvalidInput` naming the command that changes the mode, and nothing
/// is written.
pub async fn the_mode_is_the_stores_and_a_conflicting_one_is_refused(fx: &Fixture) -> Result<()> {
    eq("a new store's mode", recorded_mode(fx.store.as_ref()).await?, RedactMode::Off)?;
    let first = redacting(fx).await?;
    eq("recorded", recorded_mode(fx.store.as_ref()).await?, RedactMode::Secrets)?;
    let second = with_redaction(fx.store.clone(), None).await?;
    let token = github_token(50);
    let (a, b) = (session(fx).await?, session(fx).await?);
    first.insert_message(&a, &Role::User, Some(&token), None, None, None).await?;
    second.insert_message(&b, &Role::User, Some(&token), None, None, None).await?;
    let (ta, tb) = (fx.store.last_user_message(&a).await?, fx.store.last_user_message(&b).await?);
    check(&format!("redacted by the second handle too: {tb}"), tb.starts_with("[REDACTED:github-token:"))?;
    eq("one secret, one tag, whichever handle wrote it", ta, tb)?;
    match with_redaction(fx.store.clone(), Some(RedactMode::Off)).await {
        Ok(_) => anyhow::bail!("redact=off opened a store whose mode is secrets"),
        Err(e) => {
            let said = format!("{e:#}");
            check(&format!("names the command: {said}"), said.contains("koda-store redact --mode"))?;
            expect_err::<()>("the refusal's kind", Err(e), is_invalid)?;
        }
    }
    eq("still recorded", recorded_mode(fx.store.as_ref()).await?, RedactMode::Secrets)?;
    record_mode(fx.store.as_ref(), RedactMode::Off).await?;
    let plain = with_redaction(fx.store.clone(), Some(RedactMode::Off)).await?;
    let c = session(fx).await?;
    plain.insert_message(&c, &Role::User, Some(&token), None, None, None).await?;
    eq("after `redact --mode off`, stored as given", fx.store.last_user_message(&c).await?, token)?;
    Ok(())
}

/// A store whose mode is `off` (the default) stores every byte as given,
/// credentials included.
pub async fn mode_off_keeps_every_byte(fx: &Fixture) -> Result<()> {
    let store = with_redaction(fx.store.clone(), None).await?;
    let sid = store.create_session("main", Path::new(ROOT)).await?;
    let pem = |edge: &str| format!("-----{edge} RSA {} KEY-----", "PRIVATE");
    let text = format!("token {} and {}\nAAAA\n{}", github_token(60), pem("BEGIN"), pem("END"));
    store.insert_message(&sid, &Role::User, Some(&text), None, None, None).await?;
    store.set_metadata(&sid, "k", &text).await?;
    eq("content", fx.store.last_user_message(&sid).await?, text.clone())?;
    eq("metadata", fx.store.get_metadata(&sid, "k").await?, Some(text))?;
    Ok(())
}
