//! [`Traced`] for the [`Search`] capability.

use anyhow::Result;

use super::Traced;
use crate::search::Search;
use crate::search::{SearchHit, SearchScope};

#[async_trait::async_trait]
impl<P: Search> Search for Traced<P> {
    async fn search_messages(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        self.call(
            "search_messages",
            scope.session,
            self.inner.search_messages(query, scope, limit),
        )
        .await
    }
}
