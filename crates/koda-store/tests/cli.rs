//! The real `koda-store` binary against real stores: export / import round
//! trips on every persistent backend, copies to PostgreSQL and sled that
//! verify and resume, a copy killed halfway, `doctor`'s findings, exit
//! codes and secrets.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

#[path = "../../koda-persistence-sqlite/tests/koda_generations/mod.rs"]
mod koda_generations;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use koda_persistence::{Role, TokenUsage};

fn koda_store() -> Command {
    let mut cmd = Command::cargo_bin("koda-store").expect("the binary is built");
    cmd.env_remove("KODA_STORE_URL");
    cmd
}

fn run(args: &[&str]) -> Output {
    koda_store().args(args).output().expect("koda-store runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Succeeds, or panics with what it printed.
fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "koda-store {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The PostgreSQL server of the tests, or `None` (having said SKIPPED)
/// when there is none and CI does not require one.
fn postgres() -> Option<String> {
    match std::env::var("KODA_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("KODA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "KODA_REQUIRE_POSTGRES=1 but KODA_TEST_POSTGRES_URL is not set"
            );
            eprintln!("SKIPPED koda-store PostgreSQL steps: set KODA_TEST_POSTGRES_URL to run them");
            None
        }
    }
}

/// `base` with `?schema=NAME` (or `&schema=`).
fn with_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}")
}

/// A fresh schema on the tests' server, dropped when this goes out of
/// scope (also when the test fails).
struct PgSchema {
    base: String,
    name: String,
    /// The store URL of the schema.
    url: String,
}

/// A [`PgSchema`] for `tag`, or `None` when there is no server (see
/// [`postgres`]).
fn pg_schema(tag: &str) -> Option<PgSchema> {
    let base = postgres()?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("ks_{tag}_{}_{nanos}", std::process::id());
    let url = with_schema(&base, &name);
    Some(PgSchema { base, name, url })
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let dropped = tokio::runtime::Runtime::new().map(|rt| {
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&self.base, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name)).await
            })
        });
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

/// A SQLite store with every kind of row: several sessions and roots,
/// tool calls with results and full output, usage by agent, compaction,
/// a streaming answer, titles, modes, metadata, NUL and non-ASCII text.
fn populated(path: &Path, sessions: usize, turns: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = koda_persistence::open(&sqlite_url(path)).await.expect("open");
        for s in 0..sessions {
            let root = format!("/work/p{}", s % 3);
            let sid = store.create_session("main", Path::new(&root)).await.unwrap();
            store.set_session_title(&sid, &format!("session {s} ✓")).await.unwrap();
            store.set_session_mode(&sid, "auto").await.unwrap();
            for t in 0..turns {
                let call = format!("call-{s}-{t}");
                store.insert_message(&sid, &Role::User, Some(&format!("q{t}\0é")), None, None, None).await.unwrap();
                let calls =
                    format!(r#"[{{"id":"{call}","type":"function","function":{{"name":"bash","arguments":"{{}}"}}}}]"#);
                let a = store
                    .insert_message_with_agent(
                        &sid,
                        &Role::Assistant,
                        Some("running"),
                        Some(&calls),
                        None,
                        Some(&TokenUsage {
                            prompt_tokens: 100 + t as i64,
                            completion_tokens: 20,
                            cache_read_tokens: 5,
                            cache_creation_tokens: 0,
                            thinking_tokens: 1,
                        }),
                        Some(if t % 2 == 0 { "main" } else { "scout" }),
                    )
                    .await
                    .unwrap();
                store.mark_message_complete(a).await.unwrap();
                store.insert_tool_message_with_full(&sid, "ok", &call, &format!("full output {t}")).await.unwrap();
            }
            if s % 2 == 0 {
                store.compact_session(&sid, "summary", 2).await.unwrap();
            }
            store.insert_message(&sid, &Role::Assistant, Some("streaming…"), None, None, None).await.unwrap();
            store.set_todo(&sid, "- [ ] ship").await.unwrap();
            store.set_metadata(&sid, "branch", "main").await.unwrap();
        }
    });
}

/// A koda file of the oldest and the newest generation, written by the
/// older koda itself (no project roots, partial counters; streaming
/// answers), then adopted by this layer.
fn legacy(path: &Path) {
    let g = koda_generations::Generation::Oldest;
    g.create_file(path);
    let koda = g.open(path);
    koda.create_session("legacy-1", "main", "/ignored");
    koda.insert_message("legacy-1", "user", Some("old question"), None, None, None, None);
    koda.insert_message("legacy-1", "assistant", Some("old answer"), None, None, Some([10, 5, 0, 0, 0]), None);
    drop(koda);
}

fn record_lines(export: &str) -> Vec<&str> {
    export.lines().skip(1).collect()
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "sessions",
        "show",
        "stats",
        "export",
        "import",
        "copy",
        "purge",
        "doctor",
        "migrate",
        "grant",
        "compact-bodies",
        "fork",
        "redact",
        "usage",
    ] {
        let out = ok(&[sub, "--help"]);
        assert!(text(&out.stdout).contains("Usage: koda-store"), "{sub}");
    }
    let out = ok(&["--help"]);
    assert!(text(&out.stdout).contains("EXIT CODES"));
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    assert_eq!(run(&["sessions", "--limit", "x"]).status.code(), Some(2));
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        run(&["--store", "mysql://h/db", "sessions"]).status.code(),
        Some(2),
        "an unknown scheme is a usage error"
    );
    let dir = tempfile::tempdir().unwrap();
    populated(&dir.path().join("a.db"), 1, 1);
    let url = sqlite_url(&dir.path().join("a.db"));
    let out = run(&["--store", &url, "show", "no-such-session"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("koda-store sessions"), "says what to do");
    // No store named and no koda file: says how to name one.
    let out = koda_store().env("XDG_CONFIG_HOME", dir.path()).arg("sessions").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--store"), "{}", text(&out.stderr));
}

#[test]
fn the_default_store_is_the_users_koda_file() {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("koda").join("db");
    std::fs::create_dir_all(&db).unwrap();
    populated(&db.join("koda.db"), 2, 1);
    let out = koda_store().env("XDG_CONFIG_HOME", home.path()).args(["sessions", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sessions"].as_array().map(Vec::len), Some(2));
}

/// export → import into SQLite, sled and PostgreSQL → export again: the
/// same record lines, byte for byte.
#[test]
fn export_import_export_is_byte_identical_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    populated(&source, 4, 3);
    let first = dir.path().join("first.jsonl");
    ok(&["--store", &sqlite_url(&source), "export", "-o", first.to_str().unwrap()]);
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(record_lines(&first_text).len(), 4 * (1 + 3 * 3 + 1 + 2) + 2 * 2);

    let mut targets =
        vec![sqlite_url(&dir.path().join("copy.db")), format!("sled://{}", dir.path().join("copy.sled").display())];
    let pg = pg_schema("roundtrip");
    if let Some(pg) = &pg {
        targets.push(pg.url.clone());
    }
    for target in &targets {
        ok(&["--store", target, "import", first.to_str().unwrap()]);
        let again = ok(&["--store", target, "export"]);
        let again_text = text(&again.stdout);
        assert_eq!(record_lines(&again_text), record_lines(&first_text), "export of {target}");
        // A second import imports nothing twice.
        let out = ok(&["--store", target, "import", first.to_str().unwrap()]);
        assert!(text(&out.stderr).contains("0 new sessions, 0 messages"), "{}", text(&out.stderr));
    }
}

/// An export whose metadata lines are not in key order (another tool's
/// file, or one edited by hand) imports and verifies equal: the checksum
/// digests metadata as the store holds it, whatever order it arrives in.
#[test]
fn import_verifies_metadata_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    populated(&source, 2, 1);
    let out = ok(&["--store", &sqlite_url(&source), "export"]);
    let exported = text(&out.stdout);
    // Each session's metadata lines (they follow its messages) reversed.
    let mut lines: Vec<&str> = Vec::new();
    let mut metadata: Vec<&str> = Vec::new();
    for line in exported.lines() {
        if line.contains(r#""type":"metadata""#) {
            metadata.push(line);
            continue;
        }
        lines.extend(metadata.drain(..).rev());
        lines.push(line);
    }
    lines.extend(metadata.drain(..).rev());
    let shuffled = lines.join("\n") + "\n";
    assert_ne!(shuffled, exported, "the test must reorder something");
    let file = dir.path().join("shuffled.jsonl");
    std::fs::write(&file, shuffled).unwrap();
    let target = sqlite_url(&dir.path().join("target.db"));
    let out = ok(&["--store", &target, "import", file.to_str().unwrap()]);
    assert!(!text(&out.stdout).contains("DIFFERENT"));
    let shown = text(&out.stderr);
    assert!(shown.contains("2 new sessions"), "{shown}");
}

/// The main path: a populated koda file and an older koda's file copied to
/// PostgreSQL and to sled verify equal; a second copy copies nothing.
#[test]
fn copy_verifies_and_a_second_copy_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let quick = dir.path().join("quick.db");
    populated(&quick, 5, 2);
    let old = dir.path().join("legacy.db");
    legacy(&old);
    let pg = pg_schema("copy");
    let mut targets = vec![format!("sled://{}", dir.path().join("team.sled").display())];
    if let Some(pg) = &pg {
        targets.push(pg.url.clone());
    }
    for target in &targets {
        for (source, sessions, messages) in [(&quick, 5, 5 * 7 + 3 * 2), (&old, 1, 2)] {
            let out = ok(&["copy", "--from", &sqlite_url(source), "--to", target, "--json"]);
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["sessions"], sessions, "{target}");
            assert_eq!(doc["equal"], sessions, "{target}: {doc}");
            assert_eq!(doc["copy"]["messages"], messages, "{target}");
            let again = ok(&["copy", "--from", &sqlite_url(source), "--to", target, "--json"]);
            let doc: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
            assert_eq!(doc["copy"]["messages"], 0, "{target}: second copy");
            assert_eq!(doc["copy"]["new_sessions"], 0, "{target}: second copy");
            assert_eq!(doc["equal"], sessions, "{target}: still equal");
        }
        // The legacy session is root-less: listed under any root.
        let out = ok(&["--store", target, "sessions", "--root", "/anywhere", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<&str> = doc["sessions"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids, ["legacy-1"], "{target}");
        assert_eq!(run(&["--store", target, "doctor"]).status.code(), Some(0), "{target}: a copy is healthy");
    }
}

fn count_sessions(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// A copy killed (SIGKILL) halfway, re-run: completes, every session
/// verifies equal, counts match the source.
#[test]
fn a_killed_copy_completes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.db");
    populated(&source, 120, 10);
    let target = dir.path().join("target.db");
    let bin: PathBuf = assert_cmd::cargo::cargo_bin("koda-store");
    let mut child = std::process::Command::new(&bin)
        .args(["copy", "--from", &sqlite_url(&source), "--to", &sqlite_url(&target)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(60) {
        seen = count_sessions(&target);
        if seen >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = count_sessions(&target);
    assert!((10..120).contains(&at_kill), "killed with {at_kill} sessions copied (saw {seen}): not halfway");
    let out = ok(&["copy", "--from", &sqlite_url(&source), "--to", &sqlite_url(&target), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sessions"], 120);
    assert_eq!(doc["equal"], 120, "{doc}");
    let out = ok(&["--store", &sqlite_url(&target), "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = ok(&["--store", &sqlite_url(&source), "stats", "--json"]);
    let source_stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["messages"], source_stats["messages"]);
    assert_eq!(stats["sessions"], 120);
    assert!(stats["size_bytes"].as_u64().is_some_and(|b| b > 1_000_000), "{stats}");
    assert_eq!(stats["tokens_by_agent"], source_stats["tokens_by_agent"]);
}

/// `doctor` finds a tool result without its call and counters that do not
/// match their rows, and exits 1.
#[test]
fn doctor_finds_a_planted_orphan_and_a_counter_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    populated(&db, 2, 1);
    let url = sqlite_url(&db);
    let healthy = run(&["--store", &url, "doctor"]);
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy.stdout));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (first, second): (String, String) = {
        let mut stmt = conn.prepare("SELECT id FROM sessions ORDER BY created_ms, seq").unwrap();
        let ids: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        (ids[0].clone(), ids[1].clone())
    };
    drop(conn);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = koda_persistence::open(&url).await.unwrap();
        store.insert_message(&first, &Role::Tool, Some("lost"), None, Some("ghost-call"), None).await.unwrap();
    });
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE sessions SET message_count = message_count + 5 WHERE id = ?1", [&second]).unwrap();
    drop(conn);
    let out = run(&["--store", &url, "doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings: Vec<String> =
        doc["findings"].as_array().unwrap().iter().map(|f| f.as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert!(findings.iter().any(|f| f.contains(&first) && f.contains("ghost-call")));
    assert!(findings.iter().any(|f| f.contains(&second) && f.contains("counters")));
    assert_eq!(doc["schema_version"], doc["latest_schema_version"]);

    // The store's own check: a message that lost its position.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE messages SET ord = NULL WHERE id = (SELECT MIN(id) FROM messages WHERE session_id = ?1)",
        [&second],
    )
    .unwrap();
    drop(conn);
    let out = run(&["--store", &url, "doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let printed = text(&out.stdout);
    assert!(printed.contains("store check") && printed.contains("without a position"), "{printed}");
}

/// On PostgreSQL, `doctor` runs the server-side check: a session whose
/// position counter fell behind its messages is a finding.
#[test]
fn doctor_on_postgres_finds_a_position_counter_behind() {
    let Some(pg) = pg_schema("doctor") else {
        return;
    };
    let (base, schema, url) = (pg.base.clone(), pg.name.clone(), pg.url.clone());
    let dir = tempfile::tempdir().unwrap();
    populated(&dir.path().join("s.db"), 2, 1);
    ok(&["copy", "--from", &sqlite_url(&dir.path().join("s.db")), "--to", &url]);
    assert_eq!(run(&["--store", &url, "doctor"]).status.code(), Some(0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("UPDATE \"{schema}\".sessions SET next_ord = 0")).await.unwrap();
    });
    let out = run(&["--store", &url, "doctor"]);
    let printed = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert_eq!(printed.matches("position counter 0 is behind").count(), 2, "{printed}");
}

/// `grant` prints the least-privilege SQL; `--apply` runs it as the
/// owner, after which a role holding only those grants (no CREATE) uses
/// the copied store with `migrate=false`, and may not read another schema.
#[test]
fn grant_lets_a_runtime_role_use_one_schema_only() {
    let printed = text(&ok(&["grant", "--schema", "team_a", "--role", "koda_a"]).stdout);
    assert!(printed.contains("GRANT USAGE ON SCHEMA \"team_a\" TO \"koda_a\";"), "{printed}");
    assert!(!printed.contains("CREATE"), "{printed}");
    assert_eq!(run(&["grant", "--schema", "team_a", "--role", "a\"b"]).status.code(), Some(2));
    let (Some(pg), Some(other)) = (pg_schema("grant"), pg_schema("grant_other")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    populated(&dir.path().join("s.db"), 3, 2);
    let db = sqlite_url(&dir.path().join("s.db"));
    ok(&["copy", "--from", &db, "--to", &pg.url]);
    ok(&["copy", "--from", &db, "--to", &other.url]);
    let role = format!("ks_role_{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = |sql: String| {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&pg.base, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(&sql).await
        })
    };
    admin(format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")).unwrap();
    let checked = std::panic::catch_unwind(|| {
        ok(&["--store", &pg.base, "grant", "--schema", &pg.name, "--role", &role, "--apply"]);
        let (scheme, rest) = pg.base.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        let as_role = format!("{scheme}://{role}:pw@{host}");
        let own = with_schema(&format!("{as_role}?migrate=false"), &pg.name);
        let listed = text(&ok(&["--store", &own, "stats"]).stdout);
        assert!(listed.contains('3'), "{listed}");
        let refused = run(&["--store", &with_schema(&format!("{as_role}?migrate=false"), &other.name), "stats"]);
        assert_eq!(refused.status.code(), Some(1));
        let said = text(&refused.stderr);
        assert!(said.contains("permission denied"), "{said}");
        assert!(said.contains(&other.name), "{said}");
    });
    let _ = admin(format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""));
    if let Err(p) = checked {
        std::panic::resume_unwind(p);
    }
}

/// A password in a URL is never printed, also not in --json or errors.
#[test]
fn passwords_are_never_printed() {
    let Some(pg) = pg_schema("secret") else {
        return;
    };
    // Trust auth accepts any password: name one.
    let Some((scheme, rest)) = pg.base.split_once("://") else {
        return;
    };
    let (userinfo, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let user = userinfo.split(':').next().unwrap_or("postgres");
    let url = format!("{scheme}://{user}:Sup3rSecret@{host}");
    let target = with_schema(&url, &pg.name);
    let dir = tempfile::tempdir().unwrap();
    populated(&dir.path().join("s.db"), 1, 1);
    let outputs = [
        run(&["copy", "--from", &sqlite_url(&dir.path().join("s.db")), "--to", &target, "--json"]),
        run(&["--store", &target, "export"]),
        run(&["--store", &target, "show", "nope"]),
        run(&["--store", &format!("{target}&pool_size=0"), "stats"]),
    ];
    for out in outputs {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains("Sup3rSecret"), "password printed:\n{all}");
    }
}

/// Large outputs across modes and backends: an older koda's file keeps
/// them inline; `copy` stores them once in sled and PostgreSQL and verifies;
/// `compact-bodies --dry-run` reports the saving and moves nothing;
/// `compact-bodies` moves them; `stats` and `doctor` show logical against
/// stored bytes; `export` writes them inline; a copy into a `blobs=off`
/// file stores them inline again, equal.
#[test]
fn large_outputs_keep_across_modes_and_compact_bodies_reports_the_saving() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("legacy.db");
    legacy(&old);
    let output = "line of test output ".repeat(600);
    {
        let koda = koda_generations::Generation::Oldest.open(&old);
        let calls = r#"[{"id":"t1","type":"function","function":{"name":"bash","arguments":"{}"}},{"id":"t2","type":"function","function":{"name":"bash","arguments":"{}"}}]"#;
        koda.insert_message("legacy-1", "assistant", None, Some(calls), None, None, None);
        for call in ["t1", "t2"] {
            koda.insert_message("legacy-1", "tool", Some(&output), None, Some(call), None, None);
        }
    }
    let stats = |url: &str| -> serde_json::Value {
        let out = ok(&["--store", url, "stats", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["bodies"].clone()
    };
    let legacy_url = sqlite_url(&old);
    assert_eq!(stats(&legacy_url)["references"], 0, "adopted: inline");
    let mut targets = vec![format!("sled://{}", dir.path().join("t.sled").display())];
    let pg = pg_schema("bodies");
    if let Some(pg) = &pg {
        targets.push(pg.url.clone());
    }
    for target in &targets {
        let out = ok(&["copy", "--from", &legacy_url, "--to", target, "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["equal"], 1, "{target}: {doc}");
        let b = stats(target);
        assert_eq!((b["bodies"].as_u64(), b["references"].as_u64()), (Some(1), Some(2)), "{target}: {b}");
        assert_eq!(b["logical_bytes"].as_u64(), Some(2 * output.len() as u64));
        assert!(b["stored_bytes"].as_u64().unwrap() < output.len() as u64 / 10, "{b}");
        let said = text(&ok(&["--store", target, "compact-bodies"]).stdout);
        assert!(said.contains("nothing to move"), "{said}");
    }
    let said = text(&ok(&["--store", &legacy_url, "compact-bodies", "--dry-run"]).stdout);
    assert!(said.contains("would move 2 fields of 2 messages"), "{said}");
    assert!(said.contains("into 1 new bodies"), "{said}");
    assert_eq!(stats(&legacy_url)["references"], 0, "a dry run moves nothing");
    let said = text(&ok(&["--store", &legacy_url, "compact-bodies"]).stdout);
    assert!(said.contains("moved 2 fields of 2 messages"), "{said}");
    let b = stats(&legacy_url);
    assert_eq!((b["bodies"].as_u64(), b["references"].as_u64()), (Some(1), Some(2)), "{b}");
    let human = text(&ok(&["--store", &legacy_url, "stats"]).stdout);
    assert!(human.contains("large outputs       2 references to 1 bodies"), "{human}");
    let doctor = run(&["--store", &legacy_url, "doctor"]);
    assert_eq!(doctor.status.code(), Some(0), "{}", text(&doctor.stdout));
    assert!(text(&doctor.stdout).contains("bytes saved") || text(&doctor.stdout).contains("saved)"));
    let export = text(&ok(&["--store", &legacy_url, "export"]).stdout);
    assert_eq!(export.matches(output.as_str()).count(), 2, "export writes bodies inline");
    let inline = format!("{}?blobs=off", sqlite_url(&dir.path().join("inline.db")));
    let out = ok(&["copy", "--from", &legacy_url, "--to", &inline, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["equal"], 1, "{doc}");
    assert_eq!(stats(&inline)["references"], 0, "blobs=off: inline again");
}

/// `fork SESSION [--at ID]` prints the new session's id; the fork holds the
/// messages up to the cut, and an unknown session exits 1 naming it.
#[test]
fn fork_prints_the_new_session_and_copies_up_to_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    populated(&db, 1, 3);
    let url = sqlite_url(&db);
    let show = |sid: &str| -> serde_json::Value {
        serde_json::from_slice(&ok(&["--store", &url, "show", sid, "--all", "--json"]).stdout).unwrap()
    };
    let listed: serde_json::Value =
        serde_json::from_slice(&ok(&["--store", &url, "sessions", "--json"]).stdout).unwrap();
    let sid = listed["sessions"][0]["id"].as_str().unwrap().to_owned();
    let messages = show(&sid)["messages"].as_array().unwrap().clone();
    let fork = text(&ok(&["--store", &url, "fork", &sid]).stdout).trim().to_owned();
    assert_ne!(fork, sid);
    assert_eq!(show(&fork)["messages"].as_array().unwrap().len(), messages.len());
    let first = messages[0]["id"].as_i64().unwrap().to_string();
    let cut = text(&ok(&["--store", &url, "fork", &sid, "--at", &first]).stdout).trim().to_owned();
    assert_eq!(show(&cut)["messages"].as_array().unwrap().len(), 1);
    let out = run(&["--store", &url, "fork", "no-such-session"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no-such-session"), "{}", text(&out.stderr));
}

/// `search QUERY` prints hits with their session and snippet (no escape
/// codes when stdout is not a terminal); `--root`, `--role`, `--limit`,
/// `--session`, `--compacted` and `--json` narrow and shape them; an empty query is a usage error.
#[test]
fn search_prints_hits_and_narrows_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    populated(&db, 3, 2);
    let url = sqlite_url(&db);
    let hits = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["--store", url.as_str(), "search"];
        all.extend_from_slice(args);
        all.push("--json");
        let out: serde_json::Value = serde_json::from_slice(&ok(&all).stdout).unwrap();
        out["hits"].as_array().unwrap().clone()
    };
    // Sessions 0 and 2 were compacted: their first turn is archived.
    let all = hits(&["full output"]);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(hits(&["full output", "--compacted"]).len(), 6);
    let first = &all[0];
    assert_eq!(first["role"], "tool");
    let snippet = first["snippet"].as_str().unwrap();
    let marked: Vec<&str> = first["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &snippet[m[0].as_u64().unwrap() as usize..m[1].as_u64().unwrap() as usize])
        .collect();
    assert_eq!(marked, ["full", "output"], "two words, two marks");
    // Session 1 (root /work/p1) was not compacted: both its turns.
    let rooted = hits(&["full output", "--root", "/work/p1"]);
    assert_eq!(rooted.len(), 2);
    assert_eq!(hits(&["full output", "--role", "user"]).len(), 0);
    assert_eq!(hits(&["output", "--limit", "1"]).len(), 1);
    let sid = rooted[0]["session"].as_str().unwrap().to_owned();
    assert_eq!(hits(&["output", "--session", &sid]).len(), 2);
    let plain = ok(&["--store", &url, "search", "\"full output\" -missing"]);
    let printed = text(&plain.stdout);
    assert!(printed.contains(&sid), "{printed}");
    assert!(printed.contains("    full output 1"), "{printed}");
    assert!(!printed.contains('\x1b'), "{printed}");
    assert!(text(&plain.stderr).contains("4 hits"));
    let empty = run(&["--store", &url, "search", "  "]);
    assert_eq!(empty.status.code(), Some(2), "{}", text(&empty.stderr));
    let bad_role = run(&["--store", &url, "search", "x", "--role", "robot"]);
    assert_eq!(bad_role.status.code(), Some(2));
}

/// `delete` moves a session to the trash (a store this layer created keeps
/// 7 days), `trash` lists it with when it goes, `restore` brings it back
/// whole; `purge --deleted --dry-run` names what a purge would remove and
/// removes nothing (not even on open), `purge --deleted` removes it, and
/// unknown sessions exit 1.
#[test]
fn delete_trash_restore_and_purge_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    populated(&db, 2, 2);
    let url = sqlite_url(&db);
    let json = |args: &[&str]| -> serde_json::Value { serde_json::from_slice(&ok(args).stdout).unwrap() };
    let listed = json(&["--store", &url, "sessions", "--json"]);
    let sid = listed["sessions"][0]["id"].as_str().unwrap().to_owned();
    let before = json(&["--store", &url, "show", &sid, "--all", "--json"]);

    let out = text(&ok(&["--store", &url, "delete", &sid]).stdout);
    assert!(out.contains("trash") && out.contains(&sid), "{out}");
    let trash = json(&["--store", &url, "trash", "--json"]);
    assert_eq!(trash["trash"][0]["id"], sid.as_str());
    assert_eq!(trash["trash"][0]["message_count"].as_u64(), Some(before["messages"].as_array().unwrap().len() as u64));
    let listed = json(&["--store", &url, "sessions", "--json"]);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
    let table = text(&ok(&["--store", &url, "trash"]).stdout);
    assert!(table.contains("gone for good") && table.contains(&sid), "{table}");

    ok(&["--store", &url, "restore", &sid]);
    assert_eq!(json(&["--store", &url, "show", &sid, "--all", "--json"]), before);
    let out = run(&["--store", &url, "restore", &sid]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    ok(&["--store", &url, "delete", &sid]);
    // Under a grace period of 0 days every trashed session has expired.
    let now = format!("{url}?keep_deleted_days=0");
    let dry = text(&ok(&["--store", &now, "purge", "--deleted", "--dry-run"]).stdout);
    assert!(dry.contains("would remove 1") && dry.contains(&sid), "{dry}");
    let still = json(&["--store", &url, "trash", "--json"]);
    assert_eq!(still["trash"].as_array().unwrap().len(), 1, "dry run removed it");
    let done = text(&ok(&["--store", &now, "purge", "--deleted"]).stdout);
    assert!(done.contains("removed 1"), "{done}");
    let empty = json(&["--store", &url, "trash", "--json"]);
    assert_eq!(empty["trash"].as_array().unwrap().len(), 0);
    let out = run(&["--store", &url, "restore", &sid]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--store", &url, "delete", &sid]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--store", &url, "purge"]);
    assert_eq!(out.status.code(), Some(2), "purge needs --older-than or --deleted");
}

/// `encrypt --to` copies a plaintext store into a new encrypted file and
/// verifies it; the file holds none of the history's text; `rekey` moves it
/// to a new key, after which the old key is refused (exit 1, no key shown).
#[cfg(feature = "sqlcipher")]
#[test]
fn encrypt_then_rekey() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("koda.db");
    populated(&plain, 2, 2);
    let key = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let old = key("old.key", &[9u8; 32]);
    let new = key("new.key", b"another passphrase\n");
    let enc = dir.path().join("enc.db");
    let enc_url = |k: &Path| format!("sqlite://{}?key_file={}", enc.display(), k.display());
    let url = sqlite_url(&plain);
    ok(&["--store", &url, "encrypt", "--to", &enc_url(&old)]);
    let listed = |u: &str| text(&ok(&["--store", u, "sessions", "--json"]).stdout);
    assert_eq!(listed(&enc_url(&old)), listed(&url));
    let bytes = std::fs::read(&enc).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"session "), "titles on disk");
    let refused = run(&["--store", &url, "encrypt", "--to", &sqlite_url(&enc)]);
    assert_eq!(refused.status.code(), Some(1), "encrypt without a key");
    ok(&["--store", &enc_url(&old), "rekey", "--new-key-file", new.to_str().unwrap()]);
    let out = run(&["--store", &enc_url(&old), "sessions"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("wrong key"), "{}", text(&out.stderr));
    assert_eq!(listed(&enc_url(&new)), listed(&url));
}

/// `encrypt --to` a sled directory with a key file (no feature needed):
/// the same sessions, no title on disk, and without the key the store is
/// refused (exit 1).
#[test]
fn encrypt_into_a_sled_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("koda.db");
    populated(&plain, 2, 2);
    let key = dir.path().join("sled.key");
    std::fs::write(&key, [8u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let target = dir.path().join("enc-sled");
    let enc_url = format!("sled://{}?key_file={}", target.display(), key.display());
    let url = sqlite_url(&plain);
    ok(&["--store", &url, "encrypt", "--to", &enc_url]);
    let listed = |u: &str| text(&ok(&["--store", u, "sessions", "--json"]).stdout);
    assert_eq!(listed(&enc_url), listed(&url));
    let mut on_disk = Vec::new();
    for e in std::fs::read_dir(&target).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            on_disk.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(!on_disk.is_empty());
    assert!(!on_disk.windows(8).any(|w| w == b"session "), "titles on disk");
    let bare = format!("sled://{}", target.display());
    let out = run(&["--store", &bare, "sessions"]);
    assert_eq!(out.status.code(), Some(1), "opened without its key");
    assert!(text(&out.stderr).contains("key_file"), "{}", text(&out.stderr));
    let refused = run(&["--store", &url, "encrypt", "--to", &format!("sled://{}", dir.path().join("other").display())]);
    assert_eq!(refused.status.code(), Some(1), "encrypt without a key");
    // A key in the environment, but a target that declares no encryption
    // (memory: reads no key file): refused by its capabilities. (The
    // source is memory: too, which reads no key file either.)
    let out = koda_store()
        .env("KODA_STORE_KEY_FILE", &key)
        .args(["--store", "memory:", "encrypt", "--to", "memory:"])
        .output()
        .expect("koda-store runs");
    assert_eq!(out.status.code(), Some(1), "encrypt into a plain store");
    assert!(text(&out.stderr).contains("is not encrypted at rest"), "{}", text(&out.stderr));
}

/// A GitHub token of the documented shape, made here at run time.
fn github_token() -> String {
    format!("gh{}_{}", "p", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8")
}

/// One session whose user message, title, metadata and tool calls hold
/// `token`, written to the SQLite file at `path` as given (mode off).
fn with_a_secret(path: &Path, token: &str) -> String {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = koda_persistence::open(&sqlite_url(path)).await.expect("open");
        let sid = store.create_session("main", Path::new("/work/p")).await.unwrap();
        store.set_session_title(&sid, &format!("deploy {token}")).await.unwrap();
        store.insert_message(&sid, &Role::User, Some(&format!("my token is {token}")), None, None, None).await.unwrap();
        let calls = format!(
            r#"[{{"id":"c1","type":"function","function":{{"name":"bash","arguments":"{{\"t\":\"{token}\"}}"}}}}]"#
        );
        store.insert_message(&sid, &Role::Assistant, Some("ok"), Some(&calls), None, None).await.unwrap();
        store.set_metadata(&sid, "env", &format!("GITHUB_TOKEN={token}")).await.unwrap();
        sid
    })
}

/// `export --redact` and `show --redact` write no credential whatever the
/// store's mode (the export still imports: its tool calls are JSON), and
/// count what they found; without the flag the store's bytes come out.
/// `redact --mode secrets` records the mode: a later import through the
/// CLI stores redacted text, `doctor` reports the mode, and a URL asking
/// `redact=off` is refused naming the command.
#[test]
fn redaction_on_the_way_out_and_as_the_stores_mode() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    let token = github_token();
    let sid = with_a_secret(&db, &token);
    let url = sqlite_url(&db);
    let plain = text(&ok(&["--store", &url, "export"]).stdout);
    assert!(plain.contains(&token), "without --redact the export holds what the store holds");
    let out = ok(&["--store", &url, "export", "--redact"]);
    let redacted = text(&out.stdout);
    assert!(!redacted.contains(&token), "{redacted}");
    assert!(redacted.contains("[REDACTED:github-token:"), "{redacted}");
    assert!(text(&out.stderr).contains("redacted 4 (github-token 4)"), "{}", text(&out.stderr));
    for line in redacted.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let found = text(&ok(&["--store", &url, "search", "token"]).stdout);
    assert!(found.contains(&token), "without --redact the snippet holds what the store holds: {found}");
    for args in [
        vec!["show", sid.as_str(), "--redact"],
        vec!["show", sid.as_str(), "--redact", "--json", "--all"],
        vec!["search", "token", "--redact"],
        vec!["search", "token", "--redact", "--json"],
    ] {
        let mut full = vec!["--store", url.as_str()];
        full.extend(args);
        let shown = text(&ok(&full).stdout);
        assert!(!shown.contains(&token) && shown.contains("[REDACTED:github-token:"), "{shown}");
    }

    // Redacting on the way out writes nothing to the store (no salt kept).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let salt = rt.block_on(async {
        koda_persistence::open(&url).await.expect("open").get_setting("redact.salt").await.expect("read")
    });
    assert_eq!(salt, None, "export/show/search --redact recorded a salt");

    // copy --redact: the target holds the redacted history, verified equal
    // to the source as redacted.
    let copied = dir.path().join("copied.db");
    ok(&["copy", "--from", &url, "--to", &sqlite_url(&copied), "--redact"]);
    let target = text(&ok(&["--store", &sqlite_url(&copied), "export"]).stdout);
    assert!(!target.contains(&token) && target.contains("[REDACTED:github-token:"), "{target}");

    // The mode, recorded, applies to what is written next.
    let out = ok(&["--store", &url, "redact", "--mode", "secrets", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["mode"], "secrets");
    let other = dir.path().join("other.db");
    let file = dir.path().join("export.jsonl");
    with_a_secret(&other, &token);
    ok(&["--store", &sqlite_url(&other), "export", "-o", file.to_str().unwrap()]);
    ok(&["--store", &url, "import", file.to_str().unwrap()]);
    let now = text(&ok(&["--store", &url, "export"]).stdout);
    assert_eq!(
        now.matches(token.as_str()).count(),
        plain.matches(token.as_str()).count(),
        "only the old session holds it"
    );
    let doctor = text(&ok(&["--store", &url, "doctor"]).stdout);
    assert!(doctor.contains("redact   secrets"), "{doctor}");
    let refused = run(&["--store", &format!("{url}?redact=off"), "sessions"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("koda-store redact --mode off"), "{}", text(&refused.stderr));

    // Own rules: a bad pattern is a usage error naming the rule.
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[rules]\nacme = '(unclosed'\n").unwrap();
    let bad = run(&["--store", &url, "redact", "--rules", rules.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("acme"), "{}", text(&bad.stderr));
    std::fs::write(&rules, "[rules]\nacme = '\\bacme_[0-9a-f]{8}\\b'\n").unwrap();
    let listed = text(&ok(&["--store", &url, "redact", "--rules", rules.to_str().unwrap()]).stdout);
    assert!(listed.contains("own rules:      acme"), "{listed}");
}

/// Every file of the SQLite store at `db` (the file, its WAL and shared
/// memory), byte for byte.
fn store_files(db: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = db.parent().unwrap();
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&name)))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

fn holds(files: &[(String, Vec<u8>)], needle: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(n, _)| n.clone())
        .collect()
}

/// `redact` cleans a history written before the mode was set: `--dry-run`
/// counts and changes no byte of the file; the real run rewrites every
/// affected value (messages, tool calls still JSON, title, metadata, a
/// large output stored once) and leaves no copy in the file's free pages
/// or its WAL; a second run finds nothing; `doctor` is clean.
#[test]
fn redact_cleans_an_old_history_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    let token = github_token();
    with_a_secret(&db, &token);
    with_a_secret(&db, &token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let big_sid = rt.block_on(async {
        let store = koda_persistence::open(&sqlite_url(&db)).await.expect("open");
        let sid = store.create_session("main", Path::new("/work/p")).await.unwrap();
        let calls = r#"[{"id":"c1","type":"function","function":{"name":"bash","arguments":"{}"}}]"#;
        store.insert_message(&sid, &Role::Assistant, None, Some(calls), None, None).await.unwrap();
        let out = format!("{}\nexport GITHUB_TOKEN={token}\n{}", "log line\n".repeat(800), "tail\n".repeat(800));
        store.insert_tool_message_with_full(&sid, "short", "c1", &out).await.unwrap();
        sid
    });
    let url = sqlite_url(&db);
    // A search first, so the search index holds the token's words too.
    let found = text(&ok(&["--store", &url, "search", &token]).stdout);
    assert!(found.contains(&big_sid), "{found}");
    let before = store_files(&db);
    assert!(!holds(&before, &token).is_empty(), "the file holds the token before");

    let out = ok(&["--store", &url, "redact", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Per with_a_secret session: title, message, tool calls, metadata; and
    // the large output.
    assert_eq!(dry["redacted"], 9, "{dry}");
    assert_eq!(dry["rules"]["github-token"], 9, "{dry}");
    assert_eq!(dry["sessions"].as_object().map(|o| o.len()), Some(3), "{dry}");
    assert!(!text(&out.stdout).contains(&token));
    assert_eq!(store_files(&db), before, "a dry run changed the store's files");

    let out = ok(&["--store", &url, "redact", "--json"]);
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["redacted"], 9, "{done}");
    assert!(done["reclaimed"].as_str().is_some_and(|r| r.contains("vacuumed")), "{done}");
    let export = text(&ok(&["--store", &url, "export"]).stdout);
    assert!(!export.contains(&token) && export.contains("[REDACTED:github-token:"), "{export}");
    for line in record_lines(&export) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let shown = text(&ok(&["--store", &url, "show", &big_sid, "--all", "--json"]).stdout);
    assert!(shown.contains("export GITHUB_TOKEN=[REDACTED:"), "the large output: {shown}");
    let after = store_files(&db);
    assert_eq!(holds(&after, &token), Vec::<String>::new(), "an old copy stayed in the store's files");
    // The search index keeps words lowercased: none of the token's left.
    let word = token.rsplit('_').next().unwrap().to_lowercase();
    assert_eq!(holds(&before, &word), vec!["koda.db".to_owned()], "the index held the token's word");
    assert_eq!(holds(&after, &word), Vec::<String>::new(), "the search index kept the token's word");

    let again: serde_json::Value = serde_json::from_slice(&ok(&["--store", &url, "redact", "--json"]).stdout).unwrap();
    assert_eq!(again["redacted"], 0, "a second run rewrote something: {again}");
    assert!(again["reclaimed"].is_string(), "a run that rewrites nothing still reclaims: {again}");
    ok(&["--store", &url, "doctor"]);
    let human = text(&ok(&["--store", &url, "redact"]).stdout);
    assert!(human.contains("rewrote 0 value(s) in 0 of 3 session(s)"), "{human}");
}

/// A clean killed (SIGKILL) after its first session, re-run: the store
/// is consistent (`doctor`), the re-run rewrites the rest, and nothing of
/// the secret is left.
#[test]
fn a_killed_redact_completes_when_run_again() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    let token = github_token();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = koda_persistence::open(&sqlite_url(&db)).await.expect("open");
        for i in 0..300 {
            let sid = store.create_session("main", Path::new("/work/p")).await.unwrap();
            for j in 0..3 {
                let line = format!("turn {i}.{j}: my token is {token}");
                store.insert_message(&sid, &Role::User, Some(&line), None, None, None).await.unwrap();
            }
        }
    });
    let url = sqlite_url(&db);
    let bin: PathBuf = assert_cmd::cargo::cargo_bin("koda-store");
    let mut child = std::process::Command::new(&bin)
        .args(["--store", &url, "redact"])
        .env_remove("KODA_STORE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(first.starts_with("session "), "{first}");
    assert_eq!(status.signal(), Some(9), "the clean ended before it was killed: {status}");
    ok(&["--store", &url, "doctor"]);
    let out = ok(&["--store", &url, "redact", "--json"]);
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rest = done["redacted"].as_u64().unwrap();
    assert!(rest > 0 && rest < 900, "the re-run rewrote {rest} of 900 values");
    assert_eq!(rest % 3, 0, "a session was left half rewritten: {done}");
    let export = text(&ok(&["--store", &url, "export"]).stdout);
    assert!(!export.contains(&token), "a value kept the token after the re-run");
    assert_eq!(export.matches("[REDACTED:github-token:").count(), 900);
    ok(&["--store", &url, "doctor"]);
}

/// A store whose sessions spent tokens on three days (imported with their
/// times): `/p` with agents main and explore, `/q` with main.
fn spend(path: &Path) -> (String, String) {
    use koda_persistence::{MessageRecord, SessionRecord};
    let day =
        |d: &str| koda_persistence::ledger::day_of_date(d).unwrap() * koda_persistence::ledger::DAY_MS + 3_600_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = koda_persistence::open(&sqlite_url(path)).await.expect("open");
        let mut ids = Vec::new();
        for (sid, root, msgs) in [
            ("sess-a", "/p", vec![("2026-12-01", None, 1000, 200), ("2026-12-02", Some("explore"), 10, 1)]),
            ("sess-b", "/q", vec![("2026-11-30", None, 5, 5)]),
        ] {
            let record = SessionRecord {
                id: sid.into(),
                agent_name: "main".into(),
                project_root: Some(root.into()),
                created_ms: day("2026-11-30"),
                last_accessed_ms: None,
                title: None,
                mode: None,
            };
            store.import_session(&record).await.unwrap();
            let records: Vec<MessageRecord> = msgs
                .into_iter()
                .map(|(d, agent, p, c)| MessageRecord {
                    prompt_tokens: Some(p),
                    completion_tokens: Some(c),
                    agent: agent.map(str::to_owned),
                    ..MessageRecord::bare(1, Role::Assistant, day(d))
                })
                .collect();
            store.import_messages(sid, &records, false).await.unwrap();
            ids.push(sid.to_owned());
        }
        (ids[0].clone(), ids[1].clone())
    })
}

/// `usage` by every grouping, as JSON, CSV and a plain table (not a TTY:
/// `#` bars, no escape codes), with a prices file, over an empty range,
/// and after a delete (the spend stays, the session marked).
#[test]
fn usage_reports_the_ledger_by_every_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("koda.db");
    let (a, b) = spend(&db);
    let url = sqlite_url(&db);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["--store", url.as_str(), "usage", "--json"];
        full.extend(args);
        serde_json::from_slice(&ok(&full).stdout).unwrap()
    };
    let keys = |doc: &serde_json::Value| -> Vec<String> {
        doc["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
    };
    let by_day = json(&[]);
    assert_eq!(keys(&by_day), ["2026-11-30", "2026-12-01", "2026-12-02"], "{by_day}");
    assert_eq!(by_day["total"]["prompt_tokens"], 1015);
    assert_eq!(by_day["total"]["messages"], 3);
    assert_eq!(keys(&json(&["--by", "week"])), ["2026-W49"]);
    assert_eq!(keys(&json(&["--by", "month"])), ["2026-11", "2026-12"]);
    assert_eq!(keys(&json(&["--by", "root"])), ["/p", "/q"]);
    assert_eq!(keys(&json(&["--by", "agent"])), ["explore", "main"]);
    assert_eq!(keys(&json(&["--by", "session"])), [a.as_str(), b.as_str()]);
    let narrowed = json(&["--since", "2026-12-01", "--until", "2026-12-01", "--root", "/p", "--agent", "main"]);
    assert_eq!(narrowed["total"]["prompt_tokens"], 1000, "{narrowed}");

    let csv = text(&ok(&["--store", &url, "usage", "--by", "agent", "--csv"]).stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "key,prompt_tokens,completion_tokens,cache_read_tokens,cache_creation_tokens,thinking_tokens,messages,deleted"
    );
    assert_eq!(lines[1..], ["explore,10,1,0,0,0,1,false", "main,1005,205,0,0,0,2,false"], "{csv}");

    let table = text(&ok(&["--store", &url, "usage"]).stdout);
    assert!(table.contains("2026-12-01") && table.contains("total"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("2026-12-01") && l.ends_with(&"#".repeat(30))), "{table}");
    assert!(!table.contains('\u{1b}') && !table.contains('█'), "not a TTY: plain text: {table}");

    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, "[default]\ninput = 3.0\noutput = 15.0\n\n[agent.explore]\ninput = 1000.0\noutput = 0\n")
        .unwrap();
    let priced = json(&["--by", "month", "--prices", prices.to_str().unwrap()]);
    let cost = |i: usize| priced["rows"][i]["cost_usd"].as_f64().unwrap();
    // November: 5 in at $3/M, 5 out at $15/M; December: main 1000 in and
    // 200 out, explore 10 in at $1000/M.
    assert!((cost(0) - (5.0 * 3.0 + 5.0 * 15.0) / 1e6).abs() < 1e-12, "{priced}");
    assert!((cost(1) - (1000.0 * 3.0 + 200.0 * 15.0 + 10.0 * 1000.0) / 1e6).abs() < 1e-12, "{priced}");
    let priced_csv = text(&ok(&["--store", &url, "usage", "--csv", "--prices", prices.to_str().unwrap()]).stdout);
    assert!(priced_csv.lines().next().unwrap().ends_with(",cost_usd"), "{priced_csv}");
    std::fs::write(&prices, "[default]\ninput = -1\n").unwrap();
    assert_eq!(run(&["--store", &url, "usage", "--prices", prices.to_str().unwrap()]).status.code(), Some(2));

    let empty = json(&["--since", "2030-01-01"]);
    assert_eq!(empty["rows"], serde_json::json!([]), "{empty}");
    let empty = text(&ok(&["--store", &url, "usage", "--since", "2030-01-01"]).stdout);
    assert!(empty.contains("no usage recorded"), "{empty}");
    assert_eq!(run(&["--store", &url, "usage", "--since", "yesterday"]).status.code(), Some(2));
    assert_eq!(run(&["--store", &url, "usage", "--by", "year"]).status.code(), Some(2));

    ok(&["--store", &url, "delete", &b]);
    let after = json(&["--by", "session"]);
    assert_eq!(after["rows"][1]["deleted"], true, "{after}");
    assert_eq!(after["total"]["prompt_tokens"], 1015, "the spend stays: {after}");
    let table = text(&ok(&["--store", &url, "usage", "--by", "session"]).stdout);
    assert!(table.contains(&format!("{b} (deleted)")), "{table}");

    // stats shows the ledger; doctor checks it against the stored
    // messages and finds a ledger planted lower than what they spent.
    let stats: serde_json::Value = serde_json::from_slice(&ok(&["--store", &url, "stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["ledger"]["prompt_tokens"], 1015, "{stats}");
    ok(&["--store", &url, "doctor"]);
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute("UPDATE kp_ledger SET prompt = 1 WHERE session_id = ?1", [&a]).unwrap();
    drop(raw);
    let found = run(&["--store", &url, "doctor"]);
    assert_eq!(found.status.code(), Some(1), "{}", text(&found.stdout));
    assert!(
        text(&found.stdout).contains(&format!("session {a}: the usage ledger holds less")),
        "{}",
        text(&found.stdout)
    );
}
