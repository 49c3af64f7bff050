//! Ceilings measured in the same run: the plain driver doing the same work
//! with nothing of ours in between (WORKLOADS.md).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use koda_persistence::sqlite::Synchronous;
use koda_persistence::{Message, Role};
use koda_persistence_api::backend::format_timestamp;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, params};

use crate::workloads::{Shape, shape};

/// W1 ceiling on SQLite: the same rows through one prepared `INSERT` per
/// message in autocommit, on a fresh file with the same pragmas, plus the
/// same completion `UPDATE` the workload makes after each assistant insert
/// (the work the store is asked to do, with nothing of ours in between).
///
/// The same pragmas include koda's `auto_vacuum = INCREMENTAL`, which every
/// file the store creates has: with it each new page also updates a
/// pointer-map page, 0.34 more WAL frames per message in this cycle.
pub fn sqlite_w1(dir: &Path, sync: Synchronous, n: usize) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("ceiling-{}.db", uuid::Uuid::now_v7().simple()));
    let conn = Connection::open(&path)?;
    // Before WAL mode writes the first page, as the store does.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    set_synchronous(&conn, sync)?;
    conn.execute_batch(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
            role TEXT NOT NULL, content TEXT, tool_calls TEXT, tool_call_id TEXT,
            prompt_tokens INTEGER, completion_tokens INTEGER, cache_read_tokens INTEGER,
            cache_creation_tokens INTEGER, thinking_tokens INTEGER, created_ms INTEGER);
         CREATE INDEX m_session ON messages(session_id, id);",
    )?;
    let mut stmt = conn.prepare(
        "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id, prompt_tokens,
             completion_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    conn.execute_batch("ALTER TABLE messages ADD COLUMN completed_ms INTEGER")?;
    let mut complete = conn.prepare("UPDATE messages SET completed_ms = ?2 WHERE id = ?1")?;
    let shapes: Vec<Shape> = (0..n).map(shape).collect();
    let started = Instant::now();
    for (i, s) in shapes.into_iter().enumerate() {
        let u = s.counters();
        let Shape { role, content, tool_calls, tool_call_id, .. } = s;
        stmt.execute(params![
            "ceiling-session",
            role.as_str(),
            content,
            tool_calls,
            tool_call_id,
            u.map(|u| u[0]),
            u.map(|u| u[1]),
            u.map(|u| u[2]),
            u.map(|u| u[3]),
            u.map(|u| u[4]),
            i as i64
        ])?;
        if role == Role::Assistant {
            complete.execute(params![conn.last_insert_rowid(), i as i64])?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(complete);
    drop(stmt);
    drop(conn);
    let _ = std::fs::remove_file(&path);
    Ok(n as f64 / secs)
}

/// W2 ceiling on SQLite: one prepared `SELECT` of the same columns from the
/// store's own file, decoded into the same `Message`.
pub fn sqlite_w2(path: &Path, session: &str, calls: usize) -> Result<Vec<Duration>> {
    let conn = Connection::open(path)?;
    let mut stmt = conn.prepare(
        "SELECT id, session_id, role, content, full_content, tool_calls, tool_call_id, prompt_tokens,
                completion_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens, created_ms
         FROM messages WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord",
    )?;
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let rows = stmt.query_map([session], |r| {
            let role: String = r.get(2)?;
            Ok(Message {
                id: r.get(0)?,
                session_id: r.get(1)?,
                role: role.parse().unwrap_or(Role::User),
                content: r.get(3)?,
                full_content: r.get(4)?,
                tool_calls: r.get(5)?,
                tool_call_id: r.get(6)?,
                prompt_tokens: r.get(7)?,
                completion_tokens: r.get(8)?,
                cache_read_tokens: r.get(9)?,
                cache_creation_tokens: r.get(10)?,
                thinking_tokens: r.get(11)?,
                created_at: Some(format_timestamp(r.get(12)?)),
            })
        })?;
        let msgs: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
        std::hint::black_box(&msgs);
        times.push(started.elapsed());
    }
    Ok(times)
}

/// The ceilings' connection: made from the store's own URL as the store
/// makes its connections, so both sides speak over the same wire (with
/// the default `sslmode=prefer`, TLS whenever the server offers it).
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    koda_persistence::admin::connect_raw(url).await
}

/// W1 ceiling on Postgres: one connection, one prepared `INSERT` per message
/// into an equivalent table in its own schema, plus the completion `UPDATE`
/// after each assistant insert.
pub async fn postgres_w1(url: &str, n: usize) -> Result<f64> {
    let client = pg_connect(url).await?;
    let schema = crate::targets::scratch_schema("ceiling");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".messages (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 session_id TEXT NOT NULL, ord BIGINT NOT NULL, role TEXT NOT NULL, content BYTEA,
                 tool_calls BYTEA, tool_call_id BYTEA, prompt_tokens BIGINT, completion_tokens BIGINT,
                 cache_read_tokens BIGINT, cache_creation_tokens BIGINT, thinking_tokens BIGINT,
                 created_ms BIGINT NOT NULL, completed_ms BIGINT);
             CREATE INDEX ON \"{schema}\".messages (session_id, ord);"
        ))
        .await?;
    let complete = client.prepare(&format!("UPDATE \"{schema}\".messages SET completed_ms = $2 WHERE id = $1")).await?;
    let stmt = client
        .prepare(&format!(
            "INSERT INTO \"{schema}\".messages (session_id, ord, role, content, tool_calls, tool_call_id,
                 prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id"
        ))
        .await?;
    let shapes: Vec<Shape> = (0..n).map(shape).collect();
    let started = Instant::now();
    for (i, s) in shapes.into_iter().enumerate() {
        let u = s.counters();
        let Shape { role, content, tool_calls, tool_call_id, .. } = s;
        let row = client
            .query_one(
                &stmt,
                &[
                    &"ceiling-session",
                    &(i as i64),
                    &role.as_str(),
                    &content.as_bytes(),
                    &tool_calls.as_deref().map(str::as_bytes),
                    &tool_call_id.as_deref().map(str::as_bytes),
                    &u.map(|u| u[0]),
                    &u.map(|u| u[1]),
                    &u.map(|u| u[2]),
                    &u.map(|u| u[3]),
                    &u.map(|u| u[4]),
                    &(i as i64),
                ],
            )
            .await?;
        if role == Role::Assistant {
            let id: i64 = row.get(0);
            client.execute(&complete, &[&id, &(i as i64)]).await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await?;
    Ok(n as f64 / secs)
}

/// W2 ceiling on Postgres: one prepared `SELECT` of the same columns from the
/// store's own schema, decoded into the same `Message`.
pub async fn postgres_w2(url: &str, schema: &str, session: &str, calls: usize) -> Result<Vec<Duration>> {
    let client = pg_connect(url).await?;
    let stmt = client
        .prepare(&format!(
            "SELECT id, session_id, role::TEXT, content, full_content, tool_calls, tool_call_id, prompt_tokens,
                    completion_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens, created_ms
             FROM \"{schema}\".messages WHERE session_id = $1 AND compacted_ms IS NULL ORDER BY ord"
        ))
        .await?;
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8(b).unwrap_or_default());
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let rows = client.query(&stmt, &[&session]).await?;
        let msgs: Vec<Message> = rows
            .into_iter()
            .map(|r| Message {
                id: r.get(0),
                session_id: r.get(1),
                role: r.get::<_, String>(2).parse().unwrap_or(Role::User),
                content: text(r.get(3)),
                full_content: text(r.get(4)),
                tool_calls: text(r.get(5)),
                tool_call_id: text(r.get(6)),
                prompt_tokens: r.get(7),
                completion_tokens: r.get(8),
                cache_read_tokens: r.get(9),
                cache_creation_tokens: r.get(10),
                thinking_tokens: r.get(11),
                created_at: Some(format_timestamp(r.get(12))),
            })
            .collect();
        std::hint::black_box(&msgs);
        times.push(started.elapsed());
    }
    Ok(times)
}

/// W6 ceiling on PostgreSQL: the round trip of the one statement the store
/// sends for `session_token_usage` (the session's kept usage rows),
/// prepared once on one connection, rows decoded. A loopback round trip
/// is the floor of any server read.
pub async fn postgres_w6(url: &str, schema: &str, session: &str, calls: usize) -> Result<Vec<Duration>> {
    let client = pg_connect(url).await?;
    let stmt = client
        .prepare(&format!(
            "SELECT agent, LEAST(prompt, 9223372036854775807)::BIGINT,
                    LEAST(completion, 9223372036854775807)::BIGINT,
                    LEAST(cache_read, 9223372036854775807)::BIGINT,
                    LEAST(cache_creation, 9223372036854775807)::BIGINT,
                    LEAST(thinking, 9223372036854775807)::BIGINT, calls
             FROM \"{schema}\".session_usage WHERE session_id = $1 AND calls > 0"
        ))
        .await?;
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let rows = client.query(&stmt, &[&session]).await?;
        let sums: Vec<(Vec<u8>, [i64; 6])> =
            rows.iter().map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)])).collect();
        std::hint::black_box(&sums);
        times.push(started.elapsed());
    }
    Ok(times)
}

/// W7 ceiling on SQLite: the statements the store's compaction runs (read
/// the active positions, stamp every compacted row as koda's own schema
/// requires, shift the kept tail by two, insert the summary and the hint,
/// bump the session), raw on one rusqlite connection to the store's own
/// file with the store's `synchronous`, in one `BEGIN IMMEDIATE`
/// transaction, on a session of the same shape. Its commit does not
/// checkpoint (the store's checkpointer thread does that off the write
/// path), so this is the statements' own cost.
pub fn sqlite_w7(path: &Path, sync: Synchronous, session: &str, keep: usize) -> Result<Duration> {
    let mut conn = Connection::open(path)?;
    set_synchronous(&conn, sync)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // The schema is read, the session's pages are not: the store's writer
    // comes to W7's compaction as cold for that session (its last writes,
    // this twin's 2,000 messages, filled its page cache with other pages),
    // and reads them from the OS page cache as this connection will.
    let _: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    let started = Instant::now();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let active: Vec<i64> = tx
        .prepare("SELECT ord FROM messages WHERE session_id = ?1 AND compacted_ms IS NULL ORDER BY ord")?
        .query_map([session], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let marked = active.len().saturating_sub(keep);
    let first = active.get(marked).copied().unwrap_or(0);
    let now = 1_795_669_624_123i64;
    let stamp = "2026-11-26 05:07:04";
    // As the store: triggers off for the stamp (the one it fires, for an
    // older koda's compaction, does nothing here but costs a program per row).
    tx.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    tx.execute(
        "UPDATE messages SET compacted_ms = ?2, compacted_at = ?3
         WHERE session_id = ?1 AND compacted_ms IS NULL AND ord < ?4",
        rusqlite::params![session, now, stamp, first],
    )?;
    tx.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
    tx.execute(
        "UPDATE messages SET ord = ord + 2 WHERE session_id = ?1 AND ord >= ?2",
        rusqlite::params![session, first],
    )?;
    let mut insert = tx.prepare(
        "INSERT INTO messages (session_id, role, content, created_at, created_ms, ord)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    insert.execute(rusqlite::params![session, "system", "summary", stamp, now, first])?;
    insert.execute(rusqlite::params![session, "assistant", "hint", stamp, now, first + 1])?;
    drop(insert);
    tx.execute(
        "UPDATE sessions SET message_count = message_count + 2, version = version + 1 WHERE id = ?1",
        [session],
    )?;
    tx.commit()?;
    Ok(started.elapsed())
}

/// The store's `synchronous` on a plain connection.
fn set_synchronous(conn: &Connection, sync: Synchronous) -> Result<()> {
    conn.pragma_update(None, "synchronous", if sync == Synchronous::Full { "FULL" } else { "NORMAL" })?;
    Ok(())
}
