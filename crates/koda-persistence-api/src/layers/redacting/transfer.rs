//! [`Redacting`] for the [`Transfer`] capability: imported records are
//! redacted as written ones are; exports and checksums read what is stored.

use std::collections::BTreeMap;

use anyhow::Result;

use super::Redacting;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};
use crate::transfer::Transfer;

forwarding!(Transfer {
    fn export_session_ids(&self) -> Result<Vec<String>>;
    fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>>;
    fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>>;
    fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>>;
    fn message_id_range(&self) -> Result<Option<(i64, i64)>>;
    fn claim_ids(&self, first: i64, last: i64) -> Result<bool>;
    fn session_checksum(&self, session_id: &str) -> Result<(usize, String)>;
}
    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        self.inner.import_session(&self.redactor.session_record(session, &mut BTreeMap::new())).await
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        let mut counts = BTreeMap::new();
        let messages: Vec<MessageRecord> = messages.iter().map(|m| self.redactor.message_record(m, &mut counts)).collect();
        self.inner.import_messages(session_id, &messages, keep_ids).await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let mut counts = BTreeMap::new();
        let entries: Vec<MetadataRecord> = entries.iter().map(|e| self.redactor.metadata_record(e, &mut counts)).collect();
        self.inner.import_metadata(session_id, &entries).await
    }
);
