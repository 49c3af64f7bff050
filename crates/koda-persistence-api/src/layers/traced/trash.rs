//! [`Traced`] for the [`Trash`] capability.

use anyhow::Result;

use super::Traced;
use crate::trash::DeletedSession;
use crate::trash::Trash;

#[async_trait::async_trait]
impl<P: Trash> Trash for Traced<P> {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        self.call("list_deleted", None, self.inner.list_deleted())
            .await
    }

    async fn count_deleted(&self) -> Result<usize> {
        self.call("count_deleted", None, self.inner.count_deleted())
            .await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        self.call(
            "restore_session",
            Some(session_id),
            self.inner.restore_session(session_id),
        )
        .await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        self.call("purge_deleted", None, self.inner.purge_deleted(dry_run))
            .await
    }
}
