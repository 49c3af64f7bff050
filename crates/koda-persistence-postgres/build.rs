//! Rebuilds the crate when a migration is added or changed: refinery's
//! `embed_migrations!` reads `migrations/` at compile time, and cargo does
//! not know that directory otherwise (a new `V6__….sql` alone would not be
//! embedded by an incremental build).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
