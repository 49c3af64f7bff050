#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

mod adopt;
mod bodies;
mod checkpoint;
mod cipher;
mod error;
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
mod worker;

pub use crate::bodies::BodyMove;
pub use crate::options::{Location, MAX_READERS, SCHEMES, SqliteOptions, Synchronous};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::backend::{NewMessage, SharedContextCache, root_to_str, usage_total};
use koda_persistence_api::{
    Bodies, Capabilities, Clock, CompactedStats, Encryption, Handles, Message, Persistence, Role, SearchIndex,
    SessionInfo, SessionUsage, Store,
};

use crate::worker::{Worker, forget_after_answer};

/// Whether `key_file=` encrypts: with the feature `sqlcipher`, the whole file.
const ENCRYPTION: Encryption = if cfg!(feature = "sqlcipher") { Encryption::WholeFile } else { Encryption::None };

koda_persistence_api::declare_backend!(
    /// The SQLite backend, for the facade's table and `koda_persistence_api::backend::open_url`.
    Sqlite, "sqlite", SCHEMES, "sqlite://PATH, sqlite::memory:", ENCRYPTION, SqliteOptions, SqliteStore
);

/// The SQLite store. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    // Readers are declared (so dropped) first: the writer closes the last
    // connection, after its checkpoint, and SQLite then removes the WAL.
    readers: Worker,
    writer: Worker,
    clock: Arc<dyn Clock>,
    location: Location,
    options: SqliteOptions,
    /// Recently loaded contexts, trusted while `sessions.version` matches.
    cache: Arc<SharedContextCache>,
    /// Whether this file stores large outputs once (see [`SqliteOptions::blobs`]);
    /// turned on by [`SqliteStore::compact_bodies`].
    blobs: Arc<std::sync::atomic::AtomicBool>,
    /// Days deleted sessions stay in the trash (0: none; see `open.rs`).
    keep_deleted_days: u32,
    /// The key of an encrypted file (`cipher.rs`), for new connections.
    key: Option<cipher::Key>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Whether this store writes large outputs once, as bodies (`true`), or
    /// inline in `messages` where an older koda reads them (`false`).
    /// Reads return both kinds of row either way.
    pub fn stores_bodies_once(&self) -> bool {
        self.blobs.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where this store's database lives.
    pub fn location(&self) -> &Location {
        &self.location
    }
}

#[async_trait::async_trait]
impl Persistence for SqliteStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let agent = agent_name.to_owned();
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.clone();
        self.write(move |tx| queries::create_session(tx, &sid, &agent, &root, now)).await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let root = root_to_str(project_root)?.to_owned();
        self.read(move |c| queries::list_sessions(c, limit, &root)).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        self.delete(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), title.to_owned());
        self.write(move |tx| queries::set_session_text(tx, "title", &sid, &v)).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let (sid, v) = (session_id.to_owned(), mode.to_owned());
        self.write(move |tx| queries::set_session_text(tx, "mode", &sid, &v)).await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::get_session_mode(c, &sid)).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let sid = session_id.to_owned();
        let last = self.read(move |c| queries::last_accessed(c, &sid)).await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        let blobs = self.stores_bodies_once();
        let now = self.clock.now_ms();
        let m = Arc::new(m);
        let written = m.clone();
        self.write_then(
            move |tx| queries::insert_message(tx, &written, now, blobs),
            move |cache, (id, version)| {
                cache.append_new(&m, id, now, version);
                id
            },
        )
        .await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        let cache = self.cache.clone();
        self.read(move |c| {
            // One snapshot for the version and the rows it describes.
            let snapshot = c.unchecked_transaction()?;
            let Some(version) = queries::session_version(c, &sid)? else {
                return Ok(Vec::new());
            };
            let context = cache.load(&sid, version, || queries::load_active(c, &sid))?;
            snapshot.finish()?;
            Ok(context)
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::load_all(c, &sid)).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        self.read(move |c| queries::recent_user_messages(c, limit)).await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::last_content(c, &sid, Role::Assistant)).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::last_content(c, &sid, Role::User)).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let sid = session_id.to_owned();
        self.read(move |c| queries::has_pending_tool_calls(c, &sid)).await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.write_then(
            move |tx| queries::mark_complete(tx, message_id, now),
            move |cache, (session, version)| cache.completed(&session, version, message_id),
        )
        .await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        Ok(usage_total(&self.session_usage_by_agent(session_id).await?))
    }

    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>> {
        let sid = session_id.to_owned();
        self.read(move |c| match queries::usage_kept(c, &sid)? {
            Some(groups) => Ok(groups),
            None => Ok(queries::usage_groups(&queries::usage_rows(c, &sid)?)),
        })
        .await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize> {
        let blobs = self.stores_bodies_once();
        let (sid, text) = (session_id.to_owned(), summary.to_owned());
        let now = self.clock.now_ms();
        let compacted = sid.clone();
        self.write_then(
            // The summary and hint rows compaction inserts are not spend.
            move |tx| {
                crate::ledger::keeping_ledger(tx, &sid, || {
                    queries::compact(tx, &sid, &text, preserve_count, now, blobs)
                })
            },
            move |cache, n| {
                forget_after_answer(cache, &compacted);
                n
            },
        )
        .await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        let blobs = self.stores_bodies_once();
        let (ids, stub) = (message_ids.to_vec(), stub.to_owned());
        self.write_then(
            move |tx| queries::clear_content(tx, &ids, &stub, blobs),
            |cache, touched| {
                for s in touched {
                    forget_after_answer(cache, &s);
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
            move |tx| queries::purge(tx, min_age_days, now),
            |cache, (n, touched)| {
                for s in touched {
                    forget_after_answer(cache, &s);
                }
                n
            },
        )
        .await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        let (sid, key) = (session_id.to_owned(), key.to_owned());
        self.read(move |c| queries::get_metadata(c, &sid, &key)).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let (sid, key, value) = (session_id.to_owned(), key.to_owned(), value.to_owned());
        let now = self.clock.now_ms();
        self.write(move |tx| queries::set_metadata(tx, &sid, &key, &value, now)).await
    }
}

impl Store for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        let file = matches!(self.location, Location::File(_));
        Capabilities {
            encryption: if self.key.is_some() { Encryption::WholeFile } else { Encryption::None },
            rekey_in_place: self.key.is_some(),
            bodies: Bodies::OptIn { stored_once: self.stores_bodies_once() },
            search_index: SearchIndex::Fts5,
            handles: if file { Handles::Many } else { Handles::One },
            keep_deleted_days: self.keep_deleted_days,
        }
    }
}
