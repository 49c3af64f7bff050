//! [`Traced`] for the [`Fork`] capability.

use anyhow::Result;

use super::Traced;
use crate::fork::Fork;

traced!(Fork {
    fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> => Some(session_id);
});
