//! The open database: the one handle every call reads and writes through
//! ([`Tree`]), and opening it ([`open_db`]): the directory made private,
//! sled's lock waited for, the key checked before anything is written.
//! What a value looks like sealed is [`crate::cipher`]'s.
//!
//! The handle's doors are typed: a session, message, metadata value or
//! body is read opened ([`Tree::session`], [`Tree::messages`], …) and
//! written sealed ([`Writes`]); only the indexes and counters, which hold
//! ids, times, roots and keys in clear, are read and written as bytes
//! ([`Tree::index`], [`Writes::index`]). Nothing outside this file
//! reaches sled's raw handle, so whether a value is sealed is decided
//! here, by the door it goes through, not at each call site.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::bodies::BodyHash;
use koda_persistence_api::cipher::{FieldCipher, KeyMaterial, wrong_key};
use sled::{Batch, Db, IVec};

use crate::error::{is_locked, storage};
use crate::keys;
use crate::options::{FlushPolicy, SledOptions};
use crate::rows::{StoredMessage, StoredSession, StoredSessionV1, decode_session_v1};

/// The open database, and the cipher of an encrypted store.
#[derive(Clone)]
pub(crate) struct Tree {
    db: Db,
    pub(super) cipher: Option<Arc<FieldCipher>>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree").field("encrypted", &self.cipher.is_some()).finish()
    }
}

impl Tree {
    /// `db` as it is, checking `key` against its key record (the key
    /// record is written here for a store that is still empty).
    ///
    /// # Errors
    /// `PermissionDenied` ([`wrong_key`]) for a key that is not the
    /// store's, a key for a store that is not encrypted (and not empty),
    /// or no key for an encrypted store. Nothing is written then.
    ///
    /// `checked` is the cipher [`open_db`] already unlocked against the
    /// copy of the key record beside the store: the record in the store
    /// must then be the same bytes (else `Corrupt`), and the key is not
    /// derived again.
    pub(crate) fn unlock(
        db: Db,
        key: Option<&KeyMaterial>,
        path: &Path,
        checked: Option<(FieldCipher, Vec<u8>)>,
    ) -> Result<Self> {
        let what = path.display().to_string();
        let record = db.get(keys::key_record())?;
        let cipher = match (key, record) {
            (None, None) => None,
            (None, Some(_)) => return Err(encrypted_without_key(&what).into()),
            (Some(_), Some(r)) if checked.is_some() => match checked {
                Some((cipher, copy)) if copy == r.as_ref() => Some(cipher),
                _ => {
                    return Err(PersistenceError::Corrupt(format!(
                        "{what}: the key record differs from its copy beside the store"
                    ))
                    .into());
                }
            },
            (Some(k), Some(r)) => Some(FieldCipher::unlock(k, &r, &what)?),
            (Some(k), None) => {
                if db.iter().next().is_some() {
                    return Err(wrong_key(&what).into());
                }
                let (cipher, record) = FieldCipher::create(k)?;
                db.insert(keys::key_record(), record)?;
                db.flush()?;
                Some(cipher)
            }
        };
        Ok(Self { db, cipher: cipher.map(Arc::new) })
    }

    /// Whether values are sealed.
    pub(crate) fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }
}

/// The namespaces whose values are in clear: indexes, counters, body
/// reference counts.
fn in_clear(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(
            &(keys::BY_ID
                | keys::USER
                | keys::COMPACTED
                | keys::BY_ROOT
                | keys::ROOTLESS
                | keys::COUNTER
                | keys::BODY_REFS
                | keys::LEDGER)
        )
    )
}

/// The id of a session key (`S` or `X` + session id).
fn sid_of(key: &[u8]) -> Result<String, PersistenceError> {
    String::from_utf8(key.get(1..).unwrap_or_default().to_vec())
        .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))
}

/// A trash record (`X`): when the session was deleted, whether it was
/// root-less, and its session record. Stored as the time (`i64`
/// big-endian), one byte (1: root-less) and the session's `S` value
/// unchanged.
pub(crate) struct Trashed {
    /// When it was deleted.
    pub deleted_ms: i64,
    /// Whether it was root-less.
    pub rootless: bool,
    /// Its session record.
    pub session: StoredSession,
}

fn cut_short(id: &str) -> PersistenceError {
    PersistenceError::Corrupt(format!("the trash record of session {id:?} is cut short"))
}

/// The deletion time of a trash record, read without opening the session.
fn deleted_at(id: &str, v: &[u8]) -> Result<i64, PersistenceError> {
    let at: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| cut_short(id))?;
    Ok(i64::from_be_bytes(at))
}

/// Reads: sealed values come back opened, clear ones as stored.
impl Tree {
    /// Session `sid`'s record.
    pub(crate) fn session(&self, sid: &str) -> Result<Option<StoredSession>> {
        match self.db.get(keys::session(sid))? {
            Some(v) => Ok(Some(self.open_session(sid, &v, &format!("session {sid:?}"))?)),
            None => Ok(None),
        }
    }

    /// Every session, by id; a record that does not open is its `Err`
    /// (the outer `Err` is the read itself failing).
    pub(crate) fn sessions(
        &self,
    ) -> impl Iterator<Item = Result<(String, Result<StoredSession, PersistenceError>)>> + '_ {
        self.db.scan_prefix([keys::SESSION]).map(|kv| {
            let (k, v) = kv?;
            let sid = sid_of(&k)?;
            let s = self.open_session(&sid, &v, &format!("session {sid:?}"));
            Ok((sid, s))
        })
    }

    /// The session records an earlier build wrote (format 1), by id; none
    /// in an encrypted store (only this build writes those).
    pub(crate) fn sessions_v1(&self) -> Result<Vec<(String, StoredSessionV1)>> {
        let mut out = Vec::new();
        if self.encrypted() {
            return Ok(out);
        }
        for kv in self.db.scan_prefix([keys::SESSION]) {
            let (k, v) = kv?;
            let sid = sid_of(&k)?;
            if let Some(old) = decode_session_v1(&v, &format!("session {sid:?}"))? {
                out.push((sid, old));
            }
        }
        Ok(out)
    }

    /// The message under `key` (an `M` or `Y` key).
    pub(crate) fn message(&self, key: &[u8]) -> Result<Option<StoredMessage>> {
        match self.db.get(key)? {
            Some(v) => Ok(Some(self.open_message(key, &v)?)),
            None => Ok(None),
        }
    }

    /// The messages under `prefix` (of `M` or `Y` keys), in key order, with
    /// their keys.
    pub(crate) fn messages(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl DoubleEndedIterator<Item = Result<(IVec, StoredMessage)>> + '_ {
        self.db.scan_prefix(prefix).map(|kv| {
            let (k, v) = kv?;
            let m = self.open_message(&k, &v)?;
            Ok((k, m))
        })
    }

    /// Metadata `key` of session `sid`.
    pub(crate) fn value(&self, sid: &str, key: &str) -> Result<Option<String>> {
        match self.db.get(keys::metadata(sid, key))? {
            Some(v) => Ok(Some(self.open_value(sid, key, &v)?)),
            None => Ok(None),
        }
    }

    /// Session `sid`'s metadata, by key.
    pub(crate) fn values(&self, sid: &str) -> Result<Vec<(String, String)>> {
        let prefix = keys::metadata_of(sid);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let key = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| PersistenceError::Corrupt("a metadata key is not UTF-8".into()))?;
            let value = self.open_value(sid, &key, &v)?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Setting `key`'s value.
    pub(crate) fn setting(&self, key: &str) -> Result<Option<String>> {
        match self.db.get(keys::setting(key))? {
            Some(v) => Ok(Some(self.open_setting(key, &v)?)),
            None => Ok(None),
        }
    }

    /// The packed body at `hash`.
    pub(crate) fn body(&self, hash: &BodyHash) -> Result<Option<Vec<u8>>> {
        match self.db.get(keys::body(hash))? {
            Some(v) => Ok(Some(self.open_body(hash, &v)?.into_owned())),
            None => Ok(None),
        }
    }

    /// Every body: its address (or why the key holds none), the bytes it
    /// takes, and its text checked against the address.
    #[allow(clippy::type_complexity)]
    pub(crate) fn bodies(
        &self,
    ) -> impl Iterator<Item = Result<(Option<BodyHash>, u64, Result<String, PersistenceError>)>> + '_ {
        self.db.scan_prefix([keys::BODY]).map(|kv| {
            let (k, data) = kv?;
            let Ok(hash) = BodyHash::try_from(&k[1..]) else {
                return Ok((None, data.len() as u64, Err(PersistenceError::Corrupt("no address".into()))));
            };
            Ok((Some(hash), data.len() as u64, self.check_body(&hash, &data)))
        })
    }

    /// Whether anything is stored under `key` (keys are in clear).
    pub(crate) fn has(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.db.contains_key(key)?)
    }

    /// The keys under `prefix`, in order (keys are in clear).
    pub(crate) fn keys(&self, prefix: impl AsRef<[u8]>) -> impl DoubleEndedIterator<Item = Result<IVec>> + '_ {
        self.db.scan_prefix(prefix).keys().map(|k| Ok(k?))
    }

    /// The clear value under `key`: an index entry, a counter, a body
    /// reference count.
    pub(crate) fn index(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        debug_assert!(in_clear(key.as_ref()), "index() of a sealed namespace");
        Ok(self.db.get(key)?)
    }

    /// The clear entries under `prefix` (an index namespace).
    pub(crate) fn index_scan(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl DoubleEndedIterator<Item = Result<(IVec, IVec)>> + '_ {
        debug_assert!(in_clear(prefix.as_ref()), "index_scan() of a sealed namespace");
        self.db.scan_prefix(prefix).map(|kv| Ok(kv?))
    }

    /// The clear entries from `start` (inclusive) to `end` (exclusive).
    pub(crate) fn index_range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> impl DoubleEndedIterator<Item = Result<(IVec, IVec)>> + '_ {
        debug_assert!(in_clear(&start), "index_range() of a sealed namespace");
        self.db.range(start..end).map(|kv| Ok(kv?))
    }

    /// Session `sid`'s trash record.
    pub(crate) fn trashed(&self, sid: &str) -> Result<Option<Trashed>> {
        match self.db.get(trash_key(sid))? {
            Some(v) => Ok(Some(self.open_trashed(sid, &v)?)),
            None => Ok(None),
        }
    }

    fn open_trashed(&self, sid: &str, v: &[u8]) -> Result<Trashed, PersistenceError> {
        let deleted_ms = deleted_at(sid, v)?;
        let rootless = *v.get(8).ok_or_else(|| cut_short(sid))? == 1;
        let raw = v.get(9..).ok_or_else(|| cut_short(sid))?;
        Ok(Trashed { deleted_ms, rootless, session: self.open_session(sid, raw, &format!("trashed session {sid:?}"))? })
    }

    /// Every trash record, by session id.
    pub(crate) fn trashed_all(&self) -> impl Iterator<Item = Result<(String, Trashed)>> + '_ {
        self.db.scan_prefix([keys::TRASH_SESSION]).map(|kv| {
            let (k, v) = kv?;
            let sid = sid_of(&k)?;
            let t = self.open_trashed(&sid, &v)?;
            Ok((sid, t))
        })
    }

    /// When each trashed session was deleted, nothing opened.
    pub(crate) fn trashed_times(&self) -> impl Iterator<Item = Result<i64>> + '_ {
        self.db.scan_prefix([keys::TRASH_SESSION]).map(|kv| {
            let (k, v) = kv?;
            Ok(deleted_at(&String::from_utf8_lossy(&k[1..]), &v)?)
        })
    }

    /// A fresh number from sled's monotonic counter.
    pub(crate) fn generate_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// Bytes the directory takes.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Writes everything to disk now.
    pub(crate) fn flush(&self) -> sled::Result<usize> {
        self.db.flush()
    }

    /// Writes `value` under `key` as it is: for tests that write what an
    /// earlier build wrote.
    #[cfg(test)]
    pub(crate) fn put_raw(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.db.insert(key, value)?;
        Ok(())
    }

    /// A new, empty set of writes, sealing as this store does.
    pub(crate) fn writes(&self) -> Writes {
        Writes { tree: self.clone(), batch: Batch::default() }
    }

    /// Applies `writes` atomically.
    pub(crate) fn apply(&self, writes: Writes) -> sled::Result<()> {
        self.db.apply_batch(writes.batch)
    }

    /// Moves the value under `from` to `to` in `w`, bytes unchanged (its
    /// sealing names the row, not the namespace: the trash's moves).
    pub(crate) fn move_value(&self, w: &mut Writes, from: &[u8], to: Vec<u8>) -> Result<()> {
        if let Some(v) = self.db.get(from)? {
            w.batch.remove(from);
            w.batch.insert(to, v);
        }
        Ok(())
    }

    /// Puts session `sid`'s record into the trash in `w`: its `S` value,
    /// unchanged, in a trash record with the deletion time and whether it
    /// was root-less.
    pub(crate) fn trash_session_record(&self, w: &mut Writes, sid: &str, now: i64, rootless: bool) -> Result<()> {
        let Some(raw) = self.db.get(keys::session(sid))? else {
            return Ok(());
        };
        let mut value = now.to_be_bytes().to_vec();
        value.push(u8::from(rootless));
        value.extend_from_slice(&raw);
        w.batch.remove(keys::session(sid));
        w.batch.insert(trash_key(sid), value);
        Ok(())
    }

    /// Takes session `sid`'s record out of the trash in `w`, its `S` value
    /// unchanged.
    pub(crate) fn untrash_session_record(&self, w: &mut Writes, sid: &str) -> Result<()> {
        let Some(v) = self.db.get(trash_key(sid))? else {
            return Ok(());
        };
        let raw = v.get(9..).ok_or_else(|| cut_short(sid))?;
        w.batch.insert(keys::session(sid), raw);
        w.batch.remove(trash_key(sid));
        Ok(())
    }
}

/// A session's trash record key: `X` + session id.
pub(crate) fn trash_key(id: &str) -> Vec<u8> {
    let mut k = keys::session(id);
    k[0] = keys::TRASH_SESSION;
    k
}

/// The writes of one call, applied in one atomic batch ([`Tree::apply`]):
/// values go in sealed, by the door of their kind.
pub(crate) struct Writes {
    tree: Tree,
    batch: Batch,
}

impl Writes {
    /// Session `sid`'s record.
    pub(crate) fn session(&mut self, sid: &str, s: &StoredSession) -> Result<()> {
        self.batch.insert(keys::session(sid), self.tree.seal_session(sid, s)?);
        Ok(())
    }

    /// The message under `key` (an `M` or `Y` key).
    pub(crate) fn message(&mut self, key: impl Into<IVec>, m: &StoredMessage) -> Result<()> {
        let key = key.into();
        let sealed = self.tree.seal_message(&key, m)?;
        self.batch.insert(key, sealed);
        Ok(())
    }

    /// Metadata `key` of session `sid`.
    pub(crate) fn value(&mut self, sid: &str, key: &str, value: &str) -> Result<()> {
        self.batch.insert(keys::metadata(sid, key), self.tree.seal_value(sid, key, value)?);
        Ok(())
    }

    /// Setting `key`'s value.
    pub(crate) fn setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.batch.insert(keys::setting(key), self.tree.seal_setting(key, value)?);
        Ok(())
    }

    /// The body at `hash`, packed as `packed`.
    pub(crate) fn body(&mut self, hash: &BodyHash, packed: Vec<u8>) -> Result<()> {
        self.batch.insert(keys::body(hash), self.tree.seal_body(hash, packed)?);
        Ok(())
    }

    /// A clear value: an index entry, a counter, a body reference count.
    pub(crate) fn index(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        let key = key.into();
        debug_assert!(in_clear(&key), "index() into a sealed namespace");
        self.batch.insert(key, value);
    }

    /// Removes whatever is under `key`.
    pub(crate) fn remove(&mut self, key: impl Into<IVec>) {
        self.batch.remove(key);
    }
}

fn encrypted_without_key(what: &str) -> PersistenceError {
    PersistenceError::PermissionDenied(format!(
        "{what} is encrypted: open it with key_file=PATH (or KODA_STORE_KEY_FILE)"
    ))
}

/// The copy of the store's key state kept beside sled's own files: sled
/// writes to its files as it opens a directory, so a key is checked
/// against this copy first, and a refused open changes no byte. It holds
/// the key record of an encrypted store, or [`PLAIN`] for one written
/// without a key.
const KEY_COPY: &str = "koda-key-record";

/// [`KEY_COPY`]'s content for a store that is not encrypted.
const PLAIN: &[u8] = b"plain";

/// What the copy beside a store says of it.
enum KeyState {
    /// Not encrypted.
    Plain,
    /// Encrypted under this key record.
    Sealed(Vec<u8>),
    /// No copy: a new directory, or one an earlier build wrote.
    Unknown,
}

fn key_state(dir: &Path) -> Result<KeyState, PersistenceError> {
    match std::fs::read(dir.join(KEY_COPY)) {
        Ok(bytes) if bytes == PLAIN => Ok(KeyState::Plain),
        Ok(bytes) => Ok(KeyState::Sealed(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyState::Unknown),
        Err(e) => Err(PersistenceError::Unavailable(format!("reading {}: {e}", dir.join(KEY_COPY).display()))),
    }
}

/// Writes the copy of `db`'s key state beside it (0600, through a
/// temporary file renamed into place, synced).
fn keep_key_state(dir: &Path, db: &Tree) -> Result<()> {
    let content = match db.index(keys::key_record())? {
        Some(record) => record.to_vec(),
        None => PLAIN.to_vec(),
    };
    let temporary = dir.join(format!("{KEY_COPY}.new"));
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    let mut file = file.open(&temporary)?;
    std::io::Write::write_all(&mut file, &content)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(KEY_COPY))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// How long an open waits for the directory's lock when this process
/// closed a handle on it within [`RECENTLY`]: sled releases the lock from
/// its background threads after the last handle is dropped, which on a
/// loaded machine took over 2 s.
const RELOCK_WAIT: Duration = Duration::from_secs(10);

/// How long an open waits for a lock held by someone else (another
/// process, or a handle of this process still open).
const FOREIGN_LOCK_WAIT: Duration = Duration::from_millis(250);

/// What "a moment ago" means for [`RELOCK_WAIT`].
const RECENTLY: Duration = Duration::from_secs(30);

/// Directories this process dropped a sled handle on, and when.
static CLOSED_HERE: std::sync::LazyLock<Mutex<HashMap<PathBuf, std::time::Instant>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

pub(crate) fn closing(path: &Path) {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut closed = CLOSED_HERE.lock().unwrap_or_else(|p| p.into_inner());
    closed.retain(|_, at| at.elapsed() < RECENTLY);
    closed.insert(key, std::time::Instant::now());
}

fn closed_recently(path: &Path) -> bool {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    CLOSED_HERE.lock().unwrap_or_else(|p| p.into_inner()).get(&key).is_some_and(|at| at.elapsed() < RECENTLY)
}

/// Gives every file sled keeps in `dir` mode 0600 and every directory in it
/// 0700, whatever the umask was when sled created them.
#[cfg(unix)]
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700))?;
            make_private(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Opens sled in `path`: creates the directory 0700 when missing, waits up
/// to [`RELOCK_WAIT`] for a lock a handle this process just dropped still
/// holds (else [`FOREIGN_LOCK_WAIT`]), then checks the key of an encrypted
/// store (before anything is written), makes sled's files private and
/// upgrades session records an earlier build wrote.
pub(crate) fn open_db(path: &Path, options: &SledOptions) -> Result<Tree> {
    // The key first: a missing or exposed key file touches nothing.
    let key = match &options.key_file {
        Some(file) => Some(koda_persistence_api::cipher::read_key_file(file)?),
        None => None,
    };
    // Then the key against the copy of the key state beside the store,
    // before sled (which writes as it opens) touches the directory.
    let what = path.display().to_string();
    let state = if path.exists() { key_state(path)? } else { KeyState::Unknown };
    let checked = match (&state, &key) {
        (KeyState::Plain, Some(_)) => return Err(wrong_key(&what).into()),
        (KeyState::Sealed(_), None) => return Err(encrypted_without_key(&what).into()),
        (KeyState::Sealed(record), Some(k)) => Some((FieldCipher::unlock(k, record, &what)?, record.clone())),
        _ => None,
    };
    if !path.exists() {
        koda_persistence_api::backend::create_private_dir(path)
            .map_err(|e| PersistenceError::Unavailable(format!("creating {}: {e}", path.display())))?;
    }
    let flush_ms = match options.flush {
        FlushPolicy::Every(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
        FlushPolicy::EveryWrite | FlushPolicy::Manual => None,
    };
    let started = std::time::Instant::now();
    let db = loop {
        match sled::Config::new().path(path).cache_capacity(options.cache_capacity).flush_every_ms(flush_ms).open() {
            Ok(db) => break db,
            Err(e)
                if is_locked(&e)
                    && (started.elapsed() < FOREIGN_LOCK_WAIT
                        || (started.elapsed() < RELOCK_WAIT && closed_recently(path))) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(storage(e, path)),
        }
    };
    make_private(path).map_err(|e| PersistenceError::Unavailable(format!("making {} private: {e}", path.display())))?;
    let db = Tree::unlock(db, key.as_ref(), path, checked).inspect_err(|_| {
        // The handle is dropped: sled frees the directory's lock from its
        // own threads, so the next open here (the right key) waits for it.
        closing(path);
    })?;
    if matches!(state, KeyState::Unknown) {
        keep_key_state(path, &db)
            .map_err(|e| PersistenceError::Unavailable(format!("keeping the key state of {what}: {e:#}")))?;
    }
    Ok(db)
}
