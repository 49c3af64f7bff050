//! The pure passes behind [`load_context`](crate::Persistence::load_context),
//! and interruption detection. Every backend loads the active rows of a session
//! in conversation order and hands them to [`apply_context_passes`].

use std::collections::HashSet;

use crate::types::{INTERRUPTION_PREVIEW_CHARS, InterruptionKind, Message, Role};

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
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type IdSet<'a> = HashSet<&'a str, std::hash::BuildHasherDefault<Fnv>>;

/// One row as the passes see it: the message, whether it is complete, and
/// the call ids it names (empty unless it is an assistant with tool calls).
pub(crate) struct View<'a> {
    pub(crate) message: &'a Message,
    pub(crate) complete: bool,
    pub(crate) names: &'a [String],
}

/// The three passes over rows in conversation order; `true` = kept.
///
/// 1. Drop assistant messages that are not complete.
/// 2. Tool-call pairing: drop every assistant message that names an id no
///    remaining tool message answers; then every tool message whose
///    `tool_call_id` is `None` or named by no remaining assistant message.
/// 3. Drop assistant messages without tool calls whose content is `None` or
///    only white space.
pub(crate) fn kept(rows: &[View<'_>]) -> Vec<bool> {
    let mut keep: Vec<bool> = rows.iter().map(|r| r.complete || r.message.role != Role::Assistant).collect();
    let answered: IdSet<'_> = rows
        .iter()
        .zip(&keep)
        .filter(|(r, k)| **k && r.message.role == Role::Tool)
        .filter_map(|(r, _)| r.message.tool_call_id.as_deref())
        .collect();
    for (r, k) in rows.iter().zip(keep.iter_mut()) {
        if *k && r.message.role == Role::Assistant && !r.names.iter().all(|id| answered.contains(id.as_str())) {
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
        let orphan = m.role == Role::Tool && !m.tool_call_id.as_deref().is_some_and(|id| named.contains(id));
        let empty = m.role == Role::Assistant && m.tool_calls.is_none() && m.content.as_deref().is_none_or(is_blank);
        if orphan || empty {
            *k = false;
        }
    }
    keep
}

/// The call ids a message names: parsed from `tool_calls` for assistants.
pub(crate) fn names_of(m: &Message) -> Vec<String> {
    match (&m.role, m.tool_calls.as_deref()) {
        (Role::Assistant, Some(tc)) => named_tool_call_ids(tc),
        _ => Vec::new(),
    }
}

/// The three passes of `load_context`, in order, over the active messages of
/// a session in conversation order (see the trait's `load_context`).
pub fn apply_context_passes(rows: Vec<ContextRow>) -> Vec<Message> {
    let names: Vec<Vec<String>> = rows.iter().map(|r| names_of(&r.message)).collect();
    let views: Vec<View<'_>> =
        rows.iter().zip(&names).map(|(r, n)| View { message: &r.message, complete: r.complete, names: n }).collect();
    let keep = kept(&views);
    rows.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r.message)).collect()
}

/// Inspects the tail of a history: if the last non-system message is a user
/// message, the prompt was never answered ([`InterruptionKind::Prompt`] with
/// its first 80 characters); if it is a tool message, the assistant never saw
/// the result ([`InterruptionKind::Tool`]); otherwise `None`.
pub fn detect_interruption(messages: &[Message]) -> Option<InterruptionKind> {
    let last = messages.iter().rev().find(|m| m.role != Role::System)?;
    match last.role {
        Role::User => Some(InterruptionKind::Prompt(
            last.content.as_deref().unwrap_or("").chars().take(INTERRUPTION_PREVIEW_CHARS).collect(),
        )),
        Role::Tool => Some(InterruptionKind::Tool),
        Role::System | Role::Assistant => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn msg(id: i64, role: Role) -> Message {
        Message::bare(id, "s", role, Some(format!("m{id}")))
    }

    pub(crate) fn calls(id: i64, json: &str) -> Message {
        Message { tool_calls: Some(json.into()), ..msg(id, Role::Assistant) }
    }

    pub(crate) fn result(id: i64, call: &str) -> Message {
        Message { tool_call_id: Some(call.into()), ..msg(id, Role::Tool) }
    }

    /// The passes over messages that are all complete.
    pub(crate) fn passes(ms: Vec<Message>) -> Vec<Message> {
        apply_context_passes(complete(ms))
    }

    pub(crate) fn complete(ms: Vec<Message>) -> Vec<ContextRow> {
        ms.into_iter().map(|message| ContextRow { message, complete: true }).collect()
    }

    fn ids(ms: &[Message]) -> Vec<i64> {
        ms.iter().map(|m| m.id).collect()
    }

    #[test]
    fn named_ids_only_from_arrays_of_objects_with_string_ids() {
        assert_eq!(named_tool_call_ids(r#"[{"id":"a"},{"id":"b"},{"id":"a"}]"#), ["a", "b", "a"]);
        assert!(named_tool_call_ids(r#"{"id":"a"}"#).is_empty());
        assert!(named_tool_call_ids("not json").is_empty());
        assert_eq!(named_tool_call_ids(r#"[{"id":1},{"x":"y"},"id",{"id":"c"}]"#), ["c"]);
    }

    /// The straightforward definition the fast walker must agree with.
    fn by_value(tool_calls: &str) -> Vec<String> {
        match serde_json::from_str::<serde_json::Value>(tool_calls) {
            Ok(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|i| i.get("id")?.as_str().map(str::to_owned)).collect()
            }
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
            ContextRow { message: msg(1, Role::User), complete: false },
            ContextRow { message: msg(2, Role::Assistant), complete: false },
            ContextRow { message: msg(3, Role::Assistant), complete: true },
            ContextRow { message: msg(4, Role::Tool), complete: false },
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
            Message { tool_call_id: None, ..msg(7, Role::Tool) },
            calls(8, "garbage"),
        ];
        assert_eq!(ids(&passes(ms)), [1, 4, 5, 8]);
    }

    #[test]
    fn blank_assistants_without_calls_are_dropped() {
        let ms = vec![
            Message { content: None, ..msg(1, Role::Assistant) },
            Message { content: Some(" \n\t".into()), ..msg(2, Role::Assistant) },
            Message { content: None, ..calls(3, "[]") },
            Message { content: Some("".into()), ..msg(4, Role::User) },
            Message { content: Some("\0".into()), ..msg(5, Role::Assistant) },
        ];
        assert_eq!(ids(&passes(ms)), [3, 4, 5]);
    }

    #[test]
    fn interruption_reads_last_non_system_message() {
        let long = "é".repeat(100);
        let user = Message { content: Some(long), ..msg(1, Role::User) };
        let got = detect_interruption(&[user.clone(), msg(2, Role::System)]);
        assert_eq!(got, Some(InterruptionKind::Prompt("é".repeat(80))));
        assert_eq!(detect_interruption(&[user.clone(), msg(3, Role::Tool)]), Some(InterruptionKind::Tool));
        assert_eq!(detect_interruption(&[user, msg(4, Role::Assistant)]), None);
        assert_eq!(detect_interruption(&[msg(5, Role::System)]), None);
        assert_eq!(detect_interruption(&[]), None);
        let none = Message { content: None, ..msg(6, Role::User) };
        assert_eq!(detect_interruption(&[none]), Some(InterruptionKind::Prompt(String::new())));
    }
}
