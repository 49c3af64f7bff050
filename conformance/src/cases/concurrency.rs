//! Concurrency: many tasks on one store, nothing lost, order kept per task.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use koda_persistence_api::{Persistence, Role};

use super::{ROOT, check, eq, session};
use crate::Ctx;

const TASKS: usize = 16;
const PER_TASK: usize = 25;

async fn join_all<T: Send + 'static>(
    handles: Vec<tokio::task::JoinHandle<Result<T>>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("task panicked")??);
    }
    Ok(out)
}

async fn insert_many(
    store: Arc<dyn Persistence>,
    sid: String,
    task: usize,
) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for i in 0..PER_TASK {
        let text = format!("t{task}-{i}");
        let id = store
            .insert_message(&sid, &Role::User, Some(&text), None, None, None)
            .await?;
        out.push((id, text));
    }
    Ok(out)
}

/// Checks that every returned id is unique and stored with its text, and that
/// each task's messages appear in its insert order.
fn check_accounted(
    inserted: &[Vec<(i64, String)>],
    stored: &HashMap<i64, (usize, String)>,
) -> Result<()> {
    let mut seen = HashSet::new();
    for task in inserted {
        let mut last_pos = None;
        for (id, text) in task {
            check(&format!("duplicate id {id}"), seen.insert(*id))?;
            let (pos, got) = stored
                .get(id)
                .with_context(|| format!("message {id} lost"))?;
            eq(&format!("text of {id}"), got, text)?;
            check(
                &format!("task order broken at {text}"),
                last_pos.is_none_or(|p| p < *pos),
            )?;
            last_pos = Some(*pos);
        }
        let ids: Vec<i64> = task.iter().map(|(id, _)| *id).collect();
        check(
            "ids increase within a task",
            ids.windows(2).all(|w| w[0] < w[1]),
        )?;
    }
    Ok(())
}

fn positions(all: Vec<koda_persistence_api::Message>) -> HashMap<i64, (usize, String)> {
    all.into_iter()
        .enumerate()
        .map(|(pos, m)| (m.id, (pos, m.content.unwrap_or_default())))
        .collect()
}

/// 16 tasks inserting into one session: every insert accounted for, ids
/// unique, each task's messages in its own order.
pub async fn concurrent_inserts_into_one_session(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let handles = (0..TASKS)
        .map(|t| tokio::spawn(insert_many(cx.store.clone(), sid.clone(), t)))
        .collect();
    let inserted = join_all(handles).await?;
    let all = cx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), TASKS * PER_TASK)?;
    check_accounted(&inserted, &positions(all))?;
    let info = cx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq(
        "message_count",
        info.first().map(|s| s.message_count),
        Some(i64::try_from(TASKS * PER_TASK)?),
    )
}

/// 16 tasks each inserting into their own session: each session holds
/// exactly its task's messages, in order; ids unique store-wide.
pub async fn concurrent_inserts_into_separate_sessions(cx: &Ctx) -> Result<()> {
    let mut sids = Vec::new();
    for _ in 0..TASKS {
        sids.push(session(cx).await?);
    }
    let handles = sids
        .iter()
        .enumerate()
        .map(|(t, sid)| tokio::spawn(insert_many(cx.store.clone(), sid.clone(), t)))
        .collect();
    let inserted = join_all(handles).await?;
    let mut seen = HashSet::new();
    for (sid, task) in sids.iter().zip(&inserted) {
        let all = cx.store.load_all_messages(sid).await?;
        let got: Vec<(i64, String)> = all
            .into_iter()
            .map(|m| (m.id, m.content.unwrap_or_default()))
            .collect();
        eq("session holds its task's messages in order", &got, task)?;
        for (id, _) in task {
            check(&format!("id {id} reused across sessions"), seen.insert(*id))?;
        }
    }
    eq(
        "recent",
        cx.store.recent_user_messages(i64::MAX).await?.len(),
        TASKS * PER_TASK,
    )
}

/// Sessions created concurrently all get distinct ids and are all listed.
pub async fn concurrent_session_creation(cx: &Ctx) -> Result<()> {
    let handles = (0..TASKS)
        .map(|_| {
            let store = cx.store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..5 {
                    ids.push(store.create_session("main", Path::new(ROOT)).await?);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let made: Vec<String> = join_all(handles).await?.into_iter().flatten().collect();
    let unique: HashSet<&String> = made.iter().collect();
    eq("unique", unique.len(), TASKS * 5)?;
    let listed: HashSet<String> = cx
        .store
        .list_sessions(i64::MAX, Path::new(ROOT))
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    eq("listed", listed, made.into_iter().collect())
}

/// Compactions racing with inserts lose nothing: every insert is stored once
/// and each compaction that marked messages added exactly two.
pub async fn concurrent_compaction_and_inserts_lose_nothing(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let writers: Vec<_> = (0..8)
        .map(|t| tokio::spawn(insert_many(cx.store.clone(), sid.clone(), t)))
        .collect();
    let store = cx.store.clone();
    let sid2 = sid.clone();
    let compactor = tokio::spawn(async move {
        let mut pairs = 0usize;
        let mut marked = 0usize;
        for i in 0..10 {
            let n = store
                .compact_session(&sid2, &format!("summary {i}"), 5)
                .await?;
            if n > 0 {
                pairs += 1;
                marked += n;
            }
            tokio::task::yield_now().await;
        }
        anyhow::Ok((pairs, marked))
    });
    let inserted = join_all(writers).await?;
    let (pairs, marked) = compactor.await.context("compactor panicked")??;
    let all = cx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 8 * PER_TASK + 2 * pairs)?;
    check_accounted(&inserted, &positions(all))?;
    let stats = cx.store.compacted_stats().await?;
    eq("compacted", stats.message_count, i64::try_from(marked)?)
}

/// Readers racing a writer always see a prefix of the final history.
pub async fn concurrent_readers_see_committed_state(cx: &Ctx) -> Result<()> {
    let sid = session(cx).await?;
    let writer = tokio::spawn(insert_many(cx.store.clone(), sid.clone(), 0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = cx.store.clone();
            let sid = sid.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    let ids: Vec<i64> = store
                        .load_all_messages(&sid)
                        .await?
                        .into_iter()
                        .map(|m| m.id)
                        .collect();
                    seen.push(ids);
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(seen)
            })
        })
        .collect();
    let written: Vec<i64> = writer
        .await
        .context("writer panicked")??
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for snapshots in join_all(readers).await? {
        let mut last_len = 0;
        for ids in snapshots {
            eq(
                "snapshot is a prefix",
                ids.as_slice(),
                &written[..ids.len().min(written.len())],
            )?;
            check("snapshots never shrink", ids.len() >= last_len)?;
            last_len = ids.len();
        }
    }
    Ok(())
}
