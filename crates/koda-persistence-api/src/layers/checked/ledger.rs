//! [`Checked`] for the [`Ledger`] capability.

use anyhow::Result;

use super::Checked;
use crate::args::check_time;
use crate::error::PersistenceError;
use crate::ledger::{Ledger, UsageQuery, UsageRow};

#[async_trait::async_trait]
impl<P: Ledger> Ledger for Checked<P> {
    async fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
        check_time("since", query.since_ms)?;
        check_time("until", query.until_ms)?;
        if query.since_ms > query.until_ms {
            return Err(PersistenceError::InvalidInput(format!(
                "usage since {} is after until {}",
                query.since_ms, query.until_ms
            ))
            .into());
        }
        query.root()?;
        self.inner.usage(query).await
    }
}
