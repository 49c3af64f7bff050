//! W11: a team on one PostgreSQL. `clients` simulated koda processes, each
//! its own store (`pool_size=2`), run agent turns for a while: insert the
//! user's message, the assistant's answer with a tool call, the tool's
//! result, mark the answer complete, load the context. Once through a
//! PgBouncer in transaction mode allowed 20 server connections (started
//! here from Debian's package), once straight to the server. Reports
//! turns, p50/p99 turn latency and errors; checks the final counts.

use std::sync::Arc;

use anyhow::Result;
use koda_persistence::SystemClock;
use koda_persistence::postgres::{Pooler, Postgres};
use koda_persistence::{Persistence, open_options, options_of};

use crate::pgbouncer::PgBouncer;
pub use crate::team_load::LoadRun as W11Run;
use crate::team_load::run_one;

/// Server connections the pooler may open.
pub const SERVER_CONNECTIONS: usize = 20;

/// Runs W11 against the server of `url`: through a PgBouncer of its own,
/// then directly, each on a fresh schema (dropped afterwards).
pub async fn run(url: &str, clients: usize, seconds: f64) -> Result<Vec<W11Run>> {
    let base = options_of::<Postgres>(url)?;
    let bouncer = {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || PgBouncer::start(&url, SERVER_CONNECTIONS, &[])).await??
    };
    let mut runs = Vec::new();
    for (name, through) in [("through pgbouncer", true), ("direct", false)] {
        let schema = crate::targets::scratch_schema("w11");
        let mut direct = base.clone();
        direct.schema = Some(schema.clone());
        drop(open_options::<Postgres>(direct.clone(), Arc::new(SystemClock)).await?);
        let mut options = if through {
            let mut o = options_of::<Postgres>(&bouncer.url())?;
            o.schema = Some(schema.clone());
            o
        } else {
            direct
        };
        anyhow::ensure!(
            (options.pooler == Pooler::Transaction) == through,
            "W11: the pooler URL must carry pooler=transaction"
        );
        options.pool_size = 2;
        let open = || {
            let options = options.clone();
            async move {
                let store = open_options::<Postgres>(options, Arc::new(SystemClock)).await?;
                Ok(store as Arc<dyn Persistence>)
            }
        };
        let outcome = run_one(name, open, clients, seconds).await;
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
        runs.push(outcome?);
    }
    Ok(runs)
}
