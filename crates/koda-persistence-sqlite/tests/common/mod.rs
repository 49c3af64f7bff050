//! Helpers the SQLite test binaries share (each uses its share of them,
//! hence `allow(dead_code)`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use koda_persistence_api::ManualClock;
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

/// A private temporary directory and the path of `koda.db` in it (the file
/// is not created).
#[allow(dead_code)]
pub fn koda_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("koda.db");
    (dir, path)
}

/// A manual clock at a fixed instant of 2026.
#[allow(dead_code)]
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_795_669_624_123))
}

/// The store of the file at `path`, with `options` otherwise.
#[allow(dead_code)]
pub async fn open_file(path: &Path, options: SqliteOptions) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(SqliteOptions { location: Location::File(path.to_owned()), ..options }, clock()).await
}
