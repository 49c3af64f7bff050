//! PostgreSQL-only concerns: teams sharing a schema, dropped connections,
//! concurrent first-time migration, a server that is down, big and NUL-laden
//! values, TLS modes and secrets.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use koda_persistence_api::backend::options_of;
use koda_persistence_api::{Health, Persistence, PersistenceError, Role, Search, SystemClock, TokenUsage, Transfer};
use koda_persistence_conformance::skip_or_fail;
use koda_persistence_postgres::{Postgres, PostgresOptions, PostgresStore, TlsMode};

/// A store on `schema`, tagged with `application_name` so tests can find
/// its server connections.
async fn store(url: &str, schema: &str, tag: &str) -> Result<PostgresStore> {
    let mut o = support::options(url, schema)?;
    o.config.application_name(tag);
    PostgresStore::open(o, Arc::new(SystemClock)).await
}

use support::{typed, with_schema};

/// Two stores (two pools, as two koda processes) on one schema insert into
/// shared and separate sessions at once; both see everything, counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_shares_one_schema() -> Result<()> {
    with_schema("a_team_shares_one_schema", |url, schema| async move {
        let alice = store(&url, &schema, "alice").await?;
        let bob = store(&url, &schema, "bob").await?;
        let shared = alice.create_session("main", Path::new("/repo")).await?;
        let mut tasks = Vec::new();
        for (who, s) in [("alice", alice.clone()), ("bob", bob.clone())] {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let own = s.create_session(who, Path::new("/repo")).await?;
                let mut ids = Vec::new();
                for i in 0..200 {
                    ids.push(
                        s.insert_message(&shared, &Role::User, Some(&format!("{who}-{i}")), None, None, None).await?,
                    );
                    s.insert_message(&own, &Role::User, Some(&format!("{who}-own-{i}")), None, None, None).await?;
                }
                anyhow::Ok((own, ids))
            }));
        }
        let mut all_ids = HashSet::new();
        let mut own_sessions = Vec::new();
        for t in tasks {
            let (own, ids) = t.await??;
            own_sessions.push(own);
            for id in ids {
                assert!(all_ids.insert(id), "duplicate id {id}");
            }
        }
        for s in [&alice, &bob] {
            let listed = s.list_sessions(10, Path::new("/repo")).await?;
            assert_eq!(listed.len(), 3, "{listed:?}");
            for info in &listed {
                assert_eq!(info.message_count, if info.id == shared { 400 } else { 200 });
            }
            assert_eq!(s.load_all_messages(&shared).await?.len(), 400);
            for own in &own_sessions {
                assert_eq!(s.load_all_messages(own).await?.len(), 200);
            }
        }
        Ok(())
    })
    .await
}

async fn terminate(url: &str, tag: &str) -> Result<u64> {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows = admin
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&tag])
        .await?;
    Ok(rows.len() as u64)
}

/// The server kills the store's connections again and again while it writes:
/// each call either succeeds or fails with `Unavailable`; nothing is half
/// written; the call after a failure succeeds on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_cost_at_most_the_call_in_flight() -> Result<()> {
    with_schema("terminated_connections", |url, schema| async move {
        let tag = format!("kp-kill-{}", &schema[5..17]);
        let s = store(&url, &schema, &tag).await?;
        let sid = s.create_session("main", Path::new("/p")).await?;
        let (mut ok, mut failed) = (Vec::new(), 0);
        let mut killed = 0;
        for round in 0..30 {
            if round % 3 == 0 {
                killed += terminate(&url, &tag).await?;
            }
            let text = format!("m{round}");
            match s.insert_message(&sid, &Role::User, Some(&text), None, None, None).await {
                Ok(_) => ok.push(text),
                Err(e) => {
                    assert!(matches!(typed(&e), Some(PersistenceError::Unavailable(_))), "{e:#}");
                    failed += 1;
                    // The very next call works on a fresh connection.
                    s.insert_message(&sid, &Role::User, Some(&format!("{text}-retry")), None, None, None)
                        .await
                        .expect("the call after a dropped connection succeeds");
                    ok.push(format!("{text}-retry"));
                }
            }
        }
        assert!(killed > 0, "no connection was terminated");
        let stored: Vec<String> = s.load_all_messages(&sid).await?.into_iter().filter_map(|m| m.content).collect();
        for text in &ok {
            assert!(stored.contains(text), "acknowledged insert {text} lost");
        }
        let listed = s.list_sessions(1, Path::new("/p")).await?;
        assert_eq!(listed[0].message_count, stored.len() as i64, "counters disagree with rows");
        println!("    {killed} connections terminated, {failed} calls failed with Unavailable, {} succeeded", ok.len());
        Ok(())
    })
    .await
}

/// Ten stores connecting to a fresh schema at once all succeed, and each
/// migration runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_processes_migrate_a_fresh_schema_at_once() -> Result<()> {
    with_schema("ten_processes_migrate", |url, schema| async move {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let (url, schema) = (url.clone(), schema.clone());
                tokio::spawn(async move { store(&url, &schema, &format!("mig-{i}")).await })
            })
            .collect();
        let mut stores = Vec::new();
        for t in tasks {
            stores.push(t.await??);
        }
        let sid = stores[3].create_session("main", Path::new("/p")).await?;
        assert_eq!(stores[7].list_sessions(5, Path::new("/p")).await?[0].id, sid);
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let versions: Vec<i32> = admin
            .query(&format!("SELECT version FROM \"{schema}\".koda_schema_history ORDER BY version"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // One per file of migrations/ (V1__….sql, V2__….sql, …).
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sql"))
            .count();
        let want: Vec<i32> = (1..=i32::try_from(files)?).collect();
        assert_eq!(versions, want, "each migration applied once");
        Ok(())
    })
    .await
}

/// Nothing listening: a clear `Unavailable` at once. A server that accepts
/// but never answers: `Unavailable` within the connect timeout.
#[tokio::test]
async fn a_server_that_is_down_is_unavailable_within_the_timeout() -> Result<()> {
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("postgres://koda:topsecret@127.0.0.1:{free}/koda?connect_timeout_ms=800");
    let started = Instant::now();
    let err = PostgresStore::open_url(&url, Arc::new(SystemClock)).await.expect_err("nothing listens");
    assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!format!("{err:?} {err:#}").contains("topsecret"), "password leaked: {err:#}");

    // Accepts TCP, never speaks.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let url = format!("postgres://koda:topsecret@127.0.0.1:{port}/koda?connect_timeout_ms=700&sslmode=disable");
    let started = Instant::now();
    let err = PostgresStore::open_url(&url, Arc::new(SystemClock)).await.expect_err("silent server");
    let took = started.elapsed();
    assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(3), "took {took:?}");
    assert!(!format!("{err:?} {err:#}").contains("topsecret"));
    hold.abort();
    Ok(())
}

/// NUL bytes everywhere and a 10 MB message round-trip byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_a_ten_megabyte_message_round_trip() -> Result<()> {
    with_schema("nul_and_big", |url, schema| async move {
        let s = store(&url, &schema, "big").await?;
        let root = "/proj\0ect";
        let sid = s.create_session("a\0gent", Path::new(root)).await?;
        let big: String = "koda\0🦀".repeat(1_250_000); // 11.25 MB
        let id = s.insert_message(&sid, &Role::Tool, Some(&big), Some("\0[]"), Some("call\0id"), None).await?;
        s.set_metadata(&sid, "k\0ey", "v\0alue").await?;
        let all = s.load_all_messages(&sid).await?;
        assert_eq!(all[0].id, id);
        assert!(all[0].content.as_deref() == Some(big.as_str()), "10 MB content changed");
        assert_eq!(all[0].tool_calls.as_deref(), Some("\0[]"));
        assert_eq!(all[0].tool_call_id.as_deref(), Some("call\0id"));
        assert_eq!(s.get_metadata(&sid, "k\0ey").await?.as_deref(), Some("v\0alue"));
        assert_eq!(s.list_sessions(1, Path::new(root)).await?[0].agent_name, "a\0gent");
        Ok(())
    })
    .await
}

/// `sslmode=require` against a server without TLS fails cleanly;
/// `prefer` falls back to plain TCP; against a server with a self-signed
/// certificate `require` connects and `verify-full` refuses.
#[tokio::test]
async fn tls_modes_behave_like_libpq() -> Result<()> {
    with_schema("tls_modes", |url, schema| async move {
        let mut o = support::options(&url, &schema)?;
        o.tls = TlsMode::Prefer;
        let s = PostgresStore::open(o.clone(), Arc::new(SystemClock)).await?;
        s.create_session("main", Path::new("/p")).await?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let ssl: String = admin.query_one("SHOW ssl", &[]).await?.get(0);
        o.tls = TlsMode::Require;
        let required = PostgresStore::open(o.clone(), Arc::new(SystemClock)).await;
        if ssl == "on" {
            required?.create_session("main", Path::new("/p")).await?;
            // A server whose certificate no public root signed (Debian's
            // snakeoil, a test server's own): encrypted, but not verified.
            o.tls = TlsMode::VerifyFull;
            let verified = PostgresStore::open(o, Arc::new(SystemClock)).await;
            let err = verified.expect_err("verify-full trusts no self-signed certificate");
            assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");
            assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
        } else {
            let err = required.expect_err("server has no TLS");
            assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");
        }
        Ok(())
    })
    .await
}

/// `connect_raw` connects as the store does: `sslmode=disable` in plain
/// text, `prefer` encrypted exactly when the server offers TLS; a bad URL
/// is `InvalidInput`.
#[tokio::test]
async fn a_raw_connection_speaks_over_the_stores_wire() -> Result<()> {
    with_schema("raw_wire", |url, _schema| async move {
        let with = |mode: &str| {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}sslmode={mode}")
        };
        let encrypted = |client: tokio_postgres::Client| async move {
            let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
            anyhow::Ok(row.get::<_, bool>(0))
        };
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let offered: String = admin.query_one("SHOW ssl", &[]).await?.get(0);
        let plain = koda_persistence_postgres::connect_raw(&with("disable")).await?;
        assert!(!encrypted(plain).await?, "sslmode=disable must not encrypt");
        let preferred = koda_persistence_postgres::connect_raw(&with("prefer")).await?;
        assert_eq!(
            encrypted(preferred).await?,
            offered == "on",
            "sslmode=prefer encrypts exactly when the server offers TLS (ssl = {offered})"
        );
        let err = koda_persistence_postgres::connect_raw(&with("sometimes")).await.expect_err("not an sslmode");
        assert!(matches!(typed(&err), Some(PersistenceError::InvalidInput(_))), "{err:#}");
        Ok(())
    })
    .await
}

#[test]
fn debug_output_hides_the_password() {
    let o = options_of::<Postgres>("postgres://u:pa55word@localhost/db?schema=s").expect("parses");
    assert!(!format!("{o:?}").contains("pa55word"));
}

/// The server restarts under a running store: the call made while it is
/// down fails with `Unavailable` (nothing half written), and once it is back
/// the next call succeeds on a fresh connection, in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_costs_at_most_the_calls_while_it_is_down() -> Result<()> {
    let server = match tokio::task::spawn_blocking(support::private_server).await? {
        Ok(s) => s,
        Err(e) => return skip_or_fail("server_restart", e),
    };
    let url = format!("{}?connect_timeout_ms=1000&pool_timeout_ms=2000", server.url());
    let s = PostgresStore::open_url(&url, Arc::new(SystemClock)).await?;
    let sid = s.create_session("main", Path::new("/p")).await?;
    let before = s.insert_message(&sid, &Role::User, Some("before"), None, None, None).await?;
    s.load_context(&sid).await?;

    let server = tokio::task::spawn_blocking(move || server.stop().map(|()| server)).await??;
    let err = s
        .insert_message(&sid, &Role::User, Some("while down"), None, None, None)
        .await
        .expect_err("the server is down");
    assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{err:#}");

    let server = tokio::task::spawn_blocking(move || server.restart().map(|()| server)).await??;
    let after = s.insert_message(&sid, &Role::User, Some("after"), None, None, None).await?;
    let texts: Vec<String> = s.load_context(&sid).await?.into_iter().filter_map(|m| m.content).collect();
    assert_eq!(texts, ["before", "after"]);
    assert!(after > before);
    tokio::task::spawn_blocking(move || drop(server)).await?;
    Ok(())
}

/// A throwaway database on the test server, dropped (with its connections)
/// by `drop_database`.
async fn fresh_database(url: &str) -> Result<(String, PostgresOptions)> {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let db = format!("kp_db_{}", uuid::Uuid::now_v7().simple());
    admin.batch_execute(&format!("CREATE DATABASE \"{db}\"")).await?;
    let mut o = options_of::<Postgres>(url)?;
    o.config.dbname(&db);
    o.pool_size = 2;
    Ok((db, o))
}

async fn drop_database(url: &str, db: &str) -> Result<()> {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await?;
    Ok(())
}

/// Without `schema=` the tables are in `public`, whatever the search path
/// would pick: after someone creates a schema named after the login role
/// (first in the default `"$user", public`) and sets the database's
/// search path elsewhere, a reopened store still sees every session and
/// no second set of tables appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schema_means_public_whatever_the_search_path() -> Result<()> {
    let url = match support::server_url().await {
        Ok(url) => url,
        Err(e) => return skip_or_fail("no_schema_means_public_whatever_the_search_path", e),
    };
    let (db, options) = fresh_database(&url).await?;
    let outcome = async {
        let first = PostgresStore::open(options.clone(), Arc::new(SystemClock)).await?;
        let sid = first.create_session("main", Path::new("/repo")).await?;
        drop(first);
        let (client, conn) = options.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{role}\"; CREATE SCHEMA elsewhere; \
                 ALTER DATABASE \"{db}\" SET search_path = elsewhere, \"$user\", public",
                role = options.config.get_user().unwrap_or("postgres"),
            ))
            .await?;
        let again = PostgresStore::open(options.clone(), Arc::new(SystemClock)).await?;
        let listed = again.list_sessions(10, Path::new("/repo")).await?;
        anyhow::ensure!(
            listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>() == [sid.as_str()],
            "reopened store lists {listed:?}"
        );
        again.insert_message(&sid, &Role::User, Some("still here"), None, None, None).await?;
        let homes: Vec<String> = client
            .query("SELECT table_schema::TEXT FROM information_schema.tables WHERE table_name = 'sessions'", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        anyhow::ensure!(homes == ["public"], "sessions tables in {homes:?}");
        Ok(())
    }
    .await;
    let dropped = drop_database(&url, &db).await;
    outcome.and(dropped)
}

/// The server's own words reach the caller: an unknown role is
/// `PermissionDenied` and an unknown database `Unavailable`, each naming
/// the SQLSTATE and what the server said, with the driver error kept as
/// the source; never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_what_the_server_said() -> Result<()> {
    let url = match support::server_url().await {
        Ok(url) => url,
        Err(e) => return skip_or_fail("errors_keep_what_the_server_said", e),
    };
    let base = options_of::<Postgres>(&url)?;
    let mut no_role = base.clone();
    no_role.config.user("kp_no_such_role").password("hunter2");
    let mut no_db = base.clone();
    no_db.config.dbname("kp_no_such_database").password("hunter2");
    for (options, want, said) in [
        (no_role, "PermissionDenied", "role \"kp_no_such_role\" does not exist"),
        (no_db, "Unavailable", "database \"kp_no_such_database\" does not exist"),
    ] {
        let err = PostgresStore::open(options, Arc::new(SystemClock))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{want}: connected"))?;
        let text = format!("{err:#}");
        let kind = match typed(&err) {
            Some(PersistenceError::PermissionDenied(_)) => "PermissionDenied",
            Some(PersistenceError::Unavailable(_)) => "Unavailable",
            other => anyhow::bail!("{want}: got {other:?}: {text}"),
        };
        anyhow::ensure!(kind == want, "{want}: got {kind}: {text}");
        anyhow::ensure!(
            err.to_string().contains(said) && err.to_string().contains("FATAL"),
            "{want}: the message does not say what the server said: {err}"
        );
        anyhow::ensure!(!text.contains("hunter2"), "password in {text}");
        anyhow::ensure!(
            err.chain().any(|c| c.downcast_ref::<tokio_postgres::Error>().is_some()),
            "{want}: the driver error is not kept as the source"
        );
    }
    Ok(())
}

/// A stored row that does not decode (text that is not UTF-8, written by
/// something else) is `Corrupt` naming the message and the column, on the
/// context path and the export path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_is_corrupt_naming_message_and_column() -> Result<()> {
    with_schema("an_undecodable_row_is_corrupt_naming_message_and_column", |url, schema| async move {
        let s = store(&url, &schema, "undecodable").await?;
        let sid = s.create_session("main", Path::new("/p")).await?;
        let id = s.insert_message(&sid, &Role::User, Some("fine"), None, None, None).await?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .execute(&format!("UPDATE \"{schema}\".messages SET tool_call_id = '\\xff'::BYTEA WHERE id = $1"), &[&id])
            .await?;
        let (context, export) = (
            s.load_all_messages(&sid).await.expect_err("not UTF-8"),
            s.export_messages(&sid).await.expect_err("not UTF-8"),
        );
        for err in [context, export] {
            let said = format!("{err:#}");
            assert!(matches!(err.downcast_ref::<PersistenceError>(), Some(PersistenceError::Corrupt(_))), "{said}");
            assert!(said.contains(&format!("message {id}")) && said.contains("tool_call_id"), "{said}");
        }
        Ok(())
    })
    .await
}

/// A schema an earlier build migrated (version 4: usage not kept per
/// session) gains the usage table on the next open, counted from the
/// messages already there, exactly (a sum past `i64::MAX` included), and
/// keeps it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_counts_the_usage_a_schema_already_holds() -> Result<()> {
    with_schema("version_5_counts_the_usage_a_schema_already_holds", |url, schema| async move {
        let first = store(&url, &schema, "v5-first").await?;
        let sid = first.create_session("main", Path::new("/p")).await?;
        let other = first.create_session("main", Path::new("/p")).await?;
        let u = |p: i64, c: i64| TokenUsage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read_tokens: 1,
            cache_creation_tokens: 2,
            thinking_tokens: 3,
        };
        for (s, agent, usage) in [
            (&sid, None, Some(u(5, 1))),
            (&sid, Some("main"), Some(u(i64::MAX, 1))),
            (&sid, Some("x"), Some(u(2, 2))),
            (&sid, Some("x"), None),
            (&other, Some("y"), Some(u(9, 9))),
        ] {
            first.insert_message_with_agent(s, &Role::Assistant, Some("a"), None, None, usage.as_ref(), agent).await?;
        }
        let want = first.session_usage_by_agent(&sid).await?;
        let want_other = first.session_usage_by_agent(&other).await?;
        assert_eq!(want.len(), 2, "{want:?}");
        drop(first);
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "DROP TABLE \"{schema}\".session_usage; \
                     DELETE FROM \"{schema}\".koda_schema_history WHERE version >= 5"
            ))
            .await?;
        let again = store(&url, &schema, "v5-again").await?;
        assert_eq!(again.session_usage_by_agent(&sid).await?, want);
        assert_eq!(again.session_usage_by_agent(&other).await?, want_other);
        // Kept from here on: one more call counts.
        again.insert_message_with_agent(&sid, &Role::Assistant, Some("b"), None, None, Some(&u(1, 0)), None).await?;
        let main = again.session_usage_by_agent(&sid).await?;
        assert_eq!(main[0].0, "main");
        assert_eq!((main[0].1.prompt_tokens, main[0].1.api_calls), (i64::MAX, 3));
        assert_eq!(again.health().await?.problems, Vec::<String>::new());
        // The store's own check sees kept usage that left its rows.
        admin
            .execute(
                &format!("UPDATE \"{schema}\".session_usage SET thinking = thinking + 1 WHERE session_id = $1"),
                &[&sid],
            )
            .await?;
        let problems = again.health().await?.problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(&sid) && problems[0].contains("usage"), "{problems:?}");
        Ok(())
    })
    .await
}

/// Version 6 makes every session id column bytewise (`COLLATE "C"`) in a
/// schema version 5 left under the database's collation, keeping its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_6_compares_session_ids_bytewise() -> Result<()> {
    with_schema("version_6_compares_session_ids_bytewise", |url, schema| async move {
        const COLLATIONS: &str = "SELECT c.relname || '.' || a.attname, co.collname::TEXT
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_collation co ON co.oid = a.attcollation
                 WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0
                   AND a.attname IN ('id', 'session_id') AND a.atttypid = 'text'::regtype
                   AND c.relname NOT LIKE 'trash%' AND c.relname <> 'usage_ledger'
                 ORDER BY 1";
        // The usage ledger (version 11) is made after version 6, bytewise
        // from the start.
        const LEDGER_COLLATION: &str = "SELECT co.collname::TEXT
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_collation co ON co.oid = a.attcollation
                 WHERE n.nspname = $1 AND c.relname = 'usage_ledger' AND a.attname = 'session_id'";
        // The trash's twins (version 9) are made LIKE the live tables,
        // after version 6: they compare bytewise from the start.
        const TRASH_COLLATIONS: &str = "SELECT c.relname || '.' || a.attname, co.collname::TEXT
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_collation co ON co.oid = a.attcollation
                 WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0
                   AND a.attname IN ('id', 'session_id') AND a.atttypid = 'text'::regtype
                   AND c.relname LIKE 'trash_%'
                 ORDER BY 1";
        let first = store(&url, &schema, "v6-first").await?;
        let sid = first.create_session("main", Path::new("/p")).await?;
        first.insert_message(&sid, &Role::User, Some("kept"), None, None, None).await?;
        first.set_metadata(&sid, "todo", "x").await?;
        drop(first);
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let columns = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let all_c = |cols: [&str; 4]| -> Vec<(String, String)> {
            cols.iter().map(|c| ((*c).to_owned(), "C".to_owned())).collect()
        };
        let want =
            all_c(["messages.session_id", "session_metadata.session_id", "session_usage.session_id", "sessions.id"]);
        assert_eq!(columns(admin.query(COLLATIONS, &[&schema]).await?), want);
        let twins = all_c([
            "trash_messages.session_id",
            "trash_metadata.session_id",
            "trash_sessions.id",
            "trash_usage.session_id",
        ]);
        assert_eq!(columns(admin.query(TRASH_COLLATIONS, &[&schema]).await?), twins);
        let ledger: String = admin.query_one(LEDGER_COLLATION, &[&schema]).await?.get(0);
        assert_eq!(ledger, "C");
        // Back to what version 5 left: the database's collation.
        let mut back = String::new();
        for (table, column) in [
            ("sessions", "id"),
            ("messages", "session_id"),
            ("session_metadata", "session_id"),
            ("session_usage", "session_id"),
        ] {
            back.push_str(&format!(
                "ALTER TABLE \"{schema}\".{table} ALTER COLUMN {column} \
                     TYPE TEXT COLLATE \"default\"; "
            ));
        }
        back.push_str(&format!("DELETE FROM \"{schema}\".koda_schema_history WHERE version >= 6"));
        admin.batch_execute(&back).await?;
        let defaults = columns(admin.query(COLLATIONS, &[&schema]).await?);
        assert!(defaults.iter().all(|(_, c)| c == "default"), "{defaults:?}");
        let again = store(&url, &schema, "v6-again").await?;
        assert_eq!(columns(admin.query(COLLATIONS, &[&schema]).await?), want);
        let context = again.load_context(&sid).await?;
        assert_eq!(context.len(), 1);
        assert_eq!(context[0].content.as_deref(), Some("kept"));
        assert_eq!(again.get_metadata(&sid, "todo").await?.as_deref(), Some("x"));
        again.insert_message(&sid, &Role::User, Some("more"), None, None, None).await?;
        assert_eq!(again.load_context(&sid).await?.len(), 2);
        assert_eq!(again.health().await?.problems, Vec::<String>::new());
        Ok(())
    })
    .await
}

/// A schema an earlier build migrated (version 2, no compaction function)
/// gains it on the next open, keeps its data, and compacts; the function
/// works on its own schema whatever the caller's search path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_3_compacts_a_schema_an_earlier_build_made() -> Result<()> {
    with_schema("version_3_compacts_a_schema_an_earlier_build_made", |url, schema| async move {
        let first = store(&url, &schema, "v3-first").await?;
        let sid = first.create_session("main", Path::new("/p")).await?;
        for i in 0..6 {
            first.insert_message(&sid, &Role::User, Some(&format!("m{i}")), None, None, None).await?;
        }
        drop(first);
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // Back to what version 2 left.
        admin
            .batch_execute(&format!(
                "DROP FUNCTION \"{schema}\".kp_compact(TEXT, BYTEA, BYTEA, BIGINT, BIGINT); \
                 DROP INDEX \"{schema}\".messages_active; \
                 DROP FUNCTION \"{schema}\".kp_field; DROP FUNCTION \"{schema}\".kp_number; \
                 DROP TABLE \"{schema}\".session_usage; \
                 DELETE FROM \"{schema}\".koda_schema_history WHERE version >= 3"
            ))
            .await?;
        let again = store(&url, &schema, "v3-again").await?;
        assert_eq!(again.compact_session(&sid, "S", 2).await?, 4);
        let context: Vec<String> = again.load_context(&sid).await?.into_iter().filter_map(|m| m.content).collect();
        assert_eq!(context[0], "S");
        assert_eq!(context[context.len() - 2..], ["m4", "m5"]);
        // Called from a connection whose search path does not name the
        // schema: the function still finds its own tables.
        admin.batch_execute("SET search_path = public").await?;
        let marked: i64 =
            admin.query_one(&format!("SELECT \"{schema}\".kp_compact($1, 'T', 'hint', 0, 1)"), &[&sid]).await?.get(0);
        assert_eq!(marked, 4, "summary, hint and the two kept messages");
        let missing: i64 = admin
            .query_one(&format!("SELECT \"{schema}\".kp_compact('no-such-session', 'T', 'h', 0, 1)"), &[])
            .await?
            .get(0);
        assert_eq!(missing, -1);
        Ok(())
    })
    .await
}

/// A migration the server refuses says why: the server's words, not
/// refinery's bare "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_names_the_servers_reason() -> Result<()> {
    with_schema("a_failed_migration_names_the_servers_reason", |url, schema| async move {
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // Someone else's table where version 1 puts its own.
        admin.batch_execute(&format!("CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".sessions (x INT)")).await?;
        let err =
            store(&url, &schema, "migration-refused").await.expect_err("version 1 cannot create its sessions table");
        let text = format!("{err:#}");
        assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{text}");
        assert!(text.contains("already exists"), "{text}");
        Ok(())
    })
    .await
}

/// Every class of server error reaches the caller as its typed error: a
/// trigger raises each SQLSTATE in turn on `create_session`. Serialization
/// failures and deadlocks are retried (8 times) before `Conflict`; an
/// error no contract type fits stays untyped, with the server's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqlstate_class_is_typed() -> Result<()> {
    with_schema("every_sqlstate_class_is_typed", |url, schema| async move {
        let s = store(&url, &schema, "sqlstates").await?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "SET search_path = \"{schema}\";
                 CREATE TABLE kp_raise (code TEXT);
                 INSERT INTO kp_raise VALUES (NULL);
                 CREATE SEQUENCE kp_attempts;
                 CREATE FUNCTION kp_raise() RETURNS trigger LANGUAGE plpgsql AS $$
                 DECLARE c TEXT;
                 BEGIN
                     PERFORM nextval('kp_attempts');
                     SELECT code INTO c FROM kp_raise;
                     RAISE EXCEPTION 'planted %', c USING ERRCODE = c;
                 END $$;
                 CREATE TRIGGER kp_raise BEFORE INSERT ON sessions
                     FOR EACH ROW EXECUTE FUNCTION kp_raise();"
            ))
            .await?;
        type Want = fn(&PersistenceError) -> bool;
        let conflict: Want = |e| matches!(e, PersistenceError::Conflict(_));
        let denied: Want = |e| matches!(e, PersistenceError::PermissionDenied(_));
        let unavailable: Want = |e| matches!(e, PersistenceError::Unavailable(_));
        let cases: [(&str, Option<Want>, i64); 11] = [
            ("40001", Some(conflict), 9),
            ("40P01", Some(conflict), 9),
            ("28P01", Some(denied), 1),
            ("28000", Some(denied), 1),
            ("42501", Some(denied), 1),
            ("08006", Some(unavailable), 1),
            ("57P01", Some(unavailable), 1),
            // A standby (or a primary demoted to read-only): another host
            // may take the write, so the pool starts over.
            ("25006", Some(unavailable), 1),
            ("53300", Some(unavailable), 1),
            ("3D000", Some(unavailable), 1),
            ("23505", None, 1),
        ];
        for (code, want, attempts) in cases {
            admin.execute(&format!("UPDATE \"{schema}\".kp_raise SET code = $1"), &[&code]).await?;
            let before: i64 =
                admin.query_one(&format!("SELECT nextval('\"{schema}\".kp_attempts')"), &[]).await?.get(0);
            let err = s.create_session("main", Path::new("/p")).await.expect_err("the trigger refuses every insert");
            let after: i64 = admin.query_one(&format!("SELECT nextval('\"{schema}\".kp_attempts')"), &[]).await?.get(0);
            let text = format!("{err:#}");
            match (want, typed(&err)) {
                (Some(w), Some(t)) => assert!(w(t), "{code}: {t:?}"),
                (None, None) => {}
                (w, t) => panic!("{code}: wanted typed = {}, got {t:?}: {text}", w.is_some()),
            }
            assert!(text.contains(code) && text.contains("planted"), "{code}: {text}");
            // 08xxx/57P01 drop the pool's idle connections: still one call.
            assert_eq!(after - before - 1, attempts, "{code}: attempts");
        }
        Ok(())
    })
    .await
}

/// `claim_ids` locks out inserts while it reads and moves the id sequence
/// (else an insert between the two could take an id it grants): with
/// another transaction's insert uncommitted it waits, and goes on once
/// that transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_ids_waits_for_an_uncommitted_insert() -> Result<()> {
    use koda_persistence_api::Transfer;
    with_schema("claim_lock", |url, schema| async move {
        let s = store(&url, &schema, "claim").await?;
        let sid = s.create_session("main", Path::new("/p")).await?;
        s.insert_message(&sid, &Role::User, Some("first"), None, None, None).await?;
        let admin = support::admin(&url).await?;
        admin.batch_execute("BEGIN").await?;
        admin
            .execute(
                &format!(
                    "INSERT INTO \"{schema}\".messages (session_id, ord, role, created_ms) \
                     VALUES ($1, 99, 'user', 0)"
                ),
                &[&sid],
            )
            .await?;
        let claiming = {
            let s = s.clone();
            tokio::spawn(async move { s.claim_ids(1_000_000, 1_000_010).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!claiming.is_finished(), "claim_ids went ahead of an uncommitted insert");
        admin.batch_execute("ROLLBACK").await?;
        let granted = tokio::time::timeout(Duration::from_secs(10), claiming).await???;
        assert!(granted, "the range above every id was refused");
        Ok(())
    })
    .await
}

/// Large outputs stored once, under real concurrency: two stores (two
/// pools) keep writing the same bodies, in both field orders, while a
/// third writes them too and then deletes its session, releasing its
/// references, round after round. No write fails, no deadlock, every
/// message reads back byte for byte, and the schema's body accounting
/// equals what its rows hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shared_by_writers_survives_a_concurrent_release() -> Result<()> {
    with_schema("a_body_shared_by_writers_survives_a_concurrent_release", |url, schema| async move {
        let before = support::deadlocks(url.clone()).await?;
        let alice = store(&url, &schema, "alice").await?;
        let bob = store(&url, &schema, "bob").await?;
        // Carol deletes for good (no grace period): her deletes are
        // the releases that race the writers.
        let carol = {
            let mut o = support::options(&url, &schema)?;
            o.config.application_name("carol");
            o.trash.keep_deleted_days = Some(0);
            PostgresStore::open(o, Arc::new(SystemClock)).await?
        };
        let bodies: Vec<String> = (0..4).map(|i| format!("output {i}\n").repeat(600 + i * 100)).collect();
        let bodies = Arc::new(bodies);
        let mut writers = Vec::new();
        for (who, s) in [("alice", alice.clone()), ("bob", bob.clone())] {
            let bodies = bodies.clone();
            writers.push(tokio::spawn(async move {
                let sid = s.create_session(who, Path::new("/repo")).await?;
                let mut written = Vec::new();
                for i in 0..120usize {
                    let (a, b) = (&bodies[i % 4], &bodies[(i + 1 + usize::from(who == "bob")) % 4]);
                    let (a, b) = if i % 2 == 0 { (a, b) } else { (b, a) };
                    let id = s.insert_tool_message_with_full(&sid, a, "call", b).await?;
                    written.push((id, a.clone(), b.clone()));
                }
                anyhow::Ok((sid, written))
            }));
        }
        let releaser = {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                for round in 0..40usize {
                    let sid = carol.create_session("carol", Path::new("/repo")).await?;
                    for (i, body) in bodies.iter().enumerate() {
                        let other = &bodies[(i + round) % 4];
                        carol.insert_tool_message_with_full(&sid, body, "c", other).await?;
                    }
                    anyhow::ensure!(carol.delete_session(&sid).await?, "carol's session went");
                }
                anyhow::Ok(carol)
            })
        };
        let mut sessions = Vec::new();
        for w in writers {
            sessions.push(w.await??);
        }
        let carol = releaser.await??;
        for (sid, written) in &sessions {
            let stored = alice.load_all_messages(sid).await?;
            assert_eq!(stored.len(), written.len());
            for (m, (id, content, full)) in stored.iter().zip(written) {
                assert_eq!(m.id, *id);
                assert!(m.content.as_deref() == Some(content.as_str()), "content of {id}");
                assert!(m.full_content.as_deref() == Some(full.as_str()), "full of {id}");
            }
        }
        let health = carol.health().await?;
        assert!(health.problems.is_empty(), "{:?}", health.problems);
        assert_eq!((health.bodies.bodies, health.bodies.references), (4, 2 * 2 * 120), "{:?}", health.bodies);
        let after = support::deadlocks(url.clone()).await?;
        assert_eq!(after, before, "deadlocks while sharing bodies");
        Ok(())
    })
    .await
}

/// A message whose body does not unpack does not stop the search index:
/// the rows after it are indexed, it alone stays unindexed, and a search
/// that reaches it is `Corrupt`, as every read of it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_does_not_stop_the_search_index() -> Result<()> {
    use koda_persistence_api::SearchScope;
    with_schema("search_corrupt", |url, schema| async move {
        let s = store(&url, &schema, "search_corrupt").await?;
        let sid = s.create_session("main", Path::new("/p")).await?;
        let bad = s
            .insert_message(
                &sid,
                &Role::Tool,
                Some(&format!("needle broken {}", "x".repeat(300))),
                None,
                Some("c1"),
                None,
            )
            .await?;
        let admin = support::admin(&url).await?;
        admin.batch_execute(&format!("UPDATE \"{schema}\".bodies SET data = '\\x00'::BYTEA")).await?;
        for i in 0..600 {
            s.insert_message(&sid, &Role::User, Some(&format!("needle later {i}")), None, None, None).await?;
        }
        let hits = s.search_messages("later", &SearchScope::default(), 5).await?;
        assert_eq!(hits.len(), 5);
        let waiting: Vec<i64> = admin
            .query(&format!("SELECT id FROM \"{schema}\".messages WHERE search IS NULL"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(waiting, [bad], "only the message that does not decode waits");
        match s.search_messages("nowhere", &SearchScope::default(), 10).await {
            Ok(hits) => panic!("a search that reaches it answered {} hits", hits.len()),
            Err(e) => assert!(matches!(PersistenceError::of(&e), Some(PersistenceError::Corrupt(_))), "{e:#}"),
        }
        Ok(())
    })
    .await
}

/// A schema an earlier build migrated (before migration 11) gets its usage
/// ledger filled from the messages it holds when a later open migrates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_11_fills_the_ledger_from_the_stored_messages() -> Result<()> {
    use koda_persistence_api::Ledger;
    use koda_persistence_api::ledger::{UsageBy, UsageQuery};
    with_schema("migration_11_fills_the_ledger", |url, schema| async move {
        let s = store(&url, &schema, "ledger-before").await?;
        let sid = s.create_session("main", Path::new("/p")).await?;
        let u = TokenUsage {
            prompt_tokens: 40,
            completion_tokens: 2,
            cache_read_tokens: 1,
            cache_creation_tokens: 0,
            thinking_tokens: 3,
        };
        s.insert_message(&sid, &Role::User, Some("q"), None, None, None).await?;
        s.insert_message_with_agent(&sid, &Role::Assistant, Some("a"), None, None, Some(&u), Some("sub")).await?;
        let q =
            UsageQuery { since_ms: 0, until_ms: i64::MAX / 1000, by: UsageBy::Agent, project_root: None, agent: None };
        let want = s.usage(&q).await?;
        assert_eq!(want.len(), 2, "{want:?}");
        drop(s);
        // The schema as a build before migration 11 left it.
        let admin = support::admin(&url).await?;
        admin
            .batch_execute(&format!(
                "DROP TABLE \"{schema}\".usage_ledger; DELETE FROM \"{schema}\".koda_schema_history WHERE version = 11;"
            ))
            .await?;
        let s = store(&url, &schema, "ledger-after").await?;
        assert_eq!(s.usage(&q).await?, want, "filled from the messages");
        Ok(())
    })
    .await
}
