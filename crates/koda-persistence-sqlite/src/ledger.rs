//! Usage history that survives pruning: the Ledger capability over
//! `kp_ledger` (schema 8, kept by a trigger on every insert into
//! `messages`), and the writes that must not count: a fork, a restore
//! from the trash and a compaction's summary and hint.

use anyhow::Result;
use koda_persistence_api::ledger::{GroupKey, Ledger, LedgerSums, UsageBy, UsageQuery, UsageRow, finish};
use rusqlite::types::Value;
use rusqlite::{Connection, Row, Transaction, params};

use crate::SqliteStore;

/// The six sum columns.
const SUMS: [&str; 6] = ["prompt", "completion", "cache_read", "cache_creation", "thinking", "messages"];

/// The select list that sums column `c` exactly without overflowing
/// SQLite's 64-bit `SUM`: its high and low 32 bits summed apart, and
/// whether any cell turned REAL (a cell past `i64::MAX`, see schema 8).
fn exact_sum(c: &str) -> String {
    format!(
        "SUM(CASE WHEN typeof({c}) = 'integer' THEN {c} >> 32 END), \
         SUM(CASE WHEN typeof({c}) = 'integer' THEN {c} & 4294967295 END), MAX(typeof({c}) = 'real')"
    )
}

/// The six sums from the columns [`exact_sum`] selected from `from` on,
/// saturated at `i64::MAX`.
fn sums_at(row: &Row<'_>, from: usize) -> rusqlite::Result<LedgerSums> {
    let mut a = [0; 6];
    for (i, slot) in a.iter_mut().enumerate() {
        let at = from + 3 * i;
        let high: Option<i64> = row.get(at)?;
        let low: Option<i64> = row.get(at + 1)?;
        let real: Option<bool> = row.get(at + 2)?;
        let exact = (i128::from(high.unwrap_or(0)) << 32) + i128::from(low.unwrap_or(0));
        *slot = if real == Some(true) { i64::MAX } else { i64::try_from(exact).unwrap_or(i64::MAX) };
    }
    Ok(LedgerSums::from_array(a))
}

/// A fork's copies were not spent again: its new session's rows, which
/// the trigger counted, go in the fork's own transaction.
pub(crate) fn uncount_fork(tx: &Transaction<'_>, new_id: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM kp_ledger WHERE session_id = ?1")?.execute(params![new_id])?;
    Ok(())
}

/// One session's ledger rows as stored.
type Saved = Vec<(i64, String, Option<String>, [Value; 6])>;

/// Runs `f` (a restore from the trash, which inserts the session's
/// messages again, or a compaction, which inserts its summary and hint)
/// and puts the session's ledger rows back as they were.
pub(crate) fn keeping_ledger<R>(tx: &Transaction<'_>, session_id: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let saved: Saved = {
        let mut stmt = tx.prepare_cached(
            "SELECT day, agent, root, prompt, completion, cache_read, cache_creation, thinking, messages
             FROM kp_ledger WHERE session_id = ?1",
        )?;
        let rows = stmt.query_map(params![session_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?]))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let out = f()?;
    tx.prepare_cached("DELETE FROM kp_ledger WHERE session_id = ?1")?.execute(params![session_id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO kp_ledger (session_id, day, agent, root, prompt, completion, cache_read, cache_creation,
                                thinking, messages)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (day, agent, root, [a, b, c, d, e, n]) in saved {
        insert.execute(params![session_id, day, agent, root, a, b, c, d, e, n])?;
    }
    Ok(out)
}

/// Below this, SQLite's `TOTAL` (a double) of non-negative integers is
/// exact.
const EXACT_IN_DOUBLE: f64 = 9_007_199_254_740_992.0;

fn usage(conn: &Connection, q: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
    let (first, end) = q.days();
    let root = q.root()?;
    let (group, deleted) = match q.by {
        UsageBy::Day | UsageBy::Week | UsageBy::Month => ("day", "0"),
        UsageBy::Root => ("COALESCE(root, '')", "0"),
        UsageBy::Agent => ("agent", "0"),
        UsageBy::Session => ("session_id", "NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = l.session_id)"),
    };
    let key = |r: &Row<'_>| -> rusqlite::Result<GroupKey> {
        Ok(if q.by.is_time() { GroupKey::Day(r.get(0)?) } else { GroupKey::Text(r.get(0)?) })
    };
    // `group`, `deleted` and `sums` are chosen here, never input. First
    // with TOTAL (a double: exact below 2^53, and fast); only when a sum
    // reaches that, again with the exact sums.
    let sql = |sums: &str| {
        format!(
            "SELECT {group}, {deleted}, {sums}
             FROM kp_ledger l
             WHERE day >= ?1 AND day < ?2 AND (?3 IS NULL OR root = ?3) AND (?4 IS NULL OR agent = ?4)
             GROUP BY {group}"
        )
    };
    let totals: Vec<String> = SUMS.iter().map(|c| format!("TOTAL({c})")).collect();
    let mut stmt = conn.prepare_cached(&sql(&totals.join(", ")))?;
    let mut rows = Vec::new();
    let mut inexact = false;
    let mut query = stmt.query(params![first, end, root, q.agent])?;
    while let Some(r) = query.next()? {
        let mut a = [0; 6];
        for (i, slot) in a.iter_mut().enumerate() {
            let t: f64 = r.get(2 + i)?;
            inexact |= t >= EXACT_IN_DOUBLE;
            #[allow(clippy::cast_possible_truncation)]
            let n = t as i64;
            *slot = n;
        }
        rows.push((key(r)?, LedgerSums::from_array(a), r.get::<_, bool>(1)?));
    }
    drop(query);
    if inexact {
        let exact: Vec<String> = SUMS.iter().map(|c| exact_sum(c)).collect();
        let mut stmt = conn.prepare_cached(&sql(&exact.join(", ")))?;
        let found = stmt
            .query_map(params![first, end, root, q.agent], |r| Ok((key(r)?, sums_at(r, 2)?, r.get::<_, bool>(1)?)))?;
        rows = found.collect::<rusqlite::Result<_>>()?;
    }
    Ok(finish(q.by, rows))
}

#[async_trait::async_trait]
impl Ledger for SqliteStore {
    async fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
        let q = query.to_owned_query();
        self.read(move |conn| usage(conn, &q.query())).await
    }
}
