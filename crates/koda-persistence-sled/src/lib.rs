#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

mod cipher;
mod error;
mod exec;
mod open;
mod options;
mod queries;
mod rows;
mod schema;
mod search;
mod trash;

pub use crate::options::{FlushPolicy, MAX_CACHE_MB, SCHEMES, SledOptions};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::backend::{
    Backend, ContextRow, NewMessage, StoreUrl, limit_bound, root_to_str, usage_total,
};
use koda_persistence_api::search::{Query, ScopeBuf, hit_limit};
use koda_persistence_api::{
    Clock, CompactedStats, DeletedSession, Import, Message, MessageRecord, MetadataRecord,
    Persistence, PersistenceError, Role, SearchHit, SearchScope, SessionInfo, SessionRecord,
    SessionUsage, StoreHealth,
};

use crate::exec::Inner;

/// The sled backend, for the facade's table and
/// `koda_persistence_api::backend::open_url`.
#[derive(Debug, Clone, Copy)]
pub struct Sled;

#[async_trait::async_trait]
impl Backend for Sled {
    const NAME: &'static str = "sled";
    const SCHEMES: &'static [&'static str] = SCHEMES;
    const EXAMPLE: &'static str = "sled://PATH";
    type Options = SledOptions;
    type Store = SledStore;

    fn options(url: &StoreUrl) -> Result<SledOptions, PersistenceError> {
        SledOptions::from_url(url)
    }

    async fn open(options: SledOptions, clock: Arc<dyn Clock>) -> Result<SledStore> {
        SledStore::open(options, clock).await
    }
}

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
        self.write(move |db| Ok((queries::create_session(db, &sid, &agent, &root, now)?, ())))
            .await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |db| queries::list_sessions(db, &root, limit_bound(limit)))
            .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        self.delete(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, false, &v)?, ())))
            .await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |db| Ok((queries::set_session_text(db, &sid, true, &v)?, ())))
            .await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.mode)))
            .await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self
            .read(move |db| Ok(queries::get_session(db, &sid)?.and_then(|s| s.last_accessed_ms)))
            .await?;
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
                    let row = ContextRow {
                        message,
                        complete: false,
                    };
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
        self.read(move |db| queries::recent_user_messages(db, limit_bound(limit)))
            .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::Assistant))
            .await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::last_content(db, &sid, Role::User))
            .await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::has_pending_tool_calls(db, &sid))
            .await
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

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::usage_groups(db, &sid)).await
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        let (sid, summary) = (session_id.to_owned(), summary.to_owned());
        let now = self.clock.now_ms();
        let compacted = sid.clone();
        self.write_then(
            move |db| queries::compact(db, &sid, &summary, preserve_count, now),
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
            move |db| queries::clear_content(db, &ids, &stub),
            |cache, touched| {
                for s in touched {
                    cache.changed(&s);
                }
            },
        )
        .await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.read(queries::compacted_stats).await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        self.write_then(
            move |db| queries::purge(db, min_age_days, now),
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
        self.read(move |db| queries::get_metadata(db, &sid, &key))
            .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |db| Ok((queries::set_metadata(db, &sid, &key, &value)?, ())))
            .await
    }
}

#[async_trait::async_trait]
impl Import for SledStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.read(queries::export_session_ids).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_session(db, &sid)).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_messages(db, &sid))
            .await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let sid = session_id.to_owned();
        self.read(move |db| queries::export_metadata(db, &sid))
            .await
    }

    async fn health(&self) -> Result<StoreHealth> {
        self.read(queries::health).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.read(queries::message_id_range).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        let (first, last) = (queries::as_u64(first), queries::as_u64(last));
        self.write(move |db| queries::claim_ids(db, first, last))
            .await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        let session = session.clone();
        self.write(move |db| queries::import_session(db, &session))
            .await
    }

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        let sid = session_id.to_owned();
        let changed = sid.clone();
        let messages = messages.to_vec();
        self.write_then(
            move |db| queries::import_messages(db, &sid, &messages, keep_ids),
            move |cache, ids| {
                cache.changed(&changed);
                ids
            },
        )
        .await
    }

    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        let (sid, now) = (session_id.to_owned(), self.clock.now_ms());
        let new_id = uuid::Uuid::now_v7().to_string();
        self.write(move |db| queries::fork(db, &sid, at, &new_id, now))
            .await
    }

    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        self.trashed().await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        self.restore(session_id).await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        self.purge_trash(dry_run).await
    }

    async fn search_messages(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        let (query, scope) = (Query::parse(query)?, ScopeBuf::new(scope)?);
        self.read(move |db| search::search(db, &query, &scope, hit_limit(limit)))
            .await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let sid = session_id.to_owned();
        let entries = entries.to_vec();
        self.write(move |db| Ok((queries::import_metadata(db, &sid, &entries)?, ())))
            .await
    }
}
