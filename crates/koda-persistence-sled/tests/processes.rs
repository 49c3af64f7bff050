//! sled in separate processes: a writer killed with SIGKILL mid-stream 20
//! times leaves a store that opens and holds every acknowledged insert (the
//! default flush policy flushes before each write returns); a directory in
//! use by another process is `Unavailable`.
//!
//! This binary has its own `main`: run with `child …` it acts as the writer.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use koda_persistence_api::{Persistence, PersistenceError, Role, SystemClock};
use koda_persistence_conformance::process;
use koda_persistence_sled::{SledOptions, SledStore};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn open(path: &Path) -> Result<SledStore> {
    SledStore::open(SledOptions::at(path), Arc::new(SystemClock)).await
}

/// `child stream PATH SESSION`: inserts until killed, printing each id.
/// `child hold PATH`: opens the store, says `open`, and waits to be killed.
fn child(args: &[String]) -> Result<()> {
    if let Some(done) = process::shared_child(opener, args) {
        return done;
    }
    let rt = runtime()?;
    rt.block_on(async {
        match args {
            [mode, path] if mode == "make" => {
                let store = open(Path::new(path)).await?;
                let sid = store.create_session("main", Path::new("/p")).await?;
                for i in 0..200 {
                    store.insert_message(&sid, &Role::User, Some(&"s".repeat(i * 50)), None, None, None).await?;
                }
                store.flush().await?;
                Ok(())
            }
            [mode, path] if mode == "hold" => {
                let _store = open(Path::new(path)).await?;
                println!("open");
                std::io::stdout().flush()?;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
            other => bail!("unknown child arguments {other:?}"),
        }
    })
}

fn spawn_child(args: &[&str]) -> Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn a_directory_in_use_is_unavailable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let p = path.to_string_lossy().to_string();
    let mut holder = spawn_child(&["hold", &p])?;
    let mut lines = BufReader::new(holder.stdout.take().context("stdout")?).lines();
    ensure!(lines.next().transpose()?.as_deref() == Some("open"), "holder did not open the store");
    let rt = runtime()?;
    let started = std::time::Instant::now();
    let outcome = rt.block_on(open(&path));
    let waited = started.elapsed();
    holder.kill()?;
    holder.wait()?;
    match outcome {
        Ok(_) => bail!("a second process opened a directory in use"),
        Err(e) => {
            // Recognised as a held lock: named so, after the short wait for
            // a lock this process did not just release (not at once, and
            // not the 10 s wait for its own).
            ensure!(format!("{e:#}").contains("in use by another process"), "the lock is not recognised: {e:#}");
            ensure!(
                waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
                "waited {waited:?} for another process's lock"
            );
            ensure!(
                matches!(PersistenceError::of(&e), Some(PersistenceError::Unavailable(_))),
                "expected Unavailable, got {e:#}"
            );
            ensure!(
                e.chain().any(|c| c.downcast_ref::<sled::Error>().is_some()),
                "the sled error stays attached as the source: {e:#}"
            );
        }
    }
    // Once the holder is gone the directory opens again.
    rt.block_on(open(&path))?;
    Ok(())
}

/// Every directory and file under `dir` (itself included) with its mode
/// bits, where a directory is not 0700 or a file is not 0600.
#[cfg(unix)]
fn not_private(dir: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut bad = Vec::new();
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        bad.push(format!("{} {mode:o}", dir.display()));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            bad.extend(not_private(&entry.path())?);
        } else {
            let mode = entry.metadata()?.permissions().mode() & 0o777;
            if mode != 0o600 {
                bad.push(format!("{} {mode:o}", entry.path().display()));
            }
        }
    }
    Ok(bad)
}

/// A store created by a process whose umask lets everyone read (022, and
/// 000) is private all the same: directories 0700, files 0600, also after
/// a reopen.
#[cfg(unix)]
fn new_stores_are_private_whatever_the_umask() -> Result<()> {
    for umask in ["022", "000"] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested").join("store");
        for _ in 0..2 {
            let out = Command::new("sh")
                .args(["-c", &format!("umask {umask}; exec \"$0\" child make \"$1\"")])
                .arg(std::env::current_exe()?)
                .arg(&path)
                .output()?;
            ensure!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let bad = not_private(&path)?;
        ensure!(bad.is_empty(), "umask {umask}: not private: {bad:?}");
        let parent = not_private(&dir.path().join("nested"))?;
        ensure!(parent.is_empty(), "umask {umask}: created parent: {parent:?}");
    }
    Ok(())
}

/// Dropping the last handle and opening the same directory at once, in the
/// same process, always succeeds (sled may still be releasing its lock from
/// a background thread). `KODA_SLED_REOPEN_CYCLES` cycles (default 2,000).
fn drop_and_reopen_at_once() -> Result<()> {
    let cycles: u64 = std::env::var("KODA_SLED_REOPEN_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let rt = runtime()?;
    rt.block_on(async {
        let sid = open(&path).await?.create_session("main", Path::new("/p")).await?;
        let started = std::time::Instant::now();
        for i in 0..cycles {
            let store = open(&path).await.with_context(|| format!("reopen {i} of {cycles}"))?;
            if i % 100 == 0 {
                store.insert_message(&sid, &Role::User, Some("again"), None, None, None).await?;
            }
            drop(store);
        }
        let store = open(&path).await?;
        ensure!(
            store.load_all_messages(&sid).await?.len() == usize::try_from(cycles.div_ceil(100))?,
            "messages written between reopens are all there"
        );
        println!("    {cycles} drop+reopen cycles in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    })
}

fn opener(path: PathBuf) -> process::Opening {
    Box::pin(async move { Ok(Arc::new(open(&path).await?) as Arc<dyn koda_persistence_api::Store>) })
}

/// The shared SIGKILL scenario (20 kills; the default flush policy flushes
/// before each write returns).
fn sigkill_mid_stream_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    process::sigkill_mid_stream_loses_nothing(opener, &dir.path().join("store"), 20, |_| Ok(()))
}

/// The shared SIGKILL scenario for the trash (15 kills): deletes into the
/// trash and restores, killed mid-move, leave nothing half-moved.
fn sigkill_mid_trash_leaves_nothing_half_moved() -> Result<()> {
    let dir = tempfile::tempdir()?;
    process::sigkill_mid_trash_leaves_nothing_half_moved(opener, &dir.path().join("store"), 15, |_| Ok(()))
}

fn main() -> ExitCode {
    process::main(
        child,
        &[
            ("sigkill_mid_stream_loses_nothing_acknowledged", sigkill_mid_stream_loses_nothing_acknowledged),
            ("sigkill_mid_trash_leaves_nothing_half_moved", sigkill_mid_trash_leaves_nothing_half_moved),
            ("a_directory_in_use_is_unavailable", a_directory_in_use_is_unavailable),
            #[cfg(unix)]
            ("new_stores_are_private_whatever_the_umask", new_stores_are_private_whatever_the_umask),
            ("drop_and_reopen_at_once", drop_and_reopen_at_once),
        ],
    )
}
