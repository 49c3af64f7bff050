//! W10: `koda-store copy` of a solo SQLite history to PostgreSQL (the
//! team move), against its ceiling: a raw binary `COPY` of the same rows
//! into an equivalent table in the same run. Also `export` of the same
//! store to a sink.

use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use koda_persistence::{MessageRecord, SessionRecord, Store};
use koda_store::transfer;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::workloads::shape;

/// Rounds of copy and ceilings, alternated: one round's ratio swings with
/// the machine (a checkpoint, the other core busy); the medians are
/// reported.
pub const ROUNDS: usize = 3;

/// What W10 measured (medians of [`ROUNDS`] rounds).
#[derive(Debug, Clone, Copy)]
pub struct W10 {
    pub messages: usize,
    pub copy_per_s: f64,
    pub ceiling_per_s: f64,
    /// The same `COPY` into the store's own `messages` table (its five
    /// indexes and the foreign key to `sessions`): what the rows cost the
    /// server without the layer.
    pub store_table_per_s: f64,
    pub export_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A SQLite store of `sessions` × `per` messages (the W1 shapes, every
/// assistant answer complete), written through `Transfer`.
async fn source(path: &Path, sessions: usize, per: usize) -> Result<Arc<dyn Store>> {
    let store = koda_persistence::open(&format!("sqlite://{}", path.display())).await?;
    let t0 = 1_795_669_624_123i64;
    for s in 0..sessions {
        let id = format!("w10-{s:05}");
        store
            .import_session(&SessionRecord {
                id: id.clone(),
                agent_name: "main".into(),
                project_root: Some(format!("/bench/w10/{}", s % 10)),
                created_ms: t0 + s as i64,
                last_accessed_ms: Some(t0 + s as i64),
                title: Some(format!("session {s}")),
                mode: None,
            })
            .await?;
        let rows: Vec<MessageRecord> = (0..per)
            .map(|i| {
                let sh = shape(i);
                let [p, c, cr, cc, t] = sh.counters().map_or([None; 5], |u| u.map(Some));
                MessageRecord {
                    content: Some(sh.content),
                    tool_calls: sh.tool_calls,
                    tool_call_id: sh.tool_call_id,
                    prompt_tokens: p,
                    completion_tokens: c,
                    cache_read_tokens: cr,
                    cache_creation_tokens: cc,
                    thinking_tokens: t,
                    completed_ms: (sh.role == koda_persistence::Role::Assistant).then_some(t0 + i as i64),
                    ..MessageRecord::bare(1, sh.role, t0 + i as i64)
                }
            })
            .collect();
        store.import_messages(&id, &rows, false).await?;
        store.set_metadata(&id, "todo", "- [ ] bench").await?;
    }
    Ok(store)
}

/// A fresh schema name.
fn schema(tag: &str) -> String {
    crate::targets::scratch_schema(tag)
}

fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

async fn drop_schema(client: &tokio_postgres::Client, schema: &str) -> Result<()> {
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    Ok(())
}

/// The ceiling: the rows `koda-store` moved, as one binary `COPY` into a
/// bare table (the columns the rows set, a primary key and the
/// `(session_id, ord)` index; rows already in memory: no source read, no
/// verification).
async fn ceiling(client: &tokio_postgres::Client, rows: &[(String, MessageRecord)]) -> Result<f64> {
    let schema = schema("w10_ceiling");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".messages (id BIGINT PRIMARY KEY, session_id TEXT NOT NULL,
                 ord BIGINT NOT NULL, role TEXT NOT NULL, content BYTEA, tool_calls BYTEA,
                 tool_call_id BYTEA, prompt_tokens BIGINT, completion_tokens BIGINT,
                 cache_read_tokens BIGINT, cache_creation_tokens BIGINT, thinking_tokens BIGINT,
                 created_ms BIGINT NOT NULL, completed_ms BIGINT);
             CREATE INDEX ON \"{schema}\".messages (session_id, ord);"
        ))
        .await?;
    let outcome = copy_rows(client, &schema, rows).await;
    drop_schema(client, &schema).await?;
    outcome
}

/// The same `COPY` into the `messages` table of a fresh store (its
/// sessions created first, untimed): the server's cost of the rows in the
/// layer's own schema, without the layer.
async fn store_table(
    client: &tokio_postgres::Client,
    url: &str,
    source: &Arc<dyn Store>,
    ids: &[String],
    rows: &[(String, MessageRecord)],
) -> Result<f64> {
    let schema = schema("w10_table");
    let outcome = async {
        let store = koda_persistence::open(&with_schema(url, &schema)).await?;
        for id in ids {
            if let Some(record) = source.export_session(id).await? {
                store.import_session(&record).await?;
            }
        }
        drop(store);
        copy_rows(client, &schema, rows).await
    }
    .await;
    drop_schema(client, &schema).await?;
    outcome
}

/// One binary `COPY` of `rows` into `"<schema>".messages`; rows/s.
async fn copy_rows(client: &tokio_postgres::Client, schema: &str, rows: &[(String, MessageRecord)]) -> Result<f64> {
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::BYTEA,
        Type::BYTEA,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ];
    let started = Instant::now();
    let sink = client
        .copy_in(&format!(
            "COPY \"{schema}\".messages (id, session_id, ord, role, content, tool_calls,
                 tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens,
                 cache_creation_tokens, thinking_tokens, created_ms, completed_ms)
             FROM STDIN BINARY"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for (n, (sid, m)) in rows.iter().enumerate() {
        let ord = n as i64;
        writer
            .as_mut()
            .write(&[
                &m.id,
                sid,
                &ord,
                &m.role.as_str(),
                &m.content.as_deref().map(str::as_bytes),
                &m.tool_calls.as_deref().map(str::as_bytes),
                &m.tool_call_id.as_deref().map(str::as_bytes),
                &m.prompt_tokens,
                &m.completion_tokens,
                &m.cache_read_tokens,
                &m.cache_creation_tokens,
                &m.thinking_tokens,
                &m.created_ms,
                &m.completed_ms,
            ])
            .await?;
    }
    let written = writer.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(written as usize == rows.len(), "ceiling COPY wrote {written} rows");
    Ok(rows.len() as f64 / secs)
}

/// One copy into a fresh schema, verified; msgs/s.
async fn copy_once(
    url: &str,
    client: &tokio_postgres::Client,
    source: &Arc<dyn Store>,
    ids: &[String],
    messages: usize,
) -> Result<f64> {
    let target_schema = schema("w10");
    let target = koda_persistence::open(&with_schema(url, &target_schema)).await?;
    let started = Instant::now();
    let outcome = async {
        let range = source.message_id_range().await?;
        let keep = transfer::keep_ids(&target, range, async { Ok(Vec::new()) }).await?;
        let report = transfer::copy_sessions(source, &target, ids, keep, None, || {}).await?;
        let secs = started.elapsed().as_secs_f64();
        ensure!(report.failures.is_empty(), "W10 copy failed: {:?}", report.failures);
        ensure!(
            report.messages == messages
                && report.verified.len() == ids.len()
                && report.verified.iter().all(transfer::Verified::equal),
            "W10 copy did not verify equal"
        );
        Ok(messages as f64 / secs)
    }
    .await;
    drop(target);
    drop_schema(client, &target_schema).await?;
    outcome
}

/// Runs W10 against the server at `url` with a source in `dir`: the
/// export once, then [`ROUNDS`] rounds of copy, ceiling and store-table
/// `COPY`, alternated.
pub async fn run(url: &str, dir: &Path, sessions: usize, per: usize) -> Result<W10> {
    let source = source(&dir.join("w10-source.db"), sessions, per).await?;
    let ids = source.export_session_ids().await?;
    let messages = sessions * per;

    let started = Instant::now();
    let (exported_sessions, exported) = transfer::export(&source, "bench", &ids, std::io::sink()).await?;
    let export_secs = started.elapsed().as_secs_f64();
    ensure!(exported_sessions == sessions && exported == messages);

    // The raw reference speaks over the same wire as the copy's store.
    let client = crate::ceiling::pg_connect(url).await?;
    let mut rows = Vec::with_capacity(messages);
    for id in &ids {
        for m in source.export_messages(id).await? {
            rows.push((id.clone(), m));
        }
    }
    let (mut copies, mut ceilings, mut tables) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        copies.push(copy_once(url, &client, &source, &ids, messages).await?);
        ceilings.push(ceiling(&client, &rows).await?);
        tables.push(store_table(&client, url, &source, &ids, &rows).await?);
    }
    Ok(W10 {
        messages,
        copy_per_s: median(copies),
        ceiling_per_s: median(ceilings),
        store_table_per_s: median(tables),
        export_per_s: messages as f64 / export_secs,
    })
}
