//! One synchronous function per trait method, run on a worker thread's
//! connection. Writers get a `BEGIN IMMEDIATE` transaction (see
//! [`crate::worker`]); readers run single statements, each its own snapshot.
//! All SQL is parameterised.

use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, UsageTally, format_timestamp, purge_cutoff, usage_by_agent,
};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, PersistenceError, Role, SessionInfo, SessionUsage,
};
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::bodies::hash_param;
use crate::bodies::put_bodies;
use crate::bodies::put_body;
use crate::rows::{self, CONTENT, MESSAGE_COLUMNS, get};
use koda_persistence_api::bodies::BodyField;

/// `ms` as koda's own text timestamp, `YYYY-MM-DD HH:MM:SS` UTC (what
/// SQLite's `CURRENT_TIMESTAMP` writes), for the columns an older koda
/// reads and compares as text (`created_at`, `last_accessed_at`,
/// `completed_at`, `compacted_at`, `updated_at`). The milliseconds the
/// contract needs live in the `*_ms` columns.
pub(crate) fn koda_text(ms: i64) -> String {
    let rfc = format_timestamp(ms); // 2026-11-26T05:07:04.123Z
    match (rfc.get(0..10), rfc.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => rfc,
    }
}

pub(crate) fn not_found(session_id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(session_id.to_owned()).into()
}

pub(crate) fn session_exists(tx: &Transaction<'_>, session_id: &str) -> Result<bool> {
    Ok(tx.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?.exists(params![session_id])?)
}

pub(crate) fn require_session(tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    if session_exists(tx, session_id)? { Ok(()) } else { Err(not_found(session_id)) }
}

pub(crate) fn create_session(tx: &Transaction<'_>, id: &str, agent: &str, root: &str, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO sessions (id, created_at, agent_name, project_root, created_ms, seq,
                               message_count, total_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, (SELECT MAX(COALESCE((SELECT MAX(seq) FROM sessions), 0),
                         COALESCE((SELECT MAX(seq) FROM kp_trash_sessions), 0)) + 1), 0, 0)",
    )?
    .execute(params![id, koda_text(now), agent, root, now])?;
    Ok(())
}

pub(crate) fn list_sessions(conn: &Connection, limit: i64, root: &str) -> Result<Vec<SessionInfo>> {
    let mut stmt = conn.prepare_cached(
        // Two index walks (the root's sessions, the legacy root-less ones),
        // each stopping after `limit`, merged: cost O(limit), not O(sessions).
        "SELECT id, agent_name, created_ms, message_count, total_tokens, title, mode FROM (
             SELECT * FROM (SELECT id, agent_name, created_ms, seq, message_count, total_tokens, title, mode
                 FROM sessions WHERE project_root = ?1 ORDER BY created_ms DESC, seq DESC LIMIT ?2)
             UNION ALL
             SELECT * FROM (SELECT id, agent_name, created_ms, seq, message_count, total_tokens, title, mode
                 FROM sessions WHERE project_root IS NULL ORDER BY created_ms DESC, seq DESC LIMIT ?2))
         ORDER BY created_ms DESC, seq DESC LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![root, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = get(row, 0, "session id")?;
        let what = |c: &str| format!("{c} of session {id:?}");
        let created: Option<i64> = get(row, 2, &what("created_ms"))?;
        out.push(SessionInfo {
            agent_name: get(row, 1, &what("agent_name"))?,
            created_at: format_timestamp(created.unwrap_or(0)),
            message_count: get(row, 3, &what("message_count"))?,
            total_tokens: get(row, 4, &what("total_tokens"))?,
            title: get(row, 5, &what("title"))?,
            mode: get(row, 6, &what("mode"))?,
            id,
        });
    }
    Ok(out)
}

pub(crate) fn delete_session(tx: &Transaction<'_>, session_id: &str) -> Result<bool> {
    if !session_exists(tx, session_id)? {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM session_metadata WHERE session_id = ?1")?.execute(params![session_id])?;
    tx.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?.execute(params![session_id])?;
    tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute(params![session_id])?;
    Ok(true)
}

/// `column` is `title` or `mode`, chosen by the caller, never input.
pub(crate) fn set_session_text(
    tx: &Transaction<'_>,
    column: &'static str,
    session_id: &str,
    value: &str,
) -> Result<()> {
    let sql = match column {
        "title" => "UPDATE sessions SET title = ?2 WHERE id = ?1",
        _ => "UPDATE sessions SET mode = ?2 WHERE id = ?1",
    };
    let n = tx.prepare_cached(sql)?.execute(params![session_id, value])?;
    if n == 0 {
        return Err(not_found(session_id));
    }
    Ok(())
}

/// One nullable column of a session's row (`None` also for an unknown
/// session). `sql` selects it by `id = ?1`; `column` names it in errors.
fn session_column<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &'static str,
    column: &str,
    session_id: &str,
) -> Result<Option<T>> {
    let value =
        conn.prepare_cached(sql)?.query_row(params![session_id], |r| Ok(get::<Option<T>>(r, 0, column))).optional()?;
    Ok(value.transpose()?.flatten())
}

pub(crate) fn get_session_mode(conn: &Connection, session_id: &str) -> Result<Option<String>> {
    session_column(conn, "SELECT mode FROM sessions WHERE id = ?1", "mode", session_id)
}

pub(crate) fn last_accessed(conn: &Connection, session_id: &str) -> Result<Option<i64>> {
    session_column(conn, "SELECT last_accessed_ms FROM sessions WHERE id = ?1", "last_accessed_ms", session_id)
}

/// The session's change counter, or `None` for an unknown session.
pub(crate) fn session_version(conn: &Connection, session_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT version FROM sessions WHERE id = ?1")?
        .query_row(params![session_id], |r| r.get(0))
        .optional()?)
}

/// Appends the message; returns its id and the session's new version.
pub(crate) fn insert_message(tx: &Transaction<'_>, m: &NewMessage, now: i64, blobs: bool) -> Result<(i64, i64)> {
    let stamp = koda_text(now);
    let tokens = m.usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens));
    // Touch the session first: it both proves the session exists and keeps
    // its counters and version in the same transaction as the row.
    let version: i64 = tx
        .prepare_cached(
            "UPDATE sessions SET last_accessed_ms = ?2, last_accessed_at = ?3,
                 message_count = message_count + 1, version = version + 1,
                 total_tokens = MIN(total_tokens + ?4, 9223372036854775807)
             WHERE id = ?1 RETURNING version",
        )?
        .query_row(params![m.session_id, now, stamp, tokens], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found(&m.session_id))?;
    let u = m.usage;
    let [content, full, calls] =
        put_bodies(tx, blobs, &m.role, m.content.as_deref(), m.full_content.as_deref(), m.tool_calls.as_deref())?;
    tx.prepare_cached(
        "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id,
             prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
             thinking_tokens, agent_name, full_content, created_at, created_ms, ord,
             content_body, full_content_body, tool_calls_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
             (SELECT COALESCE(MAX(ord), 0) + 1 FROM messages WHERE session_id = ?1),
             ?15, ?16, ?17)",
    )?
    .execute(params![
        m.session_id,
        m.role.as_str(),
        content.0,
        calls.0,
        m.tool_call_id,
        u.map(|u| u.prompt_tokens),
        u.map(|u| u.completion_tokens),
        u.map(|u| u.cache_read_tokens),
        u.map(|u| u.cache_creation_tokens),
        u.map(|u| u.thinking_tokens),
        m.agent,
        full.0,
        stamp,
        now,
        hash_param(&content.1),
        hash_param(&full.1),
        hash_param(&calls.1),
    ])?;
    Ok((tx.last_insert_rowid(), version))
}

fn collect_messages(conn: &Connection, sql: &str, session_id: &str) -> Result<Vec<(Message, bool)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![session_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::message(row)?);
    }
    Ok(out)
}

pub(crate) fn load_all(conn: &Connection, session_id: &str) -> Result<Vec<Message>> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 ORDER BY ord");
    Ok(collect_messages(conn, &sql, session_id)?.into_iter().map(|(m, _)| m).collect())
}

pub(crate) fn load_active(conn: &Connection, session_id: &str) -> Result<Vec<ContextRow>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord"
    );
    Ok(collect_messages(conn, &sql, session_id)?
        .into_iter()
        .map(|(message, complete)| ContextRow { message, complete })
        .collect())
}

pub(crate) fn recent_user_messages(conn: &Connection, limit: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONTENT} FROM messages
         WHERE role = 'user' AND (content_body IS NOT NULL OR content <> '')
         ORDER BY id DESC LIMIT ?1"
    ))?;
    let mut rows = stmt.query(params![limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.extend(rows::text_at(row, 0, "content of a user message")?);
    }
    Ok(out)
}

pub(crate) fn last_content(conn: &Connection, session_id: &str, role: Role) -> Result<String> {
    let text = conn
        .prepare_cached(&format!(
            "SELECT {CONTENT} FROM messages
             WHERE session_id = ?1 AND role = ?2
               AND (content IS NOT NULL OR content_body IS NOT NULL)
             ORDER BY ord DESC LIMIT 1"
        ))?
        .query_row(params![session_id, role.as_str()], |r| Ok(rows::text_at(r, 0, "content")))
        .optional()?;
    Ok(text.transpose()?.flatten().unwrap_or_default())
}

pub(crate) fn has_pending_tool_calls(conn: &Connection, session_id: &str) -> Result<bool> {
    let last = conn
        .prepare_cached(
            "SELECT role, tool_calls IS NOT NULL OR tool_calls_body IS NOT NULL FROM messages
             WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord DESC LIMIT 1",
        )?
        .query_row(params![session_id], |r| Ok((get::<String>(r, 0, "role"), get::<bool>(r, 1, "tool_calls"))))
        .optional()?;
    match last {
        Some((role, calls)) => Ok(Role::from_stored(&role?)? == Role::Assistant && calls?),
        None => Ok(false),
    }
}

/// Completes message `id`; returns its session and the session's new version.
pub(crate) fn mark_complete(tx: &Transaction<'_>, id: i64, now: i64) -> Result<(String, i64)> {
    let session: String = tx
        .prepare_cached("UPDATE messages SET completed_ms = ?2, completed_at = ?3 WHERE id = ?1 RETURNING session_id")?
        .query_row(params![id, now, koda_text(now)], |r| r.get(0))
        .optional()?
        .ok_or(PersistenceError::MessageNotFound(id))?;
    let version = bump(tx, &session)?;
    Ok((session, version))
}

/// Counts one more write to `session`'s messages; returns the new version.
fn bump(tx: &Transaction<'_>, session: &str) -> Result<i64> {
    Ok(tx
        .prepare_cached("UPDATE sessions SET version = version + 1 WHERE id = ?1 RETURNING version")?
        .query_row(params![session], |r| r.get(0))?)
}

/// One counted message's agent and five counters.
pub(crate) type UsageRow = (Option<String>, [Option<i64>; 5]);

/// Usage rows of a session: `(agent, five counters)` for counted messages.
pub(crate) fn usage_rows(conn: &Connection, session_id: &str) -> Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT agent_name, prompt_tokens, completion_tokens, cache_read_tokens,
                cache_creation_tokens, thinking_tokens
         FROM messages INDEXED BY kp_messages_session_ord
         WHERE session_id = ?1 AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)",
    )?;
    let mut rows = stmt.query(params![session_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let w = "token usage";
        out.push((
            get(row, 0, "agent_name")?,
            [get(row, 1, w)?, get(row, 2, w)?, get(row, 3, w)?, get(row, 4, w)?, get(row, 5, w)?],
        ));
    }
    Ok(out)
}

/// Usage by agent of a session's rows (grouping, order and sums are the
/// API crate's).
pub(crate) fn usage_groups(rows: &[UsageRow]) -> Vec<(String, SessionUsage)> {
    usage_by_agent(rows.iter().map(|(agent, c)| (agent.as_deref(), *c)))
}

/// Usage by agent as `kp_usage` keeps it (one row per agent), or `None`
/// when a sum there passed `i64::MAX` (stored as a REAL, inexact): then the
/// caller recounts the rows.
pub(crate) fn usage_kept(conn: &Connection, session_id: &str) -> Result<Option<Vec<(String, SessionUsage)>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT agent, prompt, completion, cache_read, cache_creation, thinking, calls
         FROM kp_usage WHERE session_id = ?1",
    )?;
    let mut rows = stmt.query(params![session_id])?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let mut sums = [0i128; 6];
        for (i, sum) in sums.iter_mut().enumerate() {
            match row.get_ref(i + 1)? {
                ValueRef::Integer(v) => *sum = i128::from(v),
                ValueRef::Real(_) => return Ok(None),
                other => {
                    return Err(PersistenceError::Corrupt(format!(
                        "kept usage of session {session_id:?} holds a {}",
                        other.data_type()
                    ))
                    .into());
                }
            }
        }
        entries.push((get::<String>(row, 0, "usage agent")?, sums));
    }
    Ok(Some(UsageTally::from_entries(entries).groups()))
}

/// Runs `f` with the connection's triggers off, then turns them on again
/// (also when `f` failed).
///
/// Only for a statement that sets `compacted_ms` with `compacted_at`: the
/// one trigger such an update fires, `kp_messages_foreign_compact`, derives
/// `compacted_ms` and bumps the session's version for an older koda's
/// compaction, and its `WHEN` is false for this store's own (the caller
/// bumps the version itself). Firing it still costs a trigger program per
/// row: 7 of the 13 ms of stamping 2,000 rows (sqlite3 shell, measured).
/// Switching triggers (`SQLITE_DBCONFIG_ENABLE_TRIGGER`) expires the
/// connection's prepared statements, which SQLite prepares again on their
/// next use: a cost per compaction, not per write. A guard turns them on
/// again however `f` ends, also by a panic (the writer thread catches it
/// and goes on with the same connection); switching a flag of a valid
/// connection cannot fail.
fn without_triggers<R>(conn: &Connection, f: impl FnOnce() -> rusqlite::Result<R>) -> Result<R> {
    /// Turns triggers on again when dropped.
    struct OnAgain<'c>(&'c Connection);
    impl Drop for OnAgain<'_> {
        fn drop(&mut self) {
            let _ = self.0.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true);
        }
    }
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    let _on_again = OnAgain(conn);
    Ok(f()?)
}

pub(crate) fn compact(
    tx: &Transaction<'_>,
    session_id: &str,
    summary: &str,
    keep: usize,
    now: i64,
    blobs: bool,
) -> Result<usize> {
    require_session(tx, session_id)?;
    let active: Vec<i64> = {
        let mut stmt =
            tx.prepare_cached("SELECT ord FROM messages WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord")?;
        let rows = stmt.query_map(params![session_id], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let marked = active.len().saturating_sub(keep);
    if marked == 0 {
        return Ok(0);
    }
    let stamp = koda_text(now);
    // Where the summary and hint go: the first preserved message's slot
    // (shifting the tail by two), or after the last message.
    let (first_preserved, summary_ord) = match active.get(marked) {
        Some(&ord) => (Some(ord), ord),
        None => {
            let max: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(ord), 0) FROM messages WHERE session_id = ?1")?
                .query_row(params![session_id], |r| r.get(0))?;
            (None, max + 1)
        }
    };
    without_triggers(tx, || {
        tx.prepare_cached(
            "UPDATE messages SET compacted_ms = ?2, compacted_at = ?3
             WHERE session_id = ?1 AND compacted_ms IS NULL AND (?4 IS NULL OR ord < ?4)",
        )?
        .execute(params![session_id, now, stamp, first_preserved])
    })?;
    if let Some(p) = first_preserved {
        tx.prepare_cached("UPDATE messages SET ord = ord + 2 WHERE session_id = ?1 AND ord >= ?2")?
            .execute(params![session_id, p])?;
    }
    let (summary, summary_body) = put_body(tx, blobs, &Role::System, BodyField::Content, Some(summary))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (session_id, role, content, created_at, created_ms, completed_at,
                               completed_ms, ord, content_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    insert.execute(params![
        session_id,
        Role::System.as_str(),
        summary,
        stamp,
        now,
        None::<String>,
        None::<i64>,
        summary_ord,
        hash_param(&summary_body),
    ])?;
    insert.execute(params![
        session_id,
        Role::Assistant.as_str(),
        COMPACTION_HINT,
        stamp,
        now,
        stamp,
        now,
        summary_ord + 1,
        None::<&[u8]>,
    ])?;
    tx.prepare_cached("UPDATE sessions SET message_count = message_count + 2, version = version + 1 WHERE id = ?1")?
        .execute(params![session_id])?;
    Ok(marked)
}

/// Sets the content of each listed message (a trigger counts the change on
/// its session); returns the sessions touched.
///
/// A stub that is a body (a tool message's stub from [`TOOL_BODY_MIN`]
/// bytes, any from [`BODY_THRESHOLD`]) is stored once like any body; the
/// old content's body is released by the `kp_bodies_changed` trigger.
///
/// [`TOOL_BODY_MIN`]: koda_persistence_api::bodies::TOOL_BODY_MIN
/// [`BODY_THRESHOLD`]: koda_persistence_api::bodies::BODY_THRESHOLD
pub(crate) fn clear_content(tx: &Transaction<'_>, ids: &[i64], stub: &str, blobs: bool) -> Result<Vec<String>> {
    let mut touched = std::collections::BTreeSet::new();
    // What the stub is as a tool message's content and as any other's.
    let tool = put_body(tx, blobs, &Role::Tool, BodyField::Content, Some(stub))?;
    let other = put_body(tx, blobs, &Role::User, BodyField::Content, Some(stub))?;
    let mut stmt = tx.prepare_cached(
        "UPDATE messages SET
             content = CASE WHEN role = 'tool' THEN ?2 ELSE ?3 END,
             content_body = CASE WHEN role = 'tool' THEN ?4 ELSE ?5 END
         WHERE id = ?1 RETURNING session_id",
    )?;
    for id in ids {
        if let Some(s) = stmt
            .query_row(params![id, tool.0, other.0, hash_param(&tool.1), hash_param(&other.1)], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            touched.insert(s);
        }
    }
    // A stub body no cleared message took (none of them was of its kind).
    for hash in [tool.1, other.1].iter().flatten() {
        tx.prepare_cached("DELETE FROM kp_bodies WHERE hash = ?1 AND refs <= 0")?.execute(params![&hash[..]])?;
    }
    Ok(touched.into_iter().collect())
}

pub(crate) fn compacted_stats(conn: &Connection) -> Result<CompactedStats> {
    let row = conn
        .prepare_cached(
            "SELECT COUNT(*), COUNT(DISTINCT session_id),
                    TOTAL(COALESCE(length(CAST(content AS BLOB)),
                                   (SELECT b.len FROM kp_bodies b WHERE b.hash = content_body), 0)
                        + COALESCE(length(CAST(tool_calls AS BLOB)),
                                   (SELECT b.len FROM kp_bodies b WHERE b.hash = tool_calls_body), 0)),
                    MIN(compacted_ms)
             FROM messages INDEXED BY kp_messages_compacted WHERE compacted_ms IS NOT NULL",
        )?
        .query_row([], |r| {
            Ok((
                get::<i64>(r, 0, "count"),
                get::<i64>(r, 1, "sessions"),
                get::<f64>(r, 2, "size"),
                get::<Option<i64>>(r, 3, "oldest"),
            ))
        })?;
    // Byte totals are below 2^53 for any file SQLite can hold, so TOTAL is exact.
    #[allow(clippy::cast_possible_truncation)]
    let size = row.2?.min(i64::MAX as f64) as i64;
    Ok(CompactedStats {
        message_count: row.0?,
        session_count: row.1?,
        size_bytes: size,
        oldest: row.3?.map(format_timestamp),
    })
}

/// Deletes old compacted messages; returns how many and the sessions touched.
pub(crate) fn purge(tx: &Transaction<'_>, days: u32, now: i64) -> Result<(usize, Vec<String>)> {
    // `?1` set: every compacted message; else those compacted before `?2`.
    let cutoff = purge_cutoff(now, days);
    let mut stmt = tx.prepare_cached(
        "DELETE FROM messages WHERE compacted_ms IS NOT NULL AND (?1 OR compacted_ms < ?2)
         RETURNING session_id",
    )?;
    let mut touched: Vec<String> =
        stmt.query_map(params![days == 0, cutoff], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let n = touched.len();
    touched.sort();
    touched.dedup();
    Ok((n, touched))
}

pub(crate) fn get_metadata(conn: &Connection, session_id: &str, key: &str) -> Result<Option<String>> {
    let v = conn
        .prepare_cached("SELECT value FROM session_metadata WHERE session_id = ?1 AND key = ?2")?
        .query_row(params![session_id, key], |r| Ok(get::<String>(r, 0, "metadata value")))
        .optional()?;
    Ok(v.transpose()?)
}

pub(crate) fn set_metadata(tx: &Transaction<'_>, session_id: &str, key: &str, value: &str, now: i64) -> Result<()> {
    require_session(tx, session_id)?;
    tx.prepare_cached(
        "INSERT INTO session_metadata (session_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )?
    .execute(params![session_id, key, value, koda_text(now)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Every statement in this file, planned against the real schema: none
    //! may walk the whole `messages` table (reads stay O(rows returned)).

    use rusqlite::Connection;

    use crate::rows::MESSAGE_COLUMNS;

    /// The SQL text of every `prepare_cached("…")` and `format!("…")` call
    /// in the non-test code of this file and of the capability files
    /// beside it.
    fn statements() -> Vec<String> {
        let mut out = Vec::new();
        for source in [
            include_str!("queries.rs"),
            include_str!("transfer.rs"),
            include_str!("fork.rs"),
            include_str!("bodies.rs"),
            include_str!("health.rs"),
            include_str!("rewrite.rs"),
            include_str!("ledger.rs"),
        ] {
            let code = source.split("#[cfg(test)]").next().unwrap_or(source);
            statements_of(code, &mut out);
        }
        out
    }

    fn statements_of(code: &str, out: &mut Vec<String>) {
        for opener in ["prepare_cached(", "format!("] {
            for (at, _) in code.match_indices(opener) {
                let rest = code[at + opener.len()..].trim_start();
                let Some(body) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = body.find('"') else { continue };
                let sql = &body[..end];
                if ["SELECT", "INSERT", "UPDATE", "DELETE"].iter().any(|k| sql.starts_with(k)) {
                    out.push(
                        sql.replace("{MESSAGE_COLUMNS}", MESSAGE_COLUMNS)
                            .replace("{CONTENT}", crate::rows::CONTENT)
                            .replace("{column}", "content")
                            .replace("{group}", "day")
                            .replace("{deleted}", "0")
                            .replace("{sums}", "SUM(prompt)"),
                    );
                }
            }
        }
    }

    #[test]
    fn no_statement_scans_all_messages() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        crate::schema::migrations(crate::adopt::Origin::New).to_latest(&mut conn).expect("schema");
        let stmts = statements();
        assert!(stmts.len() >= 30, "found only {} statements", stmts.len());
        for sql in stmts {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect(&sql);
            // Unbound parameters plan as NULL, which is all a plan needs.
            let mut rows = plan.raw_query();
            let mut lines: Vec<String> = Vec::new();
            while let Some(row) = rows.next().expect("plan row") {
                lines.push(row.get(3).expect("detail"));
            }
            for line in &lines {
                let full_scan = line.starts_with("SCAN messages") && !line.contains("INDEX");
                assert!(!full_scan, "full scan of messages in {sql:?}: {lines:?}");
                if sql.contains("role = 'user'") {
                    assert!(
                        !line.starts_with("SCAN messages") || line.contains("kp_messages_recent_user"),
                        "recent user messages must walk the user-message index: {lines:?}"
                    );
                }
            }
        }
    }
}
