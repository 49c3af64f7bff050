//! The argument checks of the contract, written once. The [`Checked`](crate::Checked)
//! layer runs them before a call reaches a backend; import paths and
//! backends call the few that need stored state (an id sequence) themselves.
//!
//! This module imports no trait: every capability module and every layer
//! may use it.

use std::path::Path;

use crate::clock::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::error::PersistenceError;
use crate::records::{MAX_SESSION_ID_BYTES, MessageRecord, SessionRecord};
use crate::types::TokenUsage;

/// `SessionNotFound` for `id`: the answer every backend gives a write to a
/// session it does not hold.
pub fn session_not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

/// `MessageNotFound` for `id`.
pub fn message_not_found(id: i64) -> anyhow::Error {
    PersistenceError::MessageNotFound(id).into()
}

/// Checks a `limit` argument: negative is [`PersistenceError::InvalidInput`];
/// any other value is returned as a `usize` bound (saturating), never to be
/// used as a capacity.
///
/// # Errors
/// [`PersistenceError::InvalidInput`] when `limit < 0`.
pub fn check_limit(limit: i64) -> Result<usize, PersistenceError> {
    if limit < 0 {
        return Err(PersistenceError::InvalidInput(format!("limit must not be negative, got {limit}")));
    }
    Ok(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// A `limit` as the bound a store applies: the value itself (saturating
/// at `usize::MAX`, never to be used as a capacity), and 0 for a negative
/// one, which [`Checked`](crate::Checked) refuses before any store sees it.
pub fn limit_bound(limit: i64) -> usize {
    usize::try_from(limit).unwrap_or(if limit < 0 { 0 } else { usize::MAX })
}

/// Checks that no counter of `usage` is negative.
///
/// # Errors
/// [`PersistenceError::InvalidInput`] naming the first negative counter.
pub fn check_usage(usage: Option<&TokenUsage>) -> Result<(), PersistenceError> {
    let Some(u) = usage else { return Ok(()) };
    let fields = [
        ("prompt_tokens", u.prompt_tokens),
        ("completion_tokens", u.completion_tokens),
        ("cache_read_tokens", u.cache_read_tokens),
        ("cache_creation_tokens", u.cache_creation_tokens),
        ("thinking_tokens", u.thinking_tokens),
    ];
    match fields.iter().find(|(_, v)| *v < 0) {
        Some((name, v)) => {
            Err(PersistenceError::InvalidInput(format!("token counter {name} must not be negative, got {v}")))
        }
        None => Ok(()),
    }
}

/// The project root as the exact string that identifies it (its bytes, no
/// normalisation: `/a/b` and `/a/b/` differ, the empty path is a root).
///
/// # Errors
/// [`PersistenceError::InvalidInput`] when the path is not valid UTF-8.
pub fn root_to_str(root: &Path) -> Result<&str, PersistenceError> {
    root.as_os_str()
        .to_str()
        .ok_or_else(|| PersistenceError::InvalidInput(format!("project root is not valid UTF-8: {}", root.display())))
}

fn invalid(what: String) -> PersistenceError {
    PersistenceError::InvalidInput(what)
}

pub(crate) fn check_time(what: &str, ms: i64) -> Result<(), PersistenceError> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(())
    } else {
        Err(invalid(format!("{what} {ms} is outside {MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS} ms")))
    }
}

/// Checks a session id an importer supplies.
///
/// # Errors
/// `InvalidInput` for an empty id, a NUL byte, or more than
/// [`MAX_SESSION_ID_BYTES`] bytes.
pub fn check_session_id(id: &str) -> Result<(), PersistenceError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || id.contains('\0') {
        return Err(invalid(format!(
            "a session id has 1 to {MAX_SESSION_ID_BYTES} bytes and no NUL; got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

/// Checks a session record before [`Transfer::import_session`](crate::Transfer::import_session) writes it.
///
/// # Errors
/// `InvalidInput` naming the bad field.
pub fn check_session_record(s: &SessionRecord) -> Result<(), PersistenceError> {
    check_session_id(&s.id)?;
    check_time("created_ms", s.created_ms)?;
    if let Some(at) = s.last_accessed_ms {
        check_time("last_accessed_ms", at)?;
    }
    Ok(())
}

/// Checks message records before [`Transfer::import_messages`](crate::Transfer::import_messages) writes them.
///
/// # Errors
/// `InvalidInput` naming the message and field.
pub fn check_message_records(messages: &[MessageRecord]) -> Result<(), PersistenceError> {
    for m in messages {
        let at = |what: &str| format!("message {}: {what}", m.id);
        if m.id < 1 {
            return Err(invalid(format!("message id must be positive, got {}", m.id)));
        }
        check_time(&at("created_ms"), m.created_ms)?;
        for (what, t) in [("completed_ms", m.completed_ms), ("compacted_ms", m.compacted_ms)] {
            if let Some(t) = t {
                check_time(&at(what), t)?;
            }
        }
        if let Some(v) = m.counters().into_iter().flatten().find(|v| *v < 0) {
            return Err(invalid(format!("{} must not be negative, got {v}", at("a token counter"))));
        }
    }
    Ok(())
}

/// Checks a range for [`Transfer::claim_ids`](crate::Transfer::claim_ids).
///
/// # Errors
/// `InvalidInput` unless `1 <= first <= last`.
pub fn check_claim(first: i64, last: i64) -> Result<(), PersistenceError> {
    if first < 1 || first > last {
        return Err(invalid(format!("an id claim needs 1 <= first <= last, got {first}..={last}")));
    }
    Ok(())
}

/// The ids `import_messages` gives: the recorded ones with `keep_ids`,
/// else fresh ones counted on from `next`. Returns them and the store's
/// next fresh id.
///
/// # Errors
/// With `keep_ids`: `InvalidInput` for an id the store has not handed out
/// or granted (`>= next`) and for an id given twice.
pub fn assign_ids(messages: &[MessageRecord], keep_ids: bool, next: i64) -> Result<(Vec<i64>, i64), PersistenceError> {
    if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        check_kept(&ids, next.saturating_sub(1))?;
        Ok((ids, next))
    } else {
        let ids: Vec<i64> =
            (0..messages.len()).map(|i| next.saturating_add(i64::try_from(i).unwrap_or(i64::MAX))).collect();
        let after = ids.last().map_or(next, |l| l.saturating_add(1));
        Ok((ids, after))
    }
}

/// Checks ids to be kept against the store's sequence `position` (the last
/// id handed out or granted).
///
/// # Errors
/// `InvalidInput` for an id past `position` (claim it first) and for an id
/// given twice.
pub fn check_kept(ids: &[i64], position: i64) -> Result<(), PersistenceError> {
    if let Some(id) = ids.iter().find(|id| **id > position) {
        return Err(invalid(format!("message id {id} is past this store's id sequence ({position}); claim_ids first")));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(id) = ids.iter().find(|id| !seen.insert(**id)) {
        return Err(invalid(format!("message id {id} is given twice")));
    }
    Ok(())
}

/// `Conflict` for a kept id that is taken.
pub fn id_taken(id: i64) -> PersistenceError {
    PersistenceError::Conflict(format!("message id {id} is taken in this store; import without keeping ids"))
}

/// Whether some store could hold a session with this id: only ids
/// [`check_session_id`] accepts are ever created or imported, so any other
/// (empty, longer than [`MAX_SESSION_ID_BYTES`], or holding NUL) names no
/// session, and [`Checked`](crate::Checked) answers for it as for an unknown session
/// without asking the store (which may not even be able to look it up:
/// PostgreSQL text cannot hold NUL).
pub(crate) fn holdable(id: &str) -> bool {
    check_session_id(id).is_ok()
}
