//! sled in separate processes: a writer killed with SIGKILL mid-stream 20
//! times leaves a store that opens and holds every acknowledged insert (the
//! default flush policy flushes before each write returns); a directory in
//! use by another process is `Unavailable`.
//!
//! This binary has its own `main`: run with `child …` it acts as the writer.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use koda_persistence_api::{Persistence, PersistenceError, Role, SystemClock};
use koda_persistence_sled::{SledOptions, SledStore};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn open(path: &Path) -> Result<SledStore> {
    SledStore::open_with(
        path.to_owned(),
        SledOptions::default(),
        Arc::new(SystemClock),
    )
    .await
}

/// `child stream PATH SESSION`: inserts until killed, printing each id.
/// `child hold PATH`: opens the store, says `open`, and waits to be killed.
fn child(args: &[String]) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        match args {
            [mode, path, sid] if mode == "stream" => {
                let store = open(Path::new(path)).await?;
                let mut out = std::io::stdout().lock();
                for i in 0u64.. {
                    let text = format!("stream {i} {}", "y".repeat((i % 5) as usize * 400));
                    let id = store
                        .insert_message(sid, &Role::User, Some(&text), None, None, None)
                        .await?;
                    writeln!(out, "{id}")?;
                    out.flush()?;
                }
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

fn sigkill_mid_stream_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let rt = runtime()?;
    let sid = rt.block_on(async {
        open(&path)
            .await?
            .create_session("main", Path::new("/p"))
            .await
    })?;
    let p = path.to_string_lossy().to_string();
    let mut acknowledged = Vec::new();
    for round in 0..20u64 {
        let mut child = spawn_child(&["stream", &p, &sid])?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..(3 + (round * 29) % 60) {
            match lines.next() {
                Some(line) => acknowledged.push(line?.parse::<i64>()?),
                None => {
                    let out = child.wait_with_output()?;
                    bail!(
                        "writer ended early: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_micros((round * 701) % 3_000));
        child.kill()?;
        child.wait()?;
        for line in lines {
            acknowledged.push(line?.parse::<i64>()?);
        }
    }
    rt.block_on(async {
        let store = open(&path).await?;
        let stored: HashSet<i64> = store
            .load_all_messages(&sid)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let lost: Vec<&i64> = acknowledged
            .iter()
            .filter(|id| !stored.contains(id))
            .collect();
        ensure!(
            lost.is_empty(),
            "{} acknowledged inserts lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let listed = store.list_sessions(1, Path::new("/p")).await?;
        ensure!(
            listed.first().map(|s| s.message_count) == Some(i64::try_from(stored.len())?),
            "session counter {:?} disagrees with {} stored messages",
            listed.first().map(|s| s.message_count),
            stored.len()
        );
        println!(
            "    {} acknowledged inserts over 20 kills, {} stored",
            acknowledged.len(),
            stored.len()
        );
        Ok(())
    })
}

fn a_directory_in_use_is_unavailable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let p = path.to_string_lossy().to_string();
    let mut holder = spawn_child(&["hold", &p])?;
    let mut lines = BufReader::new(holder.stdout.take().context("stdout")?).lines();
    ensure!(
        lines.next().transpose()?.as_deref() == Some("open"),
        "holder did not open the store"
    );
    let rt = runtime()?;
    let outcome = rt.block_on(open(&path));
    holder.kill()?;
    holder.wait()?;
    match outcome {
        Ok(_) => bail!("a second process opened a directory in use"),
        Err(e) => ensure!(
            matches!(
                e.downcast_ref::<PersistenceError>(),
                Some(PersistenceError::Unavailable(_))
            ),
            "expected Unavailable, got {e:#}"
        ),
    }
    // Once the holder is gone the directory opens again.
    rt.block_on(open(&path))?;
    Ok(())
}

fn main() -> ExitCode {
    koda_persistence_conformance::process::main(
        child,
        &[
            (
                "sigkill_mid_stream_loses_nothing_acknowledged",
                sigkill_mid_stream_loses_nothing_acknowledged,
            ),
            (
                "a_directory_in_use_is_unavailable",
                a_directory_in_use_is_unavailable,
            ),
        ],
    )
}
