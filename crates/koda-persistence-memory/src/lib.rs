//! `MemoryStore`: a thread-safe, in-memory implementation of the whole
//! [`Persistence`] contract. Nothing survives the process; use it for tests,
//! throwaway sessions, and as the yardstick the other backends are measured
//! against in the benchmark harness.
//!
//! All state sits behind one mutex that is held only for plain in-memory work
//! (never across an `.await`), so every call is atomic and calls are
//! linearizable.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, UsageTally, apply_context_passes, assign_ids, check_claim, check_limit,
    check_message_records, check_session_record, check_usage, format_timestamp, id_taken,
    purge_cutoff, root_to_str, usage_total,
};
use koda_persistence_api::{
    COMPACTION_HINT, Clock, CompactedStats, Import, Message, MessageRecord, MetadataRecord,
    Persistence, PersistenceError, Role, SessionInfo, SessionRecord, SessionUsage, StoreHealth,
    SystemClock,
};

/// The URL schemes this backend opens (`memory:`).
pub const SCHEMES: &[&str] = &["memory"];

/// The in-memory store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_message_id: i64,
    next_session_seq: u64,
    sessions: HashMap<String, Session>,
    /// Every message by id (ids only grow, so inserts append to the tree).
    messages: BTreeMap<i64, Row>,
    /// Ids of all user messages, for `recent_user_messages`.
    user_ids: BTreeSet<i64>,
    /// `(compacted_at, id)` of every compacted message.
    compacted: BTreeSet<(i64, i64)>,
    /// Session ids by root (`None`: root-less), newest first, so a listing
    /// costs O(limit), not O(sessions).
    by_root: HashMap<Option<String>, BTreeSet<Listed>>,
}

/// A session's place in its root's listing: newest first, ties by the
/// later creation.
type Listed = (std::cmp::Reverse<i64>, std::cmp::Reverse<u64>, String);

impl State {
    fn list(&mut self, root: Option<String>, s: &Session, id: &str) {
        self.by_root.entry(root).or_default().insert(listed(s, id));
    }

    fn unlist(&mut self, s: &Session, id: &str) {
        if let Some(set) = self.by_root.get_mut(&s.project_root) {
            set.remove(&listed(s, id));
            if set.is_empty() {
                self.by_root.remove(&s.project_root);
            }
        }
    }
}

fn listed(s: &Session, id: &str) -> Listed {
    (
        std::cmp::Reverse(s.created_ms),
        std::cmp::Reverse(s.seq),
        id.to_owned(),
    )
}

#[derive(Debug)]
struct Session {
    agent_name: String,
    /// `None`: a root-less session (imported from an older koda), listed
    /// under every root.
    project_root: Option<String>,
    created_ms: i64,
    seq: u64,
    last_accessed_ms: Option<i64>,
    title: Option<String>,
    mode: Option<String>,
    /// Message ids in conversation order.
    order: Vec<i64>,
    metadata: HashMap<String, String>,
    /// Usage by agent, kept with every write: reading it (and the total
    /// tokens a listing shows) costs O(agents).
    usage: UsageTally,
}

#[derive(Debug)]
struct Row {
    message: Message,
    created_ms: i64,
    agent: Option<String>,
    completed_ms: Option<i64>,
    compacted_ms: Option<i64>,
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn session_not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// Opens `memory:` (or `memory://`), a fresh empty store reading time
    /// from `clock`. It takes no parameters.
    ///
    /// # Errors
    /// `InvalidInput` for another URL or any parameter.
    pub async fn open_url(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let (base, params) = koda_persistence_api::backend::url::split_query(url.trim())?;
        if let Some(p) = params.first() {
            return Err(p.unknown("memory", &[]).into());
        }
        if base != "memory:" && base != "memory://" {
            return Err(
                PersistenceError::InvalidInput(format!("not a memory URL: {base:?}")).into(),
            );
        }
        Ok(Self::with_clock(clock))
    }

    /// An empty store reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::new(State {
                next_message_id: 1,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, but a poisoned lock
        // still guards consistent data: every mutation completes before unlock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_session<T>(
        &self,
        session_id: &str,
        f: impl FnOnce(&State, &Session) -> T,
    ) -> Option<T> {
        let st = self.lock();
        st.sessions.get(session_id).map(|s| f(&st, s))
    }
}

impl State {
    fn rows<'a>(&'a self, s: &'a Session) -> impl DoubleEndedIterator<Item = &'a Row> + 'a {
        s.order.iter().filter_map(|id| self.messages.get(id))
    }

    fn remove_message(&mut self, id: i64) -> Option<Row> {
        let row = self.messages.remove(&id)?;
        self.user_ids.remove(&id);
        if let Some(at) = row.compacted_ms {
            self.compacted.remove(&(at, id));
        }
        Some(row)
    }
}

fn new_message(session_id: &str, role: Role) -> Message {
    Message::bare(0, session_id, role, None)
}

#[async_trait::async_trait]
impl Persistence for MemoryStore {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        let root = root_to_str(project_root)?.to_owned();
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let mut id = uuid::Uuid::now_v7().to_string();
        while st.sessions.contains_key(&id) {
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

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        let limit = check_limit(limit)?;
        let root = root_to_str(project_root)?;
        let st = self.lock();
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

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let mut st = self.lock();
        let Some(session) = st.sessions.remove(session_id) else {
            return Ok(false);
        };
        st.unlist(&session, session_id);
        for id in session.order {
            st.remove_message(id);
        }
        Ok(true)
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        s.title = Some(title.to_owned());
        Ok(())
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        s.mode = Some(mode.to_owned());
        Ok(())
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        Ok(self
            .with_session(session_id, |_, s| s.mode.clone())
            .flatten())
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        let now = self.clock.now_ms();
        let last = self
            .with_session(session_id, |_, s| s.last_accessed_ms)
            .flatten();
        Ok(koda_persistence_api::backend::idle_secs(now, last))
    }

    async fn append_message(&self, m: NewMessage) -> Result<i64> {
        check_usage(m.usage.as_ref())?;
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let Some(session) = st.sessions.get_mut(&m.session_id) else {
            return Err(session_not_found(&m.session_id));
        };
        let id = st.next_message_id;
        st.next_message_id += 1;
        let message = m.to_message(id, now);
        if message.role == Role::User {
            st.user_ids.insert(id);
        }
        session.order.push(id);
        session
            .usage
            .add(m.agent.as_deref(), message.usage_counters());
        session.last_accessed_ms = Some(now);
        st.messages.insert(
            id,
            Row {
                message,
                created_ms: now,
                agent: m.agent,
                completed_ms: None,
                compacted_ms: None,
            },
        );
        Ok(id)
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        let rows = self
            .with_session(session_id, |st, s| {
                st.rows(s)
                    .filter(|r| r.compacted_ms.is_none())
                    .map(|r| ContextRow {
                        message: r.message.clone(),
                        complete: r.completed_ms.is_some(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(apply_context_passes(rows))
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        Ok(self
            .with_session(session_id, |st, s| {
                st.rows(s).map(|r| r.message.clone()).collect()
            })
            .unwrap_or_default())
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        let limit = check_limit(limit)?;
        let st = self.lock();
        Ok(st
            .user_ids
            .iter()
            .rev()
            .filter_map(|id| st.messages.get(id)?.message.content.clone())
            .filter(|c| !c.is_empty())
            .take(limit)
            .collect())
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        Ok(self.last_content(session_id, Role::Assistant))
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        Ok(self.last_content(session_id, Role::User))
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        Ok(self
            .with_session(session_id, |st, s| {
                st.rows(s)
                    .rev()
                    .find(|r| r.compacted_ms.is_none())
                    .is_some_and(|r| {
                        r.message.role == Role::Assistant && r.message.tool_calls.is_some()
                    })
            })
            .unwrap_or(false))
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let row = st
            .messages
            .get_mut(&message_id)
            .ok_or(PersistenceError::MessageNotFound(message_id))?;
        row.completed_ms = Some(now);
        Ok(())
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        Ok(usage_total(&self.session_usage_by_agent(session_id).await?))
    }

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        Ok(self
            .with_session(session_id, |_, s| s.usage.groups())
            .unwrap_or_default())
    }

    async fn compact_session(
        &self,
        session_id: &str,
        summary: &str,
        preserve_count: usize,
    ) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let session = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        // Positions (in conversation order) of the active messages.
        let active: Vec<usize> = session
            .order
            .iter()
            .enumerate()
            .filter(|(_, id)| {
                st.messages
                    .get(id)
                    .is_some_and(|r| r.compacted_ms.is_none())
            })
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
        let mut hint = new_message(session_id, Role::Assistant);
        hint.id = hint_id;
        hint.content = Some(COMPACTION_HINT.to_owned());
        hint.created_at = Some(format_timestamp(now));
        session
            .order
            .splice(insert_at..insert_at, [summary_id, hint_id]);
        st.messages.insert(
            summary_id,
            Row {
                message: sys,
                created_ms: now,
                completed_ms: None,
                compacted_ms: None,
                agent: None,
            },
        );
        st.messages.insert(
            hint_id,
            Row {
                message: hint,
                created_ms: now,
                completed_ms: Some(now),
                compacted_ms: None,
                agent: None,
            },
        );
        Ok(marked)
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        let mut st = self.lock();
        for id in message_ids {
            if let Some(row) = st.messages.get_mut(id) {
                row.message.content = Some(stub.to_owned());
            }
        }
        Ok(())
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        let st = self.lock();
        let mut stats = CompactedStats::default();
        let mut sessions = std::collections::HashSet::new();
        for (at, id) in &st.compacted {
            let Some(row) = st.messages.get(id) else {
                continue;
            };
            stats.message_count += 1;
            sessions.insert(row.message.session_id.as_str());
            let bytes = row.message.content.as_deref().map_or(0, str::len)
                + row.message.tool_calls.as_deref().map_or(0, str::len);
            stats.size_bytes = stats
                .size_bytes
                .saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
            if stats.oldest.is_none() {
                stats.oldest = Some(format_timestamp(*at));
            }
        }
        stats.session_count = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
        Ok(stats)
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        let now = self.clock.now_ms();
        let cutoff = purge_cutoff(now, min_age_days);
        let mut st = self.lock();
        let doomed: Vec<(i64, i64)> = st
            .compacted
            .iter()
            .take_while(|(at, _)| min_age_days == 0 || *at < cutoff)
            .copied()
            .collect();
        let mut touched: HashMap<String, Vec<i64>> = HashMap::new();
        for &(_, id) in &doomed {
            if let Some(row) = st.remove_message(id) {
                touched
                    .entry(row.message.session_id.clone())
                    .or_default()
                    .push(id);
                if let Some(s) = st.sessions.get_mut(&row.message.session_id) {
                    s.usage
                        .remove(row.agent.as_deref(), row.message.usage_counters());
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

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        Ok(self
            .with_session(session_id, |_, s| s.metadata.get(key).cloned())
            .flatten())
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        s.metadata.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

impl MemoryStore {
    fn last_content(&self, session_id: &str, role: Role) -> String {
        self.with_session(session_id, |st, s| {
            st.rows(s)
                .rev()
                .filter(|r| r.message.role == role)
                .find_map(|r| r.message.content.clone())
        })
        .flatten()
        .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Import for MemoryStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        let st = self.lock();
        let mut all: Vec<(&String, &Session)> = st.sessions.iter().collect();
        all.sort_by_key(|(_, s)| (s.created_ms, s.seq));
        Ok(all.into_iter().map(|(id, _)| id.clone()).collect())
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        Ok(self.with_session(session_id, |_, s| SessionRecord {
            id: session_id.to_owned(),
            agent_name: s.agent_name.clone(),
            project_root: s.project_root.clone(),
            created_ms: s.created_ms,
            last_accessed_ms: s.last_accessed_ms,
            title: s.title.clone(),
            mode: s.mode.clone(),
        }))
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        Ok(self
            .with_session(session_id, |st, s| {
                st.rows(s)
                    .map(|r| {
                        MessageRecord::from_message(
                            r.message.clone(),
                            r.agent.clone(),
                            r.created_ms,
                            r.completed_ms,
                            r.compacted_ms,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let mut entries: Vec<MetadataRecord> = self
            .with_session(session_id, |_, s| {
                s.metadata
                    .iter()
                    .map(|(key, value)| MetadataRecord {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        Ok(entries)
    }

    async fn health(&self) -> Result<StoreHealth> {
        // Every mutation completes under one lock: nothing to drift apart
        // but the counters `doctor` checks through the trait.
        Ok(StoreHealth {
            schema_version: 1,
            latest_schema_version: 1,
            problems: Vec::new(),
            size_bytes: None,
        })
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        let st = self.lock();
        Ok(st
            .messages
            .first_key_value()
            .zip(st.messages.last_key_value())
            .map(|((lo, _), (hi, _))| (*lo, *hi)))
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        let mut st = self.lock();
        if st.next_message_id > first {
            return Ok(false);
        }
        st.next_message_id = last.saturating_add(1);
        Ok(true)
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        let mut st = self.lock();
        if st.sessions.contains_key(&session.id) {
            return Ok(false);
        }
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

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        check_message_records(messages)?;
        let mut st = self.lock();
        let st = &mut *st;
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
            let message = r.to_message(session_id, id);
            if message.role == Role::User {
                st.user_ids.insert(id);
            }
            if let Some(at) = r.compacted_ms {
                st.compacted.insert((at, id));
            }
            session.order.push(id);
            session
                .usage
                .add(r.agent.as_deref(), message.usage_counters());
            st.messages.insert(
                id,
                Row {
                    message,
                    created_ms: r.created_ms,
                    agent: r.agent.clone(),
                    completed_ms: r.completed_ms,
                    compacted_ms: r.compacted_ms,
                },
            );
        }
        Ok(ids)
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| session_not_found(session_id))?;
        for e in entries {
            s.metadata.insert(e.key.clone(), e.value.clone());
        }
        Ok(())
    }
}
