//! `koda-store search`: hits as a list (highlighted on a terminal) or JSON.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence::{Role, SearchHit, SearchScope, Store};
use serde_json::json;

/// Where a mark starts and ends on a terminal.
const HIGHLIGHT: (&str, &str) = ("\x1b[1;33m", "\x1b[0m");

/// `text` with every control character (a stored tool output may carry
/// terminal escapes) shown as a space.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The snippet of `hit` made printable, its marks wrapped in `open` …
/// `close`.
pub(crate) fn shown(hit: &SearchHit, open: &str, close: &str) -> String {
    hit.marked_with(open, close, printable)
}

/// Prints the hits of `query`, best first.
#[allow(clippy::too_many_arguments)]
pub async fn search(
    store: &Arc<dyn Store>,
    query: &str,
    root: Option<&Path>,
    session: Option<&str>,
    roles: &[Role],
    compacted: bool,
    limit: usize,
    json: bool,
    redact: bool,
) -> Result<()> {
    let scope = SearchScope { project_root: root, session, roles, include_compacted: compacted };
    let mut hits = store.search_messages(query, &scope, limit).await?;
    if redact {
        // A snippet that held a credential loses its marks: their byte
        // ranges no longer point into the redacted text.
        let r = koda_persistence::redaction::reading_redactor(store.as_ref()).await?;
        for h in &mut hits {
            if let std::borrow::Cow::Owned(redacted) = r.redact(&h.snippet) {
                h.snippet = redacted;
                h.marks.clear();
            }
        }
    }
    if json {
        let rows: Vec<_> = hits
            .iter()
            .map(|h| {
                json!({
                    "session": h.session_id, "message_id": h.message_id,
                    "role": h.role.to_string(), "created_at": h.created_at,
                    "rank": h.rank, "snippet": h.snippet,
                    "marks": h.marks.iter().map(|m| [m.start, m.end]).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "hits": rows }))?);
        return Ok(());
    }
    let (open, close) = if std::io::stdout().is_terminal() { HIGHLIGHT } else { ("", "") };
    for h in &hits {
        println!(
            "{}  #{}  {}  {}  rank {}",
            h.session_id,
            h.message_id,
            h.role,
            h.created_at.get(..19).unwrap_or(&h.created_at).replace('T', " "),
            h.rank
        );
        println!("    {}", shown(h, open, close));
    }
    eprintln!("{} hit{}", hits.len(), if hits.len() == 1 { "" } else { "s" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_in_a_snippet_are_not_printed_and_marks_stay_on_their_words() {
        let hit = SearchHit {
            session_id: "s".into(),
            message_id: 1,
            role: Role::Tool,
            created_at: String::new(),
            snippet: "\x1b[2Jclear \u{85}needle\x07 end".into(),
            marks: vec![4..9, 12..18],
            rank: 1,
        };
        assert_eq!(hit.snippet.get(12..18), Some("needle"));
        assert_eq!(shown(&hit, "<", ">"), " [2J<clear>  <needle>  end");
    }
}
