//! Rows as callers see them: a stored message's public shape, and sums
//! clamped into `i64`.

use koda_persistence_api::{Message, Role};

pub(crate) fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn new_message(session_id: &str, role: Role) -> Message {
    Message::bare(0, session_id, role, None)
}
