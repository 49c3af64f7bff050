#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

mod bodies;
mod cipher;
mod compaction;
mod db;
mod error;
mod exec;
mod fork;
mod health;
mod keys;
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

pub use crate::options::{FlushPolicy, MAX_CACHE_MB, SCHEMES, SledOptions};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::backend::{ContextRow, NewMessage, limit_bound, root_to_str, usage_total};
use koda_persistence_api::{
    Bodies, Capabilities, Clock, CompactedStats, Encryption, Handles, Message, Persistence, Role, SearchIndex,
    SessionInfo, SessionUsage, Store,
};

use crate::exec::Inner;

koda_persistence_api::declare_backend!(
    /// The sled backend, for the facade's table and `koda_persistence_api::backend::open_url`.
    Sled, "sled", SCHEMES, "sled://PATH", Encryption::Fields, SledOptions, SledStore
);

/// The sled store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
    /// The grace period of deleted sessions, in days (0: none).
    keep_deleted_days: u32,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.options.path)
            .field("flush", &self.inner.options.flush)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Persistence for SledStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let agent = agent_name.to_owned();
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.clone();
        self.write(move |db| Ok((queries::create_session(db, &sid, &agent, &root, now)?, ()))).await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |db| queries::list_sessions(db, &root, limit_bound(limit))).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        self.delete(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, false, &v)?, ()))).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, true, &v)?, ()))).await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.mode))).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self.read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.last_accessed_ms))).await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        let now = self.clock.now_ms();
        let session = m.session_id.clone();
        self.write_then(
            move |db| queries::append_message(db, m, now),
            move |cache, record| {
                let version = cache.bump(&session);
                let id = i64::try_from(record.id).unwrap_or(i64::MAX);
                if cache.contexts.holds(&session)
                    && let Ok(message) = rows::to_message(&session, &record)
                {
                    let row = ContextRow { message, complete: false };
                    cache.contexts.appended(&session, version, row);
                }
                id
            },
        )
        .await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        let inner = self.inner.clone();
        self.read(move |db| {
            // Writers are excluded while we hold the read lock, so the
            // version and the rows agree.
            let version = inner.cache().version(&sid);
            if let Some(context) = inner.cache().contexts.get(&sid, version) {
                return Ok(context);
            }
            let rows = queries::active_rows(db, &sid)?;
            Ok(inner.cache().contexts.put(&sid, version, rows))
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::load_all(db, &sid)).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        self.read(move |db| queries::recent_user_messages(db, limit_bound(limit))).await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::Assistant)).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::User)).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::has_pending_tool_calls(db, &sid)).await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| queries::mark_complete(db, message_id, now),
            move |cache, session| {
                if let Some(s) = session {
                    let version = cache.bump(&s);
                    cache.contexts.completed(&s, version, message_id);
                }
            },
        )
        .await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        Ok(usage_total(&self.session_usage_by_agent(session_id).await?))
    }

    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::usage_groups(db, &sid)).await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize> {
        let (sid, summary) = (session_id.to_owned(), summary.to_owned());
        let now = self.clock.now_ms();
        let compacted = sid.clone();
        self.write_then(
            move |db| compaction::compact(db, &sid, &summary, preserve_count, now),
            move |cache, marked| {
                cache.changed(&compacted);
                marked
            },
        )
        .await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        let (ids, stub) = (message_ids.to_vec(), stub.to_owned());
        self.write_then(
            move |db| compaction::clear_content(db, &ids, &stub),
            |cache, touched| {
                for s in touched {
                    cache.changed(&s);
                }
            },
        )
        .await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.read(compaction::compacted_stats).await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| compaction::purge(db, min_age_days, now),
            |cache, (n, touched)| {
                for s in touched {
                    cache.changed(&s);
                }
                n
            },
        )
        .await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        let (sid, key) = (session_id.to_owned(), key.to_owned());
        self.read(move |db| queries::get_metadata(db, &sid, &key)).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |db| Ok((queries::set_metadata(db, &sid, &key, &value)?, ()))).await
    }
}

impl Store for SledStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            encryption: if self.inner.options.key_file.is_some() { Encryption::Fields } else { Encryption::None },
            rekey_in_place: false,
            bodies: Bodies::Always,
            search_index: SearchIndex::Scan,
            handles: Handles::One,
            keep_deleted_days: self.keep_deleted_days,
        }
    }
}
