//! [`Checked`] for the [`Fork`] capability.

use anyhow::Result;

use super::Checked;
use crate::args::{holdable, session_not_found};
use crate::fork::Fork;

#[async_trait::async_trait]
impl<P: Fork> Fork for Checked<P> {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.fork_session(session_id, at).await
    }
}
