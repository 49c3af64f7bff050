//! The model-based state machine: random operation sequences applied to the
//! [`Model`] and to a backend, comparing every return value, and after every
//! step the whole observable state (every session's messages, context and
//! usage, the session lists of every root, the compacted stats).
//!
//! `PROPTEST_CASES` sets the number of sequences (default 64); failures are
//! shrunk and their seeds saved in `proptest-regressions/state_machine.txt`
//! of the backend crate running it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use koda_persistence_api::{Message, PersistenceError, Role, SearchHit, SearchScope, SessionInfo, TokenUsage};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use proptest_state_machine::ReferenceStateMachine;

use crate::model::{ErrKind, Model, Outcome, session_name};
use crate::{Factory, Fixture, START_MS};

const DAY_MS: i64 = 86_400_000;

/// A string argument whose `Debug` stays short for megabyte values.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 80 {
            let head: String = self.0.chars().take(16).collect();
            write!(f, "Text({head:?}… {} bytes)", self.0.len())
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// Which session an operation names: the `i`-th created (mod the count), or
/// one that never existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessRef {
    /// `i % sessions created so far`.
    Known(usize),
    /// An id no session has.
    Unknown,
}

/// Which message an operation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgRef {
    /// `i % messages created so far`.
    Known(usize),
    /// An id no message has.
    Unknown,
}

/// Which project root: one of [`ROOTS`], or a path that is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootArg {
    /// `ROOTS[i % ROOTS.len()]`.
    Pool(usize),
    /// A non-UTF-8 path.
    NonUtf8,
}

/// The roots the machine uses: distinct byte-wise, some only by a slash,
/// one too big for a database index entry.
pub static ROOTS: std::sync::LazyLock<[String; 5]> = std::sync::LazyLock::new(|| {
    ["/p".to_owned(), "/p/".to_owned(), String::new(), "/q\0ü".to_owned(), crate::cases::incompressible(9_000, 7)]
});

/// The arguments of an inserted message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    s: SessRef,
    role: Role,
    content: Option<Text>,
    tool_calls: Option<Text>,
    tool_call_id: Option<Text>,
    usage: Option<TokenUsage>,
}

/// One operation of the machine.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    CreateSession { agent: Text, root: RootArg },
    DeleteSession(SessRef),
    RestoreSession(SessRef),
    PurgeDeleted(bool),
    ListDeleted,
    SetTitle(SessRef, Text),
    SetMode(SessRef, Text),
    Insert(NewMessage),
    InsertWithAgent(NewMessage, Option<Text>),
    InsertToolFull { s: SessRef, content: Text, call_id: Text, full: Text },
    MarkComplete(MsgRef),
    Compact { s: SessRef, summary: Text, keep: usize },
    Clear { ids: Vec<MsgRef>, stub: Text },
    Purge(u32),
    SetMetadata { s: SessRef, key: Text, value: Text },
    SetTodo(SessRef, Text),
    AdvanceClock(i64),
    GetMode(SessRef),
    IdleSecs(SessRef),
    GetMetadata { s: SessRef, key: Text },
    GetTodo(SessRef),
    ListSessions { limit: i64, root: RootArg },
    RecentUser(i64),
    LastAssistant(SessRef),
    LastUser(SessRef),
    HasPending(SessRef),
    UsageByAgent(SessRef),
    Fork { s: SessRef, at: Option<MsgRef> },
    Search { query: Text, root: Option<RootArg>, s: Option<SessRef>, roles: Vec<Role>, compacted: bool, limit: usize },
}

fn resolve_session(r: SessRef, count: usize) -> Option<usize> {
    match r {
        SessRef::Known(i) if count > 0 => Some(i % count),
        _ => None,
    }
}

fn resolve_message(r: MsgRef, ever: &[i64]) -> Option<i64> {
    match r {
        MsgRef::Known(i) if !ever.is_empty() => Some(ever[i % ever.len()]),
        _ => None,
    }
}

fn root_str(r: RootArg) -> Option<&'static str> {
    match r {
        RootArg::Pool(i) => ROOTS.get(i % ROOTS.len()).map(String::as_str),
        RootArg::NonUtf8 => None,
    }
}

fn root_path(r: RootArg) -> PathBuf {
    match root_str(r) {
        Some(s) => PathBuf::from(s),
        None => non_utf8_path(),
    }
}

#[cfg(unix)]
fn non_utf8_path() -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(b"/bad\xff".to_vec()))
}

#[cfg(windows)]
fn non_utf8_path() -> PathBuf {
    use std::os::windows::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_wide(&[0x2f, 0xd800]))
}

// ── Strategies ──

/// Words texts are made of, for searches to find: cases, accents, CJK,
/// punctuation that splits words.
const VOCABULARY: [&str; 12] =
    ["alpha", "Alpha", "beta", "gamma", "long", "output", "测试", "über", "ÜBER", "é", "std::io", "flaky-test"];

fn text() -> BoxedStrategy<Text> {
    prop_oneof![
        5 => prop::collection::vec(prop::sample::select(&VOCABULARY[..]), 1..6)
            .prop_map(|w| w.join(" ")),
        4 => "[a-z ]{1,12}",
        1 => Just(String::new()),
        1 => prop_oneof![Just(" ".to_owned()), Just("\t\n ".to_owned()), Just("\u{3000}".to_owned())],
        2 => "\\PC{0,10}",
        1 => "[a\\x00é]{1,6}",
        1 => (0usize..3).prop_map(|i| ["c1", "c2", "main"][i].to_owned()),
        1 => Just("é\0".repeat(350_000)), // ~1 MB
        // Tool outputs and long texts that repeat: stored once.
        2 => (0usize..3).prop_map(|i| ["t".repeat(300), "long output ".repeat(400), "\0é".repeat(2_100)][i].clone()),
    ]
    .prop_map(Text)
    .boxed()
}

fn small_text() -> BoxedStrategy<Text> {
    prop_oneof![
        3 => "[a-z]{0,6}",
        1 => "\\PC{0,6}",
        1 => "[k\\x00 ]{1,3}",
    ]
    .prop_map(Text)
    .boxed()
}

/// Agent names: short ones, and one too big for a database index entry.
fn agent() -> BoxedStrategy<Text> {
    prop_oneof![
        12 => small_text(),
        1 => Just(Text(crate::cases::incompressible(9_000, 8))),
    ]
    .boxed()
}

fn call_id() -> BoxedStrategy<Text> {
    prop_oneof![
        4 => (1usize..5).prop_map(|i| format!("c{i}")),
        1 => small_text().prop_map(|t| t.0),
    ]
    .prop_map(Text)
    .boxed()
}

fn tool_calls() -> BoxedStrategy<Text> {
    prop_oneof![
        5 => prop::collection::vec(1usize..5, 1..4).prop_map(|ids| {
            let items: Vec<String> = ids.iter().map(|i| format!(r#"{{"id":"c{i}","type":"function"}}"#)).collect();
            format!("[{}]", items.join(","))
        }),
        1 => Just("[]".to_owned()),
        1 => Just("{not json".to_owned()),
        1 => Just(r#"{"id":"c1"}"#.to_owned()),
        1 => Just(r#"[{"id":1},{"name":"c2"}]"#.to_owned()),
        1 => "\\PC{0,8}",
    ]
    .prop_map(Text)
    .boxed()
}

fn counter() -> BoxedStrategy<i64> {
    prop_oneof![8 => 0i64..5_000, 1 => Just(i64::MAX), 1 => Just(-1i64)].boxed()
}

fn usage() -> BoxedStrategy<Option<TokenUsage>> {
    prop_oneof![
        1 => Just(None),
        2 => (counter(), counter(), counter(), counter(), counter()).prop_map(|(p, c, cr, cc, t)| {
            Some(TokenUsage {
                prompt_tokens: p,
                completion_tokens: c,
                cache_read_tokens: cr,
                cache_creation_tokens: cc,
                thinking_tokens: t,
            })
        }),
    ]
    .boxed()
}

fn sess() -> BoxedStrategy<SessRef> {
    prop_oneof![12 => any::<usize>().prop_map(SessRef::Known), 1 => Just(SessRef::Unknown)].boxed()
}

fn msg_ref() -> BoxedStrategy<MsgRef> {
    prop_oneof![12 => any::<usize>().prop_map(MsgRef::Known), 1 => Just(MsgRef::Unknown)].boxed()
}

fn root() -> BoxedStrategy<RootArg> {
    prop_oneof![12 => (0usize..ROOTS.len()).prop_map(RootArg::Pool), 1 => Just(RootArg::NonUtf8)].boxed()
}

fn limit() -> BoxedStrategy<i64> {
    prop_oneof![6 => 0i64..6, 1 => Just(i64::MAX), 1 => Just(-1i64)].boxed()
}

fn role() -> BoxedStrategy<Role> {
    prop_oneof![3 => Just(Role::User), 4 => Just(Role::Assistant), 3 => Just(Role::Tool), 1 => Just(Role::System)]
        .boxed()
}

fn new_message() -> BoxedStrategy<NewMessage> {
    (
        sess(),
        role(),
        prop::option::weighted(0.85, text()),
        prop::option::weighted(0.4, tool_calls()),
        prop::option::weighted(0.5, call_id()),
        usage(),
    )
        .prop_map(|(s, role, content, tool_calls, tool_call_id, usage)| NewMessage {
            s,
            role,
            content,
            tool_calls,
            tool_call_id,
            usage,
        })
        .boxed()
}

/// Search queries: words the generated texts hold (a word of 300 `t`s
/// is indexed cut to 128 bytes: exact and prefix queries around the cut),
/// the grammar's forms, and arbitrary text.
fn search_query() -> BoxedStrategy<Text> {
    prop_oneof![
        6 => (0usize..16).prop_map(|i| [
            "alpha", "alpha beta", "\"alpha beta\"", "-alpha", "alpha -beta", "al*", "ALPHA",
            "über", "测", "测试", "std::io", "\"io std\"", "flaky test", "\"test flaky\"",
            "-beta -gamma", "gam* -long",
        ][i].to_owned()),
        4 => "[a-z]{1,3}",
        2 => "[a-z]{1,2}\\*",
        2 => "-?[a-z]{1,2} -?[a-z]{1,2}",
        1 => "\"[a-z]{1,3} [a-z]{1,3}\"\\*?",
        1 => (0usize..12).prop_map(|i| [
            "long", "output", "\"long output\"", "-long", "long -output", "out*",
            "é", "c1", "main", "*", "\0", "OR",
        ][i].to_owned()),
        1 => (0usize..5).prop_map(|i| [
            "t".repeat(300), "t".repeat(128), format!("{}*", "t".repeat(129)),
            format!("{}*", "t".repeat(127)), "t*".to_owned(),
        ][i].clone()),
        1 => prop_oneof![Just(String::new()), Just("\u{3000}".to_owned())],
        1 => "\\PC{0,8}",
    ]
    .prop_map(Text)
    .boxed()
}

fn op() -> BoxedStrategy<Op> {
    prop_oneof![
        3 => (agent(), root()).prop_map(|(agent, root)| Op::CreateSession { agent, root }),
        1 => sess().prop_map(Op::DeleteSession),
        1 => sess().prop_map(Op::RestoreSession),
        1 => any::<bool>().prop_map(Op::PurgeDeleted),
        1 => Just(Op::ListDeleted),
        1 => (sess(), text()).prop_map(|(s, t)| Op::SetTitle(s, t)),
        1 => (sess(), small_text()).prop_map(|(s, t)| Op::SetMode(s, t)),
        8 => new_message().prop_map(Op::Insert),
        4 => (new_message(), prop::option::of(prop_oneof![Just(Text("main".into())), small_text()]))
            .prop_map(|(m, a)| Op::InsertWithAgent(m, a)),
        3 => (sess(), text(), call_id(), text())
            .prop_map(|(s, content, call_id, full)| Op::InsertToolFull { s, content, call_id, full }),
        5 => msg_ref().prop_map(Op::MarkComplete),
        2 => (sess(), text(), prop_oneof![6 => 0usize..6, 1 => Just(usize::MAX)])
            .prop_map(|(s, summary, keep)| Op::Compact { s, summary, keep }),
        1 => (prop::collection::vec(msg_ref(), 0..4), text()).prop_map(|(ids, stub)| Op::Clear { ids, stub }),
        1 => prop_oneof![Just(0u32), Just(1), Just(2), Just(u32::MAX)].prop_map(Op::Purge),
        1 => (sess(), small_text(), text()).prop_map(|(s, key, value)| Op::SetMetadata { s, key, value }),
        1 => (sess(), text()).prop_map(|(s, t)| Op::SetTodo(s, t)),
        2 => prop_oneof![4 => 0i64..5_000, 1 => Just(DAY_MS), 1 => Just(3 * DAY_MS), 1 => Just(-2_000i64)]
            .prop_map(Op::AdvanceClock),
        1 => sess().prop_map(Op::GetMode),
        1 => sess().prop_map(Op::IdleSecs),
        1 => (sess(), small_text()).prop_map(|(s, key)| Op::GetMetadata { s, key }),
        1 => sess().prop_map(Op::GetTodo),
        1 => (limit(), root()).prop_map(|(limit, root)| Op::ListSessions { limit, root }),
        1 => limit().prop_map(Op::RecentUser),
        1 => sess().prop_map(Op::LastAssistant),
        1 => sess().prop_map(Op::LastUser),
        1 => sess().prop_map(Op::HasPending),
        1 => sess().prop_map(Op::UsageByAgent),
        2 => (sess(), prop::option::weighted(0.7, msg_ref())).prop_map(|(s, at)| Op::Fork { s, at }),
        5 => (
            search_query(),
            prop::option::weighted(0.15, root()),
            prop::option::weighted(0.15, sess()),
            prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(role(), 1..3)],
            any::<bool>(),
            prop_oneof![1 => Just(0usize), 6 => 1usize..6, 3 => Just(usize::MAX)],
        )
            .prop_map(|(query, root, s, roles, compacted, limit)| Op::Search {
                query,
                root,
                s,
                roles,
                compacted,
                limit,
            }),
    ]
    .boxed()
}

/// The reference side of the state machine.
#[derive(Debug)]
pub struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::new(START_MS)).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        if state.session_count() == 0 {
            prop_oneof![
                4 => (small_text(), (0usize..ROOTS.len()).prop_map(RootArg::Pool))
                    .prop_map(|(agent, root)| Op::CreateSession { agent, root }),
                1 => op(),
            ]
            .boxed()
        } else {
            op()
        }
    }

    fn apply(mut m: Model, op: &Op) -> Model {
        let n = m.session_count();
        let s = |r: SessRef| resolve_session(r, n);
        let t = |x: &Option<Text>| x.as_ref().map(|x| x.0.clone());
        m.last = match op {
            Op::CreateSession { agent, root } => m.create_session(&agent.0, root_str(*root)),
            Op::DeleteSession(r) => m.delete_session(s(*r)),
            Op::RestoreSession(r) => m.restore_session(s(*r)),
            Op::PurgeDeleted(dry) => m.purge_deleted(*dry),
            Op::ListDeleted => m.list_deleted(),
            Op::SetTitle(r, v) => m.set_title(s(*r), &v.0),
            Op::SetMode(r, v) => m.set_mode(s(*r), &v.0),
            Op::Insert(nm) | Op::InsertWithAgent(nm, _) => {
                let agent = match op {
                    Op::InsertWithAgent(_, a) => t(a),
                    _ => None,
                };
                let (c, tc, ci) = (t(&nm.content), t(&nm.tool_calls), t(&nm.tool_call_id));
                m.insert(
                    s(nm.s),
                    nm.role,
                    c.as_deref(),
                    tc.as_deref(),
                    ci.as_deref(),
                    nm.usage.as_ref(),
                    agent.as_deref(),
                    None,
                )
            }
            Op::InsertToolFull { s: r, content, call_id, full } => {
                m.insert(s(*r), Role::Tool, Some(&content.0), None, Some(&call_id.0), None, None, Some(&full.0))
            }
            Op::MarkComplete(r) => m.mark_complete(resolve_message(*r, &m.ever_ids).unwrap_or(-1)),
            Op::Compact { s: r, summary, keep } => m.compact(s(*r), &summary.0, *keep),
            Op::Clear { ids, stub } => {
                let ids: Vec<i64> = ids.iter().map(|r| resolve_message(*r, &m.ever_ids).unwrap_or(-1)).collect();
                m.clear(&ids, &stub.0)
            }
            Op::Purge(days) => m.purge(*days),
            Op::SetMetadata { s: r, key, value } => m.set_metadata(s(*r), &key.0, &value.0),
            Op::SetTodo(r, v) => m.set_metadata(s(*r), "todo", &v.0),
            Op::AdvanceClock(d) => {
                m.advance(*d);
                Outcome::Unit
            }
            Op::GetMode(r) => m.get_mode(s(*r)),
            Op::IdleSecs(r) => m.idle_secs(s(*r)),
            Op::GetMetadata { s: r, key } => m.get_metadata(s(*r), &key.0),
            Op::GetTodo(r) => m.get_todo(s(*r)),
            Op::ListSessions { limit, root } => m.list_sessions(*limit, root_str(*root)),
            Op::RecentUser(limit) => m.recent_user(*limit),
            Op::LastAssistant(r) => m.last_of(s(*r), Role::Assistant),
            Op::LastUser(r) => m.last_of(s(*r), Role::User),
            Op::HasPending(r) => m.has_pending(s(*r)),
            Op::UsageByAgent(r) => m.usage_by_agent(s(*r)),
            Op::Fork { s: r, at } => {
                let at = at.map(|a| resolve_message(a, &m.ever_ids));
                m.fork(s(*r), at)
            }
            Op::Search { query, root, s: r, roles, compacted, limit } => {
                m.search(&query.0, root.map(root_str), r.map(s), roles, *compacted, *limit)
            }
        };
        m
    }
}

// ── The system under test ──

const UNKNOWN_SESSION: &str = "no-such-session";
const UNKNOWN_MESSAGE: i64 = -1;

/// A backend store plus the maps from model names to its names.
struct Sut {
    fx: Fixture,
    /// Creation index → the backend's session id.
    sessions: Vec<String>,
    /// Model message id → backend id, and back.
    ids: BTreeMap<i64, i64>,
    rev: HashMap<i64, i64>,
}

impl Sut {
    fn session(&self, r: SessRef) -> String {
        resolve_session(r, self.sessions.len())
            .and_then(|k| self.sessions.get(k).cloned())
            .unwrap_or_else(|| UNKNOWN_SESSION.to_owned())
    }

    fn message(&self, r: MsgRef, ever: &[i64]) -> Result<i64> {
        match resolve_message(r, ever) {
            Some(model_id) => self
                .ids
                .get(&model_id)
                .copied()
                .ok_or_else(|| anyhow!("model message {model_id} was never mapped to a backend id")),
            None => Ok(UNKNOWN_MESSAGE),
        }
    }

    /// Records that backend id `sut` is model id `model`, checking that the
    /// mapping stays a bijection and preserves id order.
    fn map_id(&mut self, model: i64, sut: i64) -> Result<()> {
        if let Some(&known) = self.ids.get(&model) {
            ensure!(known == sut, "model id {model} is backend id {known}, now also {sut}");
            return Ok(());
        }
        if let Some(&other) = self.rev.get(&sut) {
            bail!("backend id {sut} already stands for model id {other}, now also {model}");
        }
        if let Some((m, s)) = self.ids.range(..model).next_back() {
            ensure!(*s < sut, "ids out of order: model {m} < {model} but backend {s} >= {sut}");
        }
        if let Some((m, s)) = self.ids.range(model..).next() {
            ensure!(*s > sut, "ids out of order: model {model} < {m} but backend {sut} >= {s}");
        }
        self.ids.insert(model, sut);
        self.rev.insert(sut, model);
        Ok(())
    }

    fn session_name_of(&self, id: &str) -> Result<String> {
        self.sessions
            .iter()
            .position(|s| s == id)
            .map(session_name)
            .ok_or_else(|| anyhow!("backend returned unknown session id {id:?}"))
    }

    /// Rewrites backend messages into model names, mapping `want`'s ids
    /// position by position when the lengths agree.
    fn translate(&mut self, got: Vec<Message>, want: &[Message]) -> Result<Vec<Message>> {
        if got.len() == want.len() {
            for (g, w) in got.iter().zip(want) {
                if !self.rev.contains_key(&g.id) && !self.ids.contains_key(&w.id) {
                    self.map_id(w.id, g.id)?;
                }
            }
        }
        got.into_iter()
            .map(|mut m| {
                m.id = *self
                    .rev
                    .get(&m.id)
                    .ok_or_else(|| anyhow!("backend message id {} has no model counterpart", m.id))?;
                m.session_id = self.session_name_of(&m.session_id)?;
                Ok(m)
            })
            .collect()
    }

    fn translate_sessions(&self, got: Vec<SessionInfo>) -> Result<Vec<SessionInfo>> {
        got.into_iter()
            .map(|mut s| {
                s.id = self.session_name_of(&s.id)?;
                Ok(s)
            })
            .collect()
    }
}

fn err_kind(e: &anyhow::Error) -> Option<ErrKind> {
    match PersistenceError::of(e)? {
        PersistenceError::SessionNotFound(_) => Some(ErrKind::SessionNotFound),
        PersistenceError::MessageNotFound(_) => Some(ErrKind::MessageNotFound),
        PersistenceError::InvalidInput(_) => Some(ErrKind::InvalidInput),
        _ => None,
    }
}

/// Runs `op` on the backend and checks its result against `want`.
async fn apply_sut(sut: &mut Sut, model: &Model, op: &Op) -> Result<()> {
    let store = sut.fx.store.clone();
    let t = |x: &Option<Text>| x.as_ref().map(|x| x.0.clone());
    macro_rules! outcome {
        ($fut:expr, $ok:expr) => {
            match $fut.await {
                Ok(v) => {
                    #[allow(clippy::redundant_closure_call)]
                    let o: Result<Outcome> = ($ok)(v);
                    o?
                }
                Err(e) => match err_kind(&e) {
                    Some(k) => Outcome::Err(k),
                    None => return Err(e.context("backend failed with an error the contract does not prescribe")),
                },
            }
        };
    }
    let unit = |(): ()| Ok(Outcome::Unit);
    let got = match op {
        Op::CreateSession { agent, root } => {
            let out = outcome!(store.create_session(&agent.0, &root_path(*root)), |id: String| Ok(Outcome::Text(id)));
            match out {
                Outcome::Text(id) => {
                    ensure!(!sut.sessions.contains(&id), "create_session reused id {id:?}");
                    sut.sessions.push(id);
                    Outcome::Created(sut.sessions.len() - 1)
                }
                other => other,
            }
        }
        Op::DeleteSession(r) => outcome!(store.delete_session(&sut.session(*r)), |b| Ok(Outcome::Bool(b))),
        Op::RestoreSession(r) => outcome!(store.restore_session(&sut.session(*r)), unit),
        Op::PurgeDeleted(dry) => outcome!(store.purge_deleted(*dry), |list| { trashed_names(sut, list) }),
        Op::ListDeleted => outcome!(store.list_deleted(), |list| trashed_names(sut, list)),
        Op::SetTitle(r, v) => outcome!(store.set_session_title(&sut.session(*r), &v.0), unit),
        Op::SetMode(r, v) => outcome!(store.set_session_mode(&sut.session(*r), &v.0), unit),
        Op::Insert(nm) | Op::InsertWithAgent(nm, _) => {
            let sid = sut.session(nm.s);
            let (c, tc, ci) = (t(&nm.content), t(&nm.tool_calls), t(&nm.tool_call_id));
            let fut = match op {
                Op::InsertWithAgent(_, a) => {
                    let a = t(a);
                    store
                        .insert_message_with_agent(
                            &sid,
                            &nm.role,
                            c.as_deref(),
                            tc.as_deref(),
                            ci.as_deref(),
                            nm.usage.as_ref(),
                            a.as_deref(),
                        )
                        .await
                }
                _ => {
                    store
                        .insert_message(&sid, &nm.role, c.as_deref(), tc.as_deref(), ci.as_deref(), nm.usage.as_ref())
                        .await
                }
            };
            outcome!(async { fut }, |id: i64| Ok(Outcome::Id(id)))
        }
        Op::InsertToolFull { s, content, call_id, full } => {
            outcome!(
                store.insert_tool_message_with_full(&sut.session(*s), &content.0, &call_id.0, &full.0),
                |id: i64| Ok(Outcome::Id(id))
            )
        }
        Op::MarkComplete(r) => {
            let id = sut.message(*r, &model.ever_ids)?;
            outcome!(store.mark_message_complete(id), unit)
        }
        Op::Compact { s, summary, keep } => {
            outcome!(store.compact_session(&sut.session(*s), &summary.0, *keep), |n| Ok(Outcome::Count(n)))
        }
        Op::Clear { ids, stub } => {
            let ids: Vec<i64> = ids.iter().map(|r| sut.message(*r, &model.ever_ids)).collect::<Result<_>>()?;
            outcome!(store.clear_message_content(&ids, &stub.0), unit)
        }
        Op::Purge(days) => outcome!(store.purge_compacted(*days), |n| Ok(Outcome::Count(n))),
        Op::SetMetadata { s, key, value } => {
            outcome!(store.set_metadata(&sut.session(*s), &key.0, &value.0), unit)
        }
        Op::SetTodo(s, v) => outcome!(store.set_todo(&sut.session(*s), &v.0), unit),
        Op::AdvanceClock(d) => {
            sut.fx.clock.advance(*d);
            Outcome::Unit
        }
        Op::GetMode(s) => outcome!(store.get_session_mode(&sut.session(*s)), |v| Ok(Outcome::OptText(v))),
        Op::IdleSecs(s) => outcome!(store.get_session_idle_secs(&sut.session(*s)), |v| Ok(Outcome::Idle(v))),
        Op::GetMetadata { s, key } => {
            outcome!(store.get_metadata(&sut.session(*s), &key.0), |v| Ok(Outcome::OptText(v)))
        }
        Op::GetTodo(s) => outcome!(store.get_todo(&sut.session(*s)), |v| Ok(Outcome::OptText(v))),
        Op::ListSessions { limit, root } => {
            let res = store.list_sessions(*limit, &root_path(*root)).await;
            outcome!(async { res }, |v| Ok(Outcome::Sessions(sut.translate_sessions(v)?)))
        }
        Op::RecentUser(limit) => outcome!(store.recent_user_messages(*limit), |v| Ok(Outcome::Texts(v))),
        Op::LastAssistant(s) => outcome!(store.last_assistant_message(&sut.session(*s)), |v| Ok(Outcome::Text(v))),
        Op::LastUser(s) => outcome!(store.last_user_message(&sut.session(*s)), |v| Ok(Outcome::Text(v))),
        Op::HasPending(s) => outcome!(store.has_pending_tool_calls(&sut.session(*s)), |v| Ok(Outcome::Bool(v))),
        Op::UsageByAgent(s) => outcome!(store.session_usage_by_agent(&sut.session(*s)), |v| Ok(Outcome::ByAgent(v))),
        Op::Fork { s, at } => {
            // `at` names a message of the ids before the fork (the model
            // resolved it before adding the copies').
            let copies = match &model.last {
                Outcome::Created(k) => model.load_all(Some(*k)).len(),
                _ => 0,
            };
            let before = &model.ever_ids[..model.ever_ids.len().saturating_sub(copies)];
            let at = match at {
                Some(r) => Some(sut.message(*r, before)?),
                None => None,
            };
            let out = outcome!(store.fork_session(&sut.session(*s), at), |id: String| Ok(Outcome::Text(id)));
            match out {
                Outcome::Text(id) => {
                    ensure!(!sut.sessions.contains(&id), "fork_session reused id {id:?}");
                    sut.sessions.push(id);
                    Outcome::Created(sut.sessions.len() - 1)
                }
                other => other,
            }
        }
        Op::Search { query, root, s, roles, compacted, limit } => {
            let root = root.map(root_path);
            let session = s.map(|r| sut.session(r));
            let scope = SearchScope {
                project_root: root.as_deref(),
                session: session.as_deref(),
                roles,
                include_compacted: *compacted,
            };
            let res = store.search_messages(&query.0, &scope, *limit).await;
            outcome!(async { res }, |hits: Vec<SearchHit>| {
                let mut out = Vec::with_capacity(hits.len());
                for h in hits {
                    let id = *sut
                        .rev
                        .get(&h.message_id)
                        .ok_or_else(|| anyhow!("search found message {} the model never made", h.message_id))?;
                    out.push((id, sut.session_name_of(&h.session_id)?, h.role, h.rank));
                }
                Ok(Outcome::Hits(out))
            })
        }
    };
    let got = match (got, &model.last) {
        (Outcome::Id(sut_id), Outcome::Id(model_id)) => {
            sut.map_id(*model_id, sut_id)?;
            Outcome::Id(*model_id)
        }
        (g, _) => g,
    };
    if got != model.last {
        bail!("{op:?}: backend returned {got:?}, model says {:?}", model.last);
    }
    Ok(())
}

/// Compares the whole observable state of the backend with the model.
async fn check_state(sut: &mut Sut, model: &Model) -> Result<()> {
    let store = sut.fx.store.clone();
    for k in 0..sut.sessions.len() {
        let sid = sut.sessions[k].clone();
        let want = model.load_all(Some(k));
        let got = store.load_all_messages(&sid).await?;
        let got = sut.translate(got, &want)?;
        ensure!(got == want, "load_all_messages of s{k} differs:\n backend {got:?}\n model   {want:?}");
        let want = model.load_context(Some(k));
        let got = store.load_context(&sid).await?;
        let got = sut.translate(got, &want)?;
        ensure!(got == want, "load_context of s{k} differs:\n backend {got:?}\n model   {want:?}");
        let (got, want) = (store.session_token_usage(&sid).await?, model.usage(Some(k)));
        ensure!(got == want, "session_token_usage of s{k}: backend {got:?}, model {want:?}");
    }
    for root in model.roots() {
        let got = sut.translate_sessions(store.list_sessions(i64::MAX, Path::new(&root)).await?)?;
        let want = match model.list_sessions(i64::MAX, Some(&root)) {
            Outcome::Sessions(v) => v,
            other => bail!("model list_sessions gave {other:?}"),
        };
        ensure!(got == want, "list_sessions({root:?}) differs:\n backend {got:?}\n model   {want:?}");
    }
    let (got, want) = (store.compacted_stats().await?, model.compacted_stats());
    ensure!(got == want, "compacted_stats: backend {got:?}, model {want:?}");
    check_ledger(sut, model).await
}

/// The usage ledger over all time, in every grouping, against the model's
/// (session ids named as the model names them).
async fn check_ledger(sut: &mut Sut, model: &Model) -> Result<()> {
    use koda_persistence_api::ledger::{UsageBy, UsageQuery};
    for by in UsageBy::ALL {
        let q = UsageQuery {
            since_ms: 0,
            until_ms: koda_persistence_api::MAX_TIMESTAMP_MS,
            by,
            project_root: None,
            agent: None,
        };
        let mut got = sut.fx.store.usage(&q).await?;
        if by == UsageBy::Session {
            for row in &mut got {
                row.key = sut.session_name_of(&row.key)?;
            }
            got.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let mut want = model.ledger(by);
        want.sort_by(|a, b| a.key.cmp(&b.key));
        ensure!(got == want, "usage by {}: backend {got:?}, model {want:?}", by.as_str());
    }
    Ok(())
}

/// Searches that the state after every sequence is checked with (a
/// sequence's own search operations index what was written before them,
/// so later writes leave the index behind its rows; compacted messages
/// included or not): words, a phrase, a prefix, exclusions only, CJK,
/// and words around the index's 128-byte term cut (a word of 300 `t`s is
/// indexed as 128: an exact query of 128 must not find it, a prefix of
/// 129 must).
static STATE_SEARCHES: std::sync::LazyLock<Vec<(String, bool)>> = std::sync::LazyLock::new(|| {
    vec![
        ("alpha".to_owned(), false),
        ("\"alpha beta\" -gamma".to_owned(), true),
        ("al* über".to_owned(), false),
        ("-beta -long".to_owned(), true),
        ("测试 std::io".to_owned(), true),
        ("t".repeat(128), true),
        (format!("{}*", "t".repeat(129)), false),
    ]
});

/// Every [`STATE_SEARCHES`] query, everywhere, on the backend and the
/// model.
async fn check_search(sut: &mut Sut, model: &Model) -> Result<()> {
    for (query, compacted) in STATE_SEARCHES.iter() {
        let scope = SearchScope { include_compacted: *compacted, ..SearchScope::default() };
        let hits = sut.fx.store.search_messages(query, &scope, 100).await?;
        let mut got = Vec::with_capacity(hits.len());
        for h in hits {
            let id = *sut
                .rev
                .get(&h.message_id)
                .ok_or_else(|| anyhow!("search found message {} the model never made", h.message_id))?;
            got.push((id, sut.session_name_of(&h.session_id)?, h.role, h.rank));
        }
        let want = model.search(query, None, None, &[], *compacted, 100);
        ensure!(
            Outcome::Hits(got.clone()) == want,
            "search {query:?} (compacted {compacted}): backend {got:?}, model {want:?}"
        );
    }
    Ok(())
}

/// Trashed sessions as the model names them, sorted.
fn trashed_names(sut: &Sut, list: Vec<koda_persistence_api::DeletedSession>) -> Result<Outcome> {
    let mut names = list.iter().map(|d| sut.session_name_of(&d.id)).collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(Outcome::Texts(names))
}

/// The store's body accounting against the model's, and its own check
/// (references against bodies, both ways) finds nothing.
async fn check_bodies(sut: &Sut, model: &Model) -> Result<()> {
    let health = sut.fx.store.health().await?;
    ensure!(health.problems.is_empty(), "health problems: {:?}", health.problems);
    let b = health.bodies;
    let got = (b.bodies, b.references, b.logical_bytes, b.unique_bytes);
    let want = model.body_counts();
    ensure!(got == want, "bodies (count, references, logical, unique bytes): backend {got:?}, model {want:?}");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// Runs the state machine against stores made by `factory`: `PROPTEST_CASES`
/// sequences (default 64) of 1 to 40 operations. Panics with the shrunk
/// failing sequence, as a `#[test]` should.
#[allow(clippy::panic)]
pub fn run<F: Factory + ?Sized>(factory: &F) {
    run_share(factory, 1);
}

/// Like [`run`] with a `1/divisor` share of the sequences (at least one),
/// for a backend's second or third run of the suite (the same store through
/// another path), where the named cases do most of the work.
#[allow(clippy::panic)]
pub fn run_share<F: Factory + ?Sized>(factory: &F, divisor: u32) {
    if let Err(e) = try_run_cases(factory, (cases() / divisor.max(1)).max(1)) {
        panic!("{e:#}");
    }
}

/// Like [`run`], returning the failure instead of panicking.
///
/// # Errors
/// The shrunk failing sequence and what differed.
pub fn try_run<F: Factory + ?Sized>(factory: &F) -> Result<()> {
    try_run_cases(factory, cases())
}

fn try_run_cases<F: Factory + ?Sized>(factory: &F, cases: u32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    // A backend the user opted out of is reported once, not run.
    match rt.block_on(factory.create(START_MS)) {
        Ok(fx) => rt.block_on(fx.finish(Ok(())))?,
        Err(e) => return crate::skip_or_fail("state_machine", e),
    }
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/state_machine.txt"))),
        max_shrink_time: 300_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = ModelMachine::sequential_strategy(1..40usize);
    let result = runner.run(&strategy, |(initial, ops, seen): (Model, Vec<Op>, Option<Arc<AtomicUsize>>)| {
        rt.block_on(async {
            let fx =
                factory.create(START_MS).await.map_err(|e| TestCaseError::fail(format!("factory failed: {e:#}")))?;
            let mut sut = Sut { fx, sessions: Vec::new(), ids: BTreeMap::new(), rev: HashMap::new() };
            let mut model = initial;
            let mut outcome = Ok(());
            for (i, op) in ops.into_iter().enumerate() {
                if let Some(seen) = &seen {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                model = ModelMachine::apply(model, &op);
                let step = async {
                    apply_sut(&mut sut, &model, &op).await?;
                    check_state(&mut sut, &model).await
                };
                if let Err(e) = step.await {
                    outcome = Err(TestCaseError::fail(format!("step {i}: {e:#}")));
                    break;
                }
            }
            if outcome.is_ok() {
                let after = async {
                    check_bodies(&sut, &model).await?;
                    check_search(&mut sut, &model).await
                };
                outcome = after.await.map_err(|e| TestCaseError::fail(format!("after the sequence: {e:#}")));
            }
            let Sut { fx, .. } = sut;
            fx.finish(Ok(())).await.map_err(|e| TestCaseError::fail(format!("teardown failed: {e:#}")))?;
            outcome
        })
    });
    result.map_err(|e| anyhow!("state machine failed: {e}"))
}
