//! Stored text replaced in place: the Rewrite capability.
//!
//! A message's field is replaced by `UPDATE`, its new text stored once
//! when it is a body ([`put_body`]); the schema's triggers move the body
//! counts (releasing the old body with its last reference), mark the
//! message for the search index and bump the session's version.
//! [`Rewrite::reclaim`] then brings the index up to date, merges it, and
//! vacuums the file, so no free page and no WAL frame keeps an old value.

use anyhow::Result;
use koda_persistence_api::bodies::BodyField;
use koda_persistence_api::rewrite::{Rewrite, SessionText};
use koda_persistence_api::{PersistenceError, Role};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::bodies::{hash_param, put_body};
use crate::error::classify;
use crate::queries::{require_session, set_metadata, set_session_text};
use crate::worker::forget_after_answer;

/// The message's role, when it is one of `session_id`'s.
fn role_of(tx: &Transaction<'_>, session_id: &str, id: i64) -> Result<Role> {
    let role: Option<String> = tx
        .prepare_cached("SELECT role FROM messages WHERE id = ?1 AND session_id = ?2")?
        .query_row(params![id, session_id], |r| r.get(0))
        .optional()?;
    let role = role.ok_or_else(|| {
        PersistenceError::InvalidInput(format!("message {id} is not a message of session {session_id}"))
    })?;
    Ok(Role::from_stored(&role).map_err(|e| PersistenceError::Corrupt(format!("message {id}: {e}")))?)
}

fn rewrite(tx: &Transaction<'_>, session_id: &str, text: &SessionText, blobs: bool, now: i64) -> Result<()> {
    require_session(tx, session_id)?;
    if let Some(title) = &text.title {
        set_session_text(tx, "title", session_id, title)?;
    }
    if let Some(mode) = &text.mode {
        set_session_text(tx, "mode", session_id, mode)?;
    }
    for e in &text.metadata {
        set_metadata(tx, session_id, &e.key, &e.value, now)?;
    }
    for m in &text.messages {
        let role = role_of(tx, session_id, m.id)?;
        for (field, value) in [
            (BodyField::Content, &m.content),
            (BodyField::FullContent, &m.full_content),
            (BodyField::ToolCalls, &m.tool_calls),
        ] {
            let Some(value) = value else { continue };
            let (inline, body) = put_body(tx, blobs, &role, field, Some(value))?;
            let sql = match field {
                BodyField::Content => "UPDATE messages SET content = ?2, content_body = ?3 WHERE id = ?1",
                BodyField::FullContent => "UPDATE messages SET full_content = ?2, full_content_body = ?3 WHERE id = ?1",
                BodyField::ToolCalls => "UPDATE messages SET tool_calls = ?2, tool_calls_body = ?3 WHERE id = ?1",
            };
            tx.prepare_cached(sql)?.execute(params![m.id, inline, hash_param(&body)])?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Rewrite for SqliteStore {
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        let blobs = self.stores_bodies_once();
        let now = self.clock.now_ms();
        let (sid, text) = (session_id.to_owned(), text.clone());
        let forget = sid.clone();
        self.write_then(
            move |tx| rewrite(tx, &sid, &text, blobs, now),
            move |cache, ()| forget_after_answer(cache, &forget),
        )
        .await
    }

    async fn reclaim(&self) -> Result<String> {
        self.index_dirty().await;
        let location = self.location.clone();
        let (before, after) = self
            .writer
            .run(|conn| {
                let pages = |conn: &rusqlite::Connection| -> rusqlite::Result<i64> {
                    conn.query_row("PRAGMA page_count", [], |r| r.get(0))
                };
                let before = pages(conn)?;
                // Merged into one segment, the index keeps no entry of a
                // deleted or rewritten row.
                conn.execute("INSERT INTO kp_search (kp_search) VALUES ('optimize')", [])?;
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
                Ok((before, pages(conn)?))
            })
            .await
            .map_err(|e| classify(e, &location))?;
        Ok(format!("sqlite: search index merged, file vacuumed ({before} pages before, {after} after), WAL truncated"))
    }
}
