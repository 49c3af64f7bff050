//! [`Redacting`] for the [`Ledger`] capability: it writes no text.

use anyhow::Result;

use super::Redacting;
use crate::ledger::{Ledger, UsageQuery, UsageRow};

forwarding!(Ledger {
    fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>>;
});
