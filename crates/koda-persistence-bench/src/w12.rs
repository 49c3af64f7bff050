//! W12: large outputs stored once. A synthetic coding history, generated
//! deterministically: `sessions` sessions of 150 turns (a question, an
//! answer calling a tool, the tool's result), tool results drawn from a
//! pool so that about 60 % repeat an earlier one (the same file read, the
//! same test run), sizes log-normal around 6 KiB with a tail to 1 MiB,
//! compaction every 50 turns. Per backend: the store's bytes on disk
//! against the same rows in an inline layout in the same run (SQLite: the
//! store itself with `blobs=off`, which is koda's own layout; PostgreSQL: a
//! table of koda's columns with every field inline, as BYTEA under TOAST;
//! sled: a tree of the same rows with every field inline), insert time,
//! and a cold `load_context` of a 150-turn session against the inline
//! layout's read of the same rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use koda_persistence::sled::{Sled, SledOptions};
use koda_persistence::sqlite::{Location, Sqlite, SqliteOptions};
use koda_persistence::{BodyStats, Role, Store, SystemClock, open_options};

use crate::targets::Target;
use crate::workloads::progress;

/// Turns per session, and how often a session is compacted.
pub const TURNS: usize = 150;
const COMPACT_EVERY: usize = 50;

/// One message of the history.
#[derive(Debug, Clone)]
pub struct Msg {
    role: Role,
    content: Option<String>,
    tool_calls: Option<String>,
    tool_call_id: Option<String>,
}

/// One session's turns; `None` marks a compaction.
type History = Vec<Vec<Option<Msg>>>;

/// A small deterministic generator (splitmix64), W13's too.
pub(crate) struct Gen(pub(crate) u64);

impl Gen {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        let i = usize::try_from(self.next() % words.len() as u64).unwrap_or(0);
        words.get(i).copied().unwrap_or("x")
    }

    /// Log-normal around 6 KiB (sigma 1), 200 B to 1 MiB.
    fn size(&mut self) -> usize {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let size = 6_144.0 * normal.exp();
        size.clamp(200.0, 1_048_576.0) as usize
    }

    /// Tool output of about `len` bytes: source lines, test logs, listings.
    fn output(&mut self, len: usize) -> String {
        const WORDS: &[&str] = &[
            "session", "message", "store", "insert", "context", "compact", "usage", "tokens", "error", "result",
            "config", "parse", "render", "worker", "thread", "buffer", "index", "query", "schema", "field", "value",
            "handle", "stream", "output",
        ];
        let mut out = String::with_capacity(len + 80);
        while out.len() < len {
            let line = match self.next() % 4 {
                0 => format!(
                    "    let {} = {}_{}(&{}, {});\n",
                    self.pick(WORDS),
                    self.pick(WORDS),
                    self.pick(WORDS),
                    self.pick(WORDS),
                    self.next() % 1000
                ),
                1 => format!("test {}::{}_{} ... ok\n", self.pick(WORDS), self.pick(WORDS), self.pick(WORDS)),
                2 => format!(
                    "-rw-r--r-- 1 dev dev {:>7} Dec  3 16:{:02} src/{}/{}.rs\n",
                    self.next() % 100_000,
                    self.next() % 60,
                    self.pick(WORDS),
                    self.pick(WORDS)
                ),
                _ => format!(
                    "error[E0{:03}]: {} `{}` in {}\n",
                    self.next() % 800,
                    self.pick(&["mismatched types", "cannot find value", "unused variable"]),
                    self.pick(WORDS),
                    self.pick(WORDS)
                ),
            };
            out.push_str(&line);
        }
        out
    }
}

/// The history: `sessions` sessions of [`TURNS`] turns.
pub fn history(sessions: usize) -> History {
    let mut g = Gen(0x5eed_0012);
    let mut pool: Vec<Arc<str>> = Vec::new();
    let mut out = Vec::with_capacity(sessions);
    for s in 0..sessions {
        let mut steps = Vec::with_capacity(TURNS * 3 + TURNS / COMPACT_EVERY);
        for t in 0..TURNS {
            let call = format!("call_{s}_{t}");
            let body: Arc<str> = if !pool.is_empty() && g.unit() < 0.6 {
                let i = usize::try_from(g.next() % pool.len() as u64).unwrap_or(0);
                pool[i].clone()
            } else {
                let size = g.size();
                let fresh: Arc<str> = Arc::from(g.output(size));
                pool.push(fresh.clone());
                fresh
            };
            steps.push(Some(Msg {
                role: Role::User,
                content: Some(format!("step {t}: please run the tests for {}", g.next() % 97)),
                tool_calls: None,
                tool_call_id: None,
            }));
            steps.push(Some(Msg {
                role: Role::Assistant,
                content: Some("Running it.".into()),
                tool_calls: Some(format!(
                    r#"[{{"id":"{call}","type":"function","function":{{"name":"bash","arguments":"{{\"cmd\":\"cargo test\"}}"}}}}]"#
                )),
                tool_call_id: None,
            }));
            steps.push(Some(Msg {
                role: Role::Tool,
                content: Some(body.to_string()),
                tool_calls: None,
                tool_call_id: Some(call),
            }));
            // At turns 50 and 100: the session ends with 50 active turns.
            if (t + 1) % COMPACT_EVERY == 0 && t + 1 < TURNS {
                steps.push(None);
            }
        }
        out.push(steps);
    }
    out
}

/// Text bytes of every field the history writes.
fn logical_bytes(h: &History) -> u64 {
    h.iter()
        .flatten()
        .flatten()
        .map(|m| {
            [&m.content, &m.tool_calls, &m.tool_call_id]
                .iter()
                .map(|f| f.as_deref().map_or(0, str::len) as u64)
                .sum::<u64>()
        })
        .sum()
}

/// What W12 measured on one backend.
#[derive(Debug, Clone)]
pub struct W12 {
    pub name: String,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub inline_bytes: u64,
    pub insert_s: f64,
    pub inline_insert_s: f64,
    /// Median cold `load_context` of a session.
    pub load_ms: f64,
    /// Median read of the same rows from the inline layout.
    pub inline_load_ms: f64,
    pub bodies: BodyStats,
}

/// Writes `h` through `store`; returns the session ids and the seconds.
async fn write(store: &dyn Store, h: &History, what: &str) -> Result<(Vec<String>, f64)> {
    let bar = progress(h.len() as u64, what);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(h.len());
    for steps in h {
        let sid = store.create_session("main", Path::new("/w12")).await?;
        for step in steps {
            match step {
                Some(m) => {
                    let id = store
                        .insert_message(
                            &sid,
                            &m.role,
                            m.content.as_deref(),
                            m.tool_calls.as_deref(),
                            m.tool_call_id.as_deref(),
                            None,
                        )
                        .await?;
                    if m.role == Role::Assistant {
                        store.mark_message_complete(id).await?;
                    }
                }
                None => {
                    store.compact_session(&sid, "Summary: the tests ran; fixes were applied.", 10).await?;
                }
            }
        }
        ids.push(sid);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((ids, started.elapsed().as_secs_f64()))
}

/// Median cold `load_context` over `ids` (a fresh handle: no cached context).
async fn loads(store: &dyn Store, ids: &[String]) -> Result<f64> {
    let mut times = Vec::with_capacity(ids.len());
    for sid in ids {
        let started = Instant::now();
        let context = store.load_context(sid).await?;
        times.push(started.elapsed());
        anyhow::ensure!(!context.is_empty(), "an empty context");
    }
    Ok(median_ms(&mut times))
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    times.get(times.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The sessions whose loads are timed: at most 20, spread over the run.
fn sample(ids: &[String]) -> Vec<String> {
    let step = (ids.len() / 20).max(1);
    ids.iter().step_by(step).take(20).cloned().collect()
}

/// W12 on `target` with `sessions` sessions.
pub async fn run(target: &Target, scratch: &Path, sessions: usize) -> Result<Option<W12>> {
    let h = history(sessions);
    let logical = logical_bytes(&h);
    match target {
        Target::Memory => Ok(None),
        Target::Sqlite { options, .. } => {
            let dir = scratch.join(format!("w12-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&dir)?;
            let open = |path: PathBuf, blobs: bool| {
                let options = SqliteOptions { location: Location::File(path), blobs: Some(blobs), ..options.clone() };
                open_options::<Sqlite>(options, Arc::new(SystemClock))
            };
            let (once, inline) = (dir.join("once.db"), dir.join("inline.db"));
            let store = open(once.clone(), true).await?;
            let (ids, insert_s) = write(&*store, &h, "W12 sqlite, once").await?;
            drop(store);
            let store = open(inline.clone(), false).await?;
            let (inline_ids, inline_insert_s) = write(&*store, &h, "W12 sqlite, inline").await?;
            drop(store);
            // Fresh handles, checkpointed files: cold loads, real sizes.
            let store = open(once.clone(), true).await?;
            let load_ms = loads(&*store, &sample(&ids)).await?;
            let health = store.health().await?;
            let inline_store = open(inline.clone(), false).await?;
            let inline_load_ms = loads(&*inline_store, &sample(&inline_ids)).await?;
            let inline_health = inline_store.health().await?;
            Ok(Some(W12 {
                name: target.name(),
                logical_bytes: logical,
                stored_bytes: health.size_bytes.unwrap_or(0),
                inline_bytes: inline_health.size_bytes.unwrap_or(0),
                insert_s,
                inline_insert_s,
                load_ms,
                inline_load_ms,
                bodies: health.bodies,
            }))
        }
        Target::Sled { options, .. } => {
            let dir = scratch.join(format!("w12-{}", uuid::Uuid::now_v7().simple()));
            let path = dir.join("once.sled");
            let open =
                || open_options::<Sled>(SledOptions { path: path.clone(), ..options.clone() }, Arc::new(SystemClock));
            let store = open().await?;
            let (ids, insert_s) = write(&*store, &h, "W12 sled, once").await?;
            drop(store);
            let store = open().await?;
            let load_ms = loads(&*store, &sample(&ids)).await?;
            let health = store.health().await?;
            drop(store);
            let raw = dir.join("inline.sled");
            let (inline_bytes, inline_insert_s, inline_load_ms) =
                tokio::task::spawn_blocking(move || sled_inline(&raw, &h)).await.context("sled inline reference")??;
            Ok(Some(W12 {
                name: target.name(),
                logical_bytes: logical,
                stored_bytes: health.size_bytes.unwrap_or(0),
                inline_bytes,
                insert_s,
                inline_insert_s,
                load_ms,
                inline_load_ms,
                bodies: health.bodies,
            }))
        }
        Target::Postgres { url } => {
            let fresh = target.fresh("w12").await?;
            let schema = fresh.pg_schema.clone().context("a schema")?;
            let sep = if url.contains('?') { '&' } else { '?' };
            let store_url = format!("{url}{sep}schema={schema}");
            let store = koda_persistence::open(&store_url).await?;
            let (ids, insert_s) = write(&*store, &h, "W12 postgres, once").await?;
            drop(store);
            let store = koda_persistence::open(&store_url).await?;
            let load_ms = loads(&*store, &sample(&ids)).await?;
            let health = store.health().await?;
            drop(store);
            let stored = pg_store_bytes(url, &schema).await?;
            let (inline_bytes, inline_insert_s, inline_load_ms) = pg_inline(url, &h).await?;
            target.cleanup(fresh).await?;
            Ok(Some(W12 {
                name: target.name(),
                logical_bytes: logical,
                stored_bytes: stored,
                inline_bytes,
                insert_s,
                inline_insert_s,
                load_ms,
                inline_load_ms,
                bodies: health.bodies,
            }))
        }
    }
}

/// A schema's tables, indexes and TOAST, in bytes.
async fn pg_store_bytes(url: &str, schema: &str) -> Result<u64> {
    let client = crate::ceiling::pg_connect(url).await?;
    client.batch_execute("CHECKPOINT").await.ok();
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// The rows in an inline PostgreSQL table of koda's columns (every field
/// BYTEA, compressed by TOAST as the server does by default): its size,
/// the seconds its inserts took (one `INSERT` per message, compacted rows
/// marked as the store marks them), and the median read of a session's
/// active rows.
async fn pg_inline(url: &str, h: &History) -> Result<(u64, f64, f64)> {
    let client = crate::ceiling::pg_connect(url).await?;
    let schema = crate::targets::scratch_schema("w12inline");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".messages (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 session_id TEXT NOT NULL, ord BIGINT NOT NULL, role TEXT NOT NULL, content BYTEA,
                 full_content BYTEA, tool_calls BYTEA, tool_call_id BYTEA, created_ms BIGINT NOT NULL,
                 completed_ms BIGINT, compacted_ms BIGINT);
             CREATE INDEX ON \"{schema}\".messages (session_id, ord);"
        ))
        .await?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO \"{schema}\".messages (session_id, ord, role, content, tool_calls,
                 tool_call_id, created_ms) VALUES ($1, $2, $3, $4, $5, $6, 0)"
        ))
        .await?;
    let compact = client
        .prepare(&format!(
            "UPDATE \"{schema}\".messages SET compacted_ms = 1
             WHERE session_id = $1 AND compacted_ms IS NULL AND ord < $2"
        ))
        .await?;
    let started = Instant::now();
    let mut sessions = Vec::new();
    for (s, steps) in h.iter().enumerate() {
        let sid = format!("w12-{s}");
        let mut ord = 0i64;
        for step in steps {
            match step {
                Some(m) => {
                    ord += 1;
                    let role = m.role.to_string();
                    client
                        .execute(
                            &insert,
                            &[
                                &sid,
                                &ord,
                                &role,
                                &m.content.as_deref().map(str::as_bytes),
                                &m.tool_calls.as_deref().map(str::as_bytes),
                                &m.tool_call_id.as_deref().map(str::as_bytes),
                            ],
                        )
                        .await?;
                }
                None => {
                    client.execute(&compact, &[&sid, &(ord - 9)]).await?;
                }
            }
        }
        sessions.push(sid);
    }
    let insert_s = started.elapsed().as_secs_f64();
    let select = client
        .prepare(&format!(
            "SELECT id, role, content, full_content, tool_calls, tool_call_id FROM \"{schema}\".messages
             WHERE session_id = $1 AND compacted_ms IS NULL ORDER BY ord"
        ))
        .await?;
    let mut times = Vec::new();
    for sid in sample(&sessions) {
        let started = Instant::now();
        let rows = client.query(&select, &[&sid]).await?;
        let texts: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.try_get::<_, Option<Vec<u8>>>(2).map(|b| b.and_then(|b| String::from_utf8(b).ok())))
            .collect::<Result<_, _>>()?;
        std::hint::black_box(&texts);
        times.push(started.elapsed());
    }
    let bytes = pg_store_bytes(url, &schema).await?;
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await?;
    Ok((bytes, insert_s, median_ms(&mut times)))
}

/// The rows in a raw sled tree, every field inline (length-prefixed), one
/// flushed insert per message as the store's default flush does: its size
/// on disk, the seconds the inserts took, and the median read of a
/// session's rows.
fn sled_inline(dir: &Path, h: &History) -> Result<(u64, f64, f64)> {
    let db = sled::open(dir)?;
    let key = |s: usize, ord: u64| {
        let mut k = (s as u64).to_be_bytes().to_vec();
        k.extend_from_slice(&ord.to_be_bytes());
        k
    };
    let started = Instant::now();
    // Where each session's active rows start (compaction keeps 10).
    let mut active_from = vec![0u64; h.len()];
    for (s, steps) in h.iter().enumerate() {
        let mut ord = 0u64;
        for step in steps {
            let Some(m) = step else {
                active_from[s] = ord.saturating_sub(9);
                continue;
            };
            ord += 1;
            let mut v = Vec::new();
            v.push(u8::from(m.role == Role::Tool));
            for f in [&m.content, &m.tool_calls, &m.tool_call_id] {
                match f {
                    Some(t) => {
                        v.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
                        v.extend_from_slice(t.as_bytes());
                    }
                    None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
                }
            }
            db.insert(key(s, ord), v)?;
            db.flush()?;
        }
    }
    let insert_s = started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let step = (h.len() / 20).max(1);
    for s in (0..h.len()).step_by(step).take(20) {
        let started = Instant::now();
        let mut texts = Vec::new();
        let from = key(s, active_from.get(s).copied().unwrap_or(0));
        for kv in db.range(from..key(s + 1, 0)) {
            let (_, v) = kv?;
            let len = v.get(1..5).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as usize);
            texts.push(String::from_utf8(v.get(5..5 + len).unwrap_or(&[]).to_vec()).ok());
        }
        std::hint::black_box(&texts);
        times.push(started.elapsed());
    }
    db.flush()?;
    let bytes = db.size_on_disk()?;
    Ok((bytes, insert_s, median_ms(&mut times)))
}

/// One zstd level on the history's distinct tool outputs.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub level: i32,
    pub raw_bytes: u64,
    pub packed_bytes: u64,
    pub pack_mb_s: f64,
    pub unpack_mb_s: f64,
}

/// Packs every distinct tool output of the history (`sessions` sessions)
/// at each of `levels`, with one reused context as the store does: the
/// measurement `bodies::PACK_LEVEL` was chosen by.
pub fn levels(sessions: usize, levels: &[i32]) -> Result<Vec<Level>> {
    let h = history(sessions);
    let distinct = distinct_outputs(&h);
    let raw: u64 = distinct.iter().map(|t| t.len() as u64).sum();
    let mut out = Vec::new();
    for &level in levels {
        let mut c = zstd::bulk::Compressor::new(level)?;
        let started = Instant::now();
        let packed: Vec<Vec<u8>> = distinct.iter().map(|t| c.compress(t.as_bytes())).collect::<std::io::Result<_>>()?;
        let pack_s = started.elapsed().as_secs_f64();
        let mut d = zstd::bulk::Decompressor::new()?;
        let started = Instant::now();
        for (p, t) in packed.iter().zip(&distinct) {
            let back = d.decompress(p, t.len())?;
            anyhow::ensure!(back.len() == t.len(), "level {level}: a round trip lost bytes");
        }
        let unpack_s = started.elapsed().as_secs_f64();
        let mb = raw as f64 / 1e6;
        out.push(Level {
            level,
            raw_bytes: raw,
            packed_bytes: packed.iter().map(|p| p.len() as u64).sum(),
            pack_mb_s: mb / pack_s.max(1e-9),
            unpack_mb_s: mb / unpack_s.max(1e-9),
        });
    }
    Ok(out)
}

/// Redaction's scan of every distinct tool output of the history
/// (`sessions` sessions), on one core: the bytes, the seconds the built-in
/// rules took over them, and the credentials they found (none are planted:
/// any is a false positive).
pub fn redaction_scan(sessions: usize) -> Result<(u64, f64, u64)> {
    let h = history(sessions);
    let distinct = distinct_outputs(&h);
    let bytes: u64 = distinct.iter().map(|t| t.len() as u64).sum();
    let r = koda_persistence::secrets::Redactor::new([1; 32]);
    let mut counts = std::collections::BTreeMap::new();
    let started = Instant::now();
    for t in &distinct {
        std::hint::black_box(r.redact_counting(t, &mut counts));
    }
    Ok((bytes, started.elapsed().as_secs_f64(), counts.values().sum()))
}

/// Every distinct tool output of `h`.
fn distinct_outputs(h: &History) -> std::collections::BTreeSet<&str> {
    let mut distinct = std::collections::BTreeSet::new();
    for m in h.iter().flatten().flatten() {
        if m.role == Role::Tool
            && let Some(c) = &m.content
        {
            distinct.insert(c.as_str());
        }
    }
    distinct
}

/// W12's inserts (every session, each message as koda writes it) into
/// fresh stores of each embedded backend, opened from their URLs with
/// and without `redact=secrets`, the two alternated `rounds` times:
/// `(backend, best seconds without, best seconds with)`.
pub async fn redacted_inserts(sessions: usize, rounds: usize) -> Result<Vec<(&'static str, f64, f64)>> {
    let h = history(sessions);
    let dir = tempfile::tempdir()?;
    let mut out = Vec::new();
    for (name, scheme, file) in [("sqlite", "sqlite", "koda.db"), ("sled", "sled", "koda.sled")] {
        let (mut plain, mut redacted) = (f64::INFINITY, f64::INFINITY);
        for round in 0..rounds {
            for redact in [false, true] {
                let path = dir.path().join(format!("{name}-{round}-{redact}-{file}"));
                let query = if redact { "?redact=secrets" } else { "" };
                let store = koda_persistence::open(&format!("{scheme}://{}{query}", path.display())).await?;
                let what = format!("W12 {name}{}", if redact { ", redact=secrets" } else { "" });
                let (_, secs) = write(&*store, &h, &what).await?;
                let best = if redact { &mut redacted } else { &mut plain };
                *best = best.min(secs);
            }
        }
        out.push((name, plain, redacted));
    }
    Ok(out)
}
