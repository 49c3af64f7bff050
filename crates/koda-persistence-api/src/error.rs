//! The typed errors a caller can branch on.

/// A failure the caller can act on.
///
/// Trait methods return `anyhow::Result`; when the failure is one of these,
/// it is the error itself (or its root cause), so
/// `err.downcast_ref::<PersistenceError>()` finds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PersistenceError {
    /// A write named a session that does not exist; nothing was written.
    #[error("session not found: {0:?}")]
    SessionNotFound(String),
    /// `mark_message_complete` named a message id that does not exist.
    #[error("message not found: {0}")]
    MessageNotFound(i64),
    /// An argument the contract rejects: a negative limit or token counter, a
    /// project root that is not valid UTF-8, an unusable URL or option.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A write kept conflicting with concurrent writers until retries ran out.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store is unreachable, busy past its timeout, or locked by another process.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be decoded (unknown role, invalid UTF-8, not a database).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The server refused this role: a wrong password, an unknown role, or
    /// no grant on the schema or its tables.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl PersistenceError {
    /// The typed error inside `err`, if it carries one (as itself, or as the
    /// context wrapped around a driver error that stays its source).
    pub fn of(err: &anyhow::Error) -> Option<&PersistenceError> {
        err.downcast_ref::<PersistenceError>()
    }

    /// The text the variant carries (the id, for the two "not found"s).
    pub fn reason(&self) -> String {
        match self {
            PersistenceError::SessionNotFound(id) => id.clone(),
            PersistenceError::MessageNotFound(id) => id.to_string(),
            PersistenceError::InvalidInput(r)
            | PersistenceError::Conflict(r)
            | PersistenceError::Unavailable(r)
            | PersistenceError::Corrupt(r)
            | PersistenceError::PermissionDenied(r) => r.clone(),
        }
    }
}
