//! [`Redacting`] for the [`Rewrite`] capability: new text is redacted as
//! written text is.

use anyhow::Result;

use super::Redacting;
use crate::records::MetadataRecord;
use crate::rewrite::{MessageText, Rewrite, SessionText};

forwarding!(Rewrite {
    fn reclaim(&self) -> Result<String>;
}
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        let text = SessionText {
            title: self.opt(text.title.as_deref()),
            mode: self.opt(text.mode.as_deref()),
            messages: text
                .messages
                .iter()
                .map(|m| MessageText {
                    id: m.id,
                    content: self.opt(m.content.as_deref()),
                    full_content: self.opt(m.full_content.as_deref()),
                    tool_calls: self.calls(m.tool_calls.as_deref()),
                })
                .collect(),
            metadata: text
                .metadata
                .iter()
                .map(|e| MetadataRecord { key: e.key.clone(), value: self.text(&e.value).into_owned() })
                .collect(),
        };
        self.inner.rewrite_session(session_id, &text).await
    }
);
