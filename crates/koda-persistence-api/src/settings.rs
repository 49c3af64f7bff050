//! Settings a store keeps for itself, beside its sessions
//! ([`Settings`]): what every handle on it must apply the same way, such
//! as its redaction mode ([`crate::secrets`]).

use anyhow::Result;

/// The longest setting key, in bytes.
pub const MAX_SETTING_KEY_BYTES: usize = 128;

/// The longest setting value, in bytes.
pub const MAX_SETTING_VALUE_BYTES: usize = 1 << 20;

/// Store-wide settings: a few named text values that belong to the store,
/// not to a session. No session call reads or changes them, and they are
/// not exported (a copy of a history does not carry the settings of the
/// store it came from).
///
/// Keys are 1 to [`MAX_SETTING_KEY_BYTES`] bytes of lower-case ASCII
/// letters, digits, `.`, `_` and `-`; this crate names the ones it uses
/// (`redact.mode`, `redact.salt`, `redact.rules`). Values are text without
/// NUL, at most [`MAX_SETTING_VALUE_BYTES`]. On a store encrypted at rest
/// the values are encrypted as the rest of it is.
#[async_trait::async_trait]
pub trait Settings: Send + Sync {
    /// The value of setting `key`, or `None` when it is not set.
    ///
    /// # Errors
    /// `InvalidInput` for a key outside the rules above.
    async fn get_setting(&self, key: &str) -> Result<Option<String>>;

    /// Sets setting `key` to `value`, or removes it (`None`), in one atomic
    /// step; a later `get_setting` on any handle of the store sees it.
    ///
    /// # Errors
    /// `InvalidInput` for a key or value outside the rules above; nothing
    /// is written then.
    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()>;
}
