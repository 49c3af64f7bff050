//! `koda-store usage`: the usage ledger over time, by root, agent or
//! session, as a table with bars, JSON or CSV, with an optional cost.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use koda_persistence::ledger::{DAY_MS, LedgerSums, UsageBy, UsageQuery, UsageRow, day_of_date};
use koda_persistence::{MAX_TIMESTAMP_MS, PersistenceError, Store};
use serde_json::json;

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input: f64,
    /// Output tokens; thinking tokens are priced as output.
    pub output: f64,
    /// Cached input read.
    pub cache_read: f64,
    /// Input written to the cache.
    pub cache_write: f64,
}

impl Price {
    /// The cost in dollars of `s`.
    pub fn cost(&self, s: &LedgerSums) -> f64 {
        #[allow(clippy::cast_precision_loss)] // token counts far below 2^53 in practice; a cost is an estimate
        let m = |n: i64| n as f64 / 1e6;
        m(s.prompt_tokens) * self.input
            + m(s.completion_tokens) * self.output
            + m(s.thinking_tokens) * self.output
            + m(s.cache_read_tokens) * self.cache_read
            + m(s.cache_creation_tokens) * self.cache_write
    }
}

/// A prices file: a `[default]` table and optional `[agent.NAME]` tables,
/// each with `input`, `output`, `cache_read` and `cache_write`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// For agents without their own table.
    pub default: Price,
    /// Per agent.
    pub agents: BTreeMap<String, Price>,
}

impl Prices {
    /// The price `agent`'s tokens are charged at.
    pub fn of(&self, agent: &str) -> Price {
        self.agents.get(agent).copied().unwrap_or(self.default)
    }
}

fn price_of(table: &toml::Table, what: &str) -> Result<Price, PersistenceError> {
    let invalid = |why: String| PersistenceError::InvalidInput(format!("{what}: {why}"));
    let mut p = Price::default();
    for (key, value) in table {
        let v = match value {
            toml::Value::Float(f) => *f,
            #[allow(clippy::cast_precision_loss)]
            toml::Value::Integer(i) => *i as f64,
            _ => return Err(invalid(format!("{key} is a number of dollars per million tokens"))),
        };
        if !v.is_finite() || v < 0.0 {
            return Err(invalid(format!("{key} is a price of 0 or more")));
        }
        match key.as_str() {
            "input" => p.input = v,
            "output" => p.output = v,
            "cache_read" => p.cache_read = v,
            "cache_write" => p.cache_write = v,
            _ => return Err(invalid(format!("unknown key {key:?}: input, output, cache_read, cache_write"))),
        }
    }
    Ok(p)
}

/// Reads a prices file (see [`Prices`]).
///
/// ```toml
/// [default]
/// input = 3.0
/// output = 15.0
/// cache_read = 0.3
/// cache_write = 3.75
///
/// [agent.explore]
/// input = 0.8
/// output = 4.0
/// ```
pub fn read_prices(path: &Path) -> Result<Prices> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let name = path.display().to_string();
    let invalid = |why: String| PersistenceError::InvalidInput(format!("{name}: {why}"));
    let mut prices = Prices::default();
    for (key, value) in &doc {
        match (key.as_str(), value) {
            ("default", toml::Value::Table(t)) => prices.default = price_of(t, &format!("{name}: [default]"))?,
            ("agent", toml::Value::Table(agents)) => {
                for (agent, t) in agents {
                    let t = t.as_table().ok_or_else(|| invalid(format!("[agent.{agent}] is a table")))?;
                    prices.agents.insert(agent.clone(), price_of(t, &format!("{name}: [agent.{agent}]"))?);
                }
            }
            _ => return Err(invalid(format!("unknown key {key:?}: the file holds [default] and [agent.NAME]")).into()),
        }
    }
    Ok(prices)
}

/// What `usage` asks the store.
#[derive(Debug, Clone)]
pub struct Request {
    /// The grouping.
    pub by: UsageBy,
    /// First day counted (`YYYY-MM-DD`); none: the first there is.
    pub since: Option<String>,
    /// Last day counted, included; none: today and before.
    pub until: Option<String>,
    /// Only this root.
    pub root: Option<std::path::PathBuf>,
    /// Only this agent.
    pub agent: Option<String>,
}

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table with a bar per row.
    Table,
    /// One JSON document.
    Json,
    /// CSV with a header line.
    Csv,
}

/// The rows of `req`, with each row's cost when `prices` are given.
async fn answer(
    store: &Arc<dyn Store>,
    req: &Request,
    prices: Option<&Prices>,
) -> Result<Vec<(UsageRow, Option<f64>)>> {
    let since_ms = match &req.since {
        Some(d) => day_of_date(d)? * DAY_MS,
        None => 0,
    };
    let until_ms = match &req.until {
        Some(d) => ((day_of_date(d)? + 1) * DAY_MS).min(MAX_TIMESTAMP_MS),
        None => MAX_TIMESTAMP_MS,
    };
    let base = UsageQuery { since_ms, until_ms, by: req.by, project_root: req.root.as_deref(), agent: None };
    let rows = store.usage(&UsageQuery { agent: req.agent.as_deref(), ..base }).await?;
    let Some(prices) = prices else {
        return Ok(rows.into_iter().map(|r| (r, None)).collect());
    };
    // Each agent's tokens at its own price: the same grouping, once per
    // agent, summed per key.
    let agents: Vec<String> = match &req.agent {
        Some(a) => vec![a.clone()],
        None => store.usage(&UsageQuery { by: UsageBy::Agent, ..base }).await?.into_iter().map(|r| r.key).collect(),
    };
    let mut cost: BTreeMap<String, f64> = BTreeMap::new();
    for agent in &agents {
        let price = prices.of(agent);
        for r in store.usage(&UsageQuery { agent: Some(agent.as_str()), ..base }).await? {
            *cost.entry(r.key.clone()).or_default() += price.cost(&r.sums);
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let c = cost.get(&r.key).copied().unwrap_or(0.0);
            (r, Some(c))
        })
        .collect())
}

/// Tokens a bar shows: every counter.
fn tokens(s: &LedgerSums) -> i64 {
    [s.prompt_tokens, s.completion_tokens, s.cache_read_tokens, s.cache_creation_tokens, s.thinking_tokens]
        .iter()
        .fold(0i64, |a, b| a.saturating_add(*b))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// A key as the table shows it: control characters escaped, a deleted
/// session marked.
fn shown(r: &UsageRow) -> String {
    let key: String = r.key.chars().flat_map(char::escape_debug).collect();
    let key = if key.is_empty() { "(none)".to_owned() } else { key };
    if r.deleted { format!("{key} (deleted)") } else { key }
}

/// `usage`: prints the answer in `format`.
pub async fn usage(store: &Arc<dyn Store>, req: &Request, prices: Option<&Prices>, format: Format) -> Result<()> {
    let rows = answer(store, req, prices).await?;
    let mut total = LedgerSums::default();
    let mut total_cost = 0.0;
    for (r, c) in &rows {
        total.add(&r.sums);
        total_cost += c.unwrap_or(0.0);
    }
    let priced = prices.is_some();
    match format {
        Format::Json => {
            let rows: Vec<_> = rows
                .iter()
                .map(|(r, c)| {
                    let mut v = json!({"key": r.key, "deleted": r.deleted});
                    if let (Some(o), Ok(serde_json::Value::Object(s))) =
                        (v.as_object_mut(), serde_json::to_value(r.sums))
                    {
                        o.extend(s);
                        if let Some(c) = c {
                            o.insert("cost_usd".into(), json!(c));
                        }
                    }
                    v
                })
                .collect();
            let mut doc = json!({
                "by": req.by.as_str(),
                "since": req.since,
                "until": req.until,
                "rows": rows,
                "total": total,
            });
            if priced {
                doc["total_cost_usd"] = json!(total_cost);
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Csv => {
            let mut header = "key,prompt_tokens,completion_tokens,cache_read_tokens,cache_creation_tokens,\
                              thinking_tokens,messages,deleted"
                .to_owned();
            if priced {
                header.push_str(",cost_usd");
            }
            println!("{header}");
            for (r, c) in &rows {
                let s = r.sums.as_array().map(|n| n.to_string()).join(",");
                let cost = c.map(|c| format!(",{c:.6}")).unwrap_or_default();
                println!("{},{s},{}{cost}", csv_field(&r.key), r.deleted);
            }
        }
        Format::Table => {
            if rows.is_empty() {
                println!("no usage recorded in that range");
                return Ok(());
            }
            let tty = std::io::stdout().is_terminal();
            let widest = rows.iter().map(|(r, _)| tokens(&r.sums)).max().unwrap_or(0).max(1);
            let keys: Vec<String> = rows.iter().map(|(r, _)| shown(r)).collect();
            let w = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0).max(5);
            let cost_head = if priced { format!(" {:>10}", "cost $") } else { String::new() };
            println!(
                "{:<w$} {:>13} {:>13} {:>13} {:>13} {:>11} {:>9}{cost_head}",
                req.by.as_str(),
                "input",
                "output",
                "cache read",
                "cache write",
                "thinking",
                "messages"
            );
            let line = |key: &str, s: &LedgerSums, cost: Option<f64>, bar: String| {
                let cost = cost.map(|c| format!(" {c:>10.2}")).unwrap_or_default();
                println!(
                    "{key:<w$} {:>13} {:>13} {:>13} {:>13} {:>11} {:>9}{cost} {bar}",
                    s.prompt_tokens,
                    s.completion_tokens,
                    s.cache_read_tokens,
                    s.cache_creation_tokens,
                    s.thinking_tokens,
                    s.messages
                );
            };
            for ((r, c), key) in rows.iter().zip(&keys) {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = ((tokens(&r.sums) as f64 / widest as f64) * 30.0).round() as usize;
                let bar = if tty { "█".repeat(n) } else { "#".repeat(n) };
                line(key, &r.sums, *c, bar);
            }
            line("total", &total, priced.then_some(total_cost), String::new());
        }
    }
    Ok(())
}
