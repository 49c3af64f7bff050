//! Opening: one connection with the right TLS and search path, the pool,
//! the migrations (or, with `migrate=false`, the check that they ran), and
//! the administrator's one-off connections (`connect_raw`, `grant`).

use std::sync::Arc;

use anyhow::Result;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use koda_persistence_api::backend::{SharedContextCache, options_of};
use koda_persistence_api::{Clock, PersistenceError};
use tokio_postgres::NoTls;

use crate::error::{self, classify};
use crate::exec::Dialect;
use crate::options::{Pooler, PostgresOptions, TlsMode};
use crate::schema::{grant_sql, latest_migration, migrate};
use crate::{Postgres, PostgresStore, queries, tls};

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
            keep_deleted_days: options
                .trash
                .days_or(koda_persistence_api::trash::DEFAULT_KEEP_DELETED_DAYS),
        };
        if !options.migrate {
            store.check_schema().await?;
        }
        if options.trash.purge_on_open {
            store.purge_expired_on_open().await;
        }
        Ok(store)
    }

    /// Removes the trashed sessions whose grace period has ended; a failure
    /// (a role without the rights, a busy server) is only warned: the next
    /// open or purge tries again.
    async fn purge_expired_on_open(&self) {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        let outcome = async {
            let expired = self
                .with_client(|c| async move { crate::trash::any_expired(&c, now, days).await })
                .await?;
            if expired {
                koda_persistence_api::Import::purge_deleted(self, false).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(error = %format!("{e:#}"), "purging expired deleted sessions");
        }
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
    client
        .batch_execute(&sql)
        .await
        .map_err(error::db("granting"))?;
    Ok(())
}

/// Connects `options.config` with the TLS mode asked for, returning the
/// connection's client (its driver task runs on the runtime).
pub(crate) async fn connect_once(options: &PostgresOptions) -> Result<tokio_postgres::Client> {
    let config = session_config(options);
    let tls = match options.tls {
        TlsMode::Disable => None,
        mode => Some(make_tls(mode)?),
    };
    let connect = async {
        match tls {
            None => {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(conn);
                Ok::<_, tokio_postgres::Error>(client)
            }
            Some(tls) => {
                let (client, conn) = config.connect(tls).await?;
                tokio::spawn(conn);
                Ok(client)
            }
        }
    };
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(classify(e, "connecting")),
        Err(_) => Err(PersistenceError::Unavailable(format!(
            "no connection to the postgres server within {} ms",
            options.connect_timeout.as_millis()
        ))
        .into()),
    }
}

fn make_tls(mode: TlsMode) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PersistenceError> {
    let made = match mode {
        TlsMode::VerifyFull => tls::verify_full(),
        _ => tls::encrypt_only(),
    };
    made.map_err(|e| PersistenceError::Unavailable(format!("cannot set up TLS: {e}")))
}

/// The tokio-postgres config for one connection of this store: the user's
/// settings, the TLS mode, the connect timeout and the schema's search path.
fn session_config(options: &PostgresOptions) -> tokio_postgres::Config {
    let mut config = options.config.clone();
    config.connect_timeout(options.connect_timeout);
    config.ssl_mode(match options.tls {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    // Statements name their schema (see exec.rs); the search path is set
    // too on direct connections, for anyone reading the session, so no
    // server or role setting (and no schema named after the login role)
    // can move the tables. A transaction-mode pooler refuses the startup
    // option (PgBouncer: "unsupported startup parameter: options"), and
    // could not keep it per client anyway. Validated by check_schema_name:
    // no quoting beyond double quotes needed.
    if options.pooler == Pooler::None {
        config.options(format!("-c search_path=\"{}\"", options.schema_name()));
    }
    config
}

/// The pool of `options`' size and timeouts, each connection set up as
/// [`session_config`] says.
pub(crate) fn build_pool(options: &PostgresOptions) -> Result<Pool> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let config = session_config(options);
    let manager = match options.tls {
        TlsMode::Disable => Manager::from_config(config, NoTls, manager_config),
        mode => Manager::from_config(config, make_tls(mode)?, manager_config),
    };
    Pool::builder(manager)
        .max_size(options.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.pool_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| {
            PersistenceError::Unavailable(format!("cannot build the connection pool: {e}")).into()
        })
}
