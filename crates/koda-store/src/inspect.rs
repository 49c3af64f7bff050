//! The subcommands: what they read, what they print.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence::admin::named_tool_call_ids;
use koda_persistence::ledger::{LedgerSums, UsageBy, UsageQuery};
use koda_persistence::{Role, SessionInfo, Store, detect_interruption};
use serde_json::json;

use koda_store::transfer::{self, FileSessions, Verified, Whole};

/// Prints rows as an aligned table (the last column unpadded).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// One line of a cell: newlines and tabs shown as spaces, clipped.
pub(crate) fn cell(s: Option<&str>, max: usize) -> String {
    let flat: String = s.unwrap_or("").chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut clipped: String = flat.chars().take(max.saturating_sub(1)).collect();
        clipped.push('…');
        clipped
    }
}

/// Every session (or one root's), newest first, with counters.
async fn listed(store: &Arc<dyn Store>, root: Option<&Path>, limit: i64) -> Result<Vec<SessionInfo>> {
    if let Some(root) = root {
        return store.list_sessions(limit, root).await;
    }
    let mut roots = BTreeSet::new();
    for id in store.export_session_ids().await? {
        if let Some(s) = store.export_session(&id).await? {
            roots.insert(s.project_root.unwrap_or_default());
        }
    }
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for root in roots {
        for s in store.list_sessions(limit, Path::new(&root)).await? {
            if seen.insert(s.id.clone()) {
                all.push(s);
            }
        }
    }
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    all.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(all)
}

pub async fn sessions(store: &Arc<dyn Store>, root: Option<&Path>, limit: i64, json: bool) -> Result<()> {
    let all = listed(store, root, limit).await?;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|s| {
                json!({
                    "id": s.id, "created_at": s.created_at, "agent": s.agent_name,
                    "title": s.title, "mode": s.mode, "messages": s.message_count,
                    "tokens": s.total_tokens,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "sessions": rows }))?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.created_at.get(..19).unwrap_or(&s.created_at).replace('T', " "),
                cell(Some(&s.agent_name), 16),
                s.message_count.to_string(),
                s.total_tokens.to_string(),
                cell(s.mode.as_deref(), 10),
                cell(s.title.as_deref(), 50),
            ]
        })
        .collect();
    table(&["ID", "CREATED (UTC)", "AGENT", "MESSAGES", "TOKENS", "MODE", "TITLE"], &rows);
    Ok(())
}

pub async fn show(store: &Arc<dyn Store>, sid: &str, all: bool, json: bool, redact: bool) -> Result<()> {
    let Some(mut record) = store.export_session(sid).await? else {
        anyhow::bail!("no session {sid} in this store (`koda-store sessions` lists them)");
    };
    let mut context = store.load_context(sid).await?;
    let rows = if all {
        store.export_messages(sid).await?
    } else {
        let shown: BTreeSet<i64> = context.iter().map(|m| m.id).collect();
        let mut rows = store.export_messages(sid).await?;
        rows.retain(|m| shown.contains(&m.id));
        rows
    };
    let rows = if redact {
        // Everything printed below comes from these three.
        let r = koda_persistence::redaction::reading_redactor(store.as_ref()).await?;
        let mut counts = std::collections::BTreeMap::new();
        record = r.session_record(&record, &mut counts);
        for m in &mut context {
            m.content = m.content.as_deref().map(|t| r.redact(t).into_owned());
        }
        rows.iter().map(|m| r.message_record(m, &mut counts)).collect()
    } else {
        rows
    };
    let banner = detect_interruption(&context).map(|k| match k {
        koda_persistence::InterruptionKind::Prompt(p) => {
            format!("the prompt \"{p}\" was never answered")
        }
        koda_persistence::InterruptionKind::Tool => {
            "a tool finished but the assistant never read its result".to_owned()
        }
    });
    if json {
        let messages: Vec<_> = rows.iter().map(|m| koda_store::format::MessageLine::new(sid, m)).collect();
        let doc = json!({
            "session": &record,
            "messages": messages,
            "interrupted": banner,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("session {sid}  agent {}  root {}", record.agent_name, record.project_root.as_deref().unwrap_or("(none)"));
    if let Some(t) = &record.title {
        println!("title   {t}");
    }
    let answered: BTreeSet<String> =
        rows.iter().filter(|m| m.role == Role::Tool).filter_map(|m| m.tool_call_id.clone()).collect();
    for m in &rows {
        let mut marks = Vec::new();
        if m.compacted_ms.is_some() {
            marks.push("compacted".to_owned());
        }
        if m.role == Role::Assistant && m.completed_ms.is_none() {
            marks.push("unfinished".to_owned());
        }
        if let Some(agent) = &m.agent {
            marks.push(format!("agent {agent}"));
        }
        let used: i64 = m.prompt_tokens.unwrap_or(0) + m.completion_tokens.unwrap_or(0);
        if used > 0 {
            marks.push(format!("{used} tokens"));
        }
        let role = match (m.role, m.tool_call_id.as_deref()) {
            (Role::Tool, Some(call)) => format!("tool result for {call}"),
            (r, _) => r.as_str().to_owned(),
        };
        let marks = if marks.is_empty() { String::new() } else { format!("  [{}]", marks.join(", ")) };
        println!("\n── #{} {role}{marks}", m.id);
        if let Some(c) = &m.content {
            println!("{}", c.replace('\0', "\\0"));
        }
        if let Some(calls) = &m.tool_calls {
            for call in named_tool_call_ids(calls) {
                let state = if answered.contains(&call) { "answered below" } else { "no result" };
                println!("  → call {call} ({state})");
            }
        }
    }
    if let Some(prompt) = banner {
        println!("\n!! interrupted: {prompt}");
    }
    Ok(())
}

pub async fn stats(store: &Arc<dyn Store>, json: bool) -> Result<()> {
    let ids = store.export_session_ids().await?;
    let mut messages = 0usize;
    let mut per_agent: BTreeMap<String, i64> = BTreeMap::new();
    for id in &ids {
        messages += store.export_messages(id).await?.len();
        for (agent, usage) in store.session_usage_by_agent(id).await? {
            let total = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            let e = per_agent.entry(agent).or_default();
            *e = e.saturating_add(total);
        }
    }
    let compacted = store.compacted_stats().await?;
    let health = store.health().await?;
    let (size, b) = (health.size_bytes, health.bodies);
    let mut spent = LedgerSums::default();
    for sums in ledger_by_session(store).await?.values() {
        spent.add(sums);
    }
    if json {
        let doc = json!({
            "sessions": ids.len(), "messages": messages,
            "compacted": {"messages": compacted.message_count, "sessions": compacted.session_count,
                          "bytes": compacted.size_bytes, "oldest": compacted.oldest},
            "tokens_by_agent": per_agent, "size_bytes": size,
            "bodies": body_json(&b),
            "ledger": spent,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("sessions            {}", ids.len());
    println!("messages            {messages}");
    println!(
        "compacted           {} messages in {} sessions, {} bytes, oldest {}",
        compacted.message_count,
        compacted.session_count,
        compacted.size_bytes,
        compacted.oldest.as_deref().unwrap_or("-")
    );
    for (agent, tokens) in &per_agent {
        println!("tokens ({agent}){:pad$}{tokens}", "", pad = 12usize.saturating_sub(agent.len()));
    }
    println!(
        "spent (ledger)      {} input, {} output, {} messages (koda-store usage says more)",
        spent.prompt_tokens, spent.completion_tokens, spent.messages
    );
    println!("large outputs       {}", body_line(&b));
    match size {
        Some(b) => println!("size                {b} bytes"),
        None => println!("size                (in memory)"),
    }
    Ok(())
}

/// The usage ledger per session over all time.
async fn ledger_by_session(store: &Arc<dyn Store>) -> Result<BTreeMap<String, LedgerSums>> {
    let q = UsageQuery {
        since_ms: 0,
        until_ms: koda_persistence::MAX_TIMESTAMP_MS,
        by: UsageBy::Session,
        project_root: None,
        agent: None,
    };
    Ok(store.usage(&q).await?.into_iter().map(|r| (r.key, r.sums)).collect())
}

/// The token sums of stored messages (their message count left out:
/// compaction's summary and hint are stored but were not spent).
fn stored_tokens(rows: &[koda_persistence::MessageRecord]) -> LedgerSums {
    let mut sums = LedgerSums::default();
    for m in rows {
        sums.add(&LedgerSums { messages: 0, ..LedgerSums::of_message(m.counters()) });
    }
    sums
}

/// Large outputs stored once, as `stats --json` and `doctor --json` show them.
fn body_json(b: &koda_persistence::BodyStats) -> serde_json::Value {
    json!({"bodies": b.bodies, "references": b.references, "logical_bytes": b.logical_bytes,
           "unique_bytes": b.unique_bytes, "stored_bytes": b.stored_bytes,
           "saved_bytes": b.saved_bytes()})
}

/// Large outputs stored once, in one line: logical against stored bytes.
fn body_line(b: &koda_persistence::BodyStats) -> String {
    if b.references == 0 {
        return "none stored once".to_owned();
    }
    format!(
        "{} references to {} bodies: {} logical bytes stored in {} ({} saved)",
        b.references,
        b.bodies,
        b.logical_bytes,
        b.stored_bytes,
        b.saved_bytes()
    )
}

fn print_verification(checks: &[Verified], json: bool, extra: serde_json::Value) -> Result<bool> {
    let equal = checks.iter().filter(|v| v.equal()).count();
    if json {
        let doc = json!({ "verified": checks, "equal": equal, "sessions": checks.len(), "copy": extra });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|v| {
                vec![
                    v.session.clone(),
                    v.source_messages.to_string(),
                    v.target_messages.to_string(),
                    v.source_checksum.clone(),
                    if v.equal() { "equal".into() } else { "DIFFERENT".into() },
                ]
            })
            .collect();
        table(&["SESSION", "SOURCE", "TARGET", "CHECKSUM", "VERIFIED"], &rows);
        println!("{equal} of {} sessions verified equal", checks.len());
    }
    Ok(equal == checks.len())
}

/// Keeps the ids, or says why not.
async fn decide_ids<F>(target: &Arc<dyn Store>, range: Option<(i64, i64)>, firsts: F) -> Result<bool>
where
    F: std::future::Future<Output = Result<Vec<(String, Option<i64>)>>>,
{
    let keep = transfer::keep_ids(target, range, firsts).await?;
    if !keep && range.is_some() {
        eprintln!(
            "note: the target's message id sequence is past the source's ids: messages get \
             new ids (tool calls stay paired, order is kept)"
        );
    }
    Ok(keep)
}

pub async fn copy(
    source: &Arc<dyn Store>,
    target: &Arc<dyn Store>,
    only: &[String],
    json: bool,
    target_name: &str,
    redact: bool,
) -> Result<ExitCode> {
    let ids = transfer::selected(source, only).await?;
    // With --redact, the copy goes through the target's Redacting layer
    // (its rules and salt), whatever mode the target records.
    let (target, redactor): (Arc<dyn Store>, _) = match redact {
        true => {
            let r = koda_persistence::redaction::store_redactor(target.as_ref()).await?;
            (Arc::new(koda_persistence::Redacting::new(target.clone(), r.clone())), Some(r))
        }
        false => (target.clone(), transfer::target_redactor(target).await?),
    };
    let target = &target;
    // The first sessions' first ids tell a resumed copy, if the target
    // refuses the id range.
    let firsts = async {
        let mut firsts = Vec::new();
        for id in ids.iter().take(64) {
            let first = source.export_messages(id).await?.first().map(|m| m.id);
            firsts.push((id.clone(), first));
        }
        Ok(firsts)
    };
    let keep = decide_ids(target, source.message_id_range().await?, firsts).await?;
    let bar = transfer::bar(ids.len() as u64, "copying");
    let ticker = bar.clone();
    let report = transfer::copy_sessions(source, target, &ids, keep, redactor, move || ticker.inc(1)).await?;
    let (created, copied, checks, failures) = (report.created, report.messages, report.verified, report.failures);
    bar.finish_and_clear();
    eprintln!(
        "copied to {target_name}: {created} new sessions, {copied} messages ({} ids)",
        if keep { "original" } else { "new" }
    );
    for f in &failures {
        eprintln!("koda-store: {f}");
    }
    let all_equal =
        print_verification(&checks, json, json!({"new_sessions": created, "messages": copied, "ids_kept": keep}))?;
    Ok(if all_equal && failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn import_file(target: &Arc<dyn Store>, path: &Path) -> Result<ExitCode> {
    let header = transfer::read_header(path)?;
    // The first sessions' first ids tell a resumed import, if the target
    // refuses the id range.
    let firsts = async {
        let mut firsts = Vec::new();
        let mut peek = FileSessions::open(path)?;
        while let Some(w) = peek.next_session()? {
            if let Some(r) = &w.record {
                firsts.push((r.id.clone(), w.messages.first().map(|m| m.id)));
            }
            if firsts.len() >= 64 {
                break;
            }
        }
        Ok(firsts)
    };
    let keep = decide_ids(target, header.message_ids, firsts).await?;
    let redactor = transfer::target_redactor(target).await?;
    let bar = transfer::bar(header.sessions, "importing");
    let mut sessions = FileSessions::open(path)?;
    let (mut created, mut copied, mut failures) = (0usize, 0usize, Vec::new());
    let mut checks = Vec::new();
    while let Some(whole) = sessions.next_session()? {
        let Whole { record, .. } = &whole;
        let Some(id) = record.as_ref().map(|r| r.id.clone()) else {
            continue;
        };
        match transfer::sync_session(target, &whole, keep).await {
            Ok(moved) => {
                created += usize::from(moved.created);
                copied += moved.messages;
                checks.push(transfer::verify(target, &id, &whole, redactor.as_deref()).await?);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "imported from {} ({}): {created} new sessions, {copied} messages ({} ids)",
        path.display(),
        header.source,
        if keep { "original" } else { "new" }
    );
    for f in &failures {
        eprintln!("koda-store: {f}");
    }
    let equal = checks.iter().filter(|v| v.equal()).count();
    if equal != checks.len() {
        print_verification(&checks, false, json!(null))?;
    }
    Ok(if equal == checks.len() && failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn purge(store: &Arc<dyn Store>, days: u32, dry_run: bool) -> Result<()> {
    if !dry_run {
        let n = store.purge_compacted(days).await?;
        println!("deleted {n} compacted messages");
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let cutoff = koda_persistence::admin::purge_cutoff(now, days);
    let mut n = 0usize;
    for id in store.export_session_ids().await? {
        n += store
            .export_messages(&id)
            .await?
            .iter()
            .filter(|m| m.compacted_ms.is_some_and(|at| days == 0 || at < cutoff))
            .count();
    }
    println!("would delete {n} compacted messages (dry run: nothing deleted)");
    Ok(())
}

pub async fn doctor(store: &Arc<dyn Store>, json: bool) -> Result<ExitCode> {
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let health = store.health().await?;
    let schema =
        format!("schema version {} (this build's newest: {})", health.schema_version, health.latest_schema_version);
    if health.schema_version < health.latest_schema_version {
        findings.push(format!("{schema}: migrations pending; run `koda-store migrate` as the schema's owner"));
    } else if health.schema_version > health.latest_schema_version {
        findings.push(format!("{schema}: written by a newer build; upgrade koda-store"));
    }
    for p in &health.problems {
        findings.push(format!("store check: {p}"));
    }
    let mut counted: BTreeMap<String, SessionInfo> = BTreeMap::new();
    let ids = store.export_session_ids().await?;
    for s in listed(store, None, i64::MAX).await? {
        counted.insert(s.id.clone(), s);
    }
    let ledger = ledger_by_session(store).await?;
    for id in &ids {
        let rows = store.export_messages(id).await?;
        let stored = stored_tokens(&rows);
        let kept = ledger.get(id).copied().unwrap_or_default();
        if !(LedgerSums { messages: 0, ..kept }).covers(&stored) {
            findings.push(format!(
                "session {id}: the usage ledger holds less than its stored messages spent (ledger {:?}, messages {:?})",
                kept.as_array(),
                stored.as_array()
            ));
        }
        if let Some(info) = counted.get(id) {
            let tokens: i64 = rows.iter().fold(0i64, |t, m| {
                t.saturating_add(m.prompt_tokens.unwrap_or(0)).saturating_add(m.completion_tokens.unwrap_or(0))
            });
            let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            if info.message_count != n || info.total_tokens != tokens {
                findings.push(format!(
                    "session {id}: counters say {} messages / {} tokens, rows hold {n} / {tokens}",
                    info.message_count, info.total_tokens
                ));
            }
        } else {
            findings.push(format!("session {id}: not listed under its root"));
        }
        let active: Vec<_> = rows.iter().filter(|m| m.compacted_ms.is_none()).collect();
        let called: BTreeSet<String> = active
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .filter_map(|m| m.tool_calls.as_deref())
            .flat_map(named_tool_call_ids)
            .collect();
        let answered: BTreeSet<String> =
            active.iter().filter(|m| m.role == Role::Tool).filter_map(|m| m.tool_call_id.clone()).collect();
        for orphan in answered.difference(&called) {
            findings
                .push(format!("session {id}: tool result for {orphan} has no call (koda drops it from the context)"));
        }
        for open in called.difference(&answered) {
            notes.push(format!("session {id}: call {open} has no result (interrupted turn)"));
        }
    }
    let redaction = koda_persistence::redaction::recorded_mode(store.as_ref()).await?.as_str();
    if json {
        let doc = json!({"sessions": ids.len(), "schema_version": health.schema_version,
                         "latest_schema_version": health.latest_schema_version,
                         "bodies": body_json(&health.bodies), "redaction": redaction,
                         "ledger_sessions": ledger.len(),
                         "findings": findings, "notes": notes});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{schema}");
        println!("bodies   {} (references checked against bodies both ways)", body_line(&health.bodies));
        println!("redact   {redaction} (koda-store redact --dry-run counts what the history holds)");
        println!(
            "ledger   {} sessions (kept at least what each session's stored messages spent; deleted ones too)",
            ledger.len()
        );
        for f in &findings {
            println!("FINDING  {f}");
        }
        for n in &notes {
            println!("note     {n}");
        }
        println!("checked {} sessions: {} findings, {} notes", ids.len(), findings.len(), notes.len());
    }
    Ok(if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
