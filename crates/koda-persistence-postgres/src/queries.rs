//! One async function per trait method. Single statements run in autocommit
//! (one transaction each); multi-statement writes take an explicit
//! transaction and lock the session row first. All SQL is parameterised,
//! every parameter's type is declared (see [`crate::exec`]), every table
//! is named through the schema (`kp.`); strings travel as `BYTEA`, roles
//! as text.

use crate::exec::{Conn, Db, boolean, byte_arrays, bytes, int, ints, text, texts};
use crate::rows::{
    CONTENT, MESSAGE_COLUMNS, as_bytes, body_string, get, in_message, message, opt_bytes,
    required_string, role, string,
};
use koda_persistence_api::BodyStats;
use koda_persistence_api::bodies::{
    BodyField, BodyHash, body_hash, body_name, is_body, pack, unpack_checked,
};
use std::collections::BTreeMap;

/// The fields that may be bodies, in column order.
const FIELDS: [BodyField; 3] = [
    BodyField::Content,
    BodyField::FullContent,
    BodyField::ToolCalls,
];

/// The bodies one statement writes: distinct addresses in address order
/// (the lock order), their packed bytes and text lengths, and the
/// references the statement adds to each.
#[derive(Default)]
struct NewBodies {
    hashes: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
    lens: Vec<i64>,
    refs: Vec<i64>,
}

/// Bodies found in a statement's rows, by address: references and text.
type Found<'v> = BTreeMap<BodyHash, (i64, &'v str)>;

/// A row's three text fields: what its own columns hold, and the addresses
/// of the bodies that hold the rest.
type Split<'v> = ([Option<&'v [u8]>; 3], [Option<Vec<u8>>; 3]);

/// Splits a `role` message's content, full_content and tool_calls into
/// inline values and bodies, counting each body in `found`.
fn split<'v>(role: &Role, fields: [Option<&'v str>; 3], found: &mut Found<'v>) -> Split<'v> {
    let mut inline = [None; 3];
    let mut bodies = [None, None, None];
    for (i, value) in fields.into_iter().enumerate() {
        let Some(text) = value else { continue };
        if is_body(role, FIELDS[i], text) {
            let hash = body_hash(text);
            found.entry(hash).or_insert((0, text)).0 += 1;
            bodies[i] = Some(hash.to_vec());
        } else {
            inline[i] = Some(text.as_bytes());
        }
    }
    (inline, bodies)
}

/// Packs the bodies `found` names (on the blocking pool when they are
/// large, so compression never holds an async worker long).
async fn pack_bodies(found: Found<'_>) -> Result<NewBodies> {
    let total: usize = found.values().map(|(_, t)| t.len()).sum();
    let mut out = NewBodies::default();
    let packed: Vec<Vec<u8>> = if total > 256 * 1024 {
        let texts: Vec<String> = found.values().map(|(_, t)| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| pack(t)).collect::<Result<_>>())
            .await
            .map_err(|e| anyhow::anyhow!("packing bodies: {e}"))??
    } else {
        found
            .values()
            .map(|(_, t)| pack(t))
            .collect::<Result<_>>()?
    };
    for ((hash, (n, text)), data) in found.into_iter().zip(packed) {
        out.hashes.push(hash.to_vec());
        out.data.push(data);
        out.lens.push(i64::try_from(text.len()).unwrap_or(i64::MAX));
        out.refs.push(n);
    }
    Ok(out)
}

/// The statement part that stores `NewBodies` passed as `$a..$a+3`, after
/// the session row (`s`) is locked: a known body gains the references, a
/// new one (or one a concurrent release just removed) is inserted.
macro_rules! upsert_bodies {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "INSERT INTO kp.bodies AS x (hash, data, len, refs)
                 SELECT v.hash, v.data, v.len, v.refs FROM s,
                     unnest($",
            $a,
            "::BYTEA[], $",
            $b,
            "::BYTEA[], $",
            $c,
            "::BIGINT[], $",
            $d,
            "::BIGINT[]) AS v(hash, data, len, refs)
                 ORDER BY v.hash
                 ON CONFLICT (hash) DO UPDATE SET refs = x.refs + EXCLUDED.refs"
        )
    };
}
use anyhow::Result;
use koda_persistence_api::backend::{
    ContextRow, NewMessage, check_kept, format_timestamp, id_taken, message_not_found,
    order_usage_groups, purge_cutoff, session_not_found,
};
use koda_persistence_api::{
    COMPACTION_HINT, CompactedStats, Message, MessageRecord, MetadataRecord, PersistenceError,
    Role, SessionInfo, SessionRecord, SessionUsage, StoreHealth,
};

pub(crate) async fn create_session(
    c: &Conn,
    id: &str,
    agent: &str,
    root: &str,
    now: i64,
) -> Result<()> {
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
    Ok(c.db()
        .execute(
            "delete_session",
            "DELETE FROM kp.sessions WHERE id = $1",
            &[text(&id)],
        )
        .await?
        > 0)
}

pub(crate) async fn set_session_text(c: &Conn, mode: bool, id: &str, value: &str) -> Result<bool> {
    let sql = if mode {
        "UPDATE kp.sessions SET mode = $2 WHERE id = $1"
    } else {
        "UPDATE kp.sessions SET title = $2 WHERE id = $1"
    };
    Ok(c.db()
        .execute(
            "updating a session",
            sql,
            &[text(&id), bytes(&as_bytes(value))],
        )
        .await?
        > 0)
}

pub(crate) async fn get_session_mode(c: &Conn, id: &str) -> Result<Option<String>> {
    let row = c
        .db()
        .opt(
            "get_session_mode",
            "SELECT mode FROM kp.sessions WHERE id = $1",
            &[text(&id)],
        )
        .await?;
    Ok(match row {
        Some(r) => string(&r, 0, "mode")?,
        None => None,
    })
}

pub(crate) async fn last_accessed(c: &Conn, id: &str) -> Result<Option<i64>> {
    let row = c
        .db()
        .opt(
            "get_session_idle_secs",
            "SELECT last_accessed_ms FROM kp.sessions WHERE id = $1",
            &[text(&id)],
        )
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

/// One statement: lock and touch the session (counters, access time, next
/// position, version), then append the message at that position. Returns
/// the message id and the session's new version.
pub(crate) async fn insert_message(c: &Conn, m: &NewMessage, now: i64) -> Result<(i64, i64)> {
    let u = m.usage;
    let role = m.role.to_string();
    let mut found = Found::new();
    let ([content, full, calls], [content_body, full_body, calls_body]) = split(
        &m.role,
        [
            m.content.as_deref(),
            m.full_content.as_deref(),
            m.tool_calls.as_deref(),
        ],
        &mut found,
    );
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
            concat!("WITH s AS (
                 UPDATE kp.sessions SET last_accessed_ms = $2, message_count = message_count + 1,
                     total_tokens = total_tokens + COALESCE($7, 0) + COALESCE($8, 0),
                     next_ord = next_ord + 1,
                     version = version + 1
                 WHERE id = $1 RETURNING next_ord, version),
             b AS (", upsert_bodies!("14", "15", "16", "17"), "),
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
                 ", add_to_kept_usage!(), ")
             SELECT i.id, s.version FROM i, s"),
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
        Some(r) => Ok((
            get(&r, 0, "new message id")?,
            get(&r, 1, "session version")?,
        )),
        None => Err(session_not_found(&m.session_id)),
    }
}

/// The session's change counter, or `None` for an unknown session.
pub(crate) async fn session_version(c: &Conn, id: &str) -> Result<Option<i64>> {
    let row = c
        .db()
        .opt(
            "reading a version",
            "SELECT version FROM kp.sessions WHERE id = $1",
            &[text(&id)],
        )
        .await?;
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
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM kp.messages WHERE session_id = $1 ORDER BY ord");
    Ok(messages(c, &sql, id)
        .await?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

pub(crate) async fn load_active(c: &Conn, id: &str) -> Result<Vec<ContextRow>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM kp.messages WHERE session_id = $1 AND compacted_ms IS NULL ORDER BY ord"
    );
    Ok(messages(c, &sql, id)
        .await?
        .into_iter()
        .map(|(message, complete)| ContextRow { message, complete })
        .collect())
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

pub(crate) async fn compact(
    c: &Conn,
    id: &str,
    summary: &str,
    keep: usize,
    now: i64,
) -> Result<usize> {
    // One round trip: the function (migration V3) locks the session, reads
    // the active messages after the lock, marks, shifts and inserts, so
    // the session's lock is held for those statements alone.
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let mut found = Found::new();
    let ([inline, _, _], [body, _, _]) =
        split(&Role::System, [Some(summary), None, None], &mut found);
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
    let ([tool_inline, _, _], [tool_body, _, _]) =
        split(&Role::Tool, [Some(stub), None, None], &mut tool_found);
    let mut other_found = Found::new();
    let ([other_inline, _, _], [other_body, _, _]) =
        split(&Role::User, [Some(stub), None, None], &mut other_found);
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
            &[
                ints(&ids),
                bytes(&tool_inline),
                bytes(&other_inline),
                bytes(&tool_body),
                bytes(&other_body),
            ],
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
            &[
                byte_arrays(&hashes),
                byte_arrays(&data),
                ints(&lens),
                ints(&counts),
            ],
        )
        .await?;
        db.execute(
            "clear_message_content",
            "DELETE FROM kp.bodies WHERE hash = ANY($1) AND refs <= 0",
            &[byte_arrays(&hashes)],
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(crate::error::db("commit clear_message_content"))?;
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
pub(crate) async fn set_metadata(
    c: &Conn,
    id: &str,
    key: &str,
    value: &str,
    now: i64,
) -> Result<()> {
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
            &[
                text(&id),
                bytes(&as_bytes(key)),
                bytes(&as_bytes(value)),
                int(&now),
            ],
        )
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(session_not_found(id)),
    }
}

/// Every session id, oldest first.
pub(crate) async fn export_session_ids(c: &Conn) -> Result<Vec<String>> {
    c.db()
        .rows(
            "listing sessions",
            "SELECT id FROM kp.sessions ORDER BY created_ms, seq",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok(get(r, 0, "session id")?))
        .collect()
}

pub(crate) async fn export_session(c: &Conn, id: &str) -> Result<Option<SessionRecord>> {
    let Some(r) = c
        .db()
        .opt(
            "reading a session",
            "SELECT agent_name, project_root, created_ms, last_accessed_ms, title, mode
             FROM kp.sessions WHERE id = $1",
            &[text(&id)],
        )
        .await?
    else {
        return Ok(None);
    };
    let w = |f: &str| format!("{f} of session {id:?}");
    Ok(Some(SessionRecord {
        id: id.to_owned(),
        agent_name: required_string(&r, 0, &w("agent_name"))?,
        project_root: string(&r, 1, &w("project_root"))?,
        created_ms: get(&r, 2, &w("created_ms"))?,
        last_accessed_ms: get(&r, 3, &w("last_accessed_ms"))?,
        title: string(&r, 4, &w("title"))?,
        mode: string(&r, 5, &w("mode"))?,
    }))
}

pub(crate) async fn export_messages(c: &Conn, id: &str) -> Result<Vec<MessageRecord>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS}, agent_name, compacted_ms FROM kp.messages
         WHERE session_id = $1 ORDER BY ord"
    );
    let rows = c.db().rows("reading messages", &sql, &[text(&id)]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (m, _) = message(r)?;
        let id = m.id;
        let extra = || -> Result<_, PersistenceError> {
            Ok((
                get(r, 12, "created_ms")?,
                get(r, 13, "completed_ms")?,
                string(r, 14, "agent_name")?,
                get(r, 15, "compacted_ms")?,
            ))
        };
        let (created, completed, agent, compacted) = extra().map_err(in_message(id))?;
        out.push(MessageRecord::from_message(
            m, agent, created, completed, compacted,
        ));
    }
    Ok(out)
}

pub(crate) async fn export_metadata(c: &Conn, id: &str) -> Result<Vec<MetadataRecord>> {
    let rows = c
        .db()
        .rows(
            "reading metadata",
            "SELECT key, value FROM kp.session_metadata WHERE session_id = $1 ORDER BY key",
            &[text(&id)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(MetadataRecord {
                key: required_string(r, 0, "metadata key")?,
                value: required_string(r, 1, "metadata value")?,
            })
        })
        .collect()
}

/// The newest migration applied to the schema (0 for none).
pub(crate) async fn schema_version(db: &Db<'_>) -> Result<i64> {
    let version: Option<i32> = db
        .one(
            "reading the schema history",
            "SELECT MAX(version) FROM kp.koda_schema_history",
            &[],
        )
        .await?
        .try_get(0)
        .map_err(|e| PersistenceError::Corrupt(format!("schema history: {e}")))?;
    Ok(i64::from(version.unwrap_or(0)))
}

/// Bodies against the references to them, both ways, and every body
/// against its address (read in pages of 256, in address order).
async fn body_health(db: &Db<'_>, problems: &mut Vec<String>) -> Result<BodyStats> {
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
            problems.push(format!(
                "{used} message fields refer to body {}, which is missing",
                body_name(&hash)
            ));
            continue;
        };
        if refs != used {
            problems.push(format!(
                "body {}: counts {refs} references, {used} message fields use it",
                body_name(&hash)
            ));
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
                Ok(text) => problems.push(format!(
                    "body {}: records {len} bytes, holds {}",
                    body_name(&hash),
                    text.len()
                )),
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
        problems.push(format!(
            "session {sid}: position counter {next} is behind its last message's {max}"
        ));
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
        problems.push(format!(
            "session {sid}: the usage kept by agent differs from its messages' counters"
        ));
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

/// A field that may be a body, as `session_checksum` digests it: `0x00`
/// when NULL, else `0x01`, its text length and its SHA-256, which for a
/// body is its address (the server never reads the body).
macro_rules! digest_field {
    ($field:literal) => {
        concat!(
            "(CASE WHEN ",
            $field,
            "_body IS NOT NULL THEN '\\x01'::BYTEA
                  || int8send((SELECT b.len FROM kp.bodies b WHERE b.hash = ",
            $field,
            "_body))
                  || ",
            $field,
            "_body
              WHEN ",
            $field,
            " IS NULL THEN '\\x00'::BYTEA
              ELSE '\\x01'::BYTEA || int8send(octet_length(",
            $field,
            ")::BIGINT)
                  || sha256(",
            $field,
            ") END)"
        )
    };
}

/// [`koda_persistence_api::session_checksum`], computed by the server over
/// the stored bytes: only the count and 8 bytes cross the network. Must
/// feed SHA-256 exactly what the Rust function feeds it (the conformance
/// suite compares the two).
pub(crate) async fn session_checksum(c: &Conn, id: &str) -> Result<(usize, String)> {
    let r = c
        .db()
        .one(
            "session_checksum",
            concat!("WITH m AS (
                 SELECT ord, sha256(
                     kp.kp_field(convert_to(role::TEXT, 'UTF8'))
                     || ", digest_field!("content"), " || ", digest_field!("full_content"), "
                     || ", digest_field!("tool_calls"), "
                     || kp.kp_field(tool_call_id) || kp.kp_field(agent_name)
                     || kp.kp_number(prompt_tokens) || kp.kp_number(completion_tokens)
                     || kp.kp_number(cache_read_tokens) || kp.kp_number(cache_creation_tokens)
                     || kp.kp_number(thinking_tokens)
                     || kp.kp_number(created_ms) || kp.kp_number(completed_ms) || kp.kp_number(compacted_ms)) AS h
                 FROM kp.messages WHERE session_id = $1),
             e AS (
                 SELECT key, sha256(kp.kp_field(key) || kp.kp_field(value)) AS h
                 FROM kp.session_metadata WHERE session_id = $1)
             SELECT (SELECT COUNT(*) FROM m),
                    encode(substring(sha256(
                        int8send((SELECT COUNT(*) FROM m))
                        || COALESCE((SELECT string_agg(h, ''::BYTEA ORDER BY ord) FROM m), ''::BYTEA)
                        || int8send((SELECT COUNT(*) FROM e))
                        || COALESCE((SELECT string_agg(h, ''::BYTEA ORDER BY key) FROM e), ''::BYTEA)
                    ) FROM 1 FOR 8), 'hex')"),
            &[text(&id)],
        )
        .await?;
    let n: i64 = get(&r, 0, "message count")?;
    Ok((usize::try_from(n).unwrap_or(0), get(&r, 1, "checksum")?))
}

pub(crate) async fn message_id_range(c: &Conn) -> Result<Option<(i64, i64)>> {
    let r = c
        .db()
        .one(
            "message_id_range",
            "SELECT MIN(id), MAX(id) FROM kp.messages",
            &[],
        )
        .await?;
    let lo: Option<i64> = get(&r, 0, "smallest id")?;
    let hi: Option<i64> = get(&r, 1, "largest id")?;
    Ok(lo.zip(hi))
}

/// The last message id handed out or granted.
const ID_POSITION: &str = "SELECT GREATEST(
        COALESCE(pg_sequence_last_value(pg_get_serial_sequence('kp.messages', 'id')::regclass), 0),
        COALESCE((SELECT MAX(id) FROM kp.messages), 0))";

/// Under a lock that excludes every insert (so no `nextval` runs between
/// the check and the move). It takes no row lock: no deadlock with writers.
pub(crate) async fn claim_ids(c: &mut Conn, first: i64, last: i64) -> Result<bool> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    db.batch(
        "locking messages",
        "LOCK TABLE kp.messages IN SHARE ROW EXCLUSIVE MODE",
    )
    .await?;
    let position: i64 = get(
        &db.one("reading the id sequence", ID_POSITION, &[]).await?,
        0,
        "id sequence",
    )?;
    if position >= first {
        tx.commit()
            .await
            .map_err(crate::error::db("commit claim_ids"))?;
        return Ok(false);
    }
    db.rows(
        "moving the id sequence",
        "SELECT setval(pg_get_serial_sequence('kp.messages', 'id')::regclass, $1)",
        &[int(&last)],
    )
    .await?;
    tx.commit()
        .await
        .map_err(crate::error::db("commit claim_ids"))?;
    Ok(true)
}

pub(crate) async fn import_session(c: &Conn, s: &SessionRecord) -> Result<bool> {
    let (agent, root, title, mode) = (
        as_bytes(&s.agent_name),
        opt_bytes(&s.project_root),
        opt_bytes(&s.title),
        opt_bytes(&s.mode),
    );
    let n = c
        .db()
        .execute(
            "import_session",
            "INSERT INTO kp.sessions (id, agent_name, project_root, created_ms, last_accessed_ms,
                                      title, mode)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            &[
                text(&s.id),
                bytes(&agent),
                bytes(&root),
                int(&s.created_ms),
                int(&s.last_accessed_ms),
                bytes(&title),
                bytes(&mode),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// One statement: bump the session (locking it first), then insert every
/// message from arrays, each at the next position.
pub(crate) async fn import_messages(
    c: &mut Conn,
    id: &str,
    messages: &[MessageRecord],
    keep_ids: bool,
) -> Result<Vec<i64>> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    if messages.is_empty() {
        let exists = db
            .opt(
                "looking up the session",
                "SELECT 1 FROM kp.sessions WHERE id = $1",
                &[text(&id)],
            )
            .await?;
        return match exists {
            Some(_) => Ok(Vec::new()),
            None => Err(session_not_found(id)),
        };
    }
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    let n = i64::try_from(messages.len()).unwrap_or(i64::MAX);
    let tokens: i128 = messages
        .iter()
        .map(|m| {
            i128::from(m.prompt_tokens.unwrap_or(0)) + i128::from(m.completion_tokens.unwrap_or(0))
        })
        .sum();
    let roles: Vec<String> = messages.iter().map(|m| m.role.to_string()).collect();
    let col = |f: fn(&MessageRecord) -> &Option<String>| -> Vec<Option<&[u8]>> {
        messages.iter().map(|m| opt_bytes(f(m))).collect()
    };
    let num = |f: fn(&MessageRecord) -> Option<i64>| -> Vec<Option<i64>> {
        messages.iter().map(f).collect()
    };
    let (call_id, agent) = (col(|m| &m.tool_call_id), col(|m| &m.agent));
    let mut found = Found::new();
    let (mut content, mut full, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut content_body, mut full_body, mut calls_body) = (Vec::new(), Vec::new(), Vec::new());
    for m in messages {
        let ([c, f, t], [cb, fb, tb]) = split(
            &m.role,
            [
                m.content.as_deref(),
                m.full_content.as_deref(),
                m.tool_calls.as_deref(),
            ],
            &mut found,
        );
        content.push(c);
        full.push(f);
        calls.push(t);
        content_body.push(cb);
        full_body.push(fb);
        calls_body.push(tb);
    }
    let new = pack_bodies(found).await?;
    let (prompt, completion, cache_read, cache_creation, thinking) = (
        num(|m| m.prompt_tokens),
        num(|m| m.completion_tokens),
        num(|m| m.cache_read_tokens),
        num(|m| m.cache_creation_tokens),
        num(|m| m.thinking_tokens),
    );
    let created: Vec<i64> = messages.iter().map(|m| m.created_ms).collect();
    let (completed, compacted) = (num(|m| m.completed_ms), num(|m| m.compacted_ms));
    let id_column = if keep_ids {
        "u.id"
    } else {
        "nextval(pg_get_serial_sequence('kp.messages', 'id')::regclass)"
    };
    let sql = format!(
        "WITH s AS (
             UPDATE kp.sessions SET next_ord = next_ord + $2, message_count = message_count + $2,
                 total_tokens = total_tokens + $3::NUMERIC, version = version + 1
             WHERE id = $1 RETURNING next_ord - $2 AS base),
         b AS ({bodies}),
         ins AS (
             INSERT INTO kp.messages (id, session_id, ord, role, content, full_content, tool_calls,
                 tool_call_id, prompt_tokens, completion_tokens, cache_read_tokens,
                 cache_creation_tokens, thinking_tokens, agent_name, created_ms, completed_ms,
                 compacted_ms, content_body, full_content_body, tool_calls_body)
             OVERRIDING SYSTEM VALUE
             SELECT {id_column}, $1, s.base + u.n, u.role::kp.kp_role, u.content, u.full_content,
                 u.tool_calls, u.tool_call_id, u.prompt, u.completion, u.cache_read,
                 u.cache_creation, u.thinking, u.agent, u.created, u.completed, u.compacted,
                 u.content_body, u.full_body, u.calls_body
             FROM s, unnest($4::BIGINT[], $5::TEXT[], $6::BYTEA[], $7::BYTEA[], $8::BYTEA[],
                            $9::BYTEA[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[],
                            $14::BIGINT[], $15::BYTEA[], $16::BIGINT[], $17::BIGINT[], $18::BIGINT[],
                            $19::BYTEA[], $20::BYTEA[], $21::BYTEA[])
                 WITH ORDINALITY AS u(id, role, content, full_content, tool_calls, tool_call_id,
                     prompt, completion, cache_read, cache_creation, thinking, agent, created,
                     completed, compacted, content_body, full_body, calls_body, n)
             ORDER BY u.n
             RETURNING id, ord, agent_name, prompt_tokens, completion_tokens, cache_read_tokens,
                 cache_creation_tokens, thinking_tokens),
         usage AS (
             INSERT INTO kp.session_usage AS g (session_id, agent, prompt, completion, cache_read,
                 cache_creation, thinking, calls)
             SELECT $1, COALESCE(agent_name, 'main'::BYTEA), COALESCE(SUM(prompt_tokens), 0),
                 COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cache_read_tokens), 0),
                 COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(thinking_tokens), 0),
                 COUNT(*)
             FROM ins WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL
             GROUP BY COALESCE(agent_name, 'main'::BYTEA)
             {add})
         SELECT id, ord FROM ins",
        add = add_to_kept_usage!(),
        bodies = upsert_bodies!("22", "23", "24", "25"),
    );
    let tokens = tokens.to_string();
    let params = [
        text(&id),
        int(&n),
        text(&tokens),
        ints(&ids),
        texts(&roles),
        byte_arrays(&content),
        byte_arrays(&full),
        byte_arrays(&calls),
        byte_arrays(&call_id),
        ints(&prompt),
        ints(&completion),
        ints(&cache_read),
        ints(&cache_creation),
        ints(&thinking),
        byte_arrays(&agent),
        ints(&created),
        ints(&completed),
        ints(&compacted),
        byte_arrays(&content_body),
        byte_arrays(&full_body),
        byte_arrays(&calls_body),
        byte_arrays(&new.hashes),
        byte_arrays(&new.data),
        ints(&new.lens),
        ints(&new.refs),
    ];
    const TAKEN: &str = "SELECT id FROM kp.messages WHERE id = ANY($1) LIMIT 1";
    // Pipelined (sent together, run in this order): with kept ids, the
    // sequence position and the taken-id check, then the insert. A failed
    // check drops the transaction, and the insert with it. Each statement
    // is prepared first, so each is sent on its first poll and the biased
    // joins below send them in this order. (Sent while their preparations
    // were answered, the insert could overtake the taken-id check: its
    // unique violation then aborted the transaction and the check failed
    // with 25P02 instead of naming the id.)
    let id_param = [ints(&ids)];
    if keep_ids {
        db.prepare("checking ids", ID_POSITION, &[]).await?;
        db.prepare("checking ids", TAKEN, &id_param).await?;
    }
    db.prepare("import_messages", &sql, &params).await?;
    let checks = async {
        if !keep_ids {
            return Ok((None, None));
        }
        let position = db.one("checking ids", ID_POSITION, &[]);
        let taken = db.opt("checking ids", TAKEN, &id_param);
        let (p, t) = tokio::try_join!(biased; position, taken)?;
        anyhow::Ok((Some(p), t))
    };
    let inserting = db.rows("import_messages", &sql, &params);
    // The checks decide first: a taken id also fails the insert, with a
    // unique violation that would hide which id it was.
    let (checked, inserted) = tokio::join!(biased; checks, inserting);
    let (position, taken) = checked?;
    if let Some(p) = position {
        let position: i64 = get(&p, 0, "id sequence")?;
        check_kept(&ids, position)?;
    }
    if let Some(r) = taken {
        return Err(id_taken(get(&r, 0, "message id")?).into());
    }
    let rows = inserted?;
    if rows.is_empty() {
        return Err(session_not_found(id));
    }
    let mut placed = Vec::with_capacity(rows.len());
    for r in &rows {
        placed.push((get::<i64>(r, 1, "ord")?, get::<i64>(r, 0, "message id")?));
    }
    placed.sort_unstable();
    tx.commit()
        .await
        .map_err(crate::error::db("commit import_messages"))?;
    Ok(placed.into_iter().map(|(_, id)| id).collect())
}

pub(crate) async fn import_metadata(
    c: &Conn,
    id: &str,
    entries: &[MetadataRecord],
    now: i64,
) -> Result<()> {
    // The last value of a key given twice wins, as with set_metadata.
    let mut last: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for e in entries {
        last.insert(&e.key, &e.value);
    }
    let keys: Vec<&[u8]> = last.keys().map(|k| k.as_bytes()).collect();
    let values: Vec<&[u8]> = last.values().map(|v| v.as_bytes()).collect();
    // One statement: the session locked (FOR KEY SHARE, as set_metadata),
    // every entry upserted; it answers whether the session exists.
    let row = c
        .db()
        .one(
            "import_metadata",
            "WITH s AS MATERIALIZED (SELECT id FROM kp.sessions WHERE id = $1 FOR KEY SHARE),
             ins AS (
                 INSERT INTO kp.session_metadata (session_id, key, value, updated_ms)
                 SELECT s.id, u.key, u.value, $4 FROM s, unnest($2::BYTEA[], $3::BYTEA[]) AS u(key, value)
                 ON CONFLICT (session_id, sha256(key))
                 DO UPDATE SET value = EXCLUDED.value, updated_ms = EXCLUDED.updated_ms
                 RETURNING 1)
             SELECT (SELECT COUNT(*) FROM s), (SELECT COUNT(*) FROM ins)",
            &[text(&id), byte_arrays(&keys), byte_arrays(&values), int(&now)],
        )
        .await?;
    if get::<i64>(&row, 0, "session count")? == 0 {
        return Err(session_not_found(id));
    }
    Ok(())
}

/// Forks session `id` at `at` into `new_id`. The cut comes from the
/// export ([`fork_len`](koda_persistence_api::fork::fork_len)); then one
/// statement, in the lock order (the session row, then its messages, then
/// the bodies in address order), creates the fork with its counters,
/// copies the messages up to the cut with their states and body
/// addresses, adds a reference to each body, and copies the usage by
/// agent and the metadata.
pub(crate) async fn fork(
    c: &Conn,
    id: &str,
    at: Option<i64>,
    new_id: &str,
    now: i64,
) -> Result<String> {
    use koda_persistence_api::fork::{fork_len, fork_title};
    let original = export_session(c, id)
        .await?
        .ok_or_else(|| session_not_found(id))?;
    let messages = export_messages(c, id).await?;
    let n = fork_len(&messages, at)?;
    // `None`: every message (the whole session); else the last one copied
    // (0: none).
    let last: Option<i64> = if at.is_none() && n == messages.len() {
        None
    } else {
        Some(
            n.checked_sub(1)
                .and_then(|i| messages.get(i))
                .map_or(0, |m| m.id),
        )
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
            &[
                text(&id),
                text(&new_id),
                int(&last),
                int(&now),
                bytes(&as_bytes(&title)),
            ],
        )
        .await?;
    match row {
        Some(r) => Ok(get(&r, 0, "fork id")?),
        None => Err(session_not_found(id)),
    }
}
