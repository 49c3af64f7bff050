//! Driver errors as the contract's typed errors, with the server's words.

use deadpool_postgres::PoolError;
use koda_persistence_api::PersistenceError;
use tokio_postgres::error::SqlState;

/// What the server (or the driver) said: SQLSTATE, message, detail and
/// hint for a server error; the driver's chain of causes otherwise. Never
/// holds a password: the server does not repeat one.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut said = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            said.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            said.push_str(&format!(" (hint: {hint})"));
        }
        return said;
    }
    let mut said = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        said.push_str(&format!(": {c}"));
        cause = c.source();
    }
    said
}

/// What went wrong in a database call, as the contract's typed error where
/// one fits. The driver error stays attached as the typed error's source,
/// and the text keeps what the server said.
pub(crate) fn classify(e: tokio_postgres::Error, what: &str) -> anyhow::Error {
    let said = format!("{what}: {}", describe(&e));
    let typed = match e.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            PersistenceError::Conflict(said)
        }
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            PersistenceError::PermissionDenied(said)
        }
        Some(code)
            if code.code().starts_with("08")
                || code.code().starts_with("57P")
                || code.code().starts_with("53")
                || *code == SqlState::INVALID_CATALOG_NAME
                // A read-only server (a standby reached before failover):
                // unavailable for writes; new connections may find the
                // promoted primary.
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            PersistenceError::Unavailable(said)
        }
        Some(_) => return anyhow::Error::new(e).context(format!("postgres backend: {said}")),
        None => PersistenceError::Unavailable(said),
    };
    anyhow::Error::new(e).context(typed)
}

pub(crate) fn pool_error(e: PoolError) -> anyhow::Error {
    match e {
        PoolError::Backend(e) => classify(e, "opening a pooled connection"),
        PoolError::Timeout(kind) => {
            PersistenceError::Unavailable(format!("no database connection within the pool timeout ({kind:?})")).into()
        }
        other => PersistenceError::Unavailable(format!("connection pool: {other}")).into(),
    }
}

pub(crate) fn is_connection_loss(e: &anyhow::Error) -> bool {
    matches!(PersistenceError::of(e), Some(PersistenceError::Unavailable(_)))
}

pub(crate) fn is_retryable(e: &anyhow::Error) -> bool {
    matches!(PersistenceError::of(e), Some(PersistenceError::Conflict(_)))
}

/// A mapper for `map_err`: [`classify`] with what was being done.
pub(crate) fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> anyhow::Error {
    move |e| classify(e, what)
}

/// A role that may not use `schema` (SQLSTATE 42501 on it), with what the
/// server said.
pub(crate) fn schema_refused(schema: &str, said: impl std::fmt::Display) -> PersistenceError {
    PersistenceError::PermissionDenied(format!(
        "this role may not use schema {schema:?} (ask for its grants, or open the schema this \
         role was granted): {said}"
    ))
}
