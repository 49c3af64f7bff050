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
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A store being opened.
pub type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<std::sync::Arc<dyn koda_persistence_api::Store>>> + Send>,
>;

/// Opens the store under test at a path (a file or a directory), for the
/// scenarios below that run in several processes.
pub type Opener = fn(std::path::PathBuf) -> Opening;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// What the streaming writer writes as its `i`-th message: questions,
/// completed answers of varying sizes, and tool results drawn from a small
/// pool, so most are bodies shared with earlier ones.
fn streamed(i: u64) -> (koda_persistence_api::Role, String) {
    use koda_persistence_api::Role;
    match i % 4 {
        0 => (Role::User, format!("stream {i} {}", "x".repeat((i % 7) as usize * 300))),
        1 => (Role::Assistant, format!("answer {i} {}", "y".repeat((i % 5) as usize * 2_000))),
        _ => {
            let pool = ["file contents\n".repeat(400), "test result: ok\n".repeat(1_500), "ls -la\n".repeat(50)];
            let pick = usize::try_from((i / 2) % 3).unwrap_or(0);
            (Role::Tool, pool[pick].clone())
        }
    }
}

/// The children every backend's process tests share: `stream PATH SESSION`
/// ([`stream_until_killed`]) and `trash PATH` ([`trash_until_killed`]).
/// `None` for other arguments, which the backend's own child handles.
pub fn shared_child(open: Opener, args: &[String]) -> Option<anyhow::Result<()>> {
    match args {
        [mode, path, sid] if mode == "stream" => Some(stream_until_killed(open, path, sid)),
        [mode, path] if mode == "trash" => Some(trash_until_killed(open, path)),
        _ => None,
    }
}

/// The stub the streaming writer clears every eighth tool result with.
const CLEARED: &str = "[cleared]";

/// The child half of [`sigkill_mid_stream_loses_nothing`] (the test binary
/// run as `child stream PATH SESSION`): opens the store and appends to the
/// session until it is killed (`streamed` messages; after each tool
/// result at `i % 8 == 3` it clears the one before, releasing its body),
/// printing `ID I` for each acknowledged message on its own line.
///
/// # Errors
/// A failed open or write (the parent then sees the stream end early).
pub fn stream_until_killed(open: Opener, path: &str, sid: &str) -> anyhow::Result<()> {
    use koda_persistence_api::Role;
    use std::io::Write as _;
    runtime()?.block_on(async {
        let store = open(std::path::PathBuf::from(path)).await?;
        let mut out = std::io::stdout().lock();
        let mut previous = None;
        for i in 0u64.. {
            let (role, text) = streamed(i);
            let id = store.insert_message(sid, &role, Some(&text), None, None, None).await?;
            if role == Role::Assistant {
                store.mark_message_complete(id).await?;
            }
            if i % 8 == 3
                && let Some(before) = previous
            {
                store.clear_message_content(&[before], CLEARED).await?;
            }
            previous = Some(id);
            writeln!(out, "{id} {i}")?;
            out.flush()?;
        }
        Ok(())
    })
}

/// One round of a SIGKILL scenario: starts this test binary as
/// `child ARGS…`, hands `read` at least `wanted` of the lines it prints
/// (each one something it acknowledged), sleeps `pause`, kills it with
/// SIGKILL, and hands `read` every line it printed before dying.
///
/// # Errors
/// A child that ends before printing `wanted` lines (with its stderr), or
/// `read`'s error.
fn kill_after(
    args: &[&str],
    wanted: u64,
    pause: std::time::Duration,
    mut read: impl FnMut(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("child")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..wanted {
        match lines.next() {
            Some(line) => read(line?)?,
            None => {
                let out = child.wait_with_output()?;
                anyhow::bail!("the child ended early: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    std::thread::sleep(pause);
    child.kill()?; // SIGKILL on unix
    child.wait()?;
    // Whatever it printed before dying was acknowledged too.
    for line in lines {
        read(line?)?;
    }
    Ok(())
}

/// A writer killed with SIGKILL mid-stream, `rounds` times: each round
/// starts this test binary as `child stream PATH SESSION` (whose `main`
/// calls [`stream_until_killed`]), reads a varying number of acknowledged
/// ids, kills it at a varying moment, and runs `after_kill(round)` (a
/// backend's own check, such as SQLite's `integrity_check`). Afterwards the
/// store opens, holds every acknowledged message with its exact text (or
/// the stub, for a tool result the writer may have cleared), its counters
/// equal its rows, and its body accounting equals the bodies its rows
/// hold: nothing acknowledged is lost and no body leaks or dangles.
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
    let rt = runtime()?;
    let sid =
        rt.block_on(async { open(path.to_owned()).await?.create_session("main", std::path::Path::new("/p")).await })?;
    let p = path.to_string_lossy().to_string();
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        kill_after(
            &["stream", &p, &sid],
            5 + (round * 37) % 120,
            std::time::Duration::from_micros((round * 613) % 2_000),
            |line| {
                let (id, i) = line.split_once(' ').context("an acknowledgement is `ID I`")?;
                acknowledged.push((id.parse::<i64>()?, i.parse::<u64>()?));
                Ok(())
            },
        )
        .with_context(|| format!("round {round}"))?;
        after_kill(round)?;
    }
    rt.block_on(async {
        let store = open(path.to_owned()).await?;
        let messages = store.load_all_messages(&sid).await?;
        let stored: std::collections::HashMap<i64, Option<String>> =
            messages.iter().map(|m| (m.id, m.content.clone())).collect();
        let lost: Vec<&(i64, u64)> = acknowledged.iter().filter(|(id, _)| !stored.contains_key(id)).collect();
        ensure!(lost.is_empty(), "{} acknowledged inserts lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        for (id, i) in &acknowledged {
            let (_, want) = streamed(*i);
            let got = stored.get(id).cloned().flatten();
            let may_be_cleared = i % 8 == 2;
            ensure!(
                got.as_deref() == Some(want.as_str()) || (may_be_cleared && got.as_deref() == Some(CLEARED)),
                "message {id} (streamed {i}) reads back {} bytes, not its text",
                got.map_or(0, |g| g.len())
            );
        }
        let health = store.health().await?;
        ensure!(health.problems.is_empty(), "after the kills the store finds: {:?}", health.problems);
        let mut distinct = std::collections::HashSet::new();
        let mut references = 0u64;
        for m in &messages {
            for (field, value) in [
                (koda_persistence_api::bodies::BodyField::Content, &m.content),
                (koda_persistence_api::bodies::BodyField::FullContent, &m.full_content),
                (koda_persistence_api::bodies::BodyField::ToolCalls, &m.tool_calls),
            ] {
                if let Some(v) = value.as_deref().filter(|v| koda_persistence_api::bodies::is_body(&m.role, field, v)) {
                    references += 1;
                    distinct.insert(v.to_owned());
                }
            }
        }
        ensure!(
            (health.bodies.bodies, health.bodies.references) == (distinct.len() as u64, references),
            "bodies after the kills: store counts {} bodies and {} references, its rows hold {} and {}",
            health.bodies.bodies,
            health.bodies.references,
            distinct.len(),
            references
        );
        let listed = store.list_sessions(1, std::path::Path::new("/p")).await?;
        ensure!(
            listed.first().map(|s| s.message_count) == Some(i64::try_from(stored.len())?),
            "the session counter disagrees with {} stored messages",
            stored.len()
        );
        println!(
            "    {} acknowledged inserts over {rounds} kills, {} stored, {} bodies with {} references",
            acknowledged.len(),
            stored.len(),
            health.bodies.bodies,
            health.bodies.references
        );
        Ok(())
    })
}

/// How many messages each session of [`trash_until_killed`] holds: a
/// question, an answer, a tool output stored once (shared by every
/// session, so trash moves hold and release one body's references).
pub const TRASHED_MESSAGES: usize = 3;

/// The child half of [`sigkill_mid_trash_leaves_nothing_half_moved`] (the
/// test binary run as `child trash PATH`): opens the store (which must
/// keep a grace period) and, until killed, creates a session with
/// [`TRASHED_MESSAGES`] messages and a metadata entry, then deletes it into
/// the trash and restores it, three times over, printing `SID created`,
/// `SID deleted` and `SID restored` as each step is acknowledged.
///
/// # Errors
/// A failed open or call (the parent then sees the stream end early).
pub fn trash_until_killed(open: Opener, path: &str) -> anyhow::Result<()> {
    use koda_persistence_api::Role;
    use std::io::Write as _;
    runtime()?.block_on(async {
        let store = open(std::path::PathBuf::from(path)).await?;
        anyhow::ensure!(
            store.capabilities().keep_deleted_days > 0,
            "the trash scenario needs a store with a grace period"
        );
        let mut out = std::io::stdout().lock();
        let output = "tool output\n".repeat(2_000);
        for i in 0u64.. {
            let sid = store.create_session("main", std::path::Path::new("/p")).await?;
            store.insert_message(&sid, &Role::User, Some(&format!("question {i}")), None, None, None).await?;
            let a = store.insert_message(&sid, &Role::Assistant, Some("answer"), None, None, None).await?;
            store.mark_message_complete(a).await?;
            store.insert_tool_message_with_full(&sid, &output, "c1", &output).await?;
            store.set_metadata(&sid, "round", &i.to_string()).await?;
            writeln!(out, "{sid} created")?;
            out.flush()?;
            for _ in 0..3 {
                anyhow::ensure!(store.delete_session(&sid).await?, "{sid} was not deleted");
                writeln!(out, "{sid} deleted")?;
                out.flush()?;
                store.restore_session(&sid).await?;
                writeln!(out, "{sid} restored")?;
                out.flush()?;
            }
        }
        Ok(())
    })
}

/// A process moving sessions into the trash and back, killed with SIGKILL
/// `rounds` times at varying moments (each round starts this test binary
/// as `child trash PATH`, whose `main` calls [`trash_until_killed`]), with
/// `after_kill(round)` (a backend's own check) after each kill. After every
/// kill the store opens with nothing half-moved: its own check
/// ([`Health`](koda_persistence_api::Health)) finds no problem (counters,
/// body references); every session acknowledged is whole either live
/// (every message, its metadata) or in the trash (listed with every
/// message), never both and never neither; each is where its last
/// acknowledged step put it, but for the one step the kill may have cut,
/// which is done whole or not at all.
///
/// # Errors
/// The first broken rule.
pub fn sigkill_mid_trash_leaves_nothing_half_moved(
    open: Opener,
    path: &std::path::Path,
    rounds: u64,
    after_kill: impl Fn(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::{Context, bail, ensure};
    let rt = runtime()?;
    let p = path.to_string_lossy().to_string();
    // Each acknowledged session and whether its last acknowledged step
    // left it live (`true`) or in the trash.
    let mut last: Vec<(String, bool)> = Vec::new();
    let mut steps = 0usize;
    for round in 0..rounds {
        let record = |line: String| -> anyhow::Result<()> {
            let (sid, step) = line.split_once(' ').context("a step is `SID STEP`")?;
            let live = match step {
                "created" | "restored" => true,
                "deleted" => false,
                other => bail!("unknown step {other:?}"),
            };
            match last.iter_mut().find(|(s, _)| s == sid) {
                Some(entry) => entry.1 = live,
                None => last.push((sid.to_owned(), live)),
            }
            steps += 1;
            Ok(())
        };
        kill_after(
            &["trash", &p],
            3 + (round * 7) % 23,
            std::time::Duration::from_micros((round * 811) % 3_000),
            record,
        )
        .with_context(|| format!("round {round}"))?;
        after_kill(round)?;
        // The session the kill may have cut mid-step: the last one the
        // child acknowledged anything of.
        let cut = last.last().map(|(s, _)| s.clone());
        rt.block_on(async {
            let store = open(path.to_owned()).await?;
            let health = store.health().await?;
            ensure!(health.problems.is_empty(), "round {round}: after the kill the store finds {:?}", health.problems);
            let trashed = store.list_deleted().await?;
            for (sid, live_last) in &last {
                let messages = store.load_all_messages(sid).await?;
                let in_trash = trashed.iter().find(|d| &d.id == sid);
                let live = !messages.is_empty();
                ensure!(
                    live != in_trash.is_some(),
                    "round {round}: {sid} is {}",
                    if live { "both live and in the trash" } else { "neither live nor in the trash" }
                );
                if live {
                    ensure!(
                        messages.len() == TRASHED_MESSAGES,
                        "round {round}: {sid} is live with {} messages",
                        messages.len()
                    );
                    ensure!(
                        store.get_metadata(sid, "round").await?.is_some(),
                        "round {round}: {sid} is live without its metadata"
                    );
                }
                if let Some(d) = in_trash {
                    ensure!(
                        usize::try_from(d.message_count)? == TRASHED_MESSAGES,
                        "round {round}: {sid} is in the trash with {} messages",
                        d.message_count
                    );
                }
                ensure!(
                    live == *live_last || cut.as_ref() == Some(sid),
                    "round {round}: {sid} is {} though its last acknowledged step left it {}",
                    if live { "live" } else { "in the trash" },
                    if *live_last { "live" } else { "in the trash" }
                );
            }
            anyhow::Ok(())
        })?;
        // The cut step, whichever way it went, is now settled: read it back.
        if let Some(sid) = cut {
            let live = rt.block_on(async {
                let store = open(path.to_owned()).await?;
                anyhow::Ok(!store.load_all_messages(&sid).await?.is_empty())
            })?;
            if let Some(entry) = last.iter_mut().find(|(s, _)| *s == sid) {
                entry.1 = live;
            }
        }
    }
    println!("    {steps} acknowledged steps over {rounds} kills, {} sessions checked whole", last.len());
    Ok(())
}
