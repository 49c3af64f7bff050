//! Options: an in-memory store has none, and its URL takes no parameters.

use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::StoreUrl;

/// The URL schemes this backend opens (`memory:`).
pub const SCHEMES: &[&str] = &["memory"];

/// How to open a [`MemoryStore`](crate::MemoryStore): nothing to choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {}

impl MemoryOptions {
    /// The options `memory:` (or `memory://`) names; it takes no location
    /// and no parameters.
    ///
    /// # Errors
    /// `InvalidInput` for a location (`memory:/x`).
    pub fn from_url(url: &StoreUrl) -> Result<Self, PersistenceError> {
        match url.location() {
            "" | "//" => Ok(Self {}),
            _ => Err(PersistenceError::InvalidInput(
                "a memory URL has no location: write memory:".into(),
            )),
        }
    }
}
