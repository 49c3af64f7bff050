//! Whole sessions out and in, every field kept: the Transfer capability.

use crate::SqliteStore;
use crate::bodies::hash_param;
use crate::bodies::put_bodies;
use crate::queries::koda_text;
use crate::queries::not_found;
use crate::queries::require_session;
use crate::queries::session_exists;
use crate::queries::set_metadata;
use crate::rows::{self, MESSAGE_COLUMNS, get};
use anyhow::Result;
use koda_persistence_api::Transfer;
use koda_persistence_api::backend::{check_kept, id_taken};
use koda_persistence_api::{MessageRecord, MetadataRecord, SessionRecord};
use rusqlite::{Connection, Transaction, params};

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
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM session_metadata WHERE session_id = ?1 ORDER BY CAST(key AS BLOB)")?;
    let mut rows = stmt.query(params![session_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(MetadataRecord { key: get(r, 0, "metadata key")?, value: get(r, 1, "metadata value")? });
    }
    Ok(out)
}

pub(crate) fn message_id_range(conn: &Connection) -> Result<Option<(i64, i64)>> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.prepare_cached("SELECT MIN(id), MAX(id) FROM messages")?.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(lo.zip(hi))
}

/// The last message id handed out: AUTOINCREMENT's record, or the largest
/// id (a file an older koda created may lack the record).
pub(crate) fn id_position(tx: &Transaction<'_>) -> Result<i64> {
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
    let moved =
        tx.prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'messages'")?.execute(params![last])?;
    if moved == 0 {
        tx.prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?1)")?.execute(params![last])?;
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
        sum.saturating_add(m.prompt_tokens.unwrap_or(0)).saturating_add(m.completion_tokens.unwrap_or(0))
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
        let [content, full, calls] =
            put_bodies(tx, blobs, &m.role, m.content.as_deref(), m.full_content.as_deref(), m.tool_calls.as_deref())?;
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

#[async_trait::async_trait]
impl Transfer for SqliteStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.read(export_session_ids).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| export_session(c, &sid)).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| export_messages(c, &sid)).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        let sid = session_id.to_owned();
        self.read(move |c| export_metadata(c, &sid)).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.read(message_id_range).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        self.write(move |tx| claim_ids(tx, first, last)).await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        let session = session.clone();
        self.write(move |tx| import_session(tx, &session)).await
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        let blobs = self.stores_bodies_once();
        let sid = session_id.to_owned();
        let messages = messages.to_vec();
        self.write(move |tx| import_messages(tx, &sid, &messages, keep_ids, blobs)).await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let sid = session_id.to_owned();
        let entries = entries.to_vec();
        let now = self.clock.now_ms();
        self.write(move |tx| import_metadata(tx, &sid, &entries, now)).await
    }
}
