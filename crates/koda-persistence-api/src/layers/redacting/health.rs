//! [`Redacting`] for the [`Health`] capability.

use anyhow::Result;

use super::Redacting;
use crate::health::{Health, StoreHealth};

forwarding!(Health {
    fn health(&self) -> Result<StoreHealth>;
});
