//! [`Traced`] for the [`Rewrite`] capability.

use anyhow::Result;

use super::Traced;
use crate::rewrite::{Rewrite, SessionText};

traced!(Rewrite {
    fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> => Some(session_id);
    fn reclaim(&self) -> Result<String> => None;
});
