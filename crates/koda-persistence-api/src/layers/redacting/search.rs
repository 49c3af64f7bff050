//! [`Redacting`] for the [`Search`] capability: what is searched is what
//! was stored, redacted.

use anyhow::Result;

use super::Redacting;
use crate::search::{Search, SearchHit, SearchScope};

forwarding!(Search {
    fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>>;
});
