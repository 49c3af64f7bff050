//! Connecting: one connection with the right TLS and search path, the
//! pool, and the migrations.

use anyhow::Result;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use koda_persistence_api::PersistenceError;
use tokio_postgres::NoTls;

use crate::error::classify;
use crate::options::{Pooler, PostgresOptions, TlsMode};
use crate::tls;

mod embedded {
    refinery::embed_migrations!("migrations");
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

/// The newest migration this build carries.
pub(crate) fn latest_migration() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Creates the schema if needed and applies pending migrations, holding a
/// per-schema advisory lock so concurrent first connections do it once.
pub(crate) async fn migrate(options: &PostgresOptions) -> Result<()> {
    let mut client = connect_once(options).await?;
    // Nothing pending: no lock, no DDL (a runtime role that may not run
    // DDL opens an up-to-date schema without migrate=false). A role that
    // may not even read the schema is told so here: migrating would only
    // fail less clearly.
    let schema = options.schema_name();
    let current = match client
        .query_opt(
            &format!("SELECT MAX(version) FROM \"{schema}\".koda_schema_history"),
            &[],
        )
        .await
    {
        Ok(row) => row.and_then(|r| r.try_get::<_, Option<i32>>(0).ok().flatten()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Err(crate::error::schema_refused(
                schema,
                classify(e, "reading the schema version"),
            )
            .into());
        }
        // No schema or no history yet: migrate.
        Err(_) => None,
    };
    if current.is_some_and(|v| i64::from(v) >= latest_migration()) {
        return Ok(());
    }
    let key = format!(
        "koda-persistence:{}",
        options.schema.as_deref().unwrap_or("")
    );
    client
        .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(|e| classify(e, "taking the migration lock"))?;
    let outcome = async {
        if let Some(schema) = &options.schema {
            // Only when missing: CREATE SCHEMA IF NOT EXISTS checks the
            // CREATE privilege on the database even when the schema exists.
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
                .await
                .map_err(|e| classify(e, "looking up the schema"))?
                .is_some();
            if !exists {
                client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                    .await
                    .map_err(|e| classify(e, "creating the schema"))?;
            }
        }
        let report = embedded::migrations::runner()
            .set_migration_table_name("koda_schema_history")
            .run_async(&mut client)
            .await
            .map_err(|e| migration_error(&e, options.schema_name()))?;
        for m in report.applied_migrations() {
            tracing::info!(
                schema = options.schema_name(),
                version = m.version(),
                name = m.name(),
                "applied a PostgreSQL migration"
            );
        }
        anyhow::Ok(())
    }
    .await;
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(|e| classify(e, "releasing the migration lock"));
    outcome.and(unlocked.map(|_| ()))
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

/// A failed migration as a typed error: refinery's text ends at "db
/// error", so the server's words are taken from down the source chain; a
/// missing privilege (SQLSTATE 42501: a role that may not run DDL here)
/// is `PermissionDenied`, anything else `Unavailable`.
fn migration_error(e: &refinery::Error, schema: &str) -> PersistenceError {
    let mut text = format!("migrating schema {schema:?}: {e}");
    let mut denied = false;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        if let Some(pg) = c.downcast_ref::<tokio_postgres::Error>()
            && pg.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        {
            denied = true;
        }
        cause = c.source();
    }
    if denied {
        PersistenceError::PermissionDenied(format!(
            "{text} (this role may not run DDL on the schema: migrate it once as its owner, \
             e.g. koda-store migrate, then open with migrate=false; or open the schema this role \
             was granted)"
        ))
    } else {
        PersistenceError::Unavailable(text)
    }
}
