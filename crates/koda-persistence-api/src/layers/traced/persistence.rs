//! [`Traced`] for koda's [`Persistence`] calls.

use std::path::Path;

use anyhow::Result;

use super::Traced;
use crate::persistence::Persistence;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage};

#[async_trait::async_trait]
impl<P: Persistence> Persistence for Traced<P> {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        self.call(
            "create_session",
            None,
            self.inner.create_session(agent_name, project_root),
        )
        .await
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        self.call(
            "list_sessions",
            None,
            self.inner.list_sessions(limit, project_root),
        )
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        self.call(
            "delete_session",
            Some(session_id),
            self.inner.delete_session(session_id),
        )
        .await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        self.call(
            "set_session_title",
            Some(session_id),
            self.inner.set_session_title(session_id, title),
        )
        .await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        self.call(
            "set_session_mode",
            Some(session_id),
            self.inner.set_session_mode(session_id, mode),
        )
        .await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        self.call(
            "get_session_mode",
            Some(session_id),
            self.inner.get_session_mode(session_id),
        )
        .await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        self.call(
            "get_session_idle_secs",
            Some(session_id),
            self.inner.get_session_idle_secs(session_id),
        )
        .await
    }

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

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        self.call(
            "load_context",
            Some(session_id),
            self.inner.load_context(session_id),
        )
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        self.call(
            "load_all_messages",
            Some(session_id),
            self.inner.load_all_messages(session_id),
        )
        .await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        self.call(
            "recent_user_messages",
            None,
            self.inner.recent_user_messages(limit),
        )
        .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        self.call(
            "last_assistant_message",
            Some(session_id),
            self.inner.last_assistant_message(session_id),
        )
        .await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        self.call(
            "last_user_message",
            Some(session_id),
            self.inner.last_user_message(session_id),
        )
        .await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        self.call(
            "has_pending_tool_calls",
            Some(session_id),
            self.inner.has_pending_tool_calls(session_id),
        )
        .await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        self.call(
            "mark_message_complete",
            None,
            self.inner.mark_message_complete(message_id),
        )
        .await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        self.call(
            "session_token_usage",
            Some(session_id),
            self.inner.session_token_usage(session_id),
        )
        .await
    }

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        self.call(
            "session_usage_by_agent",
            Some(session_id),
            self.inner.session_usage_by_agent(session_id),
        )
        .await
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        self.call(
            "compact_session",
            Some(session_id),
            self.inner
                .compact_session(session_id, summary, preserve_count),
        )
        .await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        self.call(
            "clear_message_content",
            None,
            self.inner.clear_message_content(message_ids, stub),
        )
        .await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.call("compacted_stats", None, self.inner.compacted_stats())
            .await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        self.call(
            "purge_compacted",
            None,
            self.inner.purge_compacted(min_age_days),
        )
        .await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        self.call(
            "get_metadata",
            Some(session_id),
            self.inner.get_metadata(session_id, key),
        )
        .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        self.call(
            "set_metadata",
            Some(session_id),
            self.inner.set_metadata(session_id, key, value),
        )
        .await
    }
}
