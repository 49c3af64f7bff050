//! Decoding stored rows into API types; every decoding failure is `Corrupt`.

use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::{Message, MessageRecord, PersistenceError, Role};
use rusqlite::Row;

/// `$field` as a read selects it: the body's packed bytes (a BLOB; an
/// empty one when the body is missing, which decodes as `Corrupt`) when
/// the field is held as a body, else its text.
macro_rules! field_or_body {
    ($field:literal) => {
        concat!(
            "CASE WHEN ",
            $field,
            "_body IS NULL THEN ",
            $field,
            " ELSE COALESCE((SELECT b.data FROM kp_bodies b WHERE b.hash = ",
            $field,
            "_body), x'') END"
        )
    };
}

/// The message columns every query selects, in [`message`]'s order
/// (each text field as `field_or_body!` selects it).
pub(crate) const MESSAGE_COLUMNS: &str = concat!(
    "id, session_id, role, ",
    field_or_body!("content"),
    ", ",
    field_or_body!("full_content"),
    ", ",
    field_or_body!("tool_calls"),
    ", tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, \
    thinking_tokens, created_ms, completed_ms"
);

/// `content` as [`MESSAGE_COLUMNS`] selects it (decode with [`text`]).
pub(crate) const CONTENT: &str = field_or_body!("content");

/// `full_content` as [`MESSAGE_COLUMNS`] selects it (decode with [`text`]).
pub(crate) const FULL_CONTENT: &str = field_or_body!("full_content");

/// Column `i` of `row`, selected as [`CONTENT`] selects a field, through
/// [`text`].
pub(crate) fn text_at(row: &Row<'_>, i: usize, what: &str) -> Result<Option<String>, PersistenceError> {
    let value = row.get_ref(i).map_err(|e| corrupt(what, e))?;
    text(value, &|| what.to_owned())
}

/// A text field selected as [`MESSAGE_COLUMNS`] selects it: inline text,
/// or a body's packed bytes, unpacked.
pub(crate) fn text(
    value: rusqlite::types::ValueRef<'_>,
    what: &dyn Fn() -> String,
) -> Result<Option<String>, PersistenceError> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(data) => koda_persistence_api::bodies::unpack(data)
            .map(Some)
            .map_err(|e| PersistenceError::Corrupt(format!("{}: {}", what(), e.reason()))),
        other => other
            .as_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|e| PersistenceError::Corrupt(format!("cannot decode {}: {e}", what()))),
    }
}

fn corrupt(what: &str, e: rusqlite::Error) -> PersistenceError {
    PersistenceError::Corrupt(format!("cannot decode {what}: {e}"))
}

/// Reads column `i` of `row`, turning a type or UTF-8 mismatch into `Corrupt`.
pub(crate) fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, i: usize, what: &str) -> Result<T, PersistenceError> {
    row.get(i).map_err(|e| corrupt(what, e))
}

/// The message columns, by index, for error messages.
const COLUMN_NAMES: [&str; 14] = [
    "id",
    "session_id",
    "role",
    "content",
    "full_content",
    "tool_calls",
    "tool_call_id",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "thinking_tokens",
    "created_ms",
    "completed_ms",
];

/// A message row selected with [`MESSAGE_COLUMNS`], and whether it is complete.
pub(crate) fn message(row: &Row<'_>) -> Result<(Message, bool), PersistenceError> {
    let id: i64 = get(row, 0, "message id")?;
    // Names the column only when decoding fails: this runs for every row.
    let col = |i: usize| -> Result<_, PersistenceError> {
        row.get_ref(i)
            .map_err(|e| corrupt(&format!("{} of message {id}", COLUMN_NAMES.get(i).unwrap_or(&"a column")), e))
    };
    let typed = |i: usize, e: rusqlite::types::FromSqlError| {
        PersistenceError::Corrupt(format!(
            "cannot decode {} of message {id}: {e}",
            COLUMN_NAMES.get(i).unwrap_or(&"a column")
        ))
    };
    let text = |i: usize| -> Result<Option<String>, PersistenceError> {
        text(col(i)?, &|| format!("{} of message {id}", COLUMN_NAMES.get(i).unwrap_or(&"a column")))
    };
    let int = |i: usize| -> Result<Option<i64>, PersistenceError> { col(i)?.as_i64_or_null().map_err(|e| typed(i, e)) };
    let role = col(2)?.as_str().map_err(|e| typed(2, e))?;
    let role = Role::from_stored(role).map_err(|e| PersistenceError::Corrupt(format!("message {id}: {e}")))?;
    let message = Message {
        id,
        session_id: col(1)?.as_str().map_err(|e| typed(1, e))?.to_owned(),
        role,
        content: text(3)?,
        full_content: text(4)?,
        tool_calls: text(5)?,
        tool_call_id: text(6)?,
        prompt_tokens: int(7)?,
        completion_tokens: int(8)?,
        cache_read_tokens: int(9)?,
        cache_creation_tokens: int(10)?,
        thinking_tokens: int(11)?,
        created_at: Some(format_timestamp(int(12)?.unwrap_or(0))),
    };
    Ok((message, int(13)?.is_some()))
}

/// A message row selected with [`MESSAGE_COLUMNS`] followed by
/// `agent_name, compacted_ms`, as an export record.
pub(crate) fn record(row: &Row<'_>) -> Result<MessageRecord, PersistenceError> {
    let (m, _) = message(row)?;
    let id = m.id;
    // Column names only: the id is added to an error, never formatted for
    // a row that decodes.
    let extra = || -> Result<_, PersistenceError> {
        Ok((
            get::<Option<i64>>(row, 12, "created_ms")?.unwrap_or(0),
            get(row, 13, "completed_ms")?,
            get(row, 14, "agent_name")?,
            get(row, 15, "compacted_ms")?,
        ))
    };
    let (created, completed, agent, compacted) = extra().map_err(|e| match e {
        PersistenceError::Corrupt(why) => PersistenceError::Corrupt(format!("message {id}: {why}")),
        other => other,
    })?;
    Ok(MessageRecord::from_message(m, agent, created, completed, compacted))
}
