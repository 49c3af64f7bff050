//! [`Redacting`]: a store whose redaction mode is `secrets`, with every
//! free-text value it is given to write passed through the store's
//! [`Redactor`] first. One file per capability trait; the capabilities that
//! write no text forward every call.

/// Implements trait `$cap` for [`Redacting`] by forwarding each listed
/// method to the store inside; what follows the list is pasted into the
/// impl as written (the methods that redact).
macro_rules! forwarding {
    ($cap:ident {
        $( fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*
    } $($rest:tt)*) => {
        #[async_trait::async_trait]
        impl $cap for Redacting {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.inner.$name($($arg),*).await
                }
            )*
            $($rest)*
        }
    };
}

mod fork;
mod health;
mod ledger;
mod persistence;
mod rewrite;
mod search;
mod settings;
mod transfer;
mod trash;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;

use crate::capabilities::Capabilities;
use crate::error::PersistenceError;
use crate::secrets::{CustomRule, REDACT, RedactMode, Redactor, check_custom_rule};
use crate::store::Store;

/// The setting that records a store's redaction mode (`secrets`; unset:
/// `off`).
pub const MODE_SETTING: &str = "redact.mode";
/// The setting that keeps the store's tag salt (64 hex digits).
pub const SALT_SETTING: &str = "redact.salt";
/// The setting that keeps the store's own rules (a JSON list of
/// `[name, pattern]` pairs).
pub const RULES_SETTING: &str = "redact.rules";

/// The mode `store` records (`off` when it records none).
///
/// # Errors
/// `Corrupt` for a recorded value that is not a mode; store failures.
pub async fn recorded_mode(store: &dyn Store) -> Result<RedactMode> {
    match store.get_setting(MODE_SETTING).await? {
        None => Ok(RedactMode::Off),
        Some(m) => RedactMode::parse(&m)
            .map_err(|_| PersistenceError::Corrupt(format!("the store records redaction mode {m:?}")).into()),
    }
}

/// Records `mode` as `store`'s redaction mode (and, for `secrets`, a salt
/// when it has none): what `koda-store redact --mode` does. Every handle
/// opened afterwards applies it; a handle open now keeps the mode it was
/// opened with.
///
/// # Errors
/// Store failures; `Unavailable` when the system gives no randomness.
pub async fn record_mode(store: &dyn Store, mode: RedactMode) -> Result<()> {
    let value = match mode {
        RedactMode::Off => None,
        RedactMode::Secrets => {
            ensure_salt(store).await?;
            Some(mode.as_str())
        }
    };
    store.set_setting(MODE_SETTING, value).await
}

/// The store's tag salt, made (32 random bytes) and recorded if it has none.
/// Two handles doing this at the same moment each write one and the last
/// is kept: values one of them tagged before keep their tags (a tag only
/// groups equal secrets within a store).
async fn ensure_salt(store: &dyn Store) -> Result<[u8; 32]> {
    if let Some(hex) = store.get_setting(SALT_SETTING).await? {
        return Ok(parse_salt(&hex)?);
    }
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt)
        .map_err(|e| PersistenceError::Unavailable(format!("no randomness from the system: {e}")))?;
    let hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    store.set_setting(SALT_SETTING, Some(&hex)).await?;
    Ok(salt)
}

/// The store's own rules.
///
/// # Errors
/// `Corrupt` for a recorded value that does not decode; store failures.
pub async fn recorded_rules(store: &dyn Store) -> Result<Vec<CustomRule>> {
    match store.get_setting(RULES_SETTING).await? {
        None => Ok(Vec::new()),
        Some(json) => {
            let pairs: Vec<(String, String)> = serde_json::from_str(&json)
                .map_err(|e| PersistenceError::Corrupt(format!("the store's redaction rules do not decode: {e}")))?;
            Ok(pairs.into_iter().map(|(name, pattern)| CustomRule { name, pattern }).collect())
        }
    }
}

/// Records `rules` as the store's own (replacing any before; empty: none).
///
/// # Errors
/// `InvalidInput` naming the first rule that is not valid (nothing is
/// recorded then); store failures.
pub async fn record_rules(store: &dyn Store, rules: &[CustomRule]) -> Result<()> {
    for r in rules {
        check_custom_rule(r)?;
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(twice) = rules.iter().find(|r| !names.insert(r.name.as_str())) {
        return Err(PersistenceError::InvalidInput(format!("redaction rule {:?} is named twice", twice.name)).into());
    }
    if rules.is_empty() {
        return store.set_setting(RULES_SETTING, None).await;
    }
    let pairs: Vec<(&str, &str)> = rules.iter().map(|r| (r.name.as_str(), r.pattern.as_str())).collect();
    store.set_setting(RULES_SETTING, Some(&serde_json::to_string(&pairs)?)).await
}

/// The redactor of `store` as recorded (its salt and rules), whatever its
/// mode: for writing through it (`with_redaction`, `koda-store copy
/// --redact`). A store with no salt yet gets one recorded, so one secret
/// keeps one tag in it from then on.
///
/// # Errors
/// `Corrupt` for a recorded salt or rule that does not decode; store
/// failures.
pub async fn store_redactor(store: &dyn Store) -> Result<Arc<Redactor>> {
    let salt = ensure_salt(store).await?;
    Ok(Arc::new(Redactor::with_custom(salt, &recorded_rules(store).await?)?))
}

/// The redactor of `store` for what is read out of it (`export`, `show`
/// and `search` with `--redact`): its salt and rules when it records
/// them, else a salt of this call's own. Writes nothing: a store opened
/// only to read stays as it was.
///
/// # Errors
/// As [`store_redactor`]; `Unavailable` when the system gives no
/// randomness.
pub async fn reading_redactor(store: &dyn Store) -> Result<Arc<Redactor>> {
    let salt = match store.get_setting(SALT_SETTING).await? {
        Some(hex) => parse_salt(&hex)?,
        None => {
            let mut salt = [0u8; 32];
            getrandom::fill(&mut salt)
                .map_err(|e| PersistenceError::Unavailable(format!("no randomness from the system: {e}")))?;
            salt
        }
    };
    Ok(Arc::new(Redactor::with_custom(salt, &recorded_rules(store).await?)?))
}

fn parse_salt(hex: &str) -> Result<[u8; 32], PersistenceError> {
    let corrupt = || PersistenceError::Corrupt("the store's redaction salt is not 64 hex digits".into());
    if hex.len() != 64 {
        return Err(corrupt());
    }
    let mut salt = [0u8; 32];
    for (i, b) in salt.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(corrupt)?, 16).map_err(|_| corrupt())?;
    }
    Ok(salt)
}

/// `store` as its redaction mode says: wrapped in [`Redacting`] when the
/// mode is `secrets`, as it is otherwise.
///
/// `wanted` is what the URL asks (`redact=`): `None` takes the recorded
/// mode; a mode the store has not recorded is recorded when it is
/// `secrets` (the first open with `redact=secrets`) and refused when the
/// store records `secrets` and the URL asks `off`.
///
/// # Errors
/// `InvalidInput` naming `koda-store redact --mode` when `wanted` differs
/// from the recorded mode; as [`store_redactor`].
pub async fn with_redaction(store: Arc<dyn Store>, wanted: Option<RedactMode>) -> Result<Arc<dyn Store>> {
    let recorded = recorded_mode(store.as_ref()).await?;
    let mode = match (recorded, wanted) {
        (r, None) => r,
        (r, Some(w)) if r == w => r,
        (RedactMode::Off, Some(RedactMode::Secrets)) => {
            record_mode(store.as_ref(), RedactMode::Secrets).await?;
            RedactMode::Secrets
        }
        (r, Some(w)) => {
            return Err(PersistenceError::InvalidInput(format!(
                "{REDACT}={}: this store's redaction mode is {}; change it with `koda-store redact --mode {}`",
                w.as_str(),
                r.as_str(),
                w.as_str()
            ))
            .into());
        }
    };
    match mode {
        RedactMode::Off => Ok(store),
        RedactMode::Secrets => {
            let redactor = store_redactor(store.as_ref()).await?;
            Ok(Arc::new(Redacting::new(store, redactor)))
        }
    }
}

/// A store with redaction mode `secrets`: `content`, `full_content`,
/// `tool_calls` (kept valid JSON), titles, modes, metadata and TODO values,
/// compaction summaries, the stub of `clear_message_content` and imported
/// records are redacted before the store inside sees them (so before a
/// body is addressed: a stored-once output is the redacted text). Reads,
/// ids, roles, agents, roots and counters pass unchanged.
/// `koda_persistence::open` puts it around a store whose recorded mode is
/// `secrets` (see [`crate::secrets`]).
pub struct Redacting {
    inner: Arc<dyn Store>,
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for Redacting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redacting").field("redactor", &self.redactor).finish_non_exhaustive()
    }
}

impl Redacting {
    /// `inner`, redacting with `redactor`.
    pub fn new(inner: Arc<dyn Store>, redactor: Arc<Redactor>) -> Self {
        Self { inner, redactor }
    }

    /// The store inside.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// `text`, redacted.
    fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.redactor.redact(text)
    }

    /// `text`, redacted, if there is one.
    fn opt(&self, text: Option<&str>) -> Option<String> {
        text.map(|t| self.redactor.redact(t).into_owned())
    }

    /// Tool calls, redacted as JSON.
    fn calls(&self, text: Option<&str>) -> Option<String> {
        text.map(|t| self.redactor.redact_json(t, &mut BTreeMap::new()).into_owned())
    }
}

impl Store for Redacting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
