//! Large outputs stored once: every body by its address, with its reference count.

use koda_persistence_api::Message;
use koda_persistence_api::bodies::{BodyField, BodyHash, BodyStats, body_hash, is_body};
use std::collections::HashMap;
use std::sync::Arc;

/// Every body by its address, with the number of message fields that
/// refer to it; a body whose count reaches 0 is dropped at once.
#[derive(Debug, Default)]
pub(crate) struct Bodies {
    pub(crate) map: HashMap<BodyHash, (Arc<str>, u64)>,
}

/// A message field held as a body.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) hash: BodyHash,
    pub(crate) text: Arc<str>,
}

/// The bodies of a row, by [`FIELDS`] position.
pub(crate) type RowBodies = [Option<Body>; 3];

/// The fields that may be bodies, in [`RowBodies`] order.
pub(crate) const FIELDS: [BodyField; 3] = [BodyField::Content, BodyField::FullContent, BodyField::ToolCalls];

pub(crate) fn field_mut(m: &mut Message, field: BodyField) -> &mut Option<String> {
    match field {
        BodyField::Content => &mut m.content,
        BodyField::FullContent => &mut m.full_content,
        BodyField::ToolCalls => &mut m.tool_calls,
    }
}

impl Bodies {
    /// Moves every field of `m` that is a body into the store (one more
    /// reference each); `m` keeps `None` there.
    pub(crate) fn intern(&mut self, m: &mut Message) -> RowBodies {
        let role = m.role;
        FIELDS.map(|field| {
            let slot = field_mut(m, field);
            let text = slot.take_if(|v| is_body(&role, field, v))?;
            Some(self.add(text))
        })
    }

    /// One more reference to `text`'s body.
    pub(crate) fn add(&mut self, text: String) -> Body {
        let hash = body_hash(&text);
        let entry = self.map.entry(hash).or_insert_with(|| (Arc::from(text), 0));
        entry.1 += 1;
        Body { hash, text: entry.0.clone() }
    }

    /// One reference fewer to `body`; the body goes with its last one.
    pub(crate) fn release(&mut self, body: &Body) {
        if let Some(entry) = self.map.get_mut(&body.hash) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.map.remove(&body.hash);
            }
        }
    }

    /// What the bodies hold (memory keeps them unpacked: stored bytes are
    /// their text bytes).
    pub(crate) fn stats(&self) -> BodyStats {
        let mut stats = BodyStats::default();
        for (text, refs) in self.map.values() {
            let len = text.len() as u64;
            stats.add_body(len, len, *refs);
        }
        stats
    }
}
