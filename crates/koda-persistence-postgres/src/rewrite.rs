//! Stored text replaced in place: the Rewrite capability.
//!
//! One transaction per call, in the lock order every writer keeps: the
//! session row, then its messages (by id), then the bodies (by address).
//! A rewritten message's `search` is reset, so the next search indexes
//! its new text; the session's `version` moves, so no handle's cache
//! serves the old text. [`Rewrite::reclaim`] vacuums the tables a rewrite
//! leaves dead rows in.

use std::collections::BTreeMap;

use anyhow::Result;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::rewrite::{Rewrite, SessionText};
use koda_persistence_api::{PersistenceError, Role};

use crate::PostgresStore;
use crate::bodies::{Found, pack_bodies, split};
use crate::exec::{Conn, Db, boolean, byte_arrays, bytes, int, ints, text};
use crate::rows::{as_bytes, get, role};

/// The roles of the listed messages of `session_id`, by id; an id that is
/// not one of its messages is `InvalidInput`.
async fn roles(c: &Conn, session_id: &str, ids: &[i64]) -> Result<BTreeMap<i64, Role>> {
    let rows = c
        .db()
        .rows(
            "rewrite_session",
            "SELECT id, role::TEXT FROM kp.messages WHERE session_id = $1 AND id = ANY($2)",
            &[text(&session_id), ints(&ids)],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(get::<i64>(r, 0, "message id")?, role(r, 1, "role")?);
    }
    if let Some(missing) = ids.iter().find(|id| !out.contains_key(id)) {
        return Err(PersistenceError::InvalidInput(format!(
            "message {missing} is not a message of session {session_id}"
        ))
        .into());
    }
    Ok(out)
}

async fn rewrite(c: &mut Conn, session_id: &str, t: &SessionText, now: i64) -> Result<()> {
    let ids: Vec<i64> = t.messages.iter().map(|m| m.id).collect();
    let roles = roles(c, session_id, &ids).await?;
    // Each message's new fields split into inline values and bodies; the
    // new bodies packed before the transaction starts.
    let mut found = Found::new();
    let mut splits = Vec::with_capacity(t.messages.len());
    for m in &t.messages {
        let role = roles.get(&m.id).copied().unwrap_or(Role::User);
        let given = [m.content.is_some(), m.full_content.is_some(), m.tool_calls.is_some()];
        let (inline, body) =
            split(&role, [m.content.as_deref(), m.full_content.as_deref(), m.tool_calls.as_deref()], &mut found);
        splits.push((m.id, given, inline, body));
    }
    let new_bodies = pack_bodies(found).await?;

    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let locked = db
        .opt(
            "rewrite_session",
            "UPDATE kp.sessions SET version = version + 1,
                 title = CASE WHEN $2 THEN $3 ELSE title END,
                 mode = CASE WHEN $4 THEN $5 ELSE mode END
             WHERE id = $1 RETURNING 1",
            &[
                text(&session_id),
                boolean(&t.title.is_some()),
                bytes(&t.title.as_deref().map(as_bytes)),
                boolean(&t.mode.is_some()),
                bytes(&t.mode.as_deref().map(as_bytes)),
            ],
        )
        .await?;
    if locked.is_none() {
        return Err(session_not_found(session_id));
    }
    for e in &t.metadata {
        db.execute(
            "rewrite_session",
            "INSERT INTO kp.session_metadata (session_id, key, value, updated_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (session_id, sha256(key))
             DO UPDATE SET value = EXCLUDED.value, updated_ms = EXCLUDED.updated_ms",
            &[text(&session_id), bytes(&as_bytes(&e.key)), bytes(&as_bytes(&e.value)), int(&now)],
        )
        .await?;
    }
    // The messages, locked in id order, and the bodies they let go.
    let old = db
        .rows(
            "rewrite_session",
            "SELECT id, content_body, full_content_body, tool_calls_body FROM kp.messages
             WHERE session_id = $1 AND id = ANY($2) ORDER BY id FOR NO KEY UPDATE",
            &[text(&session_id), ints(&ids)],
        )
        .await?;
    if old.len() != ids.len() {
        return Err(PersistenceError::Conflict(format!(
            "messages of session {session_id} went away during the rewrite"
        ))
        .into());
    }
    let mut changes: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut old_by_id = BTreeMap::new();
    for r in &old {
        let bodies: [Option<Vec<u8>>; 3] =
            [get(r, 1, "content body")?, get(r, 2, "full_content body")?, get(r, 3, "tool_calls body")?];
        old_by_id.insert(get::<i64>(r, 0, "message id")?, bodies);
    }
    for (id, given, inline, body) in &splits {
        let Some(before) = old_by_id.get(id) else { continue };
        for i in 0..3 {
            if given[i] {
                if let Some(h) = &before[i] {
                    *changes.entry(h.clone()).or_default() -= 1;
                }
                if let Some(h) = &body[i] {
                    *changes.entry(h.clone()).or_default() += 1;
                }
            }
        }
        db.execute(
            "rewrite_session",
            "UPDATE kp.messages SET search = NULL,
                 content = CASE WHEN $2 THEN $3 ELSE content END,
                 content_body = CASE WHEN $2 THEN $4 ELSE content_body END,
                 full_content = CASE WHEN $5 THEN $6 ELSE full_content END,
                 full_content_body = CASE WHEN $5 THEN $7 ELSE full_content_body END,
                 tool_calls = CASE WHEN $8 THEN $9 ELSE tool_calls END,
                 tool_calls_body = CASE WHEN $8 THEN $10 ELSE tool_calls_body END
             WHERE id = $1",
            &[
                int(id),
                boolean(&given[0]),
                bytes(&inline[0]),
                bytes(&body[0]),
                boolean(&given[1]),
                bytes(&inline[1]),
                bytes(&body[1]),
                boolean(&given[2]),
                bytes(&inline[2]),
                bytes(&body[2]),
            ],
        )
        .await?;
    }
    changes.retain(|_, n| *n != 0);
    if !changes.is_empty() {
        let hashes: Vec<&[u8]> = changes.keys().map(Vec::as_slice).collect();
        let counts: Vec<i64> = changes.values().copied().collect();
        let mut data: Vec<&[u8]> = Vec::new();
        let mut lens: Vec<i64> = Vec::new();
        for h in &hashes {
            let at = new_bodies.hashes.iter().position(|s| s.as_slice() == *h);
            data.push(at.and_then(|i| new_bodies.data.get(i)).map_or(&[][..], Vec::as_slice));
            lens.push(at.and_then(|i| new_bodies.lens.get(i)).copied().unwrap_or(0));
        }
        // A released body is there (its old references hold it), so only
        // a new text's body can be inserted, with its packed bytes.
        db.execute(
            "rewrite_session",
            "INSERT INTO kp.bodies AS x (hash, data, len, refs)
                 SELECT v.hash, v.data, v.len, v.refs
                 FROM unnest($1::BYTEA[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[]) AS v(hash, data, len, refs)
                 ORDER BY v.hash
                 ON CONFLICT (hash) DO UPDATE SET refs = x.refs + EXCLUDED.refs",
            &[byte_arrays(&hashes), byte_arrays(&data), ints(&lens), ints(&counts)],
        )
        .await?;
        db.execute(
            "rewrite_session",
            "DELETE FROM kp.bodies WHERE hash = ANY($1) AND refs <= 0",
            &[byte_arrays(&hashes)],
        )
        .await?;
    }
    tx.commit().await.map_err(crate::error::db("commit rewrite_session"))?;
    Ok(())
}

#[async_trait::async_trait]
impl Rewrite for PostgresStore {
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        let now = self.clock.now_ms();
        self.with_client(|mut c| async move { rewrite(&mut c, session_id, text, now).await }).await?;
        self.cache().forget(session_id);
        Ok(())
    }

    async fn reclaim(&self) -> Result<String> {
        // VACUUM runs outside a transaction, one statement at a time; a
        // role that does not own a table gets a warning and the table is
        // skipped.
        for table in ["messages", "bodies", "sessions", "session_metadata"] {
            let sql = format!("VACUUM kp.{table}");
            self.with_client(|c| {
                let sql = sql.clone();
                async move { c.db().batch("reclaim", &sql).await }
            })
            .await?;
        }
        Ok("postgres: messages, bodies, sessions and metadata vacuumed (a role that does not own them \
            is skipped with the server's warning); the server's WAL, its archive and its backups keep old \
            values until they rotate"
            .to_owned())
    }
}
