//! `koda-store redact`: a store's redaction mode and its own rules, and
//! redaction of what `export --redact` and `show --redact` write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use koda_persistence::Store;
use koda_persistence::redaction::{record_mode, record_rules, recorded_mode, recorded_rules};
use koda_persistence::secrets::{CustomRule, RedactMode, builtin_rule_names};
use serde_json::json;

/// A rules file: `[rules]` then one `name = "pattern"` per rule.
///
/// ```toml
/// [rules]
/// acme-deploy-key = '\bacme_[0-9a-f]{32}\b'
/// ```
pub fn read_rules(path: &Path) -> Result<Vec<CustomRule>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let invalid = |why: String| koda_persistence::PersistenceError::InvalidInput(format!("{}: {why}", path.display()));
    let mut rules = Vec::new();
    for (key, value) in &doc {
        if key != "rules" {
            return Err(invalid(format!("unknown table or key {key:?}: the file holds [rules] only")).into());
        }
        let table = value.as_table().ok_or_else(|| invalid("rules is a table of name = \"pattern\"".into()))?;
        for (name, pattern) in table {
            let pattern = pattern.as_str().ok_or_else(|| invalid(format!("rule {name:?}: its pattern is a string")))?;
            rules.push(CustomRule { name: name.clone(), pattern: pattern.to_owned() });
        }
    }
    Ok(rules)
}

/// `redact [--mode M] [--rules FILE] [--json]`: records what is given, then
/// says the store's mode and rules.
pub async fn redact(store: &Arc<dyn Store>, mode: Option<RedactMode>, rules: Option<&Path>, json: bool) -> Result<()> {
    if let Some(path) = rules {
        record_rules(store.as_ref(), &read_rules(path)?).await?;
    }
    if let Some(m) = mode {
        record_mode(store.as_ref(), m).await?;
    }
    let mode = recorded_mode(store.as_ref()).await?;
    let own: Vec<String> = recorded_rules(store.as_ref()).await?.into_iter().map(|r| r.name).collect();
    if json {
        let doc = json!({
            "mode": mode.as_str(),
            "builtin_rules": builtin_rule_names().collect::<Vec<_>>(),
            "own_rules": own,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("redaction mode: {}", mode.as_str());
        println!("built-in rules: {}", builtin_rule_names().collect::<Vec<_>>().join(", "));
        println!("own rules:      {}", if own.is_empty() { "(none)".to_owned() } else { own.join(", ") });
    }
    Ok(())
}

/// Credentials found per rule, as `export --redact` reports them.
pub fn report(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "no credential found".to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(rule, n)| format!("{rule} {n}")).collect();
    format!("redacted {} ({})", counts.values().sum::<u64>(), parts.join(", "))
}
