//! [`Checked`] for the [`Health`] capability.

use anyhow::Result;

use super::Checked;
use crate::health::Health;
use crate::health::StoreHealth;

#[async_trait::async_trait]
impl<P: Health> Health for Checked<P> {
    async fn health(&self) -> Result<StoreHealth> {
        self.inner.health().await
    }
}
