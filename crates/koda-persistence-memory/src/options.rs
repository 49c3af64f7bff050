//! Options: an in-memory store has one, the grace period of deleted
//! sessions (`keep_deleted_days`, every backend's parameter).

use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::StoreUrl;
use koda_persistence_api::trash::TrashOptions;

/// The URL schemes this backend opens (`memory:`).
pub const SCHEMES: &[&str] = &["memory"];

/// How to open a [`MemoryStore`](crate::MemoryStore).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// The trash: the grace period of deleted sessions
    /// (`keep_deleted_days`; 7 days unless set) and `purge_on_open`.
    pub trash: TrashOptions,
}

impl MemoryOptions {
    /// The options `memory:` (or `memory://`) names; it takes no location
    /// and the trash's parameters, `keep_deleted_days=N` and
    /// `purge_on_open`.
    ///
    /// # Errors
    /// `InvalidInput` for a location (`memory:/x`) or a bad grace period.
    pub fn from_url(url: &StoreUrl) -> Result<Self, PersistenceError> {
        let trash = TrashOptions::default().with_parameters(url)?;
        match url.location() {
            "" | "//" => Ok(Self { trash }),
            _ => Err(PersistenceError::InvalidInput("a memory URL has no location: write memory:".into())),
        }
    }
}
