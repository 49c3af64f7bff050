//! Forking a session at a message ([`Fork::fork_session`]):
//! which messages a fork copies, and the fork's own session record.

use anyhow::Result;
use std::collections::BTreeSet;

use crate::context::named_tool_call_ids;
use crate::error::PersistenceError;
use crate::records::{MessageRecord, SessionRecord};
use crate::types::Role;

/// Forking a session: a new session that starts as a copy of another's
/// history up to a message.
#[async_trait::async_trait]
pub trait Fork: Send + Sync {
    /// Forks the session at message `at` (all of it when `None`) and
    /// returns the new session's id. The fork is a new session (a fresh
    /// UUID v7, created now, never accessed) with the same agent, root and
    /// mode, the title suffixed (see [`fork_title`]),
    /// the same metadata, and copies of the messages up to and including
    /// `at` in conversation order, with their roles, text, calls, states
    /// (complete, compacted), times, agents and usage, under fresh ids; if
    /// `at` cuts between a tool call and its result, the fork ends before
    /// the call ([`fork_len`]). Its `SessionInfo`
    /// counts its own messages and tokens. One atomic step; bodies are
    /// shared (one more reference each), not copied.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session; `MessageNotFound` when
    /// `at` is not one of its messages. Nothing is written on error.
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String>;
}

/// How many of `messages` (one session's, in conversation order) a fork
/// at `at` copies: every message up to and including the one with id
/// `at` (all of them when `None`), then, while that prefix ends inside a
/// tool call, fewer: a prefix holding an assistant message with a call
/// whose result is not in the prefix ends before that message (so a fork
/// never starts with a call it cannot answer, nor a result without its
/// call).
///
/// # Errors
/// `MessageNotFound` when `at` is not a message of the session.
pub fn fork_len(messages: &[MessageRecord], at: Option<i64>) -> Result<usize, PersistenceError> {
    let mut n = match at {
        None => messages.len(),
        Some(id) => messages.iter().position(|m| m.id == id).ok_or(PersistenceError::MessageNotFound(id))? + 1,
    };
    loop {
        let answered: BTreeSet<&str> =
            messages[..n].iter().filter(|m| m.role == Role::Tool).filter_map(|m| m.tool_call_id.as_deref()).collect();
        let open = messages[..n].iter().rposition(|m| {
            m.role == Role::Assistant
                && m.tool_calls
                    .as_deref()
                    .is_some_and(|calls| named_tool_call_ids(calls).iter().any(|id| !answered.contains(id.as_str())))
        });
        match open {
            Some(i) if i < n => n = i,
            _ => return Ok(n),
        }
    }
}

/// The title of a fork of a session titled `title`.
pub fn fork_title(title: Option<&str>) -> String {
    match title {
        Some(t) => format!("{t} (fork)"),
        None => "(fork)".to_owned(),
    }
}

/// The session record of a fork of `original`: id `id`, created `now`,
/// never accessed, the same agent, root and mode, the title suffixed.
pub fn fork_record(original: &SessionRecord, id: &str, now: i64) -> SessionRecord {
    SessionRecord {
        id: id.to_owned(),
        agent_name: original.agent_name.clone(),
        project_root: original.project_root.clone(),
        created_ms: now,
        last_accessed_ms: None,
        title: Some(fork_title(original.title.as_deref())),
        mode: original.mode.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: i64, role: Role, calls: Option<&str>, answers: Option<&str>) -> MessageRecord {
        MessageRecord {
            tool_calls: calls.map(str::to_owned),
            tool_call_id: answers.map(str::to_owned),
            ..MessageRecord::bare(id, role, 0)
        }
    }

    #[test]
    fn a_cut_inside_a_tool_call_ends_before_the_call() {
        let calls = r#"[{"id":"a"},{"id":"b"}]"#;
        let ms = [
            m(1, Role::User, None, None),
            m(2, Role::Assistant, Some(calls), None),
            m(3, Role::Tool, None, Some("a")),
            m(4, Role::Tool, None, Some("b")),
            m(5, Role::User, None, None),
        ];
        assert_eq!(fork_len(&ms, None), Ok(5));
        assert_eq!(fork_len(&ms, Some(5)), Ok(5));
        assert_eq!(fork_len(&ms, Some(4)), Ok(4));
        assert_eq!(fork_len(&ms, Some(3)), Ok(1), "b unanswered: before the call");
        assert_eq!(fork_len(&ms, Some(2)), Ok(1));
        assert_eq!(fork_len(&ms, Some(1)), Ok(1));
        assert_eq!(fork_len(&ms, Some(9)), Err(PersistenceError::MessageNotFound(9)));
        assert_eq!(fork_len(&[], None), Ok(0));
    }
}
