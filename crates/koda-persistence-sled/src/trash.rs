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
use sled::{Batch, IVec};

use crate::db::Tree;

use crate::SledStore;
use crate::bodies::Refs;
use crate::keys;
use crate::queries::{as_u64, get_session, unindex_message, unlist_session};
use crate::rows::{StoredSession, role_byte};

/// Trashed session records.
pub(crate) const TRASH_SESSION: u8 = b'X';
/// Trashed messages.
pub(crate) const TRASH_MESSAGE: u8 = b'Y';
/// Trashed metadata.
pub(crate) const TRASH_METADATA: u8 = b'Z';

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

fn trash_key(id: &str) -> Vec<u8> {
    let mut k = keys::session(id);
    k[0] = TRASH_SESSION;
    k
}

/// `key` under namespace `ns` instead of its own.
fn renamed(key: &[u8], ns: u8) -> Vec<u8> {
    let mut k = key.to_vec();
    if let Some(first) = k.first_mut() {
        *first = ns;
    }
    k
}

/// A trashed session's record: when it was deleted, whether it was
/// root-less, and its `S` value.
struct Entry {
    deleted_ms: i64,
    rootless: bool,
    session: StoredSession,
    raw: Vec<u8>,
}

fn cut_short(id: &str) -> PersistenceError {
    PersistenceError::Corrupt(format!("trash record of session {id:?} is cut short"))
}

/// When the trash record `v` of session `id` says it was deleted: its
/// first 8 bytes, in clear, so nothing is opened to read it.
fn deleted_at(id: &str, v: &[u8]) -> Result<i64, PersistenceError> {
    let at: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| cut_short(id))?;
    Ok(i64::from_be_bytes(at))
}

fn decode_entry(db: &Tree, id: &str, v: &[u8]) -> Result<Entry, PersistenceError> {
    let deleted_ms = deleted_at(id, v)?;
    let rootless = *v.get(8).ok_or_else(|| cut_short(id))? == 1;
    let raw = v.get(9..).ok_or_else(|| cut_short(id))?.to_vec();
    Ok(Entry { deleted_ms, rootless, session: db.open_session(id, &raw, &format!("trashed session {id:?}"))?, raw })
}

fn entry(db: &Tree, id: &str) -> Result<Option<Entry>> {
    match db.get(trash_key(id))? {
        Some(v) => Ok(Some(decode_entry(db, id, &v)?)),
        None => Ok(None),
    }
}

fn prefixed(ns: u8, key_of: fn(&str) -> Vec<u8>, id: &str) -> Vec<u8> {
    renamed(&key_of(id), ns)
}

/// `delete_session` with a grace period: the session's keys into the trash.
pub(crate) fn trash_session(db: &Tree, sid: &str, now: i64) -> Result<(Batch, bool)> {
    let mut batch = Batch::default();
    let Some(raw) = db.get(keys::session(sid))? else {
        return Ok((batch, false));
    };
    let s = db.open_session(sid, &raw, &format!("session {sid:?}"))?;
    let rootless = db.get(keys::rootless(as_u64(s.created_ms), s.seq))?.is_some_and(|v| v.as_ref() == sid.as_bytes());
    // A leftover trashing of the same id (only an import can make one)
    // goes for good first.
    let mut refs = Refs::default();
    purge_into(db, sid, &mut batch, &mut refs)?;
    for kv in db.scan_prefix(keys::messages_of(sid)) {
        let (k, v) = kv?;
        let m = db.open_message(&k, &v)?;
        batch.remove(&k);
        batch.insert(renamed(&k, TRASH_MESSAGE), v);
        unindex_message(&mut batch, &m);
    }
    for kv in db.scan_prefix(keys::metadata_of(sid)) {
        let (k, v) = kv?;
        batch.remove(&k);
        batch.insert(renamed(&k, TRASH_METADATA), v);
    }
    unlist_session(&mut batch, &s, sid);
    let mut value = now.to_be_bytes().to_vec();
    value.push(u8::from(rootless));
    value.extend_from_slice(&raw);
    batch.insert(trash_key(sid), value);
    refs.finish(db, &mut batch)?;
    Ok((batch, true))
}

pub(crate) fn restore_session(db: &Tree, sid: &str, now: i64, days: u32) -> Result<(Batch, ())> {
    let mut batch = Batch::default();
    let e = match entry(db, sid)? {
        Some(e) if !is_expired(e.deleted_ms, days, now) => e,
        _ => return Err(session_not_found(sid)),
    };
    if get_session(db, sid)?.is_some() {
        return Err(live_session_exists(sid));
    }
    for kv in db.scan_prefix(prefixed(TRASH_MESSAGE, keys::messages_of, sid)) {
        let (k, v) = kv?;
        let m = db.open_message(&k, &v)?;
        if db.get(keys::numbered(keys::BY_ID, m.id))?.is_some() {
            return Err(PersistenceError::Conflict(format!(
                "message id {} of trashed session {sid:?} is taken by another message",
                m.id
            ))
            .into());
        }
        let live: IVec = renamed(&k, keys::MESSAGE).into();
        batch.remove(&k);
        batch.insert(live.clone(), v);
        batch.insert(keys::numbered(keys::BY_ID, m.id), live.clone());
        if m.role == role_byte(Role::User) {
            batch.insert(keys::numbered(keys::USER, m.id), live.clone());
        }
        if let Some(at) = m.compacted_ms {
            batch.insert(keys::compacted(as_u64(at), m.id), live);
        }
    }
    for kv in db.scan_prefix(prefixed(TRASH_METADATA, keys::metadata_of, sid)) {
        let (k, v) = kv?;
        batch.remove(&k);
        batch.insert(renamed(&k, keys::METADATA), v);
    }
    let s = &e.session;
    let listed = if e.rootless {
        keys::rootless(as_u64(s.created_ms), s.seq)
    } else {
        keys::by_root(&s.project_root, as_u64(s.created_ms), s.seq)
    };
    batch.insert(listed, sid.as_bytes());
    batch.insert(keys::session(sid), e.raw);
    batch.remove(trash_key(sid));
    Ok((batch, ()))
}

/// Puts the removal of a trashed session's keys into `batch` and its body
/// references into `refs` (nothing when it is not in the trash).
fn purge_into(db: &Tree, sid: &str, batch: &mut Batch, refs: &mut Refs) -> Result<()> {
    for kv in db.scan_prefix(prefixed(TRASH_MESSAGE, keys::messages_of, sid)) {
        let (k, v) = kv?;
        refs.release(&db.open_message(&k, &v)?);
        batch.remove(k);
    }
    for kv in db.scan_prefix(prefixed(TRASH_METADATA, keys::metadata_of, sid)) {
        batch.remove(kv?.0);
    }
    batch.remove(trash_key(sid));
    Ok(())
}

/// Every trashed session, as reported.
fn every(db: &Tree, days: u32) -> Result<Vec<DeletedSession>> {
    let mut out = Vec::new();
    for kv in db.scan_prefix([TRASH_SESSION]) {
        let (k, v) = kv?;
        let id = String::from_utf8(k[1..].to_vec())
            .map_err(|_| PersistenceError::Corrupt("a trashed session id is not UTF-8".into()))?;
        let e = decode_entry(db, &id, &v)?;
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

pub(crate) fn purge_deleted(db: &Tree, now: i64, days: u32, dry_run: bool) -> Result<(Batch, Vec<DeletedSession>)> {
    let gone = selected(db, days, now, true)?;
    let mut batch = Batch::default();
    if !dry_run {
        let mut refs = Refs::default();
        for d in &gone {
            purge_into(db, &d.id, &mut batch, &mut refs)?;
        }
        refs.finish(db, &mut batch)?;
    }
    Ok((batch, gone))
}

/// `import_session`'s refusal of an id in the trash.
pub(crate) fn refuse_trashed(db: &Tree, sid: &str) -> Result<()> {
    if db.get(trash_key(sid))?.is_some() {
        return Err(in_trash(sid));
    }
    Ok(())
}

/// Body references the trash holds, for `health`.
pub(crate) fn trashed_messages(db: &Tree) -> impl Iterator<Item = sled::Result<(IVec, IVec)>> {
    db.scan_prefix([TRASH_MESSAGE])
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
            for kv in db.scan_prefix([TRASH_SESSION]) {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k[1..]);
                if !is_expired(deleted_at(&id, &v)?, days, now) {
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
