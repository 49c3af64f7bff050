//! The store's layout: the maps and sets that play the tables and indexes
//! of a database, behind the store's one mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::bodies::Bodies;
use crate::bodies::FIELDS;
use crate::bodies::RowBodies;
use crate::bodies::field_mut;
use koda_persistence_api::Message;
use koda_persistence_api::backend::UsageTally;
use koda_persistence_api::bodies::{BodyField, is_body};
use koda_persistence_api::ledger::{LedgerSums, day_of, ledger_agent};
use koda_persistence_api::trash::{DeletedSession, purge_at_ms};

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) next_message_id: i64,
    pub(crate) next_session_seq: u64,
    pub(crate) sessions: HashMap<String, Session>,
    /// Every message by id (ids only grow, so inserts append to the tree).
    pub(crate) messages: BTreeMap<i64, Row>,
    /// Ids of all user messages, for `recent_user_messages`.
    pub(crate) user_ids: BTreeSet<i64>,
    /// `(compacted_at, id)` of every compacted message.
    pub(crate) compacted: BTreeSet<(i64, i64)>,
    /// Session ids by root (`None`: root-less), newest first, so a listing
    /// costs O(limit), not O(sessions).
    pub(crate) by_root: HashMap<Option<String>, BTreeSet<Listed>>,
    /// Large outputs, stored once.
    pub(crate) bodies: Bodies,
    /// Deleted sessions in their grace period, by id: out of every map
    /// above but `bodies`, whose references they keep.
    pub(crate) trash: HashMap<String, Trashed>,
    /// Store-wide settings (`Settings`).
    pub(crate) settings: BTreeMap<String, String>,
    /// The usage ledger: `(session, day, agent)` → `(root, sums)`.
    pub(crate) ledger: BTreeMap<(String, i64, String), (Option<String>, LedgerSums)>,
}

/// A session's place in its root's listing: newest first, ties by the
/// later creation.
pub(crate) type Listed = (std::cmp::Reverse<i64>, std::cmp::Reverse<u64>, String);

impl State {
    /// Counts one inserted message in the ledger (koda's inserts and
    /// imports; never a fork or a restore).
    pub(crate) fn count(&mut self, session_id: &str, created_ms: i64, agent: Option<&str>, counters: [Option<i64>; 5]) {
        let root = self.sessions.get(session_id).and_then(|s| s.project_root.clone());
        let key = (session_id.to_owned(), day_of(created_ms), ledger_agent(agent).to_owned());
        let slot = self.ledger.entry(key).or_insert((root, LedgerSums::default()));
        slot.1.add(&LedgerSums::of_message(counters));
    }

    pub(crate) fn list(&mut self, root: Option<String>, s: &Session, id: &str) {
        self.by_root.entry(root).or_default().insert(listed(s, id));
    }

    pub(crate) fn unlist(&mut self, s: &Session, id: &str) {
        if let Some(set) = self.by_root.get_mut(&s.project_root) {
            set.remove(&listed(s, id));
            if set.is_empty() {
                self.by_root.remove(&s.project_root);
            }
        }
    }
}

pub(crate) fn listed(s: &Session, id: &str) -> Listed {
    (std::cmp::Reverse(s.created_ms), std::cmp::Reverse(s.seq), id.to_owned())
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) agent_name: String,
    /// `None`: a root-less session (imported from an older koda), listed
    /// under every root.
    pub(crate) project_root: Option<String>,
    pub(crate) created_ms: i64,
    pub(crate) seq: u64,
    pub(crate) last_accessed_ms: Option<i64>,
    pub(crate) title: Option<String>,
    pub(crate) mode: Option<String>,
    /// Message ids in conversation order.
    pub(crate) order: Vec<i64>,
    pub(crate) metadata: HashMap<String, String>,
    /// Usage by agent, kept with every write: reading it (and the total
    /// tokens a listing shows) costs O(agents).
    pub(crate) usage: UsageTally,
}

#[derive(Debug)]
pub(crate) struct Row {
    /// The message, with `None` in each field a body holds.
    pub(crate) message: Message,
    pub(crate) bodies: RowBodies,
    pub(crate) created_ms: i64,
    pub(crate) agent: Option<String>,
    pub(crate) completed_ms: Option<i64>,
    pub(crate) compacted_ms: Option<i64>,
}

impl Row {
    /// The message as stored: its fields with their bodies' text.
    pub(crate) fn message(&self) -> Message {
        let mut m = self.message.clone();
        for (field, body) in FIELDS.iter().zip(&self.bodies) {
            if let Some(body) = body {
                *field_mut(&mut m, *field) = Some(body.text.to_string());
            }
        }
        m
    }

    /// One field's text, inline or from its body.
    pub(crate) fn text(&self, field: BodyField) -> Option<&str> {
        let i = FIELDS.iter().position(|f| *f == field)?;
        match self.bodies.get(i) {
            Some(Some(body)) => Some(&body.text),
            _ => {
                let m = &self.message;
                match field {
                    BodyField::Content => m.content.as_deref(),
                    BodyField::FullContent => m.full_content.as_deref(),
                    BodyField::ToolCalls => m.tool_calls.as_deref(),
                }
            }
        }
    }

    /// Replaces `content` (clear_message_content), releasing its body.
    pub(crate) fn set_content(&mut self, bodies: &mut Bodies, text: &str) {
        self.set_field(bodies, BodyField::Content, text);
    }

    /// Replaces field `field` (clear_message_content, a rewrite): the old
    /// body is released, the new text stored as one when it is a body.
    pub(crate) fn set_field(&mut self, bodies: &mut Bodies, field: BodyField, text: &str) {
        let at = FIELDS.iter().position(|f| *f == field).unwrap_or(0);
        if let Some(old) = self.bodies[at].take() {
            bodies.release(&old);
        }
        let role = self.message.role;
        let slot = field_mut(&mut self.message, field);
        if is_body(&role, field, text) {
            *slot = None;
            self.bodies[at] = Some(bodies.add(text.to_owned()));
        } else {
            *slot = Some(text.to_owned());
        }
    }
}

impl State {
    pub(crate) fn rows<'a>(&'a self, s: &'a Session) -> impl DoubleEndedIterator<Item = &'a Row> + 'a {
        s.order.iter().filter_map(|id| self.messages.get(id))
    }

    pub(crate) fn remove_message(&mut self, id: i64) -> Option<Row> {
        let row = self.take_message(id)?;
        for body in row.bodies.iter().flatten() {
            self.bodies.release(body);
        }
        Some(row)
    }

    /// Takes a message out of every map, its bodies still referenced (for
    /// the trash).
    pub(crate) fn take_message(&mut self, id: i64) -> Option<Row> {
        let row = self.messages.remove(&id)?;
        self.user_ids.remove(&id);
        if let Some(at) = row.compacted_ms {
            self.compacted.remove(&(at, id));
        }
        Some(row)
    }

    /// Puts back a message [`take_message`](Self::take_message) took.
    pub(crate) fn put_message(&mut self, id: i64, row: Row) {
        if row.message.role == koda_persistence_api::Role::User {
            self.user_ids.insert(id);
        }
        if let Some(at) = row.compacted_ms {
            self.compacted.insert((at, id));
        }
        self.messages.insert(id, row);
    }
}

/// A session in the trash: its record and rows exactly as they were.
#[derive(Debug)]
pub(crate) struct Trashed {
    pub(crate) session: Session,
    pub(crate) rows: Vec<(i64, Row)>,
    pub(crate) deleted_ms: i64,
}

impl Trashed {
    pub(crate) fn report(&self, id: &str, days: u32) -> DeletedSession {
        DeletedSession {
            id: id.to_owned(),
            agent_name: self.session.agent_name.clone(),
            project_root: self.session.project_root.clone(),
            title: self.session.title.clone(),
            created_ms: self.session.created_ms,
            message_count: i64::try_from(self.rows.len()).unwrap_or(i64::MAX),
            deleted_ms: self.deleted_ms,
            purge_at_ms: purge_at_ms(self.deleted_ms, days),
        }
    }
}
