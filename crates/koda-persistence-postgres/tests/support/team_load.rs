//! A team's load on one PostgreSQL: `clients` stores (simulated koda
//! processes) running agent turns for a while (insert the user's message,
//! the assistant's answer with a tool call and usage, the tool's result,
//! mark the answer complete, load the context), then a check that each
//! client's session holds exactly what it wrote. Shared by the team test
//! and the benchmark harness (W11), which includes this file by path.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use koda_persistence_api::{Persistence, Role, TokenUsage};

/// The median and 99th percentile of `times`.
fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    if times.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub name: &'static str,
    pub clients: usize,
    pub opened: usize,
    pub turns: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub p50: Duration,
    pub p99: Duration,
    pub seconds: f64,
    pub counts_exact: bool,
}

/// What one client did.
struct ClientOutcome {
    turns: usize,
    errors: usize,
    first_error: Option<String>,
    times: Vec<Duration>,
    exact: bool,
}

async fn turn(store: &dyn Persistence, session: &str, n: usize) -> Result<usize> {
    let usage = TokenUsage { prompt_tokens: 1_200, completion_tokens: 80, ..TokenUsage::default() };
    store.insert_message(session, &Role::User, Some(&format!("please fix test {n}")), None, None, None).await?;
    let call = format!(
        r#"[{{"id":"call_{n}","type":"function","function":{{"name":"bash","arguments":"{{\"cmd\":\"cargo test\"}}"}}}}]"#
    );
    let answer = store
        .insert_message(session, &Role::Assistant, Some("running the tests"), Some(&call), None, Some(&usage))
        .await?;
    store
        .insert_message(
            session,
            &Role::Tool,
            Some("test result: ok. 12 passed"),
            None,
            Some(&format!("call_{n}")),
            None,
        )
        .await?;
    store.mark_message_complete(answer).await?;
    Ok(store.load_context(session).await?.len())
}

async fn client(store: Arc<dyn Persistence>, deadline: Instant) -> ClientOutcome {
    let mut out = ClientOutcome { turns: 0, errors: 0, first_error: None, times: Vec::new(), exact: false };
    let session = match store.create_session("main", Path::new("/bench/w11")).await {
        Ok(s) => s,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("{e:#}"));
            return out;
        }
    };
    let mut stored = 0usize;
    while Instant::now() < deadline {
        let t = Instant::now();
        match turn(store.as_ref(), &session, out.turns).await {
            Ok(_) => {
                out.times.push(t.elapsed());
                out.turns += 1;
                stored = 3 * out.turns;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                // A failed turn may have stored part of itself: recount.
                stored = store.load_all_messages(&session).await.map(|m| m.len()).unwrap_or(usize::MAX);
            }
        }
    }
    out.exact = matches!(store.load_all_messages(&session).await, Ok(m) if m.len() == stored);
    out
}

/// Runs `clients` stores, each made by `open` (a simulated koda process
/// with its own pool), for `seconds`.
pub async fn run_one<F, Fut>(name: &'static str, open: F, clients: usize, seconds: f64) -> Result<LoadRun>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn Persistence>>>,
{
    let mut stores = Vec::with_capacity(clients);
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..clients {
        match open().await {
            Ok(s) => stores.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("opening: {e:#}"));
            }
        }
    }
    let opened = stores.len();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = stores.into_iter().map(|s| tokio::spawn(client(s, deadline))).collect();
    let mut times = Vec::new();
    let (mut turns, mut exact) = (0, true);
    for t in tasks {
        let o = t.await.context("a load client panicked")?;
        turns += o.turns;
        errors += o.errors;
        exact &= o.exact;
        if first_error.is_none() {
            first_error = o.first_error;
        }
        times.extend(o.times);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(&mut times);
    Ok(LoadRun { name, clients, opened, turns, errors, first_error, p50, p99, seconds: elapsed, counts_exact: exact })
}
