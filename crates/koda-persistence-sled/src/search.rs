//! Search: a scan of the `I` index (message ids, newest first), each
//! message in scope read with its bodies and decided by [`Query::find`].
//! sled keeps no word index: a search reads until `limit` messages match,
//! or to the oldest message.

use koda_persistence_api::Search;
use std::collections::HashMap;

use crate::db::Tree;
use anyhow::Result;
use koda_persistence_api::SearchScope;
use koda_persistence_api::backend::format_timestamp;
use koda_persistence_api::search::{Query, ScopeBuf, SearchHit, hit, hit_limit, sort_hits};

use crate::SledStore;
use crate::bodies::resolve;
use crate::keys;
use crate::queries::{as_u64, get_session};
use crate::rows::{role_of, session_of};

/// The hits of `query` in `scope`, at most `limit` (already bounded).
pub(crate) fn search(db: &Tree, query: &Query, scope: &ScopeBuf, limit: usize) -> Result<Vec<SearchHit>> {
    let mut hits = Vec::new();
    if limit == 0 || query.finds_nothing() {
        return Ok(hits);
    }
    // Whether each session met so far is in scope.
    let mut sessions: HashMap<String, bool> = HashMap::new();
    for kv in db.index_scan([keys::BY_ID]).rev() {
        if hits.len() >= limit {
            break;
        }
        let (_, key) = kv?;
        let Some(sid) = session_of(&key) else {
            continue;
        };
        if scope.session.as_ref().is_some_and(|s| *s != sid) {
            continue;
        }
        let admitted = match sessions.get(&sid) {
            Some(&a) => a,
            None => {
                let a = match get_session(db, &sid)? {
                    Some(s) => {
                        let rootless = db.has(keys::rootless(as_u64(s.created_ms), s.seq))?;
                        let root = (!rootless).then_some(s.project_root.as_str());
                        scope.admits_session(&sid, root)
                    }
                    None => false,
                };
                sessions.insert(sid.clone(), a);
                a
            }
        };
        if !admitted {
            continue;
        }
        let Some(m) = db.message(&key)? else { continue };
        let role = role_of(m.role)?;
        if !scope.admits(role, m.compacted_ms.is_some()) {
            continue;
        }
        let m = resolve(db, m)?;
        if let Some(found) = query.find(&[m.content.as_deref(), m.full_content.as_deref()]) {
            hits.push(hit(sid, i64::try_from(m.id).unwrap_or(i64::MAX), role, format_timestamp(m.created_ms), found));
        }
    }
    sort_hits(&mut hits);
    Ok(hits)
}

#[async_trait::async_trait]
impl Search for SledStore {
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        let (query, scope) = (Query::parse(query)?, ScopeBuf::new(scope)?);
        self.read(move |db| search(db, &query, &scope, hit_limit(limit))).await
    }
}
