//! W13: search across sessions. A history of realistic text, generated
//! deterministically (English prose, Rust code, stack traces, test logs,
//! some Chinese; request ids that occur once), 100 messages a session,
//! written by `import_messages`. 20 fixed queries (words, phrases,
//! prefixes, exclusions, CJK, a rare id), limit 20, timed at two sizes
//! (`small` then `large` sessions, the same store grown), against the
//! same index queried raw in the same run (SQLite: the FTS5 table joined
//! to its rows; PostgreSQL: the `tsvector` under GIN). The first search
//! after a fill indexes what the fill wrote (SQLite and PostgreSQL index
//! lazily, see their docs): timed on its own as the catch-up. Then W1
//! (10,000 sequential inserts) with the index against the same store
//! with its search triggers and indexes dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use koda_persistence::search::Query;
use koda_persistence::{MessageRecord, Role, SearchScope, SessionRecord, Store};

use crate::ceiling::pg_connect;
use crate::targets::{Fresh, Target};
use crate::w12::Gen;
use crate::workloads::{progress, stats, w1};

/// Messages per session.
pub const PER_SESSION: usize = 100;
/// Hits asked of each search.
pub const LIMIT: usize = 20;

/// The fixed queries.
pub const QUERIES: [&str; 20] = [
    "flaky",
    "timeout",
    "connection refused",
    "\"connection refused\"",
    "panicked",
    "unwrap",
    "database migration",
    "serial*",
    "tok*",
    "deadlock -retry",
    "测试",
    "数据库 连接",
    "E0502",
    "req-4711",
    "borrow checker",
    "\"cache invalidation\"",
    "src/worker.rs",
    "\"thread main\"",
    "schema -postgres",
    "lifetime*",
];

const PROSE: &[&str] = &[
    "the",
    "test",
    "is",
    "flaky",
    "on",
    "CI",
    "because",
    "a",
    "connection",
    "to",
    "database",
    "times",
    "out",
    "we",
    "should",
    "retry",
    "with",
    "backoff",
    "after",
    "deadlock",
    "fix",
    "build",
    "deploy",
    "migration",
    "schema",
    "cache",
    "invalidation",
    "is",
    "hard",
    "borrow",
    "checker",
    "rejects",
    "this",
    "lifetime",
    "of",
    "the",
    "handle",
    "serializer",
    "tokio",
    "runtime",
    "worker",
    "thread",
    "pool",
    "refused",
    "timeout",
    "index",
    "query",
    "planner",
    "postgres",
    "sqlite",
    "session",
    "message",
    "compaction",
    "summary",
    "agent",
    "tool",
    "call",
    "result",
    "error",
    "warning",
    "config",
    "flag",
    "feature",
    "crate",
    "module",
    "function",
    "returns",
    "value",
    "field",
    "struct",
    "trait",
    "async",
    "await",
    "future",
    "stream",
    "buffer",
    "bytes",
    "file",
    "path",
    "directory",
    "permission",
    "denied",
    "user",
    "request",
    "response",
    "latency",
    "throughput",
    "benchmark",
    "regression",
    "and",
    "but",
    "so",
    "then",
];

const IDENTS: &[&str] = &[
    "session",
    "store",
    "insert",
    "context",
    "compact",
    "usage",
    "tokens",
    "parse",
    "render",
    "worker",
    "handle",
    "stream",
    "query",
    "schema",
    "cache",
    "retry",
    "pool",
    "serialize",
    "tokenize",
    "index",
    "config",
    "connect",
    "timeout",
    "checkpoint",
];

const CJK: &[&str] = &[
    "修复",
    "测试",
    "失败",
    "数据库",
    "连接",
    "超时",
    "错误",
    "日志",
    "部署",
    "配置",
    "缓存",
    "重试",
    "用户",
    "会话",
    "消息",
    "索引",
];

impl Gen {
    fn sentence(&mut self, words: usize) -> String {
        let mut s = String::new();
        for k in 0..words {
            if k > 0 {
                s.push(' ');
            }
            s.push_str(self.pick(PROSE));
        }
        s.push('.');
        s
    }

    fn code(&mut self, lines: usize) -> String {
        let mut out = String::new();
        for _ in 0..lines {
            let line = match self.next() % 3 {
                0 => format!(
                    "    let {} = {}_{}(&{})?;\n",
                    self.pick(IDENTS),
                    self.pick(IDENTS),
                    self.pick(IDENTS),
                    self.pick(IDENTS)
                ),
                1 => format!(
                    "fn {}_{}(x: &{}) -> Result<{}> {{\n",
                    self.pick(IDENTS),
                    self.pick(IDENTS),
                    self.pick(IDENTS),
                    self.pick(IDENTS)
                ),
                _ => format!("error[E0{:03}]: cannot borrow `{}` as mutable\n", self.next() % 800, self.pick(IDENTS)),
            };
            out.push_str(&line);
        }
        out
    }

    fn trace(&mut self) -> String {
        format!(
            "thread '{}' panicked at src/{}.rs:{}:{}:\ncalled `Result::unwrap()` on an `Err` value: {}\n\
             stack backtrace:\n   0: koda::{}::{}\n   1: tokio::runtime::task::harness::poll\n\
             test {}::{} ... FAILED (req-{})\n",
            if self.next().is_multiple_of(2) { "main" } else { "tokio-runtime-worker" },
            self.pick(IDENTS),
            self.next() % 900,
            self.next() % 80,
            self.pick(&["connection refused", "timed out", "deadlock detected", "Io(Kind(NotFound))"]),
            self.pick(IDENTS),
            self.pick(IDENTS),
            self.pick(IDENTS),
            self.pick(IDENTS),
            self.next() % 1_000_000
        )
    }

    fn chinese(&mut self, words: usize) -> String {
        let mut s = String::new();
        for _ in 0..words {
            s.push_str(self.pick(CJK));
        }
        s.push('。');
        s
    }

    /// `base` plus a draw below `span`.
    fn upto(&mut self, base: usize, span: u64) -> usize {
        base + usize::try_from(self.next() % span).unwrap_or(0)
    }

    /// A message's text by role.
    fn text(&mut self, role: Role) -> String {
        match role {
            Role::User => {
                let n = self.upto(8, 30);
                if self.next().is_multiple_of(5) { self.chinese(n / 2) } else { self.sentence(n) }
            }
            Role::Assistant => {
                let n = self.upto(15, 40);
                let mut s = self.sentence(n);
                if self.next().is_multiple_of(4) {
                    s.push('\n');
                    s.push_str(&self.code(3));
                }
                s
            }
            _ => match self.next() % 3 {
                0 => self.trace(),
                1 => {
                    let n = self.upto(5, 30);
                    self.code(n)
                }
                _ => {
                    let (code, n) = (self.code(2), self.upto(10, 20));
                    format!("{code}{}", self.sentence(n))
                }
            },
        }
    }
}

/// Session `s` of the history (the same at every call).
fn session(s: usize) -> (SessionRecord, Vec<MessageRecord>) {
    let mut g = Gen(0x5eed_0013 ^ (s as u64).wrapping_mul(0x9e37_79b9));
    let base = 1_700_000_000_000 + (s as i64) * 1_000;
    let record = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        agent_name: "main".into(),
        project_root: Some(format!("/w13/p{}", s % 10)),
        created_ms: base,
        last_accessed_ms: None,
        title: None,
        mode: None,
    };
    let messages = (0..PER_SESSION)
        .map(|i| {
            let role = [Role::User, Role::Assistant, Role::Tool][i % 3];
            let call = format!("call_{s}_{}", i / 3);
            MessageRecord {
                content: Some(g.text(role)),
                tool_calls: (role == Role::Assistant)
                    .then(|| format!(r#"[{{"id":"{call}","type":"function","function":{{"name":"bash"}}}}]"#)),
                tool_call_id: (role == Role::Tool).then_some(call),
                completed_ms: (role == Role::Assistant).then_some(base + i as i64),
                ..MessageRecord::bare(i64::try_from(s * PER_SESSION + i + 1).unwrap_or(i64::MAX), role, base + i as i64)
            }
        })
        .collect();
    (record, messages)
}

/// Imports sessions `from..to`.
async fn fill(store: &dyn Store, from: usize, to: usize) -> Result<()> {
    let bar = progress((to - from) as u64, "W13 fill");
    for s in from..to {
        let (record, messages) = session(s);
        store.import_session(&record).await?;
        store.import_messages(&record.id, &messages, false).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// One size's figures.
#[derive(Debug, Clone)]
pub struct Size {
    pub messages: usize,
    /// The first search after the fill (it indexes what the fill wrote).
    pub catch_up: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// The raw index, when the backend has one.
    pub ceiling: Option<(Duration, Duration)>,
}

/// What W13 measured on one backend.
#[derive(Debug, Clone)]
pub struct W13 {
    pub name: String,
    pub sizes: Vec<Size>,
    /// W1 with the index (messages/s, median of the rounds).
    pub w1_with: f64,
    /// W1 with the search triggers and indexes dropped.
    pub w1_without: Option<f64>,
    /// Queries whose hits differed from the raw index's (single words).
    pub failures: Vec<String>,
}

/// The raw index of one store.
enum Raw {
    None,
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Raw {
    fn of(target: &Target, fresh: &Fresh) -> Self {
        match (target, &fresh.sqlite_path, &fresh.pg_schema) {
            (Target::Sqlite { .. }, Some(p), _) => Raw::Sqlite(p.clone()),
            (Target::Postgres { url }, _, Some(schema)) => Raw::Postgres { url: url.clone(), schema: schema.clone() },
            _ => Raw::None,
        }
    }

    /// Times `rounds` rounds of every query against the raw index; returns
    /// the times and, per query, the ids it found (newest first).
    async fn time(&self, rounds: usize) -> Result<Option<(Vec<Duration>, Vec<Vec<i64>>)>> {
        let queries: Vec<Query> = QUERIES.iter().map(|q| Query::parse(q)).collect::<Result<_, _>>()?;
        let limit = i64::try_from(LIMIT).unwrap_or(20);
        let mut times = Vec::new();
        let mut found = vec![Vec::new(); queries.len()];
        match self {
            Raw::None => return Ok(None),
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                let mut stmt = conn.prepare(
                    "SELECT m.id, m.content, m.full_content FROM kp_search s
                     JOIN messages m ON m.id = s.rowid
                     WHERE kp_search MATCH ?1 ORDER BY s.rowid DESC LIMIT ?2",
                )?;
                for _ in 0..rounds {
                    for (k, q) in queries.iter().enumerate() {
                        let expr = q.fts5().context("every W13 query requires a word")?;
                        let started = Instant::now();
                        let rows: Vec<(i64, Option<String>, Option<String>)> = stmt
                            .query_map(rusqlite::params![expr, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect::<Result<_, _>>()?;
                        times.push(started.elapsed());
                        found[k] = rows.iter().map(|r| r.0).collect();
                    }
                }
            }
            Raw::Postgres { url, schema } => {
                let client = pg_connect(url).await?;
                let stmt = client
                    .prepare(&format!(
                        "SELECT id, content, full_content FROM \"{schema}\".messages
                         WHERE search @@ CAST($1::TEXT AS tsquery) ORDER BY id DESC LIMIT $2"
                    ))
                    .await?;
                for _ in 0..rounds {
                    for (k, q) in queries.iter().enumerate() {
                        let tsq = q.tsquery().context("every W13 query requires a word")?;
                        let started = Instant::now();
                        let rows = client.query(&stmt, &[&tsq, &limit]).await?;
                        times.push(started.elapsed());
                        found[k] = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
                    }
                }
            }
        }
        Ok(Some((times, found)))
    }

    /// Drops the search index's write path (triggers, indexes), for W1
    /// without it.
    async fn drop_index(&self) -> Result<()> {
        match self {
            Raw::None => {}
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(5))?;
                conn.execute_batch(
                    "DROP TRIGGER kp_search_inserted; DROP TRIGGER kp_search_changed;
                     DROP TRIGGER kp_search_deleted;",
                )?;
            }
            Raw::Postgres { url, schema } => {
                pg_connect(url)
                    .await?
                    .batch_execute(&format!(
                        "DROP TRIGGER messages_search_forget ON \"{schema}\".messages;
                         DROP INDEX \"{schema}\".messages_search;
                         DROP INDEX \"{schema}\".messages_unindexed;"
                    ))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Times `rounds` rounds of every query through the store; returns the
/// times and the ids each query found.
async fn time_store(store: &dyn Store, rounds: usize) -> Result<(Vec<Duration>, Vec<Vec<i64>>)> {
    let mut times = Vec::new();
    let mut found = vec![Vec::new(); QUERIES.len()];
    for _ in 0..rounds {
        for (k, q) in QUERIES.iter().enumerate() {
            let started = Instant::now();
            let hits = store.search_messages(q, &SearchScope::default(), LIMIT).await?;
            times.push(started.elapsed());
            found[k] = hits.iter().map(|h| h.message_id).collect();
        }
    }
    Ok((times, found))
}

/// W13 on `target`: `small` then `large` sessions, W1 of `w1_n` inserts.
pub async fn run(target: &Target, small: usize, large: usize, w1_n: usize) -> Result<W13> {
    let fresh = target.fresh("w13").await?;
    let raw = Raw::of(target, &fresh);
    // Scans read every message of a rare word's query: fewer rounds.
    let rounds = if matches!(raw, Raw::None) { 1 } else { 5 };
    let mut sizes = Vec::new();
    let mut failures = Vec::new();
    let mut filled = 0;
    for sessions in [small, large] {
        fill(&*fresh.store, filled, sessions).await?;
        filled = sessions;
        let started = Instant::now();
        fresh.store.search_messages("flaky", &SearchScope::default(), LIMIT).await?;
        let catch_up = started.elapsed();
        let (mut times, found) = time_store(&*fresh.store, rounds).await?;
        let (p50, p99) = stats(&mut times);
        let ceiling = match raw.time(rounds).await? {
            Some((mut t, raw_found)) => {
                // A query of one word (no phrase, prefix or exclusion):
                // the index decides alone, so the newest `LIMIT` matches
                // must be the same messages. (A phrase is ANDed words in
                // a tsquery, which the store then narrows.)
                for (k, q) in QUERIES.iter().enumerate() {
                    let items = Query::parse(q)?.items;
                    let plain = matches!(items.as_slice(), [i] if i.words.len() == 1 && !i.prefix && !i.exclude);
                    let (mut a, mut b) = (found[k].clone(), raw_found[k].clone());
                    a.sort_unstable();
                    b.sort_unstable();
                    if plain && a != b {
                        failures.push(format!(
                            "W13 on {}: {q:?} at {} messages: the store found {a:?}, the index {b:?}",
                            target.name(),
                            sessions * PER_SESSION
                        ));
                    }
                }
                Some(stats(&mut t))
            }
            None => None,
        };
        ensure!(found.iter().any(|f| !f.is_empty()), "W13 found nothing for every query");
        sizes.push(Size { messages: sessions * PER_SESSION, catch_up, p50, p99, ceiling });
    }
    target.cleanup(fresh).await?;
    // W1 with and without the index, alternated.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let rounds = if matches!(raw, Raw::None) { 1 } else { 2 };
    for _ in 0..rounds {
        let f = target.fresh("w13w1").await?;
        with.push(w1(&*f.store, w1_n).await?);
        target.cleanup(f).await?;
        let f = target.fresh("w13w1").await?;
        let raw = Raw::of(target, &f);
        if !matches!(raw, Raw::None) {
            raw.drop_index().await?;
            without.push(w1(&*f.store, w1_n).await?);
        }
        target.cleanup(f).await?;
    }
    Ok(W13 {
        name: target.name(),
        sizes,
        w1_with: median(&mut with),
        w1_without: (!without.is_empty()).then(|| median(&mut without)),
        failures,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
