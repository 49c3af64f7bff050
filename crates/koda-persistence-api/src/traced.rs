//! [`Traced`]: any store, with a `tracing` span around every call.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::Instrument as _;

use crate::import::{Import, StoreHealth};
use crate::persistence::Persistence;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};
use crate::search::{SearchHit, SearchScope};
use crate::trash::DeletedSession;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage};

/// A call slower than this is logged at `warn` (with its method and
/// duration); every call is logged at `debug` with its duration.
pub const SLOW_CALL: Duration = Duration::from_millis(250);

/// Wraps a store so that every trait call runs in a `tracing` span named
/// `persistence` with the fields `backend`, `method` and `session` (the
/// session id, when the call has one), and ends with a `debug` event giving
/// its duration (and its error, if any), or a `warn` event when it took
/// longer than [`SLOW_CALL`]. Message content, metadata values and
/// connection URLs are never recorded. `koda_persistence::open` wraps every
/// store it opens.
#[derive(Debug)]
pub struct Traced<P> {
    inner: P,
    backend: &'static str,
}

impl<P: Persistence> Traced<P> {
    /// `inner`, traced under the backend name `backend` (`sqlite`, …).
    pub fn new(inner: P, backend: &'static str) -> Self {
        Self { inner, backend }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    async fn call<T>(
        &self,
        method: &'static str,
        session: Option<&str>,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // Nobody listens (not even for slow calls): no clock reads, no span.
        if !tracing::enabled!(tracing::Level::WARN) {
            return call.await;
        }
        let span = tracing::debug_span!(
            "persistence",
            backend = self.backend,
            method,
            session = session.unwrap_or(""),
        );
        let started = Instant::now();
        let out = if span.is_disabled() {
            call.await
        } else {
            call.instrument(span.clone()).await
        };
        let elapsed = started.elapsed();
        let ms = elapsed.as_secs_f64() * 1e3;
        let _in = span.enter();
        match &out {
            Err(e) => tracing::debug!(ms, error = %e, "call failed"),
            Ok(_) if elapsed > SLOW_CALL => tracing::warn!(
                backend = self.backend,
                method,
                ms,
                limit_ms = SLOW_CALL.as_millis() as u64,
                "slow call"
            ),
            Ok(_) => tracing::debug!(ms, "call done"),
        }
        out
    }
}

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

#[async_trait::async_trait]
impl<P: Import> Import for Traced<P> {
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

    async fn health(&self) -> Result<StoreHealth> {
        self.call("health", None, self.inner.health()).await
    }

    async fn search_messages(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        self.call(
            "search_messages",
            scope.session,
            self.inner.search_messages(query, scope, limit),
        )
        .await
    }

    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        self.call(
            "fork_session",
            Some(session_id),
            self.inner.fork_session(session_id, at),
        )
        .await
    }

    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        self.call("list_deleted", None, self.inner.list_deleted())
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
