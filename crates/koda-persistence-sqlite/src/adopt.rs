//! Migration 1: adopting koda's own `koda.db` (any generation) or creating
//! it, and telling which generation wrote a file. The rest of the
//! migrations are in [`crate::schema`].

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};
use rusqlite_migration::HookResult;

/// Every koda table as its newest generation declares it. `IF NOT EXISTS`
/// leaves an existing table (and any column it has) alone.
pub(crate) const KODA_TABLES: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    agent_name TEXT NOT NULL,
    project_root TEXT,
    last_accessed_at TEXT,
    title TEXT,
    mode TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL,
    content TEXT,
    tool_calls TEXT,
    tool_call_id TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    cache_read_tokens INTEGER,
    cache_creation_tokens INTEGER,
    thinking_tokens INTEGER,
    agent_name TEXT,
    compacted_at TEXT,
    completed_at DATETIME,
    full_content TEXT,
    thinking_content TEXT
);
CREATE TABLE IF NOT EXISTS session_metadata (
    session_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (session_id, key)
);
";

/// Columns that older koda files may lack, then this backend's own columns.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("sessions", "project_root", "TEXT"),
    ("sessions", "last_accessed_at", "TEXT"),
    ("sessions", "title", "TEXT"),
    ("sessions", "mode", "TEXT"),
    ("messages", "cache_read_tokens", "INTEGER"),
    ("messages", "cache_creation_tokens", "INTEGER"),
    ("messages", "thinking_tokens", "INTEGER"),
    ("messages", "agent_name", "TEXT"),
    ("messages", "compacted_at", "TEXT"),
    ("messages", "completed_at", "DATETIME"),
    ("messages", "full_content", "TEXT"),
    ("messages", "thinking_content", "TEXT"),
    // This backend's columns.
    ("sessions", "created_ms", "INTEGER"),
    ("sessions", "last_accessed_ms", "INTEGER"),
    ("sessions", "seq", "INTEGER"),
    ("sessions", "message_count", "INTEGER NOT NULL DEFAULT 0"),
    ("sessions", "total_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("sessions", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "created_ms", "INTEGER"),
    ("messages", "completed_ms", "INTEGER"),
    ("messages", "compacted_ms", "INTEGER"),
    ("messages", "ord", "INTEGER"),
];

/// `text` (koda's `YYYY-MM-DD HH:MM:SS` or RFC 3339) as epoch milliseconds, in SQL.
macro_rules! text_ms {
    ($col:literal) => {
        concat!("CAST(ROUND((julianday(", $col, ") - 2440587.5) * 86400000.0) AS INTEGER)")
    };
}
pub(crate) use text_ms;

const BACKFILL: &str = concat!(
    "UPDATE sessions SET created_ms = COALESCE(",
    text_ms!("created_at"),
    ", 0) WHERE created_ms IS NULL;
UPDATE sessions SET last_accessed_ms = ",
    text_ms!("last_accessed_at"),
    " WHERE last_accessed_ms IS NULL AND last_accessed_at IS NOT NULL;
UPDATE sessions SET seq = rowid WHERE seq IS NULL;
UPDATE messages SET created_ms = COALESCE(",
    text_ms!("created_at"),
    ", 0) WHERE created_ms IS NULL;
UPDATE messages SET completed_ms = COALESCE(",
    text_ms!("completed_at"),
    ", created_ms) WHERE completed_ms IS NULL AND completed_at IS NOT NULL;
UPDATE messages SET compacted_ms = COALESCE(",
    text_ms!("compacted_at"),
    ", created_ms) WHERE compacted_ms IS NULL AND compacted_at IS NOT NULL;
UPDATE messages SET ord = id WHERE ord IS NULL;
"
);

const INDEXES_AND_TRIGGERS: &str = concat!(
    "
CREATE INDEX IF NOT EXISTS kp_messages_session_ord ON messages(session_id, ord);
CREATE INDEX IF NOT EXISTS kp_messages_recent_user ON messages(id) WHERE role = 'user';
CREATE INDEX IF NOT EXISTS kp_messages_compacted ON messages(compacted_ms) WHERE compacted_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS kp_sessions_root_created ON sessions(project_root, created_ms DESC, seq DESC);
CREATE INDEX IF NOT EXISTS kp_sessions_seq ON sessions(seq);

-- Deleting a message (purge, delete_session, or any other writer) keeps the
-- session counters exact. A saturated token total is recomputed.
CREATE TRIGGER IF NOT EXISTS kp_messages_deleted AFTER DELETE ON messages
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
CREATE TRIGGER IF NOT EXISTS kp_messages_foreign_insert AFTER INSERT ON messages
WHEN NEW.ord IS NULL
BEGIN
    UPDATE messages SET
        ord = NEW.id,
        created_ms = COALESCE(NEW.created_ms, ",
    text_ms!("NEW.created_at"),
    ", 0)
    WHERE id = NEW.id;
    UPDATE sessions SET
        version = version + 1,
        message_count = message_count + 1,
        total_tokens = MIN(total_tokens + COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0),
                           9223372036854775807)
    WHERE id = NEW.session_id;
END;

CREATE TRIGGER IF NOT EXISTS kp_sessions_foreign_insert AFTER INSERT ON sessions
WHEN NEW.seq IS NULL
BEGIN
    UPDATE sessions SET
        created_ms = COALESCE(NEW.created_ms, ",
    text_ms!("NEW.created_at"),
    ", 0),
        seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions)
    WHERE id = NEW.id;
END;

-- A text timestamp changed without its *_ms twin: an older koda wrote it.
CREATE TRIGGER IF NOT EXISTS kp_messages_foreign_complete AFTER UPDATE OF completed_at ON messages
WHEN NEW.completed_at IS NOT OLD.completed_at AND NEW.completed_ms IS OLD.completed_ms
BEGIN
    UPDATE messages SET completed_ms = CASE WHEN NEW.completed_at IS NULL THEN NULL
        ELSE COALESCE(",
    text_ms!("NEW.completed_at"),
    ", NEW.created_ms) END WHERE id = NEW.id;
    UPDATE sessions SET version = version + 1 WHERE id = NEW.session_id;
END;

CREATE TRIGGER IF NOT EXISTS kp_messages_foreign_compact AFTER UPDATE OF compacted_at ON messages
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
CREATE TRIGGER IF NOT EXISTS kp_messages_content_changed AFTER UPDATE OF content ON messages
BEGIN
    UPDATE sessions SET version = version + 1 WHERE id = NEW.session_id;
END;

CREATE TRIGGER IF NOT EXISTS kp_sessions_foreign_access AFTER UPDATE OF last_accessed_at ON sessions
WHEN NEW.last_accessed_at IS NOT OLD.last_accessed_at AND NEW.last_accessed_ms IS OLD.last_accessed_ms
BEGIN
    UPDATE sessions SET last_accessed_ms = ",
    text_ms!("NEW.last_accessed_at"),
    " WHERE id = NEW.id;
END;
"
);

pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
    stmt.exists(params![table, column])
}

/// Migration 1: adopt koda's schema (any generation) or create it.
pub(crate) fn adopt_koda_schema(tx: &Transaction<'_>) -> HookResult {
    let messages_existed =
        tx.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'")?.exists([])?;
    tx.execute_batch(KODA_TABLES)?;
    let had_completed_at = has_column(tx, "messages", "completed_at")?;
    for (table, column, decl) in COLUMNS {
        if !has_column(tx, table, column)? {
            // Names and declarations are constants of this file, never input.
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    tx.execute_batch(BACKFILL)?;
    if messages_existed && !had_completed_at {
        // Delivered by a koda that predates completion tracking.
        tx.execute(
            "UPDATE messages SET completed_at = created_at, completed_ms = created_ms
             WHERE role = 'assistant' AND completed_ms IS NULL",
            [],
        )?;
    }
    recount(tx)?;
    tx.execute_batch(INDEXES_AND_TRIGGERS)?;
    Ok(())
}

/// Recomputes every session's counters from its messages (saturating).
pub(crate) fn recount(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut per: HashMap<String, (i64, i128)> = HashMap::new();
    {
        let mut stmt =
            tx.prepare("SELECT session_id, COALESCE(prompt_tokens, 0), COALESCE(completion_tokens, 0) FROM messages")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let sid: String = row.get(0)?;
            let p: i64 = row.get(1)?;
            let c: i64 = row.get(2)?;
            let e = per.entry(sid).or_default();
            e.0 += 1;
            e.1 += i128::from(p) + i128::from(c);
        }
    }
    let mut update = tx.prepare("UPDATE sessions SET message_count = ?1, total_tokens = ?2 WHERE id = ?3")?;
    for (sid, (count, tokens)) in per {
        let tokens = i64::try_from(tokens.max(0)).unwrap_or(i64::MAX);
        update.execute(params![count, tokens, sid])?;
    }
    Ok(())
}

/// The koda generation a file came from, as its columns showed before this
/// layer adopted it, recorded in `kp_meta` under `koda_generation`. It says
/// how to read rows an older koda still writes into the file: generations
/// without completion tracking never set `completed_at`, so their assistant
/// rows count as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// No koda tables: a file this layer created. Writers of it set
    /// `completed_at` themselves.
    New,
    /// koda's first generation: no project roots, no completion tracking.
    Oldest,
    /// Roots, access times, cache tokens, agents, compaction; no completion
    /// tracking (koda until March 2026).
    Middle,
    /// `completed_at`, `full_content`, titles, modes: koda sets
    /// `completed_at` itself when an answer is delivered.
    Newest,
    /// Adopted by an earlier build of this layer, which did not record the
    /// generation: treated as one without completion tracking until a
    /// foreign writer sets `completed_at` itself.
    Unknown,
}

impl Origin {
    /// The marker's text in `kp_meta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::New => "new",
            Origin::Oldest => "oldest",
            Origin::Middle => "middle",
            Origin::Newest => "newest",
            Origin::Unknown => "unknown",
        }
    }
}

/// What generation wrote `conn`'s file, from its schema, before any
/// migration runs (an adopted file has this layer's columns already).
pub(crate) fn detect_origin(conn: &Connection) -> rusqlite::Result<Origin> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= 1 {
        return Ok(Origin::Unknown);
    }
    let koda_file =
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'")?.exists([])?;
    Ok(if !koda_file {
        Origin::New
    } else if has_column(conn, "messages", "completed_at")? {
        Origin::Newest
    } else if has_column(conn, "sessions", "project_root")? {
        Origin::Middle
    } else {
        Origin::Oldest
    })
}
