//! Full-text search across sessions ([`Search::search_messages`]):
//! the words of a text, the query grammar, what matches, the rank and the
//! snippet. Written once, here, so every backend finds the same hits: a
//! backend's index (SQLite FTS5, a PostgreSQL `tsvector`) only narrows the
//! candidates, which [`Query::find`] then decides.
//!
//! # Words
//! A text's words are its maximal runs of letters and digits (Unicode
//! `Alphabetic` or `Numeric`), compared lowercased (Unicode), except that
//! each Han, Hiragana or Katakana character is a word of its own, so
//! Chinese and Japanese text (written without spaces) matches by
//! substring. Everything else separates words. A message's searchable text
//! is its `content` and its `full_content`, each on its own (a phrase never
//! runs from one into the other); tool calls, titles and metadata are not
//! searched.
//!
//! # Query grammar
//! A query is split at whitespace into items:
//! - `word`: the item's words must appear, consecutively (`std::io`
//!   finds "std::io" and "std io"; `flaky` finds "Flaky").
//! - `"exact phrase"`: the words inside the quotes, consecutively; a
//!   missing closing quote runs to the end.
//! - `-item`: the message must not contain the item.
//! - `word*`: the item's last word is a prefix (`tok*` finds "tokio").
//!
//! Anything else is searched literally: `OR`, `AND`, `NEAR`, parentheses,
//! backslashes, `:` and lone quotes are ordinary characters (words or
//! separators), never syntax and never SQL. An item without a word (`*`,
//! `-`, `""`, `()`) is ignored. An empty query (nothing but whitespace) is
//! `InvalidInput`; one longer than [`MAX_QUERY_BYTES`] or holding more than
//! [`MAX_QUERY_ITEMS`] items is `InvalidInput` too. A query whose items
//! are all ignored finds nothing; one with only excluded items finds every
//! message in scope without them.
//!
//! # Hits
//! The hits are the messages in scope that hold every item and no excluded
//! one; of those, the `limit` (at most [`MAX_SEARCH_HITS`]) with the
//! highest message ids (the most recently stored), returned best first:
//! by [`SearchHit::rank`] (how many times the items occur), then by the
//! higher message id.

use anyhow::Result;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::error::PersistenceError;
use crate::types::Role;

/// Full-text search across the sessions of a store.
#[async_trait::async_trait]
pub trait Search: Send + Sync {
    /// Searches the messages of every session in `scope` for `query` and
    /// returns up to `limit` hits (at most
    /// [`MAX_SEARCH_HITS`]), best first.
    /// The words, the grammar, which messages are hits and their order are
    /// [`crate::search`]'s, the same on every backend; a search sees every
    /// write acknowledged before it started.
    ///
    /// - **Set**: the messages in scope whose `content` or `full_content`
    ///   (each on its own) hold every required item and neither holds an
    ///   excluded one; of those, the `limit` with the highest message ids.
    /// - **Order**: [`SearchHit::rank`] (occurrences of the items)
    ///   descending, then message id descending.
    /// - **Scope**: [`SearchScope`]: a root (root-less sessions count under
    ///   every root), one session, roles, compacted messages only when
    ///   asked. A deleted session's messages are never found.
    /// - Indexes only narrow candidates; an index that lags behind the
    ///   rows (an older koda's writes on SQLite, rows not yet indexed on
    ///   PostgreSQL) changes no result.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or oversized query
    /// ([`Query::parse`](crate::search::Query::parse)) and for a root that
    /// is not UTF-8; no other input is an error (an unknown session finds
    /// nothing).
    async fn search_messages(&self, query: &str, scope: &SearchScope<'_>, limit: usize) -> Result<Vec<SearchHit>>;
}

/// The most hits one search returns (a larger `limit` is this).
pub const MAX_SEARCH_HITS: usize = 1000;
/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most items a query may hold.
pub const MAX_QUERY_ITEMS: usize = 4096;
/// How many characters of a field a snippet shows.
pub const SNIPPET_CHARS: usize = 160;
/// The longest index term in bytes: a longer word is indexed by its first
/// bytes (at a character boundary), and looked up the same way.
pub const MAX_TERM_BYTES: usize = 128;

/// Where a search looks. `Default` is everywhere, every role, active
/// messages only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchScope<'a> {
    /// Only sessions of this root (exact bytes, as `list_sessions`
    /// compares; root-less sessions of an older koda count under every
    /// root, as they are listed under every root).
    pub project_root: Option<&'a Path>,
    /// Only this session.
    pub session: Option<&'a str>,
    /// Only these roles (empty: every role).
    pub roles: &'a [Role],
    /// Also messages compaction archived.
    pub include_compacted: bool,
}

/// A [`SearchScope`] checked and owned, to move onto a store's worker
/// thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeBuf {
    /// The root, as text.
    pub root: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only these roles (empty: every role).
    pub roles: Vec<Role>,
    /// Also compacted messages.
    pub include_compacted: bool,
}

impl ScopeBuf {
    /// Owns `scope`.
    ///
    /// # Errors
    /// `InvalidInput` for a root that is not UTF-8.
    pub fn new(scope: &SearchScope<'_>) -> Result<Self, PersistenceError> {
        Ok(Self {
            root: scope.project_root.map(|r| crate::args::root_to_str(r).map(str::to_owned)).transpose()?,
            session: scope.session.map(str::to_owned),
            roles: scope.roles.to_vec(),
            include_compacted: scope.include_compacted,
        })
    }

    /// Whether a message of `role`, compacted or not, is in scope (the
    /// session and root are [`admits_session`](Self::admits_session)'s).
    pub fn admits(&self, role: Role, compacted: bool) -> bool {
        (self.roles.is_empty() || self.roles.contains(&role)) && (self.include_compacted || !compacted)
    }

    /// Whether a message of session `session` whose root is `root` is in
    /// scope (a root-less session is under every root).
    pub fn admits_session(&self, session: &str, root: Option<&str>) -> bool {
        self.session.as_deref().is_none_or(|s| s == session)
            && match (&self.root, root) {
                (Some(want), Some(own)) => want == own,
                _ => true,
            }
    }
}

/// One message a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// Its session.
    pub session_id: String,
    /// Its id.
    pub message_id: i64,
    /// Its role.
    pub role: Role,
    /// When it was created, as [`Message::created_at`](crate::Message::created_at).
    pub created_at: String,
    /// Up to [`SNIPPET_CHARS`] characters of the field that matched first,
    /// around its first match ("…" where it was cut).
    pub snippet: String,
    /// The byte ranges of `snippet` that match an item, in order.
    pub marks: Vec<Range<usize>>,
    /// How many times the query's items occur in the message (0 for a
    /// query of excluded items only); higher is better.
    pub rank: u32,
}

impl SearchHit {
    /// The snippet with every mark wrapped in `open` … `close`.
    pub fn marked(&self, open: &str, close: &str) -> String {
        self.marked_with(open, close, str::to_owned)
    }

    /// The snippet with every mark wrapped in `open` … `close`, each
    /// piece of the snippet passed through `text` first (a terminal
    /// removes control characters there, never from `open` and `close`).
    pub fn marked_with(&self, open: &str, close: &str, text: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(self.snippet.len() + 8 * self.marks.len());
        let mut at = 0;
        for m in &self.marks {
            if let (Some(before), Some(hit)) = (self.snippet.get(at..m.start), self.snippet.get(m.clone())) {
                out.push_str(&text(before));
                out.push_str(open);
                out.push_str(&text(hit));
                out.push_str(close);
                at = m.end;
            }
        }
        out.push_str(&text(self.snippet.get(at..).unwrap_or("")));
        out
    }
}

/// Whether `c` is a word of its own (Han, Hiragana, Katakana).
fn is_unigram(c: char) -> bool {
    matches!(u32::from(c),
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF | 0xFF66..=0xFF9F | 0x20000..=0x3FFFF)
}

/// One word of a text: where it is and its lowercased form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word<'a> {
    /// Its bytes in the text.
    pub span: Range<usize>,
    /// Lowercased (borrowed from the text when it already was).
    pub norm: Cow<'a, str>,
}

/// Whether lowercasing leaves `c` as it is.
fn already_lower(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_uppercase();
    }
    let mut lower = c.to_lowercase();
    lower.len() == 1 && lower.next() == Some(c)
}

/// The words of `text`, in order. A word already in lowercase borrows
/// its text (a megabyte of output splits without a copy per word).
pub fn words<'a>(text: &'a str) -> Vec<Word<'a>> {
    let mut out = Vec::new();
    // The word being read: where it starts, and its lowercased copy once
    // one of its characters changed.
    let mut start: Option<usize> = None;
    let mut copy: Option<String> = None;
    let close = |out: &mut Vec<Word<'a>>, start: &mut Option<usize>, copy: &mut Option<String>, end| {
        if let Some(s) = start.take() {
            let norm = match copy.take() {
                Some(c) => Cow::Owned(c),
                None => Cow::Borrowed(&text[s..end]),
            };
            out.push(Word { span: s..end, norm });
        }
    };
    for (i, c) in text.char_indices() {
        if is_unigram(c) {
            close(&mut out, &mut start, &mut copy, i);
            let end = i + c.len_utf8();
            out.push(Word { span: i..end, norm: Cow::Borrowed(&text[i..end]) });
        } else if c.is_alphanumeric() {
            let s = *start.get_or_insert(i);
            match &mut copy {
                Some(copy) => copy.extend(c.to_lowercase()),
                None if already_lower(c) => {}
                None => {
                    let mut fresh = text[s..i].to_owned();
                    fresh.extend(c.to_lowercase());
                    copy = Some(fresh);
                }
            }
        } else {
            close(&mut out, &mut start, &mut copy, i);
        }
    }
    close(&mut out, &mut start, &mut copy, text.len());
    out
}

/// `word` cut to [`MAX_TERM_BYTES`] at a character boundary.
pub fn term(word: &str) -> &str {
    if word.len() <= MAX_TERM_BYTES {
        return word;
    }
    let mut end = MAX_TERM_BYTES;
    while !word.is_char_boundary(end) {
        end -= 1;
    }
    &word[..end]
}

/// The text a word index stores for the fields: every word, lowercased
/// and cut ([`term`]),
/// separated by one space (SQLite indexes it with FTS5's `ascii`
/// tokenizer, which then sees exactly these words).
pub fn index_text(fields: &[Option<&str>]) -> String {
    let mut out = String::new();
    for w in fields.iter().flatten().flat_map(|f| words(f)) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(term(&w.norm));
    }
    out
}

/// The lexeme of a message a word index cannot narrow (its words would
/// not fit a PostgreSQL `tsvector`): no word is `*`, and every
/// [`Query::tsquery`] asks for it.
pub const EVERY_SEARCH: &str = "*";
/// The lexeme of a message whose `tsvector` carries no positions (too
/// many words, or a word too often, for PostgreSQL to keep them all):
/// [`Query::tsquery`] matches its phrases as words ANDed.
pub const NO_POSITIONS: &str = "*p";
/// The highest word position a `tsvector` keeps (PostgreSQL clamps past it).
pub const TSVECTOR_MAX_POSITION: usize = 16_383;
/// The most positions a `tsvector` keeps for one lexeme.
pub const TSVECTOR_MAX_POSITIONS: usize = 256;
/// The most bytes of lexemes and positions a message's `tsvector` text
/// holds (PostgreSQL caps a `tsvector` at 1 MiB); past it the message
/// holds [`EVERY_SEARCH`] alone.
pub const TSVECTOR_MAX_BYTES: usize = 512 * 1024;

/// `text` as a quoted `tsvector` / `tsquery` lexeme.
fn lexeme(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The fields' words as the text of a PostgreSQL `tsvector`: each
/// [`term`] with the positions of its words, the second field's
/// positions one past the first's end (a phrase never runs from one
/// field into the other). When positions cannot all be kept (more than
/// [`TSVECTOR_MAX_POSITION`] words, or a term more than
/// [`TSVECTOR_MAX_POSITIONS`] times) the terms carry none and
/// [`NO_POSITIONS`] is added; when even that exceeds
/// [`TSVECTOR_MAX_BYTES`], the text is [`EVERY_SEARCH`] alone.
pub fn tsvector(fields: &[Option<&str>]) -> String {
    let mut at: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut position = 0usize;
    for field in fields.iter().flatten() {
        for w in words(field) {
            position += 1;
            at.entry(term(&w.norm).to_owned()).or_default().push(position);
        }
        position += 1;
    }
    let exact = position <= TSVECTOR_MAX_POSITION && at.values().all(|p| p.len() <= TSVECTOR_MAX_POSITIONS);
    let mut out = String::new();
    for (t, positions) in &at {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&lexeme(t));
        if exact {
            let listed: Vec<String> = positions.iter().map(ToString::to_string).collect();
            out.push(':');
            out.push_str(&listed.join(","));
        }
    }
    if !exact {
        out.push(' ');
        out.push_str(&lexeme(NO_POSITIONS));
    }
    if out.len() > TSVECTOR_MAX_BYTES {
        return lexeme(EVERY_SEARCH);
    }
    out
}

/// One item of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its words, lowercased, in order (never empty).
    pub words: Vec<String>,
    /// Its last word is a prefix.
    pub prefix: bool,
    /// The message must not hold it.
    pub exclude: bool,
}

/// A parsed query (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Its items with words, in the query's order.
    pub items: Vec<Item>,
}

/// How a message matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Occurrences of the query's items.
    pub rank: u32,
    /// The snippet and its marks.
    pub snippet: String,
    /// Marks in `snippet`.
    pub marks: Vec<Range<usize>>,
}

impl Query {
    /// Parses `query` (see the module docs).
    ///
    /// # Errors
    /// `InvalidInput` for an empty query, one longer than
    /// [`MAX_QUERY_BYTES`] or with more than [`MAX_QUERY_ITEMS`] items.
    pub fn parse(query: &str) -> Result<Self, PersistenceError> {
        if query.trim().is_empty() {
            return Err(PersistenceError::InvalidInput("search query is empty".to_owned()));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(PersistenceError::InvalidInput(format!(
                "search query is {} bytes, more than {MAX_QUERY_BYTES}",
                query.len()
            )));
        }
        let mut items = Vec::new();
        let mut rest = query;
        let mut raw = 0usize;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            raw += 1;
            if raw > MAX_QUERY_ITEMS {
                return Err(PersistenceError::InvalidInput(format!(
                    "search query has more than {MAX_QUERY_ITEMS} items"
                )));
            }
            let (exclude, body) = match rest.strip_prefix('-') {
                Some(b) if !b.is_empty() && !b.starts_with(char::is_whitespace) => (true, b),
                _ => (false, rest),
            };
            let (text, after) = if let Some(quoted) = body.strip_prefix('"') {
                match quoted.find('"') {
                    Some(end) => (&quoted[..end], &quoted[end + 1..]),
                    None => (quoted, ""),
                }
            } else {
                let end = body.find(char::is_whitespace).unwrap_or(body.len());
                (&body[..end], &body[end..])
            };
            // A `*` right after the item's text (`tok*`, `"a b"*`) is a prefix.
            let (prefix, after) = match after.strip_prefix('*') {
                Some(a) => (true, a),
                None => (text.ends_with('*'), after),
            };
            let words: Vec<String> = words(text).into_iter().map(|w| w.norm.into_owned()).collect();
            let prefix = prefix && text.trim_end_matches('*').ends_with(char::is_alphanumeric);
            if !words.is_empty() {
                items.push(Item { words, prefix, exclude });
            }
            rest = after;
        }
        Ok(Self { items })
    }

    /// The items a message must hold.
    pub fn required(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| !i.exclude)
    }

    /// `true` when the query finds nothing whatever the data (every item
    /// was ignored).
    pub fn finds_nothing(&self) -> bool {
        self.items.is_empty()
    }

    /// Decides a message whose searchable fields are `fields` (`content`,
    /// `full_content`): `Some` with its rank and snippet when it holds
    /// every required item and no excluded one.
    pub fn find(&self, fields: &[Option<&str>]) -> Option<Found> {
        if self.finds_nothing() {
            return None;
        }
        let split: Vec<(&str, Vec<Word<'_>>)> = fields.iter().flatten().map(|f| (*f, words(f))).collect();
        let mut rank = 0u32;
        for item in &self.items {
            let n: usize = split.iter().map(|(_, w)| occurrences(item, w).count()).sum();
            if item.exclude {
                if n > 0 {
                    return None;
                }
            } else if n == 0 {
                return None;
            } else {
                rank = rank.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        // The snippet: the first field holding a required item, around its
        // first match; a query of exclusions only shows the first field
        // (nothing for a message without text, which it finds too).
        let spans_of = |ws: &[Word<'_>]| -> Vec<Range<usize>> {
            let mut spans: Vec<Range<usize>> = self
                .required()
                .flat_map(|item| {
                    occurrences(item, ws)
                        .map(|i| ws[i].span.start..ws[i + item.words.len() - 1].span.end)
                        .collect::<Vec<_>>()
                })
                .collect();
            spans.sort_by_key(|s| (s.start, s.end));
            spans
        };
        let (text, spans) = split
            .iter()
            .map(|(t, ws)| (*t, spans_of(ws)))
            .find(|(_, s)| !s.is_empty())
            .or_else(|| split.first().map(|(t, _)| (*t, Vec::new())))
            .unwrap_or(("", Vec::new()));
        let (snippet, marks) = snippet(text, &spans);
        Some(Found { rank, snippet, marks })
    }

    /// An FTS5 `MATCH` expression that every message [`find`](Self::find)
    /// accepts also matches (over [`index_text`] and the `ascii`
    /// tokenizer): the required items ANDed, each a quoted phrase, a
    /// prefix marked. Words hold only letters and digits, so nothing in it
    /// is syntax but the quotes, `AND` and `*`. `None` when no item is
    /// required (the store scans).
    pub fn fts5(&self) -> Option<String> {
        let parts: Vec<String> = self
            .required()
            .map(|i| {
                let words: Vec<&str> = i.words.iter().map(|w| term(w)).collect();
                let phrase = format!("\"{}\"", words.join(" ").replace('"', "\"\""));
                if i.prefix { format!("{phrase} *") } else { phrase }
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }

    /// A PostgreSQL `tsquery` (text to cast) that every message
    /// [`find`](Self::find) accepts also matches over its [`tsvector`]:
    /// each required item a lexeme, or its words joined by `<->` (a
    /// phrase), a prefix `:*` (on a term that was not cut); each excluded
    /// item whose words were not cut negated (`!`); all ANDed. A message
    /// without positions ([`NO_POSITIONS`]) matches the required words
    /// ANDed and the excluded single words negated; [`EVERY_SEARCH`]
    /// always matches. `None` when no item is required (the store scans).
    pub fn tsquery(&self) -> Option<String> {
        let part = |item: &Item, phrase: bool| -> Vec<String> {
            let n = item.words.len();
            let lexemes: Vec<String> = item
                .words
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let t = term(w);
                    if k + 1 == n && item.prefix && t.len() == w.len() { format!("{}:*", lexeme(t)) } else { lexeme(t) }
                })
                .collect();
            if phrase && n > 1 { vec![format!("({})", lexemes.join(" <-> "))] } else { lexemes }
        };
        let uncut = |item: &&Item| item.words.iter().all(|w| w.len() <= MAX_TERM_BYTES);
        let required: Vec<&Item> = self.required().collect();
        if required.is_empty() {
            return None;
        }
        let excluded: Vec<&Item> = self.items.iter().filter(|i| i.exclude).filter(uncut).collect();
        let mut exact: Vec<String> = required.iter().flat_map(|i| part(i, true)).collect();
        exact.extend(excluded.iter().flat_map(|i| part(i, true)).map(|p| format!("!{p}")));
        let mut arms = vec![format!("({})", exact.join(" & "))];
        if required.iter().any(|i| i.words.len() > 1) {
            let mut loose: Vec<String> = required.iter().flat_map(|i| part(i, false)).collect();
            loose.extend(
                excluded.iter().filter(|i| i.words.len() == 1).flat_map(|i| part(i, false)).map(|p| format!("!{p}")),
            );
            loose.push(lexeme(NO_POSITIONS));
            arms.push(format!("({})", loose.join(" & ")));
        }
        arms.push(lexeme(EVERY_SEARCH));
        Some(arms.join(" | "))
    }
}

/// Where `item` occurs in `ws`: the index of each occurrence's first word
/// (occurrences may overlap).
fn occurrences<'a>(item: &'a Item, ws: &'a [Word<'_>]) -> impl Iterator<Item = usize> + 'a {
    let k = item.words.len();
    (0..ws.len().saturating_sub(k.saturating_sub(1))).filter(move |&i| i + k <= ws.len()).filter(move |&i| {
        item.words.iter().enumerate().all(|(j, w)| {
            let have: &str = &ws[i + j].norm;
            if item.prefix && j + 1 == k { have.starts_with(w.as_str()) } else { have == w }
        })
    })
}

/// Up to [`SNIPPET_CHARS`] characters of `text` starting a little before
/// the first span, with the spans that fit as marks (byte ranges of the
/// snippet) and "…" where the text was cut.
fn snippet(text: &str, spans: &[Range<usize>]) -> (String, Vec<Range<usize>>) {
    const BEFORE: usize = 40;
    let first = spans.first().map_or(0, |s| s.start);
    let from = text[..first].char_indices().rev().nth(BEFORE - 1).map_or(0, |(i, _)| i);
    let to = text[from..].char_indices().nth(SNIPPET_CHARS).map_or(text.len(), |(i, _)| from + i);
    let lead = if from > 0 { "…" } else { "" };
    let mut out = String::with_capacity(to - from + 8);
    out.push_str(lead);
    out.push_str(&text[from..to]);
    if to < text.len() {
        out.push('…');
    }
    let shift = lead.len();
    let mut marks: Vec<Range<usize>> = Vec::new();
    for s in spans {
        if s.start >= from && s.end <= to && marks.last().is_none_or(|m| s.start >= m.end) {
            marks.push(s.start - from + shift..s.end - from + shift);
        }
    }
    (out, marks)
}

/// Orders hits best first: rank, then the higher message id.
pub fn sort_hits(hits: &mut [SearchHit]) {
    hits.sort_by(|a, b| b.rank.cmp(&a.rank).then(b.message_id.cmp(&a.message_id)));
}

/// The bound a store applies to `limit`.
pub fn hit_limit(limit: usize) -> usize {
    limit.min(MAX_SEARCH_HITS)
}

/// A hit for a message that [`Query::find`] accepted.
pub fn hit(session_id: String, message_id: i64, role: Role, created_at: String, found: Found) -> SearchHit {
    SearchHit { session_id, message_id, role, created_at, snippet: found.snippet, marks: found.marks, rank: found.rank }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(s).unwrap_or(Query { items: Vec::new() })
    }

    #[test]
    fn words_split_lowercase_and_cut_cjk_to_characters() {
        let w: Vec<String> =
            words("Flaky-TEST über std::io 修复测试 ok İx ǅ").into_iter().map(|w| w.norm.into_owned()).collect();
        assert_eq!(w, ["flaky", "test", "über", "std", "io", "修", "复", "测", "试", "ok", "i\u{307}x", "ǆ"]);
    }

    #[test]
    fn grammar_reads_phrases_exclusions_and_prefixes() {
        let query = q(r#"flaky "exact  Phrase" -skip tok* -"not this" * - "" OR"#);
        let got: Vec<(String, bool, bool)> =
            query.items.iter().map(|i| (i.words.join(" "), i.prefix, i.exclude)).collect();
        assert_eq!(
            got,
            [
                ("flaky".into(), false, false),
                ("exact phrase".into(), false, false),
                ("skip".into(), false, true),
                ("tok".into(), true, false),
                ("not this".into(), false, true),
                ("or".into(), false, false),
            ]
        );
        assert!(Query::parse("  \t").is_err());
        assert!(q("* \"\" ()").finds_nothing());
    }

    #[test]
    fn find_decides_ranks_and_marks() {
        let query = q("flaky test");
        let f =
            query.find(&[Some("Fixed the flaky test; the test passes"), None]).unwrap_or_else(|| panic!("no match"));
        assert_eq!(f.rank, 3);
        assert_eq!(
            SearchHit {
                session_id: String::new(),
                message_id: 1,
                role: Role::User,
                created_at: String::new(),
                snippet: f.snippet,
                marks: f.marks,
                rank: f.rank
            }
            .marked("[", "]"),
            "Fixed the [flaky] [test]; the [test] passes"
        );
        assert!(q("flaky -passes").find(&[Some("flaky passes")]).is_none());
        assert!(q("\"test flaky\"").find(&[Some("flaky test")]).is_none());
        assert!(q("\"a b\"").find(&[Some("x a"), Some("b y")]).is_none());
        assert!(q("tok*").find(&[Some("Tokio runtime")]).is_some());
        assert!(q("测试").find(&[Some("修复测试用例")]).is_some());
        assert!(q("-nothing").find(&[Some("anything")]).is_some());
        assert!(q("-nothing").find(&[None, None]).is_some(), "no text, no excluded item");
        assert!(q("something").find(&[None, None]).is_none());
    }

    #[test]
    fn index_queries_quote_every_word() {
        let query = q(r#"a"b "c d"* -e"#);
        assert_eq!(query.fts5().as_deref(), Some(r#""a b" AND "c d" *"#));
        assert_eq!(
            query.tsquery().as_deref(),
            Some("(('a' <-> 'b') & ('c' <-> 'd':*) & !'e') | ('a' & 'b' & 'c' & 'd':* & !'e' & '*p') | '*'")
        );
        let long = "x".repeat(300);
        assert_eq!(
            q(&format!("{long}* -{long}")).tsquery(),
            Some(format!("('{}') | '*'", "x".repeat(MAX_TERM_BYTES))),
            "a cut prefix is its cut term; a cut exclusion is left to find"
        );
        assert_eq!(q("-a").tsquery(), None);
    }

    #[test]
    fn tsvectors_keep_positions_apart_per_field_or_say_they_do_not() {
        assert_eq!(tsvector(&[Some("B a b"), None, Some("A")]), "'a':2,5 'b':1,3");
        assert_eq!(tsvector(&[None]), "");
        let often = "w ".repeat(TSVECTOR_MAX_POSITIONS + 1);
        assert_eq!(tsvector(&[Some(&often), Some("x")]), "'w' 'x' '*p'");
        let many: String = (0..100_000).map(|i| format!("w{i} ")).collect();
        assert_eq!(tsvector(&[Some(&many)]), "'*'");
    }
}
