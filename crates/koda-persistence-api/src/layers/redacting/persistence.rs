//! [`Redacting`] for koda's [`Persistence`] calls: the writes that carry
//! text redact it; the rest forward.

use std::path::Path;

use anyhow::Result;

use super::Redacting;
use crate::persistence::Persistence;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage};

forwarding!(Persistence {
    fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String>;
    fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>>;
    fn delete_session(&self, session_id: &str) -> Result<bool>;
    fn get_session_mode(&self, session_id: &str) -> Result<Option<String>>;
    fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>>;
    fn load_context(&self, session_id: &str) -> Result<Vec<Message>>;
    fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>>;
    fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>>;
    fn last_assistant_message(&self, session_id: &str) -> Result<String>;
    fn last_user_message(&self, session_id: &str) -> Result<String>;
    fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool>;
    fn mark_message_complete(&self, message_id: i64) -> Result<()>;
    fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage>;
    fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>>;
    fn compacted_stats(&self) -> Result<CompactedStats>;
    fn purge_compacted(&self, min_age_days: u32) -> Result<usize>;
    fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>>;
}
    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        self.inner.set_session_title(session_id, &self.text(title)).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        self.inner.set_session_mode(session_id, &self.text(mode)).await
    }

    async fn append_message(&self, message: NewMessage) -> Result<i64> {
        let message = NewMessage {
            content: self.opt(message.content.as_deref()),
            tool_calls: self.calls(message.tool_calls.as_deref()),
            full_content: self.opt(message.full_content.as_deref()),
            ..message
        };
        self.inner.append_message(message).await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize> {
        self.inner.compact_session(session_id, &self.text(summary), preserve_count).await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        self.inner.clear_message_content(message_ids, &self.text(stub)).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        self.inner.set_metadata(session_id, key, &self.text(value)).await
    }
);
