//! Credentials found in free text and replaced before they are stored or
//! shown: `[REDACTED:<rule>:<tag>]`, where `<tag>` is the first 8 hex digits
//! of an HMAC-SHA256 of the secret under a random salt the store keeps, so
//! one secret gives one tag within a store ("the same key twice") and
//! nothing that links stores.
//!
//! Matching is linear in the text: each rule is a [`regex`] (no
//! backtracking), and a rule runs only where one of its trigger literals
//! occurs (one Aho-Corasick pass over the text finds them), so text with
//! no trigger costs that one pass.
//!
//! A redacted value is gone: the model cannot read it back from history
//! and it is not sent to a model provider again. JSON stays JSON: no rule's
//! match starts after a lone backslash or ends on one, and a value that
//! parsed as JSON before is checked to parse after.

use std::borrow::Cow;
use std::collections::BTreeMap;

use aho_corasick::AhoCorasick;
use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use sha2::Sha256;

use crate::PersistenceError;
use crate::records::{MessageRecord, MetadataRecord, SessionRecord};

/// The URL parameter that names a store's redaction mode.
pub const REDACT: &str = "redact";

/// What a store does with the credentials in what it is given to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedactMode {
    /// Every byte is stored as given (the default: koda reads back what it
    /// wrote).
    #[default]
    Off,
    /// Each credential a rule finds is replaced by `[REDACTED:<rule>:<tag>]`.
    Secrets,
}

impl RedactMode {
    /// The mode's name, as URLs and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Secrets => "secrets",
        }
    }

    /// The mode named `s` (`off` or `secrets`).
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter for anything else.
    pub fn parse(s: &str) -> Result<Self, PersistenceError> {
        match s {
            "off" => Ok(Self::Off),
            "secrets" => Ok(Self::Secrets),
            other => {
                Err(PersistenceError::InvalidInput(format!("{REDACT}={other:?}: use {REDACT}=secrets or {REDACT}=off")))
            }
        }
    }
}

/// What else a rule's match must satisfy.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Nothing.
    None,
    /// The secret has the spread of characters of a generated value: at
    /// least 12 characters, letters and digits, 3 bits of entropy per
    /// character.
    Random,
    /// The secret is not a mask (`***`) or an earlier redaction.
    NotMasked,
}

/// A built-in rule: its name, the literals that must occur for it to run,
/// its pattern, the capture group that is the secret (0: the whole
/// match), and its check.
struct Builtin {
    name: &'static str,
    triggers: &'static [&'static str],
    pattern: &'static str,
    group: usize,
    check: Check,
}

/// The rules every store with `redact=secrets` applies, from the documented
/// shapes of each credential.
const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "private-key",
        triggers: &["PRIVATE KEY"],
        pattern: r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
        group: 0,
        check: Check::None,
    },
    Builtin {
        name: "aws-access-key-id",
        triggers: &["AKIA", "ASIA", "ABIA", "ACCA"],
        pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "aws-secret-access-key",
        triggers: &["ecret_access_key", "ecretAccessKey", "ECRET_ACCESS_KEY", "ecret-access-key"],
        pattern: r#"(?i)secret[_-]?access[_-]?key["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "github-token",
        triggers: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        pattern: r"\b(gh[pousr]_[A-Za-z0-9]{36,255})\b",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "github-fine-grained-token",
        triggers: &["github_pat_"],
        pattern: r"\b(github_pat_[A-Za-z0-9_]{50,255})\b",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "gitlab-token",
        triggers: &["glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glsoat-", "gloas-"],
        pattern: r"\b((?:glpat|gldt|glrt|glptt|glcbt|glsoat|gloas)-[A-Za-z0-9_-]{20,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "slack-token",
        triggers: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xapp-"],
        pattern: r"\b((?:xox[abprse](?:\.[a-z]+)?|xapp)-[0-9A-Za-z-]{10,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "slack-webhook",
        triggers: &["hooks.slack.com/"],
        pattern: r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "anthropic-key",
        triggers: &["sk-ant-"],
        pattern: r"\b(sk-ant-[A-Za-z0-9_-]{20,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "openai-key",
        triggers: &["sk-"],
        pattern: r"\b(sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,255}T3BlbkFJ[A-Za-z0-9_-]{20,255}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "google-api-key",
        triggers: &["AIza"],
        pattern: r"\b(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "stripe-key",
        triggers: &["sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"],
        pattern: r"\b((?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,255}|whsec_[0-9A-Za-z+/=]{24,255})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "npm-token",
        triggers: &["npm_"],
        pattern: r"\b(npm_[A-Za-z0-9]{36})\b",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "pypi-token",
        triggers: &["pypi-AgE"],
        pattern: r"\b(pypi-AgE[A-Za-z0-9_-]{50,})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "huggingface-token",
        triggers: &["hf_"],
        pattern: r"\b(hf_[A-Za-z0-9]{30,60})\b",
        group: 1,
        check: Check::Random,
    },
    Builtin {
        name: "jwt",
        triggers: &["eyJ"],
        pattern: r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
        group: 1,
        check: Check::None,
    },
    Builtin {
        name: "url-password",
        triggers: &["://"],
        pattern: r#"\b[a-zA-Z][a-zA-Z0-9+.-]{1,30}://[^\s:/?#@"'<>\\`]{1,256}:([^\s@/?#"'<>\\`]{1,256})@"#,
        group: 1,
        check: Check::NotMasked,
    },
    Builtin {
        name: "authorization-header",
        triggers: &["uthorization", "UTHORIZATION"],
        pattern: r#"(?i)authorization["']?\s*[:=]\s*["']?(?:bearer|basic|token|digest|bot)\s+([A-Za-z0-9._~+/=-]{8,4096})"#,
        group: 1,
        check: Check::NotMasked,
    },
    Builtin {
        name: "bearer-token",
        triggers: &["Bearer ", "bearer ", "BEARER "],
        pattern: r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,4096}=*)",
        group: 1,
        check: Check::Random,
    },
    Builtin {
        name: "env-assignment",
        triggers: &["KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PWD", "CREDENTIAL", "AUTH"],
        pattern: r#"(?m)^[ \t]*(?:export[ \t]+)?[A-Z0-9_]*(?:KEY|SECRET|TOKEN|PASSWORD|PASSWD|PWD|CREDENTIALS?|AUTH)[A-Z0-9_]*[ \t]*[=:][ \t]*["']?([A-Za-z0-9+/=_.~!@%^*-]{12,4096})["']?[ \t]*\r?$"#,
        group: 1,
        check: Check::Random,
    },
];

/// A rule a team adds (`koda-store redact --rules FILE`): a name and a
/// pattern (the `regex` crate's syntax; its first capture group is the
/// secret when it has one, else the whole match). Custom rules run on
/// every text: they have no trigger literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRule {
    /// The name in `[REDACTED:<name>:…]`: letters, digits, `-` and `_`.
    pub name: String,
    /// The pattern.
    pub pattern: String,
}

struct Rule {
    name: String,
    regex: Regex,
    group: usize,
    check: Check,
}

/// The redaction of one store: its rules and its salt.
pub struct Redactor {
    rules: Vec<Rule>,
    triggers: AhoCorasick,
    /// For each trigger pattern, the rule it starts.
    trigger_rule: Vec<usize>,
    /// Rules that run on every text (custom rules).
    always: Vec<usize>,
    salt: [u8; 32],
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        f.debug_struct("Redactor").field("rules", &names).finish_non_exhaustive()
    }
}

/// The names of the built-in rules, in the order they are tried.
pub fn builtin_rule_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|b| b.name)
}

fn bad_rule(name: &str, why: impl std::fmt::Display) -> PersistenceError {
    PersistenceError::InvalidInput(format!("redaction rule {name:?}: {why}"))
}

/// Checks a custom rule: a name of letters, digits, `-` and `_` (at most 64)
/// that no built-in rule has, and a pattern that compiles, at most one
/// capture group's worth of secret, matching no empty text.
///
/// # Errors
/// `InvalidInput` naming the rule and what is wrong with it.
pub fn check_custom_rule(rule: &CustomRule) -> Result<(), PersistenceError> {
    compile_custom(rule).map(|_| ())
}

fn compile_custom(rule: &CustomRule) -> Result<Rule, PersistenceError> {
    let name = rule.name.as_str();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(bad_rule(name, "a name is 1 to 64 letters, digits, '-' or '_'"));
    }
    if BUILTIN.iter().any(|b| b.name == name) {
        return Err(bad_rule(name, "a built-in rule has that name"));
    }
    let regex = regex::RegexBuilder::new(&rule.pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| bad_rule(name, format!("the pattern does not compile: {e}")))?;
    if regex.is_match("") {
        return Err(bad_rule(name, "the pattern matches empty text"));
    }
    let group = usize::from(regex.captures_len() > 1);
    Ok(Rule { name: name.to_owned(), regex, group, check: Check::None })
}

impl Redactor {
    /// The built-in rules, tagging under `salt`.
    pub fn new(salt: [u8; 32]) -> Self {
        match Self::with_custom(salt, &[]) {
            Ok(r) => r,
            // The built-in patterns are constants the unit tests compile.
            Err(e) => unreachable!("a built-in redaction rule does not compile: {e}"),
        }
    }

    /// The built-in rules and `custom`, tagging under `salt`.
    ///
    /// # Errors
    /// `InvalidInput` naming the first custom rule that is not valid
    /// ([`check_custom_rule`]).
    pub fn with_custom(salt: [u8; 32], custom: &[CustomRule]) -> Result<Self, PersistenceError> {
        let mut rules = Vec::with_capacity(BUILTIN.len() + custom.len());
        let mut literals = Vec::new();
        let mut trigger_rule = Vec::new();
        for (i, b) in BUILTIN.iter().enumerate() {
            let regex = Regex::new(b.pattern).map_err(|e| bad_rule(b.name, e))?;
            rules.push(Rule { name: b.name.to_owned(), regex, group: b.group, check: b.check });
            for t in b.triggers {
                literals.push(*t);
                trigger_rule.push(i);
            }
        }
        let mut always = Vec::new();
        for c in custom {
            always.push(rules.len());
            rules.push(compile_custom(c)?);
        }
        let triggers = AhoCorasick::new(&literals).map_err(|e| bad_rule("triggers", e))?;
        Ok(Self { rules, triggers, trigger_rule, always, salt })
    }

    /// The tag of `secret` in this store: 8 hex digits of its HMAC-SHA256
    /// under the salt.
    pub fn tag(&self, secret: &str) -> String {
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.salt) {
            Ok(m) => m,
            Err(e) => unreachable!("HMAC takes a key of any length: {e}"),
        };
        mac.update(secret.as_bytes());
        let out = mac.finalize().into_bytes();
        out[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The credentials in `text`: byte ranges, in order, not overlapping,
    /// each with the index of the rule that found it.
    fn find(&self, text: &str) -> Vec<(usize, usize, usize)> {
        let mut run = vec![false; self.rules.len()];
        for &i in &self.always {
            run[i] = true;
        }
        // Overlapping: `sk-` and `sk-ant-` both start where an Anthropic
        // key does.
        for m in self.triggers.find_overlapping_iter(text) {
            run[self.trigger_rule[m.pattern().as_usize()]] = true;
        }
        let mut spans = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !run[i] {
                continue;
            }
            for caps in rule.regex.captures_iter(text) {
                let Some(m) = caps.get(rule.group) else { continue };
                if m.start() == m.end() || !passes(rule.check, m.as_str()) {
                    continue;
                }
                spans.push((m.start(), m.end(), i));
            }
        }
        spans.sort_by_key(|&(start, end, rule)| (start, std::cmp::Reverse(end), rule));
        let mut merged: Vec<(usize, usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end, rule) in spans {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end, rule)),
            }
        }
        merged
    }

    /// `text` with each credential replaced; borrowed when there was none.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.redact_counting(text, &mut BTreeMap::new())
    }

    /// As [`redact`](Self::redact), adding to `counts` how many credentials
    /// each rule found.
    pub fn redact_counting<'t>(&self, text: &'t str, counts: &mut BTreeMap<String, u64>) -> Cow<'t, str> {
        let spans = self.find(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, rule) in spans {
            let name = &self.rules[rule].name;
            out.push_str(&text[at..start]);
            out.push_str(&format!("[REDACTED:{name}:{}]", self.tag(&text[start..end])));
            *counts.entry(name.clone()).or_default() += 1;
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// As [`redact`](Self::redact) for a value that may be JSON (tool
    /// calls): a value that parsed as JSON still parses, every byte but the
    /// credentials unchanged. Should a replacement have cut an escape
    /// sequence (no built-in rule can), each JSON string is redacted on its
    /// own and the value written again.
    pub fn redact_json<'t>(&self, text: &'t str, counts: &mut BTreeMap<String, u64>) -> Cow<'t, str> {
        let mut found = BTreeMap::new();
        let out = self.redact_counting(text, &mut found);
        if let Cow::Owned(o) = &out
            && serde_json::from_str::<serde_json::Value>(o).is_err()
            && let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text)
        {
            let mut again = BTreeMap::new();
            self.redact_value(&mut value, &mut again);
            merge(counts, again);
            return Cow::Owned(value.to_string());
        }
        merge(counts, found);
        out
    }

    /// `s` with its title and mode redacted.
    pub fn session_record(&self, s: &SessionRecord, counts: &mut BTreeMap<String, u64>) -> SessionRecord {
        SessionRecord {
            title: s.title.as_deref().map(|t| self.redact_counting(t, counts).into_owned()),
            mode: s.mode.as_deref().map(|t| self.redact_counting(t, counts).into_owned()),
            ..s.clone()
        }
    }

    /// `m` with its content, full output and tool calls (as JSON) redacted.
    pub fn message_record(&self, m: &MessageRecord, counts: &mut BTreeMap<String, u64>) -> MessageRecord {
        MessageRecord {
            content: m.content.as_deref().map(|t| self.redact_counting(t, counts).into_owned()),
            full_content: m.full_content.as_deref().map(|t| self.redact_counting(t, counts).into_owned()),
            tool_calls: m.tool_calls.as_deref().map(|t| self.redact_json(t, counts).into_owned()),
            ..m.clone()
        }
    }

    /// `e` with its value redacted.
    pub fn metadata_record(&self, e: &MetadataRecord, counts: &mut BTreeMap<String, u64>) -> MetadataRecord {
        MetadataRecord { key: e.key.clone(), value: self.redact_counting(&e.value, counts).into_owned() }
    }

    fn redact_value(&self, v: &mut serde_json::Value, counts: &mut BTreeMap<String, u64>) {
        match v {
            serde_json::Value::String(s) => {
                if let Cow::Owned(o) = self.redact_counting(s, counts) {
                    *s = o;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.redact_value(x, counts)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| self.redact_value(x, counts)),
            _ => {}
        }
    }
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

fn passes(check: Check, secret: &str) -> bool {
    match check {
        Check::None => true,
        Check::NotMasked => !is_placeholder(secret),
        Check::Random => looks_random(secret),
    }
}

/// A value that stands for a secret without being one: a mask (`***`,
/// `…`, `xxx`), an earlier redaction, a template (`{pw}`, `${PASS}`,
/// `<password>`, `$PGPASSWORD`, `%s`) or the word for it (`password`).
fn is_placeholder(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let variable = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    s.chars().all(|c| matches!(c, '*' | '.' | '…' | 'x' | 'X'))
        || s.starts_with("[REDACTED")
        || (s.starts_with('{') && s.ends_with('}'))
        || (s.starts_with('<') && s.ends_with('>'))
        || (s.starts_with("${") && s.ends_with('}'))
        || s.strip_prefix('$').is_some_and(variable)
        || s.strip_prefix('%').is_some_and(|v| v == "s" || (v.starts_with('(') && v.ends_with(")s")))
        || matches!(lower.as_str(), "password" | "passwd" | "pass" | "pwd" | "pw" | "secret_password")
}

/// At least 12 characters, with letters and digits, and 3 bits of Shannon
/// entropy per character: what generated credentials have and words,
/// identifiers and placeholders (`changeme`, `your-api-key-here`) do not.
fn looks_random(s: &str) -> bool {
    let n = s.chars().count();
    if n < 12 || !s.chars().any(|c| c.is_ascii_digit()) || !s.chars().any(|c| c.is_ascii_alphabetic()) {
        return false;
    }
    let mut freq: BTreeMap<char, usize> = BTreeMap::new();
    for c in s.chars() {
        *freq.entry(c).or_default() += 1;
    }
    let entropy: f64 = freq
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    entropy >= 3.0
}

#[cfg(test)]
mod tests;
