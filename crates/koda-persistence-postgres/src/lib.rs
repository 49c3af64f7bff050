#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

mod bodies;
mod error;
mod exec;
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
mod tls;
mod transfer;
mod trash;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use anyhow::Result;
use deadpool_postgres::Pool;
use koda_persistence_api::backend::{
    ContextCache, NewMessage, SharedContextCache, root_to_str, session_not_found, usage_total,
};
use koda_persistence_api::{
    Bodies, Capabilities, Clock, CompactedStats, Encryption, Handles, Message, Persistence, Role, SearchIndex,
    SessionInfo, SessionUsage, Store,
};

use crate::exec::Dialect;

pub use crate::exec::POOL_WAIT_WARNING;
pub use crate::open::{connect_raw, grant};
pub use crate::options::{MAX_POOL_SIZE, Pooler, PostgresOptions, SCHEMES, TlsMode, check_schema_name};
pub use crate::schema::grant_sql;

koda_persistence_api::declare_backend!(
    /// The PostgreSQL backend, for the facade's table and `koda_persistence_api::backend::open_url`.
    Postgres, "postgres", SCHEMES, "postgres://…, postgresql://…", Encryption::None, PostgresOptions, PostgresStore
);

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    schema: Option<String>,
    dialect: Dialect,
    /// Recently loaded contexts, trusted while `sessions.version` matches.
    cache: Arc<SharedContextCache>,
    /// The grace period of deleted sessions, in days (0: none).
    keep_deleted_days: u32,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// The Postgres schema this store's tables live in, if one was chosen.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    fn cache(&self) -> MutexGuard<'_, ContextCache> {
        self.cache.lock()
    }

    /// Sets the title (`mode` false) or the mode of a session.
    async fn set_text(&self, session_id: &str, mode: bool, value: &str) -> Result<()> {
        let found =
            self.with_client(|c| async move { queries::set_session_text(&c, mode, session_id, value).await }).await?;
        found.then_some(()).ok_or_else(|| session_not_found(session_id))
    }
}

#[async_trait::async_trait]
impl Persistence for PostgresStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?;
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.as_str();
        self.with_client(|c| async move { queries::create_session(&c, sid, agent_name, root, now).await }).await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let root = root_to_str(project_root)?;
        self.with_client(|c| async move { queries::list_sessions(&c, limit, root).await }).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        self.delete(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        self.set_text(session_id, false, title).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        self.set_text(session_id, true, mode).await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        self.with_client(|c| async move { queries::get_session_mode(&c, session_id).await }).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let last = self.with_client(|c| async move { queries::last_accessed(&c, session_id).await }).await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        let now = self.clock.now_ms();
        let msg = &m;
        let (id, version) = self.with_client(|c| async move { queries::insert_message(&c, msg, now).await }).await?;
        self.cache().append_new(&m, id, now, version);
        Ok(id)
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let cache = &self.cache;
        self.with_client(|c| async move {
            let Some(version) = queries::session_version(&c, session_id).await? else {
                return Ok(Vec::new());
            };
            if let Some(context) = cache.lock().get(session_id, version) {
                return Ok(context);
            }
            // Rows read after the version are at least that new: a label
            // older than its rows only costs a re-read next time.
            let rows = queries::load_active(&c, session_id).await?;
            Ok(cache.lock().put(session_id, version, rows))
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        self.with_client(|c| async move { queries::load_all(&c, session_id).await }).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        self.with_client(|c| async move { queries::recent_user_messages(&c, limit).await }).await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        self.with_client(|c| async move { queries::last_content(&c, session_id, Role::Assistant).await }).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        self.with_client(|c| async move { queries::last_content(&c, session_id, Role::User).await }).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        self.with_client(|c| async move { queries::has_pending_tool_calls(&c, session_id).await }).await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let (session, version) =
            self.with_client(|c| async move { queries::mark_complete(&c, message_id, now).await }).await?;
        self.cache().completed(&session, version, message_id);
        Ok(())
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        let groups = self.with_client(|c| async move { queries::usage_by_agent(&c, session_id).await }).await?;
        Ok(usage_total(&groups))
    }

    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>> {
        self.with_client(|c| async move { queries::usage_by_agent(&c, session_id).await }).await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize> {
        let now = self.clock.now_ms();
        let marked = self
            .with_client(|c| async move { queries::compact(&c, session_id, summary, preserve_count, now).await })
            .await?;
        self.cache().forget(session_id);
        Ok(marked)
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let touched =
            self.with_client(|mut c| async move { queries::clear_content(&mut c, message_ids, stub).await }).await?;
        let mut cache = self.cache();
        for s in touched {
            cache.forget(&s);
        }
        Ok(())
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.with_client(|c| async move { queries::compacted_stats(&c).await }).await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        let (n, touched) = self.with_client(|c| async move { queries::purge(&c, min_age_days, now).await }).await?;
        let mut cache = self.cache();
        for s in touched {
            cache.forget(&s);
        }
        Ok(n)
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        self.with_client(|c| async move { queries::get_metadata(&c, session_id, key).await }).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let now = self.clock.now_ms();
        self.with_client(|c| async move { queries::set_metadata(&c, session_id, key, value, now).await }).await
    }
}

impl Store for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            encryption: Encryption::None,
            rekey_in_place: false,
            bodies: Bodies::Always,
            search_index: SearchIndex::Tsvector,
            handles: Handles::Many,
            keep_deleted_days: self.keep_deleted_days,
        }
    }
}
