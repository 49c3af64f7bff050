//! [`Traced`] for the [`Transfer`] capability.

use anyhow::Result;

use super::Traced;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};
use crate::transfer::Transfer;

#[async_trait::async_trait]
impl<P: Transfer> Transfer for Traced<P> {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.call("export_session_ids", None, self.inner.export_session_ids())
            .await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        self.call(
            "export_session",
            Some(session_id),
            self.inner.export_session(session_id),
        )
        .await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        self.call(
            "export_messages",
            Some(session_id),
            self.inner.export_messages(session_id),
        )
        .await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        self.call(
            "export_metadata",
            Some(session_id),
            self.inner.export_metadata(session_id),
        )
        .await
    }

    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        self.call(
            "session_checksum",
            Some(session_id),
            self.inner.session_checksum(session_id),
        )
        .await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.call("message_id_range", None, self.inner.message_id_range())
            .await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        self.call("claim_ids", None, self.inner.claim_ids(first, last))
            .await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        self.call(
            "import_session",
            Some(&session.id),
            self.inner.import_session(session),
        )
        .await
    }

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        self.call(
            "import_messages",
            Some(session_id),
            self.inner.import_messages(session_id, messages, keep_ids),
        )
        .await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        self.call(
            "import_metadata",
            Some(session_id),
            self.inner.import_metadata(session_id, entries),
        )
        .await
    }
}
