//! The suite catches a backend that skips the checks layer: the bad-input
//! cases fail on a bare store (which implements storage only) and pass on
//! the same store behind `Checked`, as the facade and every backend's
//! factory open it.

use std::sync::Arc;

use koda_persistence_api::backend::open_checked;
use koda_persistence_api::{ManualClock, Store};
use koda_persistence_conformance::cases::bad_input;
use koda_persistence_conformance::{Fixture, START_MS};
use koda_persistence_memory::{Memory, MemoryOptions, MemoryStore};

async fn bare() -> anyhow::Result<Fixture> {
    let clock = ManualClock::new(START_MS);
    let store = MemoryStore::open(MemoryOptions::default(), Arc::new(clock.clone())).await?;
    Ok(Fixture::new(Arc::new(store) as Arc<dyn Store>, clock))
}

async fn checked() -> anyhow::Result<Fixture> {
    let clock = ManualClock::new(START_MS);
    let store = open_checked::<Memory>(MemoryOptions::default(), Arc::new(clock.clone())).await?;
    Ok(Fixture::new(Arc::new(store) as Arc<dyn Store>, clock))
}

#[tokio::test]
async fn negative_limits_are_caught_without_the_layer() -> anyhow::Result<()> {
    let fx = bare().await?;
    assert!(bad_input::negative_limits_are_invalid(&fx).await.is_err(), "a bare store must fail the case");
    bad_input::negative_limits_are_invalid(&checked().await?).await
}

#[tokio::test]
async fn negative_counters_are_caught_without_the_layer() -> anyhow::Result<()> {
    let fx = bare().await?;
    assert!(bad_input::negative_token_counters_are_invalid(&fx).await.is_err(), "a bare store must fail the case");
    bad_input::negative_token_counters_are_invalid(&checked().await?).await
}
