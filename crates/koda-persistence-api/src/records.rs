//! The records [`Transfer`](crate::Transfer) moves between stores: a session, its
//! messages and its metadata with every stored field, and the checksum a
//! verified copy compares.

use crate::types::{Message, Role};

/// A session with every field a store keeps of it (its counters are derived
/// from its messages and not part of the record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// Session id: 1 to [`MAX_SESSION_ID_BYTES`] bytes, no NUL.
    pub id: String,
    /// Agent the session was created with.
    pub agent_name: String,
    /// Project root; `None` for the root-less sessions of an older koda,
    /// which every root's listing includes.
    pub project_root: Option<String>,
    /// Creation time, epoch milliseconds.
    pub created_ms: i64,
    /// Last access (`get_session_idle_secs`), epoch milliseconds.
    pub last_accessed_ms: Option<i64>,
    /// Title, if set.
    pub title: Option<String>,
    /// Approval mode, if set.
    pub mode: Option<String>,
}

/// A message with every field a store keeps of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageRecord {
    /// Its id in the store it came from.
    pub id: i64,
    /// Role.
    pub role: Role,
    /// Text content.
    pub content: Option<String>,
    /// Full tool output.
    pub full_content: Option<String>,
    /// Tool calls JSON, verbatim.
    pub tool_calls: Option<String>,
    /// Tool call answered.
    pub tool_call_id: Option<String>,
    /// Input tokens.
    pub prompt_tokens: Option<i64>,
    /// Output tokens.
    pub completion_tokens: Option<i64>,
    /// Cached input tokens.
    pub cache_read_tokens: Option<i64>,
    /// Tokens written to cache.
    pub cache_creation_tokens: Option<i64>,
    /// Reasoning tokens.
    pub thinking_tokens: Option<i64>,
    /// Agent that wrote it (`None` counts as `"main"`).
    pub agent: Option<String>,
    /// Creation time, epoch milliseconds.
    pub created_ms: i64,
    /// When an answer was marked complete; `None`: still streaming (or a
    /// row of an older koda that never marks completion).
    pub completed_ms: Option<i64>,
    /// When compaction archived it; `None`: active.
    pub compacted_ms: Option<i64>,
}

impl MessageRecord {
    /// A record with nothing but its id, role and creation time: the start
    /// of a literal that sets the fields it needs (`..MessageRecord::bare(…)`).
    pub fn bare(id: i64, role: Role, created_ms: i64) -> Self {
        Self::from_message(Message::bare(id, "", role, None), None, created_ms, None, None)
    }

    /// The record of a stored message `m` and the fields [`Message`] does
    /// not carry.
    pub fn from_message(
        m: Message,
        agent: Option<String>,
        created_ms: i64,
        completed_ms: Option<i64>,
        compacted_ms: Option<i64>,
    ) -> Self {
        Self {
            id: m.id,
            role: m.role,
            content: m.content,
            full_content: m.full_content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
            cache_read_tokens: m.cache_read_tokens,
            cache_creation_tokens: m.cache_creation_tokens,
            thinking_tokens: m.thinking_tokens,
            agent,
            created_ms,
            completed_ms,
            compacted_ms,
        }
    }

    /// The message as stored in `session_id` under `id`.
    pub fn to_message(&self, session_id: &str, id: i64) -> Message {
        Message {
            id,
            session_id: session_id.to_owned(),
            role: self.role,
            content: self.content.clone(),
            full_content: self.full_content.clone(),
            tool_calls: self.tool_calls.clone(),
            tool_call_id: self.tool_call_id.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_creation_tokens: self.cache_creation_tokens,
            thinking_tokens: self.thinking_tokens,
            created_at: Some(crate::clock::format_timestamp(self.created_ms)),
        }
    }

    /// The five counters, in [`TokenUsage`](crate::TokenUsage) field order.
    pub fn counters(&self) -> [Option<i64>; 5] {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            self.thinking_tokens,
        ]
    }
}

/// One metadata entry of a session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MetadataRecord {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// The longest session id an import accepts, in bytes (ids a store makes
/// are 36).
pub const MAX_SESSION_ID_BYTES: usize = 1024;

/// A content checksum of a session, independent of message ids (which a
/// copy may map): the first 16 hex digits of
/// `SHA-256(n ‖ h(m1) ‖ … ‖ h(mn) ‖ k ‖ h(e1) ‖ … ‖ h(ek))`, where `n` and
/// `k` are the message and metadata counts as 8-byte big-endian integers,
/// `h` is SHA-256, a message's bytes are its role name, content,
/// full content, tool calls, call id and agent, its five counters and
/// its created, completed and compacted times, and an entry's bytes its
/// key and value. Each field is `0x00` when unset, else `0x01` and then,
/// for text, its length (8 bytes, big-endian) and UTF-8 bytes, for a
/// number its 8 big-endian bytes. Content, full content and tool calls
/// enter by their SHA-256 instead of their bytes (after their length), so
/// a store holding them as bodies (see [`crate::bodies`]) digests a body
/// by its address, without reading it. The entries `e1 … ek` are the
/// metadata as a store holds it: one per key (a key given twice counts
/// once, with its last value) in key order (bytewise), so the order in
/// which entries arrive (an export written by another tool, or edited by
/// hand) does not change the checksum.
pub fn session_checksum(messages: &[MessageRecord], metadata: &[MetadataRecord]) -> String {
    use sha2::{Digest, Sha256};
    fn text(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    /// A field that may be a body: its length and SHA-256.
    fn digest(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(Sha256::digest(s.as_bytes()));
            }
        }
    }
    fn number(h: &mut Sha256, n: Option<i64>) {
        match n {
            None => h.update([0u8]),
            Some(n) => {
                h.update([1u8]);
                h.update(n.to_be_bytes());
            }
        }
    }
    let mut outer = Sha256::new();
    outer.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        let mut h = Sha256::new();
        text(&mut h, Some(m.role.as_str()));
        for t in [&m.content, &m.full_content, &m.tool_calls] {
            digest(&mut h, t.as_deref());
        }
        for t in [&m.tool_call_id, &m.agent] {
            text(&mut h, t.as_deref());
        }
        for n in m.counters() {
            number(&mut h, n);
        }
        for n in [Some(m.created_ms), m.completed_ms, m.compacted_ms] {
            number(&mut h, n);
        }
        outer.update(h.finalize());
    }
    // The entries as a store holds them: one per key (the last value of
    // a key given twice, as an import sets them), in key order (bytewise),
    // whatever order they arrive in.
    let mut entries: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for e in metadata {
        entries.insert(&e.key, &e.value);
    }
    outer.update((entries.len() as u64).to_be_bytes());
    for (key, value) in entries {
        let mut h = Sha256::new();
        text(&mut h, Some(key));
        text(&mut h, Some(value));
        outer.update(h.finalize());
    }
    outer.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> MetadataRecord {
        MetadataRecord { key: key.to_owned(), value: value.to_owned() }
    }

    /// Metadata in any order, or with a key given twice (the last value
    /// wins, as an import sets it), digests as the store holds it.
    #[test]
    fn checksum_does_not_depend_on_metadata_order() {
        let sorted = [entry("a", "1"), entry("b", "2"), entry("é", "3")];
        let shuffled = [entry("é", "3"), entry("a", "1"), entry("b", "2")];
        let twice = [entry("b", "old"), entry("é", "3"), entry("a", "1"), entry("b", "2")];
        let want = session_checksum(&[], &sorted);
        assert_eq!(session_checksum(&[], &shuffled), want);
        assert_eq!(session_checksum(&[], &twice), want);
        assert_ne!(session_checksum(&[], &[entry("a", "1")]), want);
    }
}
