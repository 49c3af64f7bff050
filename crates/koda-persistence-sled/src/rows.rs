//! Values: one version byte, then the record in postcard. A reader refuses a
//! version it does not know (`Corrupt`), so the layout can evolve. Session
//! records are at format 2 (usage by agent added); opening a store an
//! earlier build wrote rewrites its format-1 session records once
//! ([`crate::schema::upgrade`]). The stored records are named `Stored…`:
//! the API's `SessionRecord` and `MessageRecord` are the export format.

use koda_persistence_api::backend::{ExactUsage, UsageTally, format_timestamp};
use koda_persistence_api::bodies::BodyHash;
use koda_persistence_api::{Message, PersistenceError, Role};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The value format this build writes (session records: [`SESSION_VERSION`]).
pub(crate) const VERSION: u8 = 1;

/// The value format of message records: 2 adds `bodies`. Format 1
/// (earlier builds) is still read, as a message without bodies.
pub(crate) const MESSAGE_VERSION: u8 = 2;

/// The format of session records: 2 since usage by agent is kept in them.
pub(crate) const SESSION_VERSION: u8 = 2;

/// A session as format 1 stored it (earlier builds), read only to upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSessionV1 {
    pub agent_name: String,
    pub project_root: String,
    pub created_ms: i64,
    pub seq: u64,
    pub last_accessed_ms: Option<i64>,
    pub title: Option<String>,
    pub mode: Option<String>,
    pub message_count: i64,
    pub total_tokens: i128,
    pub next_ord: u64,
}

impl StoredSessionV1 {
    /// The format-2 record, with the usage its messages add up to.
    pub(crate) fn upgrade(self, usage: &UsageTally) -> StoredSession {
        StoredSession {
            agent_name: self.agent_name,
            project_root: self.project_root,
            created_ms: self.created_ms,
            seq: self.seq,
            last_accessed_ms: self.last_accessed_ms,
            title: self.title,
            mode: self.mode,
            message_count: self.message_count,
            next_ord: self.next_ord,
            usage: usage.entries().to_vec(),
        }
    }
}

/// A session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub agent_name: String,
    pub project_root: String,
    pub created_ms: i64,
    pub seq: u64,
    pub last_accessed_ms: Option<i64>,
    pub title: Option<String>,
    pub mode: Option<String>,
    pub message_count: i64,
    /// The last position used in the session.
    pub next_ord: u64,
    /// Exact usage by agent ([`UsageTally::entries`]), kept with every write;
    /// the session's total tokens are derived from it.
    pub usage: Vec<(String, ExactUsage)>,
}

impl StoredSession {
    /// The session's usage by agent.
    pub(crate) fn tally(&self) -> UsageTally {
        UsageTally::from_entries(self.usage.iter().cloned())
    }

    /// Replaces the kept usage.
    pub(crate) fn set_tally(&mut self, tally: &UsageTally) {
        self.usage = tally.entries().to_vec();
    }

    /// Counts one more message of this session.
    pub(crate) fn count(&mut self, agent: Option<&str>, counters: [Option<i64>; 5]) {
        let mut t = self.tally();
        t.add(agent, counters);
        self.set_tally(&t);
    }

    /// Uncounts a message of this session that is going.
    pub(crate) fn uncount(&mut self, agent: Option<&str>, counters: [Option<i64>; 5]) {
        let mut t = self.tally();
        t.remove(agent, counters);
        self.set_tally(&t);
    }
}

/// A message, as format 2 stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub id: u64,
    pub role: u8,
    pub content: Option<String>,
    pub full_content: Option<String>,
    pub tool_calls: Option<String>,
    pub tool_call_id: Option<String>,
    pub usage: Option<[i64; 5]>,
    pub agent_name: Option<String>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    pub compacted_ms: Option<i64>,
    /// The address of the body holding `content`, `full_content` and
    /// `tool_calls` (in that order) when one does; that field is then
    /// `None` here. See `keys::body`.
    pub bodies: [Option<BodyHash>; 3],
}

/// A message as format 1 stored it (no bodies).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredMessageV1 {
    pub id: u64,
    pub role: u8,
    pub content: Option<String>,
    pub full_content: Option<String>,
    pub tool_calls: Option<String>,
    pub tool_call_id: Option<String>,
    pub usage: Option<[i64; 5]>,
    pub agent_name: Option<String>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    pub compacted_ms: Option<i64>,
}

impl From<StoredMessageV1> for StoredMessage {
    fn from(m: StoredMessageV1) -> Self {
        StoredMessage {
            id: m.id,
            role: m.role,
            content: m.content,
            full_content: m.full_content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            usage: m.usage,
            agent_name: m.agent_name,
            created_ms: m.created_ms,
            completed_ms: m.completed_ms,
            compacted_ms: m.compacted_ms,
            bodies: [None; 3],
        }
    }
}

impl StoredMessage {
    /// The text fields that may be bodies, in `bodies` order.
    pub(crate) fn fields_mut(&mut self) -> [&mut Option<String>; 3] {
        [&mut self.content, &mut self.full_content, &mut self.tool_calls]
    }
}

/// A counter an imported row of an older koda never had (counters are
/// never negative, so no real value collides): stored in `usage` beside
/// the ones it had, read back as `None`.
pub(crate) const UNSET: i64 = i64::MIN;

impl StoredMessage {
    /// The five counters, `None` where unset.
    pub(crate) fn counters(&self) -> [Option<i64>; 5] {
        self.usage.map_or([None; 5], |u| u.map(|c| (c != UNSET).then_some(c)))
    }
}

/// `usage` for five counters: `None` when none is set.
pub(crate) fn usage_of(counters: [Option<i64>; 5]) -> Option<[i64; 5]> {
    counters.iter().any(Option::is_some).then(|| counters.map(|c| c.unwrap_or(UNSET)))
}

pub(crate) fn role_byte(role: Role) -> u8 {
    match role {
        Role::System => 0,
        Role::User => 1,
        Role::Assistant => 2,
        Role::Tool => 3,
    }
}

pub(crate) fn role_of(b: u8) -> Result<Role, PersistenceError> {
    match b {
        0 => Ok(Role::System),
        1 => Ok(Role::User),
        2 => Ok(Role::Assistant),
        3 => Ok(Role::Tool),
        other => Err(PersistenceError::Corrupt(format!("stored message has unknown role code {other}"))),
    }
}

/// Version byte + postcard.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PersistenceError> {
    encode_as(VERSION, value)
}

/// A session record: [`SESSION_VERSION`] + postcard.
pub(crate) fn encode_session(value: &StoredSession) -> Result<Vec<u8>, PersistenceError> {
    encode_as(SESSION_VERSION, value)
}

fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, PersistenceError> {
    let mut out = vec![version];
    let body = postcard::to_allocvec(value)
        .map_err(|e| PersistenceError::InvalidInput(format!("cannot encode a record: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the version byte and decodes; anything else is `Corrupt`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PersistenceError> {
    decode_as(VERSION, bytes, what)
}

/// A session record of [`SESSION_VERSION`]; anything else is `Corrupt`.
pub(crate) fn decode_session(bytes: &[u8], what: &str) -> Result<StoredSession, PersistenceError> {
    decode_as(SESSION_VERSION, bytes, what)
}

/// A session record an earlier build wrote (format 1), `None` for any other.
pub(crate) fn decode_session_v1(bytes: &[u8], what: &str) -> Result<Option<StoredSessionV1>, PersistenceError> {
    match bytes.first() {
        Some(&VERSION) => decode_as(VERSION, bytes, what).map(Some),
        _ => Ok(None),
    }
}

fn decode_as<T: DeserializeOwned>(version: u8, bytes: &[u8], what: &str) -> Result<T, PersistenceError> {
    match bytes.split_first() {
        Some((v, body)) if *v == version => {
            postcard::from_bytes(body).map_err(|e| PersistenceError::Corrupt(format!("cannot decode {what}: {e}")))
        }
        Some((v, _)) => {
            Err(PersistenceError::Corrupt(format!("{what} has value format {v}; this build reads format {version}")))
        }
        None => Err(PersistenceError::Corrupt(format!("{what} is empty"))),
    }
}

/// A message record: [`MESSAGE_VERSION`] + postcard.
pub(crate) fn encode_message(m: &StoredMessage) -> Result<Vec<u8>, PersistenceError> {
    encode_as(MESSAGE_VERSION, m)
}

/// A message record of format 2, or of format 1 (read without bodies).
pub(crate) fn decode_message(v: &[u8]) -> Result<StoredMessage, PersistenceError> {
    match v.first() {
        Some(&VERSION) => decode_as::<StoredMessageV1>(VERSION, v, "a message").map(Into::into),
        _ => decode_as(MESSAGE_VERSION, v, "a message"),
    }
}

pub(crate) fn to_message(session_id: &str, m: &StoredMessage) -> Result<Message, PersistenceError> {
    let [p, c, cr, cc, t] = m.counters();
    Ok(Message {
        id: i64::try_from(m.id).unwrap_or(i64::MAX),
        session_id: session_id.to_owned(),
        role: role_of(m.role)?,
        content: m.content.clone(),
        full_content: m.full_content.clone(),
        tool_calls: m.tool_calls.clone(),
        tool_call_id: m.tool_call_id.clone(),
        prompt_tokens: p,
        completion_tokens: c,
        cache_read_tokens: cr,
        cache_creation_tokens: cc,
        thinking_tokens: t,
        created_at: Some(format_timestamp(m.created_ms)),
    })
}

/// The session id inside a message key (`M` + len + id + ord).
pub(crate) fn session_of(message_key: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(message_key.get(1..5)?.try_into().ok()?) as usize;
    String::from_utf8(message_key.get(5..5 + len)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sled::IVec;

    #[test]
    fn records_round_trip_and_unknown_versions_are_corrupt() {
        let m = StoredMessage {
            id: 7,
            role: role_byte(Role::Tool),
            content: Some("a\0b".into()),
            full_content: None,
            tool_calls: Some(String::new()),
            tool_call_id: None,
            usage: Some([1, 2, 3, 4, i64::MAX]),
            agent_name: Some("é".into()),
            created_ms: 5,
            completed_ms: None,
            compacted_ms: Some(9),
            bodies: [None, Some([7; 32]), None],
        };
        let bytes = encode_message(&m).expect("encodes");
        assert_eq!(bytes[0], MESSAGE_VERSION);
        let back = decode_message(&IVec::from(bytes.clone())).expect("decodes");
        assert_eq!(back.bodies, m.bodies);
        assert_eq!((back.id, back.content.as_deref(), back.usage), (7, Some("a\0b"), Some([1, 2, 3, 4, i64::MAX])));
        let mut future = bytes.clone();
        future[0] = 3;
        assert!(matches!(decode_message(&IVec::from(future)), Err(PersistenceError::Corrupt(_))));
        let old = StoredMessageV1 {
            id: 8,
            role: role_byte(Role::User),
            content: Some("v1".into()),
            full_content: None,
            tool_calls: None,
            tool_call_id: None,
            usage: None,
            agent_name: None,
            created_ms: 1,
            completed_ms: None,
            compacted_ms: None,
        };
        let v1 = decode_message(&IVec::from(encode(&old).expect("encodes"))).expect("reads format 1");
        assert_eq!((v1.id, v1.content.as_deref(), v1.bodies), (8, Some("v1"), [None; 3]));
        assert!(matches!(decode::<StoredMessage>(&[], "m"), Err(PersistenceError::Corrupt(_))));
        assert!(matches!(decode::<StoredMessage>(&[VERSION, 0xff], "m"), Err(PersistenceError::Corrupt(_))));
        for r in Role::ALL {
            assert_eq!(role_of(role_byte(r)), Ok(r));
        }
        assert!(role_of(9).is_err());
    }
}
