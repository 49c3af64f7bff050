//! The directory's check of itself: the Health capability.

use crate::SledStore;
use crate::bodies::body_count;
use crate::db::Tree;
use crate::keys;
use crate::queries::counted_usage;
use anyhow::Result;
use koda_persistence_api::BodyStats;
use koda_persistence_api::Health;
use koda_persistence_api::StoreHealth;
use koda_persistence_api::bodies::{BodyHash, body_name};
use std::collections::HashMap;

/// Every value decodes; every id index entry names a stored message of
/// that id; every session's position counter is at or past its last
/// message. O(store): for `doctor`, not for koda's calls.
pub(crate) fn health(db: &Tree) -> Result<koda_persistence_api::StoreHealth> {
    let mut problems = Vec::new();
    for kv in db.index_scan([keys::BY_ID]) {
        let (k, key) = kv?;
        let id = k.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        match (id, db.message(&key)) {
            (Some(id), Ok(Some(m))) if m.id == id => {}
            (Some(id), Ok(Some(m))) => problems.push(format!("id index: {id} names message {}", m.id)),
            (Some(id), Ok(None)) => problems.push(format!("id index: message {id} is missing")),
            (Some(id), Err(e)) => problems.push(format!("message {id}: {e}")),
            (None, _) => problems.push("id index: a key without an id".to_owned()),
        }
    }
    for kv in db.sessions() {
        let (sid, s) = kv?;
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if let Some(last) = db.keys(keys::messages_of(&sid)).next_back() {
            let key = last?;
            let ord = keys::ord_of(&key).unwrap_or(u64::MAX);
            if ord > s.next_ord {
                problems
                    .push(format!("session {sid}: position counter {} is behind its last message's {ord}", s.next_ord));
            }
        }
        // A message that does not read is a problem to report, not a
        // reason for the check itself to fail.
        match counted_usage(db, &sid) {
            Ok(usage) if usage != s.tally() => {
                problems.push(format!("session {sid}: the usage kept by agent differs from its messages' counters"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("session {sid}: {e:#}")),
        }
    }
    let bodies = body_health(db, &mut problems)?;
    Ok(koda_persistence_api::StoreHealth {
        schema_version: i64::from(crate::rows::SESSION_VERSION),
        latest_schema_version: i64::from(crate::rows::SESSION_VERSION),
        problems,
        size_bytes: Some(db.size_on_disk()?),
        bodies,
    })
}

/// Bodies against the references to them, both ways (every reference has
/// its body, every count is the number of fields using it, no body is kept
/// unused), and every body against its address. Reads every body once.
pub(crate) fn body_health(db: &Tree, problems: &mut Vec<String>) -> Result<BodyStats> {
    let mut uses: HashMap<BodyHash, u64> = HashMap::new();
    for kv in db.messages([keys::MESSAGE]).chain(crate::trash::trashed_messages(db)) {
        let Ok((_, m)) = kv else {
            continue;
        };
        for hash in m.bodies.iter().flatten() {
            *uses.entry(*hash).or_default() += 1;
        }
    }
    let mut stats = BodyStats::default();
    for kv in db.bodies() {
        let (hash, packed, text) = kv?;
        let Some(hash) = hash else {
            problems.push("a body key without a 32-byte address".into());
            continue;
        };
        let name = body_name(&hash);
        let len = match text {
            Ok(text) => text.len() as u64,
            Err(e) => {
                problems.push(format!("body {name}: {}", e.reason()));
                0
            }
        };
        let count = body_count(db, &hash)?;
        let used = uses.remove(&hash).unwrap_or(0);
        if count != used {
            problems.push(format!("body {name}: counts {count} references, {used} message fields use it"));
        }
        stats.add_body(len, packed, used);
    }
    for k in db.keys([keys::BODY_REFS]) {
        let k = k?;
        if !db.has(keys::body(&BodyHash::try_from(&k[1..]).unwrap_or([0; 32])))? {
            problems.push("a body reference count without its body".into());
        }
    }
    for (hash, n) in uses {
        let name = body_name(&hash);
        problems.push(format!("{n} message fields refer to body {name}, which is missing"));
    }
    Ok(stats)
}

#[async_trait::async_trait]
impl Health for SledStore {
    async fn health(&self) -> Result<StoreHealth> {
        self.read(health).await
    }
}
