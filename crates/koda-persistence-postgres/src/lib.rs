//! `PostgresStore`: koda's backend for teams that point every koda at one
//! PostgreSQL server.
//!
//! - **Pool**: deadpool-postgres over tokio-postgres, prepared statements
//!   cached per connection (or, with `pooler=transaction`, none: see
//!   below). Each trait call is one transaction; an insert is
//!   a single statement that locks the session row, bumps its counters and
//!   usage by agent and appends the message (one round trip, one commit).
//! - **Usage**: kept per session and agent (`session_usage`, schema version
//!   5) in exact NUMERIC sums by every write that adds or removes a counted
//!   message, so usage reads one row per agent; saturated when read.
//! - **Session ids** compare bytewise (`COLLATE "C"`, schema version 6) in
//!   every column holding one: index maintenance and foreign-key checks
//!   never go through the server's locale.
//! - **Migrations**: refinery, run at connect under a Postgres advisory lock
//!   per schema, so many processes connecting to a fresh database at once
//!   all succeed and the schema is created once.
//! - **Isolation**: the `schema` option (`?schema=NAME`) puts every table in
//!   that Postgres schema, created if missing. Without it the tables are in
//!   `public`, always: every connection sets `search_path` itself, so a
//!   schema named after the login role, or a role's or database's own
//!   `search_path`, never moves them. Names starting with `pg_` and
//!   `information_schema` are refused.
//! - **Behind PgBouncer** (`pooler=transaction`, for transaction pooling
//!   mode): statements go unnamed with typed parameters in one round trip
//!   (no named prepared statements), every table is named through its
//!   schema (no `search_path`), locks are transaction-level only, and
//!   opening never migrates: a schema that is missing or behind this build
//!   is `Unavailable` naming the fix (`koda-store migrate` over a direct
//!   URL). The conformance suite runs through a real PgBouncer.
//! - **Least privilege**: `migrate=false` makes opening run no DDL (it
//!   checks the schema's version). A runtime role needs only what
//!   [`grant_sql`] grants (no `CREATE`); [`PostgresStore::grant`] runs it.
//!   A role that may not use the schema it opens gets `PermissionDenied`
//!   naming that schema. The conformance suite runs under such a role.
//! - **Failover**: a multi-host URL with `target_session_attrs=read-write`
//!   reaches whichever host is primary. When it dies, calls in flight are
//!   `Unavailable` (so is a read-only answer from a standby), the pool
//!   drops its connections, and the same store writes on the promoted
//!   standby as soon as it accepts writes. With synchronous replication
//!   every acknowledged write survives (tested with `pg_ctl stop -m
//!   immediate` and `pg_ctl promote`).
//! - **Lossless text**: every caller-supplied string is stored as `BYTEA`
//!   (its UTF-8 bytes), because `TEXT` cannot hold NUL. Strings a lookup
//!   needs (project roots, metadata keys) are indexed by their SHA-256, and
//!   every lookup compares the full value too, so a string of any size fits
//!   (a B-tree entry holds at most ~2.7 kB). Two metadata keys of one
//!   session with the same SHA-256 would be one entry: no such pair is known.
//! - **Lock order**: every write locks the session row first (several
//!   sessions: in id order, in one `SELECT … ORDER BY id FOR NO KEY UPDATE`),
//!   then touches messages or metadata. Statements that start from a message
//!   id (`mark_message_complete`, `clear_message_content`) or from compacted
//!   messages (`purge_compacted`) first find and lock the sessions, in a
//!   materialised CTE that the update can only read once the locks are held.
//!   `set_metadata` takes `FOR KEY SHARE` (excluding a concurrent delete,
//!   not other writers). So two writes never deadlock.
//! - **Compaction** is one call of the schema's `kp_compact` function
//!   (migration 3): it locks the session, reads the active messages after
//!   the lock, marks, shifts and inserts the summary, so writers of that
//!   session wait for those statements only, not for client round trips.
//!   Active messages have a partial index of their own, so a long
//!   session's compacted rows cost neither compaction nor context loads.
//! - **Faults**: a connection the server drops costs at most the call in
//!   flight (`Unavailable`, nothing half-written: the transaction is rolled
//!   back by the server); the pool replaces the connection for the next call.
//!   Serialization failures and deadlocks are retried 8 times with jittered
//!   exponential backoff, then `Conflict`. Errors carry the server's
//!   SQLSTATE and message and keep the tokio-postgres error as their source;
//!   a refused login or missing grant is `PermissionDenied`.
//! - **Durability** is the server's `synchronous_commit`: with `on` (the
//!   default) a returned call survives a server crash.
//! - **Secrets**: the password never appears in `Debug`, errors or logs.
#![deny(missing_docs)]

mod connect;
mod error;
mod exec;
mod options;
mod queries;
mod tls;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;
use koda_persistence_api::backend::{
    ContextCache, NewMessage, SharedContextCache, check_claim, check_limit, check_message_records,
    check_session_record, check_usage, root_to_str, usage_total,
};
use koda_persistence_api::{
    Clock, CompactedStats, Import, Message, MessageRecord, MetadataRecord, Persistence,
    PersistenceError, Role, SessionInfo, SessionRecord, SessionUsage, StoreHealth, SystemClock,
};

use crate::connect::{build_pool, latest_migration, migrate};
use crate::error::{is_connection_loss, is_retryable, pool_error};
use crate::exec::{Conn, Dialect};

pub use crate::options::{
    MAX_POOL_SIZE, Pooler, PostgresOptions, SCHEMES, TlsMode, check_schema_name, grant_sql,
};

/// A call that waited longer than this for a pooled connection logs a
/// `warn` event (the pool is too small for the load).
pub const POOL_WAIT_WARNING: Duration = Duration::from_millis(100);

/// How often a call that hit a serialization failure or deadlock is retried.
const RETRIES: u32 = 8;

/// The PostgreSQL backend. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    schema: Option<String>,
    dialect: Dialect,
    /// Recently loaded contexts, trusted while `sessions.version` matches.
    cache: Arc<SharedContextCache>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// The pause before retry `attempt` (1-based) of a conflicting call:
/// exponential from 2 ms, capped at 100 ms, with up to 100 % jitter so that
/// callers that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = 2u64.saturating_mul(1 << attempt.min(6)).min(100);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_millis(base + h.finish() % (base + 1))
}

/// A session id the caller passed: ids this store makes never hold NUL, and
/// Postgres text cannot, so such an id names no session.
fn storable_id(id: &str) -> Option<&str> {
    (!id.contains('\0')).then_some(id)
}

fn not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

impl PostgresStore {
    /// Connects to `url` (see [`PostgresOptions::from_url`]) on the system clock.
    ///
    /// # Errors
    /// As [`PostgresStore::connect_with`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_url(url, Arc::new(SystemClock)).await
    }

    /// Connects to a `postgres://` or `postgresql://` URL reading time from
    /// `clock` (the name every backend shares; see [`Self::connect_url`]).
    ///
    /// # Errors
    /// As [`PostgresStore::connect_with`].
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_url(url, clock).await
    }

    /// Connects to `url` reading time from `clock`.
    ///
    /// # Errors
    /// As [`PostgresStore::connect_with`].
    pub async fn connect_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_with(PostgresOptions::from_url(url)?, clock).await
    }

    /// Connects, creates the schema if asked and missing, runs pending
    /// migrations under an advisory lock (unless `migrate` is off: then it
    /// checks the schema is at this build's version), and builds the pool.
    ///
    /// # Errors
    /// `Unavailable` when the server cannot be reached within
    /// `connect_timeout`, or when (with `migrate` off) the schema is
    /// missing or behind this build; `PermissionDenied` when the server
    /// refuses the login, or the role may not use the schema or run its
    /// migrations; `InvalidInput` for a bad schema name.
    pub async fn connect_with(options: PostgresOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        options.validate()?;
        if options.migrate {
            migrate(&options).await?;
        }
        let pool = build_pool(&options)?;
        let store = Self {
            pool,
            clock,
            dialect: Dialect::new(options.schema_name(), options.pooler == Pooler::Transaction),
            schema: options.schema,
            cache: Arc::new(SharedContextCache::default()),
        };
        if !options.migrate {
            store.check_schema().await?;
        }
        Ok(store)
    }

    /// With migrations off: the schema must exist, be readable by this
    /// role and be at this build's version.
    async fn check_schema(&self) -> Result<()> {
        let schema = self.dialect.schema();
        let latest = latest_migration();
        let fix = "migrate it with a direct URL as a role that may run DDL (koda-store migrate \
                   --store <direct URL>, or open it once without migrate=false)";
        let version = self
            .with_client(|c| async move { queries::schema_version(&c.db()).await })
            .await;
        let version = match version {
            Ok(v) => v,
            Err(e) => {
                return Err(match PersistenceError::of(&e) {
                    Some(PersistenceError::PermissionDenied(said)) => {
                        error::schema_refused(schema, said).into()
                    }
                    Some(_) => e,
                    // Untyped: no such schema (3F000) or no schema history
                    // table (42P01).
                    None => PersistenceError::Unavailable(format!(
                        "schema {schema:?} holds no koda tables: {fix} ({e:#})"
                    ))
                    .into(),
                });
            }
        };
        if version < latest {
            return Err(PersistenceError::Unavailable(format!(
                "schema {schema:?} is at version {version}, this build needs {latest}: {fix}"
            ))
            .into());
        }
        Ok(())
    }

    /// One plain tokio-postgres connection to the server of `url`, made as
    /// the store makes each of its own (TLS mode, so the same encryption;
    /// connect timeout; search path), outside any pool and without
    /// migrating: for tools that must talk to the server over the store's
    /// own wire, such as the benchmark's raw-driver ceilings. Its driver
    /// task runs on the current runtime.
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL; `Unavailable` when the server cannot
    /// be reached within `connect_timeout`; what the server said otherwise
    /// (`PermissionDenied` for a refused login).
    pub async fn connect_raw(url: &str) -> Result<tokio_postgres::Client> {
        let options = PostgresOptions::from_url(url)?;
        options.validate()?;
        connect::connect_once(&options).await
    }

    /// Runs [`grant_sql`] for `schema` and `role` on the server of `url`,
    /// as the URL's role (the schema's owner, or one allowed to grant on
    /// it). The role must exist.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name or URL; what the server said
    /// otherwise (`PermissionDenied` for a role that may not grant).
    pub async fn grant(url: &str, schema: &str, role: &str) -> Result<()> {
        let sql = grant_sql(schema, role)?;
        let options = PostgresOptions::from_url(url)?;
        let client = connect::connect_once(&options).await?;
        client
            .batch_execute(&sql)
            .await
            .map_err(error::db("granting"))?;
        Ok(())
    }

    /// The Postgres schema this store's tables live in, if one was chosen.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Runs `f` on a pooled connection, retrying serialization failures and
    /// deadlocks, then `Conflict`.
    async fn with_client<R, F, Fut>(&self, mut f: F) -> Result<R>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let mut attempt = 0;
        loop {
            let waiting = std::time::Instant::now();
            let client = Conn::new(
                self.pool.get().await.map_err(pool_error)?,
                self.dialect.clone(),
            );
            if waiting.elapsed() > POOL_WAIT_WARNING {
                tracing::warn!(
                    waited_ms = waiting.elapsed().as_millis() as u64,
                    pool = ?self.pool.status(),
                    "waited for a pooled PostgreSQL connection"
                );
            }
            match f(client).await {
                Err(e) if is_retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "PostgreSQL conflict; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) if is_connection_loss(&e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection lost; dropping idle ones");
                    // The server dropped us (terminated backend, restart):
                    // the other idle connections are likely dead too, and a
                    // dead one may not look closed yet. Drop them all so the
                    // next call starts on a fresh connection.
                    self.pool.retain(|_, _| false);
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    fn cache(&self) -> MutexGuard<'_, ContextCache> {
        self.cache.lock()
    }
}

#[async_trait::async_trait]
impl Persistence for PostgresStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?;
        let now = self.clock.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sid = id.as_str();
        self.with_client(|c| async move {
            queries::create_session(&c, sid, agent_name, root, now).await
        })
        .await?;
        Ok(id)
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        check_limit(limit)?;
        let root = root_to_str(project_root)?;
        self.with_client(|c| async move { queries::list_sessions(&c, limit, root).await })
            .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(false);
        };
        let existed = self
            .with_client(|c| async move { queries::delete_session(&c, sid).await })
            .await?;
        self.cache().forget(sid);
        Ok(existed)
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let found = self
            .with_client(|c| async move { queries::set_session_text(&c, false, sid, title).await })
            .await?;
        if found {
            Ok(())
        } else {
            Err(not_found(session_id))
        }
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let found = self
            .with_client(|c| async move { queries::set_session_text(&c, true, sid, mode).await })
            .await?;
        if found {
            Ok(())
        } else {
            Err(not_found(session_id))
        }
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(None);
        };
        self.with_client(|c| async move { queries::get_session_mode(&c, sid).await })
            .await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(None);
        };
        let last = self
            .with_client(|c| async move { queries::last_accessed(&c, sid).await })
            .await?;
        let now = self.clock.now_ms();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        check_usage(m.usage.as_ref())?;
        if storable_id(&m.session_id).is_none() {
            return Err(not_found(&m.session_id));
        }
        let now = self.clock.now_ms();
        let msg = &m;
        let (id, version) = self
            .with_client(|c| async move { queries::insert_message(&c, msg, now).await })
            .await?;
        self.cache().append_new(&m, id, now, version);
        Ok(id)
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(Vec::new());
        };
        let cache = &self.cache;
        self.with_client(|c| async move {
            let Some(version) = queries::session_version(&c, sid).await? else {
                return Ok(Vec::new());
            };
            if let Some(context) = cache.lock().get(sid, version) {
                return Ok(context);
            }
            // Rows read after the version are at least that new: a label
            // older than its rows only costs a re-read next time.
            let rows = queries::load_active(&c, sid).await?;
            Ok(cache.lock().put(sid, version, rows))
        })
        .await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(Vec::new());
        };
        self.with_client(|c| async move { queries::load_all(&c, sid).await })
            .await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        check_limit(limit)?;
        self.with_client(|c| async move { queries::recent_user_messages(&c, limit).await })
            .await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(String::new());
        };
        self.with_client(|c| async move { queries::last_content(&c, sid, Role::Assistant).await })
            .await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(String::new());
        };
        self.with_client(|c| async move { queries::last_content(&c, sid, Role::User).await })
            .await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(false);
        };
        self.with_client(|c| async move { queries::has_pending_tool_calls(&c, sid).await })
            .await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let (session, version) = self
            .with_client(|c| async move { queries::mark_complete(&c, message_id, now).await })
            .await?;
        self.cache().completed(&session, version, message_id);
        Ok(())
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(SessionUsage::default());
        };
        let groups = self
            .with_client(|c| async move { queries::usage_by_agent(&c, sid).await })
            .await?;
        Ok(usage_total(&groups))
    }

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(Vec::new());
        };
        self.with_client(|c| async move { queries::usage_by_agent(&c, sid).await })
            .await
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let now = self.clock.now_ms();
        let marked = self
            .with_client(|c| async move {
                queries::compact(&c, sid, summary, preserve_count, now).await
            })
            .await?;
        self.cache().forget(sid);
        Ok(marked)
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let touched = self
            .with_client(|c| async move { queries::clear_content(&c, message_ids, stub).await })
            .await?;
        let mut cache = self.cache();
        for s in touched {
            cache.forget(&s);
        }
        Ok(())
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.with_client(|c| async move { queries::compacted_stats(&c).await })
            .await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        let (n, touched) = self
            .with_client(|c| async move { queries::purge(&c, min_age_days, now).await })
            .await?;
        let mut cache = self.cache();
        for s in touched {
            cache.forget(&s);
        }
        Ok(n)
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(None);
        };
        self.with_client(|c| async move { queries::get_metadata(&c, sid, key).await })
            .await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let now = self.clock.now_ms();
        self.with_client(|c| async move { queries::set_metadata(&c, sid, key, value, now).await })
            .await
    }
}

#[async_trait::async_trait]
impl Import for PostgresStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.with_client(|c| async move { queries::export_session_ids(&c).await })
            .await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(None);
        };
        self.with_client(|c| async move { queries::export_session(&c, sid).await })
            .await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(Vec::new());
        };
        self.with_client(|c| async move { queries::export_messages(&c, sid).await })
            .await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let Some(sid) = storable_id(session_id) else {
            return Ok(Vec::new());
        };
        self.with_client(|c| async move { queries::export_metadata(&c, sid).await })
            .await
    }

    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        let Some(sid) = storable_id(session_id) else {
            return Ok((0, koda_persistence_api::session_checksum(&[], &[])));
        };
        self.with_client(|c| async move { queries::session_checksum(&c, sid).await })
            .await
    }

    async fn health(&self) -> Result<StoreHealth> {
        let schema = self.dialect.schema();
        self.with_client(|c| async move { queries::health(&c, schema).await })
            .await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.with_client(|c| async move { queries::message_id_range(&c).await })
            .await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        self.with_client(|mut c| async move { queries::claim_ids(&mut c, first, last).await })
            .await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        self.with_client(|c| async move { queries::import_session(&c, session).await })
            .await
    }

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        check_message_records(messages)?;
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let ids = self
            .with_client(|mut c| async move {
                queries::import_messages(&mut c, sid, messages, keep_ids).await
            })
            .await?;
        self.cache().forget(sid);
        Ok(ids)
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let Some(sid) = storable_id(session_id) else {
            return Err(not_found(session_id));
        };
        let now = self.clock.now_ms();
        self.with_client(|c| async move { queries::import_metadata(&c, sid, entries, now).await })
            .await
    }
}
