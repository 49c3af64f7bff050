//! The usage ledger's query over a year of history: 365 days × 50
//! sessions a day, 100,000 messages in all (imported on their days, half
//! of them answers with usage, agents `main` and `explore`), then
//! `usage --by day` over the whole year, timed.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use koda_persistence::ledger::{DAY_MS, UsageBy, UsageQuery};
use koda_persistence::{MessageRecord, Role, SessionRecord};

use crate::targets::Target;

/// Days of history.
pub const DAYS: i64 = 365;
/// Sessions created each day.
pub const SESSIONS_PER_DAY: usize = 50;
/// Messages in all.
pub const MESSAGES: usize = 100_000;

/// What one target measured.
pub struct LedgerYear {
    pub name: String,
    pub messages: usize,
    pub write_s: f64,
    /// `usage --by day` over the year: median and slowest of the timed runs.
    pub median_ms: f64,
    pub max_ms: f64,
    pub days: usize,
}

/// Writes the year into a fresh store of `target` (`scale` divides the
/// session count, for a quick run) and times the by-day query `runs`
/// times.
pub async fn run(target: &Target, scale: usize, runs: usize) -> Result<LedgerYear> {
    let fresh = target.fresh("ledger").await?;
    let store = fresh.store.clone();
    let sessions = (DAYS as usize * SESSIONS_PER_DAY) / scale.max(1);
    let per_session = MESSAGES / (DAYS as usize * SESSIONS_PER_DAY);
    let extra = MESSAGES % (DAYS as usize * SESSIONS_PER_DAY);
    let start = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let started = Instant::now();
    let mut written = 0;
    for i in 0..sessions {
        let day = i64::try_from(i / (SESSIONS_PER_DAY / scale.max(1)).max(1)).unwrap_or(0).min(DAYS - 1);
        let at = start + day * DAY_MS + i64::try_from(i % 1000).unwrap_or(0) * 60_000;
        let id = format!("year-{i:05}");
        let record = SessionRecord {
            id: id.clone(),
            agent_name: "main".into(),
            project_root: Some(if i % 3 == 0 { "/work/a" } else { "/work/b" }.into()),
            created_ms: at,
            last_accessed_ms: None,
            title: None,
            mode: None,
        };
        store.import_session(&record).await?;
        let n = per_session + usize::from(i < extra / scale.max(1));
        let messages: Vec<MessageRecord> = (0..n)
            .map(|k| {
                let answer = k % 2 == 1;
                MessageRecord {
                    content: Some(format!("turn {k}")),
                    prompt_tokens: answer.then_some(1_000 + i64::try_from(k).unwrap_or(0)),
                    completion_tokens: answer.then_some(200),
                    cache_read_tokens: answer.then_some(800),
                    agent: (answer && k % 4 == 3).then(|| "explore".to_owned()),
                    ..MessageRecord::bare(1, if answer { Role::Assistant } else { Role::User }, at + k as i64)
                }
            })
            .collect();
        store.import_messages(&id, &messages, false).await?;
        written += n;
    }
    let write_s = started.elapsed().as_secs_f64();
    let q = UsageQuery {
        since_ms: start,
        until_ms: start + DAYS * DAY_MS,
        by: UsageBy::Day,
        project_root: None::<&Path>,
        agent: None,
    };
    let mut times = Vec::with_capacity(runs);
    let mut days = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let rows = store.usage(&q).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        days = rows.len();
        let counted: i64 = rows.iter().map(|r| r.sums.messages).sum();
        anyhow::ensure!(counted == i64::try_from(written).unwrap_or(0), "the ledger counted {counted} of {written}");
    }
    times.sort_by(f64::total_cmp);
    drop(store);
    target.cleanup(fresh).await?;
    Ok(LedgerYear {
        name: target.name(),
        messages: written,
        write_s,
        median_ms: times.get(times.len() / 2).copied().unwrap_or(0.0),
        max_ms: times.last().copied().unwrap_or(0.0),
        days,
    })
}
