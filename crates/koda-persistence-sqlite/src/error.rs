//! Driver errors as the contract's typed errors.

use koda_persistence_api::PersistenceError;
use rusqlite::ErrorCode;

use crate::options::Location;

/// Maps a rusqlite failure to the contract's typed errors where one fits.
/// The typed error is wrapped around the driver's, which stays in the chain
/// as its source.
pub(crate) fn classify(e: anyhow::Error, location: &Location) -> anyhow::Error {
    if PersistenceError::of(&e).is_some() {
        return e;
    }
    let place = match location {
        Location::File(p) => p.display().to_string(),
        Location::Memory => "in-memory database".to_owned(),
    };
    let typed = e.chain().find_map(|c| match c.downcast_ref::<rusqlite::Error>()? {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let detail = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                    Some(PersistenceError::Corrupt(format!("{place} is not a usable SQLite database: {detail}")))
                }
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    Some(PersistenceError::Unavailable(format!("{place} is locked: {detail}")))
                }
                ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::PermissionDenied
                | ErrorCode::FileLockingProtocolFailed => {
                    Some(PersistenceError::Unavailable(format!("{place}: {detail}")))
                }
                _ => None,
            }
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            Some(PersistenceError::Corrupt(format!("{place}: a stored value cannot be decoded: {c}")))
        }
        _ => None,
    });
    match typed {
        Some(t) => e.context(t),
        None => e.context(format!("sqlite backend ({place})")),
    }
}

/// Whether `e` (anywhere in its chain) is SQLite's busy or locked.
pub(crate) fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    })
}
