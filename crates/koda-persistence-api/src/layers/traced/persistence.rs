//! [`Traced`] for koda's [`Persistence`] calls.

use std::path::Path;

use anyhow::Result;

use super::Traced;
use crate::persistence::Persistence;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage};

traced!(Persistence {
    fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> => None;
    fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> => None;
    fn delete_session(&self, session_id: &str) -> Result<bool> => Some(session_id);
    fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> => Some(session_id);
    fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> => Some(session_id);
    fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> => Some(session_id);
    fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> => Some(session_id);
    fn load_context(&self, session_id: &str) -> Result<Vec<Message>> => Some(session_id);
    fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> => Some(session_id);
    fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> => None;
    fn last_assistant_message(&self, session_id: &str) -> Result<String> => Some(session_id);
    fn last_user_message(&self, session_id: &str) -> Result<String> => Some(session_id);
    fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> => Some(session_id);
    fn mark_message_complete(&self, message_id: i64) -> Result<()> => None;
    fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> => Some(session_id);
    fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>>
        => Some(session_id);
    fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize)
        -> Result<usize> => Some(session_id);
    fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> => None;
    fn compacted_stats(&self) -> Result<CompactedStats> => None;
    fn purge_compacted(&self, min_age_days: u32) -> Result<usize> => None;
    fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> => Some(session_id);
    fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> => Some(session_id);
}

    // The session id is cloned out of the message before it moves, and only
    // when someone listens.
    async fn append_message(&self, message: NewMessage) -> Result<i64> {
        if !tracing::enabled!(tracing::Level::WARN) {
            return self.inner.append_message(message).await;
        }
        let session = message.session_id.clone();
        self.call(
            "append_message",
            Some(&session),
            self.inner.append_message(message),
        )
        .await
    }
);
