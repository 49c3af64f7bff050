//! [`Redacting`] for the [`Trash`] capability.

use anyhow::Result;

use super::Redacting;
use crate::trash::{DeletedSession, Trash};

forwarding!(Trash {
    fn list_deleted(&self) -> Result<Vec<DeletedSession>>;
    fn count_deleted(&self) -> Result<usize>;
    fn restore_session(&self, session_id: &str) -> Result<()>;
    fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>>;
});
