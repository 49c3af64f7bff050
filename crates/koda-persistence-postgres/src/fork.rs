//! Forking a session: the Fork capability.

use crate::PostgresStore;
use crate::exec::{Conn, bytes, int, text};
use crate::rows::{as_bytes, get};
use crate::transfer::export_messages;
use crate::transfer::export_session;
use anyhow::Result;
use koda_persistence_api::Fork;
use koda_persistence_api::backend::session_not_found;

/// Forks session `id` at `at` into `new_id`. The cut comes from the
/// export ([`fork_len`](koda_persistence_api::fork::fork_len)); then one
/// statement, in the lock order (the session row, then its messages, then
/// the bodies in address order), creates the fork with its counters,
/// copies the messages up to the cut with their states and body
/// addresses, adds a reference to each body, and copies the usage by
/// agent and the metadata.
pub(crate) async fn fork(c: &Conn, id: &str, at: Option<i64>, new_id: &str, now: i64) -> Result<String> {
    use koda_persistence_api::fork::{fork_len, fork_title};
    let original = export_session(c, id).await?.ok_or_else(|| session_not_found(id))?;
    let messages = export_messages(c, id).await?;
    let n = fork_len(&messages, at)?;
    // `None`: every message (the whole session); else the last one copied
    // (0: none).
    let last: Option<i64> = if at.is_none() && n == messages.len() {
        None
    } else {
        Some(n.checked_sub(1).and_then(|i| messages.get(i)).map_or(0, |m| m.id))
    };
    let title = fork_title(original.title.as_deref());
    let row = c
        .db()
        .opt(
            "fork_session",
            "WITH src AS (
                 SELECT id, agent_name, project_root, mode FROM kp.sessions WHERE id = $1
                 FOR NO KEY UPDATE),
             picked AS MATERIALIZED (
                 SELECT m.* FROM kp.messages m, src
                 WHERE m.session_id = src.id
                   AND ($3::BIGINT IS NULL OR m.ord <= COALESCE(
                       (SELECT ord FROM kp.messages WHERE id = $3 AND session_id = $1), 0))
                 ORDER BY m.ord),
             ns AS (
                 INSERT INTO kp.sessions (id, agent_name, project_root, created_ms, title, mode,
                     message_count, total_tokens, next_ord)
                 SELECT $2, agent_name, project_root, $4, $5, mode,
                     (SELECT count(*) FROM picked),
                     (SELECT COALESCE(SUM(COALESCE(prompt_tokens, 0)::NUMERIC
                         + COALESCE(completion_tokens, 0)), 0) FROM picked),
                     (SELECT count(*) FROM picked)
                 FROM src RETURNING id),
             ins AS (
                 INSERT INTO kp.messages (session_id, ord, role, content, full_content, tool_calls,
                     tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens,
                     cache_creation_tokens, thinking_tokens, agent_name, created_ms, completed_ms,
                     compacted_ms, content_body, full_content_body, tool_calls_body)
                 SELECT ns.id, row_number() OVER (ORDER BY p.ord), p.role, p.content,
                     p.full_content, p.tool_calls, p.tool_call_id, p.prompt_tokens,
                     p.completion_tokens, p.cache_read_tokens, p.cache_creation_tokens,
                     p.thinking_tokens, p.agent_name, p.created_ms, p.completed_ms,
                     p.compacted_ms, p.content_body, p.full_content_body, p.tool_calls_body
                 FROM picked p, ns ORDER BY p.ord
                 RETURNING 1),
             used AS (
                 SELECT h, count(*) AS n FROM (
                     SELECT content_body AS h FROM picked
                     UNION ALL SELECT full_content_body FROM picked
                     UNION ALL SELECT tool_calls_body FROM picked) x
                 WHERE h IS NOT NULL GROUP BY h),
             locked AS MATERIALIZED (
                 SELECT b.hash FROM kp.bodies b, ns WHERE b.hash IN (SELECT h FROM used)
                 ORDER BY b.hash FOR NO KEY UPDATE OF b),
             refs AS (
                 UPDATE kp.bodies b SET refs = b.refs + used.n FROM used, locked
                 WHERE b.hash = used.h AND locked.hash = used.h
                 RETURNING 1),
             usage AS (
                 INSERT INTO kp.session_usage (session_id, agent, prompt, completion, cache_read,
                     cache_creation, thinking, calls)
                 SELECT ns.id, COALESCE(p.agent_name, 'main'::BYTEA),
                     COALESCE(SUM(p.prompt_tokens), 0), COALESCE(SUM(p.completion_tokens), 0),
                     COALESCE(SUM(p.cache_read_tokens), 0),
                     COALESCE(SUM(p.cache_creation_tokens), 0),
                     COALESCE(SUM(p.thinking_tokens), 0), COUNT(*)
                 FROM picked p, ns
                 WHERE p.prompt_tokens IS NOT NULL OR p.completion_tokens IS NOT NULL
                 GROUP BY ns.id, COALESCE(p.agent_name, 'main'::BYTEA)
                 RETURNING 1),
             meta AS (
                 INSERT INTO kp.session_metadata (session_id, key, value, updated_ms)
                 SELECT ns.id, d.key, d.value, $4 FROM kp.session_metadata d, ns
                 WHERE d.session_id = $1
                 RETURNING 1)
             SELECT id FROM ns",
            &[text(&id), text(&new_id), int(&last), int(&now), bytes(&as_bytes(&title))],
        )
        .await?;
    match row {
        Some(r) => Ok(get(&r, 0, "fork id")?),
        None => Err(session_not_found(id)),
    }
}

#[async_trait::async_trait]
impl Fork for PostgresStore {
    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        let now = self.clock.now_ms();
        let new_id = uuid::Uuid::now_v7().to_string();
        let new_id = &new_id;
        self.with_client(|c| async move { fork(&c, session_id, at, new_id, now).await }).await
    }
}
