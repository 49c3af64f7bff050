//! Encryption at rest (`key_file=`): how each kind of value is sealed and
//! opened. Only the handle's doors (`crate::db`) call these: a value is
//! read and written through the door of its kind, never as raw bytes.
//!
//! A sealed value is `koda_persistence_api::cipher`'s format around the
//! value an unencrypted store keeps (version byte and postcard), sealed
//! for its row:
//!
//! | value | associated data | in clear |
//! |---|---|---|
//! | `S` session record (also inside a trash record) | `session`, session id | the key: session id |
//! | `M` message record (also under `Y` in the trash) | `message`, session id, message id | the key: session id and position; `0xE2` and the message id before the sealed record |
//! | `D` metadata value (also under `Z`) | `metadata`, session id, metadata key | the key: session id and metadata key |
//! | `B` body | `body`, its address | the address: an HMAC-SHA256 of the text under a key derived from the store key |
//! | `G` setting | `setting`, its key | the key |
//!
//! Index keys (`I`, `U`, `C`, `R`, `L`) hold ids, times, sequence numbers
//! and project roots, in clear; counters (`N`) are numbers. The key
//! record (`N` `cipher`) holds a random salt and a check value.
//!
//! Whole records are sealed, so a message's role, times and token counts
//! are sealed too, but its id is not (the index needs it), nor its
//! session id and position (the key).

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::bodies::{BodyHash, body_hash, unpack, unpack_checked};
use koda_persistence_api::cipher::aad;

use crate::db::Tree;
use crate::rows::{StoredMessage, StoredSession};
use crate::rows::{decode, decode_message, decode_session, encode, encode_message, encode_session};

/// The first byte of a sealed message value: the message id follows.
const SEALED_MESSAGE: u8 = 0xE2;

fn message_aad(sid: &str, id: u64) -> Vec<u8> {
    aad(&[b"message", sid.as_bytes(), &id.to_be_bytes()])
}

impl Tree {
    fn seal(&self, aad: &[u8], plain: Vec<u8>) -> Result<Vec<u8>, PersistenceError> {
        match &self.cipher {
            Some(c) => c.seal(aad, &plain),
            None => Ok(plain),
        }
    }

    fn open<'v>(
        &self,
        aad: &[u8],
        stored: &'v [u8],
        what: &str,
    ) -> Result<std::borrow::Cow<'v, [u8]>, PersistenceError> {
        match &self.cipher {
            Some(c) => c.open(aad, stored, what).map(Into::into),
            None => Ok(stored.into()),
        }
    }

    /// The `S` value of session `sid`.
    pub(crate) fn seal_session(&self, sid: &str, s: &StoredSession) -> Result<Vec<u8>, PersistenceError> {
        self.seal(&aad(&[b"session", sid.as_bytes()]), encode_session(s)?)
    }

    /// The session `sid`'s record from its `S` value.
    pub(crate) fn open_session(&self, sid: &str, v: &[u8], what: &str) -> Result<StoredSession, PersistenceError> {
        let plain = self.open(&aad(&[b"session", sid.as_bytes()]), v, what)?;
        decode_session(&plain, what)
    }

    /// The value of message `m` to store under `key` (an `M` key).
    pub(crate) fn seal_message(&self, key: &[u8], m: &StoredMessage) -> Result<Vec<u8>> {
        let plain = encode_message(m)?;
        let Some(c) = &self.cipher else {
            return Ok(plain);
        };
        let sid = crate::rows::session_of(key)
            .ok_or_else(|| PersistenceError::Corrupt("a message key is malformed".into()))?;
        let sid = sid.as_str();
        let mut out = vec![SEALED_MESSAGE];
        out.extend_from_slice(&m.id.to_be_bytes());
        out.extend_from_slice(&c.seal(&message_aad(sid, m.id), &plain)?);
        Ok(out)
    }

    /// The message stored under `key` (an `M` or `Y` key) as `v`.
    pub(crate) fn open_message(&self, key: &[u8], v: &[u8]) -> Result<StoredMessage> {
        let Some(c) = &self.cipher else {
            return Ok(decode_message(v)?);
        };
        let corrupt = |why: &str| PersistenceError::Corrupt(format!("a message {why}"));
        let sid = crate::rows::session_of(key).ok_or_else(|| corrupt("key is malformed"))?;
        let (id, sealed) = match v.split_first() {
            Some((&SEALED_MESSAGE, rest)) if rest.len() >= 8 => {
                let (id, sealed) = rest.split_at(8);
                let id: [u8; 8] = id.try_into().map_err(|_| corrupt("id is cut short"))?;
                (u64::from_be_bytes(id), sealed)
            }
            _ => return Err(corrupt("is not sealed, in a store whose values all are").into()),
        };
        let what = format!("message {id} of session {sid:?}");
        let plain = c.open(&message_aad(&sid, id), sealed, &what)?;
        let m = decode_message(&plain)?;
        if m.id != id {
            return Err(PersistenceError::Corrupt(format!("{what} holds message {}", m.id)).into());
        }
        Ok(m)
    }

    /// The `D` value of metadata `key` of session `sid`.
    pub(crate) fn seal_value(&self, sid: &str, key: &str, value: &str) -> Result<Vec<u8>, PersistenceError> {
        let aad = aad(&[b"metadata", sid.as_bytes(), key.as_bytes()]);
        self.seal(&aad, encode(&value.to_owned())?)
    }

    /// Metadata `key` of session `sid` from its `D` value.
    pub(crate) fn open_value(&self, sid: &str, key: &str, v: &[u8]) -> Result<String, PersistenceError> {
        let aad = aad(&[b"metadata", sid.as_bytes(), key.as_bytes()]);
        let what = format!("metadata {key:?} of session {sid:?}");
        decode::<String>(&self.open(&aad, v, &what)?, "a metadata value")
    }

    /// The `G` value of setting `key`.
    pub(crate) fn seal_setting(&self, key: &str, value: &str) -> Result<Vec<u8>, PersistenceError> {
        self.seal(&aad(&[b"setting", key.as_bytes()]), encode(&value.to_owned())?)
    }

    /// Setting `key` from its `G` value.
    pub(crate) fn open_setting(&self, key: &str, v: &[u8]) -> Result<String, PersistenceError> {
        let plain = self.open(&aad(&[b"setting", key.as_bytes()]), v, &format!("setting {key:?}"))?;
        decode::<String>(&plain, "a setting value")
    }

    /// The address of body `text`: keyed in an encrypted store.
    pub(crate) fn address(&self, text: &str) -> BodyHash {
        match &self.cipher {
            Some(c) => c.address(text),
            None => body_hash(text),
        }
    }

    /// The `B` value of the body at `hash`, packed as `packed`.
    pub(crate) fn seal_body(&self, hash: &BodyHash, packed: Vec<u8>) -> Result<Vec<u8>, PersistenceError> {
        self.seal(&aad(&[b"body", hash]), packed)
    }

    /// The packed body at `hash` from its `B` value.
    pub(crate) fn open_body<'v>(
        &self,
        hash: &BodyHash,
        v: &'v [u8],
    ) -> Result<std::borrow::Cow<'v, [u8]>, PersistenceError> {
        let what = format!("body {}", koda_persistence_api::bodies::body_name(hash));
        self.open(&aad(&[b"body", hash]), v, &what)
    }

    /// The text of the body stored at `hash` as `v`, checked against its
    /// address.
    ///
    /// # Errors
    /// `Corrupt` for a body that does not open, unpack or match.
    pub(crate) fn check_body(&self, hash: &BodyHash, v: &[u8]) -> Result<String, PersistenceError> {
        if self.cipher.is_none() {
            return unpack_checked(v, hash);
        }
        let text = unpack(&self.open_body(hash, v)?)?;
        if self.address(&text) != *hash {
            return Err(PersistenceError::Corrupt("its text does not match its address".into()));
        }
        Ok(text)
    }
}
