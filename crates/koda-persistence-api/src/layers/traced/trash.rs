//! [`Traced`] for the [`Trash`] capability.

use anyhow::Result;

use super::Traced;
use crate::trash::{DeletedSession, Trash};

traced!(Trash {
    fn list_deleted(&self) -> Result<Vec<DeletedSession>> => None;
    fn count_deleted(&self) -> Result<usize> => None;
    fn restore_session(&self, session_id: &str) -> Result<()> => Some(session_id);
    fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> => None;
});
