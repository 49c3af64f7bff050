//! What backend authors share, and koda code never needs: the [`Backend`]
//! trait every backend crate implements (its schemes, its options from a
//! [`StoreUrl`], its open), argument checks, timestamp formatting, the URL
//! parameter grammar, the context passes and cache, and the
//! inserted-message record. Every contract rule a backend would otherwise
//! copy lives here once.

use std::sync::Arc;

pub use crate::args::{
    assign_ids, check_claim, check_kept, check_limit, check_message_records, check_session_id, check_session_record,
    check_usage, id_taken, limit_bound, message_not_found, root_to_str, session_not_found,
};
pub use crate::cache::{ContextCache, DEFAULT_CACHED_SESSIONS, Removed, SharedContextCache};
pub use crate::clock::{format_timestamp, idle_secs};
pub use crate::context::{ContextRow, apply_context_passes, is_blank, named_tool_call_ids};
pub use crate::types::NewMessage;
pub use crate::url;
pub use crate::url::StoreUrl;
pub use crate::usage::{
    DEFAULT_AGENT, ExactUsage, UsageTally, order_usage_groups, purge_cutoff, usage_by_agent, usage_total,
};

use crate::capabilities::Encryption;
use crate::clock::Clock;
use crate::error::PersistenceError;
use crate::layers::checked::Checked;
use crate::store::Store;

/// Creates `dir` and its missing parents private to their owner (0700 on
/// Unix, whatever the umask): the directories a backend makes for its
/// files. The one place this crate creates anything; backends call it
/// before their driver writes.
///
/// # Errors
/// The file system's.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// One backend: how its URLs look, how they become options, and how a
/// store opens. Each backend crate implements it on a unit type
/// (`koda_persistence_sqlite::Sqlite`, …); the facade's table of backends
/// is a list of these, and [`open_url`] is the one way from a URL to a
/// store.
///
/// The opening contract:
/// - the URL is parsed once ([`StoreUrl::parse`]), by the caller of
///   [`options`](Self::options), never again inside the backend;
/// - [`options`](Self::options) reads the location and takes each
///   parameter it knows once; any parameter left is `InvalidInput` naming
///   it (the caller runs [`StoreUrl::finish`]);
/// - options built in code are checked as a URL's are (`validate`), inside
///   [`open`](Self::open);
/// - [`open`](Self::open) returns the bare store: the contract's argument
///   checks are not in it but in [`Checked`], which [`open_url`] and
///   [`open_checked`] put around it.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, which is also its cargo feature in the facade
    /// (`memory`, `sqlite`, `postgres`, `sled`).
    const NAME: &'static str;
    /// The URL schemes it opens, in lower case.
    const SCHEMES: &'static [&'static str];
    /// Its URL shapes, for error messages (`sqlite://PATH, sqlite::memory:`).
    const EXAMPLE: &'static str;
    /// How `key_file=` encrypts this backend's stores
    /// ([`Encryption::None`]: this build cannot encrypt them, and a URL
    /// naming a key file is refused before the backend reads it, with
    /// the one message every such backend gives).
    const ENCRYPTION: Encryption;
    /// What an open needs: location, durability, timeouts.
    type Options: Send + 'static;
    /// The store it opens.
    type Store: Store + 'static;

    /// The options `url` names. The caller has checked the scheme and
    /// runs [`StoreUrl::finish`] afterwards.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter or location that is wrong.
    fn options(url: &StoreUrl) -> Result<Self::Options, PersistenceError>;

    /// Opens (creating or migrating as the options allow) the store.
    ///
    /// # Errors
    /// `InvalidInput` for options that fail their checks; otherwise the
    /// backend's (`Unavailable`, `Corrupt`, `PermissionDenied`, …).
    async fn open(options: Self::Options, clock: Arc<dyn Clock>) -> anyhow::Result<Self::Store>;
}

/// Declares a backend: the unit struct `$name` and its [`Backend`] impl,
/// whose `options` is `$options::from_url` and whose `open` is
/// `$store::open`, the two inherent functions every backend crate has.
///
/// ```ignore
/// koda_persistence_api::declare_backend!(
///     /// The sled backend.
///     Sled, "sled", SCHEMES, "sled://PATH", Encryption::Fields, SledOptions, SledStore
/// );
/// ```
#[macro_export]
macro_rules! declare_backend {
    ($(#[$doc:meta])* $name:ident, $id:literal, $schemes:expr, $example:literal, $encryption:expr, $options:ty, $store:ty $(,)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        #[async_trait::async_trait]
        impl $crate::backend::Backend for $name {
            const NAME: &'static str = $id;
            const SCHEMES: &'static [&'static str] = $schemes;
            const EXAMPLE: &'static str = $example;
            const ENCRYPTION: $crate::Encryption = $encryption;
            type Options = $options;
            type Store = $store;

            fn options(url: &$crate::backend::StoreUrl) -> Result<$options, $crate::PersistenceError> {
                <$options>::from_url(url)
            }

            async fn open(options: $options, clock: std::sync::Arc<dyn $crate::Clock>) -> anyhow::Result<$store> {
                <$store>::open(options, clock).await
            }
        }
    };
}

/// `url`'s options for backend `B`: parsed once, the scheme checked, every
/// parameter taken or refused.
///
/// # Errors
/// `InvalidInput` for a URL of another scheme, a bad location or parameter.
pub fn options_of<B: Backend>(url: &str) -> Result<B::Options, PersistenceError> {
    options_from::<B>(&StoreUrl::parse(url)?)
}

/// As [`options_of`], for a URL already parsed.
///
/// # Errors
/// As [`options_of`].
pub fn options_from<B: Backend>(url: &StoreUrl) -> Result<B::Options, PersistenceError> {
    if !B::SCHEMES.contains(&url.scheme()) {
        return Err(PersistenceError::InvalidInput(format!(
            "not a {} URL (scheme {:?}): use {}",
            B::NAME,
            url.scheme(),
            B::EXAMPLE
        )));
    }
    if !B::ENCRYPTION.is_encrypted() && url.has(crate::cipher::KEY_FILE) {
        return Err(PersistenceError::InvalidInput(format!(
            "{}: the {} backend does not encrypt its stores, so it would not be \
             encrypted; remove {0}, or use a backend that encrypts at rest \
             (sqlite with the sqlcipher feature, sled)",
            crate::cipher::KEY_FILE,
            B::NAME
        )));
    }
    let options = B::options(url)?;
    url.finish(B::NAME)?;
    Ok(options)
}

/// Opens backend `B` with `options`, behind the [`Checked`] layer.
///
/// # Errors
/// As [`Backend::open`].
pub async fn open_checked<B: Backend>(options: B::Options, clock: Arc<dyn Clock>) -> anyhow::Result<Checked<B::Store>> {
    Ok(Checked::new(B::open(options, clock).await?))
}

/// Opens the URL with backend `B`, behind the [`Checked`] layer.
///
/// # Errors
/// As [`options_of`] and [`Backend::open`].
pub async fn open_url<B: Backend>(url: &str, clock: Arc<dyn Clock>) -> anyhow::Result<Checked<B::Store>> {
    open_checked::<B>(options_of::<B>(url)?, clock).await
}
