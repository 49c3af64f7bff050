#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

mod bodies;
mod fork;
mod health;
mod ledger;
mod open;
mod options;
mod queries;
mod rewrite;
mod rows;
mod schema;
mod search;
mod settings;
mod transfer;
mod trash;

pub use crate::options::{MemoryOptions, SCHEMES};

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;
use koda_persistence_api::backend::{NewMessage, usage_total};
use koda_persistence_api::{
    Bodies, Capabilities, Clock, CompactedStats, Encryption, Handles, Message, Persistence, Role, SearchIndex,
    SessionInfo, SessionUsage, Store,
};

use crate::schema::{Session, State};

/// The in-memory store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// The grace period of deleted sessions, in days (0: none).
    keep_deleted_days: u32,
}

koda_persistence_api::declare_backend!(
    /// The in-memory backend, for the facade's table and `koda_persistence_api::backend::open_url`.
    Memory, "memory", SCHEMES, "memory:", Encryption::None, MemoryOptions, MemoryStore
);

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, but a poisoned lock
        // still guards consistent data: every mutation completes before unlock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_session<T>(&self, session_id: &str, f: impl FnOnce(&State, &Session) -> T) -> Option<T> {
        let st = self.lock();
        st.sessions.get(session_id).map(|s| f(&st, s))
    }
}

#[async_trait::async_trait]
impl Persistence for MemoryStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        queries::create_session(self, agent_name, project_root)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        queries::list_sessions(self, limit, project_root)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        trash::delete_session(self, session_id)
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        queries::set_session_title(self, session_id, title)
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        queries::set_session_mode(self, session_id, mode)
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        Ok(self.with_session(session_id, |_, s| s.mode.clone()).flatten())
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        queries::get_session_idle_secs(self, session_id)
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        queries::append_message(self, m)
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        queries::load_context(self, session_id)
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        queries::load_all_messages(self, session_id)
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        queries::recent_user_messages(self, limit)
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        Ok(self.last_content(session_id, Role::Assistant))
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        Ok(self.last_content(session_id, Role::User))
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        queries::has_pending_tool_calls(self, session_id)
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        queries::mark_message_complete(self, message_id)
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        Ok(usage_total(&self.session_usage_by_agent(session_id).await?))
    }

    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>> {
        Ok(self.with_session(session_id, |_, s| s.usage.groups()).unwrap_or_default())
    }

    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize> {
        queries::compact_session(self, session_id, summary, preserve_count)
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        queries::clear_message_content(self, message_ids, stub)
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        queries::compacted_stats(self)
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        queries::purge_compacted(self, min_age_days)
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        Ok(self.with_session(session_id, |_, s| s.metadata.get(key).cloned()).flatten())
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        queries::set_metadata(self, session_id, key, value)
    }
}

impl Store for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            encryption: Encryption::None,
            rekey_in_place: false,
            bodies: Bodies::Always,
            search_index: SearchIndex::Scan,
            handles: Handles::One,
            keep_deleted_days: self.keep_deleted_days,
        }
    }
}
