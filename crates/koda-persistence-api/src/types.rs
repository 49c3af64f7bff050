//! The plain data types that cross the [`Persistence`](crate::Persistence) trait.

use std::fmt;
use std::str::FromStr;

use crate::error::PersistenceError;

/// Text of the assistant message that [`compact_session`](crate::Persistence::compact_session)
/// places after the summary, so the model knows earlier turns were compacted.
pub const COMPACTION_HINT: &str = "[The conversation context was compacted: earlier messages \
were replaced by the summary above. Continue from the preserved messages below.]";

/// The metadata key under which [`set_todo`](crate::Persistence::set_todo) stores the TODO list.
pub const TODO_KEY: &str = "todo";

/// How many characters of an unanswered prompt [`InterruptionKind::Prompt`] keeps.
pub const INTERRUPTION_PREVIEW_CHARS: usize = 80;

/// Message roles in the conversation. Serialized as [`Role::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt (and compaction summaries).
    System,
    /// User message.
    User,
    /// Assistant (LLM) response.
    Assistant,
    /// Tool result.
    Tool,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    /// String representation for database storage: `system`, `user`, `assistant`, `tool`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Parses a stored role; anything but the four names is
    /// [`PersistenceError::Corrupt`], never silently read as `user`.
    ///
    /// # Errors
    /// [`PersistenceError::Corrupt`] naming the unknown role.
    pub fn from_stored(s: &str) -> Result<Self, PersistenceError> {
        s.parse().map_err(|e: String| PersistenceError::Corrupt(format!("stored message has {e}")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            "tool" => Ok(Self::Tool),
            other => Err(format!("unknown role: {other:?}")),
        }
    }
}

/// Token counts reported by the model provider for one call.
///
/// All five counters are `i64`; a negative counter is rejected by every
/// inserting method with [`PersistenceError::InvalidInput`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    /// Input tokens.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Cached input tokens read.
    pub cache_read_tokens: i64,
    /// Tokens written to the cache.
    pub cache_creation_tokens: i64,
    /// Reasoning/thinking tokens.
    pub thinking_tokens: i64,
}

/// A stored message row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Store-wide message id (increasing, never reused).
    pub id: i64,
    /// Session this message belongs to.
    pub session_id: String,
    /// Message role (system, user, assistant, tool).
    pub role: Role,
    /// Text content (may be a summary for long tool results).
    pub content: Option<String>,
    /// Full untruncated output (only set by `insert_tool_message_with_full`).
    pub full_content: Option<String>,
    /// Serialized tool calls JSON, stored verbatim.
    pub tool_calls: Option<String>,
    /// ID of the tool call this message responds to.
    pub tool_call_id: Option<String>,
    /// Input tokens for this message.
    pub prompt_tokens: Option<i64>,
    /// Output tokens for this message.
    pub completion_tokens: Option<i64>,
    /// Cached input tokens.
    pub cache_read_tokens: Option<i64>,
    /// Tokens written to cache.
    pub cache_creation_tokens: Option<i64>,
    /// Reasoning/thinking tokens.
    pub thinking_tokens: Option<i64>,
    /// Creation time, UTC RFC 3339 with milliseconds (`2026-11-26T05:07:04.123Z`).
    /// Always `Some` for messages returned by a backend.
    pub created_at: Option<String>,
}

/// Detected interruption state for a resumed session (see [`detect_interruption`](crate::detect_interruption)).
///
/// koda shows a banner rather than auto-resuming: resuming a destructive tool
/// call after a dropped connection would surprise the user, the context may be
/// stale, and checking history should not cost an API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptionKind {
    /// The user's prompt was never answered (last non-system message is a
    /// user message). Holds its first 80 characters.
    Prompt(String),
    /// A tool finished but the assistant never processed the result (last
    /// non-system message is a tool message).
    Tool,
}

/// Token usage totals for a session (or one agent of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionUsage {
    /// Total input tokens.
    pub prompt_tokens: i64,
    /// Total output tokens.
    pub completion_tokens: i64,
    /// Total cached input tokens.
    pub cache_read_tokens: i64,
    /// Total tokens written to cache.
    pub cache_creation_tokens: i64,
    /// Total reasoning/thinking tokens.
    pub thinking_tokens: i64,
    /// Number of API calls made (messages with prompt or completion tokens set).
    pub api_calls: i64,
}

impl SessionUsage {
    /// Adds one message's counters if it counts as an API call (its
    /// `prompt_tokens` or `completion_tokens` is set); unset counters add 0.
    /// Sums saturate at `i64::MAX`.
    pub fn add_message_counters(&mut self, counters: [Option<i64>; 5]) {
        let [p, c, cr, cc, t] = counters;
        if p.is_none() && c.is_none() {
            return;
        }
        let add = |sum: &mut i64, v: Option<i64>| *sum = sum.saturating_add(v.unwrap_or(0));
        add(&mut self.prompt_tokens, p);
        add(&mut self.completion_tokens, c);
        add(&mut self.cache_read_tokens, cr);
        add(&mut self.cache_creation_tokens, cc);
        add(&mut self.thinking_tokens, t);
        self.api_calls = self.api_calls.saturating_add(1);
    }

    /// `prompt_tokens + completion_tokens`, saturating: the order key of
    /// [`session_usage_by_agent`](crate::Persistence::session_usage_by_agent).
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl Message {
    /// A message with only its id, session, role and content set: no tool
    /// fields, no usage, no full content, no timestamp. Fill in the rest
    /// with struct-update syntax.
    pub fn bare(id: i64, session_id: &str, role: Role, content: Option<String>) -> Self {
        Self {
            id,
            session_id: session_id.to_owned(),
            role,
            content,
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

    /// The five usage counters in [`TokenUsage`] field order.
    pub fn usage_counters(&self) -> [Option<i64>; 5] {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            self.thinking_tokens,
        ]
    }
}

/// A message about to be inserted: the arguments of the inserting trait
/// methods, owned, so a backend can hand them to its writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Session to append to.
    pub session_id: String,
    /// Role.
    pub role: Role,
    /// Text content.
    pub content: Option<String>,
    /// Tool calls JSON, verbatim.
    pub tool_calls: Option<String>,
    /// Tool call answered.
    pub tool_call_id: Option<String>,
    /// Usage; `None` stores five unset counters.
    pub usage: Option<TokenUsage>,
    /// Agent name (`None` counts as `"main"` in usage by agent).
    pub agent: Option<String>,
    /// Full tool output (`insert_tool_message_with_full` only).
    pub full_content: Option<String>,
}

impl NewMessage {
    /// The arguments of `insert_message_with_agent`.
    #[allow(clippy::too_many_arguments)]
    pub fn message(
        session_id: &str,
        role: Role,
        content: Option<&str>,
        tool_calls: Option<&str>,
        tool_call_id: Option<&str>,
        usage: Option<&TokenUsage>,
        agent: Option<&str>,
    ) -> Self {
        Self {
            session_id: session_id.to_owned(),
            role,
            content: content.map(str::to_owned),
            tool_calls: tool_calls.map(str::to_owned),
            tool_call_id: tool_call_id.map(str::to_owned),
            usage: usage.copied(),
            agent: agent.map(str::to_owned),
            full_content: None,
        }
    }

    /// The arguments of `insert_tool_message_with_full`.
    pub fn tool_result(session_id: &str, content: &str, tool_call_id: &str, full_content: &str) -> Self {
        Self {
            session_id: session_id.to_owned(),
            role: Role::Tool,
            content: Some(content.to_owned()),
            tool_calls: None,
            tool_call_id: Some(tool_call_id.to_owned()),
            usage: None,
            agent: None,
            full_content: Some(full_content.to_owned()),
        }
    }

    /// The five counters in [`TokenUsage`] field order, if usage was given.
    pub fn counters(&self) -> Option<[i64; 5]> {
        self.usage.map(|u| {
            [u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_creation_tokens, u.thinking_tokens]
        })
    }

    /// The message as stored with `id` at `created_ms`.
    pub fn to_message(&self, id: i64, created_ms: i64) -> Message {
        let [p, c, cr, cc, t] = match self.counters() {
            Some(u) => u.map(Some),
            None => [None; 5],
        };
        Message {
            id,
            session_id: self.session_id.clone(),
            role: self.role,
            content: self.content.clone(),
            full_content: self.full_content.clone(),
            tool_calls: self.tool_calls.clone(),
            tool_call_id: self.tool_call_id.clone(),
            prompt_tokens: p,
            completion_tokens: c,
            cache_read_tokens: cr,
            cache_creation_tokens: cc,
            thinking_tokens: t,
            created_at: Some(crate::clock::format_timestamp(created_ms)),
        }
    }
}

/// Summary info for a stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session identifier.
    pub id: String,
    /// Agent name the session was created with.
    pub agent_name: String,
    /// Creation time, UTC RFC 3339 with milliseconds.
    pub created_at: String,
    /// Stored messages in the session, compacted included.
    pub message_count: i64,
    /// Sum of `prompt + completion` tokens over the stored messages (saturating).
    pub total_tokens: i64,
    /// Title, if one was set.
    pub title: Option<String>,
    /// Last approval mode set, if any.
    pub mode: Option<String>,
}

/// Stats about compacted (archived) messages across the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactedStats {
    /// Number of compacted messages.
    pub message_count: i64,
    /// Number of distinct sessions with compacted messages.
    pub session_count: i64,
    /// Sum of the UTF-8 byte lengths of `content` and `tool_calls` (saturating).
    pub size_bytes: i64,
    /// Earliest `compacted_at`, UTC RFC 3339 with milliseconds; `None` if nothing is compacted.
    pub oldest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_stored_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            assert_eq!(Role::from_stored(role.as_str()), Ok(role));
        }
        assert_eq!(Role::ALL.map(|r| r.as_str()), ["system", "user", "assistant", "tool"]);
        assert!(matches!(Role::from_stored("User"), Err(PersistenceError::Corrupt(m)) if m.contains("\"User\"")));
    }

    #[test]
    fn usage_counts_a_message_when_prompt_or_completion_is_set() {
        let mut u = SessionUsage::default();
        u.add_message_counters([None, None, Some(5), Some(5), Some(5)]);
        assert_eq!(u, SessionUsage::default());
        u.add_message_counters([Some(3), None, None, Some(1), None]);
        u.add_message_counters([None, Some(4), Some(2), None, Some(7)]);
        assert_eq!(
            u,
            SessionUsage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cache_read_tokens: 2,
                cache_creation_tokens: 1,
                thinking_tokens: 7,
                api_calls: 2,
            }
        );
        u.add_message_counters([Some(i64::MAX), Some(i64::MAX), None, None, None]);
        assert_eq!((u.prompt_tokens, u.total_tokens()), (i64::MAX, i64::MAX));
    }
}
