//! The [`Health`] capability: what a store says of its own state, for
//! `koda-store doctor`.

use anyhow::Result;

use crate::bodies::BodyStats;

/// What a store says of its own state (`koda-store doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The schema (or value format) version the store holds.
    pub schema_version: i64,
    /// The newest version this build knows: more than `schema_version`
    /// means migrations are pending (an open that may not run DDL left
    /// them), less means a newer build wrote the store.
    pub latest_schema_version: i64,
    /// What the store's own consistency check found; empty when sound.
    pub problems: Vec<String>,
    /// Bytes the store occupies (a SQLite file, a sled directory, a
    /// PostgreSQL schema's tables and indexes); `None` in memory.
    pub size_bytes: Option<u64>,
    /// Large outputs stored once ([`crate::bodies`]): how many, how many
    /// references, logical against stored bytes. `problems` holds any
    /// reference without its body and any body whose count disagrees with
    /// its references.
    pub bodies: BodyStats,
}

/// A store's own check of itself.
#[async_trait::async_trait]
pub trait Health: Send + Sync {
    /// The store's schema version and its own consistency check (SQLite:
    /// `PRAGMA integrity_check`; PostgreSQL and sled: every session's
    /// position counter against its messages, sled also its id index;
    /// every backend: body references against bodies both ways and every
    /// body against its address), with the body accounting
    /// ([`StoreHealth::bodies`]). Reads every body once: for `doctor`.
    async fn health(&self) -> Result<StoreHealth>;
}
