//! What an older koda does to its `koda.db`, generation by generation, as
//! the plain SQL it issues: a running koda of that generation, played by a
//! rusqlite connection of its own. The next generation is one more entry.
//!
//! Times come from SQLite's clock (`CURRENT_TIMESTAMP`, `datetime('now')`),
//! in koda's `YYYY-MM-DD HH:MM:SS` UTC text, as koda writes them.

#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::path::Path;

use rusqlite::{Connection, ToSql, params};

/// The generations of koda.db this layer adopts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// The first: no project roots, no cache tokens, no compaction, no
    /// completion tracking.
    Oldest,
    /// Until March 2026: roots, access times, cache and thinking tokens,
    /// agents, compaction; no completion tracking.
    Middle,
    /// Completion tracking (`completed_at`), full content, titles, modes,
    /// owned files.
    Newest,
}

pub const ALL: [Generation; 3] = [Generation::Oldest, Generation::Middle, Generation::Newest];

const OLDEST_SCHEMA: &str = "
PRAGMA journal_mode = WAL; PRAGMA auto_vacuum = INCREMENTAL; PRAGMA foreign_keys = ON;
CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
                       agent_name TEXT NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id), role TEXT NOT NULL, content TEXT,
    tool_calls TEXT, tool_call_id TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE session_metadata (session_id TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (session_id, key));
CREATE INDEX idx_messages_session_id ON messages(session_id);";

const MIDDLE_COLUMNS: &str = "
ALTER TABLE sessions ADD COLUMN project_root TEXT;
ALTER TABLE sessions ADD COLUMN last_accessed_at TEXT;
ALTER TABLE messages ADD COLUMN cache_read_tokens INTEGER;
ALTER TABLE messages ADD COLUMN cache_creation_tokens INTEGER;
ALTER TABLE messages ADD COLUMN thinking_tokens INTEGER;
ALTER TABLE messages ADD COLUMN agent_name TEXT;
ALTER TABLE messages ADD COLUMN compacted_at TEXT;
CREATE INDEX idx_messages_role_id ON messages(role, id DESC);";

const NEWEST_COLUMNS: &str = "
ALTER TABLE sessions ADD COLUMN title TEXT;
ALTER TABLE sessions ADD COLUMN mode TEXT;
ALTER TABLE messages ADD COLUMN completed_at DATETIME;
ALTER TABLE messages ADD COLUMN full_content TEXT;
ALTER TABLE messages ADD COLUMN thinking_content TEXT;
CREATE TABLE owned_files (session_id TEXT NOT NULL, path TEXT NOT NULL,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (session_id, path));";

/// One row of an older koda's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub created_at: String,
    pub messages: i64,
    pub tokens: i64,
}

/// A running koda of one generation on a file.
pub struct OlderKoda {
    pub generation: Generation,
    pub conn: Connection,
}

impl Generation {
    /// Whether this generation compacts (and so has `compacted_at`).
    pub fn compacts(self) -> bool {
        self != Generation::Oldest
    }

    /// Whether it marks delivered answers with `completed_at`.
    pub fn tracks_completion(self) -> bool {
        self == Generation::Newest
    }

    /// Whether sessions have roots (and access times).
    pub fn has_roots(self) -> bool {
        self != Generation::Oldest
    }

    /// Creates a fresh koda.db of this generation at `path`.
    pub fn create_file(self, path: &Path) {
        let conn = Connection::open(path).expect("create the koda file");
        conn.execute_batch(OLDEST_SCHEMA).expect("oldest schema");
        if self != Generation::Oldest {
            conn.execute_batch(MIDDLE_COLUMNS).expect("middle columns");
        }
        if self == Generation::Newest {
            conn.execute_batch(NEWEST_COLUMNS).expect("newest columns");
        }
    }

    /// A koda of this generation running on `path`.
    pub fn open(self, path: &Path) -> OlderKoda {
        let conn = Connection::open(path).expect("older koda opens its file");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
        conn.execute_batch("PRAGMA foreign_keys = ON").expect("foreign keys");
        OlderKoda { generation: self, conn }
    }
}

impl OlderKoda {
    pub fn create_session(&self, id: &str, agent: &str, root: &str) {
        if self.generation.has_roots() {
            self.conn
                .execute(
                    "INSERT INTO sessions (id, agent_name, project_root) VALUES (?1, ?2, ?3)",
                    params![id, agent, root],
                )
                .expect("older koda creates a session");
        } else {
            self.conn
                .execute("INSERT INTO sessions (id, agent_name) VALUES (?1, ?2)", params![id, agent])
                .expect("older koda creates a session");
        }
    }

    /// Inserts a message as this generation does; returns its id. An
    /// answer of the newest generation is still streaming until
    /// [`OlderKoda::complete`].
    #[allow(clippy::too_many_arguments)]
    pub fn insert_message(
        &self,
        session: &str,
        role: &str,
        content: Option<&str>,
        tool_calls: Option<&str>,
        tool_call_id: Option<&str>,
        usage: Option<[i64; 5]>,
        agent: Option<&str>,
    ) -> i64 {
        let [p, c, cr, cc, t] = match usage {
            Some(u) => u.map(Some),
            None => [None; 5],
        };
        let base: [&dyn ToSql; 7] = [&session, &role, &content, &tool_calls, &tool_call_id, &p, &c];
        let done = match self.generation {
            Generation::Oldest => self.conn.execute(
                "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id,
                     prompt_tokens, completion_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &base[..],
            ),
            Generation::Middle | Generation::Newest => {
                let more: [&dyn ToSql; 4] = [&cr, &cc, &t, &agent];
                let all: Vec<&dyn ToSql> = base.iter().chain(more.iter()).copied().collect();
                self.conn.execute(
                    "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id,
                         prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
                         thinking_tokens, agent_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    &all[..],
                )
            }
        };
        done.expect("older koda inserts a message");
        self.conn.last_insert_rowid()
    }

    /// The newest generation marks an answer delivered.
    pub fn complete(&self, id: i64) {
        assert!(self.generation.tracks_completion(), "no completion tracking");
        self.conn
            .execute("UPDATE messages SET completed_at = CURRENT_TIMESTAMP WHERE id = ?1", params![id])
            .expect("older koda completes");
    }

    pub fn touch_session(&self, id: &str) {
        if self.generation.has_roots() {
            self.conn
                .execute("UPDATE sessions SET last_accessed_at = datetime('now') WHERE id = ?1", params![id])
                .expect("older koda touches a session");
        }
    }

    /// Compacts as koda does: marks all but the last `keep` active
    /// messages, then appends the summary and the hint after the tail.
    pub fn compact(&self, session: &str, summary: &str, keep: i64) -> usize {
        assert!(self.generation.compacts(), "no compaction");
        let marked = self
            .conn
            .execute(
                "UPDATE messages SET compacted_at = datetime('now')
                 WHERE session_id = ?1 AND compacted_at IS NULL AND id NOT IN (
                     SELECT id FROM messages WHERE session_id = ?1 AND compacted_at IS NULL
                     ORDER BY id DESC LIMIT ?2)",
                params![session, keep],
            )
            .expect("older koda compacts");
        self.conn
            .execute(
                "INSERT INTO messages (session_id, role, content) VALUES (?1, 'system', ?2)",
                params![session, summary],
            )
            .expect("summary");
        let hint = "[context compacted]";
        if self.generation.tracks_completion() {
            self.conn.execute(
                "INSERT INTO messages (session_id, role, content, completed_at)
                 VALUES (?1, 'assistant', ?2, CURRENT_TIMESTAMP)",
                params![session, hint],
            )
        } else {
            self.conn.execute(
                "INSERT INTO messages (session_id, role, content) VALUES (?1, 'assistant', ?2)",
                params![session, hint],
            )
        }
        .expect("hint");
        marked
    }

    /// Deletes compacted messages older than `days` days, as koda does.
    pub fn purge(&self, days: i64) -> usize {
        self.conn
            .execute(
                "DELETE FROM messages WHERE compacted_at IS NOT NULL
                 AND compacted_at < datetime('now', ?1)",
                params![format!("-{days} days")],
            )
            .expect("older koda purges")
    }

    pub fn delete_session(&self, id: &str) {
        let mut statements =
            vec!["DELETE FROM session_metadata WHERE session_id = ?1", "DELETE FROM messages WHERE session_id = ?1"];
        if self.generation == Generation::Newest {
            statements.push("DELETE FROM owned_files WHERE session_id = ?1");
        }
        statements.push("DELETE FROM sessions WHERE id = ?1");
        for sql in statements {
            self.conn.execute(sql, params![id]).expect("older koda deletes a session");
        }
    }

    /// koda's session list: newest `created_at` first, compared as text.
    pub fn list_sessions(&self, root: &str, limit: i64) -> Vec<Listed> {
        let (sql, with_root) = if self.generation.has_roots() {
            (
                "SELECT s.id, s.created_at, COUNT(m.id),
                        COALESCE(SUM(COALESCE(m.prompt_tokens, 0) + COALESCE(m.completion_tokens, 0)), 0)
                 FROM sessions s LEFT JOIN messages m ON m.session_id = s.id
                 WHERE s.project_root = ?2 OR s.project_root IS NULL
                 GROUP BY s.id ORDER BY s.created_at DESC LIMIT ?1",
                true,
            )
        } else {
            (
                "SELECT s.id, s.created_at, COUNT(m.id),
                        COALESCE(SUM(COALESCE(m.prompt_tokens, 0) + COALESCE(m.completion_tokens, 0)), 0)
                 FROM sessions s LEFT JOIN messages m ON m.session_id = s.id
                 GROUP BY s.id ORDER BY s.created_at DESC LIMIT ?1",
                false,
            )
        };
        let mut stmt = self.conn.prepare(sql).expect("list");
        let map = |r: &rusqlite::Row<'_>| {
            Ok(Listed { id: r.get(0)?, created_at: r.get(1)?, messages: r.get(2)?, tokens: r.get(3)? })
        };
        let rows =
            if with_root { stmt.query_map(params![limit, root], map) } else { stmt.query_map(params![limit], map) };
        rows.expect("list").collect::<rusqlite::Result<_>>().expect("list rows")
    }

    /// koda's history load: the session's active messages by id, as (id,
    /// role, content).
    pub fn load_messages(&self, session: &str) -> Vec<(i64, String, Option<String>)> {
        let sql = if self.generation.compacts() {
            "SELECT id, role, content FROM messages
             WHERE session_id = ?1 AND compacted_at IS NULL ORDER BY id"
        } else {
            "SELECT id, role, content FROM messages WHERE session_id = ?1 ORDER BY id"
        };
        let mut stmt = self.conn.prepare(sql).expect("load");
        stmt.query_map(params![session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("load")
            .collect::<rusqlite::Result<_>>()
            .expect("load rows")
    }

    /// koda's usage sums: (prompt, completion, api calls).
    pub fn usage(&self, session: &str) -> (i64, i64, i64) {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COUNT(*)
                 FROM messages WHERE session_id = ?1
                 AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)",
                params![session],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("usage")
    }

    /// koda's compacted stats: (messages, sessions, oldest `compacted_at`).
    pub fn compacted_stats(&self) -> (i64, i64, Option<String>) {
        self.conn
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT session_id), MIN(compacted_at)
                 FROM messages WHERE compacted_at IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("compacted stats")
    }

    pub fn integrity_ok(&self) -> bool {
        self.conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).is_ok_and(|s| s == "ok")
    }
}
