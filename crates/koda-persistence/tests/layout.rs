//! The shape every backend crate takes (CONTRIBUTING.md, "Adding a
//! backend" and "Adding a capability"), checked so that the docs and the
//! tree cannot drift apart: the same rooms in every backend, each
//! capability trait implemented in its own room, no source file over
//! [`MAX_FILE_LINES`], no two files importing each other (directly or
//! around a loop), crate docs from `docs.md`, no internals exported, a
//! `Backend` impl, and the tools (`koda-store`, the benchmark) depending
//! on the facade rather than on a backend crate.
#![allow(clippy::panic)] // test code: a file that cannot be read is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The rooms every backend has: the struct and its `Backend` impl
/// (`lib.rs`), options, opening, migrations, row encoding, koda's core
/// calls (`queries.rs`), large outputs stored once, and one room per
/// capability trait.
const ROOMS: [&str; 16] = [
    "lib.rs",
    "docs.md",
    "options.rs",
    "open.rs",
    "schema.rs",
    "rows.rs",
    "queries.rs",
    "bodies.rs",
    "transfer.rs",
    "search.rs",
    "fork.rs",
    "trash.rs",
    "health.rs",
    "settings.rs",
    "rewrite.rs",
    "ledger.rs",
];

/// Each capability trait and the room of every backend that implements it.
const CAPABILITY_ROOMS: [(&str, &str); 9] = [
    ("Transfer", "transfer.rs"),
    ("Search", "search.rs"),
    ("Fork", "fork.rs"),
    ("Trash", "trash.rs"),
    ("Health", "health.rs"),
    ("Settings", "settings.rs"),
    ("Rewrite", "rewrite.rs"),
    ("Ledger", "ledger.rs"),
    ("Store", "lib.rs"),
];

/// Each backend: its rooms beyond [`ROOMS`] (a driver's `error.rs`, how its
/// calls run, what is truly its own).
const BACKENDS: [(&str, &[&str]); 4] = [
    ("memory", &[]),
    ("sqlite", &["error.rs", "worker.rs", "checkpoint.rs", "cipher.rs", "adopt.rs"]),
    ("postgres", &["error.rs", "exec.rs", "tls.rs"]),
    ("sled", &["error.rs", "exec.rs", "cipher.rs", "compaction.rs", "db.rs", "keys.rs"]),
];

/// No source file of a backend is longer: past it, a topic has grown a
/// second one that wants its own room.
const MAX_FILE_LINES: usize = 800;

fn crates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
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
            if e.path().is_dir() { format!("{name}/") } else { name }
        })
        .collect()
}

#[test]
fn every_backend_has_the_same_rooms() {
    let mut wrong = Vec::new();
    for (name, own) in BACKENDS {
        let src = crates().join(format!("koda-persistence-{name}")).join("src");
        let found = files_in(&src);
        let expected: BTreeSet<String> = ROOMS.iter().chain(own.iter()).map(|s| (*s).to_owned()).collect();
        if found != expected {
            let missing: Vec<_> = expected.difference(&found).collect();
            let extra: Vec<_> = found.difference(&expected).collect();
            wrong.push(format!("{name}: missing {missing:?}, not a room {extra:?}"));
        }
    }
    assert!(wrong.is_empty(), "backend file sets differ from CONTRIBUTING.md:\n{}", wrong.join("\n"));
}

#[test]
fn every_lib_rs_is_documented_from_docs_md_and_exports_no_modules() {
    for (name, _) in BACKENDS {
        let lib = crates().join(format!("koda-persistence-{name}")).join("src/lib.rs");
        let text = read(&lib);
        assert!(
            text.starts_with("#![doc = include_str!(\"docs.md\")]"),
            "{name}: lib.rs does not take its crate docs from docs.md"
        );
        assert!(!text.lines().any(|l| l.starts_with("//!")), "{name}: crate docs belong in docs.md");
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("pub mod ")),
            "{name}: a backend exports types, not its modules"
        );
        assert!(
            text.contains("koda_persistence_api::declare_backend!("),
            "{name}: lib.rs does not declare its Backend (declare_backend!)"
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

/// Every capability trait is implemented in its own room of every backend,
/// and nowhere else.
#[test]
fn every_capability_lives_in_its_room() {
    let mut wrong = Vec::new();
    for (name, own) in BACKENDS {
        let src = crates().join(format!("koda-persistence-{name}")).join("src");
        for file in ROOMS.iter().chain(own.iter()).filter(|f| f.ends_with(".rs")) {
            let text = read(&src.join(file));
            for (capability, room) in CAPABILITY_ROOMS {
                let found = text.contains(&format!("impl {capability} for "));
                if found != (*file == room) {
                    wrong.push(format!(
                        "{name}/{file}: `impl {capability} for` {} (its room is {room})",
                        if found { "found" } else { "missing" }
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The source files of the API crate and of every backend, each with its
/// module path inside its crate (`transfer`, `layers::checked::search`).
/// sled's values are sealed and opened only behind the handle's typed doors
/// (`db.rs`, with the sealing itself in `cipher.rs`): no other file calls a
/// sealing or opening function, and the handle does not hand out sled's raw
/// database (`Deref`).
#[test]
fn sled_values_pass_only_through_the_handles_doors() {
    let src = crates().join("koda-persistence-sled").join("src");
    let sealing = [
        ".seal_session(",
        ".seal_message(",
        ".seal_value(",
        ".seal_body(",
        ".open_session(",
        ".open_message(",
        ".open_value(",
        ".open_body(",
        ".check_body(",
    ];
    for file in files_in(&src) {
        if !file.ends_with(".rs") || file == "db.rs" || file == "cipher.rs" {
            continue;
        }
        let text = read(&src.join(&file));
        for call in sealing {
            assert!(!text.contains(call), "sled/{file} calls {call}…): values go through db.rs's doors");
        }
        assert!(!text.contains("apply_batch("), "sled/{file} applies a raw batch: use Writes");
    }
    let db = read(&src.join("db.rs"));
    assert!(
        !db.contains("impl Deref for Tree") && !db.contains("impl std::ops::Deref for Tree"),
        "sled's Tree derefs to the raw database"
    );
}

fn sources() -> Vec<(String, Vec<(String, PathBuf)>)> {
    let mut out = Vec::new();
    for krate in ["api", "memory", "sqlite", "postgres", "sled"] {
        let src = crates().join(format!("koda-persistence-{krate}")).join("src");
        let mut files = Vec::new();
        walk(&src, &src, &mut files);
        out.push((krate.to_owned(), files));
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let mut parts: Vec<String> =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            out.push((parts.join("::"), path));
        }
    }
}

#[test]
fn no_backend_file_is_over_the_cap() {
    let mut long = Vec::new();
    for (krate, files) in sources().into_iter().filter(|(k, _)| k != "api") {
        for (_, path) in files {
            let lines = read(&path).lines().count();
            if lines > MAX_FILE_LINES {
                long.push(format!("{krate}: {} has {lines} lines", path.display()));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_FILE_LINES} lines (split by topic):\n{}", long.join("\n"));
}

/// No file of a crate names (`crate::x`, `use crate::{x, …}`) a file that
/// names it back, directly or around a loop: what two files both need has
/// a home of its own.
#[test]
fn no_files_import_each_other() {
    for (krate, files) in sources() {
        let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
        let mut edges: Vec<(String, String)> = Vec::new();
        for (module, path) in &files {
            let text = read(path);
            for target in named_modules(&text, &modules) {
                if target != *module && !module.starts_with(&format!("{target}::")) {
                    edges.push((module.clone(), target));
                }
            }
        }
        // A loop exists when some edge's target reaches its source back.
        for (from, to) in &edges {
            if let Some(path) = reaches(&edges, to, from) {
                panic!(
                    "{krate}: {from} -> {} (files that import each other: give the shared \
                     piece a home of its own)",
                    path.join(" -> ")
                );
            }
        }
    }
}

/// The modules of `modules` that `text` names through `crate::`.
fn named_modules(text: &str, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or(text)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let mut names: Vec<String> = Vec::new();
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            names.extend(list[..end].split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_owned()));
        } else {
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            // The longest module path the name starts with.
            let parts: Vec<&str> = path.split("::").collect();
            for n in (1..=parts.len()).rev() {
                let candidate = parts[..n].join("::");
                if modules.contains(candidate.as_str()) {
                    names.push(candidate);
                    break;
                }
            }
        }
        out.extend(names.into_iter().filter(|n| modules.contains(n.as_str())));
    }
    out
}

/// A path of modules from `from` to `to` along `edges`, if there is one.
fn reaches(edges: &[(String, String)], from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_owned()]];
    while let Some(path) = stack.pop() {
        let last = path.last().cloned().unwrap_or_default();
        if last == to {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for (a, b) in edges {
            if *a == last {
                let mut next = path.clone();
                next.push(b.clone());
                stack.push(next);
            }
        }
    }
    None
}
