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
//! enable. What koda code uses of the API crate is re-exported here
//! (`koda_persistence::Role`, `koda_persistence::PersistenceError`, …);
//! helpers for writing a backend stay in `koda_persistence_api::backend`.
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use koda_persistence_api::{
    COMPACTION_HINT, Checked, Clock, CompactedStats, INTERRUPTION_PREVIEW_CHARS, Import,
    InterruptionKind, MAX_SESSION_ID_BYTES, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, ManualClock,
    Message, MessageRecord, MetadataRecord, Persistence, PersistenceError, Role, SLOW_CALL,
    SessionInfo, SessionRecord, SessionUsage, StoreHealth, SystemClock, TODO_KEY, TokenUsage,
    Traced, detect_interruption, session_checksum,
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

type Opening = Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Import>>> + Send>>;
type Opener = fn(String, Arc<dyn Clock>) -> Opening;

/// One backend: its cargo feature, its URL schemes, and how to open one of
/// its URLs when the feature is on.
struct Backend {
    feature: &'static str,
    schemes: &'static [&'static str],
    example: &'static str,
    open: Option<Opener>,
}

/// An [`Opener`] for a store type with `open_url(&str, Arc<dyn Clock>)`.
#[cfg(any(
    feature = "memory",
    feature = "sqlite",
    feature = "postgres",
    feature = "sled"
))]
macro_rules! opener {
    ($store:ty, $name:literal) => {
        Some(|url: String, clock: Arc<dyn Clock>| -> Opening {
            Box::pin(async move {
                let store = <$store>::open_url(&url, clock).await?;
                Ok(Arc::new(Traced::new(Checked::new(store), $name)) as Arc<dyn Import>)
            })
        })
    };
}

/// Every backend, compiled in or not. Adding a backend is one entry here
/// (and its cargo feature).
const BACKENDS: &[Backend] = &[
    Backend {
        feature: "memory",
        schemes: &["memory"],
        example: "memory:",
        #[cfg(feature = "memory")]
        open: opener!(koda_persistence_memory::MemoryStore, "memory"),
        #[cfg(not(feature = "memory"))]
        open: None,
    },
    Backend {
        feature: "sqlite",
        schemes: &["sqlite"],
        example: "sqlite://PATH, sqlite::memory:",
        #[cfg(feature = "sqlite")]
        open: opener!(koda_persistence_sqlite::SqliteStore, "sqlite"),
        #[cfg(not(feature = "sqlite"))]
        open: None,
    },
    Backend {
        feature: "postgres",
        schemes: &["postgres", "postgresql"],
        example: "postgres://…, postgresql://…",
        #[cfg(feature = "postgres")]
        open: opener!(koda_persistence_postgres::PostgresStore, "postgres"),
        #[cfg(not(feature = "postgres"))]
        open: None,
    },
    Backend {
        feature: "sled",
        schemes: &["sled"],
        example: "sled://PATH",
        #[cfg(feature = "sled")]
        open: opener!(koda_persistence_sled::SledStore, "sled"),
        #[cfg(not(feature = "sled"))]
        open: None,
    },
];

/// The backend a URL's scheme (the text before its first `:`) names.
fn backend_of(url: &str) -> Result<&'static Backend, PersistenceError> {
    let scheme = url.trim().split(':').next().unwrap_or("");
    BACKENDS
        .iter()
        .find(|b| b.schemes.contains(&scheme))
        .ok_or_else(|| {
            let known: Vec<&str> = BACKENDS.iter().map(|b| b.example).collect();
            PersistenceError::InvalidInput(format!(
                "unknown store URL scheme {scheme:?}: use {}",
                known.join(", ")
            ))
        })
}

/// Opens the store a URL names, on the system clock. The store is
/// [`Traced`]: every call runs in a `tracing` span (backend, method,
/// session id) and logs its duration at `debug`, or at `warn` past
/// [`SLOW_CALL`].
///
/// # Errors
/// `InvalidInput` for an unknown scheme or a backend compiled out (naming the
/// feature to enable); otherwise whatever the backend's open reports
/// (`Unavailable`, `Corrupt`, …). Passwords in URLs never appear in errors.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Persistence>> {
    open_with_clock(url, Arc::new(SystemClock)).await
}

/// Opens the store a URL names, reading time from `clock`.
///
/// # Errors
/// As [`open`].
pub async fn open_with_clock(
    url: &str,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Persistence>> {
    let store: Arc<dyn Persistence> = open_import_with_clock(url, clock).await?;
    Ok(store)
}

/// Opens the store a URL names with its [`Import`] side too (whole
/// sessions out and in, every field kept: what `koda-store export`,
/// `import` and `copy` use).
///
/// # Errors
/// As [`open`].
pub async fn open_import(url: &str) -> anyhow::Result<Arc<dyn Import>> {
    open_import_with_clock(url, Arc::new(SystemClock)).await
}

/// [`open_import`], reading time from `clock`.
///
/// # Errors
/// As [`open`].
pub async fn open_import_with_clock(
    url: &str,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Import>> {
    let backend = backend_of(url)?;
    match backend.open {
        Some(open) => open(url.trim().to_owned(), clock).await,
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
            assert_eq!(backend_of(url).map(|b| b.feature), Ok(feature), "{url}");
        }
        assert!(backend_of("mysql://x").is_err());
        assert!(backend_of("").is_err());
    }

    /// The table's schemes are the ones each compiled-in backend declares.
    #[test]
    fn the_table_agrees_with_the_backends() {
        let declared: &[(&str, &[&str])] = &[
            #[cfg(feature = "memory")]
            ("memory", koda_persistence_memory::SCHEMES),
            #[cfg(feature = "sqlite")]
            ("sqlite", koda_persistence_sqlite::SCHEMES),
            #[cfg(feature = "postgres")]
            ("postgres", koda_persistence_postgres::SCHEMES),
            #[cfg(feature = "sled")]
            ("sled", koda_persistence_sled::SCHEMES),
        ];
        for (feature, schemes) in declared {
            let row = BACKENDS.iter().find(|b| b.feature == *feature);
            assert_eq!(row.map(|b| b.schemes), Some(*schemes), "{feature}");
            assert!(
                row.is_some_and(|b| b.open.is_some()),
                "{feature} compiled in"
            );
        }
        assert_eq!(
            BACKENDS.iter().filter(|b| b.open.is_some()).count(),
            COMPILED_BACKENDS.len()
        );
    }

    #[tokio::test]
    async fn unknown_scheme_names_the_supported_ones() {
        let Err(err) = open("mysql://root@localhost/koda").await else {
            panic!("must fail")
        };
        let pe = PersistenceError::of(&err).expect("typed");
        assert!(
            matches!(pe, PersistenceError::InvalidInput(m) if m.contains("\"mysql\"") && m.contains("sqlite://PATH") && m.contains("sled://PATH"))
        );
    }

    #[cfg(not(feature = "sled"))]
    #[tokio::test]
    async fn compiled_out_backend_names_the_feature() {
        let Err(err) = open("sled:///tmp/x").await else {
            panic!("must fail")
        };
        assert!(err.to_string().contains("cargo feature `sled`"), "{err}");
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn compiled_out_postgres_names_the_feature_without_the_password() {
        let Err(err) = open("postgres://u:hunter2@localhost/db").await else {
            panic!("must fail")
        };
        let shown = format!("{err:#} {err:?}");
        assert!(shown.contains("cargo feature `postgres`"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[cfg(feature = "sled")]
    #[tokio::test]
    async fn sled_url_opens_a_directory_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "sled://{}?flush=every_write",
            dir.path().join("s").display()
        );
        let store = open(&url).await.expect("opens");
        let id = store
            .create_session("main", std::path::Path::new("/p"))
            .await
            .expect("creates");
        assert_eq!(
            store
                .list_sessions(5, std::path::Path::new("/p"))
                .await
                .expect("lists")[0]
                .id,
            id
        );
        let Err(err) = open("sled:///tmp/x?flush=sometimes").await else {
            panic!("bad option")
        };
        assert!(matches!(
            PersistenceError::of(&err),
            Some(PersistenceError::InvalidInput(_))
        ));
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_url_opens_a_working_store() {
        let store = open("memory:").await.expect("opens");
        let id = store
            .create_session("main", std::path::Path::new("/p"))
            .await
            .expect("creates");
        assert_eq!(
            store
                .list_sessions(5, std::path::Path::new("/p"))
                .await
                .expect("lists")[0]
                .id,
            id
        );
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_urls_open_file_and_memory_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("koda.db");
        let url = format!("sqlite://{}", path.display());
        let store = open(&url).await.expect("opens a file");
        let id = store
            .create_session("main", std::path::Path::new("/p"))
            .await
            .expect("creates");
        drop(store);
        assert!(path.exists());
        let again = open(&url).await.expect("reopens");
        assert_eq!(
            again
                .list_sessions(5, std::path::Path::new("/p"))
                .await
                .expect("lists")[0]
                .id,
            id
        );
        let mem = open("sqlite::memory:").await.expect("opens memory");
        assert!(
            mem.list_sessions(5, std::path::Path::new("/p"))
                .await
                .expect("lists")
                .is_empty()
        );
        let Err(err) = open("sqlite:///tmp/x.db?synchronous=sometimes").await else {
            panic!("bad option")
        };
        assert!(matches!(
            PersistenceError::of(&err),
            Some(PersistenceError::InvalidInput(_))
        ));
    }
}
