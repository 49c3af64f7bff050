//! The shape every backend crate takes (CONTRIBUTING.md, "Adding a
//! backend"), checked so that the docs and the tree cannot drift apart:
//! the same rooms in every backend, a `lib.rs` under 400 lines whose crate
//! docs come from `docs.md`, no internals exported, a `Backend` impl, and
//! the tools (`koda-store`, the benchmark) depending on the facade rather
//! than on a backend crate.
#![allow(clippy::panic)] // test code: a file that cannot be read is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The rooms every backend has.
const ROOMS: [&str; 9] = [
    "lib.rs",
    "docs.md",
    "options.rs",
    "open.rs",
    "schema.rs",
    "queries.rs",
    "rows.rs",
    "search.rs",
    "trash.rs",
];

/// Each backend: its rooms beyond [`ROOMS`] (a driver's `error.rs`, how its
/// calls run, what is truly its own).
const BACKENDS: [(&str, &[&str]); 4] = [
    ("memory", &[]),
    (
        "sqlite",
        &["error.rs", "worker.rs", "checkpoint.rs", "cipher.rs"],
    ),
    ("postgres", &["error.rs", "exec.rs", "tls.rs"]),
    ("sled", &["error.rs", "exec.rs", "cipher.rs"]),
];

const MAX_LIB_LINES: usize = 400;

fn crates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect()
}

#[test]
fn every_backend_has_the_same_rooms() {
    let mut wrong = Vec::new();
    for (name, own) in BACKENDS {
        let src = crates()
            .join(format!("koda-persistence-{name}"))
            .join("src");
        let found = files_in(&src);
        let expected: BTreeSet<String> = ROOMS
            .iter()
            .chain(own.iter())
            .map(|s| (*s).to_owned())
            .collect();
        if found != expected {
            let missing: Vec<_> = expected.difference(&found).collect();
            let extra: Vec<_> = found.difference(&expected).collect();
            wrong.push(format!("{name}: missing {missing:?}, not a room {extra:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "backend file sets differ from CONTRIBUTING.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_lib_rs_is_short_documented_from_docs_md_and_exports_no_modules() {
    for (name, _) in BACKENDS {
        let lib = crates()
            .join(format!("koda-persistence-{name}"))
            .join("src/lib.rs");
        let text = read(&lib);
        let lines = text.lines().count();
        assert!(
            lines < MAX_LIB_LINES,
            "{name}: lib.rs has {lines} lines (under {MAX_LIB_LINES}: move code to its room)"
        );
        assert!(
            text.starts_with("#![doc = include_str!(\"docs.md\")]"),
            "{name}: lib.rs does not take its crate docs from docs.md"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("//!")),
            "{name}: crate docs belong in docs.md"
        );
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("pub mod ")),
            "{name}: a backend exports types, not its modules"
        );
        assert!(
            text.contains("impl Backend for "),
            "{name}: lib.rs has no Backend impl"
        );
    }
}

/// The tools build stores through the facade: neither names a backend crate
/// as a dependency.
#[test]
fn the_tools_depend_on_the_facade_not_on_a_backend() {
    for tool in ["koda-store", "koda-persistence-bench"] {
        let manifest = read(&crates().join(tool).join("Cargo.toml"));
        for (name, _) in BACKENDS {
            let dep = format!("koda-persistence-{name}");
            assert!(
                !manifest.lines().any(|l| l.trim_start().starts_with(&dep)),
                "{tool} depends on {dep}: use koda_persistence::{name} or ::admin"
            );
        }
    }
}
