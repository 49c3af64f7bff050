//! The trash (schema 7): a deleted session's rows moved, unchanged, into
//! tables of the same shape that no read of this layer or of an older
//! koda looks at, and moved back on restore.
//!
//! - `kp_trash (session_id, deleted_ms)` says what is in the trash;
//!   `kp_trash_sessions`, `kp_trash_messages` and `kp_trash_metadata`
//!   hold the rows, every column as stored (ids, `ord`, `seq`, counters,
//!   text timestamps, body addresses).
//! - The live tables' triggers do the rest both ways: moving messages out
//!   subtracts their usage and marks them for the search index; moving
//!   them back adds both again. Session counters travel with the session
//!   row.
//! - Body references: each trashed message keeps its references. Moving
//!   out adds the session's references before the delete trigger
//!   subtracts them; moving back subtracts the trash's after the insert
//!   trigger added them; a purge subtracts them and drops bodies left at 0.
//! - A koda that adds a column to a live table later (a newer koda on the
//!   same file) gets it added to the trash table on the next move; rows
//!   move by column name.

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::Trash;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::trash::{DeletedSession, expired_cutoff, in_trash, live_session_exists, purge_at_ms};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::queries::session_exists;
use crate::rows::get;

/// The live tables and their trash twins.
const TABLES: [(&str, &str); 3] =
    [("sessions", "kp_trash_sessions"), ("messages", "kp_trash_messages"), ("session_metadata", "kp_trash_metadata")];

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `(name, declared type)` of each column of `table`.
fn columns(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((get(r, 1, "column name")?, get(r, 2, "column type")?));
    }
    Ok(out)
}

/// Adds to `trash` every column `live` has and it lacks, and returns the
/// columns both have, quoted and comma-separated.
fn shared_columns(tx: &Transaction<'_>, live: &str, trash: &str) -> Result<String> {
    let have = columns(tx, trash)?;
    let mut names = Vec::new();
    for (name, ty) in columns(tx, live)? {
        if !have.iter().any(|(n, _)| *n == name) {
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote(trash),
                quote(&name),
                // A declared type is a name (letters, digits, spaces and
                // parentheses); anything else is left out, as the type is
                // only an affinity.
                if ty.chars().all(|c| c.is_ascii_alphanumeric() || " (),".contains(c)) { ty.as_str() } else { "" }
            ))?;
        }
        names.push(quote(&name));
    }
    Ok(names.join(", "))
}

/// `kp_bodies.refs += sign × (references of the session's rows in
/// `table`)`: the trash's hold on its bodies, taken or given back.
fn hold_bodies(tx: &Transaction<'_>, table: &str, session_id: &str, sign: i64) -> Result<()> {
    let t = quote(table);
    tx.execute(
        &format!(
            "UPDATE kp_bodies SET refs = refs + ?2 * (
                 (SELECT COUNT(*) FROM {t} WHERE session_id = ?1 AND content_body = kp_bodies.hash)
               + (SELECT COUNT(*) FROM {t} WHERE session_id = ?1 AND full_content_body = kp_bodies.hash)
               + (SELECT COUNT(*) FROM {t} WHERE session_id = ?1 AND tool_calls_body = kp_bodies.hash))
             WHERE hash IN (SELECT content_body FROM {t} WHERE session_id = ?1
                            UNION SELECT full_content_body FROM {t} WHERE session_id = ?1
                            UNION SELECT tool_calls_body FROM {t} WHERE session_id = ?1)"
        ),
        params![session_id, sign],
    )?;
    Ok(())
}

/// Moves the session's rows from one set of tables to the other (`out`:
/// live to trash), the session row first into and last out of the live
/// tables, so the triggers of its messages find it.
fn move_rows(tx: &Transaction<'_>, session_id: &str, out: bool) -> Result<()> {
    let order: Vec<(&str, &str)> = if out { vec![TABLES[0], TABLES[2], TABLES[1]] } else { TABLES.to_vec() };
    for (live, trash) in order {
        let cols = shared_columns(tx, live, trash)?;
        let (from, to) = if out { (live, trash) } else { (trash, live) };
        let key = if live == "sessions" { "id" } else { "session_id" };
        tx.execute(
            &format!("INSERT INTO {} ({cols}) SELECT {cols} FROM {} WHERE {key} = ?1", quote(to), quote(from)),
            params![session_id],
        )?;
    }
    if out {
        hold_bodies(tx, "messages", session_id, 1)?;
    } else {
        hold_bodies(tx, "kp_trash_messages", session_id, -1)?;
    }
    let deletes: Vec<(&str, &str)> = if out {
        vec![("session_metadata", "session_id"), ("messages", "session_id"), ("sessions", "id")]
    } else {
        vec![("kp_trash_metadata", "session_id"), ("kp_trash_messages", "session_id"), ("kp_trash_sessions", "id")]
    };
    for (table, key) in deletes {
        tx.execute(&format!("DELETE FROM {} WHERE {key} = ?1", quote(table)), params![session_id])?;
    }
    Ok(())
}

impl crate::SqliteStore {
    /// `delete_session`: into the trash when the handle keeps a grace
    /// period, for good otherwise.
    pub(crate) async fn delete(&self, session_id: &str) -> Result<bool> {
        let (days, now) = (self.keep_deleted_days, self.clock.now_ms());
        let sid = session_id.to_owned();
        let gone = sid.clone();
        self.write_then(
            move |tx| {
                if days == 0 { crate::queries::delete_session(tx, &sid) } else { trash_session(tx, &sid, now) }
            },
            move |cache, existed| {
                crate::forget_after_answer(cache, &gone);
                existed
            },
        )
        .await
    }
}

/// `delete_session` with a grace period: into the trash.
pub(crate) fn trash_session(tx: &Transaction<'_>, session_id: &str, now: i64) -> Result<bool> {
    if !session_exists(tx, session_id)? {
        return Ok(false);
    }
    // A leftover of an earlier trashing that a live session replaced
    // (only an import can make one) goes for good first.
    purge_one(tx, session_id)?;
    move_rows(tx, session_id, true)?;
    tx.prepare_cached("INSERT INTO kp_trash (session_id, deleted_ms) VALUES (?1, ?2)")?
        .execute(params![session_id, now])?;
    Ok(true)
}

fn deleted_at(conn: &Connection, session_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT deleted_ms FROM kp_trash WHERE session_id = ?1")?
        .query_row(params![session_id], |r| r.get(0))
        .optional()?)
}

pub(crate) fn restore_session(tx: &Transaction<'_>, session_id: &str, now: i64, days: u32) -> Result<()> {
    match deleted_at(tx, session_id)? {
        Some(at) if at > expired_cutoff(now, days) => {}
        _ => return Err(session_not_found(session_id)),
    }
    if session_exists(tx, session_id)? {
        return Err(live_session_exists(session_id));
    }
    crate::ledger::keeping_ledger(tx, session_id, || move_rows(tx, session_id, false)).map_err(|e| {
        match e.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code) {
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                PersistenceError::Conflict(format!("a message id of trashed session {session_id:?} is taken: {e:#}"))
                    .into()
            }
            _ => e,
        }
    })?;
    tx.prepare_cached("DELETE FROM kp_trash WHERE session_id = ?1")?.execute(params![session_id])?;
    Ok(())
}

/// Removes one trashed session for good, releasing its bodies.
fn purge_one(tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    hold_bodies(tx, "kp_trash_messages", session_id, -1)?;
    tx.execute_batch("DELETE FROM kp_bodies WHERE refs <= 0")?;
    for (table, key) in [
        ("kp_trash_metadata", "session_id"),
        ("kp_trash_messages", "session_id"),
        ("kp_trash_sessions", "id"),
        ("kp_trash", "session_id"),
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE {key} = ?1"), params![session_id])?;
    }
    Ok(())
}

/// The trashed sessions deleted at or before `newest` (`expired`) or
/// after it (not expired), as reported.
fn listed(conn: &Connection, cutoff: i64, expired: bool, days: u32) -> Result<Vec<DeletedSession>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.session_id, t.deleted_ms, s.agent_name, s.project_root, s.title, s.created_ms,
                (SELECT COUNT(*) FROM kp_trash_messages m WHERE m.session_id = t.session_id)
         FROM kp_trash t LEFT JOIN kp_trash_sessions s ON s.id = t.session_id
         WHERE (t.deleted_ms <= ?1) = ?2 ORDER BY t.deleted_ms DESC, t.session_id",
    )?;
    let mut rows = stmt.query(params![cutoff, expired])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = get(r, 0, "trashed session id")?;
        let what = |c: &str| format!("{c} of trashed session {id:?}");
        let deleted_ms: i64 = get(r, 1, &what("deleted_ms"))?;
        let agent: Option<String> = get(r, 2, &what("agent_name"))?;
        let created: Option<i64> = get(r, 5, &what("created_ms"))?;
        out.push(DeletedSession {
            agent_name: agent.unwrap_or_default(),
            project_root: get(r, 3, &what("project_root"))?,
            title: get(r, 4, &what("title"))?,
            created_ms: created.unwrap_or(0),
            message_count: get(r, 6, &what("message count"))?,
            deleted_ms,
            purge_at_ms: purge_at_ms(deleted_ms, days),
            id,
        });
    }
    Ok(out)
}

pub(crate) fn list_deleted(conn: &Connection, now: i64, days: u32) -> Result<Vec<DeletedSession>> {
    listed(conn, expired_cutoff(now, days), false, days)
}

pub(crate) fn purge_deleted(tx: &Transaction<'_>, now: i64, days: u32, dry_run: bool) -> Result<Vec<DeletedSession>> {
    let gone = listed(tx, expired_cutoff(now, days), true, days)?;
    if !dry_run {
        for d in &gone {
            purge_one(tx, &d.id)?;
        }
    }
    Ok(gone)
}

/// Whether any trashed session has expired (an open purges only then, so
/// that it takes no write lock otherwise).
pub(crate) fn any_expired(conn: &Connection, now: i64, days: u32) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM kp_trash WHERE deleted_ms <= ?1 LIMIT 1")?
        .exists(params![expired_cutoff(now, days)])?)
}

/// `import_session`'s refusal of an id in the trash.
pub(crate) fn refuse_trashed(tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    if deleted_at(tx, session_id)?.is_some() {
        return Err(in_trash(session_id));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Trash for SqliteStore {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.read(move |conn| list_deleted(conn, now, days)).await
    }

    async fn count_deleted(&self) -> Result<usize> {
        let cutoff = expired_cutoff(self.clock.now_ms(), self.keep_deleted_days);
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM kp_trash WHERE deleted_ms > ?1")?
                .query_row(params![cutoff], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        let sid = session_id.to_owned();
        self.write(move |tx| restore_session(tx, &sid, now, days)).await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.write(move |tx| purge_deleted(tx, now, days, dry_run)).await
    }
}
