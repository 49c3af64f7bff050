//! `koda-store`: the command-line tool for koda's histories on any store
//! the `koda-persistence` facade opens: list and read sessions, check a
//! store, purge old compacted history, and move whole histories between
//! stores (a solo `koda.db` to a team's PostgreSQL) through `copy`, or
//! through a versioned JSON Lines file with `export` and `import`.
//!
//! Exit codes: 0 success, 1 a failure or (for `doctor`) a finding, 2 a
//! usage error.

mod inspect;
mod redaction;
mod search;
mod trash;
mod usage;

use koda_store::transfer;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use koda_persistence::secrets::RedactMode;
use koda_persistence::{Role, Store};

const AFTER_HELP: &str = "\
STORES
  A store is a URL, as koda-persistence opens it:
    sqlite:///abs/path/koda.db   sqlite://relative.db   sled:///abs/dir
    postgres://user:pass@host:5432/db?schema=team_a    memory:
  Without --store or KODA_STORE_URL: the koda file of this user,
  $XDG_CONFIG_HOME/koda/db/koda.db, else ~/.config/koda/db/koda.db
  (never created by koda-store).

EXIT CODES
  0 success; 1 a failure, or a finding of `doctor`; 2 a usage error.

Passwords in URLs are never printed.";

/// Inspect, check and move koda's histories.
#[derive(Debug, Parser)]
#[command(name = "koda-store", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The store to work on (see STORES below).
    #[arg(long, global = true, env = "KODA_STORE_URL", value_name = "URL")]
    store: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List sessions, newest first: id, created, agent, title, mode,
    /// messages and tokens.
    #[command(after_help = "Root-less sessions (from an older koda) are listed under every root.")]
    Sessions {
        /// Only sessions of this project root (its exact path).
        #[arg(long, value_name = "PATH")]
        root: Option<PathBuf>,
        /// At most N sessions.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: i64,
        /// One JSON document on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a session: the context koda would send to the model (or, with
    /// --all, every stored message with its compaction and completion
    /// marks), tool calls paired with their results, usage, and the
    /// interruption banner koda would show.
    Show {
        /// The session id (see `koda-store sessions`).
        session: String,
        /// Every stored message, compacted and unfinished ones included.
        #[arg(long)]
        all: bool,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Print every credential the redaction rules find as
        /// [REDACTED:<rule>:<tag>], whatever the store's mode.
        #[arg(long)]
        redact: bool,
    },
    /// Counts: sessions, messages, compacted history, tokens per agent,
    /// and the store's size (file, directory or schema).
    Stats {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write sessions to a JSON Lines file (format version 1: a header
    /// line, then per session its session, message and metadata lines,
    /// every field kept).
    #[command(after_help = "Import the file into any store with `koda-store import FILE`.")]
    Export {
        /// Only these sessions (repeatable); all by default.
        #[arg(long = "session", value_name = "ID")]
        sessions: Vec<String>,
        /// Write every credential the redaction rules find as
        /// [REDACTED:<rule>:<tag>], whatever the store's mode; counts per
        /// rule on stderr.
        #[arg(long)]
        redact: bool,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read an export file into the store. Sessions already there are
    /// completed, never duplicated: a re-run imports nothing twice.
    Import {
        /// The file `koda-store export` wrote.
        file: PathBuf,
    },
    /// Copy sessions from one store to another (a solo SQLite file to the
    /// team's PostgreSQL), then verify each (message count and content
    /// checksum on both sides). Idempotent and resumable: a re-run copies
    /// nothing twice, and completes a copy that was killed.
    #[command(after_help = "\
Message ids are kept when the target's id sequence has not reached them
(a fresh target); otherwise the target gives fresh ids, and the report
says so. Tool calls stay paired with their results either way.

Example: koda-store copy --from sqlite://$HOME/.config/koda/db/koda.db \\
           --to 'postgres://koda@db.internal/koda?schema=team_a'")]
    Copy {
        /// The source store URL.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The target store URL.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Only these sessions (repeatable); all by default.
        #[arg(long = "session", value_name = "ID")]
        sessions: Vec<String>,
        /// The verification as one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Redact what is copied with the target's rules and salt, whatever
        /// the target's mode; each session is verified against the source
        /// as redacted.
        #[arg(long)]
        redact: bool,
    },
    /// Delete compacted messages older than DAYS days (0: every compacted
    /// message; active history is never touched), and with --deleted the
    /// deleted sessions whose grace period has ended.
    Purge {
        /// Minimum age in days of the compacted messages to delete.
        #[arg(long, value_name = "DAYS", required_unless_present = "deleted")]
        older_than: Option<u32>,
        /// Remove for good the deleted sessions whose grace period
        /// (`keep_deleted_days`) has ended.
        #[arg(long)]
        deleted: bool,
        /// Count what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy the store into a new encrypted store and verify every session
    /// (as `copy` does). The target URL names its key:
    /// `sqlite:///path/new.db?key_file=/path/store.key` (a 0600 file of 32
    /// random bytes or a passphrase line), or a new sled directory
    /// `sled:///path/new-dir?key_file=…`. The source stays as it is.
    #[command(after_help = "\
An SQLite target needs a koda-store built with --features sqlcipher. An older
koda cannot read an encrypted store; keep the key file safe: without it the
history is lost.")]
    Encrypt {
        /// The encrypted target's URL (sqlite://PATH?key_file=KEYFILE or
        /// sled://DIR?key_file=KEYFILE).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The verification as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt an encrypted SQLite store (--store with its current
    /// key_file) under a new key, in place. Stop every koda using it first.
    Rekey {
        /// The new key file (0600; 32 random bytes or a passphrase line).
        #[arg(long, value_name = "PATH")]
        new_key_file: PathBuf,
    },
    /// Delete a session as koda does: into the trash when the store keeps
    /// a grace period (`keep_deleted_days`, 7 days on a store this layer
    /// created), for good otherwise. Exits 1 for an unknown session.
    Delete {
        /// The session id (see `koda-store sessions`).
        session: String,
    },
    /// List the deleted sessions that can still be restored, each with
    /// when it goes for good.
    Trash {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Bring a deleted session back as it was. Exits 1 when it is not in
    /// the trash.
    Restore {
        /// The session id (see `koda-store trash`).
        session: String,
    },
    /// Check a store: session counters against their rows, tool results
    /// whose call is missing, calls that were never answered. Exits 1 when
    /// it finds a problem.
    Doctor {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Fork a session: a new session (same agent, root, mode and metadata,
    /// the title suffixed " (fork)") holding copies of its messages up to
    /// and including --at (all by default). Prints the new session's id.
    #[command(after_help = "\
A cut between a tool call and its results ends the fork before the call, so
the fork never starts with a call it cannot answer. Large outputs are shared,
not copied.")]
    Fork {
        /// The session to fork (see `koda-store sessions`).
        session: String,
        /// The last message to copy (an id from `koda-store show --all`).
        #[arg(long, value_name = "MESSAGE_ID")]
        at: Option<i64>,
    },
    /// Search messages across sessions: words (all must match, any case),
    /// "exact phrases", -excluded, prefix*. Prints the hits best first
    /// (most occurrences, then newest), with a snippet highlighted on a
    /// terminal.
    #[command(after_help = "\
Other characters are searched as text, never as syntax: OR, NEAR, quotes and
backslashes are safe. Only active messages are searched unless --compacted.")]
    Search {
        /// The query.
        query: String,
        /// Only sessions of this project root (and root-less ones).
        #[arg(long, value_name = "PATH")]
        root: Option<PathBuf>,
        /// Only this session.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only messages of this role (repeatable: user, assistant, tool, system).
        #[arg(long = "role", value_name = "ROLE", value_parser = parse_role)]
        roles: Vec<Role>,
        /// Also messages compaction archived.
        #[arg(long)]
        compacted: bool,
        /// At most N hits (at most 1000).
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
        /// One JSON document on stdout (snippets unmarked, marks as byte ranges).
        #[arg(long)]
        json: bool,
        /// Print every credential the redaction rules find in a snippet as
        /// [REDACTED:<rule>:<tag>] (that snippet unhighlighted), whatever
        /// the store's mode.
        #[arg(long)]
        redact: bool,
    },
    /// Store the large outputs an SQLite file holds inline once (content
    /// addressed, compressed), and keep storing them once from now on.
    #[command(after_help = "\
A koda.db this layer adopted from an older koda keeps large outputs inline,
where an older koda reads them; after this command an older koda reading the
file sees no text where a body is (koda through koda-persistence reads both).
A file this layer created stores them once already. PostgreSQL, sled and
memory stores always do: for those this reports nothing to move.")]
    CompactBodies {
        /// Report what would move and the bytes it would save; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Clean the stored history of secrets: every credential the store's
    /// rules find in what it already holds is rewritten in place as
    /// [REDACTED:<rule>:<tag>], old copies reclaimed (SQLite: vacuumed,
    /// WAL truncated; PostgreSQL: vacuumed). With --mode or --rules,
    /// record the store's redaction instead: its mode (`secrets`: what
    /// koda writes from then on is redacted; `off`, the default: every
    /// byte as given) and its own rules.
    #[command(after_help = "\
Cleaning goes a session at a time, 200 messages per transaction: a killed run
leaves every value either rewritten or as it was, and a re-run goes on (what was
rewritten holds only placeholders, which no rule matches again). It reports
counts per rule and per session (--json: redacted, rules, sessions), never a
secret. Sessions in the trash are not cleaned. A redacted value is gone: neither
koda nor a model reads it back. PostgreSQL's WAL, its archive and backups keep
old values until they rotate; sled's log keeps them until it rewrites a segment
(copy the store to leave none).

Every handle opened after --mode applies it; a URL that asks for the other mode
(?redact=off on a store whose mode is secrets) is refused. `export`, `show`,
`search` and `copy` take --redact to redact on the way out.

A rules file is TOML: a [rules] table of name = 'pattern' (Rust regex syntax;
the first capture group is the secret when there is one).")]
    Redact {
        /// Count what cleaning would rewrite; change nothing.
        #[arg(long, conflicts_with_all = ["mode", "rules"])]
        dry_run: bool,
        /// Record this mode: secrets or off.
        #[arg(long, value_name = "MODE", value_parser = parse_mode)]
        mode: Option<RedactMode>,
        /// Record the rules of this TOML file as the store's own (replacing
        /// any before; an empty [rules] table removes them).
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Tokens spent, from the store's usage ledger (which keeps what
    /// pruning, compaction and deletes remove from the history): per day,
    /// ISO week, month, root, agent or session, newest last, with totals
    /// and a bar per row; --json or --csv for scripts and spreadsheets.
    #[command(after_help = "\
A prices file adds a cost column: TOML in dollars per million tokens,

  [default]
  input = 3.0
  output = 15.0        # thinking tokens are priced as output
  cache_read = 0.3
  cache_write = 3.75

  [agent.explore]      # an agent's own prices (optional)
  input = 0.8
  output = 4.0

A message counts on its UTC day. Deleted sessions keep their spend (grouped by
session, they are marked deleted).")]
    Usage {
        /// Group by day, week, month, root, agent or session.
        #[arg(long, value_name = "GROUP", default_value = "day", value_parser = parse_by)]
        by: koda_persistence::ledger::UsageBy,
        /// First day counted, YYYY-MM-DD (UTC); the first there is by default.
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Last day counted, YYYY-MM-DD (UTC), included.
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        /// Only sessions of this project root (exact bytes).
        #[arg(long, value_name = "PATH")]
        root: Option<PathBuf>,
        /// Only this agent (`main` also counts messages without one).
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// Add a cost column priced from this TOML file.
        #[arg(long, value_name = "FILE")]
        prices: Option<PathBuf>,
        /// One JSON document on stdout.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV with a header line on stdout.
        #[arg(long)]
        csv: bool,
    },
    /// Apply pending migrations now (for deployments whose runtime role
    /// may not run DDL: run this once as the schema's owner). Opening a
    /// store migrates it too; this only says so.
    Migrate,
    /// Print (or with --apply, run as --store's role) the SQL that lets a
    /// PostgreSQL runtime role use one schema's store and nothing more:
    /// USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on its tables,
    /// USAGE/SELECT/UPDATE on its sequences, the same for tables later
    /// migrations add. No CREATE: that role opens the store with
    /// migrate=false once the owner has migrated it (koda-store migrate).
    /// The role must exist (CREATE ROLE … LOGIN PASSWORD …).
    Grant {
        /// The schema (the URL's schema=NAME; public when none).
        #[arg(long, value_name = "SCHEMA")]
        schema: String,
        /// The runtime role koda logs in as.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Run the SQL on --store (a postgres:// URL of the schema's owner)
        /// instead of printing it.
        #[arg(long)]
        apply: bool,
    },
}

/// A `--role` value.
fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// A `--mode` value.
fn parse_by(s: &str) -> Result<koda_persistence::ledger::UsageBy, String> {
    koda_persistence::ledger::UsageBy::parse(s).map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<RedactMode, String> {
    RedactMode::parse(s).map_err(|e| e.to_string())
}

/// The user's koda file as a URL, when no store was named.
fn default_store() -> Result<String> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither --store, KODA_STORE_URL, XDG_CONFIG_HOME nor HOME is set")?,
        )
        .join(".config"),
    };
    let file = base.join("koda").join("db").join("koda.db");
    if !file.exists() {
        anyhow::bail!("no koda database at {} (pass --store URL or set KODA_STORE_URL)", file.display());
    }
    let path = file.to_str().context("the koda database path is not UTF-8; pass --store URL")?;
    Ok(format!("sqlite://{path}?create=false"))
}

/// `url` without its password (the API's one redaction).
pub use koda_persistence::redact_url as redact;

async fn open(url: &str) -> Result<Arc<dyn Store>> {
    koda_persistence::open(url).await.with_context(|| format!("opening {}", redact(url)))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let store_url = || -> Result<String> {
        match &cli.store {
            Some(url) => Ok(url.clone()),
            None => default_store(),
        }
    };
    match cli.command {
        Command::Sessions { root, limit, json } => {
            let url = store_url()?;
            inspect::sessions(&open(&url).await?, root.as_deref(), limit, json).await?;
        }
        Command::Show { session, all, json, redact } => {
            let url = store_url()?;
            inspect::show(&open(&url).await?, &session, all, json, redact).await?;
        }
        Command::Stats { json } => {
            let url = store_url()?;
            inspect::stats(&open(&url).await?, json).await?;
        }
        Command::Export { sessions, redact: redacted, output } => {
            let url = store_url()?;
            let store = open(&url).await?;
            let ids = transfer::selected(&store, &sessions).await?;
            let redactor = match redacted {
                true => Some(koda_persistence::redaction::reading_redactor(store.as_ref()).await?),
                false => None,
            };
            let mut counts = std::collections::BTreeMap::new();
            let with = redactor.as_deref().map(|r| (r, &mut counts));
            let (s, m) = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                    transfer::export_redacted(&store, &redact(&url), &ids, file, with).await?
                }
                None => transfer::export_redacted(&store, &redact(&url), &ids, std::io::stdout().lock(), with).await?,
            };
            eprintln!("exported {s} sessions, {m} messages");
            if redacted {
                eprintln!("{}", redaction::report(&counts));
            }
        }
        Command::Import { file } => {
            let url = store_url()?;
            return inspect::import_file(&open(&url).await?, &file).await;
        }
        Command::Copy { from, to, sessions, json, redact: redacted } => {
            let source = open(&from).await?;
            let target = open(&to).await?;
            return inspect::copy(&source, &target, &sessions, json, &redact(&to), redacted).await;
        }
        Command::Encrypt { to, json } => {
            // Nothing is opened for a target that names no key: it could
            // only be a plain store.
            let keyed = koda_persistence::StoreUrl::parse(&to)?.has("key_file")
                || std::env::var_os("KODA_STORE_KEY_FILE").is_some();
            if !keyed {
                anyhow::bail!(
                    "encrypt --to needs a URL with its key (…?key_file=/path/store.key, or \
                     KODA_STORE_KEY_FILE) of a backend that encrypts at rest"
                );
            }
            let source = open(&store_url()?).await?;
            let target = open(&to).await?;
            // The target's own declaration decides.
            if !target.capabilities().encryption.is_encrypted() {
                anyhow::bail!("{} is not encrypted at rest: encrypt --to needs a store that is", redact(&to));
            }
            return inspect::copy(&source, &target, &[], json, &redact(&to), false).await;
        }
        Command::Rekey { new_key_file } => {
            let url = store_url()?;
            koda_persistence::admin::rekey(&url, &new_key_file).await?;
            eprintln!("{}: re-encrypted under {}", redact(&url), new_key_file.display());
        }
        Command::Purge { older_than, deleted, dry_run } => {
            let url = store_url()?;
            // The report must name what an open would purge.
            let store = if deleted { open(&trash::without_open_purge(&url)).await? } else { open(&url).await? };
            if let Some(days) = older_than {
                inspect::purge(&store, days, dry_run).await?;
            }
            if deleted {
                trash::purge(&store, dry_run).await?;
            }
        }
        Command::Delete { session } => {
            let url = store_url()?;
            return trash::delete(&open(&url).await?, &session).await;
        }
        Command::Trash { json } => {
            let url = store_url()?;
            trash::list(&open(&url).await?, json).await?;
        }
        Command::Restore { session } => {
            let url = store_url()?;
            return trash::restore(&open(&url).await?, &session).await;
        }
        Command::Doctor { json } => {
            let url = store_url()?;
            return inspect::doctor(&open(&url).await?, json).await;
        }
        Command::Grant { schema, role, apply } => {
            let sql = koda_persistence::admin::grant_sql(&schema, &role)?;
            if apply {
                let url = store_url()?;
                koda_persistence::admin::grant(&url, &schema, &role).await?;
                eprintln!("{}: granted schema {schema:?} to role {role:?}", redact(&url));
            } else {
                print!("{sql}");
            }
        }
        Command::Fork { session, at } => {
            let url = store_url()?;
            println!("{}", open(&url).await?.fork_session(&session, at).await?);
        }
        Command::Search { query, root, session, roles, compacted, limit, json, redact: redacted } => {
            let url = store_url()?;
            search::search(
                &open(&url).await?,
                &query,
                root.as_deref(),
                session.as_deref(),
                &roles,
                compacted,
                limit,
                json,
                redacted,
            )
            .await?;
        }
        Command::CompactBodies { dry_run } => {
            let url = store_url()?;
            let shown = redact(&url);
            match koda_persistence::admin::compact_bodies(&url, dry_run).await? {
                None => {
                    println!("{shown}: stores every large output once already; nothing to move")
                }
                Some(m) => {
                    let verb = if dry_run { "would move" } else { "moved" };
                    println!(
                        "{shown}: {verb} {} fields of {} messages ({} bytes inline) into {} new bodies of {} bytes: {} bytes saved",
                        m.fields,
                        m.rows,
                        m.inline_bytes,
                        m.new_bodies,
                        m.packed_bytes,
                        m.inline_bytes.saturating_sub(m.packed_bytes)
                    );
                }
            }
        }
        Command::Redact { dry_run, mode, rules, json } => {
            let url = store_url()?;
            let store = open(&url).await?;
            if mode.is_none() && rules.is_none() {
                redaction::clean_command(&store, dry_run, json).await?;
            } else {
                redaction::redact(&store, mode, rules.as_deref(), json).await?;
            }
        }
        Command::Usage { by, since, until, root, agent, prices, json, csv } => {
            let url = store_url()?;
            let prices = prices.as_deref().map(usage::read_prices).transpose()?;
            let format = if json {
                usage::Format::Json
            } else if csv {
                usage::Format::Csv
            } else {
                usage::Format::Table
            };
            let req = usage::Request { by, since, until, root, agent };
            usage::usage(&open(&url).await?, &req, prices.as_ref(), format).await?;
        }
        Command::Migrate => {
            let url = store_url()?;
            open(&url).await?;
            eprintln!("{}: schema up to date", redact(&url));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("koda-store: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<koda_persistence::PersistenceError>(),
                    Some(koda_persistence::PersistenceError::InvalidInput(_))
                )
            });
            let text = format!("{e:#}");
            eprintln!("koda-store: {text}");
            if std::io::stderr().is_terminal() && usage {
                eprintln!("(koda-store --help explains the arguments)");
            }
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
