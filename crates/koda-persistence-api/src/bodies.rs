//! Large outputs stored once: which message fields are *bodies*, their
//! content address, their compressed form, and the accounting every store
//! reports in [`StoreHealth::bodies`](crate::StoreHealth::bodies).
//!
//! The rule every backend follows (the conformance suite checks it through
//! [`BodyStats`], never by reading tables):
//!
//! - A field is a body when [`is_body`] says so: `content` and
//!   `full_content` of a [`Role::Tool`] message of at least
//!   [`TOOL_BODY_MIN`] bytes, and `content`, `full_content` or
//!   `tool_calls` of any message of at least [`BODY_THRESHOLD`] bytes.
//!   Shorter text stays in the message row, where a body would cost more
//!   than it saves.
//! - A body is stored once per store, under [`body_hash`] (SHA-256 of its
//!   UTF-8 bytes), compressed by [`pack`] (a zstd frame with its size and
//!   checksum), with a count of the message fields that refer to it.
//! - Every write that adds a reference and every path that drops one
//!   (deleting a session, purging compacted rows, clearing content,
//!   replacing a field) changes the count in the same atomic step as the
//!   message rows; a body whose count reaches 0 is removed in that step. A
//!   failed write leaves no reference and no body behind.
//! - Every read returns exactly the original text.

use std::cell::RefCell;

use sha2::{Digest, Sha256};

use crate::error::PersistenceError;
use crate::types::Role;

/// A field of this many bytes or more is a body, whatever its role.
pub const BODY_THRESHOLD: usize = 4 * 1024;

/// A tool result (`content` or `full_content` of a [`Role::Tool`] message)
/// of this many bytes or more is a body: tool outputs repeat (the same
/// file read, the same test run), and below this a body's hash and row
/// cost more than the text.
pub const TOOL_BODY_MIN: usize = 256;

/// The zstd level bodies are packed at. Chosen by measurement
/// (`koda-persistence-bench --w12-levels`: W12's 123 MB of distinct tool
/// outputs, one reused context, 2-core VM): level 1 packs 3.82× at 220
/// MB/s, level 3 4.02× at 188 MB/s, level 6 4.17× at 63 MB/s, level 9
/// 4.31× at 37 MB/s, level 19 4.54× at 3 MB/s; every level unpacks at
/// 570–950 MB/s. Level 3 stores 5 % fewer bytes than level 1 for 15 %
/// more time (a 6 KiB tool result packs in about 33 µs); higher levels
/// cost 3× to 60× its time for at most 12 % fewer bytes.
pub const PACK_LEVEL: i32 = 3;

/// The largest body [`unpack`] inflates: a frame claiming more is
/// `Corrupt` rather than an allocation a damaged row can force.
pub const MAX_BODY_BYTES: usize = 1 << 31;

/// Which field of a message a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BodyField {
    /// `content`.
    Content,
    /// `full_content`.
    FullContent,
    /// `tool_calls`.
    ToolCalls,
}

impl BodyField {
    /// The field's column name.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyField::Content => "content",
            BodyField::FullContent => "full_content",
            BodyField::ToolCalls => "tool_calls",
        }
    }
}

/// Whether `value`, as `field` of a `role` message, is stored as a body.
pub fn is_body(role: &Role, field: BodyField, value: &str) -> bool {
    let tool_text = *role == Role::Tool && field != BodyField::ToolCalls;
    value.len() >= BODY_THRESHOLD || (tool_text && value.len() >= TOOL_BODY_MIN)
}

/// A body's address: SHA-256 of its bytes.
pub type BodyHash = [u8; 32];

/// The address of `text`.
pub fn body_hash(text: &str) -> BodyHash {
    Sha256::digest(text.as_bytes()).into()
}

/// `text` compressed as one zstd frame carrying its size and a checksum,
/// so [`unpack`] needs no other column and notices damage.
///
/// Each thread keeps one compression context (and [`unpack`] one
/// decompression context): a context costs allocations far larger than a
/// typical body, so making one per call would dominate small bodies.
pub fn pack(text: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    thread_local! {
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut c = zstd::bulk::Compressor::new(PACK_LEVEL).context("compressing a body")?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true)).context("compressing a body")?;
            *slot = Some(c);
        }
        match slot.as_mut() {
            Some(c) => c.compress(text.as_bytes()).context("compressing a body"),
            None => anyhow::bail!("no compression context"),
        }
    })
}

/// The text [`pack`] packed; anything else (a truncated or damaged frame,
/// a frame without its size, bytes that are not UTF-8) is `Corrupt`.
pub fn unpack(data: &[u8]) -> Result<String, PersistenceError> {
    let corrupt = |why: String| PersistenceError::Corrupt(format!("a stored body {why}"));
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(corrupt("does not record its size".into())),
        Err(_) => return Err(corrupt("is not a zstd frame (missing or damaged)".into())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_BODY_BYTES)
        .ok_or_else(|| corrupt(format!("claims {size} bytes")))?;
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    let bytes = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(data, size),
            None => Err(std::io::Error::other("no decompression context")),
        }
    });
    let bytes = bytes.map_err(|e| corrupt(format!("is damaged: {e}")))?;
    if bytes.len() != size {
        return Err(corrupt(format!("inflates to {} bytes, not the {size} it records", bytes.len())));
    }
    String::from_utf8(bytes).map_err(|_| corrupt("is not UTF-8".into()))
}

/// A body's address as reports name it: lower-case hex.
pub fn body_name(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text length a packed body records, without inflating it.
pub fn packed_len(data: &[u8]) -> Result<usize, PersistenceError> {
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(size)) => {
            usize::try_from(size).map_err(|_| PersistenceError::Corrupt(format!("a stored body claims {size} bytes")))
        }
        _ => Err(PersistenceError::Corrupt("a stored body is not a zstd frame with its size".into())),
    }
}

/// [`unpack`], and the result's address must be `hash` (for `doctor`,
/// which reads every body once).
pub fn unpack_checked(data: &[u8], hash: &[u8]) -> Result<String, PersistenceError> {
    let text = unpack(data)?;
    if body_hash(&text).as_slice() != hash {
        return Err(PersistenceError::Corrupt("a stored body does not match its address".into()));
    }
    Ok(text)
}

/// What a store holds in bodies ([`StoreHealth::bodies`](crate::StoreHealth::bodies)).
///
/// `logical_bytes` counts every reference's text, as an inline layout
/// would store it; `stored_bytes` counts each body's packed bytes once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyStats {
    /// Distinct bodies stored.
    pub bodies: u64,
    /// Message fields that refer to a body.
    pub references: u64,
    /// Sum of the text length of every reference (bytes).
    pub logical_bytes: u64,
    /// Sum of the text length of every distinct body (bytes).
    pub unique_bytes: u64,
    /// Sum of the packed length of every distinct body (bytes).
    pub stored_bytes: u64,
}

impl BodyStats {
    /// Counts one stored body of `len` text bytes and `packed` stored
    /// bytes that `uses` message fields refer to.
    pub fn add_body(&mut self, len: u64, packed: u64, uses: u64) {
        self.bodies += 1;
        self.unique_bytes += len;
        self.stored_bytes += packed;
        self.references += uses;
        self.logical_bytes += len * uses;
    }

    /// Bytes the store does not hold because bodies are stored once and
    /// packed (`logical_bytes - stored_bytes`, never below 0).
    pub fn saved_bytes(&self) -> u64 {
        self.logical_bytes.saturating_sub(self.stored_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_notices_damage() -> anyhow::Result<()> {
        for text in ["", "x", "NUL\0inside \u{fffd} \\ud800 \"", &"ab".repeat(50_000)] {
            let packed = pack(text)?;
            assert_eq!(unpack(&packed)?, text);
            assert_eq!(unpack_checked(&packed, &body_hash(text))?, text);
        }
        let mut packed = pack(&"hello world ".repeat(1000))?;
        let mid = packed.len() / 2;
        packed[mid] ^= 0xff;
        assert!(matches!(unpack(&packed), Err(PersistenceError::Corrupt(_))));
        assert!(matches!(unpack(&[]), Err(PersistenceError::Corrupt(_))));
        assert!(matches!(unpack(b"not zstd"), Err(PersistenceError::Corrupt(_))));
        let other = pack("a")?;
        assert!(matches!(unpack_checked(&other, &body_hash("b")), Err(PersistenceError::Corrupt(_))));
        Ok(())
    }

    #[test]
    fn which_fields_are_bodies() {
        let short_tool = "t".repeat(TOOL_BODY_MIN);
        assert!(is_body(&Role::Tool, BodyField::Content, &short_tool));
        assert!(is_body(&Role::Tool, BodyField::FullContent, &short_tool));
        assert!(!is_body(&Role::Tool, BodyField::ToolCalls, &short_tool));
        assert!(!is_body(&Role::User, BodyField::Content, &short_tool));
        assert!(!is_body(&Role::Tool, BodyField::Content, &short_tool[1..]));
        let long = "l".repeat(BODY_THRESHOLD);
        for role in [Role::User, Role::Assistant, Role::System, Role::Tool] {
            for field in [BodyField::Content, BodyField::FullContent, BodyField::ToolCalls] {
                assert!(is_body(&role, field, &long));
                assert!(!is_body(&role, field, &long[1..]) || role == Role::Tool);
            }
        }
    }
}
