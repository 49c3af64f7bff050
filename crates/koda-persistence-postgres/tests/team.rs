//! Team deployments: opening through a transaction-mode PgBouncer, least
//! privilege (`migrate=false`, the documented grants, one team refused
//! another's schema). The conformance suite itself runs through PgBouncer
//! (`conformance_pgbouncer.rs`) and under a runtime role
//! (`conformance_runtime_role.rs`).

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use koda_persistence_api::{Health, Persistence, PersistenceError, Role, SystemClock};
use koda_persistence_conformance::skip_or_fail;
use koda_persistence_postgres::PostgresStore;

use support::{typed, with_schema};

async fn schema_exists(url: &str, schema: &str) -> Result<bool> {
    Ok(support::admin(url)
        .await?
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some())
}

/// Through the pooler, a schema nobody migrated is an error that says to
/// migrate over a direct URL, and opening creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_refuses_an_unmigrated_schema_and_names_the_fix() -> Result<()> {
    with_schema("pooler_unmigrated", |url, schema| async move {
        let options = match support::bouncer_options(&schema).await {
            Ok(o) => o,
            Err(e) => return skip_or_fail("pooler_unmigrated", e),
        };
        let err = PostgresStore::open(options, Arc::new(SystemClock))
            .await
            .expect_err("an unmigrated schema must not open through the pooler");
        let said = format!("{err:#}");
        assert!(matches!(typed(&err), Some(PersistenceError::Unavailable(_))), "{said}");
        assert!(said.contains(&format!("schema {schema:?}")), "names the schema: {said}");
        assert!(said.contains("koda-store migrate"), "names the fix: {said}");
        assert!(!schema_exists(&url, &schema).await?, "no DDL through the pooler");
        Ok(())
    })
    .await
}

/// Through the pooler, a schema behind this build is refused with both
/// versions named; once migrated directly, the same URL opens and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_refuses_a_schema_behind_this_build() -> Result<()> {
    with_schema("pooler_behind", |url, schema| async move {
        let options = match support::bouncer_options(&schema).await {
            Ok(o) => o,
            Err(e) => return skip_or_fail("pooler_behind", e),
        };
        drop(PostgresStore::open(support::options(&url, &schema)?, Arc::new(SystemClock)).await?);
        // As an older build left it: versions 3 to 5 not applied.
        support::admin(&url)
            .await?
            .batch_execute(&format!(
                "DELETE FROM \"{schema}\".koda_schema_history WHERE version > 2"
            ))
            .await?;
        let err = PostgresStore::open(options.clone(), Arc::new(SystemClock))
            .await
            .expect_err("a schema behind this build must not open through the pooler");
        let said = format!("{err:#}");
        assert!(said.contains("version 2"), "{said}");
        assert!(said.contains("koda-store migrate"), "{said}");
        // The fix: migrate over a direct URL (it re-applies 3 to 5, so
        // their objects go first, as an older build never had them), then
        // the pooler URL opens and works.
        support::admin(&url)
            .await?
            .batch_execute(&format!(
                "DROP FUNCTION \"{schema}\".kp_compact(TEXT, BYTEA, BYTEA, BIGINT, BIGINT); DROP FUNCTION \"{schema}\".kp_field; \
                 DROP FUNCTION \"{schema}\".kp_number; DROP INDEX \"{schema}\".messages_active; \
                 DROP TABLE \"{schema}\".session_usage"
            ))
            .await?;
        drop(PostgresStore::open(support::options(&url, &schema)?, Arc::new(SystemClock)).await?);
        let store = PostgresStore::open(options, Arc::new(SystemClock)).await?;
        let s = store.create_session("main", Path::new("/repo")).await?;
        store
            .insert_message(&s, &Role::User, Some("hi"), None, None, None)
            .await?;
        assert_eq!(store.load_context(&s).await?.len(), 1);
        // Its health, through the pooler, measures the right schema.
        let health = store.health().await?;
        assert!(
            health.size_bytes.is_some_and(|b| b > 0),
            "no size for schema {schema}: {health:?}"
        );
        Ok(())
    })
    .await
}

/// `migrate=false` on a direct URL never runs DDL: a missing schema stays
/// missing and the error names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_false_never_creates_or_migrates() -> Result<()> {
    with_schema("migrate_false", |url, schema| async move {
        let mut o = support::options(&url, &schema)?;
        o.migrate = false;
        let err = PostgresStore::open(o, Arc::new(SystemClock))
            .await
            .expect_err("a missing schema must not open with migrate=false");
        let said = format!("{err:#}");
        assert!(said.contains("koda-store migrate"), "{said}");
        assert!(!schema_exists(&url, &schema).await?, "migrate=false created the schema");
        Ok(())
    })
    .await
}

/// A role granted team A's schema that opens team B's gets
/// `PermissionDenied` naming team B's schema, with and without
/// `migrate=false`, and reads nothing of it; its own schema works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_role_is_refused_another_teams_schema() -> Result<()> {
    let url = match support::server_url().await {
        Ok(url) => url,
        Err(e) => return skip_or_fail("cross_team", e),
    };
    let (team_a, team_b) = (support::fresh_schema(), support::fresh_schema());
    let outcome = async {
        for s in [&team_a, &team_b] {
            drop(PostgresStore::open(support::options(&url, s)?, Arc::new(SystemClock)).await?);
        }
        let owner_b = PostgresStore::open(support::options(&url, &team_b)?, Arc::new(SystemClock)).await?;
        let secret = owner_b.create_session("main", Path::new("/b")).await?;
        owner_b.insert_message(&secret, &Role::User, Some("team b only"), None, None, None).await?;
        let (role, password) = support::runtime_role(&url, &team_a).await?;
        let checked = async {
            for migrate in [false, true] {
                let mut o = support::role_options(&url, &team_b, &role, &password)?;
                o.migrate = migrate;
                let err = PostgresStore::open(o, Arc::new(SystemClock))
                    .await
                    .expect_err("team A's role opened team B's schema");
                let said = format!("{err:#}");
                assert!(
                    matches!(typed(&err), Some(PersistenceError::PermissionDenied(_))),
                    "migrate={migrate}: {said}"
                );
                assert!(said.contains(&team_b), "names the schema: {said}");
            }
            // Its own schema: works, and holds nothing of team B's.
            let own =
                PostgresStore::open(support::role_options(&url, &team_a, &role, &password)?, Arc::new(SystemClock))
                    .await?;
            assert!(own.load_all_messages(&secret).await?.is_empty());
            assert!(own.list_sessions(10, Path::new("/b")).await?.is_empty());
            assert!(own.recent_user_messages(10).await?.is_empty());
            // And it may not run DDL in its own schema either.
            let direct = support::admin(&support::role_url(&url, &role, &password)?).await?;
            let ddl = direct
                .batch_execute(&format!("CREATE TABLE \"{team_a}\".intruder (x INT)"))
                .await
                .expect_err("the runtime role created a table");
            assert_eq!(ddl.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
            anyhow::Ok(())
        }
        .await;
        let dropped = support::drop_role(&url, &role).await;
        checked.and(dropped)
    }
    .await;
    let a = support::drop_schema(&url, &team_a).await;
    let b = support::drop_schema(&url, &team_b).await;
    outcome.and(a).and(b)
}

/// One write of the failover test: when it started (since the test's
/// start), how long it took, and what it stored or why it failed.
struct Write {
    at: Duration,
    took: Duration,
    outcome: Result<String, anyhow::Error>,
}

/// A primary with a synchronous streaming standby on loopback; one store
/// on a two-host URL (`target_session_attrs=read-write`) writes
/// continuously; the primary is killed (`pg_ctl stop -m immediate`) and
/// the standby promoted. Calls in flight fail `Unavailable` and none
/// takes longer than the configured timeouts allow; the same store
/// (not reopened) writes on the promoted server within 10 s of the kill;
/// every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_standby_keeps_every_acknowledged_write() -> Result<()> {
    let servers = tokio::task::spawn_blocking(support::replicated_pair).await?;
    let (primary, standby) = match servers {
        Ok(s) => s,
        Err(e) => return skip_or_fail("failover", e),
    };
    // Synchronous before any write: a commit returns only once the
    // standby has it.
    let admin = support::admin(&primary.url()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Option<String> = admin
            .query_opt("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'", &[])
            .await?
            .map(|r| r.get(0));
        if state.as_deref() == Some("sync") {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never became synchronous ({state:?}): {}", standby.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(admin);
    let (connect_ms, pool_ms) = (1_000u64, 2_000u64);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write\
         &connect_timeout_ms={connect_ms}&pool_timeout_ms={pool_ms}&sslmode=disable",
        primary.port(),
        standby.port()
    );
    let store = PostgresStore::open_url(&url, Arc::new(SystemClock)).await?;
    let sid = store.create_session("main", Path::new("/failover")).await?;

    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, sid, stop) = (store.clone(), sid.clone(), stop.clone());
        tokio::spawn(async move {
            let mut writes = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let text = format!("write {n}");
                let at = start.elapsed();
                let t = Instant::now();
                let outcome =
                    store.insert_message(&sid, &Role::User, Some(&text), None, None, None).await.map(|_| text);
                writes.push(Write { at, took: t.elapsed(), outcome });
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let killed_at = start.elapsed();
    let primary = tokio::task::spawn_blocking(move || primary.stop_immediate().map(|()| primary)).await??;
    // Writes that started before the primary was gone may still have
    // succeeded there.
    let dead_at = start.elapsed();
    let standby = tokio::task::spawn_blocking(move || standby.promote().map(|()| standby)).await??;
    let promoted_at = start.elapsed();
    // Write on for a while on the promoted server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await?;

    let acked: Vec<&String> = writes.iter().filter_map(|w| w.outcome.as_ref().ok()).collect();
    let before = writes.iter().filter(|w| w.at < killed_at && w.outcome.is_ok()).count();
    let resumed = writes.iter().find(|w| w.at >= dead_at && w.outcome.is_ok()).map(|w| w.at + w.took - killed_at);
    let failed: Vec<&Write> = writes.iter().filter(|w| w.outcome.is_err()).collect();
    let slowest = writes.iter().map(|w| w.took).max().unwrap_or_default();
    println!(
        "failover: {} writes, {before} acknowledged before the kill, {} failed, \
         resumed {resumed:?} after the kill (stopping took {:?}, promoting {:?}), slowest call \
         {slowest:?}",
        writes.len(),
        failed.len(),
        dead_at - killed_at,
        promoted_at - dead_at
    );
    assert!(before > 10, "too few writes before the kill: {before}");
    let resumed = resumed.expect("the store never wrote on the promoted server");
    assert!(resumed <= Duration::from_secs(10), "resumed only {resumed:?} after the kill");
    assert!(
        writes.iter().filter(|w| w.at > killed_at + resumed).all(|w| w.outcome.is_ok()),
        "writes failed after the store had resumed"
    );
    for e in failed.iter().filter_map(|w| w.outcome.as_ref().err()) {
        assert!(matches!(typed(e), Some(PersistenceError::Unavailable(_))), "a failed call was not Unavailable: {e:#}");
    }
    // A call may wait for a pooled connection (pool timeout) and open one
    // (connect timeout per host, two hosts): nothing past that, plus slack.
    let bound = Duration::from_millis(pool_ms + 2 * connect_ms + 1_000);
    assert!(slowest <= bound, "a call took {slowest:?} (bound {bound:?})");

    // Every acknowledged write is on the promoted server, in order.
    let on_standby = PostgresStore::open_url(&standby.url(), Arc::new(SystemClock)).await?;
    let stored: Vec<String> = on_standby.load_all_messages(&sid).await?.into_iter().filter_map(|m| m.content).collect();
    // A call that failed may still have committed (its acknowledgement
    // was lost with the primary): the trait's rustdoc calls it in doubt.
    let in_doubt = writes.iter().filter(|w| w.outcome.is_err()).count();
    let failed_but_stored = stored.len().saturating_sub(acked.len());
    println!("failover: {failed_but_stored} of {in_doubt} failed writes are stored anyway");
    let mut next = stored.iter();
    for a in &acked {
        assert!(next.any(|s| s == *a), "acknowledged {a:?} is missing (or out of order) on the promoted server");
    }
    tokio::task::spawn_blocking(move || {
        drop(primary);
        drop(standby);
    })
    .await?;
    Ok(())
}

/// 200 koda processes (stores with `pool_size=2`) through a PgBouncer
/// allowed 20 server connections run agent turns for a few seconds
/// (`KODA_TEAM_LOAD_SECONDS`, default 5; the benchmark's W11 runs 30):
/// zero errors, and every session holds exactly what its client wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_through_the_pooler_lose_nothing() -> Result<()> {
    with_schema("team_load", |url, schema| async move {
        let mut options = match support::bouncer_options(&schema).await {
            Ok(o) => o,
            Err(e) => return skip_or_fail("team_load", e),
        };
        drop(PostgresStore::open(support::options(&url, &schema)?, Arc::new(SystemClock)).await?);
        options.pool_size = 2;
        let seconds = std::env::var("KODA_TEAM_LOAD_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(5.0);
        let open = || {
            let options = options.clone();
            async move {
                let store = PostgresStore::open(options, Arc::new(SystemClock)).await?;
                Ok(Arc::new(store) as Arc<dyn Persistence>)
            }
        };
        let run = support::team_load::run_one("through pgbouncer", open, 200, seconds).await?;
        println!(
            "team load: {} clients, {} turns in {:.1} s, p50 {:?}, p99 {:?}, {} errors",
            run.opened, run.turns, run.seconds, run.p50, run.p99, run.errors
        );
        assert_eq!(run.opened, 200, "{:?}", run.first_error);
        assert_eq!(run.errors, 0, "{:?}", run.first_error);
        assert!(run.counts_exact, "a session does not hold what its client wrote");
        assert!(run.turns >= 200, "fewer turns than clients: {}", run.turns);
        Ok(())
    })
    .await
}
