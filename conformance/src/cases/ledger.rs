//! Usage history that survives pruning (the Ledger capability): every
//! insert and import counts on its day, nothing lowers it, a fork and a
//! restore add nothing, and every grouping matches a reference computed
//! here from what was written.

use std::path::Path;

use anyhow::Result;
use koda_persistence_api::ledger::{DAY_MS, GroupKey, LedgerSums, UsageBy, UsageQuery, UsageRow, day_of, finish};
use koda_persistence_api::{MAX_TIMESTAMP_MS, MessageRecord, Role, SessionRecord};

use super::{ROOT, check, eq, expect_err, is_invalid, usage};
use crate::{Fixture, START_MS};

/// One message as the ledger must count it.
struct Spent {
    ms: i64,
    root: Option<&'static str>,
    agent: &'static str,
    sid: String,
    counters: [Option<i64>; 5],
}

/// The answer a store must give for `by` over every day, from `spent`.
fn reference(spent: &[Spent], by: UsageBy, deleted: &[&str]) -> Vec<UsageRow> {
    finish(
        by,
        spent
            .iter()
            .map(|s| {
                let key = match by {
                    UsageBy::Day | UsageBy::Week | UsageBy::Month => GroupKey::Day(day_of(s.ms)),
                    UsageBy::Root => GroupKey::Text(s.root.unwrap_or_default().to_owned()),
                    UsageBy::Agent => GroupKey::Text(s.agent.to_owned()),
                    UsageBy::Session => GroupKey::Text(s.sid.clone()),
                };
                let gone = by == UsageBy::Session && deleted.contains(&s.sid.as_str());
                (key, LedgerSums::of_message(s.counters), gone)
            })
            .collect::<Vec<_>>(),
    )
}

fn all(by: UsageBy) -> UsageQuery<'static> {
    UsageQuery { since_ms: 0, until_ms: MAX_TIMESTAMP_MS, by, project_root: None, agent: None }
}

async fn every_grouping(fx: &Fixture, spent: &[Spent], deleted: &[&str], what: &str) -> Result<()> {
    for by in UsageBy::ALL {
        eq(&format!("{what}, by {}", by.as_str()), fx.store.usage(&all(by)).await?, reference(spent, by, deleted))?;
    }
    Ok(())
}

fn counters(u: &koda_persistence_api::TokenUsage) -> [Option<i64>; 5] {
    [
        Some(u.prompt_tokens),
        Some(u.completion_tokens),
        Some(u.cache_read_tokens),
        Some(u.cache_creation_tokens),
        Some(u.thinking_tokens),
    ]
}

/// Inserts across three days (a user line, answers with usage, another
/// agent, 10⁹-token counts) land on their days with exact sums, in every
/// grouping; compaction, purge, a cleared content, a delete and the
/// trash's purge leave every answer as it was, the deleted session's rows
/// marked.
pub async fn every_insert_counts_on_its_day_and_nothing_lowers_it(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let mut spent = Vec::new();
    let a = s.create_session("main", Path::new(ROOT)).await?;
    let b = s.create_session("main", Path::new("/elsewhere")).await?;
    s.insert_message(&a, &Role::User, Some("hello"), None, None, None).await?;
    spent.push(Spent { ms: START_MS, root: Some(ROOT), agent: "main", sid: a.clone(), counters: [None; 5] });
    let u1 = usage(100, 20, 5, 3, 7);
    let answer = s.insert_message(&a, &Role::Assistant, Some("hi"), None, None, Some(&u1)).await?;
    spent.push(Spent { ms: START_MS, root: Some(ROOT), agent: "main", sid: a.clone(), counters: counters(&u1) });
    fx.clock.advance(DAY_MS);
    let u2 = usage(10, 1, 0, 0, 0);
    s.insert_message_with_agent(&a, &Role::Assistant, Some("sub"), None, None, Some(&u2), Some("explore")).await?;
    spent.push(Spent {
        ms: START_MS + DAY_MS,
        root: Some(ROOT),
        agent: "explore",
        sid: a.clone(),
        counters: counters(&u2),
    });
    fx.clock.advance(DAY_MS);
    let big = usage(1_000_000_000, 1_000_000_000, 1_000_000_000, 1_000_000_000, 1_000_000_000);
    for _ in 0..3 {
        s.insert_message(&b, &Role::Assistant, Some("big"), None, None, Some(&big)).await?;
        spent.push(Spent {
            ms: START_MS + 2 * DAY_MS,
            root: Some("/elsewhere"),
            agent: "main",
            sid: b.clone(),
            counters: counters(&big),
        });
    }
    every_grouping(fx, &spent, &[], "after the inserts").await?;
    let by_day = s.usage(&all(UsageBy::Day)).await?;
    eq("three days", by_day.len(), 3)?;
    eq("10⁹-token counts sum exactly", by_day[2].sums.prompt_tokens, 3_000_000_000)?;
    eq("messages counted", by_day.iter().map(|r| r.sums.messages).sum::<i64>(), 6)?;

    s.compact_session(&a, "summary", 0).await?;
    s.clear_message_content(&[answer], "[cleared]").await?;
    fx.clock.advance(400 * DAY_MS);
    s.purge_compacted(0).await?;
    every_grouping(fx, &spent, &[], "after compaction, a cleared content and a purge").await?;
    check("deleted", super::trash::delete_for_good(fx, &b).await?)?;
    check("gone from the listing", s.export_session(&b).await?.is_none())?;
    every_grouping(fx, &spent, &[b.as_str()], "after a delete and the trash's purge").await?;
    Ok(())
}

/// An import adds its messages on their own days; a fork adds nothing,
/// and neither does a session coming back from the trash.
pub async fn an_import_adds_on_its_days_a_fork_and_a_restore_add_nothing(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let record = SessionRecord {
        project_root: Some(ROOT.to_owned()),
        ..super::transfer::session_record("imported-spend", START_MS - 10 * DAY_MS)
    };
    s.import_session(&record).await?;
    let u = usage(7, 8, 9, 10, 11);
    let messages = vec![
        MessageRecord {
            prompt_tokens: Some(7),
            completion_tokens: Some(8),
            cache_read_tokens: Some(9),
            cache_creation_tokens: Some(10),
            thinking_tokens: Some(11),
            agent: Some("planner".into()),
            ..MessageRecord::bare(1, Role::Assistant, START_MS - 10 * DAY_MS)
        },
        MessageRecord { content: Some("later".into()), ..MessageRecord::bare(2, Role::User, START_MS - 3 * DAY_MS) },
    ];
    s.import_messages(&record.id, &messages, false).await?;
    let spent = vec![
        Spent {
            ms: START_MS - 10 * DAY_MS,
            root: Some(ROOT),
            agent: "planner",
            sid: record.id.clone(),
            counters: counters(&u),
        },
        Spent {
            ms: START_MS - 3 * DAY_MS,
            root: Some(ROOT),
            agent: "main",
            sid: record.id.clone(),
            counters: [None; 5],
        },
    ];
    every_grouping(fx, &spent, &[], "after the import").await?;
    let fork = s.fork_session(&record.id, None).await?;
    check("the fork holds the messages", s.load_all_messages(&fork).await?.len() == 2)?;
    every_grouping(fx, &spent, &[], "after a fork").await?;
    if fx.store.capabilities().keep_deleted_days > 0 {
        check("deleted", s.delete_session(&record.id).await?)?;
        every_grouping(fx, &spent, &[record.id.as_str()], "in the trash").await?;
        s.restore_session(&record.id).await?;
        every_grouping(fx, &spent, &[], "restored").await?;
    }
    Ok(())
}

/// The days counted are those overlapping `since..until`; root and agent
/// narrow; a range that is backwards or out of bounds is `InvalidInput`;
/// an empty range has no row.
pub async fn usage_narrows_by_days_root_and_agent(fx: &Fixture) -> Result<()> {
    let s = &fx.store;
    let a = s.create_session("main", Path::new(ROOT)).await?;
    let b = s.create_session("main", Path::new("/other")).await?;
    let u = usage(1, 2, 3, 4, 5);
    s.insert_message_with_agent(&a, &Role::Assistant, Some("x"), None, None, Some(&u), Some("coder")).await?;
    s.insert_message(&b, &Role::Assistant, Some("y"), None, None, Some(&u)).await?;
    fx.clock.advance(DAY_MS);
    s.insert_message(&a, &Role::Assistant, Some("z"), None, None, Some(&u)).await?;
    let day0 = day_of(START_MS) * DAY_MS;
    let q = |since_ms, until_ms, root: Option<&'static str>, agent: Option<&'static str>| UsageQuery {
        since_ms,
        until_ms,
        by: UsageBy::Session,
        project_root: root.map(Path::new),
        agent,
    };
    let count = |rows: Vec<UsageRow>| rows.iter().map(|r| r.sums.messages).sum::<i64>();
    eq("the first day only", count(s.usage(&q(day0, day0 + DAY_MS, None, None)).await?), 2)?;
    eq("an instant inside the first day", count(s.usage(&q(START_MS, START_MS + 1, None, None)).await?), 2)?;
    eq("both days", count(s.usage(&q(day0, day0 + DAY_MS + 1, None, None)).await?), 3)?;
    eq("root", count(s.usage(&q(0, MAX_TIMESTAMP_MS, Some(ROOT), None)).await?), 2)?;
    eq("another root", count(s.usage(&q(0, MAX_TIMESTAMP_MS, Some("/other"), None)).await?), 1)?;
    eq("no such root", s.usage(&q(0, MAX_TIMESTAMP_MS, Some("/nowhere"), None)).await?, vec![])?;
    eq("agent", count(s.usage(&q(0, MAX_TIMESTAMP_MS, None, Some("coder"))).await?), 1)?;
    eq("main counts messages without an agent", count(s.usage(&q(0, MAX_TIMESTAMP_MS, None, Some("main"))).await?), 2)?;
    eq("an empty range", s.usage(&q(START_MS, START_MS, None, None)).await?, vec![])?;
    expect_err("backwards", s.usage(&q(START_MS, START_MS - 1, None, None)).await, is_invalid)?;
    expect_err("negative", s.usage(&q(-1, START_MS, None, None)).await, is_invalid)?;
    expect_err("past the last instant", s.usage(&q(0, MAX_TIMESTAMP_MS + 1, None, None)).await, is_invalid)?;
    let by_agent = s.usage(&UsageQuery { by: UsageBy::Agent, ..q(0, MAX_TIMESTAMP_MS, None, None) }).await?;
    eq("agents bytewise", by_agent.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), vec!["coder", "main"])?;
    let by_root = s.usage(&UsageQuery { by: UsageBy::Root, ..q(0, MAX_TIMESTAMP_MS, None, None) }).await?;
    eq("roots bytewise", by_root.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), vec!["/other", ROOT])?;
    eq(
        "a session's sums",
        by_root[1].sums,
        LedgerSums {
            prompt_tokens: 2,
            completion_tokens: 4,
            cache_read_tokens: 6,
            cache_creation_tokens: 8,
            thinking_tokens: 10,
            messages: 2,
        },
    )?;
    Ok(())
}
