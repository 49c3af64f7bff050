//! What `koda-store` is made of, for the benchmark harness and other
//! tools: the export file format and the transfer of whole sessions
//! between stores (resumable, verified). The binary's subcommands are in
//! `main.rs` and `inspect.rs`.
#![deny(missing_docs)]

pub mod format;
pub mod transfer;
