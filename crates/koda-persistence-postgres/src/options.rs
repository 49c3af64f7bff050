//! Connection options, from a URL or built by hand. Passwords never reach
//! `Debug`, `Display` or errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::StoreUrl;
use koda_persistence_api::backend::url::{check_count, check_timeout};

/// The URL schemes this backend opens.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// Connections a pool may hold: `pool_size` is from 1 to this.
pub const MAX_POOL_SIZE: usize = 1024;

/// How the connection is encrypted (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verifying the certificate;
    /// plain TCP otherwise. The default, as in libpq.
    #[default]
    Prefer,
    /// TLS required; the certificate is not verified (encryption only).
    Require,
    /// TLS required; the certificate must chain to a public root (webpki
    /// roots) and match the host name.
    VerifyFull,
}

/// What stands between the store and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// A direct connection, or a pooler in session mode: statements are
    /// prepared once per connection and cached.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`):
    /// each transaction may run on another server connection, so the store
    /// keeps no session state there: no named prepared statements (each
    /// statement is sent unnamed with its parameter types, one round trip),
    /// no `search_path` (every table is named through its schema), no
    /// session-level locks, and no migrations (a pending one is an error
    /// that names the fix: migrate through a direct URL).
    Transaction,
}

/// How to reach the server and how to use it.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Server address, user, password, database (the URL minus the
    /// parameters below).
    pub config: tokio_postgres::Config,
    /// Put every table in this Postgres schema (created if missing), so
    /// teams or tenants can share one server. `None` means `public`, always:
    /// every connection sets its `search_path` explicitly, so no server or
    /// role setting (nor a schema named after the login role) moves the
    /// tables.
    pub schema: Option<String>,
    /// Connections in the pool, from 1 to [`MAX_POOL_SIZE`].
    pub pool_size: usize,
    /// How long opening one connection may take (1 ms to 1 hour).
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection (1 ms to 1 hour).
    pub pool_timeout: Duration,
    /// Encryption.
    pub tls: TlsMode,
    /// A transaction-mode pooler between the store and the server
    /// (`pooler=transaction`), or none (`pooler=none`, the default).
    pub pooler: Pooler,
    /// Whether opening may run DDL: create the schema and apply pending
    /// migrations (`migrate=true`, the default). With `migrate=false`
    /// (and always behind a transaction-mode pooler) opening only checks
    /// that the schema is at this build's version, and a schema that is
    /// missing or behind is an error naming the fix. For a runtime role
    /// that may not run DDL.
    pub migrate: bool,
    /// The trash (`keep_deleted_days`, 7 days unless set; `purge_on_open`;
    /// see `koda_persistence_api::trash`).
    pub trash: koda_persistence_api::trash::TrashOptions,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("hosts", &self.config.get_hosts().len())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("password", &self.config.get_password().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_timeout", &self.pool_timeout)
            .field("tls", &self.tls)
            .field("pooler", &self.pooler)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            config: tokio_postgres::Config::new(),
            schema: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(10),
            tls: TlsMode::Prefer,
            pooler: Pooler::None,
            migrate: true,
            trash: koda_persistence_api::trash::TrashOptions::default(),
        }
    }
}

/// Checks a schema name: a letter or `_`, then letters, digits or `_`, at
/// most 63 bytes (so it never needs escaping beyond double quotes), and not
/// one PostgreSQL reserves (`pg_…`, `information_schema`).
///
/// # Errors
/// `InvalidInput` naming the rule.
pub fn check_schema_name(name: &str) -> Result<(), PersistenceError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !(first_ok && rest_ok && name.len() <= 63) {
        return Err(PersistenceError::InvalidInput(format!(
            "schema name {name:?} must be a letter or _ then letters, digits or _, at most 63 bytes"
        )));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("pg_") || lower == "information_schema" {
        return Err(PersistenceError::InvalidInput(format!(
            "schema name {name:?} is reserved by PostgreSQL (pg_… and information_schema)"
        )));
    }
    Ok(())
}

/// The parameters this backend reads itself; every other one goes to
/// tokio-postgres as libpq would take it.
const OWN: [&str; 9] = [
    "schema",
    "pool_size",
    "connect_timeout_ms",
    "pool_timeout_ms",
    "sslmode",
    "pooler",
    "migrate",
    "keep_deleted_days",
    "purge_on_open",
];

/// The libpq parameters tokio-postgres reads from a URL, passed to it as
/// written. `sslmode` and `options` are this layer's to read (see
/// [`TlsMode`]; the search path is the store's own).
const DRIVER_PARAMETERS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

impl PostgresOptions {
    /// Parses `postgres://user:password@host:port/db?…` (or `postgresql://`).
    /// Besides libpq's parameters that tokio-postgres understands, it takes
    /// `schema=NAME`, `pool_size=N`, `connect_timeout_ms=N`,
    /// `pool_timeout_ms=N`, `sslmode=disable|prefer|require|verify-full`,
    /// `pooler=none|transaction` and `migrate=BOOL` (the URL grammar's
    /// booleans: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`) (see
    /// [`PostgresOptions::pooler`] and [`PostgresOptions::migrate`]).
    /// Several hosts (`postgres://h1:5432,h2:5433/db`) are tried in order;
    /// with `target_session_attrs=read-write` only a primary is taken.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed URL or parameter; the message never
    /// repeats the URL (it may hold a password).
    pub fn from_url(url: &StoreUrl) -> Result<Self, PersistenceError> {
        let mut opts = PostgresOptions::default();
        if let Some(p) = url.take("schema") {
            check_schema_name(&p.value)?;
            opts.schema = Some(p.value.clone());
        }
        if let Some(p) = url.take("pool_size") {
            opts.pool_size = p.count(1, MAX_POOL_SIZE)?;
        }
        if let Some(p) = url.take("connect_timeout_ms") {
            opts.connect_timeout = p.millis()?;
        }
        if let Some(p) = url.take("pool_timeout_ms") {
            opts.pool_timeout = p.millis()?;
        }
        if let Some(p) = url.take("sslmode") {
            opts.tls = match p.one_of(&["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])? {
                "disable" => TlsMode::Disable,
                "allow" | "prefer" => TlsMode::Prefer,
                "require" => TlsMode::Require,
                _ => TlsMode::VerifyFull,
            }
        }
        if let Some(p) = url.take("pooler") {
            opts.pooler = match p.one_of(&["none", "transaction"])? {
                "transaction" => Pooler::Transaction,
                _ => Pooler::None,
            }
        }
        let migrate = url.take("migrate").map(|p| p.boolean()).transpose()?;
        opts.trash = opts.trash.with_parameters(url)?;
        if url.take("options").is_some() {
            return Err(PersistenceError::InvalidInput(format!(
                "the options URL parameter is reserved (the store sets search_path itself; \
                 its own parameters: {})",
                OWN.join(", ")
            )));
        }
        opts.migrate = match (opts.pooler, migrate) {
            (Pooler::Transaction, Some(true)) => {
                return Err(PersistenceError::InvalidInput(
                    "migrate=true cannot go with pooler=transaction: migrations need a direct \
                     connection (run koda-store migrate with the server's own URL)"
                        .into(),
                ));
            }
            (Pooler::Transaction, _) => false,
            (Pooler::None, given) => given.unwrap_or(true),
        };
        // The driver's own parameters (libpq's, as tokio-postgres reads
        // them) go to it as written (its parse error does not echo the
        // URL); any other is left for `finish`, which refuses it by name.
        let passthrough: Vec<&str> =
            DRIVER_PARAMETERS.iter().filter_map(|key| url.take(key)).map(|p| p.raw.as_str()).collect();
        let mut address = url.without_parameters();
        if !passthrough.is_empty() {
            address = format!("{address}?{}", passthrough.join("&"));
        }
        opts.config = tokio_postgres::Config::from_str(&address)
            .map_err(|e| PersistenceError::InvalidInput(format!("cannot parse the postgres URL: {e}")))?;
        opts.validate()?;
        Ok(opts)
    }

    /// The schema the tables live in: the chosen one, else `public`.
    pub fn schema_name(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    /// Checks options built in code as a URL's are checked: the schema
    /// name, the pool size and both timeouts.
    ///
    /// # Errors
    /// `InvalidInput` naming the option and what it accepts.
    pub fn validate(&self) -> Result<(), PersistenceError> {
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
        }
        check_count("pool_size", self.pool_size, 1, MAX_POOL_SIZE)?;
        self.trash.validate()?;
        if self.pooler == Pooler::Transaction && self.migrate {
            return Err(PersistenceError::InvalidInput(
                "migrate cannot be set with Pooler::Transaction: migrations need a direct \
                 connection"
                    .into(),
            ));
        }
        check_timeout("connect_timeout", self.connect_timeout)?;
        check_timeout("pool_timeout", self.pool_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PostgresOptions, PersistenceError> {
        koda_persistence_api::backend::options_of::<crate::Postgres>(url)
    }

    #[test]
    fn parses_our_parameters_and_keeps_libpq_ones() {
        let o = parse(
            "postgres://alice:s3cret@db.example:6543/koda?schema=team_a&pool_size=3&connect_timeout_ms=1500&pool_timeout_ms=250&sslmode=verify-full&application_name=koda",
        )
        .expect("parses");
        assert_eq!(o.schema.as_deref(), Some("team_a"));
        assert_eq!((o.pool_size, o.tls), (3, TlsMode::VerifyFull));
        assert_eq!(o.connect_timeout, Duration::from_millis(1500));
        assert_eq!(o.pool_timeout, Duration::from_millis(250));
        assert_eq!(o.config.get_ports(), &[6543]);
        assert_eq!(o.config.get_application_name(), Some("koda"));
        assert_eq!(o.config.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn password_never_shows_in_debug_or_errors() {
        let o = parse("postgresql://bob:hunter2@h/db").expect("parses");
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        for bad in [
            "postgres://bob:hunter2@h/db?schema=no-dashes",
            "postgres://bob:hunter2@h/db?pool_size=0",
            "postgres://bob:hunter2@h/db?sslmode=sometimes",
            "postgres://bob:hunter2@h:notaport/db",
            "postgres://bob:hunter2@h/db?options=-c%20x",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(matches!(err, PersistenceError::InvalidInput(_)));
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn pooler_and_migrate_parameters() {
        let o = parse("postgres://u@h/db?pooler=transaction").expect("parses");
        assert_eq!((o.pooler, o.migrate), (Pooler::Transaction, false));
        let o = parse("postgres://u@h/db?pooler=none&migrate=false").expect("parses");
        assert_eq!((o.pooler, o.migrate), (Pooler::None, false));
        let o = parse("postgres://u@h/db").expect("parses");
        assert_eq!((o.pooler, o.migrate), (Pooler::None, true));
        let o = parse("postgres://u@h/db?pooler=transaction&migrate=false").expect("parses");
        assert!(!o.migrate);
        for bad in [
            "postgres://u@h/db?pooler=transaction&migrate=true",
            "postgres://u@h/db?pooler=session",
            "postgres://u@h/db?migrate=maybe",
            "postgres://u@h/db?migrate=on&pooler=transaction",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(matches!(err, PersistenceError::InvalidInput(_)), "{bad}: {err}");
        }
        let mut o = PostgresOptions { pooler: Pooler::Transaction, ..PostgresOptions::default() };
        assert!(o.validate().is_err(), "pooler with migrate built in code");
        o.migrate = false;
        assert!(o.validate().is_ok());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["team_a", "_x", "T1", &"a".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "ü",
            &"a".repeat(64),
            "pg_temp",
            "pg_anything",
            "PG_catalog",
            "information_schema",
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
