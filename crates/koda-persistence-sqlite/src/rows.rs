//! Decoding stored rows into API types; every decoding failure is `Corrupt`.

use koda_persistence_api::{Message, PersistenceError, Role, format_timestamp};
use rusqlite::Row;

/// The message columns every query selects, in [`message`]'s order.
pub(crate) const MESSAGE_COLUMNS: &str = "id, session_id, role, content, full_content, tool_calls, \
    tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, \
    thinking_tokens, created_ms, completed_ms";

fn corrupt(what: &str, e: rusqlite::Error) -> PersistenceError {
    PersistenceError::Corrupt(format!("cannot decode {what}: {e}"))
}

/// Reads column `i` of `row`, turning a type or UTF-8 mismatch into `Corrupt`.
pub(crate) fn get<T: rusqlite::types::FromSql>(
    row: &Row<'_>,
    i: usize,
    what: &str,
) -> Result<T, PersistenceError> {
    row.get(i).map_err(|e| corrupt(what, e))
}

/// A message row selected with [`MESSAGE_COLUMNS`], and whether it is complete.
pub(crate) fn message(row: &Row<'_>) -> Result<(Message, bool), PersistenceError> {
    let id: i64 = get(row, 0, "message id")?;
    let what = |col: &str| format!("{col} of message {id}");
    let role: String = get(row, 2, &what("role"))?;
    let role = Role::from_stored(&role)
        .map_err(|e| PersistenceError::Corrupt(format!("message {id}: {e}")))?;
    let created_ms: Option<i64> = get(row, 12, &what("created_ms"))?;
    let completed_ms: Option<i64> = get(row, 13, &what("completed_ms"))?;
    let message = Message {
        id,
        session_id: get(row, 1, &what("session_id"))?,
        role,
        content: get(row, 3, &what("content"))?,
        full_content: get(row, 4, &what("full_content"))?,
        tool_calls: get(row, 5, &what("tool_calls"))?,
        tool_call_id: get(row, 6, &what("tool_call_id"))?,
        prompt_tokens: get(row, 7, &what("prompt_tokens"))?,
        completion_tokens: get(row, 8, &what("completion_tokens"))?,
        cache_read_tokens: get(row, 9, &what("cache_read_tokens"))?,
        cache_creation_tokens: get(row, 10, &what("cache_creation_tokens"))?,
        thinking_tokens: get(row, 11, &what("thinking_tokens"))?,
        created_at: Some(format_timestamp(created_ms.unwrap_or(0))),
    };
    Ok((message, completed_ms.is_some()))
}
