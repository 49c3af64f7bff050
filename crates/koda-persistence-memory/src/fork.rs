//! Forking a session: the Fork capability.

use crate::MemoryStore;
use crate::transfer::{import_messages_in, import_session_in, record_of, records_of};
use anyhow::Result;
use koda_persistence_api::Fork;
use koda_persistence_api::backend::session_not_found;

/// Forks `session_id` at `at` under the store's one lock: the original's
/// rows, cut by [`fork_len`](koda_persistence_api::fork::fork_len),
/// imported as a new session (bodies gain a reference each).
pub(crate) fn fork_session(store: &MemoryStore, session_id: &str, at: Option<i64>) -> Result<String> {
    use koda_persistence_api::fork::{fork_len, fork_record};
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let st = &mut *st;
    let Some(s) = st.sessions.get(session_id) else {
        return Err(session_not_found(session_id));
    };
    let original = record_of(session_id, s);
    let messages = records_of(st, s);
    let metadata = s.metadata.clone();
    let n = fork_len(&messages, at)?;
    let mut id = uuid::Uuid::now_v7().to_string();
    while st.sessions.contains_key(&id) || st.trash.contains_key(&id) {
        id = uuid::Uuid::now_v7().to_string();
    }
    import_session_in(st, &fork_record(&original, &id, now))?;
    import_messages_in(st, &id, &messages[..n], false)?;
    if let Some(fork) = st.sessions.get_mut(&id) {
        fork.metadata = metadata;
    }
    Ok(id)
}

#[async_trait::async_trait]
impl Fork for MemoryStore {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        fork_session(self, session_id, at)
    }
}
