//! `koda-store redact`: a store's redaction mode and its own rules, and
//! redaction of what `export --redact` and `show --redact` write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use koda_persistence::redaction::{
    reading_redactor, record_mode, record_rules, recorded_mode, recorded_rules, store_redactor,
};
use koda_persistence::rewrite::{MessageText, SessionText};
use koda_persistence::secrets::{CustomRule, RedactMode, Redactor, builtin_rule_names};
use koda_persistence::{MetadataRecord, Store};
use serde_json::json;

/// A rules file: `[rules]` then one `name = "pattern"` per rule.
///
/// ```toml
/// [rules]
/// acme-deploy-key = '\bacme_[0-9a-f]{32}\b'
/// ```
pub fn read_rules(path: &Path) -> Result<Vec<CustomRule>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let invalid = |why: String| koda_persistence::PersistenceError::InvalidInput(format!("{}: {why}", path.display()));
    let mut rules = Vec::new();
    for (key, value) in &doc {
        if key != "rules" {
            return Err(invalid(format!("unknown table or key {key:?}: the file holds [rules] only")).into());
        }
        let table = value.as_table().ok_or_else(|| invalid("rules is a table of name = \"pattern\"".into()))?;
        for (name, pattern) in table {
            let pattern = pattern.as_str().ok_or_else(|| invalid(format!("rule {name:?}: its pattern is a string")))?;
            rules.push(CustomRule { name: name.clone(), pattern: pattern.to_owned() });
        }
    }
    Ok(rules)
}

/// `redact [--mode M] [--rules FILE] [--json]`: records what is given, then
/// says the store's mode and rules.
pub async fn redact(store: &Arc<dyn Store>, mode: Option<RedactMode>, rules: Option<&Path>, json: bool) -> Result<()> {
    if let Some(path) = rules {
        record_rules(store.as_ref(), &read_rules(path)?).await?;
    }
    if let Some(m) = mode {
        record_mode(store.as_ref(), m).await?;
    }
    let mode = recorded_mode(store.as_ref()).await?;
    let own: Vec<String> = recorded_rules(store.as_ref()).await?.into_iter().map(|r| r.name).collect();
    if json {
        let doc = json!({
            "mode": mode.as_str(),
            "builtin_rules": builtin_rule_names().collect::<Vec<_>>(),
            "own_rules": own,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("redaction mode: {}", mode.as_str());
        println!("built-in rules: {}", builtin_rule_names().collect::<Vec<_>>().join(", "));
        println!("own rules:      {}", if own.is_empty() { "(none)".to_owned() } else { own.join(", ") });
    }
    Ok(())
}

/// Credentials found per rule, as `export --redact` reports them.
pub fn report(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "no credential found".to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(rule, n)| format!("{rule} {n}")).collect();
    format!("redacted {} ({})", counts.values().sum::<u64>(), parts.join(", "))
}

/// Message texts a rewrite replaces per call (one transaction each): a
/// killed clean leaves each batch either rewritten or as it was.
const BATCH: usize = 200;

/// What [`clean`] found and (unless a dry run) rewrote.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Values rewritten (or that would be): a title, a mode, a metadata
    /// value, one field of a message.
    pub values: u64,
    /// Credentials found, per rule.
    pub rules: BTreeMap<String, u64>,
    /// Values per session, for the sessions with any.
    pub sessions: BTreeMap<String, u64>,
    /// Sessions looked at.
    pub scanned: u64,
    /// Deleted sessions in the trash, which a clean does not reach.
    pub trashed: usize,
    /// What reclaiming old copies did (none for a dry run).
    pub reclaimed: Option<String>,
}

/// `text` with what `redactor` would store instead of `session`'s values.
fn session_text(redactor: &Redactor, whole: &Whole, counts: &mut BTreeMap<String, u64>) -> SessionText {
    let mut out = SessionText::default();
    if let Some(record) = &whole.0 {
        let r = redactor.session_record(record, counts);
        out.title = r.title.filter(|t| Some(t) != record.title.as_ref());
        out.mode = r.mode.filter(|m| Some(m) != record.mode.as_ref());
    }
    for m in &whole.1 {
        let r = redactor.message_record(m, counts);
        let changed = |new: Option<String>, old: &Option<String>| new.filter(|n| Some(n) != old.as_ref());
        let text = MessageText {
            id: m.id,
            content: changed(r.content, &m.content),
            full_content: changed(r.full_content, &m.full_content),
            tool_calls: changed(r.tool_calls, &m.tool_calls),
        };
        if !text.is_empty() {
            out.messages.push(text);
        }
    }
    for e in &whole.2 {
        let r = redactor.metadata_record(e, counts);
        if r.value != e.value {
            out.metadata.push(MetadataRecord { key: e.key.clone(), value: r.value });
        }
    }
    out
}

type Whole = (Option<koda_persistence::SessionRecord>, Vec<koda_persistence::MessageRecord>, Vec<MetadataRecord>);

/// `redact` without --mode and --rules: every credential the store's
/// rules (built-in and its own) find in what it already holds is
/// rewritten in place, a session at a time in batches of [`BATCH`]
/// messages, and then the store reclaims the old copies it can (every
/// run, so one killed before that step leaves none for long). With
/// `dry_run`, counts and writes nothing. `progress` hears each session
/// with something to rewrite, after it was rewritten. A re-run after a
/// killed one goes on where it stopped: what was rewritten holds only
/// placeholders, which no rule matches again.
pub async fn clean(store: &Arc<dyn Store>, dry_run: bool, mut progress: impl FnMut(&str, u64)) -> Result<Cleaned> {
    let redactor =
        if dry_run { reading_redactor(store.as_ref()).await? } else { store_redactor(store.as_ref()).await? };
    let mut cleaned = Cleaned { trashed: store.count_deleted().await?, ..Cleaned::default() };
    for sid in store.export_session_ids().await? {
        let whole: Whole =
            (store.export_session(&sid).await?, store.export_messages(&sid).await?, store.export_metadata(&sid).await?);
        if whole.0.is_none() {
            continue; // deleted since the listing
        }
        cleaned.scanned += 1;
        let text = session_text(&redactor, &whole, &mut cleaned.rules);
        if text.is_empty() {
            continue;
        }
        let values = text.values() as u64;
        if !dry_run {
            let SessionText { title, mode, messages, metadata } = text;
            let mut first = SessionText { title, mode, metadata, messages: Vec::new() };
            let mut batches = messages.chunks(BATCH);
            first.messages = batches.next().map(<[MessageText]>::to_vec).unwrap_or_default();
            store.rewrite_session(&sid, &first).await.with_context(|| format!("rewriting session {sid}"))?;
            for batch in batches {
                let next = SessionText { messages: batch.to_vec(), ..SessionText::default() };
                store.rewrite_session(&sid, &next).await.with_context(|| format!("rewriting session {sid}"))?;
            }
        }
        cleaned.values += values;
        cleaned.sessions.insert(sid.clone(), values);
        progress(&sid, values);
    }
    // Also when this run rewrote nothing: a run killed after its last
    // rewrite and before this step left the old copies behind.
    if !dry_run {
        cleaned.reclaimed = Some(store.reclaim().await?);
    }
    Ok(cleaned)
}

/// `redact [--dry-run] [--json]`: cleans the history and reports counts
/// per rule and per session, never a secret.
pub async fn clean_command(store: &Arc<dyn Store>, dry_run: bool, json: bool) -> Result<()> {
    let verb = if dry_run { "would rewrite" } else { "rewrote" };
    let cleaned = clean(store, dry_run, |sid, n| {
        if !json {
            eprintln!("session {sid}: {verb} {n} value(s)");
        }
    })
    .await?;
    if json {
        let doc = json!({
            "dry_run": dry_run,
            "redacted": cleaned.values,
            "rules": cleaned.rules,
            "sessions": cleaned.sessions,
            "scanned": cleaned.scanned,
            "trashed_not_cleaned": cleaned.trashed,
            "reclaimed": cleaned.reclaimed,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let found: Vec<String> = cleaned.rules.iter().map(|(rule, n)| format!("{rule} {n}")).collect();
    println!("redaction mode: {}", recorded_mode(store.as_ref()).await?.as_str());
    println!(
        "{verb} {} value(s) in {} of {} session(s); credentials found: {}",
        cleaned.values,
        cleaned.sessions.len(),
        cleaned.scanned,
        if found.is_empty() { "none".to_owned() } else { found.join(", ") }
    );
    if let Some(line) = &cleaned.reclaimed {
        println!("{line}");
    }
    if cleaned.trashed > 0 {
        println!(
            "{} deleted session(s) in the trash were not cleaned: restore and clean them, or let their grace \
             period end (koda-store purge --deleted)",
            cleaned.trashed
        );
    }
    Ok(())
}
