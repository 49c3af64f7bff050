//! [`Traced`] for the [`Fork`] capability.

use anyhow::Result;

use super::Traced;
use crate::fork::Fork;

#[async_trait::async_trait]
impl<P: Fork> Fork for Traced<P> {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        self.call(
            "fork_session",
            Some(session_id),
            self.inner.fork_session(session_id, at),
        )
        .await
    }
}
