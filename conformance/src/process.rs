//! A tiny runner for backend tests that spawn their own test binary as
//! child processes (several writers on one file, a writer killed with
//! SIGKILL). Such a test file sets `harness = false` and calls [`main`].

use std::process::ExitCode;

/// A named test returning its failure.
pub type Test = (&'static str, fn() -> anyhow::Result<()>);

/// Dispatches: with first argument `child`, runs `child` on the remaining
/// arguments (the process is a writer the tests spawned); otherwise runs
/// `tests` (those whose name contains the first non-flag argument, if any),
/// printing `test NAME ... ok|FAILED` and a closing `N passed, N failed`.
pub fn main(child: fn(&[String]) -> anyhow::Result<()>, tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return match child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        match test() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n    {e:#}");
                failed += 1;
            }
        }
    }
    println!("\nprocesses: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A store being opened.
pub type Opening = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = anyhow::Result<std::sync::Arc<dyn koda_persistence_api::Persistence>>,
            > + Send,
    >,
>;

/// Opens the store under test at a path (a file or a directory), for the
/// scenarios below that run in several processes.
pub type Opener = fn(std::path::PathBuf) -> Opening;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The child half of [`sigkill_mid_stream_loses_nothing`] (the test binary
/// run as `child stream PATH SESSION`): opens the store and appends to the
/// session until it is killed (questions, and answers that are completed,
/// of varying sizes), printing each acknowledged id on its own line.
///
/// # Errors
/// A failed open or write (the parent then sees the stream end early).
pub fn stream_until_killed(open: Opener, path: &str, sid: &str) -> anyhow::Result<()> {
    use koda_persistence_api::Role;
    use std::io::Write as _;
    runtime()?.block_on(async {
        let store = open(std::path::PathBuf::from(path)).await?;
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            let text = format!("stream {i} {}", "x".repeat((i % 7) as usize * 300));
            let role = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            let id = store
                .insert_message(sid, &role, Some(&text), None, None, None)
                .await?;
            if role == Role::Assistant {
                store.mark_message_complete(id).await?;
            }
            writeln!(out, "{id}")?;
            out.flush()?;
        }
        Ok(())
    })
}

/// A writer killed with SIGKILL mid-stream, `rounds` times: each round
/// starts this test binary as `child stream PATH SESSION` (whose `main`
/// calls [`stream_until_killed`]), reads a varying number of acknowledged
/// ids, kills it at a varying moment, and runs `after_kill(round)` (a
/// backend's own check, such as SQLite's `integrity_check`). Afterwards the
/// store opens, holds every acknowledged message, and its counters equal
/// its rows.
///
/// # Errors
/// The first broken rule.
pub fn sigkill_mid_stream_loses_nothing(
    open: Opener,
    path: &std::path::Path,
    rounds: u64,
    after_kill: impl Fn(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::{Context, ensure};
    use std::io::{BufRead, BufReader};
    let rt = runtime()?;
    let sid = rt.block_on(async {
        open(path.to_owned())
            .await?
            .create_session("main", std::path::Path::new("/p"))
            .await
    })?;
    let p = path.to_string_lossy().to_string();
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["child", "stream", &p, &sid])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..(5 + (round * 37) % 120) {
            match lines.next() {
                Some(line) => acknowledged.push(line?.parse::<i64>()?),
                None => {
                    let out = child.wait_with_output()?;
                    anyhow::bail!(
                        "round {round}: the writer ended early: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_micros((round * 613) % 2_000));
        child.kill()?; // SIGKILL on unix
        child.wait()?;
        // Whatever it printed before dying was acknowledged too.
        for line in lines {
            acknowledged.push(line?.parse::<i64>()?);
        }
        after_kill(round)?;
    }
    rt.block_on(async {
        let store = open(path.to_owned()).await?;
        let stored: std::collections::HashSet<i64> = store
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
        let listed = store.list_sessions(1, std::path::Path::new("/p")).await?;
        ensure!(
            listed.first().map(|s| s.message_count) == Some(i64::try_from(stored.len())?),
            "the session counter disagrees with {} stored messages",
            stored.len()
        );
        println!(
            "    {} acknowledged inserts over {rounds} kills, {} stored",
            acknowledged.len(),
            stored.len()
        );
        Ok(())
    })
}
