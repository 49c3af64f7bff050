//! Whole-file encryption at rest (feature `sqlcipher`): the key file, and
//! keying every connection before it reads a page.
//!
//! A key file is private to its owner (no group or other permission bits)
//! and holds either exactly 32 bytes (a raw 256-bit key) or a passphrase
//! (its first line; SQLCipher derives the key with PBKDF2). The key never
//! appears in a URL, an error, a log line or `Debug` output.

use std::fmt;
use std::path::Path;

use koda_persistence_api::PersistenceError;
use koda_persistence_api::cipher::KeyMaterial;
use rusqlite::Connection;

/// A store key: what `PRAGMA key` is given.
#[derive(Clone)]
pub(crate) struct Key(pub(crate) String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The refusal every wrong, missing or misplaced key gets.
pub(crate) fn wrong_key(path: &Path) -> PersistenceError {
    koda_persistence_api::cipher::wrong_key(&path.display().to_string())
}

/// Reads the key file at `path`.
///
/// # Errors
/// `PermissionDenied` (naming the mend) for a missing or unreadable file
/// or one that others may read; `InvalidInput` for an empty one, or when
/// this build lacks the `sqlcipher` feature.
pub(crate) fn read_key(path: &Path) -> Result<Key, PersistenceError> {
    if !cfg!(feature = "sqlcipher") {
        return Err(PersistenceError::InvalidInput(
            "key_file needs a build with encryption: enable the cargo feature `sqlcipher` \
             (koda-persistence = { features = [\"sqlcipher\"] })"
                .into(),
        ));
    }
    Ok(Key(match koda_persistence_api::cipher::read_key_file(path)? {
        KeyMaterial::Raw(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
            format!("x'{hex}'")
        }
        KeyMaterial::Passphrase(line) => line,
    }))
}

/// Keys `conn` (before it reads anything). SQLCipher's own log (a failed
/// page check, a wrong key) stays off stderr: the errors say it.
pub(crate) fn apply(conn: &Connection, key: &Key) -> rusqlite::Result<()> {
    conn.pragma_update(None, "key", &key.0)?;
    // Older SQLCipher builds lack the pragma: nothing to turn off there.
    let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE");
    Ok(())
}

/// How many schema objects the file holds: reading them proves the file
/// is a database and the key (when `keyed`) its key. "Not a database" on
/// a keyed connection, or on a file that looks encrypted, is
/// [`wrong_key`].
pub(crate) fn schema_objects(conn: &Connection, path: &Path, keyed: bool) -> anyhow::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0)).map_err(|e| {
        let not_a_database = e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase);
        if not_a_database && (keyed || looks_encrypted(path)) {
            anyhow::Error::new(e).context(wrong_key(path))
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// Whether the file at `path` looks like an encrypted store: not SQLite's
/// plain header, and a whole number of pages. (An encrypted file's first
/// bytes are its random salt.)
pub(crate) fn looks_encrypted(path: &Path) -> bool {
    use std::io::Read as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.len() < 1024 || meta.len() % 512 != 0 {
        return false;
    }
    let mut head = [0u8; 16];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => &head != b"SQLite format 3\0",
        Err(_) => false,
    }
}
