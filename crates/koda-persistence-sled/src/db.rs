//! The open database: the one handle every call reads and writes through
//! ([`Tree`]), and opening it ([`open_db`]): the directory made private,
//! sled's lock waited for, the key checked before anything is written.
//! What a value looks like sealed is [`crate::cipher`]'s.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::cipher::{FieldCipher, KeyMaterial, wrong_key};
use sled::Db;

use crate::error::{is_locked, storage};
use crate::keys;
use crate::options::{FlushPolicy, SledOptions};

/// The open database, and the cipher of an encrypted store.
#[derive(Clone)]
pub(crate) struct Tree {
    db: Db,
    pub(crate) cipher: Option<Arc<FieldCipher>>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree").field("encrypted", &self.cipher.is_some()).finish()
    }
}

impl Deref for Tree {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
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
    let content = match db.get(keys::key_record())? {
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
