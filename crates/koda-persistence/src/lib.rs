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
//! enable. The API crate is re-exported, so `koda_persistence::Role`,
//! `koda_persistence::PersistenceError`, … are available from here.
#![deny(missing_docs)]

use std::sync::Arc;

pub use koda_persistence_api::*;

/// The backends this build can open, by URL scheme.
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

/// Which backend a URL names, and the rest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'a> {
    Memory,
    Sqlite(&'a str),
    Postgres(&'a str),
    Sled(&'a str),
}

fn parse(url: &str) -> Result<Target<'_>, PersistenceError> {
    let url = url.trim();
    if url == "memory:" || url == "memory://" {
        return Ok(Target::Memory);
    }
    if url == "sqlite::memory:" {
        return Ok(Target::Sqlite(url));
    }
    if url.starts_with("sqlite://") || url.starts_with("sqlite:") {
        return Ok(Target::Sqlite(url));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url));
    }
    if let Some(path) = url.strip_prefix("sled://") {
        if path.is_empty() {
            return Err(PersistenceError::InvalidInput(
                "sled:// needs a directory path, e.g. sled:///var/lib/koda/store".into(),
            ));
        }
        return Ok(Target::Sled(path));
    }
    let scheme = url.split(':').next().unwrap_or("");
    Err(PersistenceError::InvalidInput(format!(
        "unknown store URL scheme {scheme:?}: use memory:, sqlite://PATH, sqlite::memory:, \
         postgres://…, postgresql://… or sled://PATH"
    )))
}

#[cfg(not(all(
    feature = "memory",
    feature = "sqlite",
    feature = "postgres",
    feature = "sled"
)))]
fn compiled_out(feature: &str) -> anyhow::Error {
    PersistenceError::InvalidInput(format!(
        "this build of koda-persistence has no {feature} backend: enable the cargo feature \
         `{feature}` (koda-persistence = {{ features = [\"{feature}\"] }}); compiled backends: {}",
        COMPILED_BACKENDS.join(", ")
    ))
    .into()
}

/// Opens the store a URL names, on the system clock.
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
#[allow(unused_variables)]
pub async fn open_with_clock(
    url: &str,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Persistence>> {
    match parse(url)? {
        #[cfg(feature = "memory")]
        Target::Memory => Ok(Arc::new(koda_persistence_memory::MemoryStore::with_clock(
            clock,
        ))),
        #[cfg(not(feature = "memory"))]
        Target::Memory => Err(compiled_out("memory")),
        #[cfg(feature = "sqlite")]
        Target::Sqlite(url) => Ok(Arc::new(
            koda_persistence_sqlite::SqliteStore::open_url(url, clock).await?,
        )),
        #[cfg(not(feature = "sqlite"))]
        Target::Sqlite(_) => Err(compiled_out("sqlite")),
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => Ok(Arc::new(
            koda_persistence_postgres::PostgresStore::connect_url(url, clock).await?,
        )),
        #[cfg(not(feature = "postgres"))]
        Target::Postgres(_) => Err(compiled_out("postgres")),
        #[cfg(feature = "sled")]
        Target::Sled(path) => Ok(Arc::new(
            koda_persistence_sled::SledStore::open_path(path, clock).await?,
        )),
        #[cfg(not(feature = "sled"))]
        Target::Sled(_) => Err(compiled_out("sled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(parse("memory:"), Ok(Target::Memory));
        assert_eq!(
            parse("sqlite::memory:"),
            Ok(Target::Sqlite("sqlite::memory:"))
        );
        assert_eq!(
            parse("sqlite:///tmp/x.db"),
            Ok(Target::Sqlite("sqlite:///tmp/x.db"))
        );
        assert_eq!(
            parse("postgres://u@h/db"),
            Ok(Target::Postgres("postgres://u@h/db"))
        );
        assert_eq!(
            parse("postgresql://h/db"),
            Ok(Target::Postgres("postgresql://h/db"))
        );
        assert_eq!(parse("sled:///tmp/s"), Ok(Target::Sled("/tmp/s")));
        assert!(parse("sled://").is_err());
    }

    #[tokio::test]
    async fn unknown_scheme_names_the_supported_ones() {
        let Err(err) = open("mysql://root@localhost/koda").await else {
            panic!("must fail")
        };
        let pe = err.downcast_ref::<PersistenceError>().expect("typed");
        assert!(
            matches!(pe, PersistenceError::InvalidInput(m) if m.contains("\"mysql\"") && m.contains("sqlite://PATH"))
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
            err.downcast_ref::<PersistenceError>(),
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
            err.downcast_ref::<PersistenceError>(),
            Some(PersistenceError::InvalidInput(_))
        ));
    }
}
