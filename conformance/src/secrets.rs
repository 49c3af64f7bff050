//! For the encryption tests of the backends that encrypt at rest: a secret
//! planted in every free-text field, key files, and a search of raw bytes.
//! Each backend reads its own raw bytes (a file, a directory, a server's
//! columns); what is planted, and how, is the same for all.

use std::path::{Path, PathBuf};

use anyhow::Result;
use koda_persistence_api::{Persistence, Role, TODO_KEY};

/// The planted secret: no raw byte sequence of an encrypted store holds it.
pub const SECRET: &str = "AKIA-planted-secret-4711";

/// Writes a key file `name` in `dir` holding `bytes`, with `mode`.
///
/// # Errors
/// When the file cannot be written or its mode set.
pub fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(path)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// How many messages [`plant`] writes.
pub const PLANTED_MESSAGES: usize = 3;

/// How many of them a search for `planted` finds (search reads contents:
/// the user's message and the tool output).
pub const PLANTED_HITS: usize = 2;

/// The tool output [`plant`] writes (a body: stored once, by address).
pub fn planted_output() -> String {
    format!("{SECRET} {}", "x".repeat(9_000))
}

/// A new session holding [`SECRET`] in every free-text field: title, mode,
/// a user message, an assistant's tool calls, a tool output large enough
/// to be stored once (as `content` and `full_content`), a metadata value
/// and the TODO list. Returns the session id.
///
/// # Errors
/// When a write fails.
pub async fn plant(store: &dyn Persistence) -> Result<String> {
    let sid = store.create_session("main", Path::new("/p")).await?;
    store.set_session_title(&sid, SECRET).await?;
    store.set_session_mode(&sid, SECRET).await?;
    let user = format!("token {SECRET}");
    store.insert_message(&sid, &Role::User, Some(&user), None, None, None).await?;
    let calls = format!("[{{\"args\":\"{SECRET}\"}}]");
    store.insert_message(&sid, &Role::Assistant, None, Some(&calls), None, None).await?;
    let big = planted_output();
    store.insert_tool_message_with_full(&sid, &big, "c1", &big).await?;
    store.set_metadata(&sid, "env", SECRET).await?;
    store.set_metadata(&sid, TODO_KEY, SECRET).await?;
    Ok(sid)
}
