//! Search over migration 8's index (`messages.search`, a `tsvector` of
//! each message's words under a GIN index; see `migrations/V8__search.sql`).
//! The index narrows a query to candidates, newest first: the messages
//! whose words hold every required word, plus those not indexed yet
//! (`search IS NULL`, which a text change also sets). [`Query::find`]
//! decides each candidate from its stored text, so the index never
//! changes a result. After a search, the rows not indexed yet are indexed
//! in transactions of [`CATCH_UP_BATCH`].

use anyhow::Result;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::search::{
    Query, ScopeBuf, SearchHit, SearchScope, hit, hit_limit, index_terms, sort_hits,
};

use crate::exec::{Conn, Db, boolean, bytes, int, ints, text, texts};
use crate::rows::{body_string, get, in_message, role};

/// How many rows one catch-up transaction indexes.
pub(crate) const CATCH_UP_BATCH: i64 = 500;

/// The lexeme a message too large for a `tsvector` holds instead of its
/// words: no word is `*`, and every indexed search asks for it.
const EVERY_SEARCH: &str = "*";

/// The most bytes of terms a message's `tsvector` holds (PostgreSQL caps
/// a `tsvector` at 1 MiB, positions and headers included).
const MAX_TSVECTOR_TERM_BYTES: usize = 512 * 1024;

/// `content` and `full_content` as a read selects them (inline or body).
const FIELDS: &str = "CASE WHEN m.content_body IS NULL THEN '\\x00'::BYTEA || m.content \
     ELSE '\\x01'::BYTEA || COALESCE((SELECT b.data FROM kp.bodies b WHERE b.hash = m.content_body), ''::BYTEA) END, \
     CASE WHEN m.full_content_body IS NULL THEN '\\x00'::BYTEA || m.full_content \
     ELSE '\\x01'::BYTEA || COALESCE((SELECT b.data FROM kp.bodies b WHERE b.hash = m.full_content_body), ''::BYTEA) END";

/// The terms column value for a message's text: its distinct terms
/// joined by spaces (a term is letters and digits only), or
/// [`EVERY_SEARCH`] when they would not fit a `tsvector`.
fn terms_of(content: Option<&str>, full: Option<&str>) -> String {
    let terms = index_terms(&[content, full]);
    let size: usize = terms.iter().map(|t| t.len() + 8).sum();
    if size > MAX_TSVECTOR_TERM_BYTES {
        EVERY_SEARCH.to_owned()
    } else {
        terms.join(" ")
    }
}

/// The statement that reads one page of candidates, newest first: the
/// index's matches and the rows not indexed yet (`$1` the `tsquery`
/// text) when `indexed`, else every message; of one session when
/// `session`, of one root (and root-less sessions) when `rooted`.
fn candidates_sql(indexed: bool, session: bool, rooted: bool) -> String {
    let mut sql = format!(
        "SELECT m.id, m.session_id, m.role::TEXT, {FIELDS}, m.created_ms
         FROM kp.messages m JOIN kp.sessions s ON s.id = m.session_id
         WHERE m.id < $2 AND ($3 OR m.compacted_ms IS NULL)
           AND (cardinality($4::TEXT[]) = 0 OR m.role::TEXT = ANY($4))"
    );
    if indexed {
        sql.push_str(" AND (m.search @@ CAST($1::TEXT AS tsquery) OR m.search IS NULL)");
    } else {
        sql.push_str(" AND $1::TEXT IS NULL");
    }
    if session {
        sql.push_str(" AND m.session_id = $5");
    } else {
        sql.push_str(" AND $5::TEXT IS NULL");
    }
    if rooted {
        sql.push_str(" AND (s.project_root = $6 OR s.project_root IS NULL)");
    } else {
        sql.push_str(" AND $6::BYTEA IS NULL");
    }
    sql.push_str(" ORDER BY m.id DESC LIMIT $7");
    sql
}

/// The hits: pages of candidates, newest first, until `limit` match.
pub(crate) async fn search(
    c: &Conn,
    query: &Query,
    scope: &ScopeBuf,
    limit: usize,
) -> Result<Vec<SearchHit>> {
    let mut hits = Vec::new();
    if limit == 0 || query.finds_nothing() {
        return Ok(hits);
    }
    let tsquery = query.tsquery().map(|q| format!("({q}) | '{EVERY_SEARCH}'"));
    let sql = candidates_sql(
        tsquery.is_some(),
        scope.session.is_some(),
        scope.root.is_some(),
    );
    let roles: Vec<String> = scope.roles.iter().map(ToString::to_string).collect();
    let root: Option<&[u8]> = scope.root.as_deref().map(str::as_bytes);
    let page = i64::try_from(limit.saturating_mul(2).clamp(64, 2000)).unwrap_or(2000);
    let mut below = i64::MAX;
    loop {
        let rows = c
            .db()
            .rows(
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
    }
    sort_hits(&mut hits);
    Ok(hits)
}

/// Whether any message waits to be indexed.
pub(crate) async fn has_unindexed(c: &Conn) -> Result<bool> {
    let row = c
        .db()
        .one(
            "search index state",
            "SELECT EXISTS (SELECT 1 FROM kp.messages WHERE search IS NULL)",
            &[],
        )
        .await?;
    Ok(get(&row, 0, "search index state")?)
}

/// Indexes up to [`CATCH_UP_BATCH`] messages not indexed yet (oldest
/// first) in one transaction, skipping rows another transaction holds;
/// returns how many it indexed.
pub(crate) async fn catch_up(c: &mut Conn) -> Result<usize> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let rows = db
        .rows(
            "indexing messages for search",
            &format!(
                "SELECT m.id, {FIELDS} FROM kp.messages m WHERE m.search IS NULL
                 ORDER BY m.id LIMIT $1 FOR NO KEY UPDATE OF m SKIP LOCKED"
            ),
            &[int(&CATCH_UP_BATCH)],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut terms = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = get(r, 0, "message id")?;
        let content = body_string(r, 1, "content").map_err(in_message(id))?;
        let full = body_string(r, 2, "full_content").map_err(in_message(id))?;
        ids.push(id);
        terms.push(terms_of(content.as_deref(), full.as_deref()));
    }
    if !ids.is_empty() {
        db.execute(
            "indexing messages for search",
            "UPDATE kp.messages m SET search = array_to_tsvector(string_to_array(t.terms, ' '))
             FROM unnest($1::BIGINT[], $2::TEXT[]) AS t(id, terms)
             WHERE m.id = t.id",
            &[ints(&ids), texts(&terms)],
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|e| crate::error::classify(e, "indexing messages for search"))?;
    Ok(ids.len())
}

impl crate::PostgresStore {
    /// [`Import::search_messages`](koda_persistence_api::Import::search_messages):
    /// searches, then indexes what was not indexed yet.
    pub(crate) async fn search(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        let (query, scope) = (&Query::parse(query)?, &ScopeBuf::new(scope)?);
        let limit = hit_limit(limit);
        let (hits, unindexed) = self
            .with_client(|c| async move {
                let hits = search(&c, query, scope, limit).await?;
                Ok((hits, has_unindexed(&c).await?))
            })
            .await?;
        if unindexed {
            self.index_unindexed().await;
        }
        Ok(hits)
    }

    /// Indexes every message not indexed yet, one [`CATCH_UP_BATCH`] per
    /// transaction. A failure (a read-only standby, a role without
    /// `UPDATE`) only leaves the rows unindexed, which searches still
    /// find: it is logged, not returned.
    pub(crate) async fn index_unindexed(&self) {
        loop {
            match self
                .with_client(|mut c| async move { catch_up(&mut c).await })
                .await
            {
                Ok(n) if n < usize::try_from(CATCH_UP_BATCH).unwrap_or(usize::MAX) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not bring the search index up to date; searches still find every message");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_too_many_for_a_tsvector_ask_for_every_search() {
        assert_eq!(terms_of(Some("b a"), Some("A c")), "a b c");
        assert_eq!(terms_of(None, None), "");
        let many: String = (0..100_000).map(|i| format!("w{i} ")).collect();
        assert_eq!(terms_of(Some(&many), None), EVERY_SEARCH);
    }
}
