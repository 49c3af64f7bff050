//! Search: a scan of every message under the store's one lock, newest id
//! first, each decided by [`Query::find`].

use anyhow::Result;
use koda_persistence_api::Search;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::bodies::BodyField;
use koda_persistence_api::search::{Query, ScopeBuf, SearchHit, SearchScope, hit, hit_limit, sort_hits};

use crate::MemoryStore;

/// The hits of `query` in `scope` (see [`koda_persistence_api::search`]).
pub(crate) fn search_messages(
    store: &MemoryStore,
    query: &str,
    scope: &SearchScope<'_>,
    limit: usize,
) -> Result<Vec<SearchHit>> {
    let parsed = Query::parse(query)?;
    let scope = ScopeBuf::new(scope)?;
    let limit = hit_limit(limit);
    let mut hits = Vec::new();
    if parsed.finds_nothing() {
        return Ok(hits);
    }
    let st = store.lock();
    for (id, row) in st.messages.iter().rev() {
        if hits.len() >= limit {
            break;
        }
        let m = &row.message;
        if !scope.admits(m.role, row.compacted_ms.is_some()) {
            continue;
        }
        let Some(session) = st.sessions.get(&m.session_id) else {
            continue;
        };
        if !scope.admits_session(&m.session_id, session.project_root.as_deref()) {
            continue;
        }
        let fields = [row.text(BodyField::Content), row.text(BodyField::FullContent)];
        if let Some(found) = parsed.find(&fields) {
            hits.push(hit(m.session_id.clone(), *id, m.role, format_timestamp(row.created_ms), found));
        }
    }
    sort_hits(&mut hits);
    Ok(hits)
}

#[async_trait::async_trait]
impl Search for MemoryStore {
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        search_messages(self, query, scope, limit)
    }
}
