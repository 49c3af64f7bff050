//! One async function per trait method. Single statements run in autocommit
//! (one transaction each); multi-statement writes take an explicit
//! transaction and lock the session row first. All SQL is parameterised,
//! every parameter's type is declared (see [`crate::exec`]), every table
//! is named through the schema (`kp.`); strings travel as `BYTEA`, roles
//! as text.

use crate::bodies::Found;
use crate::bodies::pack_bodies;
use crate::bodies::split;
use crate::bodies::upsert_bodies;
use crate::exec::{Conn, Db, boolean, byte_arrays, bytes, int, ints, text};
use crate::rows::{
    CONTENT, MESSAGE_COLUMNS, as_bytes, body_string, get, message, opt_bytes, required_string, role, string,
};
use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, format_timestamp, message_not_found, order_usage_groups, purge_cutoff, session_not_found,
};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, PersistenceError, Role, SessionInfo, SessionUsage,
};
use std::collections::BTreeMap;

pub(crate) async fn create_session(c: &Conn, id: &str, agent: &str, root: &str, now: i64) -> Result<()> {
    c.db()
        .execute(
            "create_session",
            "INSERT INTO kp.sessions (id, agent_name, project_root, created_ms) VALUES ($1, $2, $3, $4)",
            &[text(&id), bytes(&as_bytes(agent)), bytes(&as_bytes(root)), int(&now)],
        )
        .await?;
    Ok(())
}

pub(crate) async fn list_sessions(c: &Conn, limit: i64, root: &str) -> Result<Vec<SessionInfo>> {
    let rows = c
        .db()
        .rows(
            "list_sessions",
            "SELECT id, agent_name, created_ms, message_count,
                    LEAST(total_tokens, 9223372036854775807)::BIGINT, title, mode FROM (
                 (SELECT * FROM kp.sessions WHERE sha256(project_root) = sha256($1) AND project_root = $1
                  ORDER BY created_ms DESC, seq DESC LIMIT $2)
                 UNION ALL
                 (SELECT * FROM kp.sessions WHERE project_root IS NULL ORDER BY created_ms DESC, seq DESC LIMIT $2)
             ) AS s ORDER BY created_ms DESC, seq DESC LIMIT $2",
            &[bytes(&as_bytes(root)), int(&limit)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = get(r, 0, "session id")?;
            let w = |col: &str| format!("{col} of session {id:?}");
            Ok(SessionInfo {
                agent_name: required_string(r, 1, &w("agent_name"))?,
                created_at: format_timestamp(get(r, 2, &w("created_ms"))?),
                message_count: get(r, 3, &w("message_count"))?,
                total_tokens: get(r, 4, &w("total_tokens"))?,
                title: string(r, 5, &w("title"))?,
                mode: string(r, 6, &w("mode"))?,
                id,
            })
        })
        .collect()
}

pub(crate) async fn delete_session(c: &Conn, id: &str) -> Result<bool> {
    Ok(c.db().execute("delete_session", "DELETE FROM kp.sessions WHERE id = $1", &[text(&id)]).await? > 0)
}

pub(crate) async fn set_session_text(c: &Conn, mode: bool, id: &str, value: &str) -> Result<bool> {
    let sql = if mode {
        "UPDATE kp.sessions SET mode = $2 WHERE id = $1"
    } else {
        "UPDATE kp.sessions SET title = $2 WHERE id = $1"
    };
    Ok(c.db().execute("updating a session", sql, &[text(&id), bytes(&as_bytes(value))]).await? > 0)
}

pub(crate) async fn get_session_mode(c: &Conn, id: &str) -> Result<Option<String>> {
    let row = c.db().opt("get_session_mode", "SELECT mode FROM kp.sessions WHERE id = $1", &[text(&id)]).await?;
    Ok(match row {
        Some(r) => string(&r, 0, "mode")?,
        None => None,
    })
}

pub(crate) async fn last_accessed(c: &Conn, id: &str) -> Result<Option<i64>> {
    let row = c
        .db()
        .opt("get_session_idle_secs", "SELECT last_accessed_ms FROM kp.sessions WHERE id = $1", &[text(&id)])
        .await?;
    Ok(match row {
        Some(r) => get(&r, 0, "last_accessed_ms")?,
        None => None,
    })
}

/// The end of an insert into `session_usage` (aliased `g`) that adds the
/// inserted sums to a group already kept.
macro_rules! add_to_kept_usage {
    () => {
        "ON CONFLICT (session_id, sha256(agent)) DO UPDATE SET
             prompt = g.prompt + EXCLUDED.prompt,
             completion = g.completion + EXCLUDED.completion,
             cache_read = g.cache_read + EXCLUDED.cache_read,
             cache_creation = g.cache_creation + EXCLUDED.cache_creation,
             thinking = g.thinking + EXCLUDED.thinking,
             calls = g.calls + EXCLUDED.calls"
    };
}
pub(crate) use add_to_kept_usage;

/// The end of an insert into `usage_ledger` (aliased `l`) that adds the
/// inserted sums to a row already kept.
macro_rules! add_to_ledger {
    () => {
        "ON CONFLICT (session_id, day, sha256(agent)) DO UPDATE SET
             prompt = l.prompt + EXCLUDED.prompt,
             completion = l.completion + EXCLUDED.completion,
             cache_read = l.cache_read + EXCLUDED.cache_read,
             cache_creation = l.cache_creation + EXCLUDED.cache_creation,
             thinking = l.thinking + EXCLUDED.thinking,
             messages = l.messages + EXCLUDED.messages"
    };
}
pub(crate) use add_to_ledger;

/// One statement: lock and touch the session (counters, access time, next
/// position, version), then append the message at that position. Returns
/// the message id and the session's new version.
pub(crate) async fn insert_message(c: &Conn, m: &NewMessage, now: i64) -> Result<(i64, i64)> {
    let u = m.usage;
    let role = m.role.to_string();
    let mut found = Found::new();
    let ([content, full, calls], [content_body, full_body, calls_body]) =
        split(&m.role, [m.content.as_deref(), m.full_content.as_deref(), m.tool_calls.as_deref()], &mut found);
    let new = pack_bodies(found).await?;
    let (call_id, agent) = (opt_bytes(&m.tool_call_id), opt_bytes(&m.agent));
    let (prompt, completion, cache_read, cache_creation, thinking) = (
        u.map(|u| u.prompt_tokens),
        u.map(|u| u.completion_tokens),
        u.map(|u| u.cache_read_tokens),
        u.map(|u| u.cache_creation_tokens),
        u.map(|u| u.thinking_tokens),
    );
    // The session's NUMERIC total and its usage by agent take exact sums
    // (purge subtracts exact sums); they are saturated only when read.
    let row = c
        .db()
        .opt(
            "insert",
            concat!(
                "WITH s AS (
                 UPDATE kp.sessions SET last_accessed_ms = $2, message_count = message_count + 1,
                     total_tokens = total_tokens + COALESCE($7, 0) + COALESCE($8, 0),
                     next_ord = next_ord + 1,
                     version = version + 1
                 WHERE id = $1 RETURNING next_ord, version),
             b AS (",
                upsert_bodies!("14", "15", "16", "17"),
                "),
             i AS (
                 INSERT INTO kp.messages (session_id, ord, role, content, tool_calls, tool_call_id,
                     prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
                     thinking_tokens, agent_name, full_content, created_ms, content_body,
                     full_content_body, tool_calls_body)
                 SELECT $1, s.next_ord, $3::kp.kp_role, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $2,
                     $18, $19, $20 FROM s
                 RETURNING id),
             u AS (
                 INSERT INTO kp.session_usage AS g (session_id, agent, prompt, completion,
                     cache_read, cache_creation, thinking, calls)
                 SELECT $1, COALESCE($12, 'main'::BYTEA), COALESCE($7, 0), COALESCE($8, 0),
                     COALESCE($9, 0), COALESCE($10, 0), COALESCE($11, 0), 1
                 FROM s WHERE $7 IS NOT NULL OR $8 IS NOT NULL
                 ",
                add_to_kept_usage!(),
                "),
             l AS (
                 INSERT INTO kp.usage_ledger AS l (session_id, day, agent, root, prompt, completion,
                     cache_read, cache_creation, thinking, messages)
                 SELECT $1, $2 / 86400000, COALESCE($12, 'main'::BYTEA),
                     (SELECT project_root FROM kp.sessions WHERE id = $1), COALESCE($7, 0),
                     COALESCE($8, 0), COALESCE($9, 0), COALESCE($10, 0), COALESCE($11, 0), 1
                 FROM s
                 ",
                add_to_ledger!(),
                ")
             SELECT i.id, s.version FROM i, s"
            ),
            &[
                text(&m.session_id),
                int(&now),
                text(&role),
                bytes(&content),
                bytes(&calls),
                bytes(&call_id),
                int(&prompt),
                int(&completion),
                int(&cache_read),
                int(&cache_creation),
                int(&thinking),
                bytes(&agent),
                bytes(&full),
                byte_arrays(&new.hashes),
                byte_arrays(&new.data),
                ints(&new.lens),
                ints(&new.refs),
                bytes(&content_body),
                bytes(&full_body),
                bytes(&calls_body),
            ],
        )
        .await?;
    match row {
        Some(r) => Ok((get(&r, 0, "new message id")?, get(&r, 1, "session version")?)),
        None => Err(session_not_found(&m.session_id)),
    }
}

/// The session's change counter, or `None` for an unknown session.
pub(crate) async fn session_version(c: &Conn, id: &str) -> Result<Option<i64>> {
    let row = c.db().opt("reading a version", "SELECT version FROM kp.sessions WHERE id = $1", &[text(&id)]).await?;
    Ok(match row {
        Some(r) => Some(get(&r, 0, "version")?),
        None => None,
    })
}

async fn messages(c: &Conn, sql: &str, id: &str) -> Result<Vec<(Message, bool)>> {
    let rows = c.db().rows("loading messages", sql, &[text(&id)]).await?;
    rows.iter().map(|r| Ok(message(r)?)).collect()
}

pub(crate) async fn load_all(c: &Conn, id: &str) -> Result<Vec<Message>> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM kp.messages WHERE session_id = $1 ORDER BY ord");
    Ok(messages(c, &sql, id).await?.into_iter().map(|(m, _)| m).collect())
}

pub(crate) async fn load_active(c: &Conn, id: &str) -> Result<Vec<ContextRow>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM kp.messages WHERE session_id = $1 AND compacted_ms IS NULL ORDER BY ord"
    );
    Ok(messages(c, &sql, id).await?.into_iter().map(|(message, complete)| ContextRow { message, complete }).collect())
}

pub(crate) async fn recent_user_messages(c: &Conn, limit: i64) -> Result<Vec<String>> {
    let rows = c
        .db()
        .rows(
            "recent_user_messages",
            &format!(
                "SELECT {CONTENT} FROM kp.messages
             WHERE role = 'user' AND (content_body IS NOT NULL OR content <> ''::BYTEA)
             ORDER BY id DESC LIMIT $1"
            ),
            &[int(&limit)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            body_string(r, 0, "user content")?
                .ok_or_else(|| PersistenceError::Corrupt("user content is NULL".into()).into())
        })
        .collect()
}

pub(crate) async fn last_content(c: &Conn, id: &str, role: Role) -> Result<String> {
    let role = role.to_string();
    let row = c
        .db()
        .opt(
            "last message",
            &format!(
                "SELECT {CONTENT} FROM kp.messages
             WHERE session_id = $1 AND role = $2::kp.kp_role
               AND (content IS NOT NULL OR content_body IS NOT NULL)
             ORDER BY ord DESC LIMIT 1"
            ),
            &[text(&id), text(&role)],
        )
        .await?;
    Ok(match row {
        Some(r) => body_string(&r, 0, "content")?.unwrap_or_default(),
        None => String::new(),
    })
}

pub(crate) async fn has_pending_tool_calls(c: &Conn, id: &str) -> Result<bool> {
    let row = c
        .db()
        .opt(
            "has_pending_tool_calls",
            "SELECT role::TEXT, tool_calls IS NOT NULL OR tool_calls_body IS NOT NULL FROM kp.messages
             WHERE session_id = $1 AND compacted_ms IS NULL ORDER BY ord DESC LIMIT 1",
            &[text(&id)],
        )
        .await?;
    Ok(match row {
        Some(r) => role(&r, 0, "role")? == Role::Assistant && get::<bool>(&r, 1, "tool_calls")?,
        None => false,
    })
}

/// Completes message `id`; returns its session and the session's new version.
///
/// Lock order (see the crate docs): the message's session row first
/// (`FOR NO KEY UPDATE` in a materialised CTE, which the update below can
/// only read after the lock is held), then the message row.
pub(crate) async fn mark_complete(c: &Conn, id: i64, now: i64) -> Result<(String, i64)> {
    match c
        .db()
        .opt(
            "mark_message_complete",
            "WITH s AS MATERIALIZED (
                 SELECT id FROM kp.sessions
                 WHERE id = (SELECT session_id FROM kp.messages WHERE id = $1)
                 FOR NO KEY UPDATE),
             m AS (
                 UPDATE kp.messages SET completed_ms = $2 FROM s
                 WHERE messages.id = $1 AND messages.session_id = s.id
                 RETURNING messages.session_id)
             UPDATE kp.sessions SET version = sessions.version + 1 FROM m
             WHERE sessions.id = m.session_id
             RETURNING sessions.id, sessions.version",
            &[int(&id), int(&now)],
        )
        .await?
    {
        Some(r) => Ok((get(&r, 0, "session id")?, get(&r, 1, "version")?)),
        None => Err(message_not_found(id)),
    }
}

/// Per-agent sums as `session_usage` keeps them (exact in NUMERIC,
/// saturated to `i64::MAX` here), with no agent and `"main"` merged into
/// `"main"`, ordered by prompt + completion descending then name bytes.
pub(crate) async fn usage_by_agent(c: &Conn, id: &str) -> Result<Vec<(String, SessionUsage)>> {
    let rows = c
        .db()
        .rows(
            "usage",
            "SELECT agent,
                    LEAST(prompt, 9223372036854775807)::BIGINT,
                    LEAST(completion, 9223372036854775807)::BIGINT,
                    LEAST(cache_read, 9223372036854775807)::BIGINT,
                    LEAST(cache_creation, 9223372036854775807)::BIGINT,
                    LEAST(thinking, 9223372036854775807)::BIGINT,
                    calls
             FROM kp.session_usage
             WHERE session_id = $1 AND calls > 0",
            &[text(&id)],
        )
        .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok((
                required_string(r, 0, "agent_name")?,
                SessionUsage {
                    prompt_tokens: get(r, 1, "usage")?,
                    completion_tokens: get(r, 2, "usage")?,
                    cache_read_tokens: get(r, 3, "usage")?,
                    cache_creation_tokens: get(r, 4, "usage")?,
                    thinking_tokens: get(r, 5, "usage")?,
                    api_calls: get(r, 6, "usage")?,
                },
            ))
        })
        .collect::<Result<Vec<_>, PersistenceError>>()?;
    order_usage_groups(&mut out);
    Ok(out)
}

pub(crate) async fn compact(c: &Conn, id: &str, summary: &str, keep: usize, now: i64) -> Result<usize> {
    // One round trip: the function (migration V3) locks the session, reads
    // the active messages after the lock, marks, shifts and inserts, so
    // the session's lock is held for those statements alone.
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let mut found = Found::new();
    let ([inline, _, _], [body, _, _]) = split(&Role::System, [Some(summary), None, None], &mut found);
    let new = pack_bodies(found).await?;
    let (data, len) = (new.data.first(), new.lens.first());
    let row = c
        .db()
        .one(
            "compacting",
            "SELECT kp.kp_compact($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                text(&id),
                bytes(&inline),
                bytes(&as_bytes(COMPACTION_HINT)),
                int(&keep),
                int(&now),
                bytes(&body),
                bytes(&data),
                int(&len),
            ],
        )
        .await?;
    // -1: no such session.
    let marked: i64 = get(&row, 0, "compacted count")?;
    usize::try_from(marked).map_err(|_| session_not_found(id))
}

/// Sets the content of the listed messages; returns the sessions touched.
///
/// Lock order: the sessions of the listed messages first, in id order, then
/// the messages.
///
/// One transaction: the update (which returns the bodies it let go and
/// how many tool and other messages it set), then the stub's body and the
/// released ones in one upsert (address order), then the bodies no field
/// uses any more are removed.
pub(crate) async fn clear_content(c: &mut Conn, ids: &[i64], stub: &str) -> Result<Vec<String>> {
    // The stub as a tool message's content and as any other's.
    let mut tool_found = Found::new();
    let ([tool_inline, _, _], [tool_body, _, _]) = split(&Role::Tool, [Some(stub), None, None], &mut tool_found);
    let mut other_found = Found::new();
    let ([other_inline, _, _], [other_body, _, _]) = split(&Role::User, [Some(stub), None, None], &mut other_found);
    let stub_body = pack_bodies(tool_found.into_iter().chain(other_found).collect()).await?;
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    let rows = db
        .rows(
            "clear_message_content",
            "WITH s AS MATERIALIZED (
                 SELECT id FROM kp.sessions
                 WHERE id IN (SELECT session_id FROM kp.messages WHERE id = ANY($1))
                 ORDER BY id FOR NO KEY UPDATE),
             old AS MATERIALIZED (
                 SELECT messages.id, messages.content_body FROM kp.messages JOIN s ON s.id = messages.session_id
                 WHERE messages.id = ANY($1) ORDER BY messages.id FOR NO KEY UPDATE OF messages),
             m AS (
                 UPDATE kp.messages SET
                     content = CASE WHEN role = 'tool' THEN $2 ELSE $3 END,
                     content_body = CASE WHEN role = 'tool' THEN $4 ELSE $5 END
                 FROM old
                 WHERE messages.id = old.id
                 RETURNING messages.session_id, old.content_body AS released, messages.content_body AS taken),
             v AS (
                 UPDATE kp.sessions SET version = version + 1 WHERE id IN (SELECT session_id FROM m)
                 RETURNING id)
             SELECT m.session_id, m.released, m.taken FROM m",
            &[ints(&ids), bytes(&tool_inline), bytes(&other_inline), bytes(&tool_body), bytes(&other_body)],
        )
        .await?;
    let mut touched = std::collections::BTreeSet::new();
    let mut changes: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for r in &rows {
        touched.insert(get::<String>(r, 0, "session id")?);
        if let Some(h) = get::<Option<Vec<u8>>>(r, 1, "released body")? {
            *changes.entry(h).or_default() -= 1;
        }
        if let Some(h) = get::<Option<Vec<u8>>>(r, 2, "stub body")? {
            *changes.entry(h).or_default() += 1;
        }
    }
    changes.retain(|_, n| *n != 0);
    if !changes.is_empty() {
        let mut data: Vec<Option<&[u8]>> = Vec::new();
        let mut lens: Vec<i64> = Vec::new();
        let hashes: Vec<&[u8]> = changes.keys().map(Vec::as_slice).collect();
        let counts: Vec<i64> = changes.values().copied().collect();
        for h in &hashes {
            let at = stub_body.hashes.iter().position(|s| s.as_slice() == *h);
            data.push(at.and_then(|i| stub_body.data.get(i)).map(Vec::as_slice));
            lens.push(at.and_then(|i| stub_body.lens.get(i)).copied().unwrap_or(0));
        }
        // A released body is always there (the release holds its count
        // above 0 until now), so only the stub's row can be inserted.
        db.execute(
            "clear_message_content",
            "INSERT INTO kp.bodies AS x (hash, data, len, refs)
                 SELECT v.hash, COALESCE(v.data, ''::BYTEA), v.len, v.refs
                 FROM unnest($1::BYTEA[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[])
                     AS v(hash, data, len, refs)
                 ORDER BY v.hash
                 ON CONFLICT (hash) DO UPDATE SET refs = x.refs + EXCLUDED.refs",
            &[byte_arrays(&hashes), byte_arrays(&data), ints(&lens), ints(&counts)],
        )
        .await?;
        db.execute(
            "clear_message_content",
            "DELETE FROM kp.bodies WHERE hash = ANY($1) AND refs <= 0",
            &[byte_arrays(&hashes)],
        )
        .await?;
    }
    tx.commit().await.map_err(crate::error::db("commit clear_message_content"))?;
    Ok(touched.into_iter().collect())
}

pub(crate) async fn compacted_stats(c: &Conn) -> Result<CompactedStats> {
    let r = c
        .db()
        .one(
            "compacted_stats",
            "SELECT COUNT(*), COUNT(DISTINCT session_id),
                    LEAST(COALESCE(SUM(
                        COALESCE(octet_length(content),
                                 (SELECT b.len FROM kp.bodies b WHERE b.hash = content_body), 0)
                        + COALESCE(octet_length(tool_calls),
                                   (SELECT b.len FROM kp.bodies b WHERE b.hash = tool_calls_body), 0)), 0),
                          9223372036854775807)::BIGINT,
                    MIN(compacted_ms)
             FROM kp.messages WHERE compacted_ms IS NOT NULL",
            &[],
        )
        .await?;
    Ok(CompactedStats {
        message_count: get(&r, 0, "count")?,
        session_count: get(&r, 1, "sessions")?,
        size_bytes: get(&r, 2, "size")?,
        oldest: get::<Option<i64>>(&r, 3, "oldest")?.map(format_timestamp),
    })
}

/// One statement: lock the sessions holding old compacted messages (in id
/// order), delete those messages and lower each touched session's counters
/// and usage by agent by what went (a usage row may stay at 0 calls).
/// Returns the count and the sessions.
pub(crate) async fn purge(c: &Conn, days: u32, now: i64) -> Result<(usize, Vec<String>)> {
    let cutoff = purge_cutoff(now, days);
    let all = days == 0;
    let rows = c
        .db()
        .rows(
            "purge_compacted",
            "WITH s AS MATERIALIZED (
                 SELECT id FROM kp.sessions
                 WHERE id IN (SELECT session_id FROM kp.messages
                              WHERE compacted_ms IS NOT NULL AND ($1 OR compacted_ms < $2))
                 ORDER BY id FOR NO KEY UPDATE),
             gone AS (
                 DELETE FROM kp.messages USING s
                 WHERE messages.session_id = s.id
                   AND messages.compacted_ms IS NOT NULL AND ($1 OR messages.compacted_ms < $2)
                 RETURNING messages.session_id,
                     COALESCE(messages.prompt_tokens, 0)::NUMERIC + COALESCE(messages.completion_tokens, 0) AS tokens,
                     COALESCE(messages.agent_name, 'main'::BYTEA) AS agent,
                     messages.prompt_tokens AS p, messages.completion_tokens AS c,
                     messages.cache_read_tokens AS cr, messages.cache_creation_tokens AS cc,
                     messages.thinking_tokens AS t),
             per AS (SELECT session_id, COUNT(*) AS n, SUM(tokens) AS tokens FROM gone GROUP BY session_id),
             upd AS (
                 UPDATE kp.sessions s SET message_count = s.message_count - per.n,
                     total_tokens = s.total_tokens - per.tokens, version = s.version + 1
                 FROM per WHERE s.id = per.session_id),
             per_agent AS (
                 SELECT session_id, agent, COALESCE(SUM(p), 0) AS p, COALESCE(SUM(c), 0) AS c,
                     COALESCE(SUM(cr), 0) AS cr, COALESCE(SUM(cc), 0) AS cc,
                     COALESCE(SUM(t), 0) AS t, COUNT(*) AS calls
                 FROM gone WHERE p IS NOT NULL OR c IS NOT NULL GROUP BY session_id, agent),
             usage AS (
                 UPDATE kp.session_usage g SET prompt = g.prompt - pa.p,
                     completion = g.completion - pa.c, cache_read = g.cache_read - pa.cr,
                     cache_creation = g.cache_creation - pa.cc, thinking = g.thinking - pa.t,
                     calls = g.calls - pa.calls
                 FROM per_agent pa
                 WHERE g.session_id = pa.session_id AND sha256(g.agent) = sha256(pa.agent)
                   AND g.agent = pa.agent)
             SELECT session_id, n FROM per",
            &[boolean(&all), int(&cutoff)],
        )
        .await?;
    let mut total = 0i64;
    let mut touched = Vec::with_capacity(rows.len());
    for r in &rows {
        touched.push(get::<String>(r, 0, "session id")?);
        total = total.saturating_add(get::<i64>(r, 1, "purged")?);
    }
    Ok((usize::try_from(total).unwrap_or(0), touched))
}

pub(crate) async fn get_metadata(c: &Conn, id: &str, key: &str) -> Result<Option<String>> {
    let row = c
        .db()
        .opt(
            "get_metadata",
            "SELECT value FROM kp.session_metadata
             WHERE session_id = $1 AND sha256(key) = sha256($2) AND key = $2",
            &[text(&id), bytes(&as_bytes(key))],
        )
        .await?;
    Ok(match row {
        Some(r) => string(&r, 0, "metadata value")?,
        None => None,
    })
}

/// Upserts one entry. Lock order: the session row first (`FOR KEY SHARE`:
/// it excludes a concurrent delete, not other writers), then the entry.
/// Entries are unique by `(session_id, sha256(key))`, so a key of any size
/// fits the index.
pub(crate) async fn set_metadata(c: &Conn, id: &str, key: &str, value: &str, now: i64) -> Result<()> {
    let row = c
        .db()
        .opt(
            "set_metadata",
            "WITH s AS MATERIALIZED (SELECT id FROM kp.sessions WHERE id = $1 FOR KEY SHARE)
             INSERT INTO kp.session_metadata (session_id, key, value, updated_ms)
             SELECT s.id, $2, $3, $4 FROM s
             ON CONFLICT (session_id, sha256(key))
             DO UPDATE SET value = EXCLUDED.value, updated_ms = EXCLUDED.updated_ms
             RETURNING 1",
            &[text(&id), bytes(&as_bytes(key)), bytes(&as_bytes(value)), int(&now)],
        )
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(session_not_found(id)),
    }
}
