//! The [`Rewrite`] capability: stored text replaced in place, for cleaning
//! a history that already holds secrets (`koda-store redact`).
//!
//! [`Persistence`](crate::Persistence) only appends and clears; a cleaner
//! needs to replace a value where it is, keeping the row's id, times,
//! counters and states, and then to let go of every old copy the store
//! can reach.

use anyhow::Result;

use crate::records::MetadataRecord;

/// New text for one stored message: each field that is `Some` replaces
/// the stored one; `None` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageText {
    /// The message's id (a message of the session being rewritten).
    pub id: i64,
    /// New content.
    pub content: Option<String>,
    /// New full tool output.
    pub full_content: Option<String>,
    /// New tool calls JSON.
    pub tool_calls: Option<String>,
}

impl MessageText {
    /// Whether it replaces nothing.
    pub fn is_empty(&self) -> bool {
        self.content.is_none() && self.full_content.is_none() && self.tool_calls.is_none()
    }
}

/// New text for one session: its title and mode (`Some` replaces), some
/// of its messages, some of its metadata entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionText {
    /// New title.
    pub title: Option<String>,
    /// New approval mode.
    pub mode: Option<String>,
    /// New text of messages, each id at most once.
    pub messages: Vec<MessageText>,
    /// New values of metadata entries (the TODO list among them), each
    /// key at most once.
    pub metadata: Vec<MetadataRecord>,
}

impl SessionText {
    /// Whether it replaces nothing.
    pub fn is_empty(&self) -> bool {
        self.title.is_none() && self.mode.is_none() && self.messages.is_empty() && self.metadata.is_empty()
    }

    /// The number of values it replaces.
    pub fn values(&self) -> usize {
        let message_fields: usize = self
            .messages
            .iter()
            .map(|m| [&m.content, &m.full_content, &m.tool_calls].iter().filter(|f| f.is_some()).count())
            .sum();
        usize::from(self.title.is_some()) + usize::from(self.mode.is_some()) + message_fields + self.metadata.len()
    }
}

/// Stored text replaced in place.
///
/// Rules, checked by the conformance suite on every backend:
///
/// - [`rewrite_session`](Self::rewrite_session) replaces what it is given
///   in one atomic step: all of it or, on any error, none of it. Every
///   other field stays: ids, roles, times, token counters, completion and
///   compaction states, conversation order, the session's counters and
///   its last access. A message's new text is what every read returns
///   afterwards (`load_context`, exports, checksums), and what search
///   finds: a word only the old text held finds the message no more.
/// - A large output stored once ([`crate::bodies`]) is re-addressed: the
///   message refers to the new text's body, and the old body goes when no
///   other message refers to it (a session that shares it keeps reading
///   it until it is rewritten too).
/// - A metadata entry is set as by `set_metadata` (the store's clock
///   stamps it); title and mode as by `set_session_title` and
///   `set_session_mode`.
/// - **Errors**, each writing nothing: a session that does not exist (or
///   is in the trash) is `SessionNotFound`; a message id that is not one
///   of that session's messages, an id or a metadata key given twice, or
///   a value a write would refuse is `InvalidInput`.
/// - [`reclaim`](Self::reclaim) lets go of the copies that rewritten and
///   deleted values left where this layer can reach them. SQLite: the
///   search index is brought up to date and merged, the file vacuumed and
///   its WAL truncated, so neither free pages nor the WAL hold an old
///   value. PostgreSQL: the rewritten tables are vacuumed (by a role that
///   may; the server's WAL, its archive and its backups still hold old
///   values until they rotate). Memory: nothing is left to reclaim. sled:
///   its log keeps an overwritten value until it rewrites that segment,
///   which this layer cannot force; copy the store (`koda-store copy`)
///   to leave none behind. It returns a line saying what it did.
#[async_trait::async_trait]
pub trait Rewrite: Send + Sync {
    /// Replaces the given text of a session, all or nothing.
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()>;

    /// Lets go of old copies where the store can; says what it did.
    async fn reclaim(&self) -> Result<String>;
}
