//! `export`, `import` and `copy`: sessions out of one store (or file) and
//! into another, resumable, then verified.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use koda_persistence::secrets::Redactor;
use koda_persistence::{MessageRecord, MetadataRecord, SessionRecord, Store};

use crate::format::{FORMAT, Header, Line, MessageLine, MetadataLine, VERSION};

/// Messages per `import_messages` call.
const BATCH: usize = 1_000;

/// One session with everything a store keeps of it.
#[derive(Debug, Clone, Default)]
pub struct Whole {
    /// The session (`None` only in a default value).
    pub record: Option<SessionRecord>,
    /// Its messages in conversation order.
    pub messages: Vec<MessageRecord>,
    /// Its metadata by key.
    pub metadata: Vec<MetadataRecord>,
}

/// Reads a whole session; `None` when the store has no such session.
pub async fn read_whole(store: &Arc<dyn Store>, id: &str) -> Result<Option<Whole>> {
    let Some(record) = store.export_session(id).await? else {
        return Ok(None);
    };
    Ok(Some(Whole {
        record: Some(record),
        messages: store.export_messages(id).await?,
        metadata: store.export_metadata(id).await?,
    }))
}

/// The content checksum of a session ([`koda_persistence::session_checksum`]).
pub fn checksum(messages: &[MessageRecord], metadata: &[MetadataRecord]) -> String {
    koda_persistence::session_checksum(messages, metadata)
}

/// What one session's transfer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    /// The session was created (not found in the target).
    pub created: bool,
    /// Messages appended.
    pub messages: usize,
}

fn same_except_id(a: &MessageRecord, b: &MessageRecord) -> bool {
    let mut a = a.clone();
    a.id = b.id;
    a == *b
}

/// Brings one session into `target`: creates it unless it exists, appends
/// the messages the target lacks (a killed run left a prefix), sets the
/// metadata. A target session that is not a prefix of the source is left
/// alone and reported.
pub async fn sync_session(target: &Arc<dyn Store>, whole: &Whole, keep_ids: bool) -> Result<Moved> {
    let Some(record) = &whole.record else {
        return Ok(Moved::default());
    };
    let created = target.import_session(record).await?;
    let have = if created { Vec::new() } else { target.export_messages(&record.id).await? };
    if have.len() > whole.messages.len() {
        bail!(
            "session {} has {} messages in the target and {} in the source: left alone \
             (delete it in the target to copy it again)",
            record.id,
            have.len(),
            whole.messages.len()
        );
    }
    if let Some((i, _)) = have
        .iter()
        .zip(&whole.messages)
        .enumerate()
        .find(|(_, (h, s))| !same_except_id(h, s) || (keep_ids && h.id != s.id))
    {
        bail!(
            "session {} differs from the source at message {} in the target: left alone \
             (delete it in the target to copy it again)",
            record.id,
            i + 1
        );
    }
    let missing = &whole.messages[have.len()..];
    for chunk in missing.chunks(BATCH) {
        target.import_messages(&record.id, chunk, keep_ids).await?;
    }
    if !whole.metadata.is_empty() {
        target.import_metadata(&record.id, &whole.metadata).await?;
    }
    Ok(Moved { created, messages: missing.len() })
}

/// Whether the copy keeps the source's ids: when the target grants their
/// range, or when an earlier run of this copy did (a session it wrote
/// carries the source's ids). `first_sessions` (session ids with their
/// first message id) is read only when the target refuses the range.
pub async fn keep_ids<F>(target: &Arc<dyn Store>, range: Option<(i64, i64)>, first_sessions: F) -> Result<bool>
where
    F: std::future::Future<Output = Result<Vec<(String, Option<i64>)>>>,
{
    let Some((lo, hi)) = range else {
        return Ok(false);
    };
    if target.claim_ids(lo, hi).await? {
        return Ok(true);
    }
    for (sid, first_id) in first_sessions.await? {
        let Some(first_id) = first_id else { continue };
        if let Some(m) = target.export_messages(&sid).await?.first() {
            return Ok(m.id == first_id);
        }
    }
    Ok(false)
}

/// Sessions copied at once: each holds a source read and a target write in
/// flight, so a server's round trips overlap.
pub const JOBS: usize = 8;

/// What a copy did, sessions in the source's order.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Sessions created in the target.
    pub created: usize,
    /// Messages appended in the target.
    pub messages: usize,
    /// One verification per session copied or found complete.
    pub verified: Vec<Verified>,
    /// Sessions left alone, and why.
    pub failures: Vec<String>,
}

/// Copies `ids` from `source` to `target` ([`JOBS`] sessions at a time),
/// each followed by its verification (against the source as `redactor`
/// redacts it, when the target redacts: see [`target_redactor`]); `tick`
/// runs once per session.
pub async fn copy_sessions(
    source: &Arc<dyn Store>,
    target: &Arc<dyn Store>,
    ids: &[String],
    keep_ids: bool,
    redactor: Option<Arc<Redactor>>,
    tick: impl Fn() + Send + Sync + 'static,
) -> Result<CopyReport> {
    let tick = Arc::new(tick);
    let jobs = Arc::new(tokio::sync::Semaphore::new(JOBS));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (source, target, id, tick, redactor) =
            (source.clone(), target.clone(), id.clone(), tick.clone(), redactor.clone());
        let permit = jobs.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = async {
                let Some(whole) = read_whole(&source, &id).await? else {
                    return Ok(None);
                };
                let moved = sync_session(&target, &whole, keep_ids).await?;
                let verified = verify(&target, &id, &whole, redactor.as_deref()).await?;
                anyhow::Ok(Some((moved, verified)))
            }
            .await;
            tick();
            (i, outcome)
        });
    }
    let mut done = Vec::with_capacity(ids.len());
    while let Some(joined) = tasks.join_next().await {
        done.push(joined?);
    }
    done.sort_by_key(|(i, _)| *i);
    let mut report = CopyReport::default();
    for (_, outcome) in done {
        match outcome {
            Ok(Some((moved, verified))) => {
                report.created += usize::from(moved.created);
                report.messages += moved.messages;
                report.verified.push(verified);
            }
            Ok(None) => {}
            Err(e) => report.failures.push(format!("{e:#}")),
        }
    }
    Ok(report)
}

/// A progress bar on stderr, drawn only on a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} sessions, {elapsed_precise} (eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// One session's verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    /// Session id.
    pub session: String,
    /// Messages in the source.
    pub source_messages: usize,
    /// Messages in the target.
    pub target_messages: usize,
    /// [`checksum`] of the source's session.
    pub source_checksum: String,
    /// [`checksum`] of the target's session.
    pub target_checksum: String,
}

impl Verified {
    /// Same count and checksum on both sides.
    pub fn equal(&self) -> bool {
        self.source_messages == self.target_messages && self.source_checksum == self.target_checksum
    }
}

/// Compares `whole` (the source's) with the target's copy, the target's
/// side computed by the target ([`Transfer::session_checksum`](koda_persistence::Transfer::session_checksum)).
/// A target that redacts (`redactor`, see [`target_redactor`]) is compared
/// with the source as it redacts it.
pub async fn verify(target: &Arc<dyn Store>, id: &str, whole: &Whole, redactor: Option<&Redactor>) -> Result<Verified> {
    let (target_messages, target_checksum) = target.session_checksum(id).await?;
    let source_checksum = match redactor {
        None => checksum(&whole.messages, &whole.metadata),
        Some(r) => {
            let mut counts = BTreeMap::new();
            let messages: Vec<MessageRecord> =
                whole.messages.iter().map(|m| r.message_record(m, &mut counts)).collect();
            let metadata: Vec<MetadataRecord> =
                whole.metadata.iter().map(|e| r.metadata_record(e, &mut counts)).collect();
            checksum(&messages, &metadata)
        }
    };
    Ok(Verified {
        session: id.to_owned(),
        source_messages: whole.messages.len(),
        target_messages,
        source_checksum,
        target_checksum,
    })
}

/// The redactor of `target` when its redaction mode is `secrets` (what it
/// stores of a copy is the redacted source).
pub async fn target_redactor(target: &Arc<dyn Store>) -> Result<Option<Arc<Redactor>>> {
    use koda_persistence::redaction::{recorded_mode, store_redactor};
    Ok(match recorded_mode(target.as_ref()).await? {
        koda_persistence::secrets::RedactMode::Secrets => Some(store_redactor(target.as_ref()).await?),
        koda_persistence::secrets::RedactMode::Off => None,
    })
}

/// The export's session ids: all of them, or the ones asked for (an
/// unknown one is an error).
pub async fn selected(store: &Arc<dyn Store>, only: &[String]) -> Result<Vec<String>> {
    let all = store.export_session_ids().await?;
    if only.is_empty() {
        return Ok(all);
    }
    let known: BTreeSet<&String> = all.iter().collect();
    if let Some(missing) = only.iter().find(|id| !known.contains(id)) {
        bail!("no session {missing} in the source store (`koda-store sessions` lists them)");
    }
    let wanted: BTreeSet<&String> = only.iter().collect();
    Ok(all.into_iter().filter(|id| wanted.contains(id)).collect())
}

/// Writes the export of `ids` to `out`; returns (sessions, messages).
pub async fn export(store: &Arc<dyn Store>, source: &str, ids: &[String], out: impl Write) -> Result<(usize, usize)> {
    export_redacted(store, source, ids, out, None).await
}

/// As [`export`], every record passed through `redactor` when there is one
/// (`export --redact`), the credentials it found counted per rule into
/// its second half.
pub async fn export_redacted(
    store: &Arc<dyn Store>,
    source: &str,
    ids: &[String],
    out: impl Write,
    mut redactor: Option<(&Redactor, &mut BTreeMap<String, u64>)>,
) -> Result<(usize, usize)> {
    let mut out = BufWriter::new(out);
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        source: source.to_owned(),
        sessions: ids.len() as u64,
        message_ids: store.message_id_range().await?,
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let mut messages = 0;
    for id in ids {
        let Some(whole) = read_whole(store, id).await? else {
            continue; // deleted since the listing
        };
        let Some(record) = &whole.record else {
            continue;
        };
        let record = match redactor.as_mut() {
            Some((r, counts)) => r.session_record(record, counts),
            None => record.clone(),
        };
        serde_json::to_writer(&mut out, &Line::Session(record))?;
        out.write_all(b"\n")?;
        for m in &whole.messages {
            let line = match redactor.as_mut() {
                Some((r, counts)) => MessageLine::new(id, &r.message_record(m, counts)),
                None => MessageLine::new(id, m),
            };
            serde_json::to_writer(&mut out, &Line::Message(line))?;
            out.write_all(b"\n")?;
        }
        for e in &whole.metadata {
            let line = match redactor.as_mut() {
                Some((r, counts)) => MetadataLine::new(id, &r.metadata_record(e, counts)),
                None => MetadataLine::new(id, e),
            };
            serde_json::to_writer(&mut out, &Line::Metadata(line))?;
            out.write_all(b"\n")?;
        }
        messages += whole.messages.len();
    }
    out.flush()?;
    Ok((ids.len(), messages))
}

/// Reads an export file's header.
pub fn read_header(path: &Path) -> Result<Header> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first).with_context(|| format!("reading {}", path.display()))?;
    let header: Header = serde_json::from_str(&first)
        .with_context(|| format!("{} does not start with a koda-store export header", path.display()))?;
    if header.format != FORMAT {
        bail!("{} is a {:?} file, not a {FORMAT}", path.display(), header.format);
    }
    if header.version != VERSION {
        bail!(
            "{} has export format version {}; this koda-store reads version {VERSION}",
            path.display(),
            header.version
        );
    }
    Ok(header)
}

/// The sessions of an export file, one at a time.
#[derive(Debug)]
pub struct FileSessions {
    lines: std::io::Lines<BufReader<std::fs::File>>,
    number: usize,
    pending: Option<SessionRecord>,
    path: String,
}

impl FileSessions {
    /// Opens an export file (its header is read by [`read_header`]).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut lines = BufReader::new(file).lines();
        lines.next(); // the header, read by read_header
        Ok(Self { lines, number: 1, pending: None, path: path.display().to_string() })
    }

    /// The next session with its messages and metadata.
    pub fn next_session(&mut self) -> Result<Option<Whole>> {
        let mut whole = Whole { record: self.pending.take(), ..Whole::default() };
        for line in self.lines.by_ref() {
            self.number += 1;
            let at = || format!("{} line {}", self.path, self.number);
            let line = line.with_context(at)?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line).with_context(at)?;
            match parsed {
                Line::Session(s) => {
                    if whole.record.is_some() {
                        self.pending = Some(s);
                        return Ok(Some(whole));
                    }
                    whole.record = Some(s);
                }
                Line::Message(m) => {
                    let owner = whole.record.as_ref().map(|r| r.id.as_str());
                    if owner != Some(m.session.as_str()) {
                        bail!("{}: message of session {} out of place", at(), m.session);
                    }
                    whole.messages.push(m.record);
                }
                Line::Metadata(e) => {
                    let owner = whole.record.as_ref().map(|r| r.id.as_str());
                    if owner != Some(e.session.as_str()) {
                        bail!("{}: metadata of session {} out of place", at(), e.session);
                    }
                    whole.metadata.push(e.record);
                }
            }
        }
        Ok(whole.record.is_some().then_some(whole))
    }
}
