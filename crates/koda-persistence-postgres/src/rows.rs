//! Decoding rows: every column read checked (a value of the wrong type,
//! a NULL where none may be, or bytes that are not UTF-8 are `Corrupt`,
//! naming the column and the message), and strings to the `BYTEA` they
//! travel as.

use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::{Message, PersistenceError, Role};
use postgres_types::FromSql;
use tokio_postgres::Row;

pub(crate) fn as_bytes(s: &str) -> &[u8] {
    s.as_bytes()
}

pub(crate) fn opt_bytes(s: &Option<String>) -> Option<&[u8]> {
    s.as_deref().map(str::as_bytes)
}

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize, what: &str) -> Result<T, PersistenceError> {
    row.try_get(i).map_err(|e| PersistenceError::Corrupt(format!("cannot decode {what}: {e}")))
}

pub(crate) fn string(row: &Row, i: usize, what: &str) -> Result<Option<String>, PersistenceError> {
    get::<Option<Vec<u8>>>(row, i, what)?
        .map(|b| String::from_utf8(b).map_err(|e| PersistenceError::Corrupt(format!("{what} is not UTF-8: {e}"))))
        .transpose()
}

pub(crate) fn required_string(row: &Row, i: usize, what: &str) -> Result<String, PersistenceError> {
    string(row, i, what)?.ok_or_else(|| PersistenceError::Corrupt(format!("{what} is NULL")))
}

pub(crate) fn role(row: &Row, i: usize, what: &str) -> Result<Role, PersistenceError> {
    get::<&str>(row, i, what)?.parse().map_err(|e| PersistenceError::Corrupt(format!("{what}: {e}")))
}

/// `$field` as a read selects it: `0x00` and the inline bytes, or `0x01`
/// and the body's packed bytes (nothing after the `0x01` when the body is
/// missing, which decodes as `Corrupt`); NULL for NULL. Decode with
/// [`body_string`].
macro_rules! field_or_body {
    ($field:literal) => {
        concat!(
            "CASE WHEN ",
            $field,
            "_body IS NULL THEN '\\x00'::BYTEA || ",
            $field,
            " ELSE '\\x01'::BYTEA || COALESCE((SELECT b.data FROM kp.bodies b WHERE b.hash = ",
            $field,
            "_body), ''::BYTEA) END"
        )
    };
}

/// The columns [`message`] decodes, in its order.
pub(crate) const MESSAGE_COLUMNS: &str = concat!(
    "id, session_id, role::TEXT, ",
    field_or_body!("content"),
    ", ",
    field_or_body!("full_content"),
    ", ",
    field_or_body!("tool_calls"),
    ", tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens, \
    cache_creation_tokens, thinking_tokens, created_ms, completed_ms"
);

/// `content` as [`MESSAGE_COLUMNS`] selects it.
pub(crate) const CONTENT: &str = field_or_body!("content");

/// `full_content` as [`MESSAGE_COLUMNS`] selects it.
pub(crate) const FULL_CONTENT: &str = field_or_body!("full_content");

/// A field selected by `field_or_body!`: its inline text or its body's.
pub(crate) fn body_string(row: &Row, i: usize, what: &str) -> Result<Option<String>, PersistenceError> {
    let Some(mut bytes) = get::<Option<Vec<u8>>>(row, i, what)? else {
        return Ok(None);
    };
    match bytes.first() {
        Some(0) => {
            bytes.remove(0);
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|e| PersistenceError::Corrupt(format!("{what} is not UTF-8: {e}")))
        }
        Some(1) => koda_persistence_api::bodies::unpack(&bytes[1..])
            .map(Some)
            .map_err(|e| PersistenceError::Corrupt(format!("{what}: {}", e.reason()))),
        _ => Err(PersistenceError::Corrupt(format!("{what}: neither inline nor a body"))),
    }
}

pub(crate) fn message(row: &Row) -> Result<(Message, bool), PersistenceError> {
    let id: i64 = get(row, 0, "message id")?;
    // Column names only: the message id is added to an error, never
    // formatted for a row that decodes (a context load decodes thousands).
    decode_message(row, id).map_err(in_message(id))
}

/// Names message `id` in a decoding error (`Corrupt`); others pass.
pub(crate) fn in_message(id: i64) -> impl Fn(PersistenceError) -> PersistenceError {
    move |e| match e {
        PersistenceError::Corrupt(why) => PersistenceError::Corrupt(format!("message {id}: {why}")),
        other => other,
    }
}

pub(crate) fn decode_message(row: &Row, id: i64) -> Result<(Message, bool), PersistenceError> {
    let created: i64 = get(row, 12, "created_ms")?;
    let completed: Option<i64> = get(row, 13, "completed_ms")?;
    Ok((
        Message {
            id,
            session_id: get(row, 1, "session_id")?,
            role: role(row, 2, "role")?,
            content: body_string(row, 3, "content")?,
            full_content: body_string(row, 4, "full_content")?,
            tool_calls: body_string(row, 5, "tool_calls")?,
            tool_call_id: string(row, 6, "tool_call_id")?,
            prompt_tokens: get(row, 7, "prompt_tokens")?,
            completion_tokens: get(row, 8, "completion_tokens")?,
            cache_read_tokens: get(row, 9, "cache_read_tokens")?,
            cache_creation_tokens: get(row, 10, "cache_creation_tokens")?,
            thinking_tokens: get(row, 11, "thinking_tokens")?,
            created_at: Some(format_timestamp(created)),
        },
        completed.is_some(),
    ))
}
