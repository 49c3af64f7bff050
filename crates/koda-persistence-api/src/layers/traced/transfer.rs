//! [`Traced`] for the [`Transfer`] capability.

use anyhow::Result;

use super::Traced;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};
use crate::transfer::Transfer;

traced!(Transfer {
    fn export_session_ids(&self) -> Result<Vec<String>> => None;
    fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> => Some(session_id);
    fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> => Some(session_id);
    fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> => Some(session_id);
    fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> => Some(session_id);
    fn message_id_range(&self) -> Result<Option<(i64, i64)>> => None;
    fn claim_ids(&self, first: i64, last: i64) -> Result<bool> => None;
    fn import_session(&self, session: &SessionRecord) -> Result<bool> => Some(&session.id);
    fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool)
        -> Result<Vec<i64>> => Some(session_id);
    fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()>
        => Some(session_id);
});
