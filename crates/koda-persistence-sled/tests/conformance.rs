//! The whole conformance suite against `SledStore`, each case in its own
//! temp directory: once as it is, once encrypted (`key_file=`), with the
//! raw directory access the cipher area needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use koda_persistence_api::backend::open_checked;
use koda_persistence_api::{ManualClock, Store};
use koda_persistence_conformance::at_rest::{AtRest, Scratch, Tamper, files_under};
use koda_persistence_conformance::{Factory, Fixture};
use koda_persistence_sled::{Sled, SledOptions};

/// sled directories at named places under one temp directory.
struct Directories(Scratch);

impl Directories {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(Scratch::new()?))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }
}

/// Waits until no handle holds sled's lock on `dir` (a dropped store's
/// threads release it late), taking the lock as sled does, without
/// opening (so writing) anything.
async fn released(dir: &Path) -> anyhow::Result<()> {
    let db = dir.join("db");
    if !db.exists() {
        return Ok(());
    }
    for _ in 0..800 {
        let file = std::fs::File::open(&db)?;
        if file.try_lock().is_ok() {
            return Ok(());
        }
        drop(file);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("sled's lock on {} was never released", dir.display())
}

/// The raw `M` (message) entry of `session` with the lowest key.
fn first_message(db: &sled::Db, session: &str) -> anyhow::Result<(sled::IVec, sled::IVec)> {
    for kv in db.scan_prefix(b"M") {
        let (k, v) = kv?;
        if k.windows(session.len()).any(|w| w == session.as_bytes()) {
            return Ok((k, v));
        }
    }
    anyhow::bail!("no message of {session} in the raw store")
}

#[async_trait::async_trait]
impl AtRest for Directories {
    fn key_dir(&self) -> &Path {
        self.0.keys()
    }

    async fn open(&self, name: &str, key: Option<&Path>) -> anyhow::Result<Arc<dyn Store>> {
        let mut options = SledOptions::at(self.path(name));
        options.key_file = key.map(Path::to_owned);
        let clock = ManualClock::new(koda_persistence_conformance::START_MS);
        Ok(Arc::new(open_checked::<Sled>(options, Arc::new(clock)).await?))
    }

    async fn files(&self, name: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
        released(&self.path(name)).await?;
        files_under(&self.path(name))
    }

    fn created(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    async fn tamper(&self, name: &str, tamper: Tamper<'_>) -> anyhow::Result<bool> {
        released(&self.path(name)).await?;
        let db = sled::open(self.path(name))?;
        match tamper {
            Tamper::Flip { session } => {
                let (k, v) = first_message(&db, session)?;
                let mut changed = v.to_vec();
                if let Some(last) = changed.last_mut() {
                    *last ^= 0x01;
                }
                db.insert(k, changed)?;
            }
            Tamper::Move { from, to } => {
                let (_, value) = first_message(&db, from)?;
                let (k, _) = first_message(&db, to)?;
                db.insert(k, value)?;
            }
        }
        db.flush()?;
        Ok(true)
    }
}

/// A store in a fresh temp directory, encrypted when `encrypted`.
struct TempDir {
    encrypted: bool,
}

/// Options for a store in `dir`; with a raw key file there when
/// `encrypted` (no passphrase derivation on each of the many opens).
fn options(dir: &std::path::Path, encrypted: bool) -> anyhow::Result<SledOptions> {
    let mut options = SledOptions::at(dir.join("store"));
    if encrypted {
        let key = [0xa5u8; 32];
        options.key_file = Some(koda_persistence_conformance::secrets::key_file(dir, "store.key", &key, 0o600)?);
    }
    Ok(options)
}

#[async_trait::async_trait]
impl Factory for TempDir {
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start_ms);
        let store = open_checked::<Sled>(options(dir.path(), self.encrypted)?, Arc::new(clock.clone())).await?;
        let encrypted = self.encrypted;
        Ok(Fixture::new(Arc::new(store), clock)
            .with_guard(dir)
            .with_at_rest(Arc::new(Directories::new()?))
            .with_grace_opener(move |days| async move {
                let dir = tempfile::tempdir()?;
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let mut options = options(dir.path(), encrypted)?;
                options.trash.keep_deleted_days = Some(days);
                let store = open_checked::<Sled>(options, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock).with_guard(dir))
            }))
    }
}

koda_persistence_conformance::conformance_tests!(TempDir { encrypted: false });

/// The whole suite and the state machine on a field-encrypted store.
mod encrypted {
    use super::*;
    koda_persistence_conformance::conformance_tests!(TempDir { encrypted: true });
}
