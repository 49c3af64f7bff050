//! How statements reach the server.
//!
//! Every statement names its tables through the schema (`kp.` in the
//! statement text becomes `"<schema>".`), so nothing depends on a
//! connection's `search_path`. Then, per store:
//!
//! - **direct** (the default): each statement is prepared once per
//!   connection with its parameter types and cached, then executed (one
//!   round trip after the first).
//! - **behind a transaction-mode pooler** (`pooler=transaction`): each
//!   statement is sent unnamed with its parameter types, parsed, bound and
//!   executed in one round trip. A named statement prepared on one server
//!   connection would be unknown on the next (PgBouncer 1.18 hands each
//!   transaction whichever server connection is free), and two clients'
//!   names would collide on one server connection. Results only use
//!   built-in types (roles travel as text), so the driver never looks a
//!   type up with a statement of its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::{ClientWrapper, Object, Transaction};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use koda_persistence_api::PersistenceError;
use postgres_types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::PostgresStore;
use crate::error::{classify, is_connection_loss, is_retryable, pool_error};
use crate::options::{Pooler, PostgresOptions, TlsMode};
use crate::tls;

/// The marker statement texts use for the store's schema.
const MARKER: &str = "kp.";

/// The schema prefix and the way statements are sent, shared by a store's
/// connections.
#[derive(Debug, Clone)]
pub(crate) struct Dialect {
    schema: Arc<str>,
    prefix: Arc<str>,
    pooled: bool,
}

impl Dialect {
    /// For tables in `schema` (already checked: a plain identifier), sent
    /// unnamed when `pooled`.
    pub(crate) fn new(schema: &str, pooled: bool) -> Self {
        Self { schema: schema.into(), prefix: format!("\"{schema}\".").into(), pooled }
    }

    /// The schema's name.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// `template` with every `kp.` naming the store's schema.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace(MARKER, &self.prefix)
    }
}

/// One parameter and the type the statement declares for it.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A parameter declared `TEXT` (session ids, roles).
pub(crate) fn text<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::TEXT)
}

/// A parameter declared `BYTEA` (every caller-supplied string).
pub(crate) fn bytes<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::BYTEA)
}

/// A parameter declared `BIGINT`.
pub(crate) fn int<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::INT8)
}

/// A parameter declared `BOOLEAN`.
pub(crate) fn boolean<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::BOOL)
}

/// A parameter declared `BIGINT[]`.
pub(crate) fn ints<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::INT8_ARRAY)
}

/// A parameter declared `BYTEA[]`.
pub(crate) fn byte_arrays<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::BYTEA_ARRAY)
}

/// A parameter declared `TEXT[]`.
pub(crate) fn texts<T: ToSql + Sync>(v: &T) -> Param<'_> {
    (v, Type::TEXT_ARRAY)
}

/// A pooled connection and the store's dialect.
pub(crate) struct Conn {
    obj: Object,
    dialect: Dialect,
}

impl Conn {
    pub(crate) fn new(obj: Object, dialect: Dialect) -> Self {
        Self { obj, dialect }
    }

    /// Statements outside a transaction (each its own).
    pub(crate) fn db(&self) -> Db<'_> {
        Db { on: On::Client(&self.obj), dialect: &self.dialect }
    }

    /// Begins a transaction (rolled back when dropped uncommitted).
    pub(crate) async fn transaction(&mut self) -> Result<(Transaction<'_>, &Dialect)> {
        let tx = self.obj.transaction().await.map_err(|e| classify(e, "beginning a transaction"))?;
        Ok((tx, &self.dialect))
    }
}

#[derive(Clone, Copy)]
enum On<'a> {
    Client(&'a ClientWrapper),
    Tx(&'a Transaction<'a>),
}

/// Runs statements on a connection or in a transaction, as the dialect says.
#[derive(Clone, Copy)]
pub(crate) struct Db<'a> {
    on: On<'a>,
    dialect: &'a Dialect,
}

impl<'a> Db<'a> {
    /// Statements inside `tx`.
    pub(crate) fn tx(tx: &'a Transaction<'a>, dialect: &'a Dialect) -> Self {
        Self { on: On::Tx(tx), dialect }
    }

    /// The statement text for `template`.
    fn sql(&self, template: &str) -> String {
        self.dialect.sql(template)
    }

    fn client(&self) -> &tokio_postgres::Client {
        match self.on {
            On::Client(c) => c,
            On::Tx(t) => t.client(),
        }
    }

    /// `sql` prepared with `params`' types (cached per connection), and
    /// the values to bind: the direct path.
    async fn prepared<'p>(
        &self,
        sql: &str,
        params: &'p [Param<'p>],
    ) -> Result<(tokio_postgres::Statement, Vec<&'p (dyn ToSql + Sync)>), tokio_postgres::Error> {
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let stmt = match self.on {
            On::Client(c) => c.prepare_typed_cached(sql, &types).await?,
            On::Tx(t) => t.prepare_typed_cached(sql, &types).await?,
        };
        Ok((stmt, params.iter().map(|(v, _)| *v).collect()))
    }

    /// Prepares `template` for `params` on this connection (cached), so
    /// that a later call sends it on its first poll. Statements that must
    /// reach the server in a given order are prepared first and then
    /// polled in that order: a statement still being prepared waits for
    /// the server's answer, and one answer may wake two waiting
    /// statements in the order the driver delivers it, not the order they
    /// were asked. Behind a pooler nothing is prepared: every statement
    /// is sent whole on its first poll already.
    pub(crate) async fn prepare(&self, what: &'static str, template: &str, params: &[Param<'_>]) -> Result<()> {
        if self.dialect.pooled {
            return Ok(());
        }
        self.prepared(&self.sql(template), params).await.map(drop).map_err(|e| classify(e, what))
    }

    /// Every row `template` returns.
    pub(crate) async fn rows(&self, what: &'static str, template: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let sql = self.sql(template);
        let done = if self.dialect.pooled {
            self.client().query_typed(&sql, params).await
        } else {
            match self.prepared(&sql, params).await {
                Ok((stmt, values)) => self.client().query(&stmt, &values).await,
                Err(e) => Err(e),
            }
        };
        done.map_err(|e| classify(e, what))
    }

    /// Every row `template` returns, planned for these parameters: an
    /// unnamed statement each call, never a cached one (a search's best
    /// plan depends on its `tsquery`, which a cached generic plan cannot
    /// see).
    pub(crate) async fn rows_planned(
        &self,
        what: &'static str,
        template: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>> {
        self.client().query_typed(&self.sql(template), params).await.map_err(|e| classify(e, what))
    }

    /// The first row `template` returns, if any.
    pub(crate) async fn opt(&self, what: &'static str, template: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        Ok(self.rows(what, template, params).await?.into_iter().next())
    }

    /// The first row `template` returns; none is a corrupt store (the
    /// statements given here always return one).
    pub(crate) async fn one(&self, what: &'static str, template: &str, params: &[Param<'_>]) -> Result<Row> {
        self.opt(what, template, params)
            .await?
            .ok_or_else(|| PersistenceError::Corrupt(format!("{what}: the statement returned no row")).into())
    }

    /// Runs `template` (no result rows), returning how many rows it changed.
    pub(crate) async fn execute(&self, what: &'static str, template: &str, params: &[Param<'_>]) -> Result<u64> {
        let sql = self.sql(template);
        let done = if self.dialect.pooled {
            drain(self.client().query_typed_raw(&sql, params.iter().map(|(v, t)| (*v, t.clone())))).await
        } else {
            match self.prepared(&sql, params).await {
                Ok((stmt, values)) => self.client().execute(&stmt, &values).await,
                Err(e) => Err(e),
            }
        };
        done.map_err(|e| classify(e, what))
    }

    /// Runs `template` as a simple-protocol batch (no parameters).
    pub(crate) async fn batch(&self, what: &'static str, template: &str) -> Result<()> {
        self.client().batch_execute(&self.sql(template)).await.map_err(|e| classify(e, what))
    }
}

/// Reads a row stream to its end, returning the rows it changed.
async fn drain(
    stream: impl std::future::Future<Output = Result<tokio_postgres::RowStream, tokio_postgres::Error>>,
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let mut stream = std::pin::pin!(stream.await?);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}

/// A call that waited longer than this for a pooled connection logs a
/// `warn` event (the pool is too small for the load).
pub const POOL_WAIT_WARNING: Duration = Duration::from_millis(100);

/// How often a call that hit a serialization failure or deadlock is retried.
const RETRIES: u32 = 8;

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

impl PostgresStore {
    /// Runs `f` on a pooled connection, retrying serialization failures and
    /// deadlocks, then `Conflict`.
    pub(crate) async fn with_client<R, F, Fut>(&self, mut f: F) -> Result<R>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let mut attempt = 0;
        loop {
            let waiting = std::time::Instant::now();
            let client = Conn::new(self.pool.get().await.map_err(pool_error)?, self.dialect.clone());
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

pub(crate) fn make_tls(mode: TlsMode) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PersistenceError> {
    let made = match mode {
        TlsMode::VerifyFull => tls::verify_full(),
        _ => tls::encrypt_only(),
    };
    made.map_err(|e| PersistenceError::Unavailable(format!("cannot set up TLS: {e}")))
}

/// The tokio-postgres config for one connection of this store: the user's
/// settings, the TLS mode, the connect timeout and the schema's search path.
pub(crate) fn session_config(options: &PostgresOptions) -> tokio_postgres::Config {
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
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
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
        .map_err(|e| PersistenceError::Unavailable(format!("cannot build the connection pool: {e}")).into())
}
