//! Every URL parameter, through `koda_persistence::open`: refused with
//! `InvalidInput` naming the parameter at 0, just past its bound, negative,
//! non-numeric and overflowing values (no panic, nothing created); accepted
//! at both ends of its documented range.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
#![cfg(any(feature = "sqlite", feature = "sled", feature = "postgres"))]

use koda_persistence::PersistenceError;

/// Values no numeric parameter accepts (each one's minimum is 1).
const ALWAYS_BAD: [&str; 9] =
    ["0", "-1", "abc", "1.5", "", "18446744073709551615", "18446744073709551616", "9223372036854775807", "%"];

async fn refused(url: &str, param: &str) {
    match koda_persistence::open(url).await {
        Ok(_) => panic!("{url}: opened"),
        Err(e) => match PersistenceError::of(&e) {
            Some(PersistenceError::InvalidInput(m)) => {
                assert!(m.contains(param), "{url}: message does not name {param}: {m}")
            }
            other => panic!("{url}: expected InvalidInput, got {other:?} ({e:#})"),
        },
    }
}

/// `(parameter, max)` refused everywhere outside `1..=max`, accepted at both
/// ends, on a store URL built by `url(query)`.
async fn check_numbers(params: &[(&str, u64)], url: impl Fn(&str) -> String, try_accept: bool) {
    for (param, max) in params {
        let past = (max + 1).to_string();
        for v in ALWAYS_BAD.iter().copied().chain([past.as_str()]) {
            refused(&url(&format!("{param}={v}")), param).await;
        }
        refused(&url(&format!("{param}=1&{param}=1")), param).await;
        if try_accept {
            for v in [1, *max] {
                let u = url(&format!("{param}={v}"));
                koda_persistence::open(&u).await.unwrap_or_else(|e| panic!("{u}: {e:#}"));
            }
        }
    }
}

/// A new store URL for each call: `{scheme}://{dir}/{stem}{n}{ending}?{query}`.
#[cfg(any(feature = "sqlite", feature = "sled"))]
fn numbered(scheme: &str, dir: &std::path::Path, stem: &str, ending: &str) -> impl Fn(&str) -> String {
    let n = std::sync::atomic::AtomicUsize::new(0);
    let (scheme, dir, stem, ending) =
        (scheme.to_owned(), dir.display().to_string(), stem.to_owned(), ending.to_owned());
    move |q: &str| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{scheme}://{dir}/{stem}{i}{ending}?{q}")
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = numbered("sqlite", dir.path(), "k", ".db");
    check_numbers(&[("busy_timeout_ms", 3_600_000), ("readers", 64)], url, true).await;
    let base = format!("sqlite://{}/x.db", dir.path().display());
    for (q, param) in [("synchronous=sometimes", "synchronous"), ("create=maybe", "create"), ("cache=big", "cache")] {
        refused(&format!("{base}?{q}"), param).await;
    }
    refused("sqlite://file:/tmp/x.db", "file:").await;
    refused("sqlite:file:x.db", "file:").await;
    assert!(!std::path::Path::new("file:").exists(), "a file: URI created a directory");
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|f| f.to_string_lossy() == "x.db")
        .collect();
    assert!(made.is_empty(), "a refused URL created its file");
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = numbered("sled", dir.path(), "s", "");
    check_numbers(&[("flush_every_ms", 3_600_000), ("cache_mb", 65_536)], url, true).await;
    let base = format!("sled://{}/x", dir.path().display());
    refused(&format!("{base}?flush=sometimes"), "flush").await;
    refused(&format!("{base}?flush=manual&flush_every_ms=5"), "flush").await;
    refused(&format!("{base}?colour=blue"), "colour").await;
    assert!(!dir.path().join("x").exists(), "a refused URL created its directory");
}

/// Refused before connecting: no server is needed, and none is reached (the
/// port is closed).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_parameters() {
    let url = |q: &str| format!("postgres://u:secret@127.0.0.1:1/db?{q}");
    check_numbers(
        &[("pool_size", 1024), ("connect_timeout_ms", 3_600_000), ("pool_timeout_ms", 3_600_000)],
        url,
        false,
    )
    .await;
    for (q, param) in [
        ("schema=pg_temp", "pg_temp"),
        ("schema=pg_anything", "pg_anything"),
        ("schema=information_schema", "information_schema"),
        ("schema=a-b", "a-b"),
        ("schema=a%22b", "a\\\"b"),
        ("sslmode=sometimes", "sslmode"),
        ("options=-csearch_path%3Dx", "options"),
        // Another backend's parameter, or nobody's: named, not left to
        // the driver's "invalid connection string".
        ("blobs=on", "blobs"),
        ("frobnicate=1", "frobnicate"),
        ("application_name=k&frobnicate=1", "frobnicate"),
        // Not encrypted by this layer yet: never opened as if it were.
        ("key_file=/tmp/store.key", "key_file"),
    ] {
        refused(&url(q), param).await;
    }
}

/// The driver's own parameters still reach it, as written.
#[cfg(feature = "postgres")]
#[test]
fn postgres_driver_parameters_pass_through() {
    let options = koda_persistence::options_of::<koda_persistence::postgres::Postgres>(
        "postgres://u@127.0.0.1:1/db?application_name=koda-test&keepalives_idle=30&schema=s",
    )
    .expect("driver parameters are accepted");
    assert_eq!(options.config.get_application_name(), Some("koda-test"));
}

/// Every backend that cannot encrypt refuses `key_file` with the one
/// message, naming the parameter and the backend, before opening anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_is_refused_alike_where_a_backend_cannot_encrypt() {
    let mut urls = vec!["memory:?key_file=/tmp/store.key".to_owned()];
    if cfg!(feature = "postgres") {
        urls.push("postgres://u:secret@127.0.0.1:1/db?key_file=/tmp/store.key".to_owned());
    }
    for url in urls {
        let Err(e) = koda_persistence::open(&url).await else { panic!("{url}: opened") };
        let shown = format!("{e:#}");
        assert!(
            matches!(
                PersistenceError::of(&e),
                Some(PersistenceError::InvalidInput(m))
                    if m.starts_with("key_file: the ") && m.contains("does not encrypt its stores")
            ),
            "{url}: {shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
}

/// `redact=` takes `secrets` or `off` on every backend; anything else
/// (or the parameter twice) is refused naming it, before a server is
/// reached or a file made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_is_secrets_or_off_on_every_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bases = vec!["memory:".to_owned()];
    if cfg!(feature = "sqlite") {
        bases.push(format!("sqlite://{}/r.db", dir.path().display()));
    }
    if cfg!(feature = "sled") {
        bases.push(format!("sled://{}/r", dir.path().display()));
    }
    if cfg!(feature = "postgres") {
        bases.push("postgres://u:secret@127.0.0.1:1/db".to_owned());
    }
    for base in &bases {
        let sep = if base.contains('?') { '&' } else { '?' };
        for bad in ["on", "", "SECRETS", "secrets&redact=off", "%00"] {
            refused(&format!("{base}{sep}redact={bad}"), "redact").await;
        }
    }
    assert!(!dir.path().join("r.db").exists() && !dir.path().join("r").exists(), "a refused URL made its store");
    let Ok(store) = koda_persistence::open("memory:?redact=secrets").await else { panic!("redact=secrets refused") };
    assert_eq!(
        koda_persistence::redaction::recorded_mode(store.as_ref()).await.ok(),
        Some(koda_persistence::secrets::RedactMode::Secrets)
    );
}
