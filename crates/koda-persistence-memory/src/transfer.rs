//! Whole sessions out and in, every field kept: the Transfer capability.

use crate::MemoryStore;
use crate::schema::{Row, Session, State};
use anyhow::Result;
use koda_persistence_api::Transfer;
use koda_persistence_api::backend::{UsageTally, assign_ids, id_taken, session_not_found};
use koda_persistence_api::{MessageRecord, MetadataRecord, Role, SessionRecord};
use std::collections::HashMap;

pub(crate) fn export_session_ids(store: &MemoryStore) -> Result<Vec<String>> {
    let st = store.lock();
    let mut all: Vec<(&String, &Session)> = st.sessions.iter().collect();
    all.sort_by_key(|(_, s)| (s.created_ms, s.seq));
    Ok(all.into_iter().map(|(id, _)| id.clone()).collect())
}

pub(crate) fn export_session(store: &MemoryStore, session_id: &str) -> Result<Option<SessionRecord>> {
    Ok(store.with_session(session_id, |_, s| record_of(session_id, s)))
}

pub(crate) fn record_of(session_id: &str, s: &Session) -> SessionRecord {
    SessionRecord {
        id: session_id.to_owned(),
        agent_name: s.agent_name.clone(),
        project_root: s.project_root.clone(),
        created_ms: s.created_ms,
        last_accessed_ms: s.last_accessed_ms,
        title: s.title.clone(),
        mode: s.mode.clone(),
    }
}

/// A session's messages as export records, in conversation order.
pub(crate) fn records_of(st: &State, s: &Session) -> Vec<MessageRecord> {
    st.rows(s)
        .map(|r| {
            MessageRecord::from_message(r.message(), r.agent.clone(), r.created_ms, r.completed_ms, r.compacted_ms)
        })
        .collect()
}

pub(crate) fn export_messages(store: &MemoryStore, session_id: &str) -> Result<Vec<MessageRecord>> {
    Ok(store.with_session(session_id, records_of).unwrap_or_default())
}

pub(crate) fn export_metadata(store: &MemoryStore, session_id: &str) -> Result<Vec<MetadataRecord>> {
    let mut entries: Vec<MetadataRecord> = store
        .with_session(session_id, |_, s| {
            s.metadata.iter().map(|(key, value)| MetadataRecord { key: key.clone(), value: value.clone() }).collect()
        })
        .unwrap_or_default();
    entries.sort();
    Ok(entries)
}

pub(crate) fn message_id_range(store: &MemoryStore) -> Result<Option<(i64, i64)>> {
    let st = store.lock();
    Ok(st.messages.first_key_value().zip(st.messages.last_key_value()).map(|((lo, _), (hi, _))| (*lo, *hi)))
}

pub(crate) fn claim_ids(store: &MemoryStore, first: i64, last: i64) -> Result<bool> {
    let mut st = store.lock();
    if st.next_message_id > first {
        return Ok(false);
    }
    st.next_message_id = last.saturating_add(1);
    Ok(true)
}

pub(crate) fn import_session(store: &MemoryStore, session: &SessionRecord) -> Result<bool> {
    import_session_in(&mut store.lock(), session)
}

pub(crate) fn import_session_in(st: &mut State, session: &SessionRecord) -> Result<bool> {
    if st.sessions.contains_key(&session.id) {
        return Ok(false);
    }
    crate::trash::refuse_trashed(st, &session.id)?;
    let seq = st.next_session_seq;
    st.next_session_seq += 1;
    let record = Session {
        agent_name: session.agent_name.clone(),
        project_root: session.project_root.clone(),
        created_ms: session.created_ms,
        seq,
        last_accessed_ms: session.last_accessed_ms,
        title: session.title.clone(),
        mode: session.mode.clone(),
        order: Vec::new(),
        metadata: HashMap::new(),
        usage: UsageTally::default(),
    };
    st.list(record.project_root.clone(), &record, &session.id);
    st.sessions.insert(session.id.clone(), record);
    Ok(true)
}

pub(crate) fn import_messages(
    store: &MemoryStore,
    session_id: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
) -> Result<Vec<i64>> {
    let mut st = store.lock();
    let ids = import_messages_in(&mut st, session_id, messages, keep_ids)?;
    // An import carries its spend, on the messages' own days (a fork,
    // which also goes through import_messages_in, does not).
    for r in messages {
        st.count(session_id, r.created_ms, r.agent.as_deref(), r.counters());
    }
    Ok(ids)
}

pub(crate) fn import_messages_in(
    st: &mut State,
    session_id: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
) -> Result<Vec<i64>> {
    if !st.sessions.contains_key(session_id) {
        return Err(session_not_found(session_id));
    }
    let (ids, next) = assign_ids(messages, keep_ids, st.next_message_id)?;
    if let Some(&taken) = ids.iter().find(|id| st.messages.contains_key(id)) {
        return Err(id_taken(taken).into());
    }
    st.next_message_id = next;
    let Some(session) = st.sessions.get_mut(session_id) else {
        return Err(session_not_found(session_id));
    };
    for (r, &id) in messages.iter().zip(&ids) {
        let mut message = r.to_message(session_id, id);
        let bodies = st.bodies.intern(&mut message);
        if message.role == Role::User {
            st.user_ids.insert(id);
        }
        if let Some(at) = r.compacted_ms {
            st.compacted.insert((at, id));
        }
        session.order.push(id);
        session.usage.add(r.agent.as_deref(), message.usage_counters());
        st.messages.insert(
            id,
            Row {
                message,
                bodies,
                created_ms: r.created_ms,
                agent: r.agent.clone(),
                completed_ms: r.completed_ms,
                compacted_ms: r.compacted_ms,
            },
        );
    }
    Ok(ids)
}

pub(crate) fn import_metadata(store: &MemoryStore, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
    let mut st = store.lock();
    let s = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
    for e in entries {
        s.metadata.insert(e.key.clone(), e.value.clone());
    }
    Ok(())
}

#[async_trait::async_trait]
impl Transfer for MemoryStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        export_session_ids(self)
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        export_session(self, session_id)
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        export_messages(self, session_id)
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        export_metadata(self, session_id)
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        message_id_range(self)
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        claim_ids(self, first, last)
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        import_session(self, session)
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        import_messages(self, session_id, messages, keep_ids)
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        import_metadata(self, session_id, entries)
    }
}
