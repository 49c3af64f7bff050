//! The trash: deleted sessions kept for the grace period, out of every map
//! a read walks, and brought back as they were.

use anyhow::Result;
use koda_persistence_api::Trash;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::trash::{DeletedSession, in_trash, is_expired, live_session_exists, sort_deleted};

use crate::MemoryStore;
use crate::schema::{State, Trashed};

/// `delete_session`: with a grace period the session moves to the trash
/// (its bodies keep their references), else it goes for good.
pub(crate) fn delete_session(store: &MemoryStore, session_id: &str) -> Result<bool> {
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let Some(session) = st.sessions.remove(session_id) else {
        return Ok(false);
    };
    st.unlist(&session, session_id);
    if store.keep_deleted_days == 0 {
        for id in session.order {
            st.remove_message(id);
        }
        return Ok(true);
    }
    let rows = session.order.iter().filter_map(|id| st.take_message(*id).map(|row| (*id, row))).collect();
    st.trash.insert(session_id.to_owned(), Trashed { session, rows, deleted_ms: now });
    Ok(true)
}

pub(crate) fn list_deleted(store: &MemoryStore) -> Result<Vec<DeletedSession>> {
    let now = store.clock.now_ms();
    let days = store.keep_deleted_days;
    let st = store.lock();
    let mut list: Vec<DeletedSession> = st
        .trash
        .iter()
        .filter(|(_, t)| !is_expired(t.deleted_ms, days, now))
        .map(|(id, t)| t.report(id, days))
        .collect();
    sort_deleted(&mut list);
    Ok(list)
}

pub(crate) fn restore_session(store: &MemoryStore, session_id: &str) -> Result<()> {
    let now = store.clock.now_ms();
    let days = store.keep_deleted_days;
    let mut st = store.lock();
    let st = &mut *st;
    match st.trash.get(session_id) {
        Some(t) if !is_expired(t.deleted_ms, days, now) => {}
        _ => return Err(session_not_found(session_id)),
    }
    if st.sessions.contains_key(session_id) {
        return Err(live_session_exists(session_id));
    }
    if let Some(t) = st.trash.get(session_id)
        && let Some((id, _)) = t.rows.iter().find(|(id, _)| st.messages.contains_key(id))
    {
        return Err(koda_persistence_api::PersistenceError::Conflict(format!(
            "message id {id} of the trashed session is taken by another message"
        ))
        .into());
    }
    let Some(t) = st.trash.remove(session_id) else {
        return Err(session_not_found(session_id));
    };
    for (id, row) in t.rows {
        st.put_message(id, row);
    }
    st.list(t.session.project_root.clone(), &t.session, session_id);
    st.sessions.insert(session_id.to_owned(), t.session);
    Ok(())
}

pub(crate) fn purge_deleted(store: &MemoryStore, dry_run: bool) -> Result<Vec<DeletedSession>> {
    let now = store.clock.now_ms();
    let days = store.keep_deleted_days;
    let mut st = store.lock();
    let mut gone: Vec<DeletedSession> = st
        .trash
        .iter()
        .filter(|(_, t)| is_expired(t.deleted_ms, days, now))
        .map(|(id, t)| t.report(id, days))
        .collect();
    sort_deleted(&mut gone);
    if !dry_run {
        for d in &gone {
            if let Some(t) = st.trash.remove(&d.id) {
                release(&mut st, t);
            }
        }
    }
    Ok(gone)
}

fn release(st: &mut State, t: Trashed) {
    for (_, row) in t.rows {
        for body in row.bodies.iter().flatten() {
            st.bodies.release(body);
        }
    }
}

/// `import_session`'s refusal of an id in the trash.
pub(crate) fn refuse_trashed(st: &State, session_id: &str) -> Result<()> {
    if st.trash.contains_key(session_id) {
        return Err(in_trash(session_id));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Trash for MemoryStore {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        list_deleted(self)
    }

    async fn count_deleted(&self) -> Result<usize> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        let st = self.lock();
        Ok(st.trash.values().filter(|t| !is_expired(t.deleted_ms, days, now)).count())
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        restore_session(self, session_id)
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        purge_deleted(self, dry_run)
    }
}
