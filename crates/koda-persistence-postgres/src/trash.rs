//! The trash (migration 9): a deleted session's rows moved, every column
//! as stored, into `trash_*` tables shaped like the live ones, and moved
//! back on restore. Each move is one transaction that locks the session
//! row (or its `trash` row) first, then touches messages, then bodies in
//! address order.

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::Trash;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::trash::{DeletedSession, expired_cutoff, in_trash, live_session_exists, purge_at_ms};

use crate::PostgresStore;
use crate::exec::{Conn, Db, int, text};
use crate::rows::{get, required_string, string};

impl crate::PostgresStore {
    /// `delete_session`: into the trash when the handle keeps a grace
    /// period, for good otherwise.
    pub(crate) async fn delete(&self, session_id: &str) -> Result<bool> {
        let (days, now) = (self.keep_deleted_days, self.clock.now_ms());
        let existed = self
            .with_client(|mut c| async move {
                if days == 0 {
                    crate::queries::delete_session(&c, session_id).await
                } else {
                    trash_session(&mut c, session_id, now).await
                }
            })
            .await?;
        self.cache().forget(session_id);
        Ok(existed)
    }
}

/// Adds to `bodies.refs` the references of the session's rows in `table`
/// (`kp.messages` or `kp.trash_messages`), locking the bodies in address
/// order first.
const HOLD_BODIES: &str = "WITH used AS (
        SELECT h, count(*) AS n FROM (
            SELECT content_body AS h FROM {table} WHERE session_id = $1
            UNION ALL SELECT full_content_body FROM {table} WHERE session_id = $1
            UNION ALL SELECT tool_calls_body FROM {table} WHERE session_id = $1) x
        WHERE h IS NOT NULL GROUP BY h),
     locked AS MATERIALIZED (
        SELECT b.hash FROM kp.bodies b WHERE b.hash IN (SELECT h FROM used)
        ORDER BY b.hash FOR NO KEY UPDATE OF b)
     UPDATE kp.bodies b SET refs = b.refs + used.n FROM used, locked
     WHERE b.hash = used.h AND locked.hash = used.h";

async fn hold_bodies(db: &Db<'_>, table: &str, id: &str) -> Result<()> {
    db.execute("holding the bodies of a trashed session", &HOLD_BODIES.replace("{table}", table), &[text(&id)]).await?;
    Ok(())
}

/// `delete_session` with a grace period.
pub(crate) async fn trash_session(c: &mut Conn, id: &str, now: i64) -> Result<bool> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let found =
        db.opt("locking the session", "SELECT 1 FROM kp.sessions WHERE id = $1 FOR UPDATE", &[text(&id)]).await?;
    if found.is_none() {
        return Ok(false);
    }
    // A leftover trashing of the same id (only an import can make one)
    // goes for good first.
    purge_ids(&db, &[id.to_owned()]).await?;
    for sql in [
        "INSERT INTO kp.trash_sessions SELECT * FROM kp.sessions WHERE id = $1",
        "INSERT INTO kp.trash_messages SELECT * FROM kp.messages WHERE session_id = $1",
        "INSERT INTO kp.trash_metadata SELECT * FROM kp.session_metadata WHERE session_id = $1",
        "INSERT INTO kp.trash_usage SELECT * FROM kp.session_usage WHERE session_id = $1",
    ] {
        db.execute("moving a session to the trash", sql, &[text(&id)]).await?;
    }
    hold_bodies(&db, "kp.messages", id).await?;
    // The cascade releases the live rows' references (version 7's trigger).
    db.execute("moving a session to the trash", "DELETE FROM kp.sessions WHERE id = $1", &[text(&id)]).await?;
    db.execute(
        "moving a session to the trash",
        "INSERT INTO kp.trash (session_id, deleted_ms) VALUES ($1, $2)",
        &[text(&id), int(&now)],
    )
    .await?;
    tx.commit().await.map_err(crate::error::db("commit delete_session"))?;
    Ok(true)
}

/// `restore_session`: `Ok(Err(_))` for a refusal that no retry can change.
pub(crate) async fn restore_session(c: &mut Conn, id: &str, now: i64, days: u32) -> Result<Result<()>> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let row = db
        .opt("restore_session", "SELECT deleted_ms FROM kp.trash WHERE session_id = $1 FOR UPDATE", &[text(&id)])
        .await?;
    let at: Option<i64> = row.map(|r| get(&r, 0, "deleted_ms")).transpose()?;
    if at.is_none_or(|at| at <= expired_cutoff(now, days)) {
        return Ok(Err(session_not_found(id)));
    }
    let live = db.opt("restore_session", "SELECT 1 FROM kp.sessions WHERE id = $1", &[text(&id)]).await?;
    if live.is_some() {
        return Ok(Err(live_session_exists(id)));
    }
    let taken = db
        .opt(
            "restore_session",
            "SELECT m.id FROM kp.messages m
             WHERE m.id IN (SELECT id FROM kp.trash_messages WHERE session_id = $1) LIMIT 1",
            &[text(&id)],
        )
        .await?;
    if let Some(r) = taken {
        let m: i64 = get(&r, 0, "message id")?;
        return Ok(Err(PersistenceError::Conflict(format!(
            "message id {m} of trashed session {id:?} is taken by another message"
        ))
        .into()));
    }
    for sql in [
        "INSERT INTO kp.sessions OVERRIDING SYSTEM VALUE SELECT * FROM kp.trash_sessions WHERE id = $1",
        "INSERT INTO kp.messages OVERRIDING SYSTEM VALUE
             SELECT * FROM kp.trash_messages WHERE session_id = $1",
        "INSERT INTO kp.session_metadata SELECT * FROM kp.trash_metadata WHERE session_id = $1",
        "INSERT INTO kp.session_usage SELECT * FROM kp.trash_usage WHERE session_id = $1",
    ] {
        db.execute("restoring a session", sql, &[text(&id)]).await?;
    }
    hold_bodies(&db, "kp.trash_messages", id).await?;
    purge_ids(&db, &[id.to_owned()]).await?;
    tx.commit().await.map_err(crate::error::db("commit restore_session"))?;
    Ok(Ok(()))
}

/// Removes trashed sessions' rows for good; deleting `trash_messages`
/// releases their bodies (the trigger of migration 9).
async fn purge_ids(db: &Db<'_>, ids: &[String]) -> Result<()> {
    for sql in [
        "DELETE FROM kp.trash_metadata WHERE session_id = ANY($1)",
        "DELETE FROM kp.trash_usage WHERE session_id = ANY($1)",
        "DELETE FROM kp.trash_messages WHERE session_id = ANY($1)",
        "DELETE FROM kp.trash_sessions WHERE id = ANY($1)",
        "DELETE FROM kp.trash WHERE session_id = ANY($1)",
    ] {
        db.execute("purging deleted sessions", sql, &[crate::exec::texts(&ids)]).await?;
    }
    Ok(())
}

const LISTED: &str = "SELECT t.session_id, t.deleted_ms, s.agent_name, s.project_root, s.title,
        s.created_ms, s.message_count
     FROM kp.trash t LEFT JOIN kp.trash_sessions s ON s.id = t.session_id";

fn report(rows: &[tokio_postgres::Row], days: u32) -> Result<Vec<DeletedSession>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = get(r, 0, "trashed session id")?;
        let what = |c: &str| format!("{c} of trashed session {id:?}");
        let deleted_ms: i64 = get(r, 1, &what("deleted_ms"))?;
        out.push(DeletedSession {
            agent_name: required_string(r, 2, &what("agent_name"))?,
            project_root: string(r, 3, &what("project_root"))?,
            title: string(r, 4, &what("title"))?,
            created_ms: get::<Option<i64>>(r, 5, &what("created_ms"))?.unwrap_or(0),
            message_count: get::<Option<i64>>(r, 6, &what("message_count"))?.unwrap_or(0),
            deleted_ms,
            purge_at_ms: purge_at_ms(deleted_ms, days),
            id,
        });
    }
    Ok(out)
}

pub(crate) async fn list_deleted(c: &Conn, now: i64, days: u32) -> Result<Vec<DeletedSession>> {
    let rows = c
        .db()
        .rows(
            "list_deleted",
            &format!("{LISTED} WHERE t.deleted_ms > $1 ORDER BY t.deleted_ms DESC, t.session_id COLLATE \"C\""),
            &[int(&expired_cutoff(now, days))],
        )
        .await?;
    report(&rows, days)
}

pub(crate) async fn purge_deleted(c: &mut Conn, now: i64, days: u32, dry_run: bool) -> Result<Vec<DeletedSession>> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let lock = if dry_run { "" } else { " FOR UPDATE OF t SKIP LOCKED" };
    let rows = db
        .rows(
            "purge_deleted",
            &format!(
                "{LISTED} WHERE t.deleted_ms <= $1
                 ORDER BY t.deleted_ms DESC, t.session_id COLLATE \"C\"{lock}"
            ),
            &[int(&expired_cutoff(now, days))],
        )
        .await?;
    let gone = report(&rows, days)?;
    if !dry_run && !gone.is_empty() {
        let ids: Vec<String> = gone.iter().map(|d| d.id.clone()).collect();
        purge_ids(&db, &ids).await?;
    }
    tx.commit().await.map_err(crate::error::db("commit purge_deleted"))?;
    Ok(gone)
}

/// Whether any trashed session has expired (an open purges only then).
pub(crate) async fn any_expired(c: &Conn, now: i64, days: u32) -> Result<bool> {
    Ok(c.db()
        .opt(
            "reading the trash",
            "SELECT 1 FROM kp.trash WHERE deleted_ms <= $1 LIMIT 1",
            &[int(&expired_cutoff(now, days))],
        )
        .await?
        .is_some())
}

/// `import_session`'s refusal of an id in the trash.
pub(crate) async fn refuse_trashed(c: &Conn, id: &str) -> Result<Result<()>> {
    let found = c.db().opt("import_session", "SELECT 1 FROM kp.trash WHERE session_id = $1", &[text(&id)]).await?;
    Ok(match found {
        Some(_) => Err(in_trash(id)),
        None => Ok(()),
    })
}

#[async_trait::async_trait]
impl Trash for PostgresStore {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.with_client(|c| async move { list_deleted(&c, now, days).await }).await
    }

    async fn count_deleted(&self) -> Result<usize> {
        let cutoff = expired_cutoff(self.clock.now_ms(), self.keep_deleted_days);
        let n: i64 = self
            .with_client(|c| async move {
                let row = c
                    .db()
                    .one("count_deleted", "SELECT COUNT(*) FROM kp.trash WHERE deleted_ms > $1", &[int(&cutoff)])
                    .await?;
                Ok(get::<i64>(&row, 0, "trashed sessions")?)
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.with_client(|mut c| async move { restore_session(&mut c, session_id, now, days).await }).await?
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.with_client(|mut c| async move { purge_deleted(&mut c, now, days, dry_run).await }).await
    }
}
