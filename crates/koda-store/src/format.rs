//! The export file: JSON Lines, version 1.
//!
//! Line 1 is a [`Header`]. Then, for each session in the store's order
//! (oldest first): one `session` line, its `message` lines in conversation
//! order, its `metadata` lines by key. Every field is always written
//! (`null` when unset), in a fixed order, so the same store exports the
//! same bytes and an export imported into any backend exports again to the
//! same record lines. Strings are JSON strings (NUL as `\u0000`); times are
//! epoch milliseconds.

use koda_persistence::{MessageRecord, MetadataRecord, SessionRecord};
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

/// A session: the fields of [`SessionRecord`], documented there.
pub type SessionLine = SessionRecord;

/// A message: its session's id, then the fields of [`MessageRecord`]
/// (documented there), the role as its stored name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageLine {
    /// The session it belongs to.
    pub session: String,
    /// The message.
    #[serde(flatten)]
    pub record: MessageRecord,
}

/// A metadata entry: its session's id, then the fields of
/// [`MetadataRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataLine {
    /// The session it belongs to.
    pub session: String,
    /// The entry.
    #[serde(flatten)]
    pub record: MetadataRecord,
}

impl MessageLine {
    /// The line of `m`, a message of `session`.
    pub fn new(session: &str, m: &MessageRecord) -> Self {
        Self { session: session.to_owned(), record: m.clone() }
    }
}

impl MetadataLine {
    /// The line of `e`, an entry of `session`.
    pub fn new(session: &str, e: &MetadataRecord) -> Self {
        Self { session: session.to_owned(), record: e.clone() }
    }
}
