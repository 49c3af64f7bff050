//! Store-wide settings (the Settings capability): set, read, overwritten
//! and removed as given, apart from every session, refused outside their
//! rules with nothing written.

use anyhow::Result;
use koda_persistence_api::settings::{MAX_SETTING_KEY_BYTES, MAX_SETTING_VALUE_BYTES};

use super::{eq, expect_err, is_invalid, session, user};
use crate::Fixture;

/// An unset key is `None`; a value reads back byte for byte, is replaced
/// by the next, and is gone once removed; keys are independent.
pub async fn settings_read_back_what_was_set(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    eq("unset", s.get_setting("redact.mode").await?, None)?;
    s.set_setting("redact.mode", Some("secrets")).await?;
    s.set_setting("a-b_c.9", Some("ünïcödé\nlines\ttabs \"quotes\" 测试")).await?;
    eq("set", s.get_setting("redact.mode").await?.as_deref(), Some("secrets"))?;
    eq("another key", s.get_setting("a-b_c.9").await?.as_deref(), Some("ünïcödé\nlines\ttabs \"quotes\" 测试"))?;
    s.set_setting("redact.mode", Some("off")).await?;
    eq("replaced", s.get_setting("redact.mode").await?.as_deref(), Some("off"))?;
    s.set_setting("redact.mode", None).await?;
    eq("removed", s.get_setting("redact.mode").await?, None)?;
    s.set_setting("redact.mode", None).await?;
    eq("removing twice is no error", s.get_setting("redact.mode").await?, None)?;
    eq("the other key stays", s.get_setting("a-b_c.9").await?.is_some(), true)?;
    s.set_setting("empty", Some("")).await?;
    eq("an empty value is a value", s.get_setting("empty").await?.as_deref(), Some(""))?;
    let big = "x".repeat(MAX_SETTING_VALUE_BYTES);
    s.set_setting("big", Some(&big)).await?;
    eq("the longest value", s.get_setting("big").await?.map(|v| v.len()), Some(MAX_SETTING_VALUE_BYTES))?;
    Ok(())
}

/// Settings are not part of any session: creating, deleting and exporting
/// sessions neither reads nor changes them, and a store holding only
/// settings exports no session.
pub async fn settings_stand_apart_from_sessions(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    s.set_setting("redact.salt", Some("00ff")).await?;
    eq("no session to export", s.export_session_ids().await?, Vec::<String>::new())?;
    let sid = session(fx).await?;
    user(fx, &sid, "hello").await?;
    s.set_metadata(&sid, "redact.salt", "a session's metadata").await?;
    s.delete_session(&sid).await?;
    eq("kept across a delete", s.get_setting("redact.salt").await?.as_deref(), Some("00ff"))?;
    eq("metadata of the same name is another thing", s.get_metadata(&sid, "redact.salt").await?, None)?;
    Ok(())
}

/// A key outside 1 to 128 bytes of `a-z 0-9 . _ -`, a value with NUL or
/// over the limit: `InvalidInput`, nothing written.
pub async fn bad_setting_keys_and_values_are_invalid(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let long = "k".repeat(MAX_SETTING_KEY_BYTES + 1);
    for key in ["", "Upper", "with space", "nul\0", "ünï", "slash/", long.as_str()] {
        expect_err(&format!("get {key:?}"), s.get_setting(key).await, is_invalid)?;
        expect_err(&format!("set {key:?}"), s.set_setting(key, Some("v")).await, is_invalid)?;
    }
    let longest = "k".repeat(MAX_SETTING_KEY_BYTES);
    s.set_setting(&longest, Some("v")).await?;
    eq("the longest key", s.get_setting(&longest).await?.as_deref(), Some("v"))?;
    expect_err("a value with NUL", s.set_setting("k", Some("a\0b")).await, is_invalid)?;
    let over = "x".repeat(MAX_SETTING_VALUE_BYTES + 1);
    expect_err("a value over the limit", s.set_setting("k", Some(&over)).await, is_invalid)?;
    eq("nothing written", s.get_setting("k").await?, None)?;
    Ok(())
}
