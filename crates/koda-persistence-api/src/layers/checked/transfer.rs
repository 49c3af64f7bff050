//! [`Checked`] for the [`Transfer`] capability.

use anyhow::Result;

use super::Checked;
use crate::args::{check_claim, check_message_records, check_session_record, holdable, session_not_found};
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};
use crate::transfer::Transfer;

#[async_trait::async_trait]
impl<P: Transfer> Transfer for Checked<P> {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.inner.export_session_ids().await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.export_session(session_id).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.export_messages(session_id).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.export_metadata(session_id).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.inner.message_id_range().await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        self.inner.claim_ids(first, last).await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        self.inner.import_session(session).await
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        check_message_records(messages)?;
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.import_messages(session_id, messages, keep_ids).await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.import_metadata(session_id, entries).await
    }

    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        if !holdable(session_id) {
            return Ok((0, crate::records::session_checksum(&[], &[])));
        }
        self.inner.session_checksum(session_id).await
    }
}
