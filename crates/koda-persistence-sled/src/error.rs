//! sled failures as the contract's typed errors.

use std::path::Path;

use koda_persistence_api::PersistenceError;

pub(crate) fn storage(e: sled::Error, path: &Path) -> anyhow::Error {
    let place = path.display();
    match e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            PersistenceError::Unavailable(format!("{place} is in use by another process ({io})"))
                .into()
        }
        sled::Error::Io(io) => PersistenceError::Unavailable(format!("{place}: {io}")).into(),
        sled::Error::Corruption { at, bt: _ } => {
            PersistenceError::Corrupt(format!("{place} is corrupt (at {at:?})")).into()
        }
        other => anyhow::anyhow!("sled backend ({place}): {other}"),
    }
}

pub(crate) fn not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

pub(crate) fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}
