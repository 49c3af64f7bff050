//! Session metadata and the TODO list.

use anyhow::Result;
use koda_persistence_api::TODO_KEY;

use super::{eq, session};
use crate::Fixture;

/// `set_metadata` inserts, then overwrites.
pub async fn metadata_upserts(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.set_metadata(&sid, "branch", "main").await?;
    eq("first", fx.store.get_metadata(&sid, "branch").await?.as_deref(), Some("main"))?;
    fx.store.set_metadata(&sid, "branch", "feature").await?;
    eq("second", fx.store.get_metadata(&sid, "branch").await?.as_deref(), Some("feature"))
}

/// A missing key, or an unknown session, reads `None`.
pub async fn metadata_missing_is_none(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    eq("missing key", fx.store.get_metadata(&sid, "nope").await?, None)?;
    eq("unknown session", fx.store.get_metadata("nope", "k").await?, None)?;
    eq("no todo", fx.store.get_todo(&sid).await?, None)
}

/// Metadata of one session is invisible to another.
pub async fn metadata_is_per_session(fx: &Fixture) -> Result<()> {
    let a = session(fx).await?;
    let b = session(fx).await?;
    fx.store.set_metadata(&a, "k", "a").await?;
    fx.store.set_metadata(&b, "k", "b").await?;
    eq("a", fx.store.get_metadata(&a, "k").await?.as_deref(), Some("a"))?;
    eq("b", fx.store.get_metadata(&b, "k").await?.as_deref(), Some("b"))
}

/// The TODO list is the metadata value under `"todo"`, both ways.
pub async fn todo_is_metadata_under_todo_key(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    fx.store.set_todo(&sid, "- [ ] write tests").await?;
    eq("via metadata", fx.store.get_metadata(&sid, TODO_KEY).await?.as_deref(), Some("- [ ] write tests"))?;
    fx.store.set_metadata(&sid, "todo", "- [x] done").await?;
    eq("via todo", fx.store.get_todo(&sid).await?.as_deref(), Some("- [x] done"))
}

/// Keys are matched by exact bytes: case, spaces and NULs matter.
pub async fn metadata_keys_are_exact_bytes(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let keys = ["k", "K", "k ", "", "k\0x", "k\0y", "ключ"];
    for (i, k) in keys.iter().enumerate() {
        fx.store.set_metadata(&sid, k, &format!("v{i}\0")).await?;
    }
    for (i, k) in keys.iter().enumerate() {
        eq(&format!("key {k:?}"), fx.store.get_metadata(&sid, k).await?, Some(format!("v{i}\0")))?;
    }
    eq("prefix", fx.store.get_metadata(&sid, "k\0").await?, None)
}
