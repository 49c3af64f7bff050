//! Whole sessions out and in, every field kept: the Transfer capability.

use crate::PostgresStore;
use crate::bodies::Found;
use crate::bodies::pack_bodies;
use crate::bodies::split;
use crate::bodies::upsert_bodies;
use crate::exec::{Conn, Db, byte_arrays, bytes, int, ints, text, texts};
use crate::queries::{add_to_kept_usage, add_to_ledger};
use crate::rows::{MESSAGE_COLUMNS, as_bytes, get, in_message, message, opt_bytes, required_string, string};
use anyhow::Result;
use koda_persistence_api::Transfer;
use koda_persistence_api::backend::{check_kept, id_taken, session_not_found};
use koda_persistence_api::{MessageRecord, MetadataRecord, PersistenceError, SessionRecord};

/// Every session id, oldest first.
pub(crate) async fn export_session_ids(c: &Conn) -> Result<Vec<String>> {
    c.db()
        .rows("listing sessions", "SELECT id FROM kp.sessions ORDER BY created_ms, seq", &[])
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
        out.push(MessageRecord::from_message(m, agent, created, completed, compacted));
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
            concat!(
                "WITH m AS (
                 SELECT ord, sha256(
                     kp.kp_field(convert_to(role::TEXT, 'UTF8'))
                     || ",
                digest_field!("content"),
                " || ",
                digest_field!("full_content"),
                "
                     || ",
                digest_field!("tool_calls"),
                "
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
                    ) FROM 1 FOR 8), 'hex')"
            ),
            &[text(&id)],
        )
        .await?;
    let n: i64 = get(&r, 0, "message count")?;
    Ok((usize::try_from(n).unwrap_or(0), get(&r, 1, "checksum")?))
}

pub(crate) async fn message_id_range(c: &Conn) -> Result<Option<(i64, i64)>> {
    let r = c.db().one("message_id_range", "SELECT MIN(id), MAX(id) FROM kp.messages", &[]).await?;
    let lo: Option<i64> = get(&r, 0, "smallest id")?;
    let hi: Option<i64> = get(&r, 1, "largest id")?;
    Ok(lo.zip(hi))
}

/// The last message id handed out or granted.
pub(crate) const ID_POSITION: &str = "SELECT GREATEST(
        COALESCE(pg_sequence_last_value(pg_get_serial_sequence('kp.messages', 'id')::regclass), 0),
        COALESCE((SELECT MAX(id) FROM kp.messages), 0))";

/// Under a lock that excludes every insert (so no `nextval` runs between
/// the check and the move). It takes no row lock: no deadlock with writers.
pub(crate) async fn claim_ids(c: &mut Conn, first: i64, last: i64) -> Result<bool> {
    let (tx, dialect) = c.transaction().await?;
    let db = Db::tx(&tx, dialect);
    db.batch("locking messages", "LOCK TABLE kp.messages IN SHARE ROW EXCLUSIVE MODE").await?;
    let position: i64 = get(&db.one("reading the id sequence", ID_POSITION, &[]).await?, 0, "id sequence")?;
    if position >= first {
        tx.commit().await.map_err(crate::error::db("commit claim_ids"))?;
        return Ok(false);
    }
    db.rows(
        "moving the id sequence",
        "SELECT setval(pg_get_serial_sequence('kp.messages', 'id')::regclass, $1)",
        &[int(&last)],
    )
    .await?;
    tx.commit().await.map_err(crate::error::db("commit claim_ids"))?;
    Ok(true)
}

pub(crate) async fn import_session(c: &Conn, s: &SessionRecord) -> Result<bool> {
    let (agent, root, title, mode) =
        (as_bytes(&s.agent_name), opt_bytes(&s.project_root), opt_bytes(&s.title), opt_bytes(&s.mode));
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
        let exists = db.opt("looking up the session", "SELECT 1 FROM kp.sessions WHERE id = $1", &[text(&id)]).await?;
        return match exists {
            Some(_) => Ok(Vec::new()),
            None => Err(session_not_found(id)),
        };
    }
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    let n = i64::try_from(messages.len()).unwrap_or(i64::MAX);
    let tokens: i128 = messages
        .iter()
        .map(|m| i128::from(m.prompt_tokens.unwrap_or(0)) + i128::from(m.completion_tokens.unwrap_or(0)))
        .sum();
    let roles: Vec<String> = messages.iter().map(|m| m.role.to_string()).collect();
    let col = |f: fn(&MessageRecord) -> &Option<String>| -> Vec<Option<&[u8]>> {
        messages.iter().map(|m| opt_bytes(f(m))).collect()
    };
    let num = |f: fn(&MessageRecord) -> Option<i64>| -> Vec<Option<i64>> { messages.iter().map(f).collect() };
    let (call_id, agent) = (col(|m| &m.tool_call_id), col(|m| &m.agent));
    let mut found = Found::new();
    let (mut content, mut full, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut content_body, mut full_body, mut calls_body) = (Vec::new(), Vec::new(), Vec::new());
    for m in messages {
        let ([c, f, t], [cb, fb, tb]) =
            split(&m.role, [m.content.as_deref(), m.full_content.as_deref(), m.tool_calls.as_deref()], &mut found);
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
    let id_column = if keep_ids { "u.id" } else { "nextval(pg_get_serial_sequence('kp.messages', 'id')::regclass)" };
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
                 cache_creation_tokens, thinking_tokens, created_ms),
         usage AS (
             INSERT INTO kp.session_usage AS g (session_id, agent, prompt, completion, cache_read,
                 cache_creation, thinking, calls)
             SELECT $1, COALESCE(agent_name, 'main'::BYTEA), COALESCE(SUM(prompt_tokens), 0),
                 COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cache_read_tokens), 0),
                 COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(thinking_tokens), 0),
                 COUNT(*)
             FROM ins WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL
             GROUP BY COALESCE(agent_name, 'main'::BYTEA)
             {add}),
         ledger AS (
             INSERT INTO kp.usage_ledger AS l (session_id, day, agent, root, prompt, completion, cache_read,
                 cache_creation, thinking, messages)
             SELECT $1, created_ms / 86400000, COALESCE(agent_name, 'main'::BYTEA),
                 (SELECT project_root FROM kp.sessions WHERE id = $1), COALESCE(SUM(prompt_tokens), 0),
                 COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cache_read_tokens), 0),
                 COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(thinking_tokens), 0), COUNT(*)
             FROM ins
             GROUP BY created_ms / 86400000, COALESCE(agent_name, 'main'::BYTEA)
             {ledger})
         SELECT id, ord FROM ins",
        add = add_to_kept_usage!(),
        ledger = add_to_ledger!(),
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
    tx.commit().await.map_err(crate::error::db("commit import_messages"))?;
    Ok(placed.into_iter().map(|(_, id)| id).collect())
}

pub(crate) async fn import_metadata(c: &Conn, id: &str, entries: &[MetadataRecord], now: i64) -> Result<()> {
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

#[async_trait::async_trait]
impl Transfer for PostgresStore {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.with_client(|c| async move { export_session_ids(&c).await }).await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        self.with_client(|c| async move { export_session(&c, session_id).await }).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        self.with_client(|c| async move { export_messages(&c, session_id).await }).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        self.with_client(|c| async move { export_metadata(&c, session_id).await }).await
    }

    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        self.with_client(|c| async move { session_checksum(&c, session_id).await }).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.with_client(|c| async move { message_id_range(&c).await }).await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        self.with_client(|mut c| async move { claim_ids(&mut c, first, last).await }).await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        // An id in the trash is refused (never retried).
        self.with_client(|c| async move {
            if let Err(refused) = crate::trash::refuse_trashed(&c, &session.id).await? {
                return Ok(Err(refused));
            }
            import_session(&c, session).await.map(Ok)
        })
        .await?
    }

    async fn import_messages(&self, session_id: &str, messages: &[MessageRecord], keep_ids: bool) -> Result<Vec<i64>> {
        let ids = self
            .with_client(|mut c| async move { import_messages(&mut c, session_id, messages, keep_ids).await })
            .await?;
        self.cache().forget(session_id);
        Ok(ids)
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        let now = self.clock.now_ms();
        self.with_client(|c| async move { import_metadata(&c, session_id, entries, now).await }).await
    }
}
