//! Large outputs stored once: writing bodies, and moving an older file's inline outputs into them.

use crate::schema::body_mode;
use anyhow::Result;
use koda_persistence_api::bodies::{BodyField, BodyHash, body_hash, is_body, pack};
use koda_persistence_api::{PersistenceError, Role};
use rusqlite::{Connection, Transaction, params};

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
    let known = tx.prepare_cached("SELECT 1 FROM kp_bodies WHERE hash = ?1")?.exists(params![&hash[..]])?;
    if !known {
        let data = pack(text)?;
        tx.prepare_cached("INSERT INTO kp_bodies (hash, data, len, refs) VALUES (?1, ?2, ?3, 0)")?.execute(params![
            &hash[..],
            data,
            i64::try_from(text.len()).unwrap_or(i64::MAX)
        ])?;
    }
    Ok((None, Some(hash)))
}

/// The three body fields of a message, through [`put_body`]: `(column,
/// body)` for content, full_content and tool_calls.
pub(crate) type Fields<'v> = [(Option<&'v str>, Option<BodyHash>); 3];

pub(crate) fn put_bodies<'v>(
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

pub(crate) fn hash_param(h: &Option<BodyHash>) -> Option<&[u8]> {
    h.as_ref().map(|h| &h[..])
}

/// What moving inline large outputs into bodies did (or, for a dry run,
/// would do): see [`SqliteStore::compact_bodies`](crate::SqliteStore::compact_bodies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyMove {
    /// Message rows with a field moved.
    pub rows: u64,
    /// Fields moved into a body.
    pub fields: u64,
    /// Their text bytes, which the rows stop holding inline.
    pub inline_bytes: u64,
    /// Bodies the move adds (text no body held before).
    pub new_bodies: u64,
    /// The packed bytes of the bodies it adds.
    pub packed_bytes: u64,
}

impl BodyMove {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: BodyMove) {
        self.rows += other.rows;
        self.fields += other.fields;
        self.inline_bytes += other.inline_bytes;
        self.new_bodies += other.new_bodies;
        self.packed_bytes += other.packed_bytes;
    }
}

/// Moves (or, `dry`, counts) the inline fields of up to `limit` messages
/// with ids past `after` that are bodies; returns the counts and the last
/// id looked at (`None`: no message left). `seen` holds the addresses a
/// dry run already counted as new. Scans `messages`: a maintenance step,
/// run by `koda-store compact-bodies`, never by koda's calls.
pub(crate) fn move_to_bodies(
    conn: &Connection,
    after: i64,
    limit: i64,
    dry: bool,
    seen: &mut std::collections::HashSet<koda_persistence_api::bodies::BodyHash>,
) -> Result<(BodyMove, Option<i64>)> {
    use koda_persistence_api::Role;
    use koda_persistence_api::bodies::{BodyField, TOOL_BODY_MIN, body_hash, is_body, pack};
    let mut found = Vec::new();
    let mut last = None;
    {
        let mut stmt = conn.prepare(
            "SELECT id, role, content, full_content, tool_calls,
                    content_body IS NULL, full_content_body IS NULL, tool_calls_body IS NULL
             FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after, limit])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            last = Some(id);
            let role = Role::from_stored(&r.get::<_, String>(1)?)
                .map_err(|e| PersistenceError::Corrupt(format!("message {id}: {e}")))?;
            let mut fields = Vec::new();
            for (i, field) in [BodyField::Content, BodyField::FullContent, BodyField::ToolCalls].into_iter().enumerate()
            {
                let inline: bool = r.get(5 + i)?;
                let text: Option<String> = r.get(2 + i)?;
                if let Some(text) = text.filter(|t| inline && t.len() >= TOOL_BODY_MIN && is_body(&role, field, t)) {
                    fields.push((field, text));
                }
            }
            if !fields.is_empty() {
                found.push((id, role, fields));
            }
        }
    }
    let mut moved = BodyMove::default();
    for (id, role, fields) in found {
        moved.rows += 1;
        for (field, text) in fields {
            moved.fields += 1;
            moved.inline_bytes += text.len() as u64;
            let hash = body_hash(&text);
            let known = seen.contains(&hash)
                || conn.prepare_cached("SELECT 1 FROM kp_bodies WHERE hash = ?1")?.exists(params![&hash[..]])?;
            if dry {
                if !known {
                    moved.new_bodies += 1;
                    moved.packed_bytes += pack(&text)?.len() as u64;
                    seen.insert(hash);
                }
                continue;
            }
            put_body(conn, true, &role, field, Some(&text))?;
            if !known {
                moved.new_bodies += 1;
                let packed: i64 = conn
                    .prepare_cached("SELECT length(data) FROM kp_bodies WHERE hash = ?1")?
                    .query_row(params![&hash[..]], |r| r.get(0))?;
                moved.packed_bytes += u64::try_from(packed).unwrap_or(0);
            }
            let column = field.as_str();
            conn.execute(
                &format!("UPDATE messages SET {column} = NULL, {column}_body = ?2 WHERE id = ?1"),
                params![id, &hash[..]],
            )?;
        }
    }
    Ok((moved, last))
}

impl crate::SqliteStore {
    /// Stores every large output the file holds inline once, as a body
    /// (the rows an older koda or this store with `blobs=off` wrote), and
    /// turns storing once on for every later write and open (`blobs=on`
    /// recorded in the file). An older koda reading this file directly
    /// then sees NULL where a body is. Runs in transactions of 500
    /// messages: a killed run leaves every row either inline or a body,
    /// and a re-run goes on. With `dry_run`, changes nothing and reports
    /// what it would move.
    ///
    /// # Errors
    /// As any write: `Unavailable` when the file stays locked, `Corrupt`
    /// for a row that does not decode.
    pub async fn compact_bodies(&self, dry_run: bool) -> anyhow::Result<BodyMove> {
        if !dry_run {
            self.write(|tx| body_mode(tx, Some(true))).await?;
            self.blobs.store(true, std::sync::atomic::Ordering::Release);
        }
        let mut total = BodyMove::default();
        let mut after = 0;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        loop {
            let seen = seen.clone();
            let step = move |conn: &rusqlite::Connection| {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                move_to_bodies(conn, after, 500, dry_run, &mut seen)
            };
            let (moved, last) = if dry_run { self.read(step).await? } else { self.write(move |tx| step(tx)).await? };
            total.add(moved);
            match last {
                Some(id) => after = id,
                None => return Ok(total),
            }
        }
    }
}
