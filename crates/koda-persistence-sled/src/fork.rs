//! Forking a session: the Fork capability.

use crate::SledStore;
use crate::db::{Tree, Writes};
use crate::queries::get_session;
use crate::transfer::append_imported;
use crate::transfer::export_messages;
use crate::transfer::export_metadata;
use crate::transfer::export_session;
use crate::transfer::new_session;
use anyhow::Result;
use koda_persistence_api::Fork;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::session_not_found;

/// Forks `sid` at `at` into session `new_id`, in one batch: the original's
/// export, cut by [`fork_len`](koda_persistence_api::fork::fork_len), put
/// in as a new session with its metadata (each body one more reference).
pub(crate) fn fork(db: &Tree, sid: &str, at: Option<i64>, new_id: &str, now: i64) -> Result<(Writes, String)> {
    use koda_persistence_api::fork::{fork_len, fork_record};
    let original = export_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let messages = export_messages(db, sid)?;
    let n = fork_len(&messages, at)?;
    if get_session(db, new_id)?.is_some() {
        return Err(PersistenceError::Conflict(format!("session id {new_id} is taken")).into());
    }
    let mut w = db.writes();
    let session = new_session(db, &fork_record(&original, new_id, now), &mut w)?;
    append_imported(db, new_id, session, &messages[..n], false, &mut w)?;
    for e in export_metadata(db, sid)? {
        w.value(new_id, &e.key, &e.value)?;
    }
    Ok((w, new_id.to_owned()))
}

#[async_trait::async_trait]
impl Fork for SledStore {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        let (sid, now) = (session_id.to_owned(), self.clock.now_ms());
        let new_id = uuid::Uuid::now_v7().to_string();
        self.write(move |db| fork(db, &sid, at, &new_id, now)).await
    }
}
