//! Finding a PostgreSQL server for the tests, and giving each test its own
//! schema.
//!
//! 1. `KODA_TEST_POSTGRES_URL` names a server: use it.
//! 2. Otherwise start a throwaway server from the locally installed
//!    PostgreSQL binaries (`/usr/lib/postgresql/*/bin`), as an unprivileged
//!    user when running as root, on a free port; it stops when the test
//!    process exits.
//! 3. Otherwise fail with the command that fixes it, unless the user set
//!    `KODA_SKIP_POSTGRES=1` (and CI's `KODA_REQUIRE_POSTGRES=1` is not set):
//!    then every Postgres test prints `SKIPPED` and does not run.

#![allow(dead_code, clippy::expect_used, clippy::panic)]

pub mod pgbouncer;
pub mod team_load;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use koda_persistence_api::ManualClock;
use koda_persistence_api::backend::{open_checked, options_of};
use koda_persistence_conformance::{Factory, Fixture, Skipped};
use koda_persistence_postgres::{Pooler, Postgres, PostgresOptions, PostgresStore};
use tokio::sync::OnceCell;

static SERVER: OnceCell<Result<String, String>> = OnceCell::const_new();

const FIX: &str = "no PostgreSQL server for the tests. Either point the tests at one:\n  \
    docker compose up -d --wait && export KODA_TEST_POSTGRES_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres\n\
    or install PostgreSQL locally so the tests can start a throwaway server:\n  \
    sudo apt-get install -y postgresql\n\
    or skip the PostgreSQL tests explicitly: KODA_SKIP_POSTGRES=1";

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The URL of a server for the tests, or `Skipped` when the user opted out.
pub async fn server_url() -> Result<String> {
    if let Ok(url) = std::env::var("KODA_TEST_POSTGRES_URL")
        && !url.trim().is_empty()
    {
        return Ok(url);
    }
    let started = SERVER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(start_throwaway)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
        })
        .await;
    match started {
        Ok(url) => Ok(url.clone()),
        Err(why) if env_flag("KODA_SKIP_POSTGRES") && !env_flag("KODA_REQUIRE_POSTGRES") => Err(Skipped(format!(
            "PostgreSQL tests skipped by KODA_SKIP_POSTGRES=1 (no KODA_TEST_POSTGRES_URL; throwaway server: {why})"
        ))
        .into()),
        Err(why) => bail!("{FIX}\n(throwaway server could not start: {why})"),
    }
}

fn find_bin() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    dirs.pop().ok_or_else(|| anyhow!("no initdb under /usr/lib/postgresql/*/bin"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `argv` as the unprivileged user when we are root (initdb refuses root).
fn as_user(argv: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).args(argv);
        c
    } else {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

/// Makes `dir` (owned by the unprivileged user when we are root) and an
/// initialised cluster with trust auth in `dir/data`.
fn init_cluster(bin: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    if is_root() && !Command::new("chown").args(["-R", "nobody", &dir.to_string_lossy()]).status()?.success() {
        bail!("cannot hand {} to user nobody", dir.display());
    }
    let data = dir.join("data");
    let out = as_user(&[
        &bin.join("initdb").to_string_lossy(),
        "-D",
        &data.to_string_lossy(),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    ])
    .output()?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(data)
}

fn start_throwaway() -> Result<String> {
    let bin = find_bin()?;
    let dir = std::env::temp_dir().join(format!("koda-pg-test-{}", std::process::id()));
    let data = init_cluster(&bin, &dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let postgres = bin.join("postgres");
    // The server lives as long as this test process: a watchdog shell stops
    // it (and removes its files) once our pid is gone.
    let script = format!(
        "'{pg}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c max_connections=200 >'{dir}/log' 2>&1 & pid=$!; \
         while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; \
         kill $pid 2>/dev/null; wait $pid; rm -rf '{dir}'",
        pg = postgres.display(),
        data = data.display(),
        dir = dir.display(),
        parent = std::process::id(),
    );
    as_user(&["sh", "-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            println!("started a throwaway PostgreSQL ({}) on 127.0.0.1:{port}", bin.display());
            return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    bail!("the throwaway server did not accept connections within 30 s: {log}")
}

/// A PostgreSQL server of this test's own, from the installed binaries,
/// that the test may stop and start again. Removed when dropped.
pub struct PrivateServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Server settings (`-c name=value …`) beyond the defaults below.
    extra: String,
}

impl PrivateServer {
    /// Initialises and starts a server on a free port.
    pub fn start() -> Result<Self> {
        Self::start_with("")
    }

    /// As [`PrivateServer::start`], with extra server settings.
    pub fn start_with(extra: &str) -> Result<Self> {
        let bin = find_bin()?;
        let dir = private_dir();
        init_cluster(&bin, &dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let server = Self { bin, dir, port, extra: extra.to_owned() };
        server.pg_ctl("start")?;
        Ok(server)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), connecting
    /// as `name` (its `application_name`, for `synchronous_standby_names`),
    /// started on a free port.
    pub fn standby_of(primary: &PrivateServer, name: &str) -> Result<Self> {
        let bin = find_bin()?;
        let dir = private_dir();
        std::fs::create_dir_all(&dir)?;
        if is_root() && !Command::new("chown").args(["-R", "nobody", &dir.to_string_lossy()]).status()?.success() {
            bail!("cannot hand {} to user nobody", dir.display());
        }
        let conninfo = format!("host=127.0.0.1 port={} user=postgres application_name={name}", primary.port);
        let out = as_user(&[
            &bin.join("pg_basebackup").to_string_lossy(),
            "-d",
            &conninfo,
            "-D",
            &dir.join("data").to_string_lossy(),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ])
        .output()?;
        if !out.status.success() {
            bail!("pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let server = Self { bin, dir, port, extra: String::new() };
        server.pg_ctl("start")?;
        Ok(server)
    }

    fn pg_ctl(&self, action: &str) -> Result<()> {
        self.pg_ctl_mode(action, "fast")
    }

    fn pg_ctl_mode(&self, action: &str, mode: &str) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.dir.display(),
            self.extra
        );
        let mut argv = vec![
            self.bin.join("pg_ctl").to_string_lossy().to_string(),
            "-D".into(),
            self.dir.join("data").to_string_lossy().to_string(),
            "-w".into(),
            "-l".into(),
            self.dir.join("log").to_string_lossy().to_string(),
        ];
        match action {
            "start" => argv.extend(["-o".into(), opts]),
            "stop" => argv.extend(["-m".into(), mode.into()]),
            _ => {}
        }
        argv.push(action.into());
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = as_user(&args).output()?;
        if !out.status.success() {
            bail!("pg_ctl {action} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl("stop")
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) -> Result<()> {
        self.pg_ctl_mode("stop", "immediate")
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) -> Result<()> {
        self.pg_ctl("promote")
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl("start")
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn private_dir() -> PathBuf {
    std::env::temp_dir().join(format!("koda-pg-private-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()))
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl_mode("stop", "immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private server, or `Skipped` / a failure naming the fix, as for the
/// shared one.
pub fn private_server() -> Result<PrivateServer> {
    private("restart", PrivateServer::start())
}

/// A primary (replication on, `standby1` synchronous) and its streaming
/// standby, or `Skipped` / a failure naming the fix, as for the shared
/// server.
pub fn replicated_pair() -> Result<(PrivateServer, PrivateServer)> {
    let made =
        PrivateServer::start_with("-c wal_level=replica -c max_wal_senders=4 -c synchronous_standby_names=standby1")
            .and_then(|primary| {
                let standby = PrivateServer::standby_of(&primary, "standby1")?;
                Ok((primary, standby))
            });
    private("failover", made)
}

fn private<T>(what: &str, made: Result<T>) -> Result<T> {
    match made {
        Ok(s) => Ok(s),
        Err(why) if env_flag("KODA_SKIP_POSTGRES") && !env_flag("KODA_REQUIRE_POSTGRES") => {
            Err(Skipped(format!("PostgreSQL {what} test skipped by KODA_SKIP_POSTGRES=1: {why:#}")).into())
        }
        Err(why) => bail!(
            "the {what} test needs the PostgreSQL server binaries (sudo apt-get install -y \
             postgresql) to run servers of its own: {why:#}"
        ),
    }
}

/// A fresh schema name for one test.
pub fn fresh_schema() -> String {
    format!("kp_t_{}", uuid::Uuid::now_v7().simple())
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let (client, conn) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("admin connection for teardown")?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .context("dropping the test schema")?;
    Ok(())
}

/// The server's count of deadlocks in the current database. A backend
/// reports its counts when it goes idle, at most once a second, so this
/// waits that long first.
pub async fn deadlocks(url: String) -> Result<i64> {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("admin connection for the deadlock counter")?;
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", &[])
        .await
        .context("reading pg_stat_database.deadlocks")?;
    Ok(row.try_get(0)?)
}

/// Options for `url` with `schema` and a small pool.
pub fn options(url: &str, schema: &str) -> Result<PostgresOptions> {
    let mut o = options_of::<Postgres>(url)?;
    o.schema = Some(schema.to_owned());
    o.pool_size = 4;
    Ok(o)
}

/// Two handles opened with `o` (a store and a second koda on the same
/// schema), the server's deadlock counter, and a teardown that drops
/// `schema` (and `role`, when the case made one).
async fn two_handles(
    url: String,
    schema: String,
    clock: ManualClock,
    o: PostgresOptions,
    role: Option<String>,
) -> Result<Fixture> {
    let store = open_checked::<Postgres>(o.clone(), Arc::new(clock.clone())).await?;
    let second = open_checked::<Postgres>(o, Arc::new(clock.clone())).await?;
    let probe_url = url.clone();
    let grace_url = url.clone();
    Ok(Fixture::new(Arc::new(store), clock)
        .with_second_handle(Arc::new(second))
        .with_grace_opener(move |days| {
            let url = grace_url.clone();
            async move {
                let schema = fresh_schema();
                let mut o = options(&url, &schema)?;
                o.trash.keep_deleted_days = Some(days);
                let clock = ManualClock::new(koda_persistence_conformance::START_MS);
                let store = open_checked::<Postgres>(o, Arc::new(clock.clone())).await?;
                Ok(Fixture::new(Arc::new(store), clock)
                    .with_teardown(move || async move { drop_schema(&url, &schema).await }))
            }
        })
        .with_deadlock_probe(move || deadlocks(probe_url.clone()))
        .with_teardown(move || async move {
            drop_schema(&url, &schema).await?;
            match role {
                Some(role) => drop_role(&url, &role).await,
                None => Ok(()),
            }
        }))
}

/// Migrates a fresh `schema` over a direct connection.
async fn migrated(url: &str, schema: &str, clock: &ManualClock) -> Result<()> {
    drop(PostgresStore::open(options(url, schema)?, Arc::new(clock.clone())).await?);
    Ok(())
}

/// Each store in its own fresh schema, dropped after the case.
pub struct FreshSchema;

#[async_trait::async_trait]
impl Factory for FreshSchema {
    async fn create(&self, start_ms: i64) -> Result<Fixture> {
        let url = server_url().await?;
        let schema = fresh_schema();
        let o = options(&url, &schema)?;
        two_handles(url, schema, ManualClock::new(start_ms), o, None).await
    }
}

/// How many server connections the tests' PgBouncer may open.
pub const BOUNCER_SERVER_CONNECTIONS: usize = 20;

static BOUNCER: OnceCell<Result<pgbouncer::PgBouncer, String>> = OnceCell::const_new();

/// The test process's PgBouncer (transaction mode, in front of
/// [`server_url`]), started on first use. A missing `pgbouncer` binary is
/// `Skipped` (saying so) unless `KODA_REQUIRE_POSTGRES=1`.
pub async fn bouncer() -> Result<&'static pgbouncer::PgBouncer> {
    let url = server_url().await?;
    let started = BOUNCER
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || pgbouncer::PgBouncer::start(&url, BOUNCER_SERVER_CONNECTIONS, &[]))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
        })
        .await;
    match started {
        Ok(b) => Ok(b),
        Err(why) if !env_flag("KODA_REQUIRE_POSTGRES") && pgbouncer::find_pgbouncer().is_err() => {
            Err(Skipped(format!("PgBouncer tests skipped: {why}")).into())
        }
        Err(why) => bail!("cannot start PgBouncer for the tests: {why}"),
    }
}

/// Options for a store through the test PgBouncer on `schema`.
pub async fn bouncer_options(schema: &str) -> Result<PostgresOptions> {
    let mut o = options(&bouncer().await?.url(), schema)?;
    assert_eq!(o.pooler, Pooler::Transaction);
    assert!(!o.migrate);
    o.pool_size = 4;
    Ok(o)
}

/// Each store in its own fresh schema, migrated through a direct
/// connection, then used only through PgBouncer in transaction mode.
pub struct ThroughPgBouncer;

#[async_trait::async_trait]
impl Factory for ThroughPgBouncer {
    async fn create(&self, start_ms: i64) -> Result<Fixture> {
        let url = server_url().await?;
        let schema = fresh_schema();
        let clock = ManualClock::new(start_ms);
        // The pooler first: when it cannot start, no schema is left behind.
        let o = bouncer_options(&schema).await?;
        // Migrations run on a direct connection, never through the pooler.
        migrated(&url, &schema, &clock).await?;
        two_handles(url, schema, clock, o, None).await
    }
}

/// An admin connection to `url`.
pub async fn admin(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("admin connection")?;
    tokio::spawn(conn);
    Ok(client)
}

/// A login role of this test's own with a password (so it logs in under
/// trust and password authentication alike), granted `schema` exactly as
/// the crate's `grant_sql` says. Returns its name and password.
pub async fn runtime_role(url: &str, schema: &str) -> Result<(String, String)> {
    let role = format!("kp_rt_{}", uuid::Uuid::now_v7().simple());
    let password = uuid::Uuid::now_v7().simple().to_string();
    let client = admin(url).await?;
    client
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'; {}",
            koda_persistence_postgres::grant_sql(schema, &role)?
        ))
        .await
        .context("creating the runtime role")?;
    Ok((role, password))
}

/// Drops a role made by [`runtime_role`] (its grants first).
pub async fn drop_role(url: &str, role: &str) -> Result<()> {
    admin(url)
        .await?
        .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE IF EXISTS \"{role}\""))
        .await
        .context("dropping the runtime role")?;
    Ok(())
}

/// Options for `url` on `schema`, logging in as `role` with `password`,
/// never running DDL.
pub fn role_options(url: &str, schema: &str, role: &str, password: &str) -> Result<PostgresOptions> {
    let mut o = options(url, schema)?;
    o.config.user(role);
    o.config.password(password);
    o.migrate = false;
    Ok(o)
}

/// Each store in its own fresh schema, migrated by the server URL's role,
/// then used by a role of its own that holds only the documented grants
/// (no `CREATE` anywhere) and opens with `migrate=false`.
pub struct RuntimeRole;

#[async_trait::async_trait]
impl Factory for RuntimeRole {
    async fn create(&self, start_ms: i64) -> Result<Fixture> {
        let url = server_url().await?;
        let schema = fresh_schema();
        let clock = ManualClock::new(start_ms);
        migrated(&url, &schema, &clock).await?;
        let (role, password) = runtime_role(&url, &schema).await?;
        let o = role_options(&url, &schema, &role, &password)?;
        two_handles(url, schema, clock, o, Some(role)).await
    }
}

/// `url` logging in as `role` with `password` instead of its own user.
pub fn role_url(url: &str, role: &str, password: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| anyhow!("not a URL: no ://"))?;
    let host_part = rest.split_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{role}:{password}@{host_part}"))
}

/// The typed error inside `e`, if any.
pub fn typed(e: &anyhow::Error) -> Option<&koda_persistence_api::PersistenceError> {
    koda_persistence_api::PersistenceError::of(e)
}

/// Runs `body` against the tests' server and a fresh schema, dropping the
/// schema afterwards; `Skipped` (saying so) when there is no server and
/// that is allowed.
pub async fn with_schema<F, Fut>(name: &str, body: F) -> Result<()>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let url = match server_url().await {
        Ok(url) => url,
        Err(e) => return koda_persistence_conformance::skip_or_fail(name, e),
    };
    let schema = fresh_schema();
    let outcome = body(url.clone(), schema.clone()).await;
    let dropped = drop_schema(&url, &schema).await;
    outcome.and(dropped)
}
