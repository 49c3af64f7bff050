//! [`Checked`] for the [`Rewrite`] capability.

use std::collections::BTreeSet;

use anyhow::Result;

use super::Checked;
use crate::args::{holdable, session_not_found};
use crate::error::PersistenceError;
use crate::rewrite::{Rewrite, SessionText};

/// Each message id at least 1 and given once, each metadata key once.
fn check_text(text: &SessionText) -> Result<(), PersistenceError> {
    let mut ids = BTreeSet::new();
    for m in &text.messages {
        if m.id < 1 {
            return Err(PersistenceError::InvalidInput(format!("message id {}: ids start at 1", m.id)));
        }
        if !ids.insert(m.id) {
            return Err(PersistenceError::InvalidInput(format!("message {} is given twice", m.id)));
        }
    }
    let mut keys = BTreeSet::new();
    for e in &text.metadata {
        if !keys.insert(e.key.as_str()) {
            return Err(PersistenceError::InvalidInput(format!("metadata key {:?} is given twice", e.key)));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl<P: Rewrite> Rewrite for Checked<P> {
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        check_text(text)?;
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.rewrite_session(session_id, text).await
    }

    async fn reclaim(&self) -> Result<String> {
        self.inner.reclaim().await
    }
}
