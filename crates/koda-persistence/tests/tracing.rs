//! Every call of a store the facade opens is traced (backend, method,
//! session id, duration), and no event carries message content or
//! metadata values.

#![allow(clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
#![cfg(feature = "memory")]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use koda_persistence::Role;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn calls_are_traced_without_content() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let sid = rt.block_on(async {
        let store = koda_persistence::open("memory:").await.expect("open");
        let sid = store.create_session("main", Path::new("/p")).await.expect("session");
        store.insert_message(&sid, &Role::User, Some("secret-content-42"), None, None, None).await.expect("insert");
        store.set_metadata(&sid, "k", "secret-value-43").await.expect("metadata");
        let err = store.set_todo("no-such-session", "x").await;
        assert!(err.is_err());
        // A call of each capability, through the same layer.
        let scope = koda_persistence::SearchScope { session: Some(&sid), ..Default::default() };
        store.search_messages("secret", &scope, 5).await.expect("search");
        let fork = store.fork_session(&sid, None).await.expect("fork");
        store.export_messages(&fork).await.expect("export");
        store.count_deleted().await.expect("count");
        store.health().await.expect("health");
        sid
    });
    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    for want in [
        "backend=\"memory\"",
        "method=\"append_message\"",
        "method=\"set_metadata\"",
        &format!("session=\"{sid}\""),
        "method=\"search_messages\"",
        "method=\"fork_session\"",
        "method=\"export_messages\"",
        "method=\"count_deleted\"",
        "method=\"health\"",
        "call done",
        "call failed",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    for secret in ["secret-content-42", "secret-value-43"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}
