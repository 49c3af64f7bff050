//! What the cipher area ([`crate::cases::cipher`]) needs of a backend that
//! encrypts at rest, beyond its trait calls: stores of its own at named
//! locations, opened with a given key file (or none), the bytes each keeps
//! at rest, and a stored value changed or moved where it lies. A backend
//! implements [`AtRest`] in its `tests/` (it is I/O on the backend's own
//! files) and hands it to the suite with [`Fixture::with_at_rest`](crate::Fixture::with_at_rest).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::Store;

/// A change made behind the store's back, to a stored value.
#[derive(Debug, Clone, Copy)]
pub enum Tamper<'a> {
    /// One byte of the stored form of `session`'s first message changed
    /// (a whole-file backend: bytes of every page but the first).
    Flip {
        /// The session whose message is changed.
        session: &'a str,
    },
    /// The stored value of `from`'s first message put in place of `to`'s
    /// first message, unchanged.
    Move {
        /// The session the value is taken from.
        from: &'a str,
        /// The session whose message it replaces.
        to: &'a str,
    },
}

/// A backend's stores at rest, for the cipher area.
#[async_trait::async_trait]
pub trait AtRest: Send + Sync {
    /// A directory for key files, private to this kit.
    fn key_dir(&self) -> &Path;

    /// Opens the store at location `name` (created when new) with the key
    /// file `key` (`None`: none; the environment's `KODA_STORE_KEY_FILE`
    /// is not read). Each `name` is a location of its own.
    ///
    /// # Errors
    /// The open's.
    async fn open(&self, name: &str, key: Option<&Path>) -> Result<Arc<dyn Store>>;

    /// Every file the store at `name` keeps, with its bytes, by path, once
    /// whatever a dropped handle still held is released.
    ///
    /// # Errors
    /// When a file cannot be read.
    async fn files(&self, name: &str) -> Result<Vec<(PathBuf, Vec<u8>)>>;

    /// Whether anything was created at `name`.
    fn created(&self, name: &str) -> bool;

    /// Applies `tamper` to the (closed) store at `name`; `false` when the
    /// backend has no such value to change (a whole-file cipher binds
    /// pages to their place, not values to rows: nothing to move).
    ///
    /// # Errors
    /// When the raw store cannot be read or written.
    async fn tamper(&self, name: &str, tamper: Tamper<'_>) -> Result<bool>;
}

/// Every file under `dir` with its bytes, sorted by path (empty when `dir`
/// does not exist).
///
/// # Errors
/// When a directory or file cannot be read.
pub fn files_under(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    out.sort();
    Ok(out)
}

/// A temporary directory for an [`AtRest`] kit: stores at named places in
/// it, and a `keys` directory ([`AtRest::key_dir`]) beside them.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    keys: std::path::PathBuf,
}

impl Scratch {
    /// A new temporary directory with an empty `keys` directory in it.
    ///
    /// # Errors
    /// The directories cannot be made.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys)?;
        Ok(Self { dir, keys })
    }

    /// The place called `name`.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The `keys` directory.
    pub fn keys(&self) -> &std::path::Path {
        &self.keys
    }
}
