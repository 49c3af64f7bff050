//! Search over migration 8's index (`messages.search`, a `tsvector` of
//! each message's words with their positions, under a GIN index; see
//! `migrations/V8__search.sql` and
//! [`koda_persistence_api::search::tsvector`]). The index narrows a query
//! to candidates, newest first ([`Query::tsquery`]: words, phrases by
//! position, one-word exclusions), beside the messages not indexed yet
//! (`search IS NULL`, which a text change also sets); [`Query::find`]
//! decides each candidate from its stored text, so the index never
//! changes a result. A search first indexes the rows not indexed yet, in
//! transactions of [`CATCH_UP_BATCH`].

use anyhow::Result;
use koda_persistence_api::Search;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::search::{Query, ScopeBuf, SearchHit, SearchScope, hit, hit_limit, sort_hits, tsvector};

use crate::PostgresStore;
use crate::exec::{Conn, Db, boolean, bytes, int, ints, text, texts};
use crate::rows::{CONTENT, FULL_CONTENT, body_string, get, in_message, role};

/// How many rows one catch-up transaction indexes.
pub(crate) const CATCH_UP_BATCH: i64 = 500;

/// After indexing this many rows at once, a search refreshes the
/// planner's statistics of `messages`.
pub(crate) const ANALYZE_AFTER: usize = 10_000;

/// The conditions of a search's scope on messages `m` (a message's
/// session always exists: the foreign key): `$2` the id every candidate is below, `$3` compacted too,
/// `$4` the roles, `$5` the session (when `session`), `$6` the root (when
/// `rooted`).
fn scope_sql(session: bool, rooted: bool) -> String {
    let mut sql = String::from(
        "m.id < $2 AND ($3 OR m.compacted_ms IS NULL) \
         AND (cardinality($4::TEXT[]) = 0 OR m.role::TEXT = ANY($4))",
    );
    sql.push_str(if session { " AND m.session_id = $5" } else { " AND $5::TEXT IS NULL" });
    sql.push_str(if rooted {
        " AND m.session_id IN (SELECT s.id FROM kp.sessions s \
           WHERE s.project_root = $6 OR s.project_root IS NULL)"
    } else {
        " AND $6::BYTEA IS NULL"
    });
    sql
}

/// The statement that reads one page of candidates (`$7` of them),
/// newest first: when `indexed`, the index's matches for the `tsquery`
/// `$1` and the rows not indexed yet, each through its own index; else
/// every message in scope.
fn candidates_sql(indexed: bool, session: bool, rooted: bool) -> String {
    let scope = scope_sql(session, rooted);
    let from = "FROM kp.messages m";
    let ids = if indexed {
        format!(
            "(SELECT m.id {from} WHERE m.search @@ CAST($1::TEXT AS tsquery) AND {scope}
              ORDER BY m.id DESC LIMIT $7)
             UNION
             (SELECT m.id {from} WHERE m.search IS NULL AND {scope}
              ORDER BY m.id DESC LIMIT $7)"
        )
    } else {
        format!("SELECT m.id {from} WHERE $1::TEXT IS NULL AND {scope} ORDER BY m.id DESC LIMIT $7")
    };
    format!(
        "WITH c AS ({ids})
         SELECT m.id, m.session_id, m.role::TEXT, {CONTENT}, {FULL_CONTENT}, m.created_ms
         FROM c JOIN kp.messages m ON m.id = c.id
         ORDER BY m.id DESC LIMIT $7"
    )
}

/// The hits: pages of candidates, newest first, until `limit` match.
pub(crate) async fn search(c: &Conn, query: &Query, scope: &ScopeBuf, limit: usize) -> Result<Vec<SearchHit>> {
    let mut hits = Vec::new();
    if limit == 0 || query.finds_nothing() {
        return Ok(hits);
    }
    let tsquery = query.tsquery();
    let sql = candidates_sql(tsquery.is_some(), scope.session.is_some(), scope.root.is_some());
    let roles: Vec<String> = scope.roles.iter().map(ToString::to_string).collect();
    let root: Option<&[u8]> = scope.root.as_deref().map(str::as_bytes);
    // Pages grow fourfold: a query whose candidates the decision mostly
    // rejects reads a few pages, not many.
    let mut page = i64::try_from(limit.saturating_mul(2).clamp(64, 2000)).unwrap_or(2000);
    let mut below = i64::MAX;
    loop {
        let rows = c
            .db()
            .rows_planned(
                "search_messages",
                &sql,
                &[
                    text(&tsquery),
                    int(&below),
                    boolean(&scope.include_compacted),
                    texts(&roles),
                    text(&scope.session),
                    bytes(&root),
                    int(&page),
                ],
            )
            .await?;
        for r in &rows {
            let id: i64 = get(r, 0, "message id")?;
            below = id;
            let content = body_string(r, 3, "content").map_err(in_message(id))?;
            let full = body_string(r, 4, "full_content").map_err(in_message(id))?;
            let Some(found) = query.find(&[content.as_deref(), full.as_deref()]) else {
                continue;
            };
            hits.push(hit(
                get(r, 1, "session id")?,
                id,
                role(r, 2, "role").map_err(in_message(id))?,
                format_timestamp(get(r, 5, "created_ms")?),
                found,
            ));
            if hits.len() >= limit {
                break;
            }
        }
        if hits.len() >= limit || rows.len() < usize::try_from(page).unwrap_or(usize::MAX) {
            break;
        }
        page = page.saturating_mul(4).min(8192);
    }
    sort_hits(&mut hits);
    Ok(hits)
}

/// Whether any message waits to be indexed.
pub(crate) async fn has_unindexed(c: &Conn) -> Result<bool> {
    let row =
        c.db().one("search index state", "SELECT EXISTS (SELECT 1 FROM kp.messages WHERE search IS NULL)", &[]).await?;
    Ok(get(&row, 0, "search index state")?)
}

/// Indexes up to [`CATCH_UP_BATCH`] messages not indexed yet above id
/// `after` (oldest first) in one transaction, skipping rows another
/// transaction holds; returns how many rows it took and the last id. A
/// message whose text does not decode (a body that does not unpack:
/// `Corrupt`, as every read of it) stays unindexed: always a candidate,
/// never in the way of the rows after it.
pub(crate) async fn catch_up(c: &mut Conn, after: i64) -> Result<(usize, i64)> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let rows = db
        .rows(
            "indexing messages for search",
            &format!(
                "SELECT m.id, {CONTENT}, {FULL_CONTENT} FROM kp.messages m WHERE m.search IS NULL AND m.id > $2
                 ORDER BY m.id LIMIT $1 FOR NO KEY UPDATE OF m SKIP LOCKED"
            ),
            &[int(&CATCH_UP_BATCH), int(&after)],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut terms = Vec::with_capacity(rows.len());
    let mut last = after;
    for r in &rows {
        let id: i64 = get(r, 0, "message id")?;
        last = id;
        match (body_string(r, 1, "content"), body_string(r, 2, "full_content")) {
            (Ok(content), Ok(full)) => {
                ids.push(id);
                terms.push(tsvector(&[content.as_deref(), full.as_deref()]));
            }
            _ => tracing::debug!(message = id, "a message whose text does not decode stays out of the search index"),
        }
    }
    if !ids.is_empty() {
        db.execute(
            "indexing messages for search",
            "UPDATE kp.messages m SET search = CAST(t.terms AS tsvector)
             FROM unnest($1::BIGINT[], $2::TEXT[]) AS t(id, terms)
             WHERE m.id = t.id",
            &[ints(&ids), texts(&terms)],
        )
        .await?;
    }
    tx.commit().await.map_err(|e| crate::error::classify(e, "indexing messages for search"))?;
    Ok((rows.len(), last))
}

impl crate::PostgresStore {
    /// [`Search::search_messages`](koda_persistence_api::Search::search_messages):
    /// indexes what was not indexed yet (so the index, not the rows
    /// without one, answers), then searches.
    pub(crate) async fn search(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        let (query, scope) = (&Query::parse(query)?, &ScopeBuf::new(scope)?);
        let limit = hit_limit(limit);
        if self.with_client(|c| async move { has_unindexed(&c).await }).await? {
            self.index_unindexed().await;
        }
        self.with_client(|c| async move { search(&c, query, scope, limit).await }).await
    }

    /// Indexes every message not indexed yet, one [`CATCH_UP_BATCH`] per
    /// transaction, then, when that was at least [`ANALYZE_AFTER`] rows,
    /// refreshes the planner's statistics of `messages` (a bulk import
    /// indexed at once leaves them stale, and a stale estimate of a
    /// common word's rows sorts all of them instead of reading the newest
    /// few; a role that does not own the table is only warned by the
    /// server). A failure (a read-only standby, a role without `UPDATE`)
    /// only leaves the rows unindexed, which searches still find: it is
    /// logged, not returned.
    pub(crate) async fn index_unindexed(&self) {
        let (mut indexed, mut after) = (0usize, 0i64);
        loop {
            match self.with_client(|mut c| async move { catch_up(&mut c, after).await }).await {
                Ok((n, last)) => {
                    indexed += n;
                    after = last;
                    if n < usize::try_from(CATCH_UP_BATCH).unwrap_or(usize::MAX) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not bring the search index up to date; searches still find every message");
                    break;
                }
            }
        }
        if indexed >= ANALYZE_AFTER {
            let analyzed = self
                .with_client(|c| async move {
                    c.db().batch("refreshing the statistics of messages", "ANALYZE kp.messages").await
                })
                .await;
            if let Err(e) = analyzed {
                tracing::debug!(error = %e, "could not analyze messages after indexing them");
            }
        }
    }
}

#[async_trait::async_trait]
impl Search for PostgresStore {
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        self.search(query, scope, limit).await
    }
}
