//! What an administrator's tool (`koda-store`) needs beyond the
//! [`Persistence`](crate::Persistence) trait, so that it imports only this
//! crate: the purge cutoff and tool-call pairing the `purge` and `doctor`
//! commands report with, PostgreSQL's least-privilege grants, and moving
//! an SQLite file's inline large outputs into bodies (`compact-bodies`).

pub use koda_persistence_api::backend::{format_timestamp, named_tool_call_ids, purge_cutoff};

#[cfg(feature = "postgres")]
pub use koda_persistence_postgres::{connect_raw, grant, grant_sql};

#[cfg(feature = "sqlite")]
pub use koda_persistence_sqlite::BodyMove;

/// Re-encrypts the SQLite file `url` names (with its current `key_file`)
/// under the key in `new_key_file`, in place (see
/// [`SqliteStore::rekey_file`](koda_persistence_sqlite::SqliteStore::rekey_file)):
/// no other process may have it open.
///
/// # Errors
/// `InvalidInput` for a URL that is not an encrypted SQLite file;
/// `PermissionDenied` for a wrong key or a key file others may read;
/// `Unavailable` while the file is in use.
#[cfg(feature = "sqlite")]
pub async fn rekey(url: &str, new_key_file: &std::path::Path) -> anyhow::Result<()> {
    let options = crate::options_of::<koda_persistence_sqlite::Sqlite>(url)?;
    koda_persistence_sqlite::SqliteStore::rekey_file(options, new_key_file).await
}

/// Stores the large outputs an SQLite file holds inline once, as bodies,
/// and turns storing once on for the file (see
/// [`SqliteStore::compact_bodies`](koda_persistence_sqlite::SqliteStore::compact_bodies));
/// with `dry_run`, reports what it would move and changes nothing.
/// `None` for any other backend: PostgreSQL, sled and memory store every
/// body once from the start.
///
/// # Errors
/// `InvalidInput` for a bad URL; otherwise as the store's writes.
#[cfg(feature = "sqlite")]
pub async fn compact_bodies(url: &str, dry_run: bool) -> anyhow::Result<Option<BodyMove>> {
    use koda_persistence_api::backend::Backend as _;
    let parsed = crate::StoreUrl::parse(url)?;
    if !koda_persistence_sqlite::Sqlite::SCHEMES.contains(&parsed.scheme()) {
        return Ok(None);
    }
    let store =
        koda_persistence_sqlite::SqliteStore::open_url(url, std::sync::Arc::new(koda_persistence_api::SystemClock))
            .await?;
    Ok(Some(store.compact_bodies(dry_run).await?))
}
