//! The file's check of itself: the Health capability.

use crate::SqliteStore;
use crate::rows::get;
use anyhow::Result;
use koda_persistence_api::Health;
use koda_persistence_api::StoreHealth;
use koda_persistence_api::bodies::{BodyStats, body_name};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

/// `PRAGMA integrity_check` (every page, every index against its table),
/// and every session's counters and positions against its messages.
pub(crate) fn health(conn: &Connection, key: Option<&crate::cipher::Key>) -> Result<StoreHealth> {
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut problems = Vec::new();
    // On a connection of its own: FTS5 keeps an index's structure cached
    // per connection, and a pooled reader's `integrity_check` was seen to
    // check the search index against a stale one ("malformed inverted
    // index for FTS5 table main.kp_search" in about half the runs of one
    // state-machine sequence, where a fresh connection on the same file,
    // and every search, found it whole). A private in-memory database
    // has one connection: it checks there.
    let own = match conn.path().filter(|p| !p.is_empty()) {
        Some(path) => {
            let fresh = crate::open::open_keyed(std::path::Path::new(path), key)?;
            fresh.busy_timeout(std::time::Duration::from_secs(5))?;
            Some(fresh)
        }
        None => None,
    };
    let checking = own.as_ref().unwrap_or(conn);
    let mut stmt = checking.prepare("PRAGMA integrity_check")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let line: String = get(r, 0, "integrity_check")?;
        if line != "ok" {
            problems.push(format!("integrity_check: {line}"));
        }
    }
    drop(rows);
    drop(stmt);
    drop(own);
    let mut stmt =
        conn.prepare_cached("SELECT session_id, COUNT(*) FROM messages WHERE ord IS NULL GROUP BY session_id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let sid: String = get(r, 0, "session id")?;
        let n: i64 = get(r, 1, "count")?;
        problems.push(format!("session {sid}: {n} messages without a position"));
    }
    problems.extend(usage_problems(conn)?);
    let (bodies, body_problems) = body_health(conn)?;
    problems.extend(body_problems);
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    // SQLCipher answers `page_size` as text (its `cipher_page_size`).
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| {
        Ok(match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(n) => n,
            rusqlite::types::ValueRef::Text(t) => {
                std::str::from_utf8(t).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
            }
            _ => 0,
        })
    })?;
    Ok(StoreHealth {
        schema_version,
        latest_schema_version: i64::try_from(crate::schema::SCHEMA_VERSION).unwrap_or(i64::MAX),
        problems,
        size_bytes: u64::try_from(pages.saturating_mul(page_size)).ok(),
        bodies,
    })
}

/// Bodies against the references to them, both ways: every reference
/// has its body, every body's `refs` is the number of fields pointing at
/// it (none is kept with no reference), and every body unpacks to the
/// text its address names. Reads every body once.
pub(crate) fn body_health(conn: &Connection) -> Result<(BodyStats, Vec<String>)> {
    let mut counted: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    // References from live messages and from the trash's (a whole scan:
    // `doctor` reads everything once).
    let mut stmt = conn.prepare(
        "SELECT h, COUNT(*) FROM (
             SELECT content_body AS h FROM messages WHERE content_body IS NOT NULL
             UNION ALL SELECT full_content_body FROM messages WHERE full_content_body IS NOT NULL
             UNION ALL SELECT tool_calls_body FROM messages WHERE tool_calls_body IS NOT NULL
             UNION ALL SELECT content_body FROM kp_trash_messages WHERE content_body IS NOT NULL
             UNION ALL SELECT full_content_body FROM kp_trash_messages
                 WHERE full_content_body IS NOT NULL
             UNION ALL SELECT tool_calls_body FROM kp_trash_messages
                 WHERE tool_calls_body IS NOT NULL)
         GROUP BY h",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = get(r, 0, "body reference")?;
        let n: i64 = get(r, 1, "count")?;
        counted.insert(hash, u64::try_from(n).unwrap_or(0));
    }
    let mut stats = BodyStats::default();
    let mut problems = Vec::new();
    let mut stmt = conn.prepare("SELECT hash, data, len, refs FROM kp_bodies")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let hash: Vec<u8> = get(r, 0, "body hash")?;
        let data: Vec<u8> = get(r, 1, "body")?;
        let len: i64 = get(r, 2, "body length")?;
        let refs: i64 = get(r, 3, "body count")?;
        let name = body_name(&hash);
        let uses = counted.remove(&hash).unwrap_or(0);
        if u64::try_from(refs).ok() != Some(uses) {
            problems.push(format!("body {name}: counts {refs} references, {uses} message fields use it"));
        }
        match koda_persistence_api::bodies::unpack_checked(&data, &hash) {
            Ok(text) if i64::try_from(text.len()).ok() == Some(len) => {}
            Ok(text) => problems.push(format!("body {name}: records {len} bytes, holds {}", text.len())),
            Err(e) => problems.push(format!("body {name}: {}", e.reason())),
        }
        let len = u64::try_from(len).unwrap_or(0);
        let packed = u64::try_from(data.len()).unwrap_or(u64::MAX);
        stats.add_body(len, packed, uses);
    }
    for (hash, uses) in counted {
        problems.push(format!("{uses} message fields refer to body {}, which is missing", body_name(&hash)));
    }
    Ok((stats, problems))
}

/// Sessions whose kept usage (`kp_usage`) differs from what their messages
/// add up to. A sum kept as a REAL (past `i64::MAX`) is recounted by every
/// reader, so only its group's presence is compared.
pub(crate) fn usage_problems(conn: &Connection) -> Result<Vec<String>> {
    let mut counted = crate::schema::counted_usage(conn)?;
    let mut differ = std::collections::BTreeSet::new();
    let mut stmt = conn.prepare(
        "SELECT session_id, agent, prompt, completion, cache_read, cache_creation, thinking, calls
         FROM kp_usage",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let key: (String, String) = (get(row, 0, "session id")?, get(row, 1, "usage agent")?);
        let want = counted.remove(&key);
        let mut same = want.is_some();
        for i in 0..6 {
            match (row.get_ref(i + 2)?, want) {
                (ValueRef::Integer(v), Some(w)) => same &= i128::from(v) == w[i],
                (ValueRef::Real(_), _) => {}
                _ => same = false,
            }
        }
        if !same {
            differ.insert(key.0);
        }
    }
    differ.extend(counted.into_keys().map(|(sid, _)| sid));
    Ok(differ
        .into_iter()
        .map(|sid| format!("session {sid}: the usage kept by agent differs from its messages' counters"))
        .collect())
}

#[async_trait::async_trait]
impl Health for SqliteStore {
    async fn health(&self) -> Result<StoreHealth> {
        let key = self.key.clone();
        self.read(move |c| health(c, key.as_ref())).await
    }
}
