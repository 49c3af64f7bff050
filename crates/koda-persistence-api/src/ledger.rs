//! The [`Ledger`] capability: usage history that survives pruning.
//!
//! A store keeps, per UTC day × session × agent (with the session's
//! project root), the sums of the five token counters and the number of
//! messages, updated in the same atomic step as every insert. Unlike
//! [`session_token_usage`](crate::Persistence::session_token_usage), which
//! counts the messages still stored, the ledger only grows: last month's
//! spend stays when last month's history is compacted, purged or deleted.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use chrono::{Datelike, NaiveDate};

use crate::error::PersistenceError;
use crate::usage::DEFAULT_AGENT;

/// Milliseconds in a UTC day: a ledger day is `created_ms / DAY_MS`.
pub const DAY_MS: i64 = 86_400_000;

/// The ledger day of an instant (days since 1970-01-01, UTC).
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The ledger day of a calendar date written `YYYY-MM-DD` (UTC).
///
/// # Errors
/// `InvalidInput` for anything else, or a date outside
/// 1970-01-01..=9999-12-31.
pub fn day_of_date(date: &str) -> Result<i64, PersistenceError> {
    let bad = || PersistenceError::InvalidInput(format!("date {date:?}: write it YYYY-MM-DD, 1970-01-01 or later"));
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let day = i64::from(d.num_days_from_ce()) - 719_163;
    if day < 0 || day > day_of(crate::clock::MAX_TIMESTAMP_MS) {
        return Err(bad());
    }
    Ok(day)
}

/// The sums of a ledger group: the five counters (a message without one
/// adds 0) and the number of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LedgerSums {
    /// Input tokens.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Cached input tokens.
    pub cache_read_tokens: i64,
    /// Tokens written to cache.
    pub cache_creation_tokens: i64,
    /// Reasoning tokens.
    pub thinking_tokens: i64,
    /// Messages inserted.
    pub messages: i64,
}

impl LedgerSums {
    /// What one message with these counters adds.
    pub fn of_message(counters: [Option<i64>; 5]) -> Self {
        let c = counters.map(|c| c.unwrap_or(0));
        Self {
            prompt_tokens: c[0],
            completion_tokens: c[1],
            cache_read_tokens: c[2],
            cache_creation_tokens: c[3],
            thinking_tokens: c[4],
            messages: 1,
        }
    }

    /// Adds `other` (each sum saturating at `i64::MAX`).
    pub fn add(&mut self, other: &LedgerSums) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(other.cache_read_tokens);
        self.cache_creation_tokens = self.cache_creation_tokens.saturating_add(other.cache_creation_tokens);
        self.thinking_tokens = self.thinking_tokens.saturating_add(other.thinking_tokens);
        self.messages = self.messages.saturating_add(other.messages);
    }

    /// The six sums in field order.
    pub fn as_array(&self) -> [i64; 6] {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            self.thinking_tokens,
            self.messages,
        ]
    }

    /// The sums of an array in field order.
    pub fn from_array(a: [i64; 6]) -> Self {
        Self {
            prompt_tokens: a[0],
            completion_tokens: a[1],
            cache_read_tokens: a[2],
            cache_creation_tokens: a[3],
            thinking_tokens: a[4],
            messages: a[5],
        }
    }

    /// Whether every sum is at least `other`'s.
    pub fn covers(&self, other: &LedgerSums) -> bool {
        self.as_array().iter().zip(other.as_array()).all(|(a, b)| *a >= b)
    }
}

/// What a usage query groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageBy {
    /// UTC day, `2026-12-07`.
    Day,
    /// ISO week, `2026-W49`.
    Week,
    /// Month, `2026-12`.
    Month,
    /// Project root (the session's, exact bytes; an older koda's root-less
    /// sessions under `""`).
    Root,
    /// Agent (`main` for messages without one).
    Agent,
    /// Session id.
    Session,
}

impl UsageBy {
    /// Every grouping, in the order `--by` lists them.
    pub const ALL: [UsageBy; 6] =
        [UsageBy::Day, UsageBy::Week, UsageBy::Month, UsageBy::Root, UsageBy::Agent, UsageBy::Session];

    /// Its name: `day`, `week`, `month`, `root`, `agent` or `session`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageBy::Day => "day",
            UsageBy::Week => "week",
            UsageBy::Month => "month",
            UsageBy::Root => "root",
            UsageBy::Agent => "agent",
            UsageBy::Session => "session",
        }
    }

    /// The grouping named `s`.
    ///
    /// # Errors
    /// `InvalidInput` naming the choices.
    pub fn parse(s: &str) -> Result<Self, PersistenceError> {
        Self::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| {
            PersistenceError::InvalidInput(format!(
                "group usage by {s:?}: one of day, week, month, root, agent, session"
            ))
        })
    }

    /// Whether it groups by time (a backend groups by day and
    /// [`finish`] folds days into weeks and months).
    pub fn is_time(self) -> bool {
        matches!(self, UsageBy::Day | UsageBy::Week | UsageBy::Month)
    }
}

/// A usage query: the ledger days that overlap `since_ms..until_ms` (an
/// instant range, end excluded), grouped by `by`, optionally only one
/// project root (exact bytes) and one agent.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery<'a> {
    /// Start, epoch milliseconds: its day is the first counted.
    pub since_ms: i64,
    /// End, epoch milliseconds, excluded: the day holding `until_ms - 1`
    /// is the last counted.
    pub until_ms: i64,
    /// The grouping.
    pub by: UsageBy,
    /// Only sessions of this root.
    pub project_root: Option<&'a Path>,
    /// Only this agent (`main` also counts messages without one).
    pub agent: Option<&'a str>,
}

impl UsageQuery<'_> {
    /// The ledger days counted: `first..end` (end excluded; empty when
    /// the instant range is).
    pub fn days(&self) -> (i64, i64) {
        let first = day_of(self.since_ms);
        if self.until_ms <= self.since_ms {
            return (first, first);
        }
        (first, day_of(self.until_ms - 1) + 1)
    }

    /// The root filter as text.
    ///
    /// # Errors
    /// `InvalidInput` for a root that is not UTF-8.
    pub fn root(&self) -> Result<Option<&str>, PersistenceError> {
        self.project_root.map(crate::args::root_to_str).transpose()
    }
}

/// A [`UsageQuery`] that owns its root and agent, for a backend that
/// answers on another thread.
#[derive(Debug, Clone)]
pub struct OwnedUsageQuery {
    since_ms: i64,
    until_ms: i64,
    by: UsageBy,
    project_root: Option<std::path::PathBuf>,
    agent: Option<String>,
}

impl OwnedUsageQuery {
    /// The query it holds.
    pub fn query(&self) -> UsageQuery<'_> {
        UsageQuery {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            by: self.by,
            project_root: self.project_root.as_deref(),
            agent: self.agent.as_deref(),
        }
    }
}

impl UsageQuery<'_> {
    /// The query with its root and agent owned.
    pub fn to_owned_query(&self) -> OwnedUsageQuery {
        OwnedUsageQuery {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            by: self.by,
            project_root: self.project_root.map(Path::to_path_buf),
            agent: self.agent.map(str::to_owned),
        }
    }
}

/// One group of a usage answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// The group: a day, week or month as [`UsageBy`] shows it, a root, an
    /// agent or a session id.
    pub key: String,
    /// Its sums.
    pub sums: LedgerSums,
    /// Grouped by session: the session is deleted (its ledger rows stay).
    pub deleted: bool,
}

/// A group key as a backend reads it: a ledger day, or text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    /// A ledger day (grouping by time).
    Day(i64),
    /// A root, agent or session id.
    Text(String),
}

/// The answer from what a backend grouped: by day for a time grouping
/// (folded here into weeks or months), by the text key otherwise.
/// Rows of the same key add up; time keys come oldest first (newest
/// last), text keys bytewise.
pub fn finish(by: UsageBy, rows: impl IntoIterator<Item = (GroupKey, LedgerSums, bool)>) -> Vec<UsageRow> {
    let mut out: BTreeMap<(i64, String), (LedgerSums, bool)> = BTreeMap::new();
    for (key, sums, deleted) in rows {
        let k = match key {
            GroupKey::Day(d) => time_key(by, d),
            GroupKey::Text(t) => (0, t),
        };
        let slot = out.entry(k).or_insert((LedgerSums::default(), deleted));
        slot.0.add(&sums);
        slot.1 &= deleted;
    }
    out.into_iter().map(|((_, key), (sums, deleted))| UsageRow { key, sums, deleted }).collect()
}

/// The sort position and label of day `d` under a time grouping.
fn time_key(by: UsageBy, d: i64) -> (i64, String) {
    let date =
        NaiveDate::from_num_days_from_ce_opt(i32::try_from(d + 719_163).unwrap_or(i32::MAX)).unwrap_or(NaiveDate::MIN);
    match by {
        UsageBy::Week => {
            let w = date.iso_week();
            (i64::from(w.year()) * 100 + i64::from(w.week()), format!("{}-W{:02}", w.year(), w.week()))
        }
        UsageBy::Month => {
            (i64::from(date.year()) * 100 + i64::from(date.month()), format!("{}-{:02}", date.year(), date.month()))
        }
        _ => (d, date.format("%Y-%m-%d").to_string()),
    }
}

/// The agent a ledger row counts a message under.
pub fn ledger_agent(agent: Option<&str>) -> &str {
    agent.unwrap_or(DEFAULT_AGENT)
}

/// Usage history that survives pruning.
///
/// Rules, checked by the conformance suite on every backend:
///
/// - **Every insert counts** in the same atomic step as the insert: koda's
///   calls and imports add each message's five counters (0 when unset)
///   and one message to the row of its day (UTC, from its creation time),
///   its session, its agent (`main` when none) and its session's root.
///   An import adds the imported messages on their own days: a copied
///   history carries its spend.
/// - **Nothing lowers it**: compaction, `purge_compacted`,
///   `clear_message_content`, a delete, the trash and its purge leave the
///   ledger as it was; a deleted session's rows stay (grouped by session,
///   marked `deleted`). A fork adds nothing (its copies were not spent
///   again), and neither does a restore from the trash.
/// - **A migration** that adds the ledger to an existing store fills it
///   from the messages the store still holds (what was purged before is
///   gone) and logs that it did.
/// - [`usage`](Self::usage) sums the rows of the days that overlap
///   `since_ms..until_ms`, filtered by root (exact bytes) and agent,
///   grouped as asked ([`finish`]: time keys oldest first, others
///   bytewise); the same answer on every backend. Sums saturate at
///   `i64::MAX`. `since_ms > until_ms`, or a time outside
///   [`MIN_TIMESTAMP_MS`](crate::MIN_TIMESTAMP_MS)..=[`MAX_TIMESTAMP_MS`](crate::MAX_TIMESTAMP_MS),
///   is `InvalidInput`.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Usage between two instants, grouped.
    async fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>>;
}
