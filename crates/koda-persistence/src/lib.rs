//! koda's storage layer: one [`Persistence`] trait, several backends, opened by URL.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let store = koda_persistence::open("memory:").await?;
//! let id = store.create_session("main", std::path::Path::new("/my/project")).await?;
//! # Ok(()) }
//! ```
//!
//! | URL | backend | cargo feature |
//! |---|---|---|
//! | `memory:` | [`MemoryStore`](koda_persistence_memory::MemoryStore), nothing persists | `memory` (default) |
//! | `sqlite://PATH`, `sqlite:///abs/path.db`, `sqlite::memory:` | SQLite file | `sqlite` (default) |
//! | `postgres://…`, `postgresql://…` | PostgreSQL (`?schema=NAME` for a team's own schema) | `postgres` |
//! | `sled://PATH` (`?flush=every_write\|manual`, `?flush_every_ms=N`) | sled directory | `sled` |
//!
//! A URL whose backend was compiled out is an error naming the feature to
//! enable. Every store opened here is wrapped in [`Checked`] (the
//! contract's argument checks) and [`Traced`] (a span per call), and a
//! store whose redaction mode is `secrets` in [`Redacting`] (every backend
//! takes `?redact=secrets|off`: see [`redaction`]).
//!
//! - The URL is parsed once ([`StoreUrl`]); its scheme picks one
//!   registration in the table of backends, whose [`Backend`] impl reads
//!   the options (each parameter taken once, an unknown one refused).
//! - Options built in code open through [`open_options`]
//!   (`open_options::<sqlite::Sqlite>(sqlite::SqliteOptions::file(path), clock)`);
//!   each compiled-in backend crate is reachable as `sqlite`, `postgres`,
//!   … for its option types.
//! - [`admin`] has what an administrator's tool needs beyond the trait.
//!
//! What koda code uses of the API crate is re-exported here
//! (`koda_persistence::Role`, `koda_persistence::PersistenceError`, …);
//! helpers for writing a backend stay in `koda_persistence_api::backend`.
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The opening contract every backend implements, and a URL parsed once:
/// for [`open_options`] and for tools that read a URL's parameters.
pub use koda_persistence_api::backend::{Backend, StoreUrl, options_of};

/// A URL as it may be shown: its password replaced by `***`.
pub use koda_persistence_api::url::redact as redact_url;

/// The in-memory backend's own types (its options, its `Backend`).
#[cfg(feature = "memory")]
pub use koda_persistence_memory as memory;
/// The PostgreSQL backend's own types (`PostgresOptions`, `Pooler`, …).
#[cfg(feature = "postgres")]
pub use koda_persistence_postgres as postgres;
/// The sled backend's own types (`SledOptions`, `FlushPolicy`, …).
#[cfg(feature = "sled")]
pub use koda_persistence_sled as sled;
/// The SQLite backend's own types (`SqliteOptions`, `Synchronous`, …).
#[cfg(feature = "sqlite")]
pub use koda_persistence_sqlite as sqlite;

pub mod admin;

/// Large outputs stored once: which fields are bodies, their accounting.
pub use koda_persistence_api::bodies;

/// Full-text search: the words, the query grammar, hits and their order.
pub use koda_persistence_api::search;

/// Deleted sessions kept for a grace period: `keep_deleted_days`, expiry,
/// restore.
pub use koda_persistence_api::trash;

/// What a store supports, declared by its backend.
pub use koda_persistence_api::capabilities;

/// Usage history that survives pruning: the ledger and its queries.
pub use koda_persistence_api::ledger;

/// Stored text replaced in place: what cleaning a history rewrites.
pub use koda_persistence_api::rewrite;

/// Credentials found in text, and the rules that find them.
pub use koda_persistence_api::secrets;

/// A store's redaction mode, salt and rules, and the layer that applies
/// them.
pub use koda_persistence_api::redaction;

pub use koda_persistence_api::{
    Bodies, BodyStats, COMPACTION_HINT, Capabilities, Checked, Clock, CompactedStats, DeletedSession, Encryption, Fork,
    Handles, Health, INTERRUPTION_PREVIEW_CHARS, InterruptionKind, Ledger, MAX_SESSION_ID_BYTES, MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS, ManualClock, Message, MessageRecord, MetadataRecord, Persistence, PersistenceError, Redacting,
    Rewrite, Role, SLOW_CALL, Search, SearchHit, SearchIndex, SearchScope, SessionInfo, SessionRecord, SessionUsage,
    Settings, Store, StoreHealth, SystemClock, TODO_KEY, TokenUsage, Traced, Transfer, Trash, detect_interruption,
    session_checksum,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The backends this build can open, by cargo feature.
pub const COMPILED_BACKENDS: &[&str] = &[
    #[cfg(feature = "memory")]
    "memory",
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "sled")]
    "sled",
];

type Opening = Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Store>>> + Send>>;
/// From a parsed URL to an opening store: the options are read (and the
/// URL finished) before anything is opened.
type Opener = fn(&StoreUrl, Arc<dyn Clock>) -> Result<Opening, PersistenceError>;

/// One backend in the table: its cargo feature, its URL schemes, and, when
/// the feature is on, how to open one of its URLs.
struct Registration {
    feature: &'static str,
    schemes: &'static [&'static str],
    example: &'static str,
    open: Option<Opener>,
}

impl Registration {
    /// A compiled-in backend, described by its own [`Backend`] impl.
    #[cfg(any(feature = "memory", feature = "sqlite", feature = "postgres", feature = "sled"))]
    const fn of<B: Backend>() -> Self {
        Self { feature: B::NAME, schemes: B::SCHEMES, example: B::EXAMPLE, open: Some(open_as::<B> as Opener) }
    }

    /// A backend this build left out: enough to name its feature.
    #[cfg(not(all(feature = "memory", feature = "sqlite", feature = "postgres", feature = "sled")))]
    const fn absent(feature: &'static str, schemes: &'static [&'static str], example: &'static str) -> Self {
        Self { feature, schemes, example, open: None }
    }
}

/// Opens `url` with backend `B`, as [`open_options`] does.
#[cfg(any(feature = "memory", feature = "sqlite", feature = "postgres", feature = "sled"))]
fn open_as<B: Backend>(url: &StoreUrl, clock: Arc<dyn Clock>) -> Result<Opening, PersistenceError> {
    let wanted = match url.take(secrets::REDACT) {
        Some(p) => Some(secrets::RedactMode::parse(&p.value)?),
        None => None,
    };
    let options = koda_persistence_api::backend::options_from::<B>(url)?;
    Ok(Box::pin(async move { redaction::with_redaction(open_layered::<B>(options, clock).await?, wanted).await }))
}

/// Backend `B`'s store behind [`Checked`] and [`Traced`].
async fn open_layered<B: Backend>(options: B::Options, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Store>> {
    let store = B::open(options, clock).await?;
    Ok(Arc::new(Traced::new(Checked::new(store), B::NAME)))
}

/// Opens backend `B` with options built in code (or read with
/// `B::options`), as [`open`] opens a URL: behind the [`Checked`] layer
/// and [`Traced`], and [`Redacting`] when the store records redaction mode
/// `secrets`. For tools that choose each store's location themselves
/// (`koda_persistence::sqlite::SqliteOptions::file(path)`, …).
///
/// # Errors
/// As [`open`]; `InvalidInput` for options that fail their checks.
pub async fn open_options<B: Backend>(options: B::Options, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Store>> {
    redaction::with_redaction(open_layered::<B>(options, clock).await?, None).await
}

/// Every backend, compiled in or not. Adding a backend is one entry here
/// (its `Backend` impl) and its cargo feature.
const BACKENDS: &[Registration] = &[
    #[cfg(feature = "memory")]
    Registration::of::<memory::Memory>(),
    #[cfg(not(feature = "memory"))]
    Registration::absent("memory", &["memory"], "memory:"),
    #[cfg(feature = "sqlite")]
    Registration::of::<sqlite::Sqlite>(),
    #[cfg(not(feature = "sqlite"))]
    Registration::absent("sqlite", &["sqlite"], "sqlite://PATH, sqlite::memory:"),
    #[cfg(feature = "postgres")]
    Registration::of::<postgres::Postgres>(),
    #[cfg(not(feature = "postgres"))]
    Registration::absent("postgres", &["postgres", "postgresql"], "postgres://…, postgresql://…"),
    #[cfg(feature = "sled")]
    Registration::of::<sled::Sled>(),
    #[cfg(not(feature = "sled"))]
    Registration::absent("sled", &["sled"], "sled://PATH"),
];

/// The backend registered for `scheme` (lower case).
fn backend_of(scheme: &str) -> Result<&'static Registration, PersistenceError> {
    BACKENDS.iter().find(|b| b.schemes.contains(&scheme)).ok_or_else(|| {
        let known: Vec<&str> = BACKENDS.iter().map(|b| b.example).collect();
        PersistenceError::InvalidInput(format!("unknown store URL scheme {scheme:?}: use {}", known.join(", ")))
    })
}

/// Opens the store a URL names, on the system clock. The store is
/// [`Traced`]: every call runs in a `tracing` span (backend, method,
/// session id) and logs its duration at `debug`, or at `warn` past
/// [`SLOW_CALL`].
///
/// The handle is a whole [`Store`]: koda's [`Persistence`] calls and
/// every capability ([`Transfer`], [`Search`], [`Fork`], [`Trash`],
/// [`Health`]), with what the store supports in
/// [`Store::capabilities`]. It coerces to `Arc<dyn Persistence>` where
/// only koda's calls are wanted.
///
/// # Errors
/// `InvalidInput` for an unknown scheme or a backend compiled out (naming the
/// feature to enable); otherwise whatever the backend's open reports
/// (`Unavailable`, `Corrupt`, …). Passwords in URLs never appear in errors.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    open_with_clock(url, Arc::new(SystemClock)).await
}

/// Opens the store a URL names, reading time from `clock`.
///
/// # Errors
/// As [`open`].
pub async fn open_with_clock(url: &str, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Store>> {
    let parsed = StoreUrl::parse(url)?;
    let backend = backend_of(parsed.scheme())?;
    match backend.open {
        Some(open) => {
            let opening = open(&parsed, clock)?;
            drop(parsed);
            opening.await
        }
        None => Err(PersistenceError::InvalidInput(format!(
            "this build of koda-persistence has no {f} backend: enable the cargo feature \
             `{f}` (koda-persistence = {{ features = [\"{f}\"] }}); compiled backends: {}",
            COMPILED_BACKENDS.join(", "),
            f = backend.feature,
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_names_its_backend() {
        for (url, feature) in [
            ("memory:", "memory"),
            ("memory://", "memory"),
            ("sqlite::memory:", "sqlite"),
            ("sqlite:///tmp/x.db", "sqlite"),
            ("  sqlite://rel.db", "sqlite"),
            ("postgres://u@h/db", "postgres"),
            ("postgresql://h/db", "postgres"),
            ("sled:///tmp/s", "sled"),
        ] {
            let scheme = StoreUrl::parse(url).map(|u| u.scheme().to_owned());
            let found = scheme.and_then(|s| backend_of(&s).map(|b| b.feature));
            assert_eq!(found, Ok(feature), "{url}");
        }
        assert!(backend_of("mysql").is_err());
        assert!(StoreUrl::parse("").is_err());
    }

    /// Each compiled-in backend is registered once, with an opener; no
    /// scheme is registered twice.
    #[test]
    fn every_compiled_backend_is_registered_once() {
        for feature in COMPILED_BACKENDS {
            let rows: Vec<_> = BACKENDS.iter().filter(|b| b.feature == *feature).collect();
            assert_eq!(rows.len(), 1, "{feature}");
            assert!(rows.iter().all(|b| b.open.is_some()), "{feature} compiled in");
        }
        assert_eq!(BACKENDS.iter().filter(|b| b.open.is_some()).count(), COMPILED_BACKENDS.len());
        let mut schemes: Vec<&str> = BACKENDS.iter().flat_map(|b| b.schemes.iter().copied()).collect();
        let all = schemes.len();
        schemes.sort_unstable();
        schemes.dedup();
        assert_eq!(schemes.len(), all, "a scheme is registered twice");
    }

    #[tokio::test]
    async fn unknown_scheme_names_the_supported_ones() {
        let Err(err) = open("mysql://root@localhost/koda").await else { panic!("must fail") };
        let pe = PersistenceError::of(&err).expect("typed");
        assert!(
            matches!(pe, PersistenceError::InvalidInput(m) if m.contains("\"mysql\"") && m.contains("sqlite://PATH") && m.contains("sled://PATH"))
        );
    }

    #[cfg(not(feature = "sled"))]
    #[tokio::test]
    async fn compiled_out_backend_names_the_feature() {
        let Err(err) = open("sled:///tmp/x").await else { panic!("must fail") };
        assert!(err.to_string().contains("cargo feature `sled`"), "{err}");
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn compiled_out_postgres_names_the_feature_without_the_password() {
        let Err(err) = open("postgres://u:hunter2@localhost/db").await else { panic!("must fail") };
        let shown = format!("{err:#} {err:?}");
        assert!(shown.contains("cargo feature `postgres`"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[cfg(feature = "sled")]
    #[tokio::test]
    async fn sled_url_opens_a_directory_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sled://{}?flush=every_write", dir.path().join("s").display());
        let store = open(&url).await.expect("opens");
        let id = store.create_session("main", std::path::Path::new("/p")).await.expect("creates");
        assert_eq!(store.list_sessions(5, std::path::Path::new("/p")).await.expect("lists")[0].id, id);
        let Err(err) = open("sled:///tmp/x?flush=sometimes").await else { panic!("bad option") };
        assert!(matches!(PersistenceError::of(&err), Some(PersistenceError::InvalidInput(_))));
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_url_opens_a_working_store() {
        let store = open("memory:").await.expect("opens");
        let id = store.create_session("main", std::path::Path::new("/p")).await.expect("creates");
        assert_eq!(store.list_sessions(5, std::path::Path::new("/p")).await.expect("lists")[0].id, id);
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_urls_open_file_and_memory_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("koda.db");
        let url = format!("sqlite://{}", path.display());
        let store = open(&url).await.expect("opens a file");
        let id = store.create_session("main", std::path::Path::new("/p")).await.expect("creates");
        drop(store);
        assert!(path.exists());
        let again = open(&url).await.expect("reopens");
        assert_eq!(again.list_sessions(5, std::path::Path::new("/p")).await.expect("lists")[0].id, id);
        let mem = open("sqlite::memory:").await.expect("opens memory");
        assert!(mem.list_sessions(5, std::path::Path::new("/p")).await.expect("lists").is_empty());
        let Err(err) = open("sqlite:///tmp/x.db?synchronous=sometimes").await else { panic!("bad option") };
        assert!(matches!(PersistenceError::of(&err), Some(PersistenceError::InvalidInput(_))));
    }
}
