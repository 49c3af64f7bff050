//! [`Traced`] for the [`Health`] capability.

use anyhow::Result;

use super::Traced;
use crate::health::Health;
use crate::health::StoreHealth;

#[async_trait::async_trait]
impl<P: Health> Health for Traced<P> {
    async fn health(&self) -> Result<StoreHealth> {
        self.call("health", None, self.inner.health()).await
    }
}
