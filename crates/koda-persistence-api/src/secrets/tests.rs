//! Recall on synthetic credentials in realistic tool output, precision on
//! text with none. The credentials are made up here at run time from their
//! documented shapes, so no file of the repository holds one.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

/// A deterministic stream of characters from `alphabet`.
struct Chars(u64);

impl Chars {
    fn take(&mut self, alphabet: &str, n: usize) -> String {
        let a: Vec<char> = alphabet.chars().collect();
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                a[(self.0 % a.len() as u64) as usize]
            })
            .collect()
    }
}

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// One credential of every rule, by rule name.
fn credentials(seed: u64) -> Vec<(&'static str, String)> {
    let mut c = Chars(seed | 1);
    let jwt_part = |c: &mut Chars| c.take(URLSAFE, 30);
    vec![
        ("aws-access-key-id", format!("AK{}{}", "IA", c.take(UPPER32, 16))),
        ("aws-secret-access-key", c.take(B64, 40)),
        ("github-token", format!("gh{}_{}", "p", c.take(ALNUM, 36))),
        ("github-token", format!("gh{}_{}", "s", c.take(ALNUM, 36))),
        ("github-fine-grained-token", format!("github_{}_{}_{}", "pat", c.take(ALNUM, 22), c.take(ALNUM, 59))),
        ("gitlab-token", format!("gl{}-{}", "pat", c.take(URLSAFE, 20))),
        (
            "slack-token",
            format!("xo{}-{}-{}-{}", "xb", c.take("0123456789", 12), c.take("0123456789", 13), c.take(ALNUM, 24)),
        ),
        (
            "slack-webhook",
            format!(
                "https://hooks.{}.com/services/T{}/B{}/{}",
                "slack",
                c.take(UPPER32, 8),
                c.take(UPPER32, 10),
                c.take(ALNUM, 24)
            ),
        ),
        ("anthropic-key", format!("sk-{}-api03-{}", "ant", c.take(URLSAFE, 93))),
        ("openai-key", format!("sk-{}-{}", "proj", c.take(URLSAFE, 156))),
        ("openai-key", format!("sk-{}{}{}", c.take(ALNUM, 20), "T3Blbk", format_args!("FJ{}", c.take(ALNUM, 20)))),
        ("google-api-key", format!("AI{}{}", "za", c.take(URLSAFE, 35))),
        ("stripe-key", format!("sk_{}_{}", "live", c.take(ALNUM, 24))),
        ("npm-token", format!("np{}_{}", "m", c.take(ALNUM, 36))),
        ("pypi-token", format!("py{}-AgEIcHlwaS5vcmc{}", "pi", c.take(URLSAFE, 70))),
        ("huggingface-token", format!("h{}_{}", "f", c.take(ALNUM, 34))),
        (
            "jwt",
            format!(
                "ey{}.ey{}.{}",
                format_args!("J{}", jwt_part(&mut c)),
                format_args!("J{}", jwt_part(&mut c)),
                jwt_part(&mut c)
            ),
        ),
        ("url-password", c.take(ALNUM, 18)),
        ("bearer-token", c.take(URLSAFE, 40)),
        ("env-assignment", format!("{}9{}", c.take(ALNUM, 20), c.take(ALNUM, 12))),
    ]
}

/// A private key block of `kind` (`RSA `, `OPENSSH `, `PGP `, …) with a
/// made-up body, lines joined by `newline`.
fn pem(kind: &str, seed: u64, newline: &str) -> String {
    let mut c = Chars(seed | 1);
    let block = if kind == "PGP " { " BLOCK" } else { "" };
    let body: Vec<String> = (0..6).map(|_| c.take(B64, 64)).collect();
    format!(
        "-----BEGIN {kind}PRIVATE KEY{block}-----{newline}{}{newline}-----END {kind}PRIVATE KEY{block}-----",
        body.join(newline)
    )
}

fn redactor() -> Redactor {
    Redactor::new([7; 32])
}

/// Realistic tool outputs holding every credential of `creds`.
fn tool_outputs(creds: &[(&str, String)]) -> Vec<(String, Vec<String>)> {
    let get = |rule: &str, n: usize| {
        creds.iter().filter(|(r, _)| *r == rule).nth(n).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    // A .env file: one line per variable, the credential of its rule.
    let mut dotenv = String::from("# .env\nNODE_ENV=production\n");
    for (name, rule, quote) in [
        ("OPENAI_API_KEY", "openai-key", ""),
        ("ANTHROPIC_API_KEY", "anthropic-key", "\""),
        ("export STRIPE_SECRET_KEY", "stripe-key", ""),
        ("SLACK_BOT_TOKEN", "slack-token", ""),
        ("SESSION_SECRET", "env-assignment", ""),
        ("HF_TOKEN", "huggingface-token", ""),
        ("GOOGLE_MAPS_KEY", "google-api-key", ""),
    ] {
        dotenv.push_str(&format!("{name}={quote}{}{quote}\n", get(rule, 0)));
    }
    dotenv.push_str(&format!(
        "DATABASE_URL=postgres://app:{}@db.internal:5432/app\nLOG_LEVEL=debug\n",
        get("url-password", 0)
    ));
    let aws = format!(
        "$ cat ~/.aws/credentials\n[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\nregion = eu-west-1\n\n\
         $ aws configure list\n      Name                    Value             Type    Location\n   access_key     ****************{tail} shared-credentials-file\n",
        id = get("aws-access-key-id", 0),
        secret = get("aws-secret-access-key", 0),
        tail = &get("aws-access-key-id", 0)[16..],
    );
    let curl = format!(
        "$ curl -v https://api.example.com/v1/models -H \"Authorization: Bearer {bt}\"\n*   Trying 93.184.216.34:443...\n\
         > GET /v1/models HTTP/2\n> Host: api.example.com\n> authorization: Bearer {bt}\n> user-agent: curl/8.5.0\n\
         < HTTP/2 200\n< content-type: application/json\n{{\"token\":\"{jwt}\",\"ok\":true}}\n",
        bt = get("bearer-token", 0),
        jwt = get("jwt", 0),
    );
    let (gh, gl) = (get("github-token", 0), get("gitlab-token", 0));
    let mut git = format!(
        "$ git remote -v\norigin\thttps://x-access-token:{gh}@github.com/acme/app.git (fetch)\n\
         origin\thttps://x-access-token:{gh}@github.com/acme/app.git (push)\nmirror\thttps://oauth2:{gl}@gitlab.com/acme/app.git (fetch)\n"
    );
    for (said, rule, n) in [
        ("$ cat .npmrc\n//registry.npmjs.org/:_authToken=", "npm-token", 0),
        ("$ cat ~/.pypirc\n[pypi]\n  username = __token__\n  password = ", "pypi-token", 0),
        ("$ gh auth status\n  Token: ", "github-fine-grained-token", 0),
        ("$ echo $DEPLOY\n", "github-token", 1),
        ("webhook: ", "slack-webhook", 0),
    ] {
        git.push_str(&format!("{said}{}\n", get(rule, n)));
    }
    let legacy_openai = format!("openai.api_key = \"{}\"\n", get("openai-key", 1));
    let pems = format!(
        "$ cat id_rsa\n{}\n$ cat ec.pem\n{}\n$ cat ~/.ssh/id_ed25519\n{}\n$ gpg --export-secret-keys --armor\n{}\n",
        pem("RSA ", 1, "\n"),
        pem("EC ", 2, "\n"),
        pem("OPENSSH ", 3, "\n"),
        pem("PGP ", 4, "\n")
    );
    let all: Vec<String> = creds.iter().map(|(_, v)| v.clone()).collect();
    let secrets_of = |text: &str| all.iter().filter(|s| text.contains(s.as_str())).cloned().collect::<Vec<_>>();
    let mut out = Vec::new();
    for text in [dotenv, aws, curl, git, legacy_openai] {
        let s = secrets_of(&text);
        out.push((text, s));
    }
    let pem_secrets = [pem("RSA ", 1, "\n"), pem("EC ", 2, "\n"), pem("OPENSSH ", 3, "\n"), pem("PGP ", 4, "\n")]
        .iter()
        .flat_map(|p| p.lines().filter(|l| !l.starts_with("-----")).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    out.push((pems, pem_secrets));
    out
}

#[test]
fn every_builtin_rule_compiles() {
    let r = redactor();
    assert_eq!(r.rules.len(), BUILTIN.len());
}

#[test]
fn every_credential_in_realistic_output_is_redacted() {
    let r = redactor();
    for seed in [1, 2, 3, 0x5eed, 0xdead_beef] {
        let creds = credentials(seed);
        let outputs = tool_outputs(&creds);
        let mut covered = std::collections::BTreeSet::new();
        for (text, secrets) in &outputs {
            let mut counts = BTreeMap::new();
            let out = r.redact_counting(text, &mut counts);
            for s in secrets {
                assert!(!out.contains(s.as_str()), "seed {seed}: {s} survived in\n{out}");
            }
            covered.extend(counts.into_keys());
        }
        // Every credential of the list appears in some output, so every
        // rule that made one must have fired.
        for (rule, value) in &creds {
            assert!(outputs.iter().any(|(t, _)| t.contains(value.as_str())), "{rule} is in no output");
        }
        for name in [
            "private-key",
            "aws-access-key-id",
            "aws-secret-access-key",
            "github-token",
            "gitlab-token",
            "jwt",
            "url-password",
            "npm-token",
            "pypi-token",
        ] {
            assert!(covered.contains(name), "seed {seed}: rule {name} never fired ({covered:?})");
        }
    }
}

#[test]
fn each_rule_finds_its_own_credential_alone() {
    let r = redactor();
    for (rule, value) in credentials(42) {
        let text = match rule {
            "aws-secret-access-key" => format!("aws_secret_access_key={value}"),
            "url-password" => format!("postgres://user:{value}@host/db"),
            "bearer-token" => format!("Authorization: Bearer {value}"),
            "env-assignment" => format!("API_SECRET={value}"),
            _ => format!("the value is {value} here"),
        };
        let out = r.redact(&text);
        assert!(!out.contains(value.as_str()), "{rule}: {out}");
        assert!(out.contains("[REDACTED:"), "{rule}: {out}");
    }
}

#[test]
fn one_secret_one_tag_within_a_store_and_none_across() {
    let a = Redactor::new([1; 32]);
    let b = Redactor::new([2; 32]);
    let key = &credentials(9)[2].1;
    let twice = format!("{key} and again {key}");
    let out = a.redact(&twice);
    let tags: Vec<&str> = out.match_indices("[REDACTED:github-token:").map(|(i, _)| &out[i + 23..i + 31]).collect();
    assert_eq!(tags.len(), 2, "{out}");
    assert_eq!(tags[0], tags[1], "one secret, one tag: {out}");
    assert!(tags[0].chars().all(|c| c.is_ascii_hexdigit()), "{out}");
    assert_ne!(a.tag(key), b.tag(key), "another store's salt gives another tag");
}

#[test]
fn json_stays_json_with_every_other_byte_unchanged() {
    let r = redactor();
    let creds = credentials(5);
    let gh = &creds[2].1;
    let calls = format!(
        r#"[{{"id":"call_1","type":"function","function":{{"name":"bash","arguments":"{{\"cmd\":\"git push https://x:{gh}@github.com/a/b.git\",\"key\":\"{}\"}}"}}}}]"#,
        pem("RSA ", 8, "\\\\n")
    );
    assert!(serde_json::from_str::<serde_json::Value>(&calls).is_ok(), "the fixture is JSON");
    let mut counts = BTreeMap::new();
    let out = r.redact_json(&calls, &mut counts);
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "not JSON after: {out}");
    assert!(!out.contains(gh.as_str()), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let prefix =
        r#"[{"id":"call_1","type":"function","function":{"name":"bash","arguments":"{\"cmd\":\"git push https://x:"#;
    assert!(out.starts_with(prefix), "bytes before the first credential changed: {out}");
    assert!(out.ends_with(r#"\"}"}}]"#), "bytes after the last credential changed: {out}");
}

#[test]
fn masks_placeholders_and_earlier_redactions_stay() {
    let r = redactor();
    for text in [
        "postgres://user:***@host/db",
        "Authorization: Bearer ***",
        "OPENAI_API_KEY=your-api-key-here",
        "API_KEY=changeme",
        "SECRET_KEY=${SECRET_KEY}",
        "export GITHUB_TOKEN=\"$(gh auth token)\"",
        "[REDACTED:github-token:0a1b2c3d]",
        "Authorization: Bearer [REDACTED:bearer-token:0a1b2c3d]",
    ] {
        assert_eq!(r.redact(text), text, "{text}");
    }
    // A password that only starts like a template is a password.
    for text in ["postgres://app:$ecret-Pa55@db/x", "postgres://app:%dRt9x@db/x"] {
        assert!(r.redact(text).contains("[REDACTED:url-password:"), "{text}");
    }
    for text in ["postgres://app:$PGPASSWORD@db/x", "postgres://app:%s@db/x", "postgres://app:%(pw)s@db/x"] {
        assert_eq!(r.redact(text), text, "{text}");
    }
    let once = r.redact(&format!("token {}", credentials(3)[2].1)).into_owned();
    assert_eq!(r.redact(&once), once, "redaction is idempotent");
}

#[test]
fn text_with_no_credential_is_byte_identical() {
    let r = redactor();
    let mut c = Chars(77);
    let corpus = vec![
        // git SHAs, UUIDs, SHA-256 and SHA-512 in hex
        format!("commit {}\nAuthor: A <a@example.com>\n\n    fix\n", c.take("0123456789abcdef", 40)),
        "id 0190f4c2-6a4e-7b3a-9c1d-2e3f4a5b6c7d and 550e8400-e29b-41d4-a716-446655440000".to_owned(),
        format!("{}  target/release/koda\n{}  -\n", c.take("0123456789abcdef", 64), c.take("0123456789abcdef", 128)),
        // Cargo.lock checksums and npm integrity strings
        format!(
            "[[package]]\nname = \"serde\"\nversion = \"1.0.228\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{}\"\n",
            c.take("0123456789abcdef", 64)
        ),
        format!("\"integrity\": \"sha512-{}==\",\n\"resolved\": \"https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz\"", c.take(B64, 86)),
        // base64 image data and minified JavaScript
        format!("<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA{}\">", c.take(B64, 4000)),
        "!function(e,t){\"object\"==typeof exports&&\"undefined\"!=typeof module?module.exports=t():\"function\"==typeof define&&define.amd?define(t):(e=e||self).Vue=t()}(this,function(){\"use strict\";var e=Object.freeze({});function t(e){return null==e}".to_owned(),
        "API_KEY_HEADER: &str = \"x-api-key\";\nconst TOKEN_LIMIT: usize = 4096;\nlet password = prompt_password()?;\n".to_owned(),
        "See https://docs.rs/tokio/latest/tokio/ and ssh://git@github.com/rust-lang/rust.git".to_owned(),
    ];
    for text in &corpus {
        let out = r.redact(text);
        assert!(matches!(out, Cow::Borrowed(_)), "changed:\n{}", first_difference(text, &out));
    }
}

/// The text around the first byte where `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> String {
    let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let from = a.floor_char_boundary(at.saturating_sub(80));
    let to = b.ceil_char_boundary((at + 120).min(b.len()));
    b[from..to].to_owned()
}

#[test]
fn custom_rules_are_checked_and_applied() {
    let ok = CustomRule { name: "acme-key".into(), pattern: r"\bacme_[0-9a-f]{24}\b".into() };
    let r = Redactor::with_custom([3; 32], std::slice::from_ref(&ok)).expect("a valid rule");
    let out = r.redact("deploy with acme_0123456789abcdef01234567 now");
    assert!(out.starts_with("deploy with [REDACTED:acme-key:") && out.ends_with("] now"), "{out}");
    for (rule, says) in [
        (CustomRule { name: "bad name".into(), pattern: "x".into() }, "bad name"),
        (CustomRule { name: "jwt".into(), pattern: "x".into() }, "built-in"),
        (CustomRule { name: "broken".into(), pattern: "(unclosed".into() }, "broken"),
        (CustomRule { name: "empty".into(), pattern: "a*".into() }, "empty"),
    ] {
        match check_custom_rule(&rule) {
            Err(PersistenceError::InvalidInput(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("{rule:?}: {other:?}"),
        }
    }
}

#[test]
fn modes_parse_and_others_are_refused() {
    assert_eq!(RedactMode::parse("secrets").ok(), Some(RedactMode::Secrets));
    assert_eq!(RedactMode::parse("off").ok(), Some(RedactMode::Off));
    assert!(matches!(RedactMode::parse("on"), Err(PersistenceError::InvalidInput(m)) if m.contains("redact")));
}

/// Every credential `redactor` finds under `root` (files of at most 4 MiB
/// that are text), as (file, rule, the secret).
fn found_under(r: &Redactor, root: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(p);
                }
                continue;
            }
            if skip(&p) || e.metadata().map_or(true, |m| m.len() > 4 << 20) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else { continue };
            for (start, end, rule) in r.find(&text) {
                let file = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((file, r.rules[rule].name.clone(), text[start..end].to_owned()));
            }
        }
    }
    out.sort();
    out
}

/// The passwords this repository's docs and tests put in example URLs
/// (`postgres://u:secret@…`): credentials by their shape, so found.
const EXAMPLE_PASSWORDS: &[&str] =
    &["postgres", "secret", "hunter2", "topsecret", "pa55word", "s3cret", "b", "p", "koda"];

/// The workspace's own files: the only credentials are the example
/// passwords of URLs in docs and tests (this file aside, whose fixtures are
/// made to be found).
#[test]
fn the_workspace_holds_only_its_example_url_passwords() {
    let r = redactor();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let found = found_under(&r, &root, &|p| p.ends_with("secrets/tests.rs"));
    let unexpected: Vec<_> = found
        .iter()
        .filter(|(_, rule, secret)| rule != "url-password" || !EXAMPLE_PASSWORDS.contains(&secret.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "credentials found in the workspace: {unexpected:#?}");
}

/// The crates unpacked under `~/.cargo/registry/src` (173 MB of Rust
/// sources, docs and test vectors here): only two rules may fire there,
/// on what their own tests and docs hold (passwords in example URLs,
/// a test key); no token-shaped rule finds anything. Every hit is printed
/// with its file.
#[test]
fn registry_crates_hold_only_example_passwords_and_test_keys() {
    let Some(home) = std::env::var_os("HOME") else {
        println!("SKIPPED registry_crates_hold_only_example_passwords_and_test_keys: no HOME");
        return;
    };
    let root = Path::new(&home).join(".cargo/registry/src");
    if !root.is_dir() {
        println!("SKIPPED registry_crates_hold_only_example_passwords_and_test_keys: no {}", root.display());
        return;
    }
    let r = redactor();
    let found = found_under(&r, &root, &|_| false);
    let mut per_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for (file, rule, secret) in &found {
        *per_rule.entry(rule).or_default() += 1;
        println!("registry hit: {rule} in {file}: {:?}", secret.chars().take(40).collect::<String>());
    }
    println!("registry hits per rule: {per_rule:?}");
    let others: Vec<_> = found.iter().filter(|(_, rule, _)| rule != "url-password" && rule != "private-key").collect();
    assert!(others.is_empty(), "token rules fired on crate sources: {others:#?}");
}
