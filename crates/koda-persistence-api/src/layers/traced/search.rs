//! [`Traced`] for the [`Search`] capability.

use anyhow::Result;

use super::Traced;
use crate::search::{Search, SearchHit, SearchScope};

traced!(Search {
    fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize)
        -> Result<Vec<SearchHit>> => scope.session;
});
