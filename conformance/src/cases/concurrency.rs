//! Concurrency: many tasks on one store, nothing lost, order kept per task.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use koda_persistence_api::{Persistence, PersistenceError, Role};

use super::{ROOT, check, eq, session};
use crate::Fixture;

const TASKS: usize = 16;
const PER_TASK: usize = 25;

async fn join_all<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("task panicked")??);
    }
    Ok(out)
}

async fn insert_many(store: Arc<dyn Persistence>, sid: String, task: usize) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for i in 0..PER_TASK {
        let text = format!("t{task}-{i}");
        let id = store.insert_message(&sid, &Role::User, Some(&text), None, None, None).await?;
        out.push((id, text));
    }
    Ok(out)
}

/// Checks that every returned id is unique and stored with its text, and that
/// each task's messages appear in its insert order.
fn check_accounted(inserted: &[Vec<(i64, String)>], stored: &HashMap<i64, (usize, String)>) -> Result<()> {
    let mut seen = HashSet::new();
    for task in inserted {
        let mut last_pos = None;
        for (id, text) in task {
            check(&format!("duplicate id {id}"), seen.insert(*id))?;
            let (pos, got) = stored.get(id).with_context(|| format!("message {id} lost"))?;
            eq(&format!("text of {id}"), got, text)?;
            check(&format!("task order broken at {text}"), last_pos.is_none_or(|p| p < *pos))?;
            last_pos = Some(*pos);
        }
        let ids: Vec<i64> = task.iter().map(|(id, _)| *id).collect();
        check("ids increase within a task", ids.windows(2).all(|w| w[0] < w[1]))?;
    }
    Ok(())
}

fn positions(all: Vec<koda_persistence_api::Message>) -> HashMap<i64, (usize, String)> {
    all.into_iter().enumerate().map(|(pos, m)| (m.id, (pos, m.content.unwrap_or_default()))).collect()
}

/// 16 tasks inserting into one session: every insert accounted for, ids
/// unique, each task's messages in its own order.
pub async fn concurrent_inserts_into_one_session(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let handles = (0..TASKS).map(|t| tokio::spawn(insert_many(fx.store.clone(), sid.clone(), t))).collect();
    let inserted = join_all(handles).await?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), TASKS * PER_TASK)?;
    check_accounted(&inserted, &positions(all))?;
    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    eq("message_count", info.first().map(|s| s.message_count), Some(i64::try_from(TASKS * PER_TASK)?))
}

/// 16 tasks each inserting into their own session: each session holds
/// exactly its task's messages, in order; ids unique store-wide.
pub async fn concurrent_inserts_into_separate_sessions(fx: &Fixture) -> Result<()> {
    let mut sids = Vec::new();
    for _ in 0..TASKS {
        sids.push(session(fx).await?);
    }
    let handles =
        sids.iter().enumerate().map(|(t, sid)| tokio::spawn(insert_many(fx.store.clone(), sid.clone(), t))).collect();
    let inserted = join_all(handles).await?;
    let mut seen = HashSet::new();
    for (sid, task) in sids.iter().zip(&inserted) {
        let all = fx.store.load_all_messages(sid).await?;
        let got: Vec<(i64, String)> = all.into_iter().map(|m| (m.id, m.content.unwrap_or_default())).collect();
        eq("session holds its task's messages in order", &got, task)?;
        for (id, _) in task {
            check(&format!("id {id} reused across sessions"), seen.insert(*id))?;
        }
    }
    eq("recent", fx.store.recent_user_messages(i64::MAX).await?.len(), TASKS * PER_TASK)
}

/// Sessions created concurrently all get distinct ids and are all listed.
pub async fn concurrent_session_creation(fx: &Fixture) -> Result<()> {
    let handles = (0..TASKS)
        .map(|_| {
            let store = fx.store.clone();
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
    let listed: HashSet<String> =
        fx.store.list_sessions(i64::MAX, Path::new(ROOT)).await?.into_iter().map(|s| s.id).collect();
    eq("listed", listed, made.into_iter().collect())
}

/// Compactions racing with inserts lose nothing: every insert is stored once
/// and each compaction that marked messages added exactly two.
pub async fn concurrent_compaction_and_inserts_lose_nothing(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let writers: Vec<_> = (0..8).map(|t| tokio::spawn(insert_many(fx.store.clone(), sid.clone(), t))).collect();
    let store = fx.store.clone();
    let sid2 = sid.clone();
    let compactor = tokio::spawn(async move {
        let mut pairs = 0usize;
        let mut marked = 0usize;
        for i in 0..10 {
            let n = store.compact_session(&sid2, &format!("summary {i}"), 5).await?;
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
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 8 * PER_TASK + 2 * pairs)?;
    check_accounted(&inserted, &positions(all))?;
    let stats = fx.store.compacted_stats().await?;
    eq("compacted", stats.message_count, i64::try_from(marked)?)
}

/// Readers racing a writer always see a prefix of the final history.
pub async fn concurrent_readers_see_committed_state(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let writer = tokio::spawn(insert_many(fx.store.clone(), sid.clone(), 0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = fx.store.clone();
            let sid = sid.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    let ids: Vec<i64> = store.load_all_messages(&sid).await?.into_iter().map(|m| m.id).collect();
                    seen.push(ids);
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(seen)
            })
        })
        .collect();
    let written: Vec<i64> = writer.await.context("writer panicked")??.into_iter().map(|(id, _)| id).collect();
    for snapshots in join_all(readers).await? {
        let mut last_len = 0;
        for ids in snapshots {
            eq("snapshot is a prefix", ids.as_slice(), &written[..ids.len().min(written.len())])?;
            check("snapshots never shrink", ids.len() >= last_len)?;
            last_len = ids.len();
        }
    }
    Ok(())
}

/// How long [`everything_at_once_on_one_session`] runs its tasks:
/// `KODA_STRESS_MS` milliseconds (default 2,000).
fn stress_duration() -> std::time::Duration {
    let ms = std::env::var("KODA_STRESS_MS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(2_000);
    std::time::Duration::from_millis(ms)
}

/// What one writer of [`everything_at_once_on_one_session`] got acknowledged.
#[derive(Debug, Default)]
struct Acked {
    ids: Vec<i64>,
    /// `mark_message_complete` answered `MessageNotFound`: the answer was
    /// compacted and purged before it could be completed (allowed).
    completed_after_purge: usize,
}

/// One agent turn after another until `until`: question, answer naming one
/// tool call (with usage), completion, tool result.
async fn turn_writer(store: Arc<dyn Persistence>, sid: String, w: usize, until: std::time::Instant) -> Result<Acked> {
    let mut acked = Acked::default();
    let mut k = 0usize;
    while std::time::Instant::now() < until {
        let call = format!("w{w}-{k}");
        acked
            .ids
            .push(store.insert_message(&sid, &Role::User, Some(&call), None, None, None).await.context("insert user")?);
        let answer = store
            .insert_message(
                &sid,
                &Role::Assistant,
                Some("calling"),
                Some(&super::calls(&[&call])),
                None,
                Some(&super::usage(3, 5, 1, 1, 1)),
            )
            .await
            .context("insert assistant")?;
        acked.ids.push(answer);
        match store.mark_message_complete(answer).await {
            Ok(()) => {}
            Err(e) if matches!(PersistenceError::of(&e), Some(PersistenceError::MessageNotFound(id)) if *id == answer) =>
            {
                acked.completed_after_purge += 1;
            }
            Err(e) => return Err(e.context("mark_message_complete")),
        }
        acked.ids.push(
            store
                .insert_tool_message_with_full(&sid, "ok", &call, "full output")
                .await
                .context("insert tool result")?,
        );
        k += 1;
    }
    Ok(acked)
}

/// The tool-call ids an assistant's `tool_calls` names (the writers above
/// only write well-formed arrays).
fn named(tool_calls: Option<&str>) -> Vec<String> {
    let Some(text) = tool_calls else {
        return Vec::new();
    };
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.get("id")?.as_str().map(str::to_owned))
        .collect()
}

/// Every named call has a result and every result a call.
fn check_paired(context: &[koda_persistence_api::Message]) -> Result<()> {
    let calls: HashSet<String> =
        context.iter().filter(|m| m.role == Role::Assistant).flat_map(|m| named(m.tool_calls.as_deref())).collect();
    let results: HashSet<String> =
        context.iter().filter(|m| m.role == Role::Tool).filter_map(|m| m.tool_call_id.clone()).collect();
    check(
        "every tool result in the context answers a call in it",
        context
            .iter()
            .filter(|m| m.role == Role::Tool)
            .all(|m| m.tool_call_id.as_ref().is_some_and(|c| calls.contains(c))),
    )?;
    let unanswered: Vec<&String> = calls.difference(&results).collect();
    check(&format!("calls without a result in the context: {unanswered:?}"), unanswered.is_empty())
}

/// Two writers (turns with tool calls, each answer completed), a content
/// clearer, a compactor (small `keep`) and a purger work on one session at
/// once while a reader loads the context, for `KODA_STRESS_MS` (2 s).
/// Afterwards: no error but `MessageNotFound` for an answer purged before
/// its completion; every acknowledged message is stored unless purged, and
/// the store holds exactly the acknowledged messages plus two per
/// compaction, minus what purge reported; the context pairs calls with
/// results; the session's counters and usage equal its rows; and the
/// server counted no deadlock (where the factory can count them).
pub async fn everything_at_once_on_one_session(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let deadlocks_before = fx.deadlocks().await?;
    let until = std::time::Instant::now() + stress_duration();
    let writers: Vec<_> = (0..2).map(|w| tokio::spawn(turn_writer(fx.store.clone(), sid.clone(), w, until))).collect();
    let (store, s) = (fx.store.clone(), sid.clone());
    let clearer = tokio::spawn(async move {
        while std::time::Instant::now() < until {
            let ids: Vec<i64> = store.load_all_messages(&s).await?.iter().map(|m| m.id).step_by(3).collect();
            store.clear_message_content(&ids, "[cleared]").await.context("clear_message_content")?;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    });
    let (store, s) = (fx.store.clone(), sid.clone());
    let compactor = tokio::spawn(async move {
        let mut pairs = 0usize;
        while std::time::Instant::now() < until {
            if store.compact_session(&s, "summary", 3).await.context("compact_session")? > 0 {
                pairs += 1;
            }
            tokio::task::yield_now().await;
        }
        anyhow::Ok(pairs)
    });
    let store = fx.store.clone();
    let purger = tokio::spawn(async move {
        let mut purged = 0usize;
        while std::time::Instant::now() < until {
            purged += store.purge_compacted(0).await.context("purge_compacted")?;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(purged)
    });
    let (store, s) = (fx.store.clone(), sid.clone());
    let reader = tokio::spawn(async move {
        let mut loads = 0usize;
        while std::time::Instant::now() < until {
            check_paired(&store.load_context(&s).await.context("load_context")?)?;
            loads += 1;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(loads)
    });

    let acked = join_all(writers).await?;
    clearer.await.context("clearer panicked")??;
    let pairs = compactor.await.context("compactor panicked")??;
    let mut purged = purger.await.context("purger panicked")??;
    let loads = reader.await.context("reader panicked")??;
    check("the reader ran", loads > 0)?;

    // One last purge so the counts below do not depend on timing.
    purged += fx.store.purge_compacted(0).await?;
    let acked_ids: Vec<i64> = acked.iter().flat_map(|a| a.ids.iter().copied()).collect();
    let unique: HashSet<i64> = acked_ids.iter().copied().collect();
    eq("acknowledged ids are unique", unique.len(), acked_ids.len())?;
    let all = fx.store.load_all_messages(&sid).await?;
    eq("stored = acknowledged + 2 per compaction - purged", all.len() + purged, acked_ids.len() + 2 * pairs)?;
    let stored: HashSet<i64> = all.iter().map(|m| m.id).collect();
    eq("stored ids are unique", stored.len(), all.len())?;
    for m in &all {
        check(
            &format!("message {} is neither acknowledged nor a compaction's", m.id),
            unique.contains(&m.id) || matches!(m.role, Role::System | Role::Assistant),
        )?;
    }
    let context = fx.store.load_context(&sid).await?;
    check_paired(&context)?;
    let completed_after_purge: usize = acked.iter().map(|a| a.completed_after_purge).sum();
    check("a purged answer is one the purge reported", completed_after_purge <= purged)?;

    let info = fx.store.list_sessions(1, Path::new(ROOT)).await?;
    let info = info.first().context("the session is listed")?;
    eq("message_count = rows", info.message_count, i64::try_from(all.len())?)?;
    let with_usage: Vec<&koda_persistence_api::Message> =
        all.iter().filter(|m| m.prompt_tokens.is_some() || m.completion_tokens.is_some()).collect();
    let tokens: i64 = with_usage.iter().map(|m| m.prompt_tokens.unwrap_or(0) + m.completion_tokens.unwrap_or(0)).sum();
    eq("total_tokens = rows", info.total_tokens, tokens)?;
    let usage = fx.store.session_token_usage(&sid).await?;
    eq("api_calls = rows", usage.api_calls, i64::try_from(with_usage.len())?)?;
    eq("usage = rows", usage.prompt_tokens + usage.completion_tokens, tokens)?;
    if let (Some(before), Some(after)) = (deadlocks_before, fx.deadlocks().await?) {
        eq("deadlocks the server counted", after - before, 0)?;
    }
    Ok(())
}

/// Two handles on one store (two koda processes on one file or schema):
/// whatever one writes, the other's next read shows, cached contexts
/// included (inserts, completions, cleared content, compaction, deletes).
/// Prints that it does not apply where the backend has one handle per
/// store.
pub async fn a_second_handle_sees_every_write(fx: &Fixture) -> Result<()> {
    let Some(b) = fx.second_handle() else {
        crate::say_skipped("concurrency::a_second_handle_sees_every_write", "this backend has one handle per store");
        return Ok(());
    };
    let a = &fx.store;
    let sid = session(fx).await?;
    a.insert_message(&sid, &Role::User, Some("q"), None, None, None).await?;
    eq("a's context", a.load_context(&sid).await?.len(), 1)?;
    let answer = b.insert_message(&sid, &Role::Assistant, Some("a"), None, None, None).await?;
    eq("an incomplete answer stays hidden", a.load_context(&sid).await?.len(), 1)?;
    b.mark_message_complete(answer).await?;
    eq("b's completed answer in a's context", a.load_context(&sid).await?.last().map(|m| m.id), Some(answer))?;
    b.clear_message_content(&[answer], "[cleared]").await?;
    eq(
        "b's cleared content in a's context",
        a.load_context(&sid).await?.last().and_then(|m| m.content.clone()),
        Some("[cleared]".to_owned()),
    )?;
    b.compact_session(&sid, "summary", 1).await?;
    eq("after b compacts, both see one context", a.load_context(&sid).await?, b.load_context(&sid).await?)?;
    a.insert_message(&sid, &Role::User, Some("next"), None, None, None).await?;
    eq("after a inserts, both see one context", b.load_context(&sid).await?, a.load_context(&sid).await?)?;
    b.delete_session(&sid).await?;
    eq("b's delete", a.load_context(&sid).await?.len(), 0)
}

/// 24 tasks insert at once, every fourth into a session that does not
/// exist: those fail `SessionNotFound` and leave nothing, the others all
/// succeed and are stored, in their order (a store that commits waiting
/// writes together must fail the bad ones alone).
pub async fn a_failing_write_among_concurrent_ones_fails_alone(fx: &Fixture) -> Result<()> {
    let sid = session(fx).await?;
    let handles: Vec<_> = (0..24)
        .map(|t| {
            let store = fx.store.clone();
            let target = if t % 4 == 3 { "no-such-session".to_owned() } else { sid.clone() };
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..5 {
                    let text = format!("t{t}-{i}");
                    let r = store.insert_message(&target, &Role::User, Some(&text), None, None, None).await;
                    out.push((t, text, r));
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut inserted: Vec<Vec<(i64, String)>> = Vec::new();
    for outcome in join_all(handles).await? {
        let mut ok = Vec::new();
        for (t, text, r) in outcome {
            if t % 4 == 3 {
                let e = r.err().with_context(|| format!("{text} into a missing session succeeded"))?;
                check(
                    &format!("{text}: SessionNotFound, got {e:#}"),
                    matches!(PersistenceError::of(&e), Some(PersistenceError::SessionNotFound(_))),
                )?;
            } else {
                ok.push((r.with_context(|| format!("{text} failed"))?, text));
            }
        }
        inserted.push(ok);
    }
    let all = fx.store.load_all_messages(&sid).await?;
    eq("count", all.len(), 18 * 5)?;
    check_accounted(&inserted, &positions(all))
}
