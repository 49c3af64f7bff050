//! The key layout. Everything lives in one sled tree, so every write is one
//! atomic `Batch` (a crash never leaves a message without its session's
//! counters). Keys start with a one-byte namespace; variable-length parts
//! are prefixed with their `u32` big-endian length so no key is a prefix of
//! another; numbers are big-endian so byte order is numeric order.
//!
//! | namespace | key | value | serves |
//! |---|---|---|---|
//! | `S` | session id | `StoredSession` | every session lookup, counters, usage by agent |
//! | `M` | len + session id, `ord: u64` | `StoredMessage` | one session's messages in conversation order |
//! | `I` | message `id: u64` | the message's `M` key | `mark_message_complete`, `clear_message_content` |
//! | `U` | message `id: u64` of a user message | the message's `M` key | `recent_user_messages` (newest first) |
//! | `C` | `compacted_at: u64`, `id: u64` | the message's `M` key | `compacted_stats`, `purge_compacted` (oldest first) |
//! | `D` | len + session id, metadata key | value | metadata and the TODO list |
//! | `R` | len + project root, `!created_at: u64`, `!seq: u64` | session id | `list_sessions` (newest first, O(limit)) |
//! | `L` | `!created_at: u64`, `!seq: u64` | session id | the root-less sessions an older koda's history brings (imports only), listed under every root |
//! | `N` | `seq` | last session sequence number | creation order |
//! | `N` | `idfloor` | the highest id an importer claimed | message ids past it |
//! | `N` | `cipher` | the key record of an encrypted store (salt, check value) | opening with `key_file=` (see `crate::cipher`) |
//! | `B` | body address (SHA-256, 32 bytes) | the body, zstd-packed | message fields held as bodies |
//! | `b` | body address | `u64` big-endian: the message fields that refer to it | releasing a body with its last reference |
//! | `G` | setting key | the setting's value | store-wide settings (`Settings`) |
//! | `W` | `day: u64`, len + session id, agent | the session's root and six sums (postcard) | the usage ledger (`Ledger`), by day |
//! | `N` | `ledger` | present once the ledger was filled from the stored messages | filling it once |
//!
//! Conversation order is `ord`, a per-session position: inserts take
//! `next_ord + 1`; compaction moves the preserved tail two places on and puts
//! the summary and hint in the freed places. Message ids are sled's
//! monotonic `generate_id` plus the id floor (0 until an import claims ids).

/// Session records.
pub(crate) const SESSION: u8 = b'S';
/// Messages by session and position.
pub(crate) const MESSAGE: u8 = b'M';
/// Message id → message key.
pub(crate) const BY_ID: u8 = b'I';
/// User message ids, for the recent-prompts list.
pub(crate) const USER: u8 = b'U';
/// Compacted messages by compaction time.
pub(crate) const COMPACTED: u8 = b'C';
/// Session metadata.
pub(crate) const METADATA: u8 = b'D';
/// Sessions by root, newest first.
pub(crate) const BY_ROOT: u8 = b'R';
/// Counters.
pub(crate) const COUNTER: u8 = b'N';
/// Root-less sessions, newest first.
pub(crate) const ROOTLESS: u8 = b'L';
/// Bodies by address.
pub(crate) const BODY: u8 = b'B';
/// Body reference counts by address.
pub(crate) const BODY_REFS: u8 = b'b';
/// Store-wide settings (the Settings capability).
pub(crate) const SETTING: u8 = b'G';
/// The usage ledger (see `crate::ledger`).
pub(crate) const LEDGER: u8 = b'W';
/// Trashed session records (see `crate::trash`).
pub(crate) const TRASH_SESSION: u8 = b'X';
/// Trashed messages.
pub(crate) const TRASH_MESSAGE: u8 = b'Y';
/// Trashed metadata.
pub(crate) const TRASH_METADATA: u8 = b'Z';

/// `B` + address.
pub(crate) fn body(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(BODY);
    k.extend_from_slice(hash);
    k
}

/// `b` + address.
pub(crate) fn body_refs(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(BODY_REFS);
    k.extend_from_slice(hash);
    k
}

fn with_len(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths above u32::MAX cannot be stored by sled anyway.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `S` + session id.
pub(crate) fn session(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(SESSION);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `M` + len + session id: the prefix of all of a session's messages.
pub(crate) fn messages_of(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + id.len() + 8);
    k.push(MESSAGE);
    with_len(&mut k, id.as_bytes());
    k
}

/// `M` + len + session id + ord.
pub(crate) fn message(id: &str, ord: u64) -> Vec<u8> {
    let mut k = messages_of(id);
    k.extend_from_slice(&ord.to_be_bytes());
    k
}

/// The `ord` at the end of a message key.
pub(crate) fn ord_of(message_key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = message_key.get(message_key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// A namespace byte followed by a big-endian `u64`.
pub(crate) fn numbered(ns: u8, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ns);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// `C` + compaction time + id.
pub(crate) fn compacted(at_ms: u64, id: u64) -> Vec<u8> {
    let mut k = numbered(COMPACTED, at_ms);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `C` keys strictly before `cutoff_ms`.
pub(crate) fn compacted_before(cutoff_ms: u64) -> Vec<u8> {
    numbered(COMPACTED, cutoff_ms)
}

/// `D` + len + session id: prefix of a session's metadata.
pub(crate) fn metadata_of(id: &str) -> Vec<u8> {
    let mut k = vec![METADATA];
    with_len(&mut k, id.as_bytes());
    k
}

/// `D` + len + session id + metadata key.
pub(crate) fn metadata(id: &str, key: &str) -> Vec<u8> {
    let mut k = metadata_of(id);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `R` + len + root: prefix of a root's sessions.
pub(crate) fn root_prefix(root: &str) -> Vec<u8> {
    let mut k = vec![BY_ROOT];
    with_len(&mut k, root.as_bytes());
    k
}

/// `R` + len + root + !created + !seq (newest, then latest-created, first).
pub(crate) fn by_root(root: &str, created_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = root_prefix(root);
    k.extend_from_slice(&(!created_ms).to_be_bytes());
    k.extend_from_slice(&(!seq).to_be_bytes());
    k
}

/// `L` + !created + !seq: a root-less session's place in every listing.
pub(crate) fn rootless(created_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![ROOTLESS];
    k.extend_from_slice(&(!created_ms).to_be_bytes());
    k.extend_from_slice(&(!seq).to_be_bytes());
    k
}

/// `G` + setting key.
pub(crate) fn setting(key: &str) -> Vec<u8> {
    let mut k = vec![SETTING];
    k.extend_from_slice(key.as_bytes());
    k
}

/// The id floor key: ids the store hands out are above it.
pub(crate) fn id_floor() -> Vec<u8> {
    vec![COUNTER, b'i', b'd', b'f', b'l', b'o', b'o', b'r']
}

/// The key record of an encrypted store (see `crate::cipher`).
pub(crate) fn key_record() -> Vec<u8> {
    vec![COUNTER, b'c', b'i', b'p', b'h', b'e', b'r']
}

/// The session-sequence counter key.
pub(crate) fn seq_counter() -> Vec<u8> {
    vec![COUNTER, b's', b'e', b'q']
}

/// `W` + day + len + session id + agent.
pub(crate) fn ledger(day: i64, sid: &str, agent: &str) -> Vec<u8> {
    let mut k = ledger_day(day);
    k.extend_from_slice(&u32::try_from(sid.len()).unwrap_or(u32::MAX).to_be_bytes());
    k.extend_from_slice(sid.as_bytes());
    k.extend_from_slice(agent.as_bytes());
    k
}

/// `W` + day: the first key of that day.
pub(crate) fn ledger_day(day: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.push(LEDGER);
    k.extend_from_slice(&u64::try_from(day.max(0)).unwrap_or(0).to_be_bytes());
    k
}

/// The day, session id and agent of a ledger key.
pub(crate) fn ledger_parts(key: &[u8]) -> Option<(i64, String, String)> {
    let day = i64::try_from(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?)).ok()?;
    let len = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?) as usize;
    let sid = String::from_utf8(key.get(13..13 + len)?.to_vec()).ok()?;
    let agent = String::from_utf8(key.get(13 + len..)?.to_vec()).ok()?;
    Some((day, sid, agent))
}

/// `N` + `ledger`: set once the ledger holds the stored messages' usage.
pub(crate) fn ledger_filled() -> Vec<u8> {
    let mut k = vec![COUNTER];
    k.extend_from_slice(b"ledger");
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_session_then_position() {
        let a1 = message("a", 1);
        let a2 = message("a", 2);
        let a10 = message("a", 10);
        let ab1 = message("ab", 1);
        assert!(a1 < a2 && a2 < a10);
        assert!(a1.starts_with(&messages_of("a")));
        assert!(!ab1.starts_with(&messages_of("a")), "length prefix keeps sessions apart");
        assert_eq!(ord_of(&a10), Some(10));
        assert_eq!(ord_of(b"short"), None);
    }

    #[test]
    fn root_keys_list_newest_then_latest_created_first() {
        let old = by_root("/p", 100, 1);
        let new = by_root("/p", 200, 2);
        let tie_later = by_root("/p", 200, 3);
        assert!(tie_later < new && new < old);
        assert!(!by_root("/p/", 1, 1).starts_with(&root_prefix("/p")));
        assert!(old.starts_with(&root_prefix("/p")));
    }

    #[test]
    fn compacted_keys_sort_by_time_then_id() {
        assert!(compacted(5, 9) < compacted(6, 1));
        assert!(compacted(5, 9) < compacted_before(6));
        assert!(compacted(6, 0) >= compacted_before(6));
    }
}
