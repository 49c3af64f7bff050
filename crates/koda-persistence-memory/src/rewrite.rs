//! Stored text replaced in place: the Rewrite capability.

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::bodies::BodyField;
use koda_persistence_api::rewrite::{Rewrite, SessionText};

use crate::MemoryStore;

#[async_trait::async_trait]
impl Rewrite for MemoryStore {
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let s = st.sessions.get_mut(session_id).ok_or_else(|| session_not_found(session_id))?;
        // Every id checked before anything changes: all or nothing.
        for m in &text.messages {
            if st.messages.get(&m.id).is_none_or(|row| row.message.session_id != session_id) {
                return Err(PersistenceError::InvalidInput(format!(
                    "message {} is not a message of session {session_id}",
                    m.id
                ))
                .into());
            }
        }
        if let Some(title) = &text.title {
            s.title = Some(title.clone());
        }
        if let Some(mode) = &text.mode {
            s.mode = Some(mode.clone());
        }
        for e in &text.metadata {
            s.metadata.insert(e.key.clone(), e.value.clone());
        }
        for m in &text.messages {
            let Some(row) = st.messages.get_mut(&m.id) else { continue };
            for (field, value) in [
                (BodyField::Content, &m.content),
                (BodyField::FullContent, &m.full_content),
                (BodyField::ToolCalls, &m.tool_calls),
            ] {
                if let Some(v) = value {
                    row.set_field(&mut st.bodies, field, v);
                }
            }
        }
        Ok(())
    }

    async fn reclaim(&self) -> Result<String> {
        Ok("memory: a replaced value is dropped at once; nothing to reclaim".to_owned())
    }
}
