//! Options: flush policy and cache, from a URL or built in code.

use std::path::PathBuf;
use std::time::Duration;

use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::StoreUrl;

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flush (fsync) after every write, before it returns. Nothing that
    /// returned is lost, even on power failure. The default.
    EveryWrite,
    /// sled flushes in the background at this interval; a crash may lose
    /// the writes of the last interval.
    Every(Duration),
    /// Only [`SledStore::flush`](crate::SledStore::flush) (or a clean shutdown) writes to disk.
    Manual,
}

/// How to open a [`SledStore`](crate::SledStore): where, and how it
/// flushes and caches.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The store's directory (created 0700 when missing). The default is
    /// empty, which [`SledOptions::validate`] refuses: use
    /// [`SledOptions::at`].
    pub path: PathBuf,
    /// When writes reach the disk.
    pub flush: FlushPolicy,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// The trash (`keep_deleted_days`, 7 days unless set; `purge_on_open`;
    /// see `koda_persistence_api::trash`).
    pub trash: koda_persistence_api::trash::TrashOptions,
    /// Encrypts every value at rest with the key in this file (URL
    /// `key_file=PATH`, or the environment's `KODA_STORE_KEY_FILE` when
    /// the URL names none): 32 random bytes, or a passphrase line; mode
    /// 0600. See `koda_persistence_api::cipher` and the crate docs for
    /// what stays in clear.
    pub key_file: Option<PathBuf>,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            flush: FlushPolicy::EveryWrite,
            cache_capacity: 256 * 1024 * 1024,
            trash: koda_persistence_api::trash::TrashOptions::default(),
            key_file: None,
        }
    }
}

/// The URL schemes this backend opens (`sled://PATH`).
pub const SCHEMES: &[&str] = &["sled"];

/// The largest page cache a URL may ask for, in MiB (64 GiB).
pub const MAX_CACHE_MB: u64 = 65_536;

impl SledOptions {
    /// Options for the store in directory `path`, every other option at
    /// its default.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    /// Reads `sled://PATH?…`: the path (percent-decoded) and
    /// `flush=every_write|manual` or `flush_every_ms=N` (1 to 3,600,000;
    /// not both), and `cache_mb=N` (1 to [`MAX_CACHE_MB`]), each at most
    /// once; `key_file=PATH` encrypts the store (see
    /// [`SledOptions::key_file`]).
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter and what it accepts, or for an
    /// empty path (an unknown parameter is refused by
    /// [`StoreUrl::finish`]).
    pub fn from_url(url: &StoreUrl) -> Result<Self, PersistenceError> {
        let mut options = SledOptions::at(url.path()?).with_parameters(url)?;
        if options.key_file.is_none()
            && let Some(env) = std::env::var_os("KODA_STORE_KEY_FILE").filter(|v| !v.is_empty())
        {
            options.key_file = Some(PathBuf::from(env));
        }
        options.validate()?;
        Ok(options)
    }

    /// These options with the parameters `url` names (see
    /// [`from_url`](Self::from_url)) taken from it, and the path left
    /// alone: for a tool that puts each store in a directory of its own
    /// choosing (the benchmark) but reads the options from the user's URL.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter and what it accepts.
    pub fn with_parameters(mut self, url: &StoreUrl) -> Result<Self, PersistenceError> {
        match (url.take("flush"), url.take("flush_every_ms")) {
            (Some(_), Some(_)) => {
                return Err(PersistenceError::InvalidInput(
                    "sled URL: give either flush or flush_every_ms, not both".into(),
                ));
            }
            (Some(p), None) => {
                self.flush = match p.one_of(&["every_write", "manual"])? {
                    "manual" => FlushPolicy::Manual,
                    _ => FlushPolicy::EveryWrite,
                }
            }
            (None, Some(p)) => self.flush = FlushPolicy::Every(p.millis()?),
            (None, None) => {}
        }
        if let Some(p) = url.take("cache_mb") {
            self.cache_capacity = p.number(1, MAX_CACHE_MB)? << 20;
        }
        self.trash = self.trash.with_parameters(url)?;
        if let Some(p) = url.take("key_file") {
            self.key_file = Some(PathBuf::from(&p.value));
        }
        Ok(self)
    }

    /// Checks options built in code as a URL's are checked.
    ///
    /// # Errors
    /// `InvalidInput` naming the option and what it accepts.
    pub fn validate(&self) -> Result<(), PersistenceError> {
        if self.path.as_os_str().is_empty() {
            return Err(PersistenceError::InvalidInput(
                "sled needs a directory path, e.g. sled:///var/lib/koda/store".into(),
            ));
        }
        if let FlushPolicy::Every(d) = self.flush {
            koda_persistence_api::backend::url::check_timeout("flush interval", d)?;
        }
        if self.cache_capacity == 0 || self.cache_capacity > MAX_CACHE_MB << 20 {
            return Err(PersistenceError::InvalidInput(format!(
                "cache_capacity must be from 1 byte to {MAX_CACHE_MB} MiB, got {}",
                self.cache_capacity
            )));
        }
        self.trash.validate()
    }
}

#[cfg(test)]
#[allow(clippy::panic)] // test code: a failed parse is a failed test
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<SledOptions, PersistenceError> {
        koda_persistence_api::backend::options_of::<crate::Sled>(&format!("sled://{spec}"))
    }

    fn parsed(spec: &str) -> (PathBuf, FlushPolicy, u64) {
        let o = parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        (o.path, o.flush, o.cache_capacity)
    }

    /// Each parameter sets what it names; the path is percent-decoded.
    #[test]
    fn every_parameter_sets_its_option() {
        let default_cache = SledOptions::default().cache_capacity;
        assert_eq!(parsed("/var/k%20s"), (PathBuf::from("/var/k s"), FlushPolicy::EveryWrite, default_cache));
        assert_eq!(parsed("d?flush=manual").1, FlushPolicy::Manual);
        assert_eq!(parsed("d?flush=every_write").1, FlushPolicy::EveryWrite);
        assert_eq!(parsed("d?flush_every_ms=250").1, FlushPolicy::Every(Duration::from_millis(250)));
        assert_eq!(parsed("d?cache_mb=3").2, 3 << 20);
        assert_eq!(parsed("d?cache_mb=3&flush=manual"), (PathBuf::from("d"), FlushPolicy::Manual, 3 << 20));
    }

    /// Options built in code are checked as a URL's are.
    #[test]
    fn validate_checks_options_built_in_code() {
        let ok = SledOptions::at("d");
        assert!(ok.validate().is_ok());
        let largest = SledOptions {
            cache_capacity: MAX_CACHE_MB << 20,
            flush: FlushPolicy::Every(Duration::from_millis(1)),
            ..SledOptions::at("d")
        };
        assert!(largest.validate().is_ok());
        for bad in [
            SledOptions::default(),
            SledOptions { cache_capacity: 0, ..SledOptions::at("d") },
            SledOptions { cache_capacity: (MAX_CACHE_MB << 20) + 1, ..SledOptions::at("d") },
            SledOptions { flush: FlushPolicy::Every(Duration::ZERO), ..SledOptions::at("d") },
        ] {
            assert!(matches!(bad.validate(), Err(PersistenceError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn bad_parameters_are_invalid_input() {
        for spec in [
            "",
            "d?flush=sometimes",
            "d?flush=manual&flush_every_ms=5",
            "d?flush_every_ms=0",
            "d?cache_mb=0",
            "d?cache_mb=65537",
            "d?colour=blue",
        ] {
            assert!(matches!(parse(spec), Err(PersistenceError::InvalidInput(_))), "{spec}");
        }
    }
}
