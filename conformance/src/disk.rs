//! A full disk, for backends that keep files: the store fills a small
//! tmpfs until a write fails, and then (1) the failed write left nothing
//! visible, (2) once space is freed, writes succeed again on the same
//! handle without a reopen, and (3) after a reopen every acknowledged write
//! is there.
//!
//! Mounting needs root; where it is refused the scenario prints
//! `SKIPPED <name>: <reason>` and returns `Ok`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use koda_persistence_api::{Persistence, PersistenceError, Role};

/// A tmpfs of `size_mb` MiB mounted on a fresh temp directory; unmounted
/// when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it, or says why it cannot.
    ///
    /// # Errors
    /// When `mount` is missing or refused (not root, no privilege).
    pub fn mount(size_mb: u32) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!("mount -t tmpfs refused: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn is_unavailable(e: &anyhow::Error) -> bool {
    matches!(PersistenceError::of(e), Some(PersistenceError::Unavailable(_)))
}

/// Runs the scenario on a store that `open(dir)` opens inside a small
/// tmpfs (`size_mb` MiB). Prints what it saw.
///
/// # Errors
/// The first broken rule.
pub async fn full_disk_then_recover<F, Fut>(name: &str, size_mb: u32, open: F) -> Result<()>
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Persistence>>>,
{
    let disk = match SmallDisk::mount(size_mb) {
        Ok(d) => d,
        Err(why) => {
            crate::say_skipped(name, &format!("{why:#}"));
            return Ok(());
        }
    };
    // Freed once the disk is full: a quarter of the disk (at least 1 MiB),
    // room for the writes after recovery and for a reopen (sled's open
    // allocates a log segment; with 1 MiB of 8 it hit ENOSPC now and then).
    let ballast = disk.path().join("ballast");
    let ballast_mb = (size_mb / 4).max(1) as usize;
    std::fs::write(&ballast, vec![7u8; ballast_mb << 20]).context("writing the ballast")?;
    let home = disk.path().join("store");
    let store = open(home.clone()).await.context("opening on the tmpfs")?;
    let sid = store.create_session("main", Path::new("/p")).await?;
    let mut acked = Vec::new();
    let mut todo = None;
    let mut failure = None;
    for i in 0..100_000u64 {
        let text = format!("{i} {}", crate::cases::incompressible(8_000, i));
        match store.insert_message(&sid, &Role::User, Some(&text), None, None, None).await {
            Ok(id) => acked.push(id),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if i % 10 == 9 {
            match store.set_todo(&sid, &format!("todo {i}")).await {
                Ok(()) => todo = Some(format!("todo {i}")),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    let failure = failure.context("the disk never filled")?;
    ensure!(is_unavailable(&failure), "a write on a full disk failed with {failure:#}, not Unavailable");
    // (1) Nothing of the failed write is visible, full disk or not. A read
    // may itself be Unavailable while the disk is full; whatever it
    // returns must be exact.
    match store.load_all_messages(&sid).await {
        Ok(all) => ensure!(
            all.iter().map(|m| m.id).collect::<Vec<_>>() == acked,
            "on a full disk the store shows {} messages against {} acknowledged",
            all.len(),
            acked.len()
        ),
        Err(e) => ensure!(is_unavailable(&e), "a read on a full disk: {e:#}"),
    }
    match store.get_todo(&sid).await {
        Ok(t) => ensure!(t == todo, "todo {t:?} against acknowledged {todo:?}"),
        Err(e) => ensure!(is_unavailable(&e), "a read on a full disk: {e:#}"),
    }
    // (2) Space comes back: the same handle writes again.
    std::fs::remove_file(&ballast).context("freeing space")?;
    for i in 0..5 {
        let id = store
            .insert_message(&sid, &Role::User, Some(&format!("after {i}")), None, None, None)
            .await
            .context("a write once space was freed, without a reopen")?;
        acked.push(id);
    }
    store.set_todo(&sid, "after").await?;
    let all = store.load_all_messages(&sid).await?;
    ensure!(
        all.iter().map(|m| m.id).collect::<Vec<_>>() == acked,
        "after recovery the store shows {} messages against {} acknowledged",
        all.len(),
        acked.len()
    );
    // (3) And a reopen finds exactly what was acknowledged.
    drop(store);
    let store = open(home).await.context("reopening")?;
    let all = store.load_all_messages(&sid).await?;
    ensure!(
        all.iter().map(|m| m.id).collect::<Vec<_>>() == acked,
        "after a reopen the store holds {} messages against {} acknowledged",
        all.len(),
        acked.len()
    );
    ensure!(store.get_todo(&sid).await?.as_deref() == Some("after"), "todo after reopen");
    let listed = store.list_sessions(1, Path::new("/p")).await?;
    ensure!(
        listed.first().map(|s| s.message_count) == Some(i64::try_from(acked.len())?),
        "the session counter disagrees with the rows"
    );
    println!("    {name}: {} writes acknowledged before the disk filled ({failure}); recovered", acked.len() - 5);
    drop(store);
    drop(disk);
    Ok(())
}
