//! The pure passes behind [`load_context`](crate::Persistence::load_context),
//! and interruption detection. Every backend loads the active rows of a session
//! in conversation order and hands them to [`apply_context_passes`].

use std::collections::{HashMap, HashSet};

use std::sync::{Mutex, MutexGuard};

use crate::types::{INTERRUPTION_PREVIEW_CHARS, InterruptionKind, Message, NewMessage, Role};

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
        Self {
            inner: Mutex::new(ContextCache::new(capacity)),
        }
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

/// One active message as loaded for `load_context`, with whether it is complete
/// (`mark_message_complete` was called, or it was born complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRow {
    /// The message as stored.
    pub message: Message,
    /// Whether the message is complete.
    pub complete: bool,
}

/// `true` when `text` is empty or only Unicode white space.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(char::is_whitespace)
}

/// The tool-call ids an assistant's `tool_calls` JSON names: the string `id`
/// of each object in a JSON array. Unparseable JSON, a non-array, and objects
/// without a string `id` name nothing. Duplicates are kept; callers use sets.
pub fn named_tool_call_ids(tool_calls: &str) -> Vec<String> {
    // Walks the JSON without building a value tree: this runs for every
    // assistant message of every context load.
    let mut de = serde_json::Deserializer::from_str(tool_calls);
    match serde::Deserializer::deserialize_any(&mut de, ids::Calls) {
        Ok(ids) if de.end().is_ok() => ids,
        _ => Vec::new(),
    }
}

mod ids {
    //! Serde visitors that pull the `id` strings out of a tool-call array.

    use std::fmt;

    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// Visitor methods for JSON values that name nothing: the value is
    /// consumed (so parsing goes on) and answered with the empty result.
    macro_rules! names_nothing {
        (scalars) => {
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
        };
        (str) => {
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
        };
        (seq) => {
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Default::default())
            }
        };
        (map) => {
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Default::default())
            }
        };
    }

    /// The top level: an array yields its ids; anything else names nothing.
    pub(super) struct Calls;

    impl<'de> Visitor<'de> for Calls {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a tool-call array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(id) = seq.next_element_seed(Call)? {
                out.extend(id);
            }
            Ok(out)
        }

        names_nothing!(map);
        names_nothing!(str);
        names_nothing!(scalars);
    }

    /// One element: an object's string `id`, or nothing.
    struct Call;

    impl<'de> serde::de::DeserializeSeed<'de> for Call {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Call {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a tool call")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut id = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    // JSON objects may repeat a key; the last one wins, as in serde_json::Value.
                    id = map.next_value_seed(Id)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(id)
        }

        names_nothing!(seq);
        names_nothing!(str);
        names_nothing!(scalars);
    }

    /// An `id` value: a string, or nothing for any other JSON value.
    struct Id;

    impl<'de> serde::de::DeserializeSeed<'de> for Id {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Id {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a tool-call id")
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        names_nothing!(map);
        names_nothing!(seq);
        names_nothing!(scalars);
    }
}

/// FNV-1a: call ids are short strings hashed on every context load, where
/// the default SipHash showed up in profiles. Not exposed to untrusted
/// collision attacks: the sets live for one call over one session's ids.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type IdSet<'a> = HashSet<&'a str, std::hash::BuildHasherDefault<Fnv>>;

/// One row as the passes see it: the message, whether it is complete, and
/// the call ids it names (empty unless it is an assistant with tool calls).
struct View<'a> {
    message: &'a Message,
    complete: bool,
    names: &'a [String],
}

/// The three passes over rows in conversation order; `true` = kept.
///
/// 1. Drop assistant messages that are not complete.
/// 2. Tool-call pairing: drop every assistant message that names an id no
///    remaining tool message answers; then every tool message whose
///    `tool_call_id` is `None` or named by no remaining assistant message.
/// 3. Drop assistant messages without tool calls whose content is `None` or
///    only white space.
fn kept(rows: &[View<'_>]) -> Vec<bool> {
    let mut keep: Vec<bool> = rows
        .iter()
        .map(|r| r.complete || r.message.role != Role::Assistant)
        .collect();
    let answered: IdSet<'_> = rows
        .iter()
        .zip(&keep)
        .filter(|(r, k)| **k && r.message.role == Role::Tool)
        .filter_map(|(r, _)| r.message.tool_call_id.as_deref())
        .collect();
    for (r, k) in rows.iter().zip(keep.iter_mut()) {
        if *k
            && r.message.role == Role::Assistant
            && !r.names.iter().all(|id| answered.contains(id.as_str()))
        {
            *k = false;
        }
    }
    let named: IdSet<'_> = rows
        .iter()
        .zip(&keep)
        .filter(|(r, k)| **k && r.message.role == Role::Assistant)
        .flat_map(|(r, _)| r.names.iter().map(String::as_str))
        .collect();
    for (r, k) in rows.iter().zip(keep.iter_mut()) {
        let m = r.message;
        let orphan = m.role == Role::Tool
            && !m
                .tool_call_id
                .as_deref()
                .is_some_and(|id| named.contains(id));
        let empty = m.role == Role::Assistant
            && m.tool_calls.is_none()
            && m.content.as_deref().is_none_or(is_blank);
        if orphan || empty {
            *k = false;
        }
    }
    keep
}

/// The call ids a message names: parsed from `tool_calls` for assistants.
fn names_of(m: &Message) -> Vec<String> {
    match (&m.role, m.tool_calls.as_deref()) {
        (Role::Assistant, Some(tc)) => named_tool_call_ids(tc),
        _ => Vec::new(),
    }
}

/// The three passes of `load_context`, in order, over the active messages of
/// a session in conversation order (see the trait's `load_context`).
pub fn apply_context_passes(rows: Vec<ContextRow>) -> Vec<Message> {
    let names: Vec<Vec<String>> = rows.iter().map(|r| names_of(&r.message)).collect();
    let views: Vec<View<'_>> = rows
        .iter()
        .zip(&names)
        .map(|(r, n)| View {
            message: &r.message,
            complete: r.complete,
            names: n,
        })
        .collect();
    let keep = kept(&views);
    rows.into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r.message))
        .collect()
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
        let views: Vec<View<'_>> = self
            .rows
            .iter()
            .map(|(r, n)| View {
                message: &r.message,
                complete: r.complete,
                names: n,
            })
            .collect();
        kept(&views)
            .into_iter()
            .zip(&self.rows)
            .filter(|(k, _)| *k)
            .map(|(_, (r, _))| r.message.clone())
            .collect()
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
        Self {
            sessions: HashMap::new(),
            capacity: capacity.max(1),
            tick: 0,
        }
    }

    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The context of `session` if the cache holds exactly `version`.
    pub fn get(&mut self, session: &str, version: i64) -> Option<Vec<Message>> {
        let now = self.touch();
        let entry = self
            .sessions
            .get_mut(session)
            .filter(|e| e.version == version)?;
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
        if self
            .sessions
            .get(session)
            .is_none_or(|held| held.version < version)
        {
            self.sessions.insert(session.to_owned(), entry);
            if self.sessions.len() > self.capacity
                && let Some(oldest) = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
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
            let row = ContextRow {
                message: message.to_message(id, created_ms),
                complete: false,
            };
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

/// Inspects the tail of a history: if the last non-system message is a user
/// message, the prompt was never answered ([`InterruptionKind::Prompt`] with
/// its first 80 characters); if it is a tool message, the assistant never saw
/// the result ([`InterruptionKind::Tool`]); otherwise `None`.
pub fn detect_interruption(messages: &[Message]) -> Option<InterruptionKind> {
    let last = messages.iter().rev().find(|m| m.role != Role::System)?;
    match last.role {
        Role::User => Some(InterruptionKind::Prompt(
            last.content
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(INTERRUPTION_PREVIEW_CHARS)
                .collect(),
        )),
        Role::Tool => Some(InterruptionKind::Tool),
        Role::System | Role::Assistant => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64, role: Role) -> Message {
        Message::bare(id, "s", role, Some(format!("m{id}")))
    }

    fn calls(id: i64, json: &str) -> Message {
        Message {
            tool_calls: Some(json.into()),
            ..msg(id, Role::Assistant)
        }
    }

    fn result(id: i64, call: &str) -> Message {
        Message {
            tool_call_id: Some(call.into()),
            ..msg(id, Role::Tool)
        }
    }

    /// The passes over messages that are all complete.
    fn passes(ms: Vec<Message>) -> Vec<Message> {
        apply_context_passes(complete(ms))
    }

    fn complete(ms: Vec<Message>) -> Vec<ContextRow> {
        ms.into_iter()
            .map(|message| ContextRow {
                message,
                complete: true,
            })
            .collect()
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
        let history = vec![
            msg(1, Role::User),
            calls(2, r#"[{"id":"c"}]"#),
            result(3, "c"),
        ];
        let ctx = cache.put("s", 5, complete(history.clone()));
        assert_eq!(ctx, passes(history.clone()));
        assert_eq!(cache.get("s", 5).as_deref(), Some(&ctx[..]));
        assert_eq!(cache.get("s", 6), None, "another version is a miss");

        // Our own append at version 6 keeps the entry current.
        let next = calls(4, r#"[{"id":"d"}]"#);
        cache.appended(
            "s",
            6,
            ContextRow {
                message: next.clone(),
                complete: false,
            },
        );
        assert_eq!(
            ids(&cache.get("s", 6).expect("hit")),
            [1, 2, 3],
            "incomplete caller is dropped"
        );
        cache.completed("s", 7, 4);
        assert_eq!(
            ids(&cache.get("s", 7).expect("hit")),
            [1, 2, 3],
            "its call is unanswered"
        );
        cache.appended(
            "s",
            8,
            ContextRow {
                message: result(5, "d"),
                complete: false,
            },
        );
        assert_eq!(ids(&cache.get("s", 8).expect("hit")), [1, 2, 3, 4, 5]);

        // A write the cache did not see (version jumped) drops the entry.
        cache.appended(
            "s",
            10,
            ContextRow {
                message: msg(6, Role::User),
                complete: false,
            },
        );
        assert!(!cache.holds("s"));

        // An edit the held entry already includes (a reader loaded after the
        // commit) or predates changes nothing.
        cache.put("r", 6, complete(vec![msg(1, Role::User)]));
        cache.appended(
            "r",
            6,
            ContextRow {
                message: msg(2, Role::User),
                complete: true,
            },
        );
        cache.appended(
            "r",
            4,
            ContextRow {
                message: msg(3, Role::User),
                complete: true,
            },
        );
        assert_eq!(ids(&cache.get("r", 6).expect("kept")), [1]);
        cache.forget("r");

        // An older read never replaces a newer entry.
        cache.put("s", 9, complete(history.clone()));
        cache.put("s", 3, complete(vec![msg(1, Role::User)]));
        assert_eq!(ids(&cache.get("s", 9).expect("kept the newer")), [1, 2, 3]);

        // A newer read replaces an older entry.
        cache.put("q", 1, complete(vec![msg(1, Role::User)]));
        cache.put(
            "q",
            2,
            complete(vec![msg(1, Role::User), msg(2, Role::User)]),
        );
        assert_eq!(ids(&cache.get("q", 2).expect("newer read held")), [1, 2]);
        cache.forget("q");

        // Capacity: the least recently used session goes, round after round.
        let mut lru = ContextCache::new(2);
        lru.put("keep", 1, complete(vec![msg(1, Role::User)]));
        for round in 0..12 {
            let name = format!("s{round}");
            lru.put(&name, 1, complete(vec![msg(1, Role::User)]));
            assert!(
                lru.get("keep", 1).is_some(),
                "round {round}: the recently used one stays"
            );
            let next = format!("s{}", round + 1);
            lru.put(&next, 1, complete(vec![msg(1, Role::User)]));
            assert!(
                !lru.holds(&name),
                "round {round}: the least recently used one goes"
            );
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

    fn ids(ms: &[Message]) -> Vec<i64> {
        ms.iter().map(|m| m.id).collect()
    }

    #[test]
    fn named_ids_only_from_arrays_of_objects_with_string_ids() {
        assert_eq!(
            named_tool_call_ids(r#"[{"id":"a"},{"id":"b"},{"id":"a"}]"#),
            ["a", "b", "a"]
        );
        assert!(named_tool_call_ids(r#"{"id":"a"}"#).is_empty());
        assert!(named_tool_call_ids("not json").is_empty());
        assert_eq!(
            named_tool_call_ids(r#"[{"id":1},{"x":"y"},"id",{"id":"c"}]"#),
            ["c"]
        );
    }

    /// The straightforward definition the fast walker must agree with.
    fn by_value(tool_calls: &str) -> Vec<String> {
        match serde_json::from_str::<serde_json::Value>(tool_calls) {
            Ok(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.get("id")?.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn named_ids_agree_with_the_value_tree_definition() {
        let cases = [
            r#"[{"id":"a","function":{"name":"x","arguments":"{\"id\":\"inner\"}"}}]"#,
            r#"[{"function":{"id":"nested"},"id":"outer"}]"#,
            r#"[{"id":"a","id":"b"}]"#,
            r#"[{"id":"esc\"aped\u00e9"}, {"id": null}, {"id": ["x"]}, {"id": {"id":"y"}}]"#,
            r#"[[{"id":"deep"}], 3, null, true, "s", {"ID":"case"}]"#,
            r#"[["nested", {"id":"x"}], {"id":"after nested"}, {"id":"b", "extra":[1,{"id":"no"}]}]"#,
            r#"[{"id":"a"}] trailing"#,
            r#"[{"id":"a"},]"#,
            "[]",
            "{}",
            "\"str\"",
            "12",
            "",
            "   [ {\"id\" : \"spaced\" } ]  ",
        ];
        for c in cases {
            assert_eq!(named_tool_call_ids(c), by_value(c), "{c}");
        }
    }

    #[test]
    fn incomplete_assistants_are_dropped_other_roles_kept() {
        let rows = vec![
            ContextRow {
                message: msg(1, Role::User),
                complete: false,
            },
            ContextRow {
                message: msg(2, Role::Assistant),
                complete: false,
            },
            ContextRow {
                message: msg(3, Role::Assistant),
                complete: true,
            },
            ContextRow {
                message: msg(4, Role::Tool),
                complete: false,
            },
        ];
        // The tool message has no call id, so pass 2 drops it too.
        assert_eq!(ids(&apply_context_passes(rows)), [1, 3]);
    }

    #[test]
    fn pairing_drops_unanswered_calls_and_their_other_results() {
        let ms = vec![
            msg(1, Role::User),
            calls(2, r#"[{"id":"a"},{"id":"b"}]"#),
            result(3, "a"),
            calls(4, r#"[{"id":"c"}]"#),
            result(5, "c"),
            result(6, "orphan"),
            Message {
                tool_call_id: None,
                ..msg(7, Role::Tool)
            },
            calls(8, "garbage"),
        ];
        assert_eq!(ids(&passes(ms)), [1, 4, 5, 8]);
    }

    #[test]
    fn blank_assistants_without_calls_are_dropped() {
        let ms = vec![
            Message {
                content: None,
                ..msg(1, Role::Assistant)
            },
            Message {
                content: Some(" \n\t".into()),
                ..msg(2, Role::Assistant)
            },
            Message {
                content: None,
                ..calls(3, "[]")
            },
            Message {
                content: Some("".into()),
                ..msg(4, Role::User)
            },
            Message {
                content: Some("\0".into()),
                ..msg(5, Role::Assistant)
            },
        ];
        assert_eq!(ids(&passes(ms)), [3, 4, 5]);
    }

    #[test]
    fn interruption_reads_last_non_system_message() {
        let long = "é".repeat(100);
        let user = Message {
            content: Some(long),
            ..msg(1, Role::User)
        };
        let got = detect_interruption(&[user.clone(), msg(2, Role::System)]);
        assert_eq!(got, Some(InterruptionKind::Prompt("é".repeat(80))));
        assert_eq!(
            detect_interruption(&[user.clone(), msg(3, Role::Tool)]),
            Some(InterruptionKind::Tool)
        );
        assert_eq!(detect_interruption(&[user, msg(4, Role::Assistant)]), None);
        assert_eq!(detect_interruption(&[msg(5, Role::System)]), None);
        assert_eq!(detect_interruption(&[]), None);
        let none = Message {
            content: None,
            ..msg(6, Role::User)
        };
        assert_eq!(
            detect_interruption(&[none]),
            Some(InterruptionKind::Prompt(String::new()))
        );
    }
}
