//! The trash: a deleted session's keys moved, values unchanged, into
//! namespaces no read walks, and moved back on restore (one `Batch` each
//! way, under the store's write lock).
//!
//! | namespace | key | value |
//! |---|---|---|
//! | `X` | session id | deleted at (`i64` big-endian), root-less (1 byte), the `S` value |
//! | `Y` | the message's `M` key after its namespace byte | the `M` value |
//! | `Z` | the metadata entry's `D` key after its namespace byte | the `D` value |
//!
//! The indexes (`I`, `U`, `C`, `R`/`L`) are dropped on the way out and
//! rebuilt from the rows on the way back. Trashed messages keep their body
//! references (`b`); a purge releases them.

use anyhow::Result;
use koda_persistence_api::Trash;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::trash::{
    DeletedSession, in_trash, is_expired, live_session_exists, purge_at_ms, sort_deleted,
};
use koda_persistence_api::{PersistenceError, Role};
use sled::IVec;

use crate::db::{Tree, Writes, trash_key};

use crate::SledStore;
use crate::bodies::Refs;
use crate::keys;
use crate::queries::{as_u64, get_session, unindex_message, unlist_session};
use crate::rows::{StoredMessage, role_byte};

impl crate::SledStore {
    /// `delete_session`: into the trash when the handle keeps a grace
    /// period, for good otherwise.
    pub(crate) async fn delete(&self, session_id: &str) -> Result<bool> {
        let (days, now) = (self.keep_deleted_days, self.clock.now_ms());
        let sid = session_id.to_owned();
        let gone = sid.clone();
        self.write_then(
            move |db| {
                if days == 0 { crate::queries::delete_session(db, &sid) } else { trash_session(db, &sid, now) }
            },
            move |cache, existed| {
                cache.changed(&gone);
                existed
            },
        )
        .await
    }

    /// Purges the expired trashed sessions, writing only when there are.
    /// Whether a trashed session has passed its grace period (one read).
    pub(crate) async fn any_expired(&self) -> Result<bool> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.read(move |db| Ok(!selected(db, days, now, true)?.is_empty())).await
    }
}

/// `key` with its namespace byte replaced by `ns`.
fn renamed(key: &[u8], ns: u8) -> Vec<u8> {
    let mut k = key.to_vec();
    if let Some(first) = k.first_mut() {
        *first = ns;
    }
    k
}

fn prefixed(ns: u8, key_of: fn(&str) -> Vec<u8>, id: &str) -> Vec<u8> {
    renamed(&key_of(id), ns)
}

/// `delete_session` with a grace period: the session's keys into the trash.
pub(crate) fn trash_session(db: &Tree, sid: &str, now: i64) -> Result<(Writes, bool)> {
    let mut w = db.writes();
    let Some(s) = get_session(db, sid)? else {
        return Ok((w, false));
    };
    let rootless = db.index(keys::rootless(as_u64(s.created_ms), s.seq))?.is_some_and(|v| v.as_ref() == sid.as_bytes());
    // A leftover trashing of the same id (only an import can make one)
    // goes for good first.
    let mut refs = Refs::default();
    purge_into(db, sid, &mut w, &mut refs)?;
    for kv in db.messages(keys::messages_of(sid)) {
        let (k, m) = kv?;
        db.move_value(&mut w, &k, renamed(&k, keys::TRASH_MESSAGE))?;
        unindex_message(&mut w, &m);
    }
    for k in db.keys(keys::metadata_of(sid)) {
        let k = k?;
        db.move_value(&mut w, &k, renamed(&k, keys::TRASH_METADATA))?;
    }
    unlist_session(&mut w, &s, sid);
    db.trash_session_record(&mut w, sid, now, rootless)?;
    refs.finish(db, &mut w)?;
    Ok((w, true))
}

pub(crate) fn restore_session(db: &Tree, sid: &str, now: i64, days: u32) -> Result<(Writes, ())> {
    let mut w = db.writes();
    let e = match db.trashed(sid)? {
        Some(e) if !is_expired(e.deleted_ms, days, now) => e,
        _ => return Err(session_not_found(sid)),
    };
    if get_session(db, sid)?.is_some() {
        return Err(live_session_exists(sid));
    }
    for kv in db.messages(prefixed(keys::TRASH_MESSAGE, keys::messages_of, sid)) {
        let (k, m) = kv?;
        if db.has(keys::numbered(keys::BY_ID, m.id))? {
            return Err(PersistenceError::Conflict(format!(
                "message id {} of trashed session {sid:?} is taken by another message",
                m.id
            ))
            .into());
        }
        let live: IVec = renamed(&k, keys::MESSAGE).into();
        db.move_value(&mut w, &k, live.to_vec())?;
        w.index(keys::numbered(keys::BY_ID, m.id), live.clone());
        if m.role == role_byte(Role::User) {
            w.index(keys::numbered(keys::USER, m.id), live.clone());
        }
        if let Some(at) = m.compacted_ms {
            w.index(keys::compacted(as_u64(at), m.id), live);
        }
    }
    for k in db.keys(prefixed(keys::TRASH_METADATA, keys::metadata_of, sid)) {
        let k = k?;
        db.move_value(&mut w, &k, renamed(&k, keys::METADATA))?;
    }
    let s = &e.session;
    let listed = if e.rootless {
        keys::rootless(as_u64(s.created_ms), s.seq)
    } else {
        keys::by_root(&s.project_root, as_u64(s.created_ms), s.seq)
    };
    w.index(listed, sid.as_bytes());
    db.untrash_session_record(&mut w, sid)?;
    Ok((w, ()))
}

/// Puts the removal of a trashed session's keys into `w` and its body
/// references into `refs` (nothing when it is not in the trash).
fn purge_into(db: &Tree, sid: &str, w: &mut Writes, refs: &mut Refs) -> Result<()> {
    for kv in db.messages(prefixed(keys::TRASH_MESSAGE, keys::messages_of, sid)) {
        let (k, m) = kv?;
        refs.release(&m);
        w.remove(k);
    }
    for k in db.keys(prefixed(keys::TRASH_METADATA, keys::metadata_of, sid)) {
        w.remove(k?);
    }
    w.remove(trash_key(sid));
    Ok(())
}

/// Every trashed session, as reported.
fn every(db: &Tree, days: u32) -> Result<Vec<DeletedSession>> {
    let mut out = Vec::new();
    for t in db.trashed_all() {
        let (id, e) = t?;
        let s = e.session;
        out.push(DeletedSession {
            agent_name: s.agent_name,
            project_root: if e.rootless { None } else { Some(s.project_root) },
            title: s.title,
            created_ms: s.created_ms,
            message_count: s.message_count,
            deleted_ms: e.deleted_ms,
            purge_at_ms: purge_at_ms(e.deleted_ms, days),
            id,
        });
    }
    sort_deleted(&mut out);
    Ok(out)
}

/// The trashed sessions that have expired at `now` (`expired`), or those
/// that have not.
fn selected(db: &Tree, days: u32, now: i64, expired: bool) -> Result<Vec<DeletedSession>> {
    let mut all = every(db, days)?;
    all.retain(|d| is_expired(d.deleted_ms, days, now) == expired);
    Ok(all)
}

pub(crate) fn list_deleted(db: &Tree, now: i64, days: u32) -> Result<Vec<DeletedSession>> {
    selected(db, days, now, false)
}

pub(crate) fn purge_deleted(db: &Tree, now: i64, days: u32, dry_run: bool) -> Result<(Writes, Vec<DeletedSession>)> {
    let gone = selected(db, days, now, true)?;
    let mut w = db.writes();
    if !dry_run {
        let mut refs = Refs::default();
        for d in &gone {
            purge_into(db, &d.id, &mut w, &mut refs)?;
        }
        refs.finish(db, &mut w)?;
    }
    Ok((w, gone))
}

/// `import_session`'s refusal of an id in the trash.
pub(crate) fn refuse_trashed(db: &Tree, sid: &str) -> Result<()> {
    if db.has(trash_key(sid))? {
        return Err(in_trash(sid));
    }
    Ok(())
}

/// The messages the trash holds (their body references count), for `health`.
pub(crate) fn trashed_messages(db: &Tree) -> impl Iterator<Item = Result<(IVec, StoredMessage)>> + '_ {
    db.messages([keys::TRASH_MESSAGE])
}

#[async_trait::async_trait]
impl Trash for SledStore {
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.read(move |db| list_deleted(db, now, days)).await
    }

    /// Reads only each trash record's deletion time (in clear): no
    /// session record is opened and no trashed message is counted.
    async fn count_deleted(&self) -> Result<usize> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.read(move |db| {
            let mut n = 0;
            for at in db.trashed_times() {
                if !is_expired(at?, days, now) {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        let sid = session_id.to_owned();
        let changed = sid.clone();
        self.write_then(move |db| restore_session(db, &sid, now, days), move |cache, ()| cache.changed(&changed)).await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        let (now, days) = (self.clock.now_ms(), self.keep_deleted_days);
        self.write(move |db| purge_deleted(db, now, days, dry_run)).await
    }
}
