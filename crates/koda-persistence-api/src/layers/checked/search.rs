//! [`Checked`] for the [`Search`] capability.

use anyhow::Result;

use super::Checked;
use crate::args::{holdable, root_to_str};
use crate::search::Search;
use crate::search::{Query, SearchHit, SearchScope};

#[async_trait::async_trait]
impl<P: Search> Search for Checked<P> {
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>> {
        let parsed = Query::parse(query)?;
        if let Some(root) = scope.project_root {
            root_to_str(root)?;
        }
        if parsed.finds_nothing() || limit == 0 || scope.session.is_some_and(|s| !holdable(s)) {
            return Ok(Vec::new());
        }
        self.inner.search_messages(query, scope, limit).await
    }
}
