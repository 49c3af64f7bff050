//! Options: how a store opens, from a URL or built in code.

use std::path::PathBuf;
use std::time::Duration;

use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::StoreUrl;

/// SQLite's `synchronous` setting: what a power failure can cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// WAL is synced at checkpoints only: a process crash loses nothing that
    /// returned; a power failure or OS crash may roll back the most recent
    /// transactions (the file stays consistent). The default.
    #[default]
    Normal,
    /// Every commit is synced: nothing that returned is lost, even on power
    /// failure. Slower writes.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open a [`SqliteStore`](crate::SqliteStore).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Where the database lives (the default is a private in-memory one;
    /// see [`SqliteOptions::file`]).
    pub location: Location,
    /// Durability of each commit (see [`Synchronous`]).
    pub synchronous: Synchronous,
    /// How long a write waits for another process's lock before
    /// `Unavailable` (1 ms to 1 hour).
    pub busy_timeout: Duration,
    /// Reader threads (and connections), from 1 to [`MAX_READERS`]. Ignored
    /// in memory.
    pub readers: usize,
    /// Create the file (and missing directories) if it does not exist.
    pub create: bool,
    /// Store large outputs once (`blobs=on`) or inline (`blobs=off`); the
    /// choice is recorded in the file for later opens. `None` keeps what
    /// the file records: on for a file this layer created, off for a file
    /// an older koda may still read (it reads `messages.content` itself
    /// and would see NULL where a body is).
    pub blobs: Option<bool>,
    /// The trash (`keep_deleted_days`, `purge_on_open`; see
    /// `koda_persistence_api::trash`). The grace period defaults to 7 days
    /// on a file this layer created and to 0 on a file adopted from an
    /// older koda (a delete there removes the rows at once, as that koda
    /// expects).
    pub trash: koda_persistence_api::trash::TrashOptions,
    /// Encrypt the whole file with the key this file holds (feature
    /// `sqlcipher`; URL `key_file=PATH`, or the environment's
    /// `KODA_STORE_KEY_FILE` when the URL names none). The file must be
    /// private to its owner (mode 0600) and hold 32 random bytes or a
    /// passphrase line. `None`: a plain file.
    pub key_file: Option<PathBuf>,
}

impl SqliteOptions {
    /// Checks options built in code as a URL's are checked.
    ///
    /// # Errors
    /// `InvalidInput` naming the option and what it accepts.
    pub fn validate(&self) -> Result<(), PersistenceError> {
        koda_persistence_api::backend::url::check_timeout("busy_timeout", self.busy_timeout)?;
        koda_persistence_api::backend::url::check_count("readers", self.readers, 1, MAX_READERS)?;
        if self.key_file.is_some() && self.location == Location::Memory {
            return Err(PersistenceError::InvalidInput(
                "key_file encrypts a file: an in-memory database has none".into(),
            ));
        }
        self.trash.validate()
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            location: Location::Memory,
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            readers: 2,
            create: true,
            blobs: None,
            trash: koda_persistence_api::trash::TrashOptions::default(),
            key_file: None,
        }
    }
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file on disk.
    File(PathBuf),
    /// A private in-memory database (one connection; gone when dropped).
    Memory,
}

/// The URL schemes this backend opens (`sqlite://PATH`, `sqlite::memory:`).
pub const SCHEMES: &[&str] = &["sqlite"];

/// Reader threads a store may run: `readers` is from 1 to this.
pub const MAX_READERS: usize = 64;

impl SqliteOptions {
    /// Options for the database file at `path`, with every other option at
    /// its default.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { location: Location::File(path.into()), ..Self::default() }
    }

    /// Reads `sqlite://PATH?k=v&…` (or `sqlite:PATH`, `sqlite::memory:`).
    /// Parameters (percent-decoded, each at most once):
    /// `synchronous=normal|full`, `busy_timeout_ms=N` (1 to 3,600,000),
    /// `readers=N` (1 to [`MAX_READERS`]), `create=true|false`,
    /// `blobs=on|off` (see [`SqliteOptions::blobs`]; each boolean takes any
    /// of the URL grammar's spellings). The path is percent-decoded too (`%20`
    /// is a space, `%3F` a `?`). SQLite's own `file:` URIs are refused: a
    /// path is a plain path.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter and what it accepts, for a bad
    /// value, an empty path or a `file:` URI (an unknown parameter is
    /// refused by [`StoreUrl::finish`]).
    pub fn from_url(url: &StoreUrl) -> Result<Self, PersistenceError> {
        let path = url.path()?;
        let mut options = SqliteOptions::default().with_parameters(url)?;
        if path.starts_with("file:") {
            return Err(PersistenceError::InvalidInput(format!(
                "SQLite file: URIs are not supported ({path:?}): write the path itself, \
                 e.g. sqlite:///abs/path.db, with options as URL parameters \
                 (synchronous, busy_timeout_ms, readers, create, blobs)"
            )));
        }
        options.location = match path.as_str() {
            ":memory:" => Location::Memory,
            "" => {
                return Err(PersistenceError::InvalidInput(
                    "sqlite URL needs a path: sqlite:///abs/path.db, sqlite://rel/path.db or sqlite::memory:".into(),
                ));
            }
            p => Location::File(PathBuf::from(p)),
        };
        if options.key_file.is_none()
            && options.location != Location::Memory
            && let Some(env) = std::env::var_os("KODA_STORE_KEY_FILE").filter(|v| !v.is_empty())
        {
            options.key_file = Some(PathBuf::from(env));
        }
        Ok(options)
    }

    /// These options with the parameters `url` names (see
    /// [`from_url`](Self::from_url)) taken from it, and its location left
    /// alone: for a tool that puts each store in a file of its own choosing
    /// (the benchmark) but reads the options from the user's URL.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter and what it accepts.
    pub fn with_parameters(mut self, url: &StoreUrl) -> Result<Self, PersistenceError> {
        if let Some(p) = url.take("synchronous") {
            self.synchronous = match p.one_of(&["normal", "full"])? {
                "full" => Synchronous::Full,
                _ => Synchronous::Normal,
            }
        }
        if let Some(p) = url.take("busy_timeout_ms") {
            self.busy_timeout = p.millis()?;
        }
        if let Some(p) = url.take("readers") {
            self.readers = p.count(1, MAX_READERS)?;
        }
        if let Some(p) = url.take("create") {
            self.create = p.boolean()?;
        }
        if let Some(p) = url.take("blobs") {
            self.blobs = Some(p.boolean()?);
        }
        self.trash = self.trash.with_parameters(url)?;
        if let Some(p) = url.take("key_file") {
            self.key_file = Some(PathBuf::from(&p.value));
        }
        Ok(self)
    }
}
