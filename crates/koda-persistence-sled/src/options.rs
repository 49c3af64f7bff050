//! Options: flush policy and cache, from a URL or built in code.

use std::path::PathBuf;
use std::time::Duration;

use koda_persistence_api::PersistenceError;

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

/// How to open a [`SledStore`](crate::SledStore).
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// When writes reach the disk.
    pub flush: FlushPolicy,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            flush: FlushPolicy::EveryWrite,
            cache_capacity: 256 * 1024 * 1024,
        }
    }
}

/// The URL schemes this backend opens (`sled://PATH`).
pub const SCHEMES: &[&str] = &["sled"];

/// The largest page cache a URL may ask for, in MiB (64 GiB).
pub const MAX_CACHE_MB: u64 = 65_536;

const PARAMETERS: [&str; 3] = ["flush", "flush_every_ms", "cache_mb"];

/// Splits `PATH?flush=every_write|manual`, `?flush_every_ms=N` (1 to
/// 3,600,000) and `?cache_mb=N` (1 to [`MAX_CACHE_MB`]). The path and the
/// parameters are percent-decoded; each parameter may appear once.
///
/// # Errors
/// `InvalidInput` naming the parameter and what it accepts, for an unknown
/// parameter or value, or an empty path.
pub fn parse_location(spec: &str) -> Result<(PathBuf, SledOptions), PersistenceError> {
    let (path, params) = koda_persistence_api::backend::url::split_query(spec)?;
    let path = koda_persistence_api::backend::url::decode(path)?;
    if path.is_empty() {
        return Err(PersistenceError::InvalidInput(
            "sled needs a directory path, e.g. sled:///var/lib/koda/store".into(),
        ));
    }
    let mut options = SledOptions::default();
    let mut flush_given = false;
    for p in &params {
        match p.key.as_str() {
            "flush" | "flush_every_ms" if flush_given => {
                return Err(PersistenceError::InvalidInput(
                    "sled URL: give either flush or flush_every_ms, not both".into(),
                ));
            }
            "flush" => {
                flush_given = true;
                options.flush = match p.one_of(&["every_write", "manual"])? {
                    "manual" => FlushPolicy::Manual,
                    _ => FlushPolicy::EveryWrite,
                }
            }
            "flush_every_ms" => {
                flush_given = true;
                options.flush = FlushPolicy::Every(p.millis()?);
            }
            "cache_mb" => options.cache_capacity = p.number(1, MAX_CACHE_MB)? << 20,
            _ => return Err(p.unknown("sled", &PARAMETERS)),
        }
    }
    Ok((PathBuf::from(path), options))
}

impl SledOptions {
    /// Checks options built in code as a URL's are checked.
    ///
    /// # Errors
    /// `InvalidInput` naming the option and what it accepts.
    pub fn validate(&self) -> Result<(), PersistenceError> {
        if let FlushPolicy::Every(d) = self.flush {
            koda_persistence_api::backend::url::check_timeout("flush interval", d)?;
        }
        if self.cache_capacity == 0 || self.cache_capacity > MAX_CACHE_MB << 20 {
            return Err(PersistenceError::InvalidInput(format!(
                "cache_capacity must be from 1 byte to {MAX_CACHE_MB} MiB, got {}",
                self.cache_capacity
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::panic)] // test code: a failed parse is a failed test
mod tests {
    use super::*;

    fn parsed(spec: &str) -> (PathBuf, FlushPolicy, u64) {
        let (path, o) = parse_location(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        (path, o.flush, o.cache_capacity)
    }

    /// Each parameter sets what it names; the path is percent-decoded.
    #[test]
    fn every_parameter_sets_its_option() {
        let default_cache = SledOptions::default().cache_capacity;
        assert_eq!(
            parsed("/var/k%20s"),
            (
                PathBuf::from("/var/k s"),
                FlushPolicy::EveryWrite,
                default_cache
            )
        );
        assert_eq!(parsed("d?flush=manual").1, FlushPolicy::Manual);
        assert_eq!(parsed("d?flush=every_write").1, FlushPolicy::EveryWrite);
        assert_eq!(
            parsed("d?flush_every_ms=250").1,
            FlushPolicy::Every(Duration::from_millis(250))
        );
        assert_eq!(parsed("d?cache_mb=3").2, 3 << 20);
        assert_eq!(
            parsed("d?cache_mb=3&flush=manual"),
            (PathBuf::from("d"), FlushPolicy::Manual, 3 << 20)
        );
    }

    /// Options built in code are checked as a URL's are.
    #[test]
    fn validate_checks_options_built_in_code() {
        let ok = SledOptions::default();
        assert!(ok.validate().is_ok());
        let largest = SledOptions {
            cache_capacity: MAX_CACHE_MB << 20,
            flush: FlushPolicy::Every(Duration::from_millis(1)),
        };
        assert!(largest.validate().is_ok());
        for bad in [
            SledOptions {
                cache_capacity: 0,
                ..SledOptions::default()
            },
            SledOptions {
                cache_capacity: (MAX_CACHE_MB << 20) + 1,
                ..SledOptions::default()
            },
            SledOptions {
                flush: FlushPolicy::Every(Duration::ZERO),
                ..SledOptions::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(PersistenceError::InvalidInput(_))),
                "{bad:?}"
            );
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
            assert!(
                matches!(parse_location(spec), Err(PersistenceError::InvalidInput(_))),
                "{spec}"
            );
        }
    }
}
