//! The schema and its versioned migrations (`rusqlite_migration`, with
//! `PRAGMA user_version` as the single source of truth).
//!
//! Version 1 turns any generation of koda's own `koda.db` (or an empty file)
//! into this backend's schema, in place and inside one transaction:
//!
//! - koda's tables are created if missing, with every column koda ever had;
//!   columns an older koda lacks are added (`ALTER TABLE … ADD COLUMN`);
//!   unknown tables and columns are left untouched.
//! - instants are stored as epoch milliseconds in new `*_ms` columns, filled
//!   from koda's text timestamps (`2026-11-26 05:07:04` reads as
//!   `…T05:07:04.000Z`); the text columns are still written, so an older koda
//!   can keep reading the file.
//! - `sessions.version` counts writes to a session's messages (bumped in the
//!   same transaction, by this store and by triggers for older writers), so
//!   a cached context can be trusted exactly while it is unchanged.
//! - `messages.ord` is the conversation order within a session (migrated rows
//!   keep id order); `sessions.seq` the creation sequence; `message_count` and
//!   `total_tokens` per-session counters so `list_sessions` never aggregates
//!   messages.
//! - if `completed_at` did not exist yet, existing assistant rows were
//!   delivered by the koda that wrote them and are marked complete.
//! - triggers keep the new columns right for rows written by an older koda
//!   process still running on the same file.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use koda_persistence_api::PersistenceError;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use rusqlite_migration::{HookResult, M, Migrations};

use crate::adopt::{Origin, adopt_koda_schema, detect_origin, text_ms};
use crate::options::SqliteOptions;
use crate::worker;

/// Version 2: text timestamps in koda's own format, the file's generation,
/// and triggers that read an older writer's rows the way that generation
/// meant them.
///
/// Every trigger is dropped first so that rewriting the text columns does
/// not fire them, then created anew.
const V2_TRIGGERS_AND_TEXT: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS kp_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

DROP TRIGGER IF EXISTS kp_messages_deleted;
DROP TRIGGER IF EXISTS kp_messages_foreign_insert;
DROP TRIGGER IF EXISTS kp_sessions_foreign_insert;
DROP TRIGGER IF EXISTS kp_messages_foreign_complete;
DROP TRIGGER IF EXISTS kp_messages_foreign_compact;
DROP TRIGGER IF EXISTS kp_messages_content_changed;
DROP TRIGGER IF EXISTS kp_sessions_foreign_access;

-- Earlier builds wrote RFC 3339 text here; an older koda compares these
-- columns as text in its own format. The *_ms twins hold the instants.
UPDATE sessions SET created_at = strftime('%Y-%m-%d %H:%M:%S', created_ms / 1000, 'unixepoch')
    WHERE created_at LIKE '____-__-__T%' AND created_ms IS NOT NULL;
UPDATE sessions SET last_accessed_at = strftime('%Y-%m-%d %H:%M:%S', last_accessed_ms / 1000, 'unixepoch')
    WHERE last_accessed_at LIKE '____-__-__T%' AND last_accessed_ms IS NOT NULL;
UPDATE messages SET created_at = strftime('%Y-%m-%d %H:%M:%S', created_ms / 1000, 'unixepoch')
    WHERE created_at LIKE '____-__-__T%' AND created_ms IS NOT NULL;
UPDATE messages SET completed_at = strftime('%Y-%m-%d %H:%M:%S', completed_ms / 1000, 'unixepoch')
    WHERE completed_at LIKE '____-__-__T%' AND completed_ms IS NOT NULL;
UPDATE messages SET compacted_at = strftime('%Y-%m-%d %H:%M:%S', compacted_ms / 1000, 'unixepoch')
    WHERE compacted_at LIKE '____-__-__T%' AND compacted_ms IS NOT NULL;
UPDATE session_metadata SET updated_at = substr(updated_at, 1, 10) || ' ' || substr(updated_at, 12, 8)
    WHERE updated_at LIKE '____-__-__T__:__:__%';

-- Deleting a message (purge, delete_session, or any other writer) keeps the
-- session counters exact. A saturated token total is recomputed.
CREATE TRIGGER kp_messages_deleted AFTER DELETE ON messages
BEGIN
    UPDATE sessions SET
        version = version + 1,
        message_count = message_count - 1,
        total_tokens = CASE WHEN total_tokens >= 9223372036854775807 THEN (
                SELECT CAST(MIN(TOTAL(COALESCE(prompt_tokens, 0)) + TOTAL(COALESCE(completion_tokens, 0)),
                                9.2233720368547758e18) AS INTEGER)
                FROM messages WHERE session_id = OLD.session_id)
            ELSE total_tokens - COALESCE(OLD.prompt_tokens, 0) - COALESCE(OLD.completion_tokens, 0) END
    WHERE id = OLD.session_id;
END;

-- Rows inserted by an older koda (which knows nothing of ord and the
-- counters) get them here; this backend's own inserts set ord themselves.
-- Instants come from the text it wrote. An assistant row it did not mark
-- complete counts as complete when the file's generation never marks
-- completion (see kp_meta.koda_generation): it was delivered.
CREATE TRIGGER kp_messages_foreign_insert AFTER INSERT ON messages
WHEN NEW.ord IS NULL
BEGIN
    UPDATE messages SET
        ord = NEW.id,
        created_ms = COALESCE(NEW.created_ms, ",
    text_ms!("NEW.created_at"),
    ", 0),
        completed_ms = COALESCE(NEW.completed_ms, ",
    text_ms!("NEW.completed_at"),
    ", CASE WHEN NEW.role = 'assistant' AND NOT EXISTS (
                SELECT 1 FROM kp_meta WHERE key = 'koda_generation' AND value IN ('new', 'newest'))
            THEN COALESCE(NEW.created_ms, ",
    text_ms!("NEW.created_at"),
    ", 0) END),
        compacted_ms = COALESCE(NEW.compacted_ms, ",
    text_ms!("NEW.compacted_at"),
    ")
    WHERE id = NEW.id;
    UPDATE sessions SET
        version = version + 1,
        message_count = message_count + 1,
        total_tokens = MIN(total_tokens + COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0),
                           9223372036854775807)
    WHERE id = NEW.session_id;
END;

CREATE TRIGGER kp_sessions_foreign_insert AFTER INSERT ON sessions
WHEN NEW.seq IS NULL
BEGIN
    UPDATE sessions SET
        created_ms = COALESCE(NEW.created_ms, ",
    text_ms!("NEW.created_at"),
    ", 0),
        last_accessed_ms = COALESCE(NEW.last_accessed_ms, ",
    text_ms!("NEW.last_accessed_at"),
    "),
        seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions)
    WHERE id = NEW.id;
END;

-- A text timestamp changed without its *_ms twin: an older koda wrote it.
-- A foreign writer that marks completion itself is of the newest
-- generation: from now on its unmarked answers are still streaming.
CREATE TRIGGER kp_messages_foreign_complete AFTER UPDATE OF completed_at ON messages
WHEN NEW.completed_at IS NOT OLD.completed_at AND NEW.completed_ms IS OLD.completed_ms
BEGIN
    UPDATE messages SET completed_ms = CASE WHEN NEW.completed_at IS NULL THEN NULL
        ELSE COALESCE(",
    text_ms!("NEW.completed_at"),
    ", NEW.created_ms) END WHERE id = NEW.id;
    UPDATE sessions SET version = version + 1 WHERE id = NEW.session_id;
    UPDATE kp_meta SET value = 'newest'
        WHERE key = 'koda_generation' AND value NOT IN ('new', 'newest') AND NEW.completed_at IS NOT NULL;
END;

CREATE TRIGGER kp_messages_foreign_compact AFTER UPDATE OF compacted_at ON messages
WHEN NEW.compacted_at IS NOT OLD.compacted_at AND NEW.compacted_ms IS OLD.compacted_ms
BEGIN
    UPDATE messages SET compacted_ms = CASE WHEN NEW.compacted_at IS NULL THEN NULL
        ELSE COALESCE(",
    text_ms!("NEW.compacted_at"),
    ", NEW.created_ms) END WHERE id = NEW.id;
    UPDATE sessions SET version = version + 1 WHERE id = NEW.session_id;
END;

-- Any change of a message's text (clear_message_content here, microcompact
-- in an older koda) is a change to its session.
CREATE TRIGGER kp_messages_content_changed AFTER UPDATE OF content ON messages
BEGIN
    UPDATE sessions SET version = version + 1 WHERE id = NEW.session_id;
END;

CREATE TRIGGER kp_sessions_foreign_access AFTER UPDATE OF last_accessed_at ON sessions
WHEN NEW.last_accessed_at IS NOT OLD.last_accessed_at AND NEW.last_accessed_ms IS OLD.last_accessed_ms
BEGIN
    UPDATE sessions SET last_accessed_ms = ",
    text_ms!("NEW.last_accessed_at"),
    " WHERE id = NEW.id;
END;
"
);

/// Migration 2's hook: records the generation seen before adoption (an
/// earlier build's adoption keeps what it recorded, if anything).
fn record_origin(tx: &Transaction<'_>, origin: Origin) -> HookResult {
    tx.execute(
        "INSERT INTO kp_meta (key, value) VALUES ('koda_generation', ?1)
         ON CONFLICT (key) DO NOTHING",
        params![origin.as_str()],
    )?;
    Ok(())
}

/// Trigger statements: count `NEW` in its group when it is a counted
/// message (a sum past `i64::MAX` turns REAL: see [`V3_USAGE`]).
macro_rules! usage_add_new {
    () => {
        "
    INSERT OR IGNORE INTO kp_usage (session_id, agent, prompt, completion, cache_read,
                                    cache_creation, thinking, calls)
    SELECT NEW.session_id, COALESCE(NEW.agent_name, 'main'), 0, 0, 0, 0, 0, 0
    WHERE NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL;
    UPDATE kp_usage SET
        prompt = prompt + COALESCE(NEW.prompt_tokens, 0),
        completion = completion + COALESCE(NEW.completion_tokens, 0),
        cache_read = cache_read + COALESCE(NEW.cache_read_tokens, 0),
        cache_creation = cache_creation + COALESCE(NEW.cache_creation_tokens, 0),
        thinking = thinking + COALESCE(NEW.thinking_tokens, 0),
        calls = calls + 1
    WHERE session_id = NEW.session_id AND agent = COALESCE(NEW.agent_name, 'main')
      AND (NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL);
"
    };
}

/// Trigger statements: uncount `OLD` when it was a counted message, and
/// drop its group once empty.
macro_rules! usage_remove_old {
    () => {
        "
    UPDATE kp_usage SET
        prompt = prompt - COALESCE(OLD.prompt_tokens, 0),
        completion = completion - COALESCE(OLD.completion_tokens, 0),
        cache_read = cache_read - COALESCE(OLD.cache_read_tokens, 0),
        cache_creation = cache_creation - COALESCE(OLD.cache_creation_tokens, 0),
        thinking = thinking - COALESCE(OLD.thinking_tokens, 0),
        calls = calls - 1
    WHERE session_id = OLD.session_id AND agent = COALESCE(OLD.agent_name, 'main')
      AND (OLD.prompt_tokens IS NOT NULL OR OLD.completion_tokens IS NOT NULL);
    DELETE FROM kp_usage
    WHERE session_id = OLD.session_id AND agent = COALESCE(OLD.agent_name, 'main') AND calls <= 0;
"
    };
}

/// Version 3: usage by agent kept per session (`kp_usage`), so
/// `session_token_usage` and `session_usage_by_agent` read one row per
/// agent instead of the session's messages.
///
/// Triggers keep it for every writer (this store, an import, an older koda
/// on the same file): an insert of a counted message (prompt or completion
/// set) adds its counters under its agent (`'main'` when none), a delete
/// subtracts them and drops a group whose count reaches 0, an update of a
/// counter, the agent or the session moves them. The sum columns have no
/// declared type: when a sum passes `i64::MAX`, SQLite's `+` gives a REAL,
/// which stays REAL (no affinity turns it back into an inexact INTEGER),
/// and a reader seeing one recounts the session's messages instead.
///
/// Every SQLite that opens the file parses these triggers, an older koda's
/// too, whatever SQLite it was built with: they use no UPSERT (SQLite
/// 3.24) or other recent syntax, only `INSERT OR IGNORE` and `UPDATE`, and
/// `WITHOUT ROWID` (3.8.2, 2013).
const V3_USAGE: &str = concat!(
    "
CREATE TABLE kp_usage (
    session_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    prompt NOT NULL,
    completion NOT NULL,
    cache_read NOT NULL,
    cache_creation NOT NULL,
    thinking NOT NULL,
    calls NOT NULL,
    PRIMARY KEY (session_id, agent)
) WITHOUT ROWID;

CREATE TRIGGER kp_usage_inserted AFTER INSERT ON messages
WHEN NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL
BEGIN",
    usage_add_new!(),
    "END;

CREATE TRIGGER kp_usage_deleted AFTER DELETE ON messages
WHEN OLD.prompt_tokens IS NOT NULL OR OLD.completion_tokens IS NOT NULL
BEGIN",
    usage_remove_old!(),
    "END;

CREATE TRIGGER kp_usage_changed AFTER UPDATE OF prompt_tokens, completion_tokens,
    cache_read_tokens, cache_creation_tokens, thinking_tokens, agent_name, session_id ON messages
WHEN OLD.prompt_tokens IS NOT NULL OR OLD.completion_tokens IS NOT NULL
  OR NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL
BEGIN",
    usage_remove_old!(),
    usage_add_new!(),
    "END;

CREATE TRIGGER kp_usage_session_deleted AFTER DELETE ON sessions
BEGIN
    DELETE FROM kp_usage WHERE session_id = OLD.id;
END;
"
);

/// Exact usage sums `(five counters, calls)` by `(session, agent group)`,
/// counted from the messages: what `kp_usage` must hold.
pub(crate) type CountedUsage = HashMap<(String, String), [i128; 6]>;

/// Counts [`CountedUsage`] from every message of the file.
pub(crate) fn counted_usage(conn: &Connection) -> rusqlite::Result<CountedUsage> {
    let mut per = CountedUsage::new();
    let mut stmt = conn.prepare(
        "SELECT session_id, COALESCE(agent_name, 'main'), prompt_tokens, completion_tokens,
                cache_read_tokens, cache_creation_tokens, thinking_tokens
         FROM messages WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let sums = per.entry((row.get(0)?, row.get(1)?)).or_default();
        for (i, sum) in sums.iter_mut().take(5).enumerate() {
            let v: Option<i64> = row.get(i + 2)?;
            *sum += i128::from(v.unwrap_or(0));
        }
        sums[5] += 1;
    }
    Ok(per)
}

/// Migration 3's hook: counts the usage the file already holds, exactly
/// (a sum past `i64::MAX` is stored as a REAL, which readers recount).
fn count_usage(tx: &Transaction<'_>) -> HookResult {
    let per = counted_usage(tx)?;
    let mut insert = tx.prepare(
        "INSERT INTO kp_usage (session_id, agent, prompt, completion, cache_read, cache_creation,
                               thinking, calls)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for ((sid, agent), sums) in per {
        let v = sums.map(|s| match i64::try_from(s) {
            Ok(i) => rusqlite::types::Value::Integer(i),
            // Lossy on purpose: only its type matters, readers recount.
            Err(_) => rusqlite::types::Value::Real(s as f64),
        });
        insert.execute(params![sid, agent, v[0], v[1], v[2], v[3], v[4], v[5]])?;
    }
    Ok(())
}

/// Trigger statements: `delta` on the count of each body `row` refers to.
macro_rules! body_refs {
    ($row:literal, $delta:literal) => {
        concat!(
            "
    UPDATE kp_bodies SET refs = refs ",
            $delta,
            " WHERE hash = ",
            $row,
            ".content_body;
    UPDATE kp_bodies SET refs = refs ",
            $delta,
            " WHERE hash = ",
            $row,
            ".full_content_body;
    UPDATE kp_bodies SET refs = refs ",
            $delta,
            " WHERE hash = ",
            $row,
            ".tool_calls_body;
"
        )
    };
}

/// Trigger statement: drop the bodies `OLD` referred to once no field does.
macro_rules! drop_unused_bodies {
    () => {
        "
    DELETE FROM kp_bodies WHERE refs <= 0
      AND hash IN (OLD.content_body, OLD.full_content_body, OLD.tool_calls_body);
"
    };
}

/// Version 4: large outputs stored once (`kp_bodies`).
///
/// A message field that is a body (see `koda_persistence_api::bodies`)
/// has NULL in its own column and the body's address (SHA-256) in
/// `content_body`, `full_content_body` or `tool_calls_body`; `kp_bodies`
/// holds each body once, zstd-packed, with `refs`, the number of message
/// fields that point at it. Triggers keep `refs` for every writer and
/// every delete path (a session's delete, a purge, a cleared content, an
/// older koda deleting rows): an insert counts the new row's bodies, a
/// delete uncounts the old row's and drops those no field uses, an update
/// of a body column moves the counts. The writer inserts a body (with
/// `refs = 0`) in the same savepoint as the row that refers to it, so a
/// failed write leaves neither. The triggers use only `UPDATE` and
/// `DELETE`, which every SQLite an older koda was built with parses.
const V4_BODIES: &str = concat!(
    "
CREATE TABLE kp_bodies (
    hash BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL,
    len INTEGER NOT NULL,
    refs INTEGER NOT NULL
);
ALTER TABLE messages ADD COLUMN content_body BLOB;
ALTER TABLE messages ADD COLUMN full_content_body BLOB;
ALTER TABLE messages ADD COLUMN tool_calls_body BLOB;

CREATE TRIGGER kp_bodies_inserted AFTER INSERT ON messages
WHEN NEW.content_body IS NOT NULL OR NEW.full_content_body IS NOT NULL
  OR NEW.tool_calls_body IS NOT NULL
BEGIN",
    body_refs!("NEW", "+ 1"),
    "END;

CREATE TRIGGER kp_bodies_deleted AFTER DELETE ON messages
WHEN OLD.content_body IS NOT NULL OR OLD.full_content_body IS NOT NULL
  OR OLD.tool_calls_body IS NOT NULL
BEGIN",
    body_refs!("OLD", "- 1"),
    drop_unused_bodies!(),
    "END;

CREATE TRIGGER kp_bodies_changed AFTER UPDATE OF content_body, full_content_body, tool_calls_body
    ON messages
WHEN NEW.content_body IS NOT OLD.content_body OR NEW.full_content_body IS NOT OLD.full_content_body
  OR NEW.tool_calls_body IS NOT OLD.tool_calls_body
BEGIN",
    body_refs!("NEW", "+ 1"),
    body_refs!("OLD", "- 1"),
    drop_unused_bodies!(),
    "END;
"
);

/// Version 5: a writer that sets a field's text itself on a row whose
/// field is a body (an older koda's own microcompact, `UPDATE messages SET
/// content = …`) replaces the body: the trigger clears the address, which
/// releases the body through `kp_bodies_changed`, so every reader sees
/// the text that writer wrote. This store never writes both.
const V5_FOREIGN_TEXT: &str = "
CREATE TRIGGER kp_bodies_foreign_text AFTER UPDATE OF content, full_content, tool_calls ON messages
WHEN (NEW.content IS NOT NULL AND NEW.content_body IS NOT NULL)
  OR (NEW.full_content IS NOT NULL AND NEW.full_content_body IS NOT NULL)
  OR (NEW.tool_calls IS NOT NULL AND NEW.tool_calls_body IS NOT NULL)
BEGIN
    UPDATE messages SET
        content_body = CASE WHEN NEW.content IS NOT NULL THEN NULL ELSE content_body END,
        full_content_body = CASE WHEN NEW.full_content IS NOT NULL THEN NULL ELSE full_content_body END,
        tool_calls_body = CASE WHEN NEW.tool_calls IS NOT NULL THEN NULL ELSE tool_calls_body END
    WHERE id = NEW.id;
END;
";

/// Version 6: the search index. `kp_search` is a contentless FTS5 table
/// (FTS5's `ascii` tokenizer over the words
/// [`koda_persistence_api::search::index_text`] writes, one row per
/// message, rowid = message id) that only this layer writes.
/// `kp_search_dirty` holds the ids whose text changed since: the triggers
/// add them in the same transaction as every insert, text update and
/// delete, by anyone, with a plain `INSERT OR IGNORE` into a plain table,
/// so an older koda (whose SQLite may have no FTS5) never fails a write
/// because of the index. A search treats the dirty ids as candidates and
/// then indexes them ([`crate::search`]). Every message already stored is
/// dirty after the migration.
const V6_SEARCH: &str = "
CREATE TABLE kp_search_dirty (id INTEGER PRIMARY KEY);
CREATE VIRTUAL TABLE kp_search USING fts5(body, content='', contentless_delete=1, tokenize='ascii');
CREATE TRIGGER kp_search_inserted AFTER INSERT ON messages
BEGIN
    INSERT OR IGNORE INTO kp_search_dirty (id) VALUES (NEW.id);
END;
CREATE TRIGGER kp_search_changed AFTER UPDATE OF content, full_content, content_body, full_content_body
    ON messages
BEGIN
    INSERT OR IGNORE INTO kp_search_dirty (id) VALUES (NEW.id);
END;
CREATE TRIGGER kp_search_deleted AFTER DELETE ON messages
BEGIN
    INSERT OR IGNORE INTO kp_search_dirty (id) VALUES (OLD.id);
END;
INSERT OR IGNORE INTO kp_search_dirty (id) SELECT id FROM messages;
";

/// Whether this layer created the file (its recorded origin is
/// [`Origin::New`]) rather than adopting an older koda's.
pub(crate) fn created_here(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row("SELECT value FROM kp_meta WHERE key = 'koda_generation'", [], |r| r.get::<_, String>(0))
        .optional()?
        .is_some_and(|g| g == Origin::New.as_str()))
}

/// Migration 4's hook: a file this layer created stores bodies once from
/// the start; a file an older koda may still read keeps them inline until
/// the user opts in (`blobs=on`, `koda-store compact-bodies`).
fn record_body_mode(tx: &Transaction<'_>) -> HookResult {
    let created_here = created_here(tx)?;
    tx.execute(
        "INSERT INTO kp_meta (key, value) VALUES ('bodies', ?1) ON CONFLICT (key) DO NOTHING",
        params![if created_here { "on" } else { "off" }],
    )?;
    Ok(())
}

/// Whether this file stores bodies once: `wanted` (the `blobs=` option)
/// when given, which is then recorded for every later open; otherwise
/// what the file records.
pub(crate) fn body_mode(conn: &Connection, wanted: Option<bool>) -> Result<bool> {
    if let Some(on) = wanted {
        conn.execute(
            "INSERT INTO kp_meta (key, value) VALUES ('bodies', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![if on { "on" } else { "off" }],
        )?;
        return Ok(on);
    }
    let value: Option<String> =
        conn.query_row("SELECT value FROM kp_meta WHERE key = 'bodies'", [], |r| r.get(0)).optional()?;
    Ok(value.as_deref() == Some("on"))
}

/// The migrations, oldest first, for a file whose generation before
/// adoption was `origin`. Never edit a released one; append.
pub(crate) fn migrations(origin: Origin) -> Migrations<'static> {
    Migrations::new(vec![
        M::up_with_hook("", adopt_koda_schema),
        M::up_with_hook(V2_TRIGGERS_AND_TEXT, move |tx: &Transaction<'_>| record_origin(tx, origin)),
        M::up_with_hook(V3_USAGE, count_usage),
        M::up_with_hook(V4_BODIES, record_body_mode),
        M::up(V5_FOREIGN_TEXT),
        M::up(V6_SEARCH),
        M::up(V7_TRASH),
        M::up_with_hook(V8_LEDGER, backfill_ledger),
    ])
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = 8;

/// Brings the file to [`SCHEMA_VERSION`] with the migrations for its
/// origin (adopting an older koda's file in place), retrying while it is
/// busy until `deadline`.
pub(crate) fn migrate(conn: &mut Connection, deadline: Instant, options: &SqliteOptions) -> Result<()> {
    let origin = detect_origin(conn)?;
    let before: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let migrations = migrations(origin);
    if before < i64::try_from(SCHEMA_VERSION).unwrap_or(i64::MAX) {
        match origin {
            Origin::Oldest | Origin::Middle | Origin::Newest => {
                tracing::info!(
                    generation = origin.as_str(),
                    "adopting a koda.db of an earlier koda (its rows stay; an older koda can keep using it)"
                )
            }
            _ => {}
        }
        tracing::info!(from = before, to = SCHEMA_VERSION, "migrating the SQLite schema");
    }
    worker::retry_busy(deadline, options.busy_timeout, || match migrations.to_latest(conn) {
        Ok(()) => Ok(()),
        Err(rusqlite_migration::Error::MigrationDefinition(
            rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
        )) => Err(PersistenceError::Unavailable(format!(
            "the database was written by a newer koda-persistence (schema newer than \
                 version {}); upgrade koda",
            SCHEMA_VERSION
        ))
        .into()),
        Err(rusqlite_migration::Error::RusqliteError { err, .. }) => {
            Err(anyhow::Error::new(err).context("migrating the schema"))
        }
        Err(e) => Err(anyhow::anyhow!("migrating the schema: {e}")),
    })
}

/// Schema 7: the trash tables, shaped as the live ones are now.
pub(crate) const V7_TRASH: &str = "
CREATE TABLE kp_trash (session_id TEXT PRIMARY KEY, deleted_ms INTEGER NOT NULL);
CREATE TABLE kp_trash_sessions AS SELECT * FROM sessions WHERE 0;
CREATE TABLE kp_trash_messages AS SELECT * FROM messages WHERE 0;
CREATE TABLE kp_trash_metadata AS SELECT * FROM session_metadata WHERE 0;
CREATE INDEX kp_trash_sessions_id ON kp_trash_sessions(id);
CREATE INDEX kp_trash_messages_session ON kp_trash_messages(session_id);
CREATE INDEX kp_trash_metadata_session ON kp_trash_metadata(session_id);
";

/// The ledger day of a message row (`NEW` in a trigger, `m` in the
/// backfill): from its `created_ms`, or the text an older koda wrote.
macro_rules! ledger_day {
    ($row:literal) => {
        concat!(
            "(COALESCE(",
            $row,
            ".created_ms, CAST(ROUND((julianday(",
            $row,
            ".created_at) - 2440587.5) * 86400000.0) AS INTEGER), 0) / 86400000)"
        )
    };
}

/// Schema 8: the usage ledger (`koda_persistence_api::ledger`): per
/// session × UTC day × agent, with the session's root, the sums of the
/// five counters and the number of messages. A trigger counts every
/// insert into `messages`, by this store or an older koda (whose SQLite
/// parses it: `INSERT OR IGNORE` and `UPDATE` only); nothing subtracts.
/// A fork removes its new session's rows in its own transaction, and a
/// restore from the trash puts the session's rows back as they were
/// (`crate::ledger`). The sum columns have no declared type, as in
/// `kp_usage`. Keyed by day first, so a query over a range of days reads
/// the table in order; the session index serves a fork and a restore.
/// The hook fills it from the messages the file holds.
const V8_LEDGER: &str = concat!(
    "
CREATE TABLE kp_ledger (
    session_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    agent TEXT NOT NULL,
    root TEXT,
    prompt NOT NULL,
    completion NOT NULL,
    cache_read NOT NULL,
    cache_creation NOT NULL,
    thinking NOT NULL,
    messages NOT NULL,
    PRIMARY KEY (day, session_id, agent)
) WITHOUT ROWID;
CREATE INDEX kp_ledger_session ON kp_ledger (session_id);

CREATE TRIGGER kp_ledger_inserted AFTER INSERT ON messages
BEGIN
    INSERT OR IGNORE INTO kp_ledger (session_id, day, agent, root, prompt, completion, cache_read,
                                     cache_creation, thinking, messages)
    VALUES (NEW.session_id, ",
    ledger_day!("NEW"),
    ", COALESCE(NEW.agent_name, 'main'),
            (SELECT project_root FROM sessions WHERE id = NEW.session_id), 0, 0, 0, 0, 0, 0);
    UPDATE kp_ledger SET
        prompt = prompt + COALESCE(NEW.prompt_tokens, 0),
        completion = completion + COALESCE(NEW.completion_tokens, 0),
        cache_read = cache_read + COALESCE(NEW.cache_read_tokens, 0),
        cache_creation = cache_creation + COALESCE(NEW.cache_creation_tokens, 0),
        thinking = thinking + COALESCE(NEW.thinking_tokens, 0),
        messages = messages + 1
    WHERE session_id = NEW.session_id AND day = ",
    ledger_day!("NEW"),
    " AND agent = COALESCE(NEW.agent_name, 'main');
END;
"
);

/// Migration 8's hook: the ledger of the messages the file holds now
/// (what was purged before is not there to count), logged.
fn backfill_ledger(tx: &Transaction<'_>) -> HookResult {
    let n = tx.execute(
        concat!(
            "INSERT INTO kp_ledger (session_id, day, agent, root, prompt, completion, cache_read,
                                    cache_creation, thinking, messages)
             SELECT m.session_id, ",
            ledger_day!("m"),
            ", COALESCE(m.agent_name, 'main'),
                    (SELECT s.project_root FROM sessions s WHERE s.id = m.session_id),
                    SUM(COALESCE(m.prompt_tokens, 0)), SUM(COALESCE(m.completion_tokens, 0)),
                    SUM(COALESCE(m.cache_read_tokens, 0)), SUM(COALESCE(m.cache_creation_tokens, 0)),
                    SUM(COALESCE(m.thinking_tokens, 0)), COUNT(*)
             FROM messages m GROUP BY 1, 2, 3"
        ),
        [],
    )?;
    if n > 0 {
        tracing::info!(rows = n, "usage ledger filled from the messages this file still holds");
    }
    Ok(())
}
