//! [`Checked`] for koda's [`Persistence`] calls.

use std::path::Path;

use anyhow::Result;

use super::Checked;
use crate::args::{check_limit, check_usage, holdable, root_to_str, session_not_found};
use crate::persistence::Persistence;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage};

#[async_trait::async_trait]
impl<P: Persistence> Persistence for Checked<P> {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        root_to_str(project_root)?;
        self.inner.create_session(agent_name, project_root).await
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        check_limit(limit)?;
        root_to_str(project_root)?;
        self.inner.list_sessions(limit, project_root).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        if !holdable(session_id) {
            return Ok(false);
        }
        self.inner.delete_session(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_session_title(session_id, title).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_session_mode(session_id, mode).await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_session_mode(session_id).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_session_idle_secs(session_id).await
    }

    async fn append_message(&self, message: NewMessage) -> Result<i64> {
        check_usage(message.usage.as_ref())?;
        if !holdable(&message.session_id) {
            return Err(session_not_found(&message.session_id));
        }
        self.inner.append_message(message).await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.load_context(session_id).await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.load_all_messages(session_id).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        check_limit(limit)?;
        self.inner.recent_user_messages(limit).await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        if !holdable(session_id) {
            return Ok(String::new());
        }
        self.inner.last_assistant_message(session_id).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        if !holdable(session_id) {
            return Ok(String::new());
        }
        self.inner.last_user_message(session_id).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        if !holdable(session_id) {
            return Ok(false);
        }
        self.inner.has_pending_tool_calls(session_id).await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        self.inner.mark_message_complete(message_id).await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        if !holdable(session_id) {
            return Ok(SessionUsage::default());
        }
        self.inner.session_token_usage(session_id).await
    }

    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.session_usage_by_agent(session_id).await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, keep: usize) -> Result<usize> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.compact_session(session_id, summary, keep).await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        self.inner.clear_message_content(message_ids, stub).await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.inner.compacted_stats().await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        self.inner.purge_compacted(min_age_days).await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_metadata(session_id, key).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_metadata(session_id, key, value).await
    }
}
