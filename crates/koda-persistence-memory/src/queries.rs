//! One function per operation, each under the store's one lock (never
//! held across an `.await`): what the trait methods in `lib.rs` run.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, UsageTally, apply_context_passes, format_timestamp, limit_bound, purge_cutoff, root_to_str,
    session_not_found,
};
use koda_persistence_api::bodies::BodyField;
use koda_persistence_api::{COMPACTION_HINT, CompactedStats, Message, PersistenceError, Role, SessionInfo};

use crate::MemoryStore;
use crate::rows::{clamp_i64, new_message};
use crate::schema::{Listed, Row, Session};

impl MemoryStore {
    pub(crate) fn last_content(&self, session_id: &str, role: Role) -> String {
        self.with_session(session_id, |st, s| {
            st.rows(s)
                .rev()
                .filter(|r| r.message.role == role)
                .find_map(|r| r.text(BodyField::Content).map(str::to_owned))
        })
        .flatten()
        .unwrap_or_default()
    }
}

pub(crate) fn create_session(store: &MemoryStore, agent_name: &str, project_root: &Path) -> Result<String> {
    let root = root_to_str(project_root)?.to_owned();
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let mut id = uuid::Uuid::now_v7().to_string();
    while st.sessions.contains_key(&id) || st.trash.contains_key(&id) {
        id = uuid::Uuid::now_v7().to_string();
    }
    let seq = st.next_session_seq;
    st.next_session_seq += 1;
    let session = Session {
        agent_name: agent_name.to_owned(),
        project_root: Some(root),
        created_ms: now,
        seq,
        last_accessed_ms: None,
        title: None,
        mode: None,
        order: Vec::new(),
        metadata: HashMap::new(),
        usage: UsageTally::default(),
    };
    st.list(session.project_root.clone(), &session, &id);
    st.sessions.insert(id.clone(), session);
    Ok(id)
}

pub(crate) fn list_sessions(store: &MemoryStore, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
    let limit = limit_bound(limit);
    let root = root_to_str(project_root)?;
    let st = store.lock();
    let own = st.by_root.get(&Some(root.to_owned()));
    let rootless = st.by_root.get(&None);
    let mut found: Vec<&Listed> = own
        .into_iter()
        .flat_map(|set| set.iter().take(limit))
        .chain(rootless.into_iter().flat_map(|set| set.iter().take(limit)))
        .collect();
    found.sort();
    Ok(found
        .into_iter()
        .take(limit)
        .filter_map(|(_, _, id)| st.sessions.get(id).map(|s| (id, s)))
        .map(|(id, s)| SessionInfo {
            id: id.clone(),
            agent_name: s.agent_name.clone(),
            created_at: format_timestamp(s.created_ms),
            message_count: i64::try_from(s.order.len()).unwrap_or(i64::MAX),
            total_tokens: clamp_i64(s.usage.tokens()),
            title: s.title.clone(),
            mode: s.mode.clone(),
        })
        .collect())
}

pub(crate) fn set_session_title(store: &MemoryStore, session_id: &str, title: &str) -> Result<()> {
    let mut st = store.lock();
    let s = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
    s.title = Some(title.to_owned());
    Ok(())
}

pub(crate) fn set_session_mode(store: &MemoryStore, session_id: &str, mode: &str) -> Result<()> {
    let mut st = store.lock();
    let s = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
    s.mode = Some(mode.to_owned());
    Ok(())
}

pub(crate) fn get_session_idle_secs(store: &MemoryStore, session_id: &str) -> Result<Option<i64>> {
    let now = store.clock.now_ms();
    let last = store.with_session(session_id, |_, s| s.last_accessed_ms).flatten();
    Ok(koda_persistence_api::backend::idle_secs(now, last))
}

pub(crate) fn append_message(store: &MemoryStore, m: NewMessage) -> Result<i64> {
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let st = &mut *st;
    let Some(session) = st.sessions.get_mut(&m.session_id) else {
        return Err(session_not_found(&m.session_id));
    };
    let id = st.next_message_id;
    st.next_message_id += 1;
    let mut message = m.to_message(id, now);
    let bodies = st.bodies.intern(&mut message);
    if message.role == Role::User {
        st.user_ids.insert(id);
    }
    session.order.push(id);
    session.usage.add(m.agent.as_deref(), message.usage_counters());
    session.last_accessed_ms = Some(now);
    let counters = message.usage_counters();
    st.messages.insert(
        id,
        Row { message, bodies, created_ms: now, agent: m.agent.clone(), completed_ms: None, compacted_ms: None },
    );
    st.count(&m.session_id, now, m.agent.as_deref(), counters);
    Ok(id)
}

pub(crate) fn load_context(store: &MemoryStore, session_id: &str) -> Result<Vec<Message>> {
    let rows = store
        .with_session(session_id, |st, s| {
            st.rows(s)
                .filter(|r| r.compacted_ms.is_none())
                .map(|r| ContextRow { message: r.message(), complete: r.completed_ms.is_some() })
                .collect()
        })
        .unwrap_or_default();
    Ok(apply_context_passes(rows))
}

pub(crate) fn load_all_messages(store: &MemoryStore, session_id: &str) -> Result<Vec<Message>> {
    Ok(store.with_session(session_id, |st, s| st.rows(s).map(Row::message).collect()).unwrap_or_default())
}

pub(crate) fn recent_user_messages(store: &MemoryStore, limit: i64) -> Result<Vec<String>> {
    let limit = limit_bound(limit);
    let st = store.lock();
    Ok(st
        .user_ids
        .iter()
        .rev()
        .filter_map(|id| Some(st.messages.get(id)?.text(BodyField::Content)?.to_owned()))
        .filter(|c| !c.is_empty())
        .take(limit)
        .collect())
}

pub(crate) fn has_pending_tool_calls(store: &MemoryStore, session_id: &str) -> Result<bool> {
    Ok(store
        .with_session(session_id, |st, s| {
            st.rows(s)
                .rev()
                .find(|r| r.compacted_ms.is_none())
                .is_some_and(|r| r.message.role == Role::Assistant && r.text(BodyField::ToolCalls).is_some())
        })
        .unwrap_or(false))
}

pub(crate) fn mark_message_complete(store: &MemoryStore, message_id: i64) -> Result<()> {
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let row = st.messages.get_mut(&message_id).ok_or(PersistenceError::MessageNotFound(message_id))?;
    row.completed_ms = Some(now);
    Ok(())
}

pub(crate) fn compact_session(
    store: &MemoryStore,
    session_id: &str,
    summary: &str,
    preserve_count: usize,
) -> Result<usize> {
    let now = store.clock.now_ms();
    let mut st = store.lock();
    let st = &mut *st;
    let session = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
    // Positions (in conversation order) of the active messages.
    let active: Vec<usize> = session
        .order
        .iter()
        .enumerate()
        .filter(|(_, id)| st.messages.get(id).is_some_and(|r| r.compacted_ms.is_none()))
        .map(|(pos, _)| pos)
        .collect();
    let marked = active.len().saturating_sub(preserve_count);
    if marked == 0 {
        return Ok(0);
    }
    for &pos in &active[..marked] {
        let Some(&id) = session.order.get(pos) else {
            continue;
        };
        if let Some(row) = st.messages.get_mut(&id) {
            row.compacted_ms = Some(now);
            st.compacted.insert((now, id));
        }
    }
    let insert_at = active.get(marked).copied().unwrap_or(session.order.len());
    let summary_id = st.next_message_id;
    let hint_id = summary_id + 1;
    st.next_message_id += 2;
    let mut sys = new_message(session_id, Role::System);
    sys.id = summary_id;
    sys.content = Some(summary.to_owned());
    sys.created_at = Some(format_timestamp(now));
    let sys_bodies = st.bodies.intern(&mut sys);
    let mut hint = new_message(session_id, Role::Assistant);
    hint.id = hint_id;
    hint.content = Some(COMPACTION_HINT.to_owned());
    hint.created_at = Some(format_timestamp(now));
    session.order.splice(insert_at..insert_at, [summary_id, hint_id]);
    st.messages.insert(
        summary_id,
        Row { message: sys, bodies: sys_bodies, created_ms: now, completed_ms: None, compacted_ms: None, agent: None },
    );
    st.messages.insert(
        hint_id,
        Row {
            message: hint,
            bodies: Default::default(),
            created_ms: now,
            completed_ms: Some(now),
            compacted_ms: None,
            agent: None,
        },
    );
    Ok(marked)
}

pub(crate) fn clear_message_content(store: &MemoryStore, message_ids: &[i64], stub: &str) -> Result<()> {
    let mut st = store.lock();
    let st = &mut *st;
    for id in message_ids {
        if let Some(row) = st.messages.get_mut(id) {
            row.set_content(&mut st.bodies, stub);
        }
    }
    Ok(())
}

pub(crate) fn compacted_stats(store: &MemoryStore) -> Result<CompactedStats> {
    let st = store.lock();
    let mut stats = CompactedStats::default();
    let mut sessions = std::collections::HashSet::new();
    for (at, id) in &st.compacted {
        let Some(row) = st.messages.get(id) else {
            continue;
        };
        stats.message_count += 1;
        sessions.insert(row.message.session_id.as_str());
        let bytes =
            row.text(BodyField::Content).map_or(0, str::len) + row.text(BodyField::ToolCalls).map_or(0, str::len);
        stats.size_bytes = stats.size_bytes.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
        if stats.oldest.is_none() {
            stats.oldest = Some(format_timestamp(*at));
        }
    }
    stats.session_count = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
    Ok(stats)
}

pub(crate) fn purge_compacted(store: &MemoryStore, min_age_days: u32) -> Result<usize> {
    let now = store.clock.now_ms();
    let cutoff = purge_cutoff(now, min_age_days);
    let mut st = store.lock();
    let doomed: Vec<(i64, i64)> =
        st.compacted.iter().take_while(|(at, _)| min_age_days == 0 || *at < cutoff).copied().collect();
    let mut touched: HashMap<String, Vec<i64>> = HashMap::new();
    for &(_, id) in &doomed {
        if let Some(row) = st.remove_message(id) {
            touched.entry(row.message.session_id.clone()).or_default().push(id);
            if let Some(s) = st.sessions.get_mut(&row.message.session_id) {
                s.usage.remove(row.agent.as_deref(), row.message.usage_counters());
            }
        }
    }
    for (sid, ids) in touched {
        if let Some(s) = st.sessions.get_mut(&sid) {
            let gone: std::collections::HashSet<i64> = ids.into_iter().collect();
            s.order.retain(|id| !gone.contains(id));
        }
    }
    Ok(doomed.len())
}

pub(crate) fn set_metadata(store: &MemoryStore, session_id: &str, key: &str, value: &str) -> Result<()> {
    let mut st = store.lock();
    let s = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
    s.metadata.insert(key.to_owned(), value.to_owned());
    Ok(())
}
