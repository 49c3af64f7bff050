//! Several OS processes on one SQLite file: concurrent writers lose nothing
//! and see no lock errors; a writer killed with SIGKILL mid-stream leaves a
//! file that passes `integrity_check` and holds every acknowledged insert.
//!
//! An older koda holding a write transaction while the layer adopts its file
//! is waited for (within the busy timeout) and keeps its transaction.
//!
//! This binary has its own `main`: run with `child …` arguments it acts as a
//! writer process for the tests below.

mod koda_generations;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use koda_persistence_api::{Persistence, Role, SystemClock};
use koda_persistence_conformance::process;
use koda_persistence_sqlite::{Location, SqliteOptions, SqliteStore};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn open(path: &Path) -> Result<SqliteStore> {
    let options = SqliteOptions { busy_timeout: Duration::from_secs(30), ..SqliteOptions::default() };
    SqliteStore::open(SqliteOptions { location: Location::File(path.to_owned()), ..options }, Arc::new(SystemClock))
        .await
}

fn generation(name: &str) -> Result<koda_generations::Generation> {
    koda_generations::ALL
        .into_iter()
        .find(|g| format!("{g:?}") == name)
        .with_context(|| format!("no generation {name}"))
}

/// `child older-turn PATH GENERATION MS SESSION`: an older koda mid-turn: in
/// one write transaction it creates SESSION and inserts a question and an
/// answer with its own SQL, says `locked`, holds the transaction MS
/// milliseconds, commits and says `committed`.
fn older_turn(path: &str, g: &str, ms: &str, sid: &str) -> Result<()> {
    let koda = generation(g)?.open(Path::new(path));
    koda.conn.execute_batch("BEGIN IMMEDIATE")?;
    koda.create_session(sid, "main", "/repo");
    koda.insert_message(sid, "user", Some("q"), None, None, None, None);
    koda.insert_message(sid, "assistant", Some("a"), None, None, Some([7, 3, 0, 0, 0]), None);
    let mut out = std::io::stdout().lock();
    writeln!(out, "locked")?;
    out.flush()?;
    std::thread::sleep(Duration::from_millis(ms.parse()?));
    koda.conn.execute_batch("COMMIT")?;
    writeln!(out, "committed")?;
    Ok(())
}

/// `child insert PATH SESSION COUNT TAG`: inserts COUNT messages, exits 0 iff all succeeded.
/// `child stream PATH SESSION`: inserts until killed, printing each returned id.
fn child(args: &[String]) -> Result<()> {
    if let Some(done) = process::shared_child(opener, args) {
        return done;
    }
    if let [mode, path, g, ms, sid] = args
        && mode == "older-turn"
    {
        return older_turn(path, g, ms, sid);
    }
    if let [mode, target] = args
        && (mode == "relative-url" || mode == "relative-path")
    {
        // Run in a fresh working directory: a relative URL or path names a
        // file there.
        return runtime()?.block_on(async {
            let clock = Arc::new(SystemClock);
            let store = if mode == "relative-url" {
                SqliteStore::open_url(target, clock).await?
            } else {
                SqliteStore::open(SqliteOptions::file(PathBuf::from(target)), clock).await?
            };
            store.create_session("main", Path::new("/p")).await?;
            Ok(())
        });
    }
    let rt = runtime()?;
    rt.block_on(async {
        match args {
            [mode, path, sid, count, tag] if mode == "insert" => {
                let store = open(Path::new(path)).await?;
                let count: usize = count.parse()?;
                let mut out = std::io::stdout().lock();
                for i in 0..count {
                    let id =
                        store.insert_message(sid, &Role::User, Some(&format!("{tag}-{i}")), None, None, None).await?;
                    writeln!(out, "{id}")?;
                }
                Ok(())
            }
            other => bail!("unknown child arguments {other:?}"),
        }
    })
}

fn spawn_child(args: &[&str]) -> Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe).arg("child").args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
}

fn temp_db() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("koda.db");
    Ok((dir, path))
}

/// Two processes insert 2,000 messages each into one session at once: the
/// final count is exact, ids are unique, and neither saw an error.
fn two_processes_insert_concurrently() -> Result<()> {
    let (_dir, path) = temp_db()?;
    let rt = runtime()?;
    let sid = rt.block_on(async { open(&path).await?.create_session("main", Path::new("/p")).await })?;
    let p = path.to_string_lossy().to_string();
    let children: Vec<_> =
        ["a", "b"].iter().map(|tag| spawn_child(&["insert", &p, &sid, "2000", tag])).collect::<Result<_>>()?;
    let mut ids = HashSet::new();
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "writer failed: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8(out.stdout)?.lines() {
            ensure!(ids.insert(line.parse::<i64>()?), "duplicate id {line}");
        }
    }
    ensure!(ids.len() == 4000, "acknowledged {} inserts", ids.len());
    rt.block_on(async {
        let store = open(&path).await?;
        let all = store.load_all_messages(&sid).await?;
        ensure!(all.len() == 4000, "stored {} messages", all.len());
        for tag in ["a", "b"] {
            let mine: Vec<String> =
                all.iter().filter_map(|m| m.content.clone()).filter(|c| c.starts_with(&format!("{tag}-"))).collect();
            let want: Vec<String> = (0..2000).map(|i| format!("{tag}-{i}")).collect();
            ensure!(mine == want, "process {tag}'s messages out of order or missing");
        }
        let listed = store.list_sessions(1, Path::new("/p")).await?;
        ensure!(listed.first().map(|s| s.message_count) == Some(4000), "message_count {listed:?}");
        Ok(())
    })
}

/// Starts an older koda mid-turn on `path` holding its write transaction
/// for `ms`; returns once it holds the lock.
fn older_mid_turn(
    path: &Path,
    g: koda_generations::Generation,
    ms: u64,
    sid: &str,
) -> Result<(std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>)> {
    let mut child = spawn_child(&["older-turn", &path.to_string_lossy(), &format!("{g:?}"), &ms.to_string(), sid])?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    ensure!(lines.next().transpose()?.as_deref() == Some("locked"), "the older koda did not take its lock");
    Ok((child, lines))
}

fn adopt(path: &Path, busy: Duration) -> Result<SqliteStore> {
    runtime()?.block_on(SqliteStore::open(
        SqliteOptions {
            location: Location::File(path.to_owned()),
            ..SqliteOptions { busy_timeout: busy, ..SqliteOptions::default() }
        },
        Arc::new(SystemClock),
    ))
}

/// For each generation: with an older koda holding a write transaction
/// (mid-turn) for longer than the busy timeout, the open fails with
/// `Unavailable` and leaves the file unadopted; with it holding for less,
/// the open waits, adopts the file, and the older koda's transaction
/// commits intact and is read through the layer.
fn adoption_waits_for_an_older_koda_mid_turn() -> Result<()> {
    for g in koda_generations::ALL {
        let (_dir, path) = temp_db()?;
        g.create_file(&path);

        let (mut child, mut lines) = older_mid_turn(&path, g, 1_500, "s-turn-1")?;
        let started = std::time::Instant::now();
        let refused = adopt(&path, Duration::from_millis(300));
        let waited = started.elapsed();
        match refused {
            Ok(_) => bail!("{g:?}: adopted a file whose writer held the lock past the timeout"),
            Err(e) => ensure!(
                matches!(
                    koda_persistence_api::PersistenceError::of(&e),
                    Some(koda_persistence_api::PersistenceError::Unavailable(_))
                ),
                "{g:?}: expected Unavailable, got {e:#}"
            ),
        }
        ensure!(waited >= Duration::from_millis(250), "{g:?}: gave up after {waited:?}");
        ensure!(
            lines.next().transpose()?.as_deref() == Some("committed"),
            "{g:?}: the older koda's transaction did not commit"
        );
        ensure!(child.wait()?.success(), "{g:?}: older koda failed");
        let raw = rusqlite::Connection::open(&path)?;
        let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let marked: bool =
            raw.prepare("SELECT 1 FROM sqlite_master WHERE name = 'kp_meta' OR sql LIKE '%created_ms%'")?.exists([])?;
        ensure!(version == 0 && !marked, "{g:?}: the refused open changed the file");
        drop(raw);

        let (mut child, mut lines) = older_mid_turn(&path, g, 400, "s-turn-2")?;
        let started = std::time::Instant::now();
        let store = adopt(&path, Duration::from_secs(10))
            .with_context(|| format!("{g:?}: adopting while the older koda finishes its turn"))?;
        ensure!(started.elapsed() >= Duration::from_millis(250), "{g:?}: did not wait for the older koda");
        ensure!(
            lines.next().transpose()?.as_deref() == Some("committed"),
            "{g:?}: the older koda's transaction did not commit"
        );
        ensure!(child.wait()?.success(), "{g:?}: older koda failed");
        // Both older turns are there, counted, and their answers (from
        // generations without completion tracking) are in the context.
        let rt = runtime()?;
        let listed = rt.block_on(store.list_sessions(5, Path::new("/repo")))?;
        for sid in ["s-turn-1", "s-turn-2"] {
            ensure!(
                listed.iter().any(|s| s.id == sid && s.message_count == 2 && s.total_tokens == 10),
                "{g:?}: {sid} after adoption: {listed:?}"
            );
            let context = rt.block_on(store.load_context(sid))?;
            let want = if g.tracks_completion() { 1 } else { 2 };
            ensure!(context.len() == want, "{g:?}: {sid} context holds {} messages", context.len());
        }
    }
    Ok(())
}

/// `sqlite://koda.db` and `sqlite://sub/dir/koda.db` name files under the
/// working directory, creating the missing directories; a path given in
/// code that looks like a SQLite URI (`file:x.db?mode=ro`) is a file of
/// that name, opened read-write (a process of its own, so the tests'
/// working directory stays put).
fn relative_paths_open_under_the_working_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (mode, url, file) in [
        ("relative-url", "sqlite://koda.db", "koda.db"),
        ("relative-url", "sqlite://sub/dir/koda.db", "sub/dir/koda.db"),
        ("relative-path", "file:x.db?mode=ro", "file:x.db?mode=ro"),
    ] {
        let out = Command::new(std::env::current_exe()?).args(["child", mode, url]).current_dir(dir.path()).output()?;
        ensure!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        ensure!(dir.path().join(file).exists(), "{url} did not create {file}");
    }
    Ok(())
}

fn opener(path: PathBuf) -> process::Opening {
    Box::pin(async move { Ok(Arc::new(open(&path).await?) as Arc<dyn koda_persistence_api::Store>) })
}

/// SQLite's own check after each round of a shared scenario:
/// `PRAGMA integrity_check` is ok.
fn integrity_ok(path: &Path) -> impl Fn(u64) -> Result<()> + '_ {
    move |round| {
        let raw = rusqlite::Connection::open(path)?;
        let check: String = raw.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        ensure!(check == "ok", "round {round}: integrity_check says {check}");
        Ok(())
    }
}

/// The shared SIGKILL scenario (20 kills), with [`integrity_ok`] after each.
fn sigkill_mid_stream_loses_nothing_acknowledged() -> Result<()> {
    let (_dir, path) = temp_db()?;
    process::sigkill_mid_stream_loses_nothing(opener, &path, 20, integrity_ok(&path))
}

/// The shared SIGKILL scenario for the trash (15 kills), with
/// [`integrity_ok`] after each.
fn sigkill_mid_trash_leaves_nothing_half_moved() -> Result<()> {
    let (_dir, path) = temp_db()?;
    process::sigkill_mid_trash_leaves_nothing_half_moved(opener, &path, 15, integrity_ok(&path))
}

fn main() -> ExitCode {
    process::main(
        child,
        &[
            ("two_processes_insert_concurrently", two_processes_insert_concurrently),
            ("sigkill_mid_stream_loses_nothing_acknowledged", sigkill_mid_stream_loses_nothing_acknowledged),
            ("sigkill_mid_trash_leaves_nothing_half_moved", sigkill_mid_trash_leaves_nothing_half_moved),
            ("adoption_waits_for_an_older_koda_mid_turn", adoption_waits_for_an_older_koda_mid_turn),
            ("relative_paths_open_under_the_working_directory", relative_paths_open_under_the_working_directory),
        ],
    )
}
