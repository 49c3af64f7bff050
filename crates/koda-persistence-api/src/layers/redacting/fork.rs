//! [`Redacting`] for the [`Fork`] capability: a fork copies what is stored,
//! already redacted.

use anyhow::Result;

use super::Redacting;
use crate::fork::Fork;

forwarding!(Fork {
    fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String>;
});
