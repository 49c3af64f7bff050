//! Large outputs stored once: which fields are bodies, packing them, and the statement part that stores them.

use anyhow::Result;
use koda_persistence_api::Role;
use koda_persistence_api::bodies::{BodyField, BodyHash, body_hash, is_body, pack};
use std::collections::BTreeMap;

/// The fields that may be bodies, in column order.
pub(crate) const FIELDS: [BodyField; 3] = [BodyField::Content, BodyField::FullContent, BodyField::ToolCalls];

/// The bodies one statement writes: distinct addresses in address order
/// (the lock order), their packed bytes and text lengths, and the
/// references the statement adds to each.
#[derive(Default)]
pub(crate) struct NewBodies {
    pub(crate) hashes: Vec<Vec<u8>>,
    pub(crate) data: Vec<Vec<u8>>,
    pub(crate) lens: Vec<i64>,
    pub(crate) refs: Vec<i64>,
}

/// Bodies found in a statement's rows, by address: references and text.
pub(crate) type Found<'v> = BTreeMap<BodyHash, (i64, &'v str)>;

/// A row's three text fields: what its own columns hold, and the addresses
/// of the bodies that hold the rest.
pub(crate) type Split<'v> = ([Option<&'v [u8]>; 3], [Option<Vec<u8>>; 3]);

/// Splits a `role` message's content, full_content and tool_calls into
/// inline values and bodies, counting each body in `found`.
pub(crate) fn split<'v>(role: &Role, fields: [Option<&'v str>; 3], found: &mut Found<'v>) -> Split<'v> {
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
pub(crate) async fn pack_bodies(found: Found<'_>) -> Result<NewBodies> {
    let total: usize = found.values().map(|(_, t)| t.len()).sum();
    let mut out = NewBodies::default();
    let packed: Vec<Vec<u8>> = if total > 256 * 1024 {
        let texts: Vec<String> = found.values().map(|(_, t)| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| pack(t)).collect::<Result<_>>())
            .await
            .map_err(|e| anyhow::anyhow!("packing bodies: {e}"))??
    } else {
        found.values().map(|(_, t)| pack(t)).collect::<Result<_>>()?
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
pub(crate) use upsert_bodies;
