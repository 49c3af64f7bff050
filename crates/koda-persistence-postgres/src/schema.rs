//! The schema: refinery migrations (`migrations/V*.sql`, embedded in the
//! build, applied at open under a per-schema advisory lock) and the grants a
//! least-privilege runtime role needs.

use anyhow::Result;
use koda_persistence_api::PersistenceError;

use crate::error::classify;
use crate::exec::connect_once;
use crate::options::{PostgresOptions, check_schema_name};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The newest migration this build carries.
pub(crate) fn latest_migration() -> i64 {
    embedded::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
}

/// Creates the schema if needed and applies pending migrations, holding a
/// per-schema advisory lock so concurrent first connections do it once.
pub(crate) async fn migrate(options: &PostgresOptions) -> Result<()> {
    let mut client = connect_once(options).await?;
    // Nothing pending: no lock, no DDL (a runtime role that may not run
    // DDL opens an up-to-date schema without migrate=false). A role that
    // may not even read the schema is told so here: migrating would only
    // fail less clearly.
    let schema = options.schema_name();
    let current =
        match client.query_opt(&format!("SELECT MAX(version) FROM \"{schema}\".koda_schema_history"), &[]).await {
            Ok(row) => row.and_then(|r| r.try_get::<_, Option<i32>>(0).ok().flatten()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(crate::error::schema_refused(schema, classify(e, "reading the schema version")).into());
            }
            // No schema or no history yet: migrate.
            Err(_) => None,
        };
    if current.is_some_and(|v| i64::from(v) >= latest_migration()) {
        return Ok(());
    }
    let key = format!("koda-persistence:{}", options.schema.as_deref().unwrap_or(""));
    client
        .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(|e| classify(e, "taking the migration lock"))?;
    let outcome = async {
        if let Some(schema) = &options.schema {
            // Only when missing: CREATE SCHEMA IF NOT EXISTS checks the
            // CREATE privilege on the database even when the schema exists.
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
                .await
                .map_err(|e| classify(e, "looking up the schema"))?
                .is_some();
            if !exists {
                client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                    .await
                    .map_err(|e| classify(e, "creating the schema"))?;
            }
        }
        let report = embedded::migrations::runner()
            .set_migration_table_name("koda_schema_history")
            .run_async(&mut client)
            .await
            .map_err(|e| migration_error(&e, options.schema_name()))?;
        for m in report.applied_migrations() {
            tracing::info!(
                schema = options.schema_name(),
                version = m.version(),
                name = m.name(),
                "applied a PostgreSQL migration"
            );
        }
        anyhow::Ok(())
    }
    .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(|e| classify(e, "releasing the migration lock"));
    outcome.and(unlocked.map(|_| ()))
}

/// The SQL that lets `role` use the store in `schema` and nothing more:
/// `USAGE` on the schema; `SELECT, INSERT, UPDATE, DELETE` on its tables;
/// `USAGE, SELECT, UPDATE` on its sequences (`UPDATE` only because an
/// import that keeps message ids moves the id sequence past them); the
/// same for tables a later migration adds (default privileges of the role
/// that runs this, which should be the one that migrates). No `CREATE`
/// anywhere: open such a store with `migrate=false`, after the schema was
/// migrated by its owner.
///
/// ```sql
/// GRANT USAGE ON SCHEMA "team_a" TO "koda_team_a";
/// GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "team_a" TO "koda_team_a";
/// GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA "team_a" TO "koda_team_a";
/// ALTER DEFAULT PRIVILEGES IN SCHEMA "team_a"
///     GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "koda_team_a";
/// ALTER DEFAULT PRIVILEGES IN SCHEMA "team_a"
///     GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO "koda_team_a";
/// ```
///
/// # Errors
/// `InvalidInput` when either name is not a plain identifier (see
/// [`check_schema_name`]).
pub fn grant_sql(schema: &str, role: &str) -> Result<String, PersistenceError> {
    check_schema_name(schema)?;
    check_schema_name(role).map_err(|_| {
        PersistenceError::InvalidInput(format!(
            "role name {role:?} must be a letter or _ then letters, digits or _, at most 63 bytes"
        ))
    })?;
    Ok(format!(
        "GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\";\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\";\n\
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\";\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA \"{schema}\"\n    \
         GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"{role}\";\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA \"{schema}\"\n    \
         GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO \"{role}\";\n"
    ))
}

/// A failed migration as a typed error: refinery's text ends at "db
/// error", so the server's words are taken from down the source chain; a
/// missing privilege (SQLSTATE 42501: a role that may not run DDL here)
/// is `PermissionDenied`, anything else `Unavailable`.
fn migration_error(e: &refinery::Error, schema: &str) -> PersistenceError {
    let mut text = format!("migrating schema {schema:?}: {e}");
    let mut denied = false;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        if let Some(pg) = c.downcast_ref::<tokio_postgres::Error>()
            && pg.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        {
            denied = true;
        }
        cause = c.source();
    }
    if denied {
        PersistenceError::PermissionDenied(format!(
            "{text} (this role may not run DDL on the schema: migrate it once as its owner, \
             e.g. koda-store migrate, then open with migrate=false; or open the schema this role \
             was granted)"
        ))
    } else {
        PersistenceError::Unavailable(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_only_the_schema_and_role() {
        let sql = grant_sql("team_a", "koda_a").expect("valid names");
        assert!(sql.contains("GRANT USAGE ON SCHEMA \"team_a\" TO \"koda_a\";"));
        assert!(!sql.contains("CREATE"), "{sql}");
        assert!(grant_sql("team_a", "x\"; DROP TABLE y; --").is_err());
        assert!(grant_sql("pg_catalog", "koda_a").is_err());
    }
}
