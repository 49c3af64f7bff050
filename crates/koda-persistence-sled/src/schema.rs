//! Migrations of the stored values: sled has no schema, so an open
//! rewrites what an earlier build wrote in an older format ([`upgrade`]).
//! The key layout is in [`crate::keys`], the values in [`crate::rows`].

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use sled::Batch;

use crate::db::Tree;
use crate::keys::SESSION;
use crate::queries::counted_usage;
use crate::rows::decode_session_v1;

/// Rewrites the session records an earlier build wrote (format 1) at
/// format 2, with the usage their messages add up to, in one batch.
/// Returns how many were upgraded; run at open, before any other call.
pub(crate) fn upgrade(db: &Tree) -> Result<usize> {
    let mut batch = Batch::default();
    let mut n = 0;
    if db.encrypted() {
        // Only this build writes encrypted stores: no format-1 record.
        return Ok(0);
    }
    for kv in db.scan_prefix([SESSION]) {
        let (k, v) = kv?;
        let sid = String::from_utf8(k[1..].to_vec())
            .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))?;
        if let Some(old) = decode_session_v1(&v, &format!("session {sid:?}"))? {
            let usage = counted_usage(db, &sid)?;
            batch.insert(k, db.seal_session(&sid, &old.upgrade(&usage))?);
            n += 1;
        }
    }
    if n > 0 {
        db.apply_batch(batch)?;
    }
    Ok(n)
}
