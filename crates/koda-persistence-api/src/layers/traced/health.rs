//! [`Traced`] for the [`Health`] capability.

use anyhow::Result;

use super::Traced;
use crate::health::{Health, StoreHealth};

traced!(Health {
    fn health(&self) -> Result<StoreHealth> => None;
});
