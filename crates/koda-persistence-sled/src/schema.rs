//! Migrations of the stored values: sled has no schema, so an open
//! rewrites what an earlier build wrote in an older format ([`upgrade`]).
//! The key layout is in [`crate::keys`], the values in [`crate::rows`].

use anyhow::Result;

use crate::db::Tree;
use crate::queries::counted_usage;

/// Rewrites the session records an earlier build wrote (format 1) at
/// format 2, with the usage their messages add up to, in one batch (an
/// encrypted store has none: only this build writes those).
/// Returns how many were upgraded; run at open, before any other call.
pub(crate) fn upgrade(db: &Tree) -> Result<usize> {
    let old = db.sessions_v1()?;
    if old.is_empty() {
        return Ok(0);
    }
    let mut w = db.writes();
    for (sid, record) in &old {
        let usage = counted_usage(db, sid)?;
        w.session(sid, &record.clone().upgrade(&usage))?;
    }
    db.apply(w)?;
    Ok(old.len())
}
