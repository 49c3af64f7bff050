//! Opening: one connection with the right TLS and search path, the pool,
//! the migrations (or, with `migrate=false`, the check that they ran), and
//! the administrator's one-off connections (`connect_raw`, `grant`).

use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::backend::{SharedContextCache, options_of};
use koda_persistence_api::{Clock, PersistenceError};

use crate::error::{self};
use crate::exec::Dialect;
use crate::exec::build_pool;
use crate::exec::connect_once;
use crate::options::{Pooler, PostgresOptions};
use crate::schema::{grant_sql, latest_migration, migrate};
use crate::{Postgres, PostgresStore};

impl PostgresStore {
    /// Opens the store on a `postgres://` or `postgresql://` URL (see
    /// [`PostgresOptions::from_url`]) reading time from `clock`.
    ///
    /// # Errors
    /// As [`PostgresStore::open`], and `InvalidInput` for a bad URL.
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open(options_of::<Postgres>(url)?, clock).await
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
    pub async fn open(options: PostgresOptions, clock: Arc<dyn Clock>) -> Result<Self> {
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
            keep_deleted_days: options.trash.days(true),
        };
        if !options.migrate {
            store.check_schema().await?;
        }
        let (now, days) = (store.clock.now_ms(), store.keep_deleted_days);
        let expired = store.with_client(|c| async move { crate::trash::any_expired(&c, now, days).await });
        koda_persistence_api::trash::purge_on_open(&store, &options.trash, expired).await;
        Ok(store)
    }

    /// With migrations off: the schema must exist, be readable by this
    /// role and be at this build's version.
    async fn check_schema(&self) -> Result<()> {
        let schema = self.dialect.schema();
        let latest = latest_migration();
        let fix = "migrate it with a direct URL as a role that may run DDL (koda-store migrate \
                   --store <direct URL>, or open it once without migrate=false)";
        let version = self.with_client(|c| async move { crate::health::schema_version(&c.db()).await }).await;
        let version = match version {
            Ok(v) => v,
            Err(e) => {
                return Err(match PersistenceError::of(&e) {
                    Some(PersistenceError::PermissionDenied(said)) => error::schema_refused(schema, said).into(),
                    Some(_) => e,
                    // Untyped: no such schema (3F000) or no schema history
                    // table (42P01).
                    None => {
                        PersistenceError::Unavailable(format!("schema {schema:?} holds no koda tables: {fix} ({e:#})"))
                            .into()
                    }
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
}

/// One plain tokio-postgres connection to the server of `url`, made as the
/// store makes each of its own (TLS mode, so the same encryption; connect
/// timeout; search path), outside any pool and without migrating: for
/// tools that must talk to the server over the store's own wire, such as
/// the benchmark's raw-driver ceilings. Its driver task runs on the
/// current runtime.
///
/// # Errors
/// `InvalidInput` for a bad URL; `Unavailable` when the server cannot be
/// reached within `connect_timeout`; what the server said otherwise
/// (`PermissionDenied` for a refused login).
pub async fn connect_raw(url: &str) -> Result<tokio_postgres::Client> {
    let options = options_of::<Postgres>(url)?;
    options.validate()?;
    connect_once(&options).await
}

/// Runs [`grant_sql`] for `schema` and `role` on the server of `url`, as
/// the URL's role (the schema's owner, or one allowed to grant on it). The
/// role must exist.
///
/// # Errors
/// `InvalidInput` for a bad name or URL; what the server said otherwise
/// (`PermissionDenied` for a role that may not grant).
pub async fn grant(url: &str, schema: &str, role: &str) -> Result<()> {
    let sql = grant_sql(schema, role)?;
    let client = connect_raw(url).await?;
    client.batch_execute(&sql).await.map_err(error::db("granting"))?;
    Ok(())
}
