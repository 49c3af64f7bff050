//! The reference model: a plain, obviously-correct rendering of the contract
//! (the rustdoc of the `Persistence` trait)
//! with vectors and maps, no concurrency, and no backend code.
//!
//! Sessions are named by their creation index `k` (shown as `"s{k}"`), and
//! message ids are the model's own sequence; the state machine maps both to
//! the backend's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::ledger::{GroupKey, LedgerSums, UsageBy, UsageRow, finish};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, Role, SessionInfo, SessionUsage, TODO_KEY, TokenUsage,
};

const DAY_MS: i64 = 86_400_000;

/// The typed error the contract prescribes for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    /// `PersistenceError::SessionNotFound`.
    SessionNotFound,
    /// `PersistenceError::MessageNotFound`.
    MessageNotFound,
    /// `PersistenceError::InvalidInput`.
    InvalidInput,
}

/// What one operation returned, in model terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing has run yet.
    Nothing,
    /// `Ok(())`.
    Unit,
    /// A session was created: its creation index.
    Created(usize),
    /// A message id (model numbering).
    Id(i64),
    /// A count (`compact_session`, `purge_compacted`).
    Count(usize),
    /// A boolean answer.
    Bool(bool),
    /// A string answer.
    Text(String),
    /// An optional string answer.
    OptText(Option<String>),
    /// Idle seconds.
    Idle(Option<i64>),
    /// Recent user messages.
    Texts(Vec<String>),
    /// Listed sessions (ids as `"s{k}"`).
    Sessions(Vec<SessionInfo>),
    /// Usage by agent.
    ByAgent(Vec<(String, SessionUsage)>),
    /// Search hits, best first: model message id, session name, role, rank.
    Hits(Vec<(i64, String, Role, u32)>),
    /// An error the contract prescribes.
    Err(ErrKind),
}

/// A session of the model.
#[derive(Debug, Clone)]
pub struct MSession {
    agent: String,
    root: String,
    created: i64,
    accessed: Option<i64>,
    title: Option<String>,
    mode: Option<String>,
    /// Message ids in conversation order.
    order: Vec<i64>,
    meta: BTreeMap<String, String>,
    deleted: bool,
}

/// A message of the model.
#[derive(Debug, Clone)]
struct MMessage {
    session: usize,
    role: Role,
    content: Option<String>,
    full: Option<String>,
    tool_calls: Option<String>,
    tool_call_id: Option<String>,
    usage: Option<TokenUsage>,
    agent: Option<String>,
    created: i64,
    completed: Option<i64>,
    compacted: Option<i64>,
    /// The words of `content` and of `full` (those present), kept with
    /// the text they come from.
    words: Arc<Vec<Vec<String>>>,
}

/// The words of a message's searchable fields.
fn field_words(content: &Option<String>, full: &Option<String>) -> Arc<Vec<Vec<String>>> {
    Arc::new([content, full].into_iter().flatten().map(|t| model_words(t)).collect())
}

/// The whole model state.
#[derive(Clone)]
pub struct Model {
    /// The model's clock, in ms.
    pub now: i64,
    next_id: i64,
    sessions: Vec<MSession>,
    messages: BTreeMap<i64, MMessage>,
    /// Every message id ever created, in creation order.
    pub ever_ids: Vec<i64>,
    /// The outcome of the last operation.
    pub last: Outcome,
    /// Deleted sessions in their grace period: when each was deleted and
    /// its messages, out of `messages` (the session keeps its order and
    /// metadata, `deleted` set).
    trash: BTreeMap<usize, (i64, Vec<(i64, MMessage)>)>,
    /// The usage ledger: `(session, day, agent)` → sums, added to by
    /// every insert, never lowered.
    ledger: BTreeMap<(usize, i64, String), LedgerSums>,
}

/// The grace period the machine's stores keep: every fixture opens with
/// the default.
pub const KEEP_DELETED_DAYS: u32 = koda_persistence_api::trash::DEFAULT_KEEP_DELETED_DAYS;

/// Whether a session deleted at `at` has expired at `now`: written out
/// here, not taken from the API crate.
fn expired(at: i64, now: i64) -> bool {
    at + i64::from(KEEP_DELETED_DAYS) * 86_400_000 <= now
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("now", &self.now)
            .field("sessions", &self.sessions.len())
            .field("messages", &self.messages.len())
            .field("last", &self.last)
            .finish()
    }
}

/// The name a model session goes by: `"s{k}"`.
pub fn session_name(k: usize) -> String {
    format!("s{k}")
}

fn sat_sum(values: impl Iterator<Item = i64>) -> i64 {
    values.fold(0i64, i64::saturating_add)
}

fn blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

fn named_ids(tool_calls: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(tool_calls) {
        for item in items {
            if let Some(serde_json::Value::String(id)) = item.get("id") {
                out.insert(id.clone());
            }
        }
    }
    out
}

impl Model {
    /// An empty store whose clock stands at `now`.
    pub fn new(now: i64) -> Self {
        Self {
            now,
            next_id: 1,
            sessions: Vec::new(),
            messages: BTreeMap::new(),
            ever_ids: Vec::new(),
            last: Outcome::Nothing,
            trash: BTreeMap::new(),
            ledger: BTreeMap::new(),
        }
    }

    /// How many sessions were ever created.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The distinct roots sessions were created under.
    pub fn roots(&self) -> BTreeSet<String> {
        self.sessions.iter().map(|s| s.root.clone()).collect()
    }

    fn live(&self, k: Option<usize>) -> Option<usize> {
        k.filter(|&k| self.sessions.get(k).is_some_and(|s| !s.deleted))
    }

    /// The ledger over all time grouped by `by` (sessions named `"s{k}"`;
    /// grouped by root, the session's root).
    pub fn ledger(&self, by: UsageBy) -> Vec<UsageRow> {
        finish(
            by,
            self.ledger
                .iter()
                .map(|((k, day, agent), sums)| {
                    let key = match by {
                        UsageBy::Day | UsageBy::Week | UsageBy::Month => GroupKey::Day(*day),
                        UsageBy::Root => GroupKey::Text(self.sessions[*k].root.clone()),
                        UsageBy::Agent => GroupKey::Text(agent.clone()),
                        UsageBy::Session => GroupKey::Text(format!("s{k}")),
                    };
                    (key, *sums, by == UsageBy::Session && self.live(Some(*k)).is_none())
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Moves the clock (clamped like `ManualClock`).
    pub fn advance(&mut self, delta: i64) {
        self.now = self.now.saturating_add(delta).clamp(0, koda_persistence_api::MAX_TIMESTAMP_MS);
    }

    /// `create_session`; `root` is `None` for a non-UTF-8 root.
    pub fn create_session(&mut self, agent: &str, root: Option<&str>) -> Outcome {
        let Some(root) = root else {
            return Outcome::Err(ErrKind::InvalidInput);
        };
        self.sessions.push(MSession {
            agent: agent.to_owned(),
            root: root.to_owned(),
            created: self.now,
            accessed: None,
            title: None,
            mode: None,
            order: Vec::new(),
            meta: BTreeMap::new(),
            deleted: false,
        });
        Outcome::Created(self.sessions.len() - 1)
    }

    /// `list_sessions`.
    pub fn list_sessions(&self, limit: i64, root: Option<&str>) -> Outcome {
        let (Ok(limit), Some(root)) = (u64::try_from(limit), root) else {
            return Outcome::Err(ErrKind::InvalidInput);
        };
        let mut found: Vec<usize> =
            (0..self.sessions.len()).filter(|&k| !self.sessions[k].deleted && self.sessions[k].root == root).collect();
        found.sort_by_key(|&k| std::cmp::Reverse((self.sessions[k].created, k)));
        Outcome::Sessions(
            found.into_iter().take(usize::try_from(limit).unwrap_or(usize::MAX)).map(|k| self.info(k)).collect(),
        )
    }

    fn info(&self, k: usize) -> SessionInfo {
        let s = &self.sessions[k];
        let msgs: Vec<&MMessage> = s.order.iter().filter_map(|id| self.messages.get(id)).collect();
        SessionInfo {
            id: session_name(k),
            agent_name: s.agent.clone(),
            created_at: format_timestamp(s.created),
            message_count: msgs.len() as i64,
            total_tokens: sat_sum(
                msgs.iter().filter_map(|m| m.usage).flat_map(|u| [u.prompt_tokens, u.completion_tokens]),
            ),
            title: s.title.clone(),
            mode: s.mode.clone(),
        }
    }

    /// What a store holds in bodies in this state (the rule of
    /// `koda_persistence_api::bodies`): `(bodies, references, logical
    /// bytes, unique bytes)`.
    pub fn body_counts(&self) -> (u64, u64, u64, u64) {
        use koda_persistence_api::bodies::{BodyField, is_body};
        let mut distinct = BTreeSet::new();
        let (mut refs, mut logical) = (0u64, 0u64);
        let trashed = self.trash.values().flat_map(|(_, ms)| ms.iter().map(|(_, m)| m));
        for m in self.messages.values().chain(trashed) {
            for (field, value) in [
                (BodyField::Content, &m.content),
                (BodyField::FullContent, &m.full),
                (BodyField::ToolCalls, &m.tool_calls),
            ] {
                if let Some(v) = value.as_deref().filter(|v| is_body(&m.role, field, v)) {
                    refs += 1;
                    logical += v.len() as u64;
                    distinct.insert(v);
                }
            }
        }
        let unique = distinct.iter().map(|v| v.len() as u64).sum();
        (distinct.len() as u64, refs, logical, unique)
    }

    /// `delete_session`.
    pub fn delete_session(&mut self, k: Option<usize>) -> Outcome {
        let Some(k) = self.live(k) else {
            return Outcome::Bool(false);
        };
        let s = &mut self.sessions[k];
        s.deleted = true;
        let moved = s.order.iter().filter_map(|id| self.messages.remove(id).map(|m| (*id, m))).collect();
        self.trash.insert(k, (self.now, moved));
        Outcome::Bool(true)
    }

    /// `restore_session`: back as it was while its grace period lasts.
    pub fn restore_session(&mut self, k: Option<usize>) -> Outcome {
        let Some(k) = k else {
            return Outcome::Err(ErrKind::SessionNotFound);
        };
        match self.trash.get(&k) {
            Some((at, _)) if !expired(*at, self.now) => {}
            _ => return Outcome::Err(ErrKind::SessionNotFound),
        }
        if let Some((_, moved)) = self.trash.remove(&k) {
            self.messages.extend(moved);
            self.sessions[k].deleted = false;
        }
        Outcome::Unit
    }

    /// `purge_deleted`: the names of the expired sessions, sorted; they go
    /// for good unless `dry`.
    pub fn purge_deleted(&mut self, dry: bool) -> Outcome {
        let now = self.now;
        let gone: Vec<usize> = self.trash.iter().filter(|(_, (at, _))| expired(*at, now)).map(|(k, _)| *k).collect();
        let mut names: Vec<String> = gone.iter().map(|k| session_name(*k)).collect();
        names.sort();
        if !dry {
            for k in gone {
                self.trash.remove(&k);
                self.sessions[k].order.clear();
                self.sessions[k].meta.clear();
            }
        }
        Outcome::Texts(names)
    }

    /// `list_deleted`: the names of the unexpired trashed sessions, sorted.
    pub fn list_deleted(&self) -> Outcome {
        let mut names: Vec<String> =
            self.trash.iter().filter(|(_, (at, _))| !expired(*at, self.now)).map(|(k, _)| session_name(*k)).collect();
        names.sort();
        Outcome::Texts(names)
    }

    fn session_mut(&mut self, k: Option<usize>) -> Result<&mut MSession, Outcome> {
        match self.live(k) {
            Some(k) => Ok(&mut self.sessions[k]),
            None => Err(Outcome::Err(ErrKind::SessionNotFound)),
        }
    }

    /// `set_session_title`.
    pub fn set_title(&mut self, k: Option<usize>, title: &str) -> Outcome {
        match self.session_mut(k) {
            Ok(s) => {
                s.title = Some(title.to_owned());
                Outcome::Unit
            }
            Err(e) => e,
        }
    }

    /// `set_session_mode`.
    pub fn set_mode(&mut self, k: Option<usize>, mode: &str) -> Outcome {
        match self.session_mut(k) {
            Ok(s) => {
                s.mode = Some(mode.to_owned());
                Outcome::Unit
            }
            Err(e) => e,
        }
    }

    /// `get_session_mode`.
    pub fn get_mode(&self, k: Option<usize>) -> Outcome {
        Outcome::OptText(self.live(k).and_then(|k| self.sessions[k].mode.clone()))
    }

    /// `get_session_idle_secs`.
    pub fn idle_secs(&self, k: Option<usize>) -> Outcome {
        Outcome::Idle(
            self.live(k).and_then(|k| self.sessions[k].accessed).map(|at| (self.now - at).div_euclid(1000).max(0)),
        )
    }

    /// Every inserting method: `agent` is the agent argument.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        k: Option<usize>,
        role: Role,
        content: Option<&str>,
        tool_calls: Option<&str>,
        tool_call_id: Option<&str>,
        usage: Option<&TokenUsage>,
        agent: Option<&str>,
        full: Option<&str>,
    ) -> Outcome {
        if let Some(u) = usage {
            let all =
                [u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_creation_tokens, u.thinking_tokens];
            if all.iter().any(|v| *v < 0) {
                return Outcome::Err(ErrKind::InvalidInput);
            }
        }
        let Some(k) = self.live(k) else {
            return Outcome::Err(ErrKind::SessionNotFound);
        };
        let id = self.next_id;
        self.next_id += 1;
        self.ever_ids.push(id);
        self.messages.insert(
            id,
            MMessage {
                session: k,
                role,
                words: field_words(&content.map(str::to_owned), &full.map(str::to_owned)),
                content: content.map(str::to_owned),
                full: full.map(str::to_owned),
                tool_calls: tool_calls.map(str::to_owned),
                tool_call_id: tool_call_id.map(str::to_owned),
                usage: usage.copied(),
                agent: agent.map(str::to_owned),
                created: self.now,
                completed: None,
                compacted: None,
            },
        );
        let counters = usage.map_or([None; 5], |u| {
            [u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_creation_tokens, u.thinking_tokens]
                .map(Some)
        });
        let day = self.now.div_euclid(DAY_MS);
        let agent = agent.unwrap_or("main").to_owned();
        self.ledger.entry((k, day, agent)).or_default().add(&LedgerSums::of_message(counters));
        let s = &mut self.sessions[k];
        s.order.push(id);
        s.accessed = Some(self.now);
        Outcome::Id(id)
    }

    /// `mark_message_complete`.
    pub fn mark_complete(&mut self, id: i64) -> Outcome {
        match self.messages.get_mut(&id) {
            Some(m) => {
                m.completed = Some(self.now);
                Outcome::Unit
            }
            None => Outcome::Err(ErrKind::MessageNotFound),
        }
    }

    /// `compact_session`.
    pub fn compact(&mut self, k: Option<usize>, summary: &str, keep: usize) -> Outcome {
        let Some(k) = self.live(k) else {
            return Outcome::Err(ErrKind::SessionNotFound);
        };
        let active: Vec<usize> = (0..self.sessions[k].order.len())
            .filter(|&i| self.messages[&self.sessions[k].order[i]].compacted.is_none())
            .collect();
        let marked = active.len().saturating_sub(keep);
        if marked == 0 {
            return Outcome::Count(0);
        }
        for &i in &active[..marked] {
            let id = self.sessions[k].order[i];
            if let Some(m) = self.messages.get_mut(&id) {
                m.compacted = Some(self.now);
            }
        }
        let at = if marked < active.len() { active[marked] } else { self.sessions[k].order.len() };
        let mut new_ids = Vec::new();
        for (role, text, completed) in
            [(Role::System, summary, None), (Role::Assistant, COMPACTION_HINT, Some(self.now))]
        {
            let id = self.next_id;
            self.next_id += 1;
            self.ever_ids.push(id);
            new_ids.push(id);
            self.messages.insert(
                id,
                MMessage {
                    session: k,
                    role,
                    words: field_words(&Some(text.to_owned()), &None),
                    content: Some(text.to_owned()),
                    full: None,
                    tool_calls: None,
                    tool_call_id: None,
                    usage: None,
                    agent: None,
                    created: self.now,
                    completed,
                    compacted: None,
                },
            );
        }
        self.sessions[k].order.splice(at..at, new_ids);
        Outcome::Count(marked)
    }

    /// `clear_message_content`.
    pub fn clear(&mut self, ids: &[i64], stub: &str) -> Outcome {
        for id in ids {
            if let Some(m) = self.messages.get_mut(id) {
                m.content = Some(stub.to_owned());
                m.words = field_words(&m.content, &m.full);
            }
        }
        Outcome::Unit
    }

    /// `fork_session`: `at` is `Some(None)` for a message id no message
    /// has. Copies the messages up to and including `at` (all when
    /// `None`), then, while the copied prefix holds an answer's call that
    /// no copied tool result answers, ends it before the last such answer;
    /// the copies get fresh ids in conversation order and keep their
    /// text, calls, states, times, agents and usage.
    pub fn fork(&mut self, k: Option<usize>, at: Option<Option<i64>>) -> Outcome {
        let Some(k) = self.live(k) else {
            return Outcome::Err(ErrKind::SessionNotFound);
        };
        let order = self.sessions[k].order.clone();
        let mut n = match at {
            None => order.len(),
            Some(id) => match id.and_then(|id| order.iter().position(|o| *o == id)) {
                Some(i) => i + 1,
                None => return Outcome::Err(ErrKind::MessageNotFound),
            },
        };
        loop {
            let answered: BTreeSet<String> = order[..n]
                .iter()
                .map(|id| &self.messages[id])
                .filter(|m| m.role == Role::Tool)
                .filter_map(|m| m.tool_call_id.clone())
                .collect();
            let open = order[..n].iter().rposition(|id| {
                let m = &self.messages[id];
                m.role == Role::Assistant && m.tool_calls.as_deref().is_some_and(|c| !named_ids(c).is_subset(&answered))
            });
            match open {
                Some(i) => n = i,
                None => break,
            }
        }
        let original = self.sessions[k].clone();
        let fork = self.sessions.len();
        self.sessions.push(MSession {
            agent: original.agent,
            root: original.root,
            created: self.now,
            accessed: None,
            title: Some(match original.title {
                Some(t) => format!("{t} (fork)"),
                None => "(fork)".to_owned(),
            }),
            mode: original.mode,
            order: Vec::new(),
            meta: original.meta,
            deleted: false,
        });
        for old in &order[..n] {
            let mut copy = self.messages[old].clone();
            copy.session = fork;
            let id = self.next_id;
            self.next_id += 1;
            self.ever_ids.push(id);
            self.messages.insert(id, copy);
            self.sessions[fork].order.push(id);
        }
        Outcome::Created(fork)
    }

    /// `purge_compacted`.
    pub fn purge(&mut self, days: u32) -> Outcome {
        let cutoff = self.now - i64::from(days) * DAY_MS;
        let doomed: Vec<i64> = self
            .messages
            .iter()
            .filter(|(_, m)| m.compacted.is_some_and(|at| days == 0 || at < cutoff))
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            if let Some(m) = self.messages.remove(id) {
                self.sessions[m.session].order.retain(|x| x != id);
            }
        }
        Outcome::Count(doomed.len())
    }

    /// `set_metadata` (and `set_todo` with `key = "todo"`).
    pub fn set_metadata(&mut self, k: Option<usize>, key: &str, value: &str) -> Outcome {
        match self.session_mut(k) {
            Ok(s) => {
                s.meta.insert(key.to_owned(), value.to_owned());
                Outcome::Unit
            }
            Err(e) => e,
        }
    }

    /// `get_metadata` (and `get_todo` with `key = "todo"`).
    pub fn get_metadata(&self, k: Option<usize>, key: &str) -> Outcome {
        Outcome::OptText(self.live(k).and_then(|k| self.sessions[k].meta.get(key).cloned()))
    }

    /// `get_todo`.
    pub fn get_todo(&self, k: Option<usize>) -> Outcome {
        self.get_metadata(k, TODO_KEY)
    }

    /// `recent_user_messages`.
    pub fn recent_user(&self, limit: i64) -> Outcome {
        let Ok(limit) = u64::try_from(limit) else {
            return Outcome::Err(ErrKind::InvalidInput);
        };
        Outcome::Texts(
            self.messages
                .values()
                .rev()
                .filter(|m| m.role == Role::User)
                .filter_map(|m| m.content.clone())
                .filter(|c| !c.is_empty())
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect(),
        )
    }

    fn in_order(&self, k: Option<usize>) -> Vec<(i64, &MMessage)> {
        match self.live(k) {
            Some(k) => self.sessions[k].order.iter().map(|id| (*id, &self.messages[id])).collect(),
            None => Vec::new(),
        }
    }

    /// `last_assistant_message` / `last_user_message`.
    pub fn last_of(&self, k: Option<usize>, role: Role) -> Outcome {
        Outcome::Text(
            self.in_order(k)
                .into_iter()
                .rev()
                .filter(|(_, m)| m.role == role)
                .find_map(|(_, m)| m.content.clone())
                .unwrap_or_default(),
        )
    }

    /// `has_pending_tool_calls`.
    pub fn has_pending(&self, k: Option<usize>) -> Outcome {
        let last_active = self.in_order(k).into_iter().rev().find(|(_, m)| m.compacted.is_none());
        Outcome::Bool(last_active.is_some_and(|(_, m)| m.role == Role::Assistant && m.tool_calls.is_some()))
    }

    fn usage_of<'a>(msgs: impl Iterator<Item = &'a MMessage>) -> SessionUsage {
        let counted: Vec<TokenUsage> = msgs.filter_map(|m| m.usage).collect();
        SessionUsage {
            prompt_tokens: sat_sum(counted.iter().map(|u| u.prompt_tokens)),
            completion_tokens: sat_sum(counted.iter().map(|u| u.completion_tokens)),
            cache_read_tokens: sat_sum(counted.iter().map(|u| u.cache_read_tokens)),
            cache_creation_tokens: sat_sum(counted.iter().map(|u| u.cache_creation_tokens)),
            thinking_tokens: sat_sum(counted.iter().map(|u| u.thinking_tokens)),
            api_calls: counted.len() as i64,
        }
    }

    /// `session_token_usage`.
    pub fn usage(&self, k: Option<usize>) -> SessionUsage {
        Self::usage_of(self.in_order(k).into_iter().map(|(_, m)| m))
    }

    /// `session_usage_by_agent`.
    pub fn usage_by_agent(&self, k: Option<usize>) -> Outcome {
        let msgs = self.in_order(k);
        let names: BTreeSet<String> = msgs
            .iter()
            .filter(|(_, m)| m.usage.is_some())
            .map(|(_, m)| m.agent.clone().unwrap_or_else(|| "main".into()))
            .collect();
        let mut groups: Vec<(String, SessionUsage)> = names
            .into_iter()
            .map(|name| {
                let u = Self::usage_of(
                    msgs.iter().map(|(_, m)| *m).filter(|m| m.agent.as_deref().unwrap_or("main") == name),
                );
                (name, u)
            })
            .collect();
        // Stable sort: BTreeSet already put names in byte order.
        groups.sort_by_key(|(_, u)| std::cmp::Reverse(u.prompt_tokens.saturating_add(u.completion_tokens)));
        Outcome::ByAgent(groups)
    }

    /// `compacted_stats`.
    pub fn compacted_stats(&self) -> CompactedStats {
        let compacted: Vec<&MMessage> = self.messages.values().filter(|m| m.compacted.is_some()).collect();
        let sessions: BTreeSet<usize> = compacted.iter().map(|m| m.session).collect();
        CompactedStats {
            message_count: compacted.len() as i64,
            session_count: sessions.len() as i64,
            size_bytes: sat_sum(compacted.iter().map(|m| {
                (m.content.as_deref().map_or(0, str::len) + m.tool_calls.as_deref().map_or(0, str::len)) as i64
            })),
            oldest: compacted.iter().filter_map(|m| m.compacted).min().map(format_timestamp),
        }
    }

    fn to_message(&self, id: i64, m: &MMessage) -> Message {
        let u = m.usage;
        Message {
            id,
            session_id: session_name(m.session),
            role: m.role,
            content: m.content.clone(),
            full_content: m.full.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            prompt_tokens: u.map(|u| u.prompt_tokens),
            completion_tokens: u.map(|u| u.completion_tokens),
            cache_read_tokens: u.map(|u| u.cache_read_tokens),
            cache_creation_tokens: u.map(|u| u.cache_creation_tokens),
            thinking_tokens: u.map(|u| u.thinking_tokens),
            created_at: Some(format_timestamp(m.created)),
        }
    }

    /// `load_all_messages`.
    pub fn load_all(&self, k: Option<usize>) -> Vec<Message> {
        self.in_order(k).into_iter().map(|(id, m)| self.to_message(id, m)).collect()
    }

    /// `load_context`: active messages, then the three passes.
    pub fn load_context(&self, k: Option<usize>) -> Vec<Message> {
        // Pass 1.
        let rows: Vec<(i64, &MMessage)> = self
            .in_order(k)
            .into_iter()
            .filter(|(_, m)| m.compacted.is_none())
            .filter(|(_, m)| m.role != Role::Assistant || m.completed.is_some())
            .collect();
        // Pass 2.
        let answered: BTreeSet<String> =
            rows.iter().filter(|(_, m)| m.role == Role::Tool).filter_map(|(_, m)| m.tool_call_id.clone()).collect();
        let rows: Vec<(i64, &MMessage)> = rows
            .into_iter()
            .filter(|(_, m)| {
                m.role != Role::Assistant || m.tool_calls.as_deref().is_none_or(|tc| named_ids(tc).is_subset(&answered))
            })
            .collect();
        let named: BTreeSet<String> = rows
            .iter()
            .filter(|(_, m)| m.role == Role::Assistant)
            .filter_map(|(_, m)| m.tool_calls.as_deref())
            .flat_map(named_ids)
            .collect();
        let rows = rows
            .into_iter()
            .filter(|(_, m)| m.role != Role::Tool || m.tool_call_id.as_ref().is_some_and(|id| named.contains(id)));
        // Pass 3.
        rows.filter(|(_, m)| {
            !(m.role == Role::Assistant && m.tool_calls.is_none() && m.content.as_deref().is_none_or(blank))
        })
        .map(|(id, m)| self.to_message(id, m))
        .collect()
    }
}

// ── Search: the reference, from the grammar in the trait's docs ──

/// A character that is a word by itself (Han, Hiragana, Katakana).
fn cjk(c: char) -> bool {
    let u = c as u32;
    (0x3040..=0x30FF).contains(&u)
        || (0x31F0..=0x31FF).contains(&u)
        || (0x3400..=0x4DBF).contains(&u)
        || (0x4E00..=0x9FFF).contains(&u)
        || (0xF900..=0xFAFF).contains(&u)
        || (0xFF66..=0xFF9F).contains(&u)
        || (0x20000..=0x3FFFF).contains(&u)
}

/// The lowercased words of `text`: runs of letters and digits, each CJK
/// character alone.
fn model_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if cjk(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One query item: words, last one a prefix, excluded.
struct MItem {
    words: Vec<String>,
    prefix: bool,
    exclude: bool,
}

/// The items of `query`, or `None` for a query the grammar refuses.
fn model_items(query: &str) -> Option<Vec<MItem>> {
    if query.trim().is_empty() || query.len() > koda_persistence_api::search::MAX_QUERY_BYTES {
        return None;
    }
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let mut items = Vec::new();
    let mut raw = 0;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i == chars.len() {
            return Some(items);
        }
        raw += 1;
        if raw > koda_persistence_api::search::MAX_QUERY_ITEMS {
            return None;
        }
        let exclude = chars[i] == '-' && chars.get(i + 1).is_some_and(|c| !c.is_whitespace());
        if exclude {
            i += 1;
        }
        let mut text = String::new();
        let mut prefix = false;
        if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                text.push(chars[i]);
                i += 1;
            }
            i += 1; // the closing quote, or past the end
            if chars.get(i) == Some(&'*') {
                prefix = true;
                i += 1;
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                text.push(chars[i]);
                i += 1;
            }
        }
        i = i.min(chars.len());
        prefix = (prefix || text.ends_with('*'))
            && text.trim_end_matches('*').chars().last().is_some_and(char::is_alphanumeric);
        let words = model_words(&text);
        if !words.is_empty() {
            items.push(MItem { words, prefix, exclude });
        }
    }
}

/// How many times `item` occurs in `words` (overlapping).
fn model_occurrences(item: &MItem, words: &[String]) -> usize {
    let n = item.words.len();
    if words.len() < n {
        return 0;
    }
    (0..=words.len() - n)
        .filter(|&at| {
            item.words.iter().enumerate().all(|(j, w)| {
                if item.prefix && j == n - 1 { words[at + j].starts_with(w.as_str()) } else { words[at + j] == *w }
            })
        })
        .count()
}

impl Model {
    /// `search_messages`: `root` is `Some(None)` for a non-UTF-8 root,
    /// `session` is `Some(None)` for an unknown session.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        query: &str,
        root: Option<Option<&str>>,
        session: Option<Option<usize>>,
        roles: &[Role],
        compacted: bool,
        limit: usize,
    ) -> Outcome {
        let Some(items) = model_items(query) else {
            return Outcome::Err(ErrKind::InvalidInput);
        };
        if root == Some(None) {
            return Outcome::Err(ErrKind::InvalidInput);
        }
        let limit = limit.min(koda_persistence_api::search::MAX_SEARCH_HITS);
        let mut hits = Vec::new();
        if items.is_empty() {
            return Outcome::Hits(hits);
        }
        for (id, m) in self.messages.iter().rev() {
            if hits.len() == limit {
                break;
            }
            let s = &self.sessions[m.session];
            let in_scope = !s.deleted
                && root.is_none_or(|r| r == Some(s.root.as_str()))
                && session.is_none_or(|k| k == Some(m.session))
                && (roles.is_empty() || roles.contains(&m.role))
                && (compacted || m.compacted.is_none());
            if !in_scope {
                continue;
            }
            let fields = &m.words;
            let mut rank = 0u32;
            let mut matched = true;
            for item in &items {
                let n: usize = fields.iter().map(|w| model_occurrences(item, w)).sum();
                if item.exclude == (n > 0) {
                    matched = false;
                    break;
                }
                if !item.exclude {
                    rank = rank.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
            if matched {
                hits.push((*id, session_name(m.session), m.role, rank));
            }
        }
        hits.sort_by(|a, b| b.3.cmp(&a.3).then(b.0.cmp(&a.0)));
        Outcome::Hits(hits)
    }
}
