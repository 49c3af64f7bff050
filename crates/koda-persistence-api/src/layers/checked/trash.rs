//! [`Checked`] for the [`Trash`] capability.

use anyhow::Result;

use super::Checked;
use crate::args::{holdable, session_not_found};
use crate::trash::DeletedSession;
use crate::trash::Trash;

#[async_trait::async_trait]
impl<P: Trash> Trash for Checked<P> {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        self.inner.list_deleted().await
    }

    async fn count_deleted(&self) -> Result<usize> {
        self.inner.count_deleted().await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.restore_session(session_id).await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        self.inner.purge_deleted(dry_run).await
    }
}
