//! Large outputs stored once: which fields are bodies, their reference counts, and reading them back.

use crate::db::{Tree, Writes};
use crate::keys;
use crate::rows::{StoredMessage, role_of};
use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::bodies::{BodyField, BodyHash, is_body, pack, packed_len, unpack};
use std::collections::HashMap;

/// The fields that may be bodies, in `StoredMessage::bodies` order.
pub(crate) const FIELDS: [BodyField; 3] = [BodyField::Content, BodyField::FullContent, BodyField::ToolCalls];

/// The body reference changes of one write, put into its batch by
/// [`Refs::finish`]: the count (`b`) moves by the sum of the changes, a
/// new body (`B`) is written with its first reference and removed with
/// its last, all in the write's one atomic batch (under the write lock,
/// so no other write reads the counts in between).
#[derive(Default)]
pub(crate) struct Refs {
    changes: HashMap<BodyHash, (i64, Option<Vec<u8>>)>,
}

impl Refs {
    /// Moves every field of `m` that is a body into a body (one more
    /// reference each).
    pub(crate) fn intern(&mut self, db: &Tree, m: &mut StoredMessage) -> Result<()> {
        let role = role_of(m.role)?;
        let mut found = [None, None, None];
        for (i, slot) in m.fields_mut().into_iter().enumerate() {
            let field = FIELDS[i];
            if let Some(text) = slot.take_if(|v| is_body(&role, field, v)) {
                found[i] = Some(text);
            }
        }
        for (i, text) in found.into_iter().enumerate() {
            let Some(text) = text else { continue };
            let hash = db.address(&text);
            let change = self.changes.entry(hash).or_insert((0, None));
            change.0 += 1;
            if change.1.is_none() && !db.has(keys::body(&hash))? {
                change.1 = Some(pack(&text)?);
            }
            m.bodies[i] = Some(hash);
        }
        Ok(())
    }

    /// One reference fewer to each body of `m`.
    pub(crate) fn release(&mut self, m: &StoredMessage) {
        for hash in m.bodies.iter().flatten() {
            self.release_one(*hash);
        }
    }

    pub(crate) fn release_one(&mut self, hash: BodyHash) {
        self.changes.entry(hash).or_insert((0, None)).0 -= 1;
    }

    /// Puts the counts, new bodies and dropped bodies into `w`.
    pub(crate) fn finish(self, db: &Tree, w: &mut Writes) -> Result<()> {
        for (hash, (change, data)) in self.changes {
            if change == 0 {
                continue;
            }
            let now = body_count(db, &hash)?;
            let next = i64::try_from(now).unwrap_or(i64::MAX).saturating_add(change);
            if next <= 0 {
                w.remove(keys::body(&hash));
                w.remove(keys::body_refs(&hash));
            } else {
                w.index(keys::body_refs(&hash), &u64::try_from(next).unwrap_or(0).to_be_bytes()[..]);
                if let Some(packed) = data {
                    w.body(&hash, packed)?;
                }
            }
        }
        Ok(())
    }
}

/// How many message fields refer to the body `hash` (0: no such body).
pub(crate) fn body_count(db: &Tree, hash: &BodyHash) -> Result<u64> {
    Ok(match db.index(keys::body_refs(hash))? {
        Some(v) => u64::from_be_bytes(
            <[u8; 8]>::try_from(&v[..])
                .map_err(|_| PersistenceError::Corrupt("a body reference count is not 8 bytes".into()))?,
        ),
        None => 0,
    })
}

/// `m` with the text of each of its bodies in place, for a read (never
/// written back: writes keep the addresses).
pub(crate) fn resolve(db: &Tree, mut m: StoredMessage) -> Result<StoredMessage> {
    let bodies = m.bodies;
    let id = m.id;
    for (slot, hash) in m.fields_mut().into_iter().zip(bodies) {
        if let Some(hash) = hash {
            let packed = db
                .body(&hash)?
                .ok_or_else(|| PersistenceError::Corrupt(format!("message {id}: a body it refers to is missing")))?;
            *slot = Some(unpack(&packed)?);
        }
    }
    Ok(m)
}

/// The text length of body `hash`, from its frame header.
pub(crate) fn body_len(db: &Tree, hash: &BodyHash) -> Result<usize> {
    let packed =
        db.body(hash)?.ok_or_else(|| PersistenceError::Corrupt("a body a message refers to is missing".into()))?;
    Ok(packed_len(&packed)?)
}
