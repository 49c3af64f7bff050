//! sled failures as the contract's typed errors.

use std::path::Path;

use koda_persistence_api::PersistenceError;

/// A sled failure as the contract's typed error where one fits, wrapped
/// around the sled error, which stays in the chain as its source.
pub(crate) fn storage(e: sled::Error, path: &Path) -> anyhow::Error {
    let place = path.display();
    let typed = match &e {
        sled::Error::Io(io) if is_locked(&e) => {
            Some(PersistenceError::Unavailable(format!("{place} is in use by another process ({io})")))
        }
        sled::Error::Io(io) => Some(PersistenceError::Unavailable(format!("{place}: {io}"))),
        sled::Error::Corruption { at, bt: _ } => {
            Some(PersistenceError::Corrupt(format!("{place} is corrupt (at {at:?})")))
        }
        _ => None,
    };
    match typed {
        Some(t) => anyhow::Error::new(e).context(t),
        None => anyhow::Error::new(e).context(format!("sled backend ({place})")),
    }
}

/// Whether sled failed to take the directory's lock. sled 0.34 (its last
/// release) reports that as an `ErrorKind::Other` error whose text starts
/// with "could not acquire lock", not as `WouldBlock`.
pub(crate) fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().starts_with("could not acquire lock"))
}
