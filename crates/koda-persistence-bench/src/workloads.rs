//! The workloads of WORKLOADS.md (beside this crate). Message shapes cycle user → assistant →
//! tool, 1 KiB of text each; the assistant calls one tool (`call_N`), carries
//! all five usage counters and is marked complete right after its insert.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use koda_persistence::{Persistence, Role, TokenUsage};

/// The fields of the `i`-th message of the cycle.
pub struct Shape {
    pub role: Role,
    pub content: String,
    pub tool_calls: Option<String>,
    pub tool_call_id: Option<String>,
    pub usage: Option<TokenUsage>,
}

fn text(i: usize) -> String {
    let head = format!("message {i}: ");
    let mut s = head.clone();
    while s.len() < 1024 {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.truncate(1024);
    s
}

impl Shape {
    /// The five usage counters in `TokenUsage` field order, if set.
    pub fn counters(&self) -> Option<[i64; 5]> {
        self.usage.map(|u| {
            [u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_creation_tokens, u.thinking_tokens]
        })
    }
}

/// The `i`-th message of the user → assistant → tool cycle.
pub fn shape(i: usize) -> Shape {
    let call = i / 3;
    match i % 3 {
        0 => Shape { role: Role::User, content: text(i), tool_calls: None, tool_call_id: None, usage: None },
        1 => Shape {
            role: Role::Assistant,
            content: text(i),
            tool_calls: Some(format!(
                r#"[{{"id":"call_{call}","type":"function","function":{{"name":"read_file","arguments":"{{\"path\":\"src/lib.rs\"}}"}}}}]"#
            )),
            tool_call_id: None,
            usage: Some(TokenUsage {
                prompt_tokens: 1200,
                completion_tokens: 80,
                cache_read_tokens: 600,
                cache_creation_tokens: 100,
                thinking_tokens: 20,
            }),
        },
        _ => Shape {
            role: Role::Tool,
            content: text(i),
            tool_calls: None,
            tool_call_id: Some(format!("call_{call}")),
            usage: None,
        },
    }
}

/// Inserts the `i`-th message of the cycle (and completes an assistant).
pub async fn insert(store: &dyn Persistence, sid: &str, i: usize) -> Result<()> {
    insert_shape(store, sid, &shape(i)).await
}

/// Inserts one message (and completes an assistant).
pub async fn insert_shape(store: &dyn Persistence, sid: &str, s: &Shape) -> Result<()> {
    let id = store
        .insert_message(
            sid,
            &s.role,
            Some(&s.content),
            s.tool_calls.as_deref(),
            s.tool_call_id.as_deref(),
            s.usage.as_ref(),
        )
        .await?;
    if s.role == Role::Assistant {
        store.mark_message_complete(id).await?;
    }
    Ok(())
}

pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar
}

/// Fills `sessions` sessions of `per` messages each under `root`; returns their ids.
pub async fn fill(
    store: &dyn Persistence,
    root: &Path,
    sessions: usize,
    per: usize,
    what: &str,
) -> Result<Vec<String>> {
    let bar = progress((sessions * per) as u64, what);
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let sid = store.create_session("main", root).await?;
        for i in 0..per {
            insert(store, &sid, i).await?;
            bar.inc(1);
        }
        ids.push(sid);
    }
    bar.finish_and_clear();
    Ok(ids)
}

/// Median and 99th percentile.
pub fn stats(times: &mut [Duration]) -> (Duration, Duration) {
    if times.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Times `calls` runs of `f`.
pub async fn time_calls<F, Fut, T>(calls: usize, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let out = f().await?;
        std::hint::black_box(&out);
        times.push(started.elapsed());
        // Freed after the clock stops, as the ceilings free their rows.
        drop(out);
    }
    Ok(times)
}

/// W1: sequential inserts into one session; messages per second.
pub async fn w1(store: &dyn Persistence, n: usize) -> Result<f64> {
    let sid = store.create_session("main", Path::new("/bench/w1")).await?;
    // Message texts are made before the clock starts: W1 times the store.
    let shapes: Vec<Shape> = (0..n).map(shape).collect();
    let bar = progress(n as u64, "W1 inserts");
    let started = Instant::now();
    for (i, s) in shapes.iter().enumerate() {
        insert_shape(store, &sid, s).await?;
        if i % 256 == 255 {
            bar.inc(256);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    ensure!(store.load_all_messages(&sid).await?.len() == n, "W1 lost messages");
    Ok(n as f64 / secs)
}

/// W4: the agent turn loop; per-turn durations.
pub async fn w4(store: &dyn Persistence, turns: usize) -> Result<Vec<Duration>> {
    let sid = store.create_session("main", Path::new("/bench/w4")).await?;
    let bar = progress(turns as u64, "W4 turns");
    let mut times = Vec::with_capacity(turns);
    for t in 0..turns {
        let started = Instant::now();
        insert(store, &sid, 3 * t).await?;
        std::hint::black_box(store.load_context(&sid).await?);
        insert(store, &sid, 3 * t + 1).await?;
        insert(store, &sid, 3 * t + 2).await?;
        std::hint::black_box(store.load_context(&sid).await?);
        times.push(started.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(times)
}

/// W5: `tasks` concurrent writers, own session each; messages per second,
/// p99 insert latency; checks the final counts.
pub async fn w5(store: Arc<dyn Persistence>, tasks: usize, per: usize) -> Result<(f64, Duration)> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let sid = store.create_session("main", Path::new("/bench/w5")).await?;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                insert(store.as_ref(), &sid, i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok((sid, lat))
        }));
    }
    let mut all = Vec::new();
    let mut sessions = Vec::new();
    for h in handles {
        let (sid, lat) = h.await??;
        sessions.push(sid);
        all.extend(lat);
    }
    let secs = started.elapsed().as_secs_f64();
    for sid in &sessions {
        let n = store.load_all_messages(sid).await?.len();
        ensure!(n == per, "W5: session holds {n} messages, expected {per}");
    }
    let (_, p99) = stats(&mut all);
    Ok(((tasks * per) as f64 / secs, p99))
}

/// The W9 compactor's pause between calls: still a compaction every
/// millisecond or so, far more often than an agent compacts.
pub const W9_PAUSE: Duration = Duration::from_millis(1);

/// One W9 run: per-pair latencies and the whole run's duration.
pub struct PairRun {
    pub latencies: Vec<Duration>,
    pub total: Duration,
    pub compactions: usize,
}

/// `pairs` writer pairs (an assistant answer inserted, then completed) on
/// a fresh session, with a compactor looping `compact_session(keep 20)` on
/// that session meanwhile when `compactor` (pausing [`W9_PAUSE`] between
/// calls, `KODA_BENCH_W9_PAUSE_US` to change it; 0 runs it back to back).
/// Checks that every pair is stored and that each compaction added its two
/// messages.
pub async fn pairs_on_one_session(store: Arc<dyn Persistence>, pairs: usize, compactor: bool) -> Result<PairRun> {
    let sid = store.create_session("main", Path::new("/bench/w9")).await?;
    let answer = shape(1);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pause = std::env::var("KODA_BENCH_W9_PAUSE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(W9_PAUSE, Duration::from_micros);
    let compacting = compactor.then(|| {
        let (store, sid, done) = (store.clone(), sid.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if store.compact_session(&sid, "summary", 20).await? > 0 {
                    n += 1;
                }
                if pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
            anyhow::Ok(n)
        })
    });
    let bar = progress(pairs as u64, if compactor { "W9 pairs + compactor" } else { "W9 pairs alone" });
    let mut latencies = Vec::with_capacity(pairs);
    let started = Instant::now();
    let outcome = async {
        for i in 0..pairs {
            let t = Instant::now();
            let id = store
                .insert_message(
                    &sid,
                    &answer.role,
                    Some(&answer.content),
                    answer.tool_calls.as_deref(),
                    None,
                    answer.usage.as_ref(),
                )
                .await?;
            store.mark_message_complete(id).await?;
            latencies.push(t.elapsed());
            if i % 64 == 63 {
                bar.inc(64);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let total = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let compactions = match compacting {
        Some(h) => h.await??,
        None => 0,
    };
    bar.finish_and_clear();
    outcome?;
    let all = store.load_all_messages(&sid).await?;
    ensure!(
        all.len() == pairs + 2 * compactions,
        "W9: {} messages stored, expected {pairs} pairs + {compactions} compactions",
        all.len()
    );
    Ok(PairRun { latencies, total, compactions })
}
