//! A full disk (a small tmpfs, as root): the failed write leaves nothing,
//! the same store writes again once space is freed, and a reopen finds
//! every acknowledged write. The scenario lives in the conformance crate.

use std::sync::Arc;

use koda_persistence_api::{Persistence, SystemClock};
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_cleanly_and_recovers() -> anyhow::Result<()> {
    koda_persistence_conformance::disk::full_disk_then_recover(
        "sqlite::a_full_disk_fails_cleanly_and_recovers",
        4,
        |dir| async move {
            let store = SqliteStore::open(
                SqliteOptions { location: Location::File(dir.join("koda.db")), ..SqliteOptions::default() },
                Arc::new(SystemClock),
            )
            .await?;
            Ok(Arc::new(store) as Arc<dyn Persistence>)
        },
    )
    .await
}
