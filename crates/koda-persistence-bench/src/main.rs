//! `koda-persistence-bench`: the workloads of WORKLOADS.md against any set
//! of stores, with each backend's ceiling measured in the same process, as
//! one table (or `--json`). `--quick` divides every count by 10.
//!
//! ```text
//! cargo run --release -p koda-persistence-bench -- [--quick] [--json] [URL …]
//! ```
//!
//! Without URLs it runs `memory:`, `sqlite://` (NORMAL), `sqlite://?synchronous=full`,
//! `sled://` and, when `KODA_BENCH_POSTGRES_URL` (or `KODA_TEST_POSTGRES_URL`)
//! is set, that PostgreSQL server (a fresh schema per workload, dropped after).

mod ceiling;
mod ledger;
#[path = "../../koda-persistence-postgres/tests/support/pgbouncer.rs"]
mod pgbouncer;
mod targets;
#[path = "../../koda-persistence-postgres/tests/support/team_load.rs"]
mod team_load;
mod w10;
mod w11;
mod w12;
mod w13;
mod workloads;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};

use crate::targets::Target;
use crate::workloads::{fill, stats, time_calls};

#[derive(Parser, Debug)]
#[command(name = "koda-persistence-bench", about = "Benchmarks koda stores against same-run ceilings")]
struct Cli {
    /// Store URLs: `memory:`, `sqlite://[DIR][?synchronous=full]`, `sled://[DIR]`, `postgres://…`
    urls: Vec<String>,
    /// Divide every count by 10 (a sub-minute smoke run).
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only W10 (needs a `postgres://` URL).
    #[arg(long)]
    w10_only: bool,
    /// Run only W1 and its ceiling (for A/B runs of the write path).
    #[arg(long)]
    w1_only: bool,
    /// Run only W2 (warm and cold) and its ceiling (for A/B runs and
    /// profiles of context loads).
    #[arg(long, conflicts_with = "w1_only")]
    w2_only: bool,
    /// Run only W1 and W5, 8 concurrent writers (for A/B runs and profiles
    /// of group commit).
    #[arg(long, conflicts_with_all = ["w1_only", "w2_only"])]
    w5_only: bool,
    /// Also run W11 (a team through PgBouncer and direct; needs a
    /// `postgres://` URL and Debian's pgbouncer package).
    #[arg(long)]
    w11: bool,
    /// Run only W11.
    #[arg(long)]
    w11_only: bool,
    /// Also run W12 (large outputs stored once, against an inline layout).
    #[arg(long)]
    w12: bool,
    /// Measure zstd levels on W12's distinct tool outputs (ratio, MB/s)
    /// and exit.
    #[arg(long)]
    w12_levels: bool,
    /// Run only W12.
    #[arg(long, conflicts_with_all = ["w1_only", "w2_only", "w5_only", "w10_only", "w11_only"])]
    w12_only: bool,
    /// Measure redaction's scan throughput (the built-in rules, one core)
    /// on W12's distinct tool outputs, and W12's inserts into SQLite and
    /// sled with redact=secrets against without, and exit.
    #[arg(long)]
    redaction_scan: bool,
    /// Write a year of history (365 days x 50 sessions, 100,000 messages;
    /// a tenth of the sessions with --quick) into each target and time
    /// `usage --by day` over it, then exit.
    #[arg(long)]
    ledger_year: bool,
    /// Also run W13 (search across sessions at two sizes, and W1 with
    /// the search index against without).
    #[arg(long)]
    w13: bool,
    /// Run only W13.
    #[arg(long, conflicts_with_all = ["w1_only", "w2_only", "w5_only", "w10_only", "w11_only", "w12_only"])]
    w13_only: bool,
    /// W11's simulated koda processes.
    #[arg(long, default_value_t = 200, value_name = "N")]
    clients: usize,
    /// How long each W11 run lasts (default 30 s, 3 s with --quick).
    #[arg(long, value_name = "SECONDS")]
    w11_seconds: Option<f64>,
}

/// Counts for one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    w1: usize,
    session: usize,
    calls: usize,
    small: usize,
    large: usize,
    per_session: usize,
    turns: usize,
    w5_tasks: usize,
    w5_per: usize,
    w9_pairs: usize,
    w10_sessions: usize,
    w12_sessions: usize,
    /// W13's two sizes, in sessions of 100 messages.
    w13_sessions: (usize, usize),
    /// W1 and its ceiling only.
    w1_only: bool,
    /// W2 (warm, cold) and its ceiling only.
    w2_only: bool,
    /// W1 and W5 only.
    w5_only: bool,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let d = if quick { 10 } else { 1 };
        Plan {
            w1: 10_000 / d,
            session: 2_000 / d,
            calls: (50 / d).max(20),
            small: 100 / d,
            large: 1_000 / d,
            per_session: 100,
            turns: 300 / d,
            w5_tasks: 8,
            w5_per: 1_000 / d,
            w9_pairs: 3_000 / d,
            w10_sessions: 1_000 / d,
            w12_sessions: 200 / d,
            w13_sessions: (100 / d, 1_000 / d),
            w1_only: false,
            w2_only: false,
            w5_only: false,
        }
    }
}

#[derive(Debug, Default)]
struct Row {
    name: String,
    kind: &'static str,
    w1: f64,
    w1_ceiling: Option<f64>,
    w2: (Duration, Duration),
    /// W2 with the context cache defeated: 8 other sessions loaded
    /// between timed loads.
    w2_cold: (Duration, Duration),
    w2_ceiling: Option<(Duration, Duration)>,
    /// `fork_session` of W2's session (all its messages): median of 5.
    fork: Duration,
    w3: (Duration, Duration),
    w4_total: Duration,
    w4_median: Duration,
    w4_early: Duration,
    w4_late: Duration,
    w5: (f64, Duration),
    w6: Duration,
    /// PostgreSQL: the store's usage statement run raw (see ceiling.rs).
    w6_ceiling: Option<Duration>,
    /// W6 on a session ten times as long (flat when usage is kept per
    /// session).
    w6_large: Duration,
    w7: (Duration, Duration),
    /// SQLite with `synchronous=full` (its targets differ: every commit
    /// pays an fsync).
    sync_full: bool,
    /// SQLite: the same compaction statements run raw (see ceiling.rs).
    w7_ceiling: Option<Duration>,
    w8: (Duration, Duration),
    /// W9 alone: (median, p99, total); under compaction: the same, and the
    /// number of compactions that marked messages.
    w9_alone: (Duration, Duration, Duration),
    w9_compacting: (Duration, Duration, Duration, usize),
    failures: Vec<String>,
}

async fn run_target(target: &Target, plan: Plan) -> Result<Row> {
    let mut row = Row { name: target.name(), ..Row::default() };
    row.sync_full = matches!(
        target,
        Target::Sqlite { options, .. }
            if options.synchronous == koda_persistence::sqlite::Synchronous::Full
    );
    row.kind = match target {
        Target::Memory => "memory",
        Target::Sqlite { .. } => "sqlite",
        Target::Sled { .. } => "sled",
        Target::Postgres { .. } => "postgres",
    };

    // W1 and its ceiling, alternated, three rounds each: the median rate of
    // each (one round is only tens of milliseconds for the fast stores).
    let (mut rates, mut ceilings) = (Vec::new(), Vec::new());
    for _ in 0..W1_ROUNDS * usize::from(!plan.w2_only) {
        let fresh = target.fresh("w1").await?;
        rates.push(workloads::w1(fresh.store.as_ref(), plan.w1).await?);
        target.cleanup(fresh).await?;
        match target {
            Target::Sqlite { dir, options, .. } => {
                ceilings.push(ceiling::sqlite_w1(dir, options.synchronous, plan.w1)?)
            }
            Target::Postgres { url } => ceilings.push(ceiling::postgres_w1(url, plan.w1).await?),
            _ => {}
        }
    }
    if !rates.is_empty() {
        row.w1 = median(&mut rates);
    }
    row.w1_ceiling = (!ceilings.is_empty()).then(|| median(&mut ceilings));
    if plan.w1_only {
        return Ok(row);
    }
    if !plan.w2_only {
        // W5, right after the W1 it is compared with.
        let fresh = target.fresh("w5").await?;
        row.w5 = workloads::w5(fresh.store.clone(), plan.w5_tasks, plan.w5_per).await?;
        target.cleanup(fresh).await?;
        if plan.w5_only {
            return Ok(row);
        }
    }

    // W2, W6, W7 on one 2,000-message session.
    let fresh = target.fresh("w2").await?;
    let store = fresh.store.clone();
    let sid = fill(store.as_ref(), Path::new("/bench/w2"), 1, plan.session, "W2 session").await?.remove(0);
    let _ = store.load_context(&sid).await?; // warm
    row.w2 = stats(&mut time_calls(plan.calls, || store.load_context(&sid)).await?);
    // W2 cold: between timed loads, 8 other (small) sessions are loaded,
    // so a cache of the 8 most recent sessions no longer holds this one.
    let others = fill(store.as_ref(), Path::new("/bench/w2"), 8, 10, "W2 cold others").await?;
    let mut cold = Vec::with_capacity(plan.calls);
    for _ in 0..plan.calls {
        for o in &others {
            store.load_context(o).await?;
        }
        let t = Instant::now();
        let context = store.load_context(&sid).await?;
        cold.push(t.elapsed());
        // Freed after the clock stops, as the ceiling frees its rows.
        drop(context);
    }
    row.w2_cold = stats(&mut cold);
    row.w2_ceiling = match (target, &fresh.sqlite_path, &fresh.pg_schema) {
        // An encrypted file's ceiling is the plain target's, in the same run.
        (Target::Sqlite { options, .. }, Some(path), _) if options.key_file.is_none() => {
            Some(stats(&mut ceiling::sqlite_w2(path, &sid, plan.calls)?))
        }
        (Target::Postgres { url }, _, Some(schema)) => {
            Some(stats(&mut ceiling::postgres_w2(url, schema, &sid, plan.calls).await?))
        }
        _ => None,
    };
    // Fork of the same session (W13's fork target), five times; with
    // --w2-only too.
    let mut forks = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        store.fork_session(&sid, None).await?;
        forks.push(t.elapsed());
    }
    forks.sort_unstable();
    row.fork = forks[forks.len() / 2];
    if plan.w2_only {
        drop(store);
        target.cleanup(fresh).await?;
        return Ok(row);
    }
    row.w6 = stats(&mut time_calls(plan.calls, || store.session_token_usage(&sid)).await?).0;
    if let (Target::Postgres { url }, Some(schema)) = (target, &fresh.pg_schema) {
        row.w6_ceiling = Some(stats(&mut ceiling::postgres_w6(url, schema, &sid, plan.calls).await?).0);
    }
    // W7's ceiling compacts a second session of the same shape, raw.
    if let (Target::Sqlite { options, .. }, Some(path)) = (target, &fresh.sqlite_path)
        && options.key_file.is_none()
    {
        let twin = fill(store.as_ref(), Path::new("/bench/w2"), 1, plan.session, "W7 ceiling session").await?.remove(0);
        row.w7_ceiling = Some(ceiling::sqlite_w7(path, options.synchronous, &twin, 20)?);
    }
    let t = Instant::now();
    store.compact_session(&sid, "summary of the first 1,980 messages", 20).await?;
    let compact = t.elapsed();
    let t = Instant::now();
    let ctx = store.load_context(&sid).await?;
    row.w7 = (compact, t.elapsed());
    // Summary and hint first, then what the passes keep of the last 20.
    let head_ok = ctx.len() <= 22
        && ctx.first().is_some_and(|m| m.role == koda_persistence::Role::System)
        && ctx.get(1).and_then(|m| m.content.as_deref()) == Some(koda_persistence::COMPACTION_HINT);
    if !head_ok {
        row.failures.push(format!("W7: context after compaction is wrong ({} messages)", ctx.len()));
    }
    drop(store);
    target.cleanup(fresh).await?;

    // W6 on a session ten times as long.
    let fresh = target.fresh("w6").await?;
    let store = fresh.store.clone();
    let sid = fill(store.as_ref(), Path::new("/bench/w6"), 1, plan.session * 10, "W6 long session").await?.remove(0);
    row.w6_large = stats(&mut time_calls(plan.calls, || store.session_token_usage(&sid)).await?).0;
    drop(store);
    target.cleanup(fresh).await?;

    // W3 and W8 at two store sizes.
    let mut w3 = Vec::new();
    let mut w8 = Vec::new();
    for (tag, sessions) in [("w3small", plan.small), ("w3large", plan.large)] {
        let fresh = target.fresh(tag).await?;
        let store = fresh.store.clone();
        let root = Path::new("/bench/w3");
        fill(
            store.as_ref(),
            root,
            sessions,
            plan.per_session,
            &format!("W3/W8 {} messages", sessions * plan.per_session),
        )
        .await?;
        let _ = store.list_sessions(20, root).await?;
        // Sub-millisecond reads on a shared 2-core machine: many samples.
        w3.push(stats(&mut time_calls(plan.calls * 20, || store.list_sessions(20, root)).await?).0);
        w8.push(stats(&mut time_calls(plan.calls * 20, || store.recent_user_messages(10)).await?).0);
        drop(store);
        target.cleanup(fresh).await?;
    }
    row.w3 = (w3[0], w3[1]);
    row.w8 = (w8[0], w8[1]);

    // W4.
    let fresh = target.fresh("w4").await?;
    let mut turns = workloads::w4(fresh.store.as_ref(), plan.turns).await?;
    target.cleanup(fresh).await?;
    row.w4_total = turns.iter().sum();
    let window = (plan.turns / 15).max(1);
    row.w4_early = stats(&mut turns[..window].to_vec()).0;
    let late_start = plan.turns - window;
    row.w4_late = stats(&mut turns[late_start..].to_vec()).0;
    row.w4_median = stats(&mut turns).0;

    // W9: writer pairs alone, then under a compactor (fresh store each).
    for compactor in [false, true] {
        let fresh = target.fresh("w9").await?;
        let mut run = workloads::pairs_on_one_session(fresh.store.clone(), plan.w9_pairs, compactor).await?;
        target.cleanup(fresh).await?;
        let (median, p99) = stats(&mut run.latencies);
        if compactor {
            row.w9_compacting = (median, p99, run.total, run.compactions);
        } else {
            row.w9_alone = (median, p99, run.total);
        }
    }
    Ok(row)
}

/// W1 rounds per target (and per ceiling).
const W1_ROUNDS: usize = 3;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// The targets of WORKLOADS.md for one row: (what, measured, limit, met).
fn checks(r: &Row) -> Vec<(String, f64, f64, bool)> {
    let mut out = Vec::new();
    let mut check = |what: &str, value: f64, limit: f64, at_least: bool| {
        let met = if at_least { value >= limit } else { value <= limit };
        out.push((what.to_owned(), value, limit, met));
    };
    let growth3 = ratio(ms(r.w3.1), ms(r.w3.0));
    let growth4 = ratio(ms(r.w4_late), ms(r.w4_early));
    let growth8 = ratio(ms(r.w8.1), ms(r.w8.0));
    check("W9 under compaction / alone (<=)", ratio(ms(r.w9_compacting.2), ms(r.w9_alone.2)), 3.0, false);
    check("W6 median ms (<=)", ms(r.w6), 0.05, false);
    check("W6 10x session / 1x (<=)", ratio(ms(r.w6_large), ms(r.w6)), 1.3, false);
    match r.kind {
        "sqlite" => {
            // FULL pays an fsync per commit, NORMAL does not: the writer's
            // handoff weighs more at NORMAL, group commit more at FULL.
            let (w1_limit, w5_limit) = if r.sync_full { (0.8, 3.0) } else { (0.7, 1.5) };
            if let Some(c) = r.w1_ceiling {
                check("W1 / ceiling (>=)", ratio(r.w1, c), w1_limit, true);
            }
            if let Some(c) = r.w2_ceiling {
                check("W2 / ceiling (<=)", ratio(ms(r.w2.0), ms(c.0)), 1.3, false);
                check("W2 cold / ceiling (<=)", ratio(ms(r.w2_cold.0), ms(c.0)), 1.3, false);
            }
            check("W3 100k/10k (<=)", growth3, 1.3, false);
            check("W3 median ms at 100k (<)", ms(r.w3.1), 1.0, false);
            check("W4 late/early turns (<=)", growth4, 2.0, false);
            check("W5 / W1 (>=)", ratio(r.w5.0, r.w1), w5_limit, true);
            check("W5 p99 ms (<)", ms(r.w5.1), 20.0, false);
            if r.sync_full {
                check("W7 compact ms (<=)", ms(r.w7.0), 9.0, false);
            }
            check("W8 100k/10k (<=)", growth8, 1.3, false);
        }
        "postgres" => {
            if let Some(c) = r.w1_ceiling {
                check("W1 / ceiling (>=)", ratio(r.w1, c), 0.8, true);
            }
            if let Some(c) = r.w2_ceiling {
                check("W2 / ceiling (<=)", ratio(ms(r.w2.0), ms(c.0)), 1.3, false);
                check("W2 cold / ceiling (<=)", ratio(ms(r.w2_cold.0), ms(c.0)), 1.3, false);
            }
            if let Some(c) = r.w6_ceiling {
                check("W6 / ceiling (<=)", ratio(ms(r.w6), ms(c)), 1.3, false);
            }
            check("W3 100k/10k (<=)", growth3, 1.3, false);
            check("W4 late/early turns (<=)", growth4, 2.0, false);
            check("W8 100k/10k (<=)", growth8, 1.3, false);
        }
        "memory" => {
            check("W1 messages/s (>=)", r.w1, 500_000.0, true);
            check("W2 median ms (<=)", ms(r.w2.0), 2.0, false);
        }
        "sled" => {
            check("W3 100k/10k (<=)", growth3, 1.3, false);
            check("W4 late/early turns (<=)", growth4, 2.0, false);
            check("W8 100k/10k (<=)", growth8, 1.3, false);
        }
        _ => {}
    }
    out
}

fn row_json(r: &Row) -> Value {
    json!({
        "target": r.name,
        "w1_msgs_per_s": r.w1,
        "w1_ceiling_msgs_per_s": r.w1_ceiling,
        "w2_median_ms": ms(r.w2.0), "w2_p99_ms": ms(r.w2.1),
        "w2_cold_median_ms": ms(r.w2_cold.0), "w2_cold_p99_ms": ms(r.w2_cold.1),
        "w2_ceiling_median_ms": r.w2_ceiling.map(|c| ms(c.0)), "w2_ceiling_p99_ms": r.w2_ceiling.map(|c| ms(c.1)),
        "fork_median_ms": ms(r.fork),
        "w3_small_median_ms": ms(r.w3.0), "w3_large_median_ms": ms(r.w3.1),
        "w4_total_s": r.w4_total.as_secs_f64(), "w4_median_turn_ms": ms(r.w4_median),
        "w4_early_median_ms": ms(r.w4_early), "w4_late_median_ms": ms(r.w4_late),
        "w5_msgs_per_s": r.w5.0, "w5_p99_ms": ms(r.w5.1),
        "w6_median_ms": ms(r.w6), "w6_long_median_ms": ms(r.w6_large),
        "w6_ceiling_median_ms": r.w6_ceiling.map(ms),
        "w7_compact_ms": ms(r.w7.0), "w7_load_ms": ms(r.w7.1),
        "w7_ceiling_ms": r.w7_ceiling.map(ms),
        "w8_small_median_ms": ms(r.w8.0), "w8_large_median_ms": ms(r.w8.1),
        "w9_alone_median_ms": ms(r.w9_alone.0), "w9_alone_p99_ms": ms(r.w9_alone.1), "w9_alone_total_s": r.w9_alone.2.as_secs_f64(),
        "w9_compacting_median_ms": ms(r.w9_compacting.0), "w9_compacting_p99_ms": ms(r.w9_compacting.1),
        "w9_compacting_total_s": r.w9_compacting.2.as_secs_f64(), "w9_compactions": r.w9_compacting.3,
        "checks": checks(r).iter().map(|(w, v, l, m)| json!({"check": w, "value": v, "limit": l, "met": m})).collect::<Vec<_>>(),
        "failures": r.failures,
    })
}

fn print_table(rows: &[Row], plan: Plan, sqlite_ref: Option<f64>) {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "-".to_owned(), f);
    type Cell = Box<dyn Fn(&Row) -> String>;
    let lines: Vec<(String, Cell)> = vec![
        (format!("W1 inserts/s ({}, median of {W1_ROUNDS})", plan.w1), Box::new(|r: &Row| format!("{:.0}", r.w1))),
        ("W1 ceiling inserts/s".into(), Box::new(move |r: &Row| opt(r.w1_ceiling, &|c| format!("{c:.0}")))),
        (
            "W1 / ceiling".into(),
            Box::new(move |r: &Row| opt(r.w1_ceiling.map(|c| ratio(r.w1, c)), &|x| format!("{x:.2}"))),
        ),
        (
            "W1 / sqlite NORMAL".into(),
            Box::new(move |r: &Row| opt(sqlite_ref.map(|s| ratio(r.w1, s)), &|x| format!("{x:.2}"))),
        ),
        (format!("W2 load_context({}) median ms", plan.session), Box::new(|r: &Row| format!("{:.3}", ms(r.w2.0)))),
        ("W2 p99 ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w2.1)))),
        (format!("fork_session({}) median ms", plan.session), Box::new(|r: &Row| format!("{:.2}", ms(r.fork)))),
        ("W2 cold median ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w2_cold.0)))),
        (
            "W2 ceiling median ms".into(),
            Box::new(move |r: &Row| opt(r.w2_ceiling.map(|c| ms(c.0)), &|x| format!("{x:.3}"))),
        ),
        (
            "W2 / ceiling".into(),
            Box::new(move |r: &Row| opt(r.w2_ceiling.map(|c| ratio(ms(r.w2.0), ms(c.0))), &|x| format!("{x:.2}"))),
        ),
        (
            "W2 cold / ceiling".into(),
            Box::new(move |r: &Row| opt(r.w2_ceiling.map(|c| ratio(ms(r.w2_cold.0), ms(c.0))), &|x| format!("{x:.2}"))),
        ),
        (
            format!("W3 list_sessions ms @{}", plan.small * plan.per_session),
            Box::new(|r: &Row| format!("{:.3}", ms(r.w3.0))),
        ),
        (
            format!("W3 list_sessions ms @{}", plan.large * plan.per_session),
            Box::new(|r: &Row| format!("{:.3}", ms(r.w3.1))),
        ),
        ("W3 growth".into(), Box::new(|r: &Row| format!("{:.2}", ratio(ms(r.w3.1), ms(r.w3.0))))),
        (format!("W4 {} turns total s", plan.turns), Box::new(|r: &Row| format!("{:.2}", r.w4_total.as_secs_f64()))),
        ("W4 median turn ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w4_median)))),
        ("W4 late/early turn".into(), Box::new(|r: &Row| format!("{:.2}", ratio(ms(r.w4_late), ms(r.w4_early))))),
        ("W5 8 writers inserts/s".into(), Box::new(|r: &Row| format!("{:.0}", r.w5.0))),
        ("W5 / W1".into(), Box::new(|r: &Row| format!("{:.2}", ratio(r.w5.0, r.w1)))),
        ("W5 p99 ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w5.1)))),
        ("W6 token usage median ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w6)))),
        (
            "W6 ceiling ms (the statement raw)".into(),
            Box::new(move |r: &Row| opt(r.w6_ceiling.map(ms), &|x| format!("{x:.3}"))),
        ),
        ("W6 at 10x the session, ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w6_large)))),
        ("W7 compact ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w7.0)))),
        (
            "W7 ceiling ms (raw statements)".into(),
            Box::new(move |r: &Row| opt(r.w7_ceiling.map(ms), &|x| format!("{x:.3}"))),
        ),
        ("W7 load_context after ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w7.1)))),
        (
            format!("W8 recent_user ms @{}", plan.small * plan.per_session),
            Box::new(|r: &Row| format!("{:.3}", ms(r.w8.0))),
        ),
        (
            format!("W8 recent_user ms @{}", plan.large * plan.per_session),
            Box::new(|r: &Row| format!("{:.3}", ms(r.w8.1))),
        ),
        ("W8 growth".into(), Box::new(|r: &Row| format!("{:.2}", ratio(ms(r.w8.1), ms(r.w8.0))))),
        (format!("W9 {} pairs alone p99 ms", plan.w9_pairs), Box::new(|r: &Row| format!("{:.3}", ms(r.w9_alone.1)))),
        ("W9 pairs + compactor p99 ms".into(), Box::new(|r: &Row| format!("{:.3}", ms(r.w9_compacting.1)))),
        ("W9 compactions during the run".into(), Box::new(|r: &Row| format!("{}", r.w9_compacting.3))),
        (
            "W9 with / without compactor".into(),
            Box::new(|r: &Row| format!("{:.2}", ratio(ms(r.w9_compacting.2), ms(r.w9_alone.2)))),
        ),
    ];
    print!("{:<34}", "workload");
    for r in rows {
        print!(" {:>18}", r.name);
    }
    println!();
    // With --w1-only, --w2-only or --w5-only the other rows were not
    // measured: not shown.
    let shown = |label: &str| {
        (!plan.w1_only || label.starts_with("W1 "))
            && (!plan.w2_only || label.starts_with("W2 "))
            && (!plan.w5_only || label.starts_with("W1 ") || label.starts_with("W5 "))
    };
    for (label, f) in lines.iter().filter(|(label, _)| shown(label)) {
        print!("{label:<34}");
        for r in rows {
            print!(" {:>18}", f(r));
        }
        println!();
    }
    println!();
    for r in rows {
        for (what, value, limit, met) in checks(r).into_iter().filter(|(what, ..)| shown(what)) {
            println!(
                "{:<20} {:<28} {:>12.3} (target {limit}) {}",
                r.name,
                what,
                value,
                if met { "met" } else { "MISSED" }
            );
        }
        for f in &r.failures {
            println!("{:<20} FAILURE {f}", r.name);
        }
    }
}

/// W10's lines and its targets (WORKLOADS.md).
fn print_w10(w: &w10::W10) {
    println!();
    println!("W10 koda-store copy, SQLite -> PostgreSQL, {} messages (medians of {} rounds)", w.messages, w10::ROUNDS);
    println!("{:<34} {:>18.0}", "W10 copy msgs/s (with verification)", w.copy_per_s);
    println!("{:<34} {:>18.0}", "W10 ceiling: binary COPY msgs/s", w.ceiling_per_s);
    println!(
        "{:<34} {:>18.0} ({:.2}x the ceiling; copy {:.2}x this)",
        "W10 COPY into the store's table",
        w.store_table_per_s,
        ratio(w.store_table_per_s, w.ceiling_per_s),
        ratio(w.copy_per_s, w.store_table_per_s)
    );
    println!("{:<34} {:>18.0}", "W10 export msgs/s", w.export_per_s);
    let r = ratio(w.copy_per_s, w.ceiling_per_s);
    for (what, value, limit) in [
        ("W10 copy / ceiling (>=)", r, 0.5),
        ("W10 copy msgs/s (>=)", w.copy_per_s, 50_000.0),
        ("W10 export msgs/s (>=)", w.export_per_s, 100_000.0),
    ] {
        let met = value >= limit;
        println!(
            "{:<20} {:<28} {:>12.3} (target {limit}) {}",
            "sqlite -> postgres",
            what,
            value,
            if met { "met" } else { "MISSED" }
        );
    }
}

/// W11's lines (WORKLOADS.md).
/// W12's keys, as every row carries them in `--json`.
fn w12_json_of(w: &w12::W12) -> Value {
    json!({"target": w.name, "w12_logical_bytes": w.logical_bytes,
           "w12_stored_bytes": w.stored_bytes, "w12_inline_bytes": w.inline_bytes,
           "w12_load_ms": w.load_ms, "w12_inline_load_ms": w.inline_load_ms,
           "w12_insert_s": w.insert_s, "w12_inline_insert_s": w.inline_insert_s,
           "w12_bodies": w.bodies.bodies, "w12_references": w.bodies.references,
           "w12_body_logical_bytes": w.bodies.logical_bytes,
           "w12_body_stored_bytes": w.bodies.stored_bytes,
           "w12_stored_over_inline": ratio(w.stored_bytes as f64, w.inline_bytes as f64),
           "w12_load_over_inline": ratio(w.load_ms, w.inline_load_ms)})
}

fn print_w12(runs: &[w12::W12]) {
    println!();
    println!(
        "W12: large outputs stored once ({} turns per session; inline = the same rows with every field inline)",
        w12::TURNS
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "target", "logical B", "stored B", "inline B", "st/inl", "load ms", "inl ms", "ld/inl", "insert s", "inl ins s"
    );
    for w in runs {
        println!(
            "{:<22} {:>12} {:>12} {:>12} {:>8.3} {:>9.2} {:>9.2} {:>7.2} {:>9.2} {:>9.2}",
            w.name,
            w.logical_bytes,
            w.stored_bytes,
            w.inline_bytes,
            ratio(w.stored_bytes as f64, w.inline_bytes as f64),
            w.load_ms,
            w.inline_load_ms,
            ratio(w.load_ms, w.inline_load_ms),
            w.insert_s,
            w.inline_insert_s
        );
        println!(
            "{:<22} bodies: {} stored once for {} references ({} logical bytes in {} packed)",
            "", w.bodies.bodies, w.bodies.references, w.bodies.logical_bytes, w.bodies.stored_bytes
        );
    }
}

/// W13 as JSON: one object per backend, one entry per size.
fn w13_json_of(w: &w13::W13) -> Value {
    let sizes: Vec<Value> = w
        .sizes
        .iter()
        .map(|s| {
            json!({"messages": s.messages, "catch_up_ms": ms(s.catch_up),
                   "p50_ms": ms(s.p50), "p99_ms": ms(s.p99),
                   "ceiling_p50_ms": s.ceiling.map(|c| ms(c.0)),
                   "ceiling_p99_ms": s.ceiling.map(|c| ms(c.1))})
        })
        .collect();
    let growth = match (w.sizes.first(), w.sizes.last()) {
        (Some(a), Some(b)) => ratio(ms(b.p99), ms(a.p99)),
        _ => f64::NAN,
    };
    json!({"target": w.name, "queries": w13::QUERIES.len(), "limit": w13::LIMIT,
           "sizes": sizes, "p99_growth": growth,
           "w1_with_index_msgs_per_s": w.w1_with,
           "w1_without_index_msgs_per_s": w.w1_without,
           "w1_with_over_without": w.w1_without.map(|x| ratio(w.w1_with, x))})
}

fn print_w13(runs: &[w13::W13]) {
    println!();
    println!(
        "W13: search ({} fixed queries, limit {}; ceiling = the same index queried raw; catch-up = the first search after a fill, which indexes it)",
        w13::QUERIES.len(),
        w13::LIMIT
    );
    println!(
        "{:<18} {:>9} {:>12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "target", "messages", "catch-up ms", "p50 ms", "p99 ms", "ceil p50", "ceil p99", "p99/ceil", "growth"
    );
    for w in runs {
        let first = w.sizes.first().map(|s| ms(s.p99));
        for s in &w.sizes {
            let (c50, c99) = s.ceiling.map_or((f64::NAN, f64::NAN), |c| (ms(c.0), ms(c.1)));
            println!(
                "{:<18} {:>9} {:>12.1} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>8.2}",
                w.name,
                s.messages,
                ms(s.catch_up),
                ms(s.p50),
                ms(s.p99),
                c50,
                c99,
                ratio(ms(s.p99), c99),
                first.map_or(f64::NAN, |f| ratio(ms(s.p99), f))
            );
        }
        match w.w1_without {
            Some(without) => println!(
                "{:<18} W1 with the index {:.0} msg/s, without {:.0} msg/s: {:.3}x",
                w.name,
                w.w1_with,
                without,
                ratio(w.w1_with, without)
            ),
            None => println!("{:<18} W1 {:.0} msg/s (no index to drop: search scans)", w.name, w.w1_with),
        }
    }
}

fn print_w11(runs: &[w11::W11Run]) {
    println!();
    println!(
        "W11 a team on one PostgreSQL (each client pool_size=2; PgBouncer: transaction mode, {} server connections)",
        w11::SERVER_CONNECTIONS
    );
    println!(
        "{:<20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "", "clients", "opened", "turns", "turns/s", "p50 ms", "p99 ms", "errors", "exact"
    );
    for r in runs {
        println!(
            "{:<20} {:>8} {:>8} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>7} {:>6}",
            r.name,
            r.clients,
            r.opened,
            r.turns,
            r.turns as f64 / r.seconds.max(1e-9),
            ms(r.p50),
            ms(r.p99),
            r.errors,
            r.counts_exact
        );
        if let Some(e) = &r.first_error {
            let short: String = e.chars().take(200).collect();
            println!("{:<20} first error: {short}", "");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.redaction_scan {
        let sessions = Plan::new(cli.quick).w12_sessions;
        let (bytes, secs, found) = w12::redaction_scan(sessions)?;
        println!(
            "redaction scan of W12's distinct tool outputs ({sessions} sessions): {:.1} MB in {:.3} s, {:.0} MB/s, {found} found",
            bytes as f64 / 1e6,
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9)
        );
        for (name, plain, redacted) in w12::redacted_inserts(sessions, 3).await? {
            println!(
                "W12 inserts, {name}: {plain:.2} s without, {redacted:.2} s with redact=secrets (best of 3): \
                 throughput with/without {:.2}",
                plain / redacted.max(1e-9)
            );
        }
        return Ok(());
    }
    if cli.w12_levels {
        let sessions = Plan::new(cli.quick).w12_sessions;
        println!("zstd levels on W12's distinct tool outputs ({sessions} sessions)");
        println!(
            "{:>6} {:>12} {:>12} {:>7} {:>10} {:>11}",
            "level", "raw B", "packed B", "ratio", "pack MB/s", "unpack MB/s"
        );
        for l in w12::levels(sessions, &[1, 3, 6, 9, 12, 19])? {
            println!(
                "{:>6} {:>12} {:>12} {:>7.2} {:>10.0} {:>11.0}",
                l.level,
                l.raw_bytes,
                l.packed_bytes,
                l.raw_bytes as f64 / l.packed_bytes.max(1) as f64,
                l.pack_mb_s,
                l.unpack_mb_s
            );
        }
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    let mut urls = cli.urls.clone();
    if urls.is_empty() {
        urls = vec!["memory:".into(), "sqlite://".into(), "sqlite://?synchronous=full".into(), "sled://".into()];
        if let Ok(pg) = std::env::var("KODA_BENCH_POSTGRES_URL").or_else(|_| std::env::var("KODA_TEST_POSTGRES_URL")) {
            urls.push(pg);
        }
    }
    let plan = Plan { w1_only: cli.w1_only, w2_only: cli.w2_only, w5_only: cli.w5_only, ..Plan::new(cli.quick) };
    let targets = urls.iter().map(|u| Target::parse(u, scratch.path())).collect::<Result<Vec<_>>>()?;
    if cli.ledger_year {
        for t in &targets {
            eprintln!("writing a year of history into {}", t.name());
            let y = ledger::run(t, if cli.quick { 10 } else { 1 }, 21).await?;
            println!(
                "ledger year, {}: {} messages written in {:.1} s; usage --by day over {} days: median {:.2} ms, \
                 slowest {:.2} ms (21 runs; target 50 ms)",
                y.name, y.messages, y.write_s, y.days, y.median_ms, y.max_ms
            );
        }
        return Ok(());
    }
    let outcome = run(&cli, plan, &targets, scratch.path()).await;
    // A workload that failed midway returned before dropping its schema.
    for t in &targets {
        if let Target::Postgres { url } = t {
            match targets::sweep_schemas(url).await {
                Ok(0) => {}
                Ok(n) => eprintln!("dropped {n} schema(s) a failed workload left"),
                Err(e) => eprintln!("could not drop this run's leftover schemas: {e:#}"),
            }
        }
    }
    outcome
}

/// Every workload asked for, then the table (or JSON).
async fn run(cli: &Cli, plan: Plan, targets: &[Target], scratch: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let only = cli.w10_only || cli.w11_only || cli.w12_only || cli.w13_only;
    for t in targets.iter().filter(|_| !only) {
        eprintln!("benchmarking {}", t.name());
        rows.push(run_target(t, plan).await?);
    }
    // W10 needs a PostgreSQL target: the first one.
    let mut w10 = None;
    let postgres = targets.iter().find_map(|t| match t {
        Target::Postgres { url } => Some(url.clone()),
        _ => None,
    });
    // --w1-only, --w2-only and --w5-only are A/B runs of one workload: no
    // W10.
    let w10_wanted = !(cli.w11_only || cli.w12_only || cli.w13_only || plan.w1_only || plan.w2_only || plan.w5_only);
    if let Some(url) = postgres.as_deref().filter(|_| w10_wanted) {
        eprintln!("benchmarking W10 (koda-store copy SQLite -> PostgreSQL)");
        w10 = Some(w10::run(url, scratch, plan.w10_sessions, plan.per_session).await?);
    }
    let mut w12 = Vec::new();
    if cli.w12 || cli.w12_only {
        for t in targets {
            eprintln!("benchmarking W12 (large outputs stored once) on {}", t.name());
            w12.extend(w12::run(t, scratch, plan.w12_sessions).await?);
        }
    }
    let mut w13 = Vec::new();
    if cli.w13 || cli.w13_only {
        for t in targets {
            eprintln!("benchmarking W13 (search) on {}", t.name());
            let (small, large) = plan.w13_sessions;
            w13.push(w13::run(t, small, large, plan.w1).await?);
        }
    }
    let mut w11 = Vec::new();
    if cli.w11 || cli.w11_only {
        let url = postgres.as_deref().context("W11 needs a postgres:// URL")?;
        let seconds = cli.w11_seconds.unwrap_or(if cli.quick { 3.0 } else { 30.0 });
        eprintln!("benchmarking W11 ({} clients, {seconds} s through PgBouncer, then direct)", cli.clients);
        w11 = w11::run(url, cli.clients, seconds).await?;
    }
    let sqlite_ref = rows.iter().find(|r| r.name == "sqlite (NORMAL)").map(|r| r.w1);
    if cli.json {
        let w10_json = w10.map(|w| {
            json!({"messages": w.messages, "copy_msgs_per_s": w.copy_per_s,
                   "ceiling_msgs_per_s": w.ceiling_per_s,
                   "store_table_copy_msgs_per_s": w.store_table_per_s,
                   "export_msgs_per_s": w.export_per_s, "rounds": w10::ROUNDS,
                   "copy_over_ceiling": ratio(w.copy_per_s, w.ceiling_per_s)})
        });
        let w11_json: Vec<_> = w11
            .iter()
            .map(|r| {
                json!({"name": r.name, "clients": r.clients, "opened": r.opened,
                       "turns": r.turns, "errors": r.errors, "first_error": r.first_error,
                       "p50_ms": ms(r.p50), "p99_ms": ms(r.p99), "seconds": r.seconds,
                       "counts_exact": r.counts_exact})
            })
            .collect();
        let w12_json: Vec<_> = w12.iter().map(w12_json_of).collect();
        let mut row_docs: Vec<Value> = rows.iter().map(row_json).collect();
        for w in &w12 {
            match row_docs.iter_mut().find(|r| r["target"] == w.name.as_str()) {
                Some(Value::Object(doc)) => {
                    if let Value::Object(extra) = w12_json_of(w) {
                        doc.extend(extra);
                    }
                }
                _ => row_docs.push(w12_json_of(w)),
            }
        }
        let w13_json: Vec<_> = w13.iter().map(w13_json_of).collect();
        let out = json!({"quick": cli.quick, "rows": row_docs,
                         "w10": w10_json, "w11": w11_json, "w12": w12_json,
                         "w13": w13_json});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if !rows.is_empty() {
            print_table(&rows, plan, sqlite_ref);
        }
        if let Some(w) = w10 {
            print_w10(&w);
        }
        if !w11.is_empty() {
            print_w11(&w11);
        }
        if !w12.is_empty() {
            print_w12(&w12);
        }
        if !w13.is_empty() {
            print_w13(&w13);
        }
    }
    // Through the pooler every turn must succeed and every count be
    // exact; direct, a server with fewer connections than clients refuses
    // some (reported above, not a harness failure).
    if let Some(r) = w11.first() {
        anyhow::ensure!(
            r.errors == 0 && r.counts_exact && r.opened == r.clients,
            "W11 through PgBouncer: {} errors, counts exact: {} (first: {:?})",
            r.errors,
            r.counts_exact,
            r.first_error
        );
    }
    let failed: Vec<&String> =
        rows.iter().flat_map(|r| &r.failures).chain(w13.iter().flat_map(|w| &w.failures)).collect();
    for f in &failed {
        eprintln!("FAILED: {f}");
    }
    anyhow::ensure!(failed.is_empty(), "{} workload(s) returned wrong results", failed.len());
    Ok(())
}
