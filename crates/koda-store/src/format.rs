//! The export file: JSON Lines, version 1.
//!
//! Line 1 is a [`Header`]. Then, for each session in the store's order
//! (oldest first): one `session` line, its `message` lines in conversation
//! order, its `metadata` lines by key. Every field is always written
//! (`null` when unset), in a fixed order, so the same store exports the
//! same bytes and an export imported into any backend exports again to the
//! same record lines. Strings are JSON strings (NUL as `\u0000`); times are
//! epoch milliseconds.

use koda_persistence::{MessageRecord, MetadataRecord, Role, SessionRecord};
use serde::{Deserialize, Serialize};

/// The `format` value of a header.
pub const FORMAT: &str = "koda-store-export";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] when written by this build.
    pub version: u32,
    /// The store exported, password removed.
    pub source: String,
    /// Sessions that follow.
    pub sessions: u64,
    /// Smallest and largest message id (`null` without messages): an
    /// import claims this range to keep the ids.
    pub message_ids: Option<(i64, i64)>,
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// A session.
    Session(SessionLine),
    /// A message of the last session line.
    Message(MessageLine),
    /// A metadata entry of the last session line.
    Metadata(MetadataLine),
}

/// A session's fields: those of [`SessionRecord`], documented there.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLine {
    pub id: String,
    pub agent_name: String,
    pub project_root: Option<String>,
    pub created_ms: i64,
    pub last_accessed_ms: Option<i64>,
    pub title: Option<String>,
    pub mode: Option<String>,
}

/// A message's fields: its session's id, then those of
/// [`MessageRecord`] (documented there), the role as its stored name.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageLine {
    pub session: String,
    pub id: i64,
    pub role: String,
    pub content: Option<String>,
    pub full_content: Option<String>,
    pub tool_calls: Option<String>,
    pub tool_call_id: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_creation_tokens: Option<i64>,
    pub thinking_tokens: Option<i64>,
    pub agent: Option<String>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    pub compacted_ms: Option<i64>,
}

/// A metadata entry of a session.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataLine {
    pub session: String,
    pub key: String,
    pub value: String,
}

impl From<&SessionRecord> for SessionLine {
    fn from(s: &SessionRecord) -> Self {
        Self {
            id: s.id.clone(),
            agent_name: s.agent_name.clone(),
            project_root: s.project_root.clone(),
            created_ms: s.created_ms,
            last_accessed_ms: s.last_accessed_ms,
            title: s.title.clone(),
            mode: s.mode.clone(),
        }
    }
}

impl From<SessionLine> for SessionRecord {
    fn from(s: SessionLine) -> Self {
        Self {
            id: s.id,
            agent_name: s.agent_name,
            project_root: s.project_root,
            created_ms: s.created_ms,
            last_accessed_ms: s.last_accessed_ms,
            title: s.title,
            mode: s.mode,
        }
    }
}

impl MessageLine {
    /// The line of `m`, a message of `session`.
    pub fn new(session: &str, m: &MessageRecord) -> Self {
        Self {
            session: session.to_owned(),
            id: m.id,
            role: m.role.as_str().to_owned(),
            content: m.content.clone(),
            full_content: m.full_content.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
            cache_read_tokens: m.cache_read_tokens,
            cache_creation_tokens: m.cache_creation_tokens,
            thinking_tokens: m.thinking_tokens,
            agent: m.agent.clone(),
            created_ms: m.created_ms,
            completed_ms: m.completed_ms,
            compacted_ms: m.compacted_ms,
        }
    }

    /// The record, or why the role is not one.
    pub fn into_record(self) -> anyhow::Result<MessageRecord> {
        let role: Role = self.role.parse().map_err(|e: String| anyhow::anyhow!("message {}: {e}", self.id))?;
        Ok(MessageRecord {
            id: self.id,
            role,
            content: self.content,
            full_content: self.full_content,
            tool_calls: self.tool_calls,
            tool_call_id: self.tool_call_id,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_creation_tokens: self.cache_creation_tokens,
            thinking_tokens: self.thinking_tokens,
            agent: self.agent,
            created_ms: self.created_ms,
            completed_ms: self.completed_ms,
            compacted_ms: self.compacted_ms,
        })
    }
}

impl MetadataLine {
    /// The line of `e`, an entry of `session`.
    pub fn new(session: &str, e: &MetadataRecord) -> Self {
        Self { session: session.to_owned(), key: e.key.clone(), value: e.value.clone() }
    }
}
