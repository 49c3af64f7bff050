//! Search over the FTS5 index of schema 6 (`kp_search`, see
//! `schema::V6_SEARCH`): the index narrows a query to candidate ids, newest
//! first, and [`Query::find`] decides each candidate from the stored text,
//! so an index that lags (the ids in `kp_search_dirty`, which are always
//! candidates too) never changes a result. A search then indexes the dirty
//! ids in write transactions of [`CATCH_UP_BATCH`], so the index lags by at
//! most what was written since the last search.

use anyhow::Result;
use koda_persistence_api::Search;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::search::{Query, ScopeBuf, SearchHit, SearchScope, hit, hit_limit, index_text, sort_hits};
use koda_persistence_api::{PersistenceError, Role};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::rows::{CONTENT, FULL_CONTENT, get, text_at};

/// How many dirty ids one catch-up transaction indexes.
pub(crate) const CATCH_UP_BATCH: i64 = 2000;

/// Whether any id waits to be indexed.
pub(crate) fn has_dirty(conn: &Connection) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM kp_search_dirty)")?.query_row([], |r| r.get(0))?)
}

/// Indexes up to [`CATCH_UP_BATCH`] dirty ids above `after` (oldest
/// first) from the messages' current text, dropping the index rows of
/// deleted messages; returns how many ids it took and the last one. A
/// message whose text does not decode (`Corrupt`, as every read of it)
/// stays dirty: always a candidate, never in the way of the rows after it.
pub(crate) fn catch_up(tx: &Transaction<'_>, after: i64) -> Result<(usize, i64)> {
    let ids: Vec<i64> = {
        let mut stmt = tx.prepare_cached("SELECT id FROM kp_search_dirty WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = stmt.query_map(params![after, CATCH_UP_BATCH], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let sql = format!("SELECT {CONTENT}, {FULL_CONTENT} FROM messages WHERE id = ?1");
    for &id in &ids {
        let fields = tx
            .prepare_cached(&sql)?
            .query_row(params![id], |r| {
                Ok((
                    text_at(r, 0, &format!("content of message {id}")),
                    text_at(r, 1, &format!("full_content of message {id}")),
                ))
            })
            .optional()?;
        let body = match fields {
            Some((Ok(content), Ok(full))) => Some(index_text(&[content.as_deref(), full.as_deref()])),
            Some(_) => {
                tracing::debug!(message = id, "a message whose text does not decode stays out of the search index");
                continue;
            }
            None => None,
        };
        tx.prepare_cached("DELETE FROM kp_search WHERE rowid = ?1")?.execute(params![id])?;
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            tx.prepare_cached("INSERT INTO kp_search (rowid, body) VALUES (?1, ?2)")?.execute(params![id, body])?;
        }
        tx.prepare_cached("DELETE FROM kp_search_dirty WHERE id = ?1")?.execute(params![id])?;
    }
    Ok((ids.len(), ids.last().copied().unwrap_or(after)))
}

/// The columns [`decide`] reads, after the id.
fn columns() -> String {
    format!(
        "m.session_id, m.role, {CONTENT}, {FULL_CONTENT}, m.created_ms, m.compacted_ms, \
         (SELECT s.project_root FROM sessions s WHERE s.id = m.session_id), \
         EXISTS (SELECT 1 FROM sessions s WHERE s.id = m.session_id)"
    )
}

/// A hit for the message `id` whose row (as [`columns`] selects it, from
/// column `at`) is in `scope` and matches `query`.
fn decide(
    row: &rusqlite::Row<'_>,
    at: usize,
    id: i64,
    query: &Query,
    scope: &ScopeBuf,
) -> Result<Option<SearchHit>, PersistenceError> {
    let what = |c: &str| format!("{c} of message {id}");
    if !get::<bool>(row, at + 7, &what("session"))? {
        return Ok(None);
    }
    let session: String = get(row, at, &what("session_id"))?;
    let root: Option<String> = get(row, at + 6, &what("project_root"))?;
    let role: String = get(row, at + 1, &what("role"))?;
    let role = Role::from_stored(&role).map_err(|e| PersistenceError::Corrupt(format!("message {id}: {e}")))?;
    let compacted: Option<i64> = get(row, at + 5, &what("compacted_ms"))?;
    if !scope.admits(role, compacted.is_some()) || !scope.admits_session(&session, root.as_deref()) {
        return Ok(None);
    }
    let content = text_at(row, at + 2, &what("content"))?;
    let full = text_at(row, at + 3, &what("full_content"))?;
    let Some(found) = query.find(&[content.as_deref(), full.as_deref()]) else {
        return Ok(None);
    };
    let created: Option<i64> = get(row, at + 4, &what("created_ms"))?;
    Ok(Some(hit(session, id, role, format_timestamp(created.unwrap_or(0)), found)))
}

/// The hits: candidates newest first until `limit` of them match.
pub(crate) fn search(conn: &Connection, query: &Query, scope: &ScopeBuf, limit: usize) -> Result<Vec<SearchHit>> {
    let mut hits = Vec::new();
    if limit == 0 || query.finds_nothing() {
        return Ok(hits);
    }
    match (query.fts5(), &scope.session) {
        // One session (its rows by the session index) or a query of
        // exclusions only: every message in scope is a candidate.
        (_, Some(_)) | (None, None) => {
            let sql = format!(
                "SELECT m.id, {} FROM messages m WHERE {} AND (?2 OR m.compacted_ms IS NULL)
                 ORDER BY m.id DESC",
                columns(),
                // Two statements, so that one session's search walks its index.
                if scope.session.is_some() { "m.session_id = ?1" } else { "?1 IS NULL" }
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![scope.session, scope.include_compacted])?;
            while let Some(row) = rows.next()? {
                let id: i64 = get(row, 0, "message id")?;
                if let Some(h) = decide(row, 1, id, query, scope)? {
                    hits.push(h);
                    if hits.len() >= limit {
                        break;
                    }
                }
            }
        }
        (Some(expr), None) => {
            // The dirty ids (few: what was written since the last search)
            // merged into the index's matches, both newest first.
            let dirty: Vec<i64> = {
                let mut stmt = conn.prepare_cached("SELECT id FROM kp_search_dirty ORDER BY id DESC")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut dirty = dirty.into_iter().peekable();
            let mut matches =
                conn.prepare_cached("SELECT rowid FROM kp_search WHERE kp_search MATCH ?1 ORDER BY rowid DESC")?;
            let mut matches = matches.query(params![expr])?;
            let sql = format!("SELECT {} FROM messages m WHERE m.id = ?1", columns());
            let mut one = conn.prepare_cached(&sql)?;
            let mut next_match: Option<i64> = match matches.next()? {
                Some(r) => Some(get(r, 0, "search rowid")?),
                None => None,
            };
            let mut last: Option<i64> = None;
            while hits.len() < limit {
                let id = match (next_match, dirty.peek().copied()) {
                    (None, None) => break,
                    (Some(m), d) if d.is_none_or(|d| m >= d) => {
                        next_match = match matches.next()? {
                            Some(r) => Some(get(r, 0, "search rowid")?),
                            None => None,
                        };
                        m
                    }
                    _ => match dirty.next() {
                        Some(d) => d,
                        None => break,
                    },
                };
                if last == Some(id) {
                    continue;
                }
                last = Some(id);
                let mut rows = one.query(params![id])?;
                if let Some(row) = rows.next()?
                    && let Some(h) = decide(row, 0, id, query, scope)?
                {
                    hits.push(h);
                }
            }
        }
    }
    sort_hits(&mut hits);
    Ok(hits)
}

impl crate::SqliteStore {
    /// [`Search::search_messages`](koda_persistence_api::Search::search_messages):
    /// searches on a reader, then indexes what was dirty.
    pub(crate) async fn search(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        let (query, scope) = (Query::parse(query)?, ScopeBuf::new(scope)?);
        let (hits, dirty) =
            self.read(move |c| Ok((search(c, &query, &scope, hit_limit(limit))?, has_dirty(c)?))).await?;
        if dirty {
            self.index_dirty().await;
        }
        Ok(hits)
    }

    /// Indexes every dirty id, one [`CATCH_UP_BATCH`] per write transaction
    /// (so koda's own writes interleave). A failure (a locked or read-only
    /// file) only leaves the ids dirty, which later searches still find:
    /// it is logged, not returned.
    pub(crate) async fn index_dirty(&self) {
        let mut after = 0;
        loop {
            match self.write(move |tx| catch_up(tx, after)).await {
                Ok((n, _)) if n < usize::try_from(CATCH_UP_BATCH).unwrap_or(usize::MAX) => return,
                Ok((_, last)) => after = last,
                Err(e) => {
                    tracing::warn!(error = %e, "could not bring the search index up to date; searches still find every message");
                    return;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Search for SqliteStore {
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        self.search(query, scope, limit).await
    }
}
