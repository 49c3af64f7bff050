//! A PgBouncer of the caller's own, in transaction pooling mode, in front
//! of a PostgreSQL server, from Debian's `pgbouncer` package. Shared by
//! the PostgreSQL tests and the benchmark harness (W11), which includes
//! this file by path; it needs only std, anyhow and tokio-postgres.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The `pgbouncer` binary: on `PATH`, else Debian's `/usr/sbin/pgbouncer`.
pub fn find_pgbouncer() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("pgbouncer")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/pgbouncer")]).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no pgbouncer binary (on PATH or /usr/sbin): install Debian's package \
                 (sudo apt-get install -y pgbouncer); .ci/run installs it"
        )
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A running PgBouncer; stopped (and its files removed) when dropped, or
/// when the process that started it exits.
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
}

/// A user PgBouncer lets in (trust) and logs into the server as.
pub struct User<'a> {
    /// Role name.
    pub name: &'a str,
    /// Its server password, if the server asks for one.
    pub password: Option<&'a str>,
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl PgBouncer {
    /// Starts PgBouncer on a free loopback port in front of `server_url`
    /// (a `postgres://` URL with a TCP host), in transaction mode with at
    /// most `server_connections` connections to the server, letting in
    /// the URL's user and `extra_users`.
    pub fn start(server_url: &str, server_connections: usize, extra_users: &[User<'_>]) -> Result<Self> {
        let bin = find_pgbouncer()?;
        let config = tokio_postgres::Config::from_str(server_url).context("parsing the server URL")?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => bail!("PgBouncer for the tests needs a TCP host in the server URL"),
        };
        let server_port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let dir = std::env::temp_dir().join(format!(
            "koda-pgbouncer-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut users = vec![format!("{} {}", quoted(&user), quoted(password.as_deref().unwrap_or("")))];
        for u in extra_users {
            users.push(format!("{} {}", quoted(u.name), quoted(u.password.unwrap_or(""))));
        }
        std::fs::write(dir.join("users.txt"), users.join("\n") + "\n")?;
        let ini = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {server_connections}\n\
             max_db_connections = {server_connections}\n\
             max_client_conn = 2000\n\
             server_tls_sslmode = disable\n\
             logfile = {dir}/log\n\
             pidfile = {dir}/pid\n",
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini)?;
        let script = format!(
            "'{bin}' '{dir}/pgbouncer.ini' >'{dir}/out' 2>&1 & pid=$!; \
             while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; \
             kill $pid 2>/dev/null; wait $pid; rm -rf '{dir}'",
            bin = bin.display(),
            dir = dir.display(),
            parent = std::process::id(),
        );
        // PgBouncer refuses to run as root.
        let mut cmd = if is_root() {
            let chown = Command::new("chown").args(["-R", "nobody", &dir.to_string_lossy()]).status()?;
            if !chown.success() {
                bail!("cannot hand {} to user nobody", dir.display());
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let bouncer = Self { dir, port, user, password, dbname };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                println!("started PgBouncer ({}) on 127.0.0.1:{port}", bin.display());
                return Ok(bouncer);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let said = |f: &str| std::fs::read_to_string(bouncer.dir.join(f)).unwrap_or_default();
        bail!("PgBouncer did not listen within 20 s: {} {}", said("out"), said("log"))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL through PgBouncer for the server URL's user and database,
    /// with `pooler=transaction`.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(p) => format!("{}:{p}", self.user),
            None => self.user.clone(),
        };
        self.url_as(&auth)
    }

    /// A URL through PgBouncer logging in as `auth` (`user` or
    /// `user:password`), with `pooler=transaction`.
    pub fn url_as(&self, auth: &str) -> String {
        format!("postgres://{auth}@127.0.0.1:{}/{}?pooler=transaction&sslmode=disable", self.port, self.dbname)
    }

    /// Its log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir().join("pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
