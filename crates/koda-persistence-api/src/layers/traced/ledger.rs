//! [`Traced`] for the [`Ledger`] capability.

use anyhow::Result;

use super::Traced;
use crate::ledger::{Ledger, UsageQuery, UsageRow};

traced!(Ledger {
    fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>> => None;
});
