//! Where fresh stores come from: one per workload, so workloads never see
//! each other's data. A target is a store URL; `sqlite://` and `sled://`
//! paths are directories in which each workload gets its own file or
//! directory, `postgres://` gets a fresh schema per workload (dropped after).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use koda_persistence::sled::{Sled, SledOptions};
use koda_persistence::sqlite::{Sqlite, SqliteOptions};
use koda_persistence::{Store, StoreUrl, SystemClock, open_options, secrets};

/// One backend configuration under test.
#[derive(Debug, Clone)]
pub enum Target {
    Memory,
    Sqlite { dir: PathBuf, options: SqliteOptions, redact: bool },
    Sled { dir: PathBuf, options: SledOptions, redact: bool },
    Postgres { url: String },
}

/// `store`, with redaction mode secrets recorded when `redact`.
async fn redacting(store: Arc<dyn Store>, redact: bool) -> Result<Arc<dyn Store>> {
    if !redact {
        return Ok(store);
    }
    koda_persistence::redaction::with_redaction(store, Some(secrets::RedactMode::Secrets)).await
}

/// A fresh store and what to do when done with it.
pub struct Fresh {
    pub store: Arc<dyn Store>,
    /// The SQLite file, for the ceiling to read the same data.
    pub sqlite_path: Option<PathBuf>,
    /// The Postgres schema, likewise.
    pub pg_schema: Option<String>,
}

impl Target {
    /// Parses a store URL into a target; `base` holds scratch directories.
    /// Parameters go through each backend's own URL parser, so a target
    /// runs with exactly the options its URL names.
    pub fn parse(url: &str, base: &std::path::Path) -> Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        // `redact=secrets`: each fresh store records redaction mode
        // secrets (W1 with redaction against the same target without).
        let redact = match parsed.take(secrets::REDACT) {
            Some(p) => secrets::RedactMode::parse(&p.value)? == secrets::RedactMode::Secrets,
            None => false,
        };
        if redact && !matches!(parsed.scheme(), "sqlite" | "sled") {
            bail!("redact= is for sqlite:// and sled:// bench targets");
        }
        let target = match parsed.scheme() {
            "memory" => Target::Memory,
            "sqlite" => {
                let options = SqliteOptions::default().with_parameters(&parsed)?;
                let dir = match parsed.path()? {
                    d if d.is_empty() => base.join(format!("sqlite-{:?}", options.synchronous)),
                    d => PathBuf::from(d),
                };
                Target::Sqlite { dir, options, redact }
            }
            "sled" => {
                let options = SledOptions::default().with_parameters(&parsed)?;
                let dir = match parsed.path()? {
                    d if d.is_empty() => base.join("sled"),
                    d => PathBuf::from(d),
                };
                Target::Sled { dir, options, redact }
            }
            // The server's own parser reads the rest when each store opens.
            "postgres" | "postgresql" => {
                parsed.take_rest();
                Target::Postgres { url: url.to_owned() }
            }
            _ => bail!(
                "unsupported bench target {:?}: use memory:, sqlite://[DIR][?synchronous=full], \
                 sled://[DIR] or postgres://…",
                parsed.scheme()
            ),
        };
        parsed.finish("bench target")?;
        Ok(target)
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Target::Memory => "memory".into(),
            Target::Sqlite { options, redact, .. } => {
                format!(
                    "sqlite ({}{}{})",
                    format!("{:?}", options.synchronous).to_uppercase(),
                    if options.key_file.is_some() { ", encrypted" } else { "" },
                    if *redact { ", redact" } else { "" }
                )
            }
            Target::Sled { options, redact, .. } => {
                format!(
                    "sled ({:?}{}{})",
                    options.flush,
                    if options.key_file.is_some() { ", encrypted" } else { "" },
                    if *redact { ", redact" } else { "" }
                )
            }
            Target::Postgres { .. } => "postgres".into(),
        }
    }

    /// A fresh, empty store for workload `tag`.
    pub async fn fresh(&self, tag: &str) -> Result<Fresh> {
        match self {
            Target::Memory => {
                Ok(Fresh { store: koda_persistence::open("memory:").await?, sqlite_path: None, pg_schema: None })
            }
            Target::Sqlite { dir, options, redact } => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{tag}-{}.db", uuid::Uuid::now_v7().simple()));
                let options = SqliteOptions {
                    location: koda_persistence::sqlite::Location::File(path.clone()),
                    ..options.clone()
                };
                let store = redacting(open_options::<Sqlite>(options, Arc::new(SystemClock)).await?, *redact).await?;
                Ok(Fresh { store, sqlite_path: Some(path), pg_schema: None })
            }
            Target::Sled { dir, options, redact } => {
                let path = dir.join(format!("{tag}-{}", uuid::Uuid::now_v7().simple()));
                let options = SledOptions { path, ..options.clone() };
                let store = redacting(open_options::<Sled>(options, Arc::new(SystemClock)).await?, *redact).await?;
                Ok(Fresh { store, sqlite_path: None, pg_schema: None })
            }
            Target::Postgres { url } => {
                let schema = scratch_schema(tag);
                let sep = if url.contains('?') { '&' } else { '?' };
                let store = koda_persistence::open(&format!("{url}{sep}schema={schema}")).await?;
                Ok(Fresh { store, sqlite_path: None, pg_schema: Some(schema) })
            }
        }
    }

    /// Drops what `fresh` made outside the process (Postgres schemas).
    pub async fn cleanup(&self, fresh: Fresh) -> Result<()> {
        let Fresh { store, pg_schema, .. } = fresh;
        drop(store);
        if let (Target::Postgres { url }, Some(schema)) = (self, pg_schema) {
            let (client, conn) =
                tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("admin connection for cleanup")?;
            tokio::spawn(conn);
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
        }
        // Let store threads finish closing files before the next workload.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// This run's mark in the names of the PostgreSQL schemas it makes.
fn run_mark() -> &'static str {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| uuid::Uuid::now_v7().simple().to_string()[20..].to_owned())
}

/// A fresh PostgreSQL schema name for `tag` (a short `[a-z0-9_]` label),
/// marked with this run, so [`sweep_schemas`] finds it if the workload
/// that made it fails before dropping it.
pub fn scratch_schema(tag: &str) -> String {
    format!("kp_bench_{}_{tag}_{}", run_mark(), &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Drops every schema this run made and left (a workload that failed
/// midway returns before its own cleanup); returns how many.
pub async fn sweep_schemas(url: &str) -> Result<usize> {
    let (client, conn) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("admin connection for the final cleanup")?;
    tokio::spawn(conn);
    let pattern = format!("kp\\_bench\\_{}\\_%", run_mark());
    let left: Vec<String> = client
        .query("SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE $1", &[&pattern])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for schema in &left {
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    }
    Ok(left.len())
}
