//! The pure passes behind [`load_context`](crate::Persistence::load_context),
//! and interruption detection. Every backend loads the active rows of a session
//! in conversation order and hands them to [`apply_context_passes`].

use std::collections::HashSet;

use crate::types::{INTERRUPTION_PREVIEW_CHARS, InterruptionKind, Message, Role};

/// One active message as loaded for `load_context`, with whether it is complete
/// (`mark_message_complete` was called, or it was born complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRow {
    /// The message as stored.
    pub message: Message,
    /// Whether the message is complete.
    pub complete: bool,
}

/// `true` when `text` is empty or only Unicode white space.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(char::is_whitespace)
}

/// The tool-call ids an assistant's `tool_calls` JSON names: the string `id`
/// of each object in a JSON array. Unparseable JSON, a non-array, and objects
/// without a string `id` name nothing. Duplicates are kept; callers use sets.
pub fn named_tool_call_ids(tool_calls: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(tool_calls) {
        Ok(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.get("id")?.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Pass 1: drops assistant messages that are not complete.
pub fn drop_incomplete_assistants(rows: Vec<ContextRow>) -> Vec<Message> {
    rows.into_iter()
        .filter(|r| r.complete || r.message.role != Role::Assistant)
        .map(|r| r.message)
        .collect()
}

/// Pass 2: tool-call pairing. Drops every assistant message that names an id
/// with no tool message answering it, then every tool message whose
/// `tool_call_id` is `None` or named by no remaining assistant message.
/// Afterwards every named call has a result and every result a call.
pub fn pair_tool_calls(messages: Vec<Message>) -> Vec<Message> {
    let answered: HashSet<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    let keep_assistant: Vec<bool> = messages
        .iter()
        .map(|m| {
            m.role != Role::Assistant
                || m.tool_calls.as_deref().is_none_or(|tc| {
                    named_tool_call_ids(tc)
                        .iter()
                        .all(|id| answered.contains(id.as_str()))
                })
        })
        .collect();
    let named: HashSet<String> = messages
        .iter()
        .zip(&keep_assistant)
        .filter(|(m, keep)| **keep && m.role == Role::Assistant)
        .filter_map(|(m, _)| m.tool_calls.as_deref())
        .flat_map(named_tool_call_ids)
        .collect();
    messages
        .into_iter()
        .zip(keep_assistant)
        .filter(|(m, keep)| match m.role {
            Role::Assistant => *keep,
            Role::Tool => m
                .tool_call_id
                .as_deref()
                .is_some_and(|id| named.contains(id)),
            Role::System | Role::User => true,
        })
        .map(|(m, _)| m)
        .collect()
}

/// Pass 3: drops assistant messages without tool calls whose content is
/// `None` or only white space.
pub fn drop_empty_assistants(messages: Vec<Message>) -> Vec<Message> {
    messages
        .into_iter()
        .filter(|m| {
            m.role != Role::Assistant
                || m.tool_calls.is_some()
                || m.content.as_deref().is_some_and(|c| !is_blank(c))
        })
        .collect()
}

/// The three passes of `load_context`, in order, over the active messages of
/// a session in conversation order.
pub fn apply_context_passes(rows: Vec<ContextRow>) -> Vec<Message> {
    drop_empty_assistants(pair_tool_calls(drop_incomplete_assistants(rows)))
}

/// Inspects the tail of a history: if the last non-system message is a user
/// message, the prompt was never answered ([`InterruptionKind::Prompt`] with
/// its first 80 characters); if it is a tool message, the assistant never saw
/// the result ([`InterruptionKind::Tool`]); otherwise `None`.
pub fn detect_interruption(messages: &[Message]) -> Option<InterruptionKind> {
    let last = messages.iter().rev().find(|m| m.role != Role::System)?;
    match last.role {
        Role::User => Some(InterruptionKind::Prompt(
            last.content
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(INTERRUPTION_PREVIEW_CHARS)
                .collect(),
        )),
        Role::Tool => Some(InterruptionKind::Tool),
        Role::System | Role::Assistant => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64, role: Role) -> Message {
        Message {
            id,
            session_id: "s".into(),
            role,
            content: Some(format!("m{id}")),
            full_content: None,
            tool_calls: None,
            tool_call_id: None,
            prompt_tokens: None,
            completion_tokens: None,
            cache_read_tokens: None,
            cache_creation_tokens: None,
            thinking_tokens: None,
            created_at: None,
        }
    }

    fn calls(id: i64, json: &str) -> Message {
        Message {
            tool_calls: Some(json.into()),
            ..msg(id, Role::Assistant)
        }
    }

    fn result(id: i64, call: &str) -> Message {
        Message {
            tool_call_id: Some(call.into()),
            ..msg(id, Role::Tool)
        }
    }

    fn ids(ms: &[Message]) -> Vec<i64> {
        ms.iter().map(|m| m.id).collect()
    }

    #[test]
    fn named_ids_only_from_arrays_of_objects_with_string_ids() {
        assert_eq!(
            named_tool_call_ids(r#"[{"id":"a"},{"id":"b"},{"id":"a"}]"#),
            ["a", "b", "a"]
        );
        assert!(named_tool_call_ids(r#"{"id":"a"}"#).is_empty());
        assert!(named_tool_call_ids("not json").is_empty());
        assert_eq!(
            named_tool_call_ids(r#"[{"id":1},{"x":"y"},"id",{"id":"c"}]"#),
            ["c"]
        );
    }

    #[test]
    fn incomplete_assistants_are_dropped_other_roles_kept() {
        let rows = vec![
            ContextRow {
                message: msg(1, Role::User),
                complete: false,
            },
            ContextRow {
                message: msg(2, Role::Assistant),
                complete: false,
            },
            ContextRow {
                message: msg(3, Role::Assistant),
                complete: true,
            },
            ContextRow {
                message: msg(4, Role::Tool),
                complete: false,
            },
        ];
        assert_eq!(ids(&drop_incomplete_assistants(rows)), [1, 3, 4]);
    }

    #[test]
    fn pairing_drops_unanswered_calls_and_their_other_results() {
        let ms = vec![
            msg(1, Role::User),
            calls(2, r#"[{"id":"a"},{"id":"b"}]"#),
            result(3, "a"),
            calls(4, r#"[{"id":"c"}]"#),
            result(5, "c"),
            result(6, "orphan"),
            Message {
                tool_call_id: None,
                ..msg(7, Role::Tool)
            },
            calls(8, "garbage"),
        ];
        assert_eq!(ids(&pair_tool_calls(ms)), [1, 4, 5, 8]);
    }

    #[test]
    fn blank_assistants_without_calls_are_dropped() {
        let ms = vec![
            Message {
                content: None,
                ..msg(1, Role::Assistant)
            },
            Message {
                content: Some(" \n\t".into()),
                ..msg(2, Role::Assistant)
            },
            Message {
                content: None,
                ..calls(3, "[]")
            },
            Message {
                content: Some("".into()),
                ..msg(4, Role::User)
            },
            Message {
                content: Some("\0".into()),
                ..msg(5, Role::Assistant)
            },
        ];
        assert_eq!(ids(&drop_empty_assistants(ms)), [3, 4, 5]);
    }

    #[test]
    fn interruption_reads_last_non_system_message() {
        let long = "é".repeat(100);
        let user = Message {
            content: Some(long),
            ..msg(1, Role::User)
        };
        let got = detect_interruption(&[user.clone(), msg(2, Role::System)]);
        assert_eq!(got, Some(InterruptionKind::Prompt("é".repeat(80))));
        assert_eq!(
            detect_interruption(&[user.clone(), msg(3, Role::Tool)]),
            Some(InterruptionKind::Tool)
        );
        assert_eq!(detect_interruption(&[user, msg(4, Role::Assistant)]), None);
        assert_eq!(detect_interruption(&[msg(5, Role::System)]), None);
        assert_eq!(detect_interruption(&[]), None);
        let none = Message {
            content: None,
            ..msg(6, Role::User)
        };
        assert_eq!(
            detect_interruption(&[none]),
            Some(InterruptionKind::Prompt(String::new()))
        );
    }
}
