//! The context cache a backend keeps for `load_context`: a session's active
//! rows by version, so a turn loop never re-reads its growing history. Pure:
//! no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::context::{ContextRow, View, kept, names_of};
use crate::types::{Message, NewMessage};

/// How many sessions' contexts a store keeps, unless it says otherwise.
pub const DEFAULT_CACHED_SESSIONS: usize = 8;

/// A [`ContextCache`] behind its own lock, as a store shares it between
/// its calls.
#[derive(Debug)]
pub struct SharedContextCache {
    inner: Mutex<ContextCache>,
}

impl Default for SharedContextCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHED_SESSIONS)
    }
}

impl SharedContextCache {
    /// An empty cache of `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(ContextCache::new(capacity)) }
    }

    /// The cache, locked. A lock poisoned by a panic still holds a usable
    /// cache: its methods never stop midway, and a stale entry is caught
    /// by its version anyway.
    pub fn lock(&self) -> MutexGuard<'_, ContextCache> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The context of `session` at `version`: from the cache, or made from
    /// the rows `fetch` reads (at that version or later: a label older than
    /// its rows only costs a re-read) and kept. The lock is not held while
    /// `fetch` runs.
    ///
    /// # Errors
    /// `fetch`'s.
    pub fn load<E>(
        &self,
        session: &str,
        version: i64,
        fetch: impl FnOnce() -> Result<Vec<ContextRow>, E>,
    ) -> Result<Vec<Message>, E> {
        if let Some(context) = self.lock().get(session, version) {
            return Ok(context);
        }
        let rows = fetch()?;
        Ok(self.lock().put(session, version, rows))
    }
}

/// A session's active rows as a backend last read them, with the call ids
/// each assistant names already parsed.
#[derive(Debug, Clone)]
struct CachedSession {
    version: i64,
    rows: Vec<(ContextRow, Vec<String>)>,
    last_used: u64,
}

impl CachedSession {
    fn context(&self) -> Vec<Message> {
        let views: Vec<View<'_>> =
            self.rows.iter().map(|(r, n)| View { message: &r.message, complete: r.complete, names: n }).collect();
        kept(&views).into_iter().zip(&self.rows).filter(|(k, _)| *k).map(|(_, (r, _))| r.message.clone()).collect()
    }
}

/// A cache of sessions' active messages for `load_context`, keyed by a
/// per-session change counter (`version`) that the backend bumps in the same
/// transaction as every write touching the session's messages.
///
/// A load reads the session's version first: when the cache holds that
/// version, the context is computed from memory (no rows are read or
/// decoded, no JSON is parsed); otherwise the backend reads the rows and
/// [`put`](Self::put)s them. The backend's own writes keep a cached session
/// current ([`appended`](Self::appended), [`completed`](Self::completed)),
/// so an agent's turn loop never re-reads its growing history; writes by
/// other processes bump the version and cost one re-read. Pure: no I/O.
#[derive(Debug, Default)]
pub struct ContextCache {
    sessions: HashMap<String, CachedSession>,
    capacity: usize,
    tick: u64,
}

impl ContextCache {
    /// A cache holding at most `capacity` sessions (least recently used
    /// go first).
    pub fn new(capacity: usize) -> Self {
        Self { sessions: HashMap::new(), capacity: capacity.max(1), tick: 0 }
    }

    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The context of `session` if the cache holds exactly `version`.
    pub fn get(&mut self, session: &str, version: i64) -> Option<Vec<Message>> {
        let now = self.touch();
        let entry = self.sessions.get_mut(session).filter(|e| e.version == version)?;
        entry.last_used = now;
        Some(entry.context())
    }

    /// Stores the active rows read at `version` (unless a newer version is
    /// already held) and returns their context.
    pub fn put(&mut self, session: &str, version: i64, rows: Vec<ContextRow>) -> Vec<Message> {
        let now = self.touch();
        let entry = CachedSession {
            version,
            rows: rows
                .into_iter()
                .map(|r| {
                    let n = names_of(&r.message);
                    (r, n)
                })
                .collect(),
            last_used: now,
        };
        let context = entry.context();
        if self.sessions.get(session).is_none_or(|held| held.version < version) {
            self.sessions.insert(session.to_owned(), entry);
            if self.sessions.len() > self.capacity
                && let Some(oldest) = self.sessions.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone())
            {
                self.sessions.remove(&oldest);
            }
        }
        context
    }

    /// Applies an edit made by the write that took `session` to `version`:
    /// only when the cache holds the version just before it; a cache that
    /// missed a write forgets the session instead.
    fn edit(&mut self, session: &str, version: i64, f: impl FnOnce(&mut CachedSession)) {
        match self.sessions.get_mut(session) {
            Some(e) if e.version == version - 1 => {
                f(e);
                e.version = version;
            }
            Some(e) if e.version < version => {
                self.sessions.remove(session);
            }
            _ => {}
        }
    }

    /// After inserting `message` as `id` at `created_ms`, which moved its
    /// session to `version`: the new row joins the cached context (a new
    /// message is never complete), if that session is cached at all.
    pub fn append_new(&mut self, message: &NewMessage, id: i64, created_ms: i64, version: i64) {
        if self.holds(&message.session_id) {
            let row = ContextRow { message: message.to_message(id, created_ms), complete: false };
            self.appended(&message.session_id, version, row);
        }
    }

    /// A message was appended (at the end of conversation order) by the
    /// write that took `session` to `version`.
    pub fn appended(&mut self, session: &str, version: i64, row: ContextRow) {
        self.edit(session, version, |e| {
            let n = names_of(&row.message);
            e.rows.push((row, n));
        });
    }

    /// Message `id` was marked complete by the write that took `session` to
    /// `version`.
    pub fn completed(&mut self, session: &str, version: i64, id: i64) {
        self.edit(session, version, |e| {
            if let Some((r, _)) = e.rows.iter_mut().find(|(r, _)| r.message.id == id) {
                r.complete = true;
            }
        });
    }

    /// Whether `session` is held (so a writer can skip building rows for it).
    pub fn holds(&self, session: &str) -> bool {
        self.sessions.contains_key(session)
    }

    /// Drops `session` (after a write the cache cannot follow).
    pub fn forget(&mut self, session: &str) {
        self.sessions.remove(session);
    }

    /// Takes `session` out, as [`forget`](Self::forget) does, but hands its
    /// rows back instead of freeing them: freeing a long session's rows is
    /// thousands of deallocations (0.6 ms for one of 2,000 messages, measured
    /// on a 2-vCPU VM), which a backend may do after answering its caller.
    pub fn remove(&mut self, session: &str) -> Option<Removed> {
        self.sessions.remove(session).map(Removed)
    }
}

/// A session's cached rows taken out by [`ContextCache::remove`]; dropping
/// it frees them.
#[derive(Debug)]
pub struct Removed(#[allow(dead_code)] CachedSession);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::{calls, complete, msg, passes, result};
    use crate::types::Role;

    fn ids(ms: &[Message]) -> Vec<i64> {
        ms.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_removed_session_is_gone_and_handed_back_once() {
        let mut cache = ContextCache::new(2);
        cache.put("s", 1, complete(vec![msg(1, Role::User)]));
        cache.put("t", 1, complete(vec![msg(2, Role::User)]));
        assert!(cache.remove("s").is_some());
        assert!(!cache.holds("s"));
        assert_eq!(cache.get("s", 1), None);
        assert!(cache.remove("s").is_none(), "nothing left to hand back");
        assert!(cache.holds("t"), "other sessions stay");
    }

    #[test]
    fn the_cache_serves_its_version_and_follows_its_writes() {
        let mut cache = ContextCache::new(2);
        assert_eq!(cache.get("s", 1), None);
        let history = vec![msg(1, Role::User), calls(2, r#"[{"id":"c"}]"#), result(3, "c")];
        let ctx = cache.put("s", 5, complete(history.clone()));
        assert_eq!(ctx, passes(history.clone()));
        assert_eq!(cache.get("s", 5).as_deref(), Some(&ctx[..]));
        assert_eq!(cache.get("s", 6), None, "another version is a miss");

        // Our own append at version 6 keeps the entry current.
        let next = calls(4, r#"[{"id":"d"}]"#);
        cache.appended("s", 6, ContextRow { message: next.clone(), complete: false });
        assert_eq!(ids(&cache.get("s", 6).expect("hit")), [1, 2, 3], "incomplete caller is dropped");
        cache.completed("s", 7, 4);
        assert_eq!(ids(&cache.get("s", 7).expect("hit")), [1, 2, 3], "its call is unanswered");
        cache.appended("s", 8, ContextRow { message: result(5, "d"), complete: false });
        assert_eq!(ids(&cache.get("s", 8).expect("hit")), [1, 2, 3, 4, 5]);

        // A write the cache did not see (version jumped) drops the entry.
        cache.appended("s", 10, ContextRow { message: msg(6, Role::User), complete: false });
        assert!(!cache.holds("s"));

        // An edit the held entry already includes (a reader loaded after the
        // commit) or predates changes nothing.
        cache.put("r", 6, complete(vec![msg(1, Role::User)]));
        cache.appended("r", 6, ContextRow { message: msg(2, Role::User), complete: true });
        cache.appended("r", 4, ContextRow { message: msg(3, Role::User), complete: true });
        assert_eq!(ids(&cache.get("r", 6).expect("kept")), [1]);
        cache.forget("r");

        // An older read never replaces a newer entry.
        cache.put("s", 9, complete(history.clone()));
        cache.put("s", 3, complete(vec![msg(1, Role::User)]));
        assert_eq!(ids(&cache.get("s", 9).expect("kept the newer")), [1, 2, 3]);

        // A newer read replaces an older entry.
        cache.put("q", 1, complete(vec![msg(1, Role::User)]));
        cache.put("q", 2, complete(vec![msg(1, Role::User), msg(2, Role::User)]));
        assert_eq!(ids(&cache.get("q", 2).expect("newer read held")), [1, 2]);
        cache.forget("q");

        // Capacity: the least recently used session goes, round after round.
        let mut lru = ContextCache::new(2);
        lru.put("keep", 1, complete(vec![msg(1, Role::User)]));
        for round in 0..12 {
            let name = format!("s{round}");
            lru.put(&name, 1, complete(vec![msg(1, Role::User)]));
            assert!(lru.get("keep", 1).is_some(), "round {round}: the recently used one stays");
            let next = format!("s{}", round + 1);
            lru.put(&next, 1, complete(vec![msg(1, Role::User)]));
            assert!(!lru.holds(&name), "round {round}: the least recently used one goes");
            assert!(lru.get("keep", 1).is_some() && lru.holds(&next));
            lru.forget(&next);
        }

        // Capacity: the least recently used session goes.
        cache.put("t", 1, complete(vec![msg(1, Role::User)]));
        let _ = cache.get("s", 9);
        cache.put("u", 1, complete(vec![msg(1, Role::User)]));
        assert!(cache.holds("s") && cache.holds("u") && !cache.holds("t"));
        cache.forget("s");
        assert!(!cache.holds("s"));
    }
}
