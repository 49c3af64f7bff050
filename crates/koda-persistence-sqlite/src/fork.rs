//! Forking a session: the Fork capability.

use crate::SqliteStore;
use crate::queries::not_found;
use crate::transfer::export_messages;
use crate::transfer::export_metadata;
use crate::transfer::export_session;
use crate::transfer::import_messages;
use crate::transfer::import_metadata;
use crate::transfer::import_session;
use anyhow::Result;
use koda_persistence_api::Fork;
use koda_persistence_api::PersistenceError;
use rusqlite::Transaction;

/// Forks `session_id` at `at` into a new session `new_id`, in the write's
/// one transaction: the export of the original, cut by
/// [`fork_len`](koda_persistence_api::fork::fork_len), imported as a new
/// session (bodies gain a reference each through the counting triggers).
pub(crate) fn fork(
    tx: &Transaction<'_>,
    session_id: &str,
    at: Option<i64>,
    new_id: &str,
    now: i64,
    blobs: bool,
) -> Result<String> {
    use koda_persistence_api::fork::{fork_len, fork_record};
    let original = export_session(tx, session_id)?.ok_or_else(|| not_found(session_id))?;
    let messages = export_messages(tx, session_id)?;
    let n = fork_len(&messages, at)?;
    if !import_session(tx, &fork_record(&original, new_id, now))? {
        return Err(PersistenceError::Conflict(format!("session id {new_id} is taken")).into());
    }
    import_messages(tx, new_id, &messages[..n], false, blobs)?;
    crate::ledger::uncount_fork(tx, new_id)?;
    import_metadata(tx, new_id, &export_metadata(tx, session_id)?, now)?;
    Ok(new_id.to_owned())
}

#[async_trait::async_trait]
impl Fork for SqliteStore {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        let (sid, blobs, now) = (session_id.to_owned(), self.stores_bodies_once(), self.clock.now_ms());
        let new_id = uuid::Uuid::now_v7().to_string();
        self.write(move |tx| fork(tx, &sid, at, &new_id, now, blobs)).await
    }
}
