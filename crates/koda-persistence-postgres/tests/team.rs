//! Team deployments: opening through a transaction-mode PgBouncer, least
//! privilege (`migrate=false`, the documented grants, one team refused
//! another's schema). The conformance suite itself runs through PgBouncer
//! (`conformance_pgbouncer.rs`) and under a runtime role
//! (`conformance_runtime_role.rs`).

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence_api::{Persistence, PersistenceError, Role, SystemClock};
use koda_persistence_conformance::skip_or_fail;
use koda_persistence_postgres::PostgresStore;

fn typed(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

/// Runs `body` against a server and a fresh schema, dropping it afterwards.
async fn with_schema<F, Fut>(name: &str, body: F) -> Result<()>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let url = match support::server_url().await {
        Ok(url) => url,
        Err(e) => return skip_or_fail(name, e),
    };
    let schema = support::fresh_schema();
    let outcome = body(url.clone(), schema.clone()).await;
    let dropped = support::drop_schema(&url, &schema).await;
    outcome.and(dropped)
}

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
        let err = PostgresStore::connect_with(options, Arc::new(SystemClock))
            .await
            .expect_err("an unmigrated schema must not open through the pooler");
        let said = format!("{err:#}");
        assert!(
            matches!(typed(&err), Some(PersistenceError::Unavailable(_))),
            "{said}"
        );
        assert!(said.contains(&schema), "names the schema: {said}");
        assert!(said.contains("koda-store migrate"), "names the fix: {said}");
        assert!(
            !schema_exists(&url, &schema).await?,
            "no DDL through the pooler"
        );
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
        drop(
            PostgresStore::connect_with(support::options(&url, &schema)?, Arc::new(SystemClock))
                .await?,
        );
        // As an older build left it: versions 3 and 4 not applied.
        support::admin(&url)
            .await?
            .batch_execute(&format!(
                "DELETE FROM \"{schema}\".koda_schema_history WHERE version > 2"
            ))
            .await?;
        let err = PostgresStore::connect_with(options.clone(), Arc::new(SystemClock))
            .await
            .expect_err("a schema behind this build must not open through the pooler");
        let said = format!("{err:#}");
        assert!(said.contains("version 2"), "{said}");
        assert!(said.contains("koda-store migrate"), "{said}");
        // The fix: migrate over a direct URL (it re-applies 3 and 4, so
        // their objects go first, as an older build never had them), then
        // the pooler URL opens and works.
        support::admin(&url)
            .await?
            .batch_execute(&format!(
                "DROP FUNCTION \"{schema}\".kp_compact; DROP FUNCTION \"{schema}\".kp_field; \
                 DROP FUNCTION \"{schema}\".kp_number; DROP INDEX \"{schema}\".messages_active"
            ))
            .await?;
        drop(
            PostgresStore::connect_with(support::options(&url, &schema)?, Arc::new(SystemClock))
                .await?,
        );
        let store = PostgresStore::connect_with(options, Arc::new(SystemClock)).await?;
        let s = store.create_session("main", Path::new("/repo")).await?;
        store
            .insert_message(&s, &Role::User, Some("hi"), None, None, None)
            .await?;
        assert_eq!(store.load_context(&s).await?.len(), 1);
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
        let err = PostgresStore::connect_with(o, Arc::new(SystemClock))
            .await
            .expect_err("a missing schema must not open with migrate=false");
        let said = format!("{err:#}");
        assert!(said.contains("koda-store migrate"), "{said}");
        assert!(
            !schema_exists(&url, &schema).await?,
            "migrate=false created the schema"
        );
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
            drop(
                PostgresStore::connect_with(support::options(&url, s)?, Arc::new(SystemClock))
                    .await?,
            );
        }
        let owner_b =
            PostgresStore::connect_with(support::options(&url, &team_b)?, Arc::new(SystemClock))
                .await?;
        let secret = owner_b.create_session("main", Path::new("/b")).await?;
        owner_b
            .insert_message(&secret, &Role::User, Some("team b only"), None, None, None)
            .await?;
        let (role, password) = support::runtime_role(&url, &team_a).await?;
        let checked = async {
            for migrate in [false, true] {
                let mut o = support::role_options(&url, &team_b, &role, &password)?;
                o.migrate = migrate;
                let err = PostgresStore::connect_with(o, Arc::new(SystemClock))
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
            let own = PostgresStore::connect_with(
                support::role_options(&url, &team_a, &role, &password)?,
                Arc::new(SystemClock),
            )
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
            assert_eq!(
                ddl.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
            );
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
