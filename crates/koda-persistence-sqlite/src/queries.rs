//! One synchronous function per trait method, run on a worker thread's
//! connection. Writers get a `BEGIN IMMEDIATE` transaction (see
//! [`crate::worker`]); readers run single statements, each its own snapshot.
//! All SQL is parameterised.

use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, UsageTally, check_kept, format_timestamp, id_taken, purge_cutoff,
    usage_by_agent,
};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, MessageRecord, MetadataRecord, PersistenceError,
    Role, SessionInfo, SessionRecord, SessionUsage, StoreHealth,
};
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::rows::{self, CONTENT, MESSAGE_COLUMNS, get};
use koda_persistence_api::bodies::{
    BodyField, BodyHash, BodyStats, body_hash, body_name, is_body, pack,
};

/// Stores `value`, field `field` of a `role` message, as a body when it
/// is one and the file stores bodies once (`blobs`); returns what goes in
/// the field's column and in its `_body` twin. A new body starts with
/// `refs = 0`: the insert or update that refers to it, in the same
/// savepoint, counts it (see `schema::V4_BODIES`).
pub(crate) fn put_body<'v>(
    tx: &Connection,
    blobs: bool,
    role: &Role,
    field: BodyField,
    value: Option<&'v str>,
) -> Result<(Option<&'v str>, Option<BodyHash>)> {
    let Some(text) = value else {
        return Ok((None, None));
    };
    if !blobs || !is_body(role, field, text) {
        return Ok((Some(text), None));
    }
    let hash = body_hash(text);
    let known = tx
        .prepare_cached("SELECT 1 FROM kp_bodies WHERE hash = ?1")?
        .exists(params![&hash[..]])?;
    if !known {
        let data = pack(text)?;
        tx.prepare_cached("INSERT INTO kp_bodies (hash, data, len, refs) VALUES (?1, ?2, ?3, 0)")?
            .execute(params![
                &hash[..],
                data,
                i64::try_from(text.len()).unwrap_or(i64::MAX)
            ])?;
    }
    Ok((None, Some(hash)))
}

/// The three body fields of a message, through [`put_body`]: `(column,
/// body)` for content, full_content and tool_calls.
type Fields<'v> = [(Option<&'v str>, Option<BodyHash>); 3];

fn put_bodies<'v>(
    tx: &Transaction<'_>,
    blobs: bool,
    role: &Role,
    content: Option<&'v str>,
    full_content: Option<&'v str>,
    tool_calls: Option<&'v str>,
) -> Result<Fields<'v>> {
    Ok([
        put_body(tx, blobs, role, BodyField::Content, content)?,
        put_body(tx, blobs, role, BodyField::FullContent, full_content)?,
        put_body(tx, blobs, role, BodyField::ToolCalls, tool_calls)?,
    ])
}

fn hash_param(h: &Option<BodyHash>) -> Option<&[u8]> {
    h.as_ref().map(|h| &h[..])
}

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

fn not_found(session_id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(session_id.to_owned()).into()
}

pub(crate) fn session_exists(tx: &Transaction<'_>, session_id: &str) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
        .exists(params![session_id])?)
}

fn require_session(tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    if session_exists(tx, session_id)? {
        Ok(())
    } else {
        Err(not_found(session_id))
    }
}

pub(crate) fn create_session(
    tx: &Transaction<'_>,
    id: &str,
    agent: &str,
    root: &str,
    now: i64,
) -> Result<()> {
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
    tx.prepare_cached("DELETE FROM session_metadata WHERE session_id = ?1")?
        .execute(params![session_id])?;
    tx.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?
        .execute(params![session_id])?;
    tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
        .execute(params![session_id])?;
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
    let n = tx
        .prepare_cached(sql)?
        .execute(params![session_id, value])?;
    if n == 0 {
        return Err(not_found(session_id));
    }
    Ok(())
}

pub(crate) fn get_session_mode(conn: &Connection, session_id: &str) -> Result<Option<String>> {
    let mode = conn
        .prepare_cached("SELECT mode FROM sessions WHERE id = ?1")?
        .query_row(params![session_id], |r| {
            Ok(get::<Option<String>>(r, 0, "mode"))
        })
        .optional()?;
    Ok(mode.transpose()?.flatten())
}

pub(crate) fn last_accessed(conn: &Connection, session_id: &str) -> Result<Option<i64>> {
    let at = conn
        .prepare_cached("SELECT last_accessed_ms FROM sessions WHERE id = ?1")?
        .query_row(params![session_id], |r| {
            Ok(get::<Option<i64>>(r, 0, "last_accessed_ms"))
        })
        .optional()?;
    Ok(at.transpose()?.flatten())
}

/// The session's change counter, or `None` for an unknown session.
pub(crate) fn session_version(conn: &Connection, session_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT version FROM sessions WHERE id = ?1")?
        .query_row(params![session_id], |r| r.get(0))
        .optional()?)
}

/// Appends the message; returns its id and the session's new version.
pub(crate) fn insert_message(
    tx: &Transaction<'_>,
    m: &NewMessage,
    now: i64,
    blobs: bool,
) -> Result<(i64, i64)> {
    let stamp = koda_text(now);
    let tokens = m
        .usage
        .map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens));
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
    let [content, full, calls] = put_bodies(
        tx,
        blobs,
        &m.role,
        m.content.as_deref(),
        m.full_content.as_deref(),
        m.tool_calls.as_deref(),
    )?;
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

fn collect_messages(
    conn: &Connection,
    sql: &str,
    session_id: &str,
) -> Result<Vec<(Message, bool)>> {
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
    Ok(collect_messages(conn, &sql, session_id)?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
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
        .query_row(params![session_id, role.as_str()], |r| {
            Ok(rows::text_at(r, 0, "content"))
        })
        .optional()?;
    Ok(text.transpose()?.flatten().unwrap_or_default())
}

pub(crate) fn has_pending_tool_calls(conn: &Connection, session_id: &str) -> Result<bool> {
    let last = conn
        .prepare_cached(
            "SELECT role, tool_calls IS NOT NULL OR tool_calls_body IS NOT NULL FROM messages
             WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord DESC LIMIT 1",
        )?
        .query_row(params![session_id], |r| {
            Ok((get::<String>(r, 0, "role"), get::<bool>(r, 1, "tool_calls")))
        })
        .optional()?;
    match last {
        Some((role, calls)) => Ok(Role::from_stored(&role?)? == Role::Assistant && calls?),
        None => Ok(false),
    }
}

/// Completes message `id`; returns its session and the session's new version.
pub(crate) fn mark_complete(tx: &Transaction<'_>, id: i64, now: i64) -> Result<(String, i64)> {
    let session: String = tx
        .prepare_cached(
            "UPDATE messages SET completed_ms = ?2, completed_at = ?3 WHERE id = ?1 RETURNING session_id",
        )?
        .query_row(params![id, now, koda_text(now)], |r| r.get(0))
        .optional()?
        .ok_or(PersistenceError::MessageNotFound(id))?;
    let version = bump(tx, &session)?;
    Ok((session, version))
}

/// Counts one more write to `session`'s messages; returns the new version.
fn bump(tx: &Transaction<'_>, session: &str) -> Result<i64> {
    Ok(tx
        .prepare_cached(
            "UPDATE sessions SET version = version + 1 WHERE id = ?1 RETURNING version",
        )?
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
            [
                get(row, 1, w)?,
                get(row, 2, w)?,
                get(row, 3, w)?,
                get(row, 4, w)?,
                get(row, 5, w)?,
            ],
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
pub(crate) fn usage_kept(
    conn: &Connection,
    session_id: &str,
) -> Result<Option<Vec<(String, SessionUsage)>>> {
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
            let _ = self
                .0
                .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true);
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
        let mut stmt = tx.prepare_cached(
            "SELECT ord FROM messages WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord",
        )?;
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
    let (summary, summary_body) =
        put_body(tx, blobs, &Role::System, BodyField::Content, Some(summary))?;
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
pub(crate) fn clear_content(
    tx: &Transaction<'_>,
    ids: &[i64],
    stub: &str,
    blobs: bool,
) -> Result<Vec<String>> {
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
            .query_row(
                params![
                    id,
                    tool.0,
                    other.0,
                    hash_param(&tool.1),
                    hash_param(&other.1)
                ],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            touched.insert(s);
        }
    }
    // A stub body no cleared message took (none of them was of its kind).
    for hash in [tool.1, other.1].iter().flatten() {
        tx.prepare_cached("DELETE FROM kp_bodies WHERE hash = ?1 AND refs <= 0")?
            .execute(params![&hash[..]])?;
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
    let mut touched: Vec<String> = stmt
        .query_map(params![days == 0, cutoff], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let n = touched.len();
    touched.sort();
    touched.dedup();
    Ok((n, touched))
}

pub(crate) fn get_metadata(
    conn: &Connection,
    session_id: &str,
    key: &str,
) -> Result<Option<String>> {
    let v = conn
        .prepare_cached("SELECT value FROM session_metadata WHERE session_id = ?1 AND key = ?2")?
        .query_row(params![session_id, key], |r| {
            Ok(get::<String>(r, 0, "metadata value"))
        })
        .optional()?;
    Ok(v.transpose()?)
}

pub(crate) fn set_metadata(
    tx: &Transaction<'_>,
    session_id: &str,
    key: &str,
    value: &str,
    now: i64,
) -> Result<()> {
    require_session(tx, session_id)?;
    tx.prepare_cached(
        "INSERT INTO session_metadata (session_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )?
    .execute(params![session_id, key, value, koda_text(now)])?;
    Ok(())
}

/// Every session id, oldest first.
pub(crate) fn export_session_ids(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM sessions ORDER BY created_ms, seq")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn export_session(conn: &Connection, session_id: &str) -> Result<Option<SessionRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT agent_name, project_root, created_ms, last_accessed_ms, title, mode
         FROM sessions WHERE id = ?1",
    )?;
    let mut rows = stmt.query(params![session_id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let what = |c: &str| format!("{c} of session {session_id:?}");
    Ok(Some(SessionRecord {
        id: session_id.to_owned(),
        agent_name: get(r, 0, &what("agent_name"))?,
        project_root: get(r, 1, &what("project_root"))?,
        created_ms: get::<Option<i64>>(r, 2, &what("created_ms"))?.unwrap_or(0),
        last_accessed_ms: get(r, 3, &what("last_accessed_ms"))?,
        title: get(r, 4, &what("title"))?,
        mode: get(r, 5, &what("mode"))?,
    }))
}

pub(crate) fn export_messages(conn: &Connection, session_id: &str) -> Result<Vec<MessageRecord>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS}, agent_name, compacted_ms FROM messages
         WHERE session_id = ?1 ORDER BY ord"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![session_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::record(row)?);
    }
    Ok(out)
}

pub(crate) fn export_metadata(conn: &Connection, session_id: &str) -> Result<Vec<MetadataRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM session_metadata WHERE session_id = ?1 ORDER BY CAST(key AS BLOB)",
    )?;
    let mut rows = stmt.query(params![session_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(MetadataRecord {
            key: get(r, 0, "metadata key")?,
            value: get(r, 1, "metadata value")?,
        });
    }
    Ok(out)
}

/// `PRAGMA integrity_check` (every page, every index against its table),
/// and every session's counters and positions against its messages.
pub(crate) fn health(conn: &Connection, key: Option<&crate::cipher::Key>) -> Result<StoreHealth> {
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut problems = Vec::new();
    // On a connection of its own: FTS5 keeps an index's structure cached
    // per connection, and a pooled reader's `integrity_check` was seen to
    // check the search index against a stale one ("malformed inverted
    // index for FTS5 table main.kp_search" in about half the runs of one
    // state-machine sequence, where a fresh connection on the same file,
    // and every search, found it whole). A private in-memory database
    // has one connection: it checks there.
    let own = match conn.path().filter(|p| !p.is_empty()) {
        Some(path) => {
            let fresh = crate::open::open_keyed(std::path::Path::new(path), key)?;
            fresh.busy_timeout(std::time::Duration::from_secs(5))?;
            Some(fresh)
        }
        None => None,
    };
    let checking = own.as_ref().unwrap_or(conn);
    let mut stmt = checking.prepare("PRAGMA integrity_check")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let line: String = get(r, 0, "integrity_check")?;
        if line != "ok" {
            problems.push(format!("integrity_check: {line}"));
        }
    }
    drop(rows);
    drop(stmt);
    drop(own);
    let mut stmt = conn.prepare_cached(
        "SELECT session_id, COUNT(*) FROM messages WHERE ord IS NULL GROUP BY session_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let sid: String = get(r, 0, "session id")?;
        let n: i64 = get(r, 1, "count")?;
        problems.push(format!("session {sid}: {n} messages without a position"));
    }
    problems.extend(usage_problems(conn)?);
    let (bodies, body_problems) = body_health(conn)?;
    problems.extend(body_problems);
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    // SQLCipher answers `page_size` as text (its `cipher_page_size`).
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| {
        Ok(match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(n) => n,
            rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            _ => 0,
        })
    })?;
    Ok(StoreHealth {
        schema_version,
        latest_schema_version: i64::try_from(crate::schema::SCHEMA_VERSION).unwrap_or(i64::MAX),
        problems,
        size_bytes: u64::try_from(pages.saturating_mul(page_size)).ok(),
        bodies,
    })
}

/// Bodies against the references to them, both ways: every reference
/// has its body, every body's `refs` is the number of fields pointing at
/// it (none is kept with no reference), and every body unpacks to the
/// text its address names. Reads every body once.
fn body_health(conn: &Connection) -> Result<(BodyStats, Vec<String>)> {
    let mut counted: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    // References from live messages and from the trash's (a whole scan:
    // `doctor` reads everything once).
    let mut stmt = conn.prepare(
        "SELECT h, COUNT(*) FROM (
             SELECT content_body AS h FROM messages WHERE content_body IS NOT NULL
             UNION ALL SELECT full_content_body FROM messages WHERE full_content_body IS NOT NULL
             UNION ALL SELECT tool_calls_body FROM messages WHERE tool_calls_body IS NOT NULL
             UNION ALL SELECT content_body FROM kp_trash_messages WHERE content_body IS NOT NULL
             UNION ALL SELECT full_content_body FROM kp_trash_messages
                 WHERE full_content_body IS NOT NULL
             UNION ALL SELECT tool_calls_body FROM kp_trash_messages
                 WHERE tool_calls_body IS NOT NULL)
         GROUP BY h",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = get(r, 0, "body reference")?;
        let n: i64 = get(r, 1, "count")?;
        counted.insert(hash, u64::try_from(n).unwrap_or(0));
    }
    let mut stats = BodyStats::default();
    let mut problems = Vec::new();
    let mut stmt = conn.prepare("SELECT hash, data, len, refs FROM kp_bodies")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = get(r, 0, "body hash")?;
        let data: Vec<u8> = get(r, 1, "body")?;
        let len: i64 = get(r, 2, "body length")?;
        let refs: i64 = get(r, 3, "body count")?;
        let name = body_name(&hash);
        let uses = counted.remove(&hash).unwrap_or(0);
        if u64::try_from(refs).ok() != Some(uses) {
            problems.push(format!(
                "body {name}: counts {refs} references, {uses} message fields use it"
            ));
        }
        match koda_persistence_api::bodies::unpack_checked(&data, &hash) {
            Ok(text) if i64::try_from(text.len()).ok() == Some(len) => {}
            Ok(text) => problems.push(format!(
                "body {name}: records {len} bytes, holds {}",
                text.len()
            )),
            Err(e) => problems.push(format!("body {name}: {}", e.reason())),
        }
        let len = u64::try_from(len).unwrap_or(0);
        let packed = u64::try_from(data.len()).unwrap_or(u64::MAX);
        stats.add_body(len, packed, uses);
    }
    for (hash, uses) in counted {
        problems.push(format!(
            "{uses} message fields refer to body {}, which is missing",
            body_name(&hash)
        ));
    }
    Ok((stats, problems))
}

/// Sessions whose kept usage (`kp_usage`) differs from what their messages
/// add up to. A sum kept as a REAL (past `i64::MAX`) is recounted by every
/// reader, so only its group's presence is compared.
fn usage_problems(conn: &Connection) -> Result<Vec<String>> {
    let mut counted = crate::schema::counted_usage(conn)?;
    let mut differ = std::collections::BTreeSet::new();
    let mut stmt = conn.prepare(
        "SELECT session_id, agent, prompt, completion, cache_read, cache_creation, thinking, calls
         FROM kp_usage",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let key: (String, String) = (get(row, 0, "session id")?, get(row, 1, "usage agent")?);
        let want = counted.remove(&key);
        let mut same = want.is_some();
        for i in 0..6 {
            match (row.get_ref(i + 2)?, want) {
                (ValueRef::Integer(v), Some(w)) => same &= i128::from(v) == w[i],
                (ValueRef::Real(_), _) => {}
                _ => same = false,
            }
        }
        if !same {
            differ.insert(key.0);
        }
    }
    differ.extend(counted.into_keys().map(|(sid, _)| sid));
    Ok(differ
        .into_iter()
        .map(|sid| {
            format!("session {sid}: the usage kept by agent differs from its messages' counters")
        })
        .collect())
}

pub(crate) fn message_id_range(conn: &Connection) -> Result<Option<(i64, i64)>> {
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT MIN(id), MAX(id) FROM messages")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(lo.zip(hi))
}

/// The last message id handed out: AUTOINCREMENT's record, or the largest
/// id (a file an older koda created may lack the record).
fn id_position(tx: &Transaction<'_>) -> Result<i64> {
    Ok(tx
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),
                        COALESCE((SELECT MAX(id) FROM messages), 0))",
        )?
        .query_row([], |r| r.get(0))?)
}

pub(crate) fn claim_ids(tx: &Transaction<'_>, first: i64, last: i64) -> Result<bool> {
    if id_position(tx)? >= first {
        return Ok(false);
    }
    let moved = tx
        .prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'messages'")?
        .execute(params![last])?;
    if moved == 0 {
        tx.prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?1)")?
            .execute(params![last])?;
    }
    Ok(true)
}

pub(crate) fn import_session(tx: &Transaction<'_>, s: &SessionRecord) -> Result<bool> {
    if session_exists(tx, &s.id)? {
        return Ok(false);
    }
    crate::trash::refuse_trashed(tx, &s.id)?;
    tx.prepare_cached(
        "INSERT INTO sessions (id, created_at, agent_name, project_root, last_accessed_at, title,
                               mode, created_ms, last_accessed_ms, seq, message_count, total_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                 (SELECT MAX(COALESCE((SELECT MAX(seq) FROM sessions), 0),
                         COALESCE((SELECT MAX(seq) FROM kp_trash_sessions), 0)) + 1), 0, 0)",
    )?
    .execute(params![
        s.id,
        koda_text(s.created_ms),
        s.agent_name,
        s.project_root,
        s.last_accessed_ms.map(koda_text),
        s.title,
        s.mode,
        s.created_ms,
        s.last_accessed_ms,
    ])?;
    Ok(true)
}

pub(crate) fn import_messages(
    tx: &Transaction<'_>,
    session_id: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
    blobs: bool,
) -> Result<Vec<i64>> {
    let tokens = messages.iter().fold(0i64, |sum, m| {
        sum.saturating_add(m.prompt_tokens.unwrap_or(0))
            .saturating_add(m.completion_tokens.unwrap_or(0))
    });
    let count = i64::try_from(messages.len()).unwrap_or(i64::MAX);
    let touched = tx
        .prepare_cached(
            "UPDATE sessions SET message_count = message_count + ?2, version = version + 1,
                 total_tokens = MIN(total_tokens + ?3, 9223372036854775807)
             WHERE id = ?1",
        )?
        .execute(params![session_id, count, tokens])?;
    if touched == 0 {
        return Err(not_found(session_id));
    }
    let mut ord: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(ord), 0) FROM messages WHERE session_id = ?1")?
        .query_row(params![session_id], |r| r.get(0))?;
    if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        check_kept(&ids, id_position(tx)?)?;
    }
    let mut taken = tx.prepare_cached("SELECT 1 FROM messages WHERE id = ?1")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (id, session_id, role, content, full_content, tool_calls,
             tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens,
             cache_creation_tokens, thinking_tokens, agent_name, created_at, created_ms,
             completed_at, completed_ms, compacted_at, compacted_ms, ord,
             content_body, full_content_body, tool_calls_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22, ?23)",
    )?;
    let mut ids = Vec::with_capacity(messages.len());
    for m in messages {
        let id = if keep_ids {
            if taken.exists(params![m.id])? {
                return Err(id_taken(m.id).into());
            }
            Some(m.id)
        } else {
            None
        };
        ord += 1;
        let [content, full, calls] = put_bodies(
            tx,
            blobs,
            &m.role,
            m.content.as_deref(),
            m.full_content.as_deref(),
            m.tool_calls.as_deref(),
        )?;
        insert.execute(params![
            id,
            session_id,
            m.role.as_str(),
            content.0,
            full.0,
            calls.0,
            m.tool_call_id,
            m.prompt_tokens,
            m.completion_tokens,
            m.cache_read_tokens,
            m.cache_creation_tokens,
            m.thinking_tokens,
            m.agent,
            koda_text(m.created_ms),
            m.created_ms,
            m.completed_ms.map(koda_text),
            m.completed_ms,
            m.compacted_ms.map(koda_text),
            m.compacted_ms,
            ord,
            hash_param(&content.1),
            hash_param(&full.1),
            hash_param(&calls.1),
        ])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

pub(crate) fn import_metadata(
    tx: &Transaction<'_>,
    session_id: &str,
    entries: &[MetadataRecord],
    now: i64,
) -> Result<()> {
    require_session(tx, session_id)?;
    for e in entries {
        set_metadata(tx, session_id, &e.key, &e.value, now)?;
    }
    Ok(())
}

/// Forks `session_id` at `at` into a new session `new_id`, in the write's
/// one transaction: the export of the original, cut by
/// [`fork_len`](koda_persistence_api::fork::fork_len), imported as a new
/// session (bodies gain a reference each through the counting triggers).
pub(crate) fn fork(
    tx: &Transaction<'_>,
    session_id: &str,
    at: Option<i64>,
    new_id: &str,
    now: i64,
    blobs: bool,
) -> Result<String> {
    use koda_persistence_api::fork::{fork_len, fork_record};
    let original = export_session(tx, session_id)?.ok_or_else(|| not_found(session_id))?;
    let messages = export_messages(tx, session_id)?;
    let n = fork_len(&messages, at)?;
    if !import_session(tx, &fork_record(&original, new_id, now))? {
        return Err(PersistenceError::Conflict(format!("session id {new_id} is taken")).into());
    }
    import_messages(tx, new_id, &messages[..n], false, blobs)?;
    import_metadata(tx, new_id, &export_metadata(tx, session_id)?, now)?;
    Ok(new_id.to_owned())
}

#[cfg(test)]
mod tests {
    //! Every statement in this file, planned against the real schema: none
    //! may walk the whole `messages` table (reads stay O(rows returned)).

    use rusqlite::Connection;

    use crate::rows::MESSAGE_COLUMNS;

    /// The SQL text of every `prepare_cached("…")` and `format!("…")` call
    /// in this file's non-test code.
    fn statements() -> Vec<String> {
        let source = include_str!("queries.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut out = Vec::new();
        for opener in ["prepare_cached(", "format!("] {
            for (at, _) in code.match_indices(opener) {
                let rest = code[at + opener.len()..].trim_start();
                let Some(body) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = body.find('"') else { continue };
                let sql = &body[..end];
                if ["SELECT", "INSERT", "UPDATE", "DELETE"]
                    .iter()
                    .any(|k| sql.starts_with(k))
                {
                    out.push(
                        sql.replace("{MESSAGE_COLUMNS}", MESSAGE_COLUMNS)
                            .replace("{CONTENT}", crate::rows::CONTENT),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn no_statement_scans_all_messages() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        crate::schema::migrations(crate::schema::Origin::New)
            .to_latest(&mut conn)
            .expect("schema");
        let stmts = statements();
        assert!(stmts.len() >= 30, "found only {} statements", stmts.len());
        for sql in stmts {
            let mut plan = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect(&sql);
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
                        !line.starts_with("SCAN messages")
                            || line.contains("kp_messages_recent_user"),
                        "recent user messages must walk the user-message index: {lines:?}"
                    );
                }
            }
        }
    }
}
