//! What an administrator's tool (`koda-store`) needs beyond the
//! [`Persistence`](crate::Persistence) trait, so that it imports only this
//! crate: the purge cutoff and tool-call pairing the `purge` and `doctor`
//! commands report with, and PostgreSQL's least-privilege grants.

pub use koda_persistence_api::backend::{named_tool_call_ids, purge_cutoff};

#[cfg(feature = "postgres")]
pub use koda_persistence_postgres::{connect_raw, grant, grant_sql};
