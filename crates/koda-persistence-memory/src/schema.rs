//! The store's layout: the maps and sets that play the tables and indexes
//! of a database, behind the store's one mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use koda_persistence_api::Message;
use koda_persistence_api::backend::UsageTally;

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
}

/// A session's place in its root's listing: newest first, ties by the
/// later creation.
pub(crate) type Listed = (std::cmp::Reverse<i64>, std::cmp::Reverse<u64>, String);

impl State {
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
    (
        std::cmp::Reverse(s.created_ms),
        std::cmp::Reverse(s.seq),
        id.to_owned(),
    )
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
    pub(crate) message: Message,
    pub(crate) created_ms: i64,
    pub(crate) agent: Option<String>,
    pub(crate) completed_ms: Option<i64>,
    pub(crate) compacted_ms: Option<i64>,
}

impl State {
    pub(crate) fn rows<'a>(
        &'a self,
        s: &'a Session,
    ) -> impl DoubleEndedIterator<Item = &'a Row> + 'a {
        s.order.iter().filter_map(|id| self.messages.get(id))
    }

    pub(crate) fn remove_message(&mut self, id: i64) -> Option<Row> {
        let row = self.messages.remove(&id)?;
        self.user_ids.remove(&id);
        if let Some(at) = row.compacted_ms {
            self.compacted.remove(&(at, id));
        }
        Some(row)
    }
}
