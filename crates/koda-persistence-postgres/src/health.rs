//! The schema's check of itself: the Health capability.

use crate::PostgresStore;
use crate::exec::{Conn, Db, bytes, text};
use crate::rows::get;
use anyhow::Result;
use koda_persistence_api::BodyStats;
use koda_persistence_api::Health;
use koda_persistence_api::bodies::{body_name, unpack_checked};
use koda_persistence_api::{PersistenceError, StoreHealth};

/// The newest migration applied to the schema (0 for none).
pub(crate) async fn schema_version(db: &Db<'_>) -> Result<i64> {
    let version: Option<i32> = db
        .one("reading the schema history", "SELECT MAX(version) FROM kp.koda_schema_history", &[])
        .await?
        .try_get(0)
        .map_err(|e| PersistenceError::Corrupt(format!("schema history: {e}")))?;
    Ok(i64::from(version.unwrap_or(0)))
}

/// Bodies against the references to them, both ways, and every body
/// against its address (read in pages of 256, in address order).
pub(crate) async fn body_health(db: &Db<'_>, problems: &mut Vec<String>) -> Result<BodyStats> {
    let rows = db
        .rows(
            "checking body references",
            "WITH uses AS (
                 SELECT h, count(*) AS n FROM (
                     SELECT content_body AS h FROM kp.messages WHERE content_body IS NOT NULL
                     UNION ALL SELECT full_content_body FROM kp.messages WHERE full_content_body IS NOT NULL
                     UNION ALL SELECT tool_calls_body FROM kp.messages WHERE tool_calls_body IS NOT NULL
                     UNION ALL SELECT content_body FROM kp.trash_messages WHERE content_body IS NOT NULL
                     UNION ALL SELECT full_content_body FROM kp.trash_messages
                         WHERE full_content_body IS NOT NULL
                     UNION ALL SELECT tool_calls_body FROM kp.trash_messages
                         WHERE tool_calls_body IS NOT NULL) x
                 GROUP BY h)
             SELECT COALESCE(b.hash, u.h), b.refs, COALESCE(u.n, 0), b.len, octet_length(b.data)::BIGINT
             FROM kp.bodies b FULL JOIN uses u ON u.h = b.hash",
            &[],
        )
        .await?;
    let mut stats = BodyStats::default();
    for r in &rows {
        let hash: Vec<u8> = get(r, 0, "body address")?;
        let refs: Option<i64> = get(r, 1, "body count")?;
        let used: i64 = get(r, 2, "body uses")?;
        let Some(refs) = refs else {
            problems.push(format!("{used} message fields refer to body {}, which is missing", body_name(&hash)));
            continue;
        };
        if refs != used {
            problems.push(format!("body {}: counts {refs} references, {used} message fields use it", body_name(&hash)));
        }
        let len = u64::try_from(get::<i64>(r, 3, "body length")?).unwrap_or(0);
        let packed = u64::try_from(get::<i64>(r, 4, "body size")?).unwrap_or(0);
        let used = u64::try_from(used).unwrap_or(0);
        stats.add_body(len, packed, used);
    }
    let mut after: Vec<u8> = Vec::new();
    loop {
        let page = db
            .rows(
                "checking bodies",
                "SELECT hash, data, len FROM kp.bodies WHERE hash > $1 ORDER BY hash LIMIT 256",
                &[bytes(&after)],
            )
            .await?;
        for r in &page {
            let hash: Vec<u8> = get(r, 0, "body address")?;
            let data: Vec<u8> = get(r, 1, "body")?;
            let len: i64 = get(r, 2, "body length")?;
            match unpack_checked(&data, &hash) {
                Ok(text) if i64::try_from(text.len()).ok() == Some(len) => {}
                Ok(text) => {
                    problems.push(format!("body {}: records {len} bytes, holds {}", body_name(&hash), text.len()))
                }
                Err(e) => problems.push(format!("body {}: {}", body_name(&hash), e.reason())),
            }
            after = hash;
        }
        if page.len() < 256 {
            break;
        }
    }
    Ok(stats)
}

/// The applied migrations against this build's, every session's position
/// counter against its messages (an insert takes `next_ord + 1`: a counter
/// behind its rows would place new messages among old ones), and the usage
/// kept by agent against the messages' counters.
pub(crate) async fn health(c: &Conn, schema: &str) -> Result<StoreHealth> {
    let db = c.db();
    let version = schema_version(&db).await?;
    let behind = db
        .rows(
            "checking positions",
            "SELECT s.id, s.next_ord, MAX(m.ord) FROM kp.sessions s JOIN kp.messages m ON m.session_id = s.id
             GROUP BY s.id, s.next_ord HAVING MAX(m.ord) > s.next_ord",
            &[],
        )
        .await?;
    let mut problems = Vec::new();
    for r in &behind {
        let sid: String = get(r, 0, "session id")?;
        let next: i64 = get(r, 1, "next_ord")?;
        let max: i64 = get(r, 2, "max ord")?;
        problems.push(format!("session {sid}: position counter {next} is behind its last message's {max}"));
    }
    let usage = db
        .rows(
            "checking usage",
            "WITH counted AS (
                 SELECT session_id, COALESCE(agent_name, 'main'::BYTEA) AS agent,
                     COALESCE(SUM(prompt_tokens), 0) AS p, COALESCE(SUM(completion_tokens), 0) AS c,
                     COALESCE(SUM(cache_read_tokens), 0) AS cr,
                     COALESCE(SUM(cache_creation_tokens), 0) AS cc,
                     COALESCE(SUM(thinking_tokens), 0) AS t, COUNT(*) AS calls
                 FROM kp.messages WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL
                 GROUP BY 1, 2),
             kept AS (
                 SELECT session_id, agent, prompt, completion, cache_read, cache_creation,
                     thinking, calls
                 FROM kp.session_usage WHERE calls <> 0),
             differ AS (
                 (SELECT * FROM counted EXCEPT ALL SELECT * FROM kept)
                 UNION ALL (SELECT * FROM kept EXCEPT ALL SELECT * FROM counted))
             SELECT DISTINCT session_id FROM differ ORDER BY 1",
            &[],
        )
        .await?;
    for r in &usage {
        let sid: String = get(r, 0, "session id")?;
        problems.push(format!("session {sid}: the usage kept by agent differs from its messages' counters"));
    }
    let size: Option<i64> = db
        .one(
            "measuring the schema",
            "SELECT SUM(pg_total_relation_size(c.oid))::BIGINT FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
            &[text(&schema)],
        )
        .await?
        .try_get(0)
        .map_err(|e| PersistenceError::Corrupt(format!("schema size: {e}")))?;
    let bodies = body_health(&db, &mut problems).await?;
    Ok(StoreHealth {
        bodies,
        schema_version: version,
        latest_schema_version: crate::schema::latest_migration(),
        problems,
        size_bytes: size.and_then(|s| u64::try_from(s).ok()),
    })
}

#[async_trait::async_trait]
impl Health for PostgresStore {
    async fn health(&self) -> Result<StoreHealth> {
        let schema = self.dialect.schema();
        self.with_client(|c| async move { health(&c, schema).await }).await
    }
}
