//! The storage contract of koda: message and session types, the async
//! [`Persistence`] trait, the typed [`PersistenceError`], the injectable
//! [`Clock`], and the pure passes that every backend shares (the
//! [`load_context`](Persistence::load_context) sanitising passes and
//! [`detect_interruption`]).
//!
//! This crate does no I/O: it has no runtime, no SQL and no files (two
//! exceptions, so that every backend does them the same way:
//! [`cipher::read_key_file`] reads the key file of an encrypted store, and
//! [`backend::create_private_dir`] makes a backend's directories 0700). Backends
//! live in their own crates (`koda-persistence-memory`, `-sqlite`,
//! `-postgres`, `-sled`) and the facade `koda-persistence` opens one by URL.
//!
//! The behaviour every backend must show is written on each trait method and
//! checked by the conformance suite (`koda-persistence-conformance`).
#![deny(missing_docs)]

mod args;
pub mod backend;
pub mod bodies;
mod cache;
pub mod capabilities;
pub mod cipher;
mod clock;
mod context;
mod error;
pub mod fork;
mod health;
mod layers;
pub mod ledger;
mod persistence;
mod records;
pub mod rewrite;
pub mod search;
pub mod secrets;
pub mod settings;
mod store;
mod transfer;
pub mod trash;
mod types;
pub mod url;
mod usage;

pub use bodies::BodyStats;
pub use capabilities::{Bodies, Capabilities, Encryption, Handles, SearchIndex};
pub use clock::{Clock, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, ManualClock, SystemClock};
pub use context::detect_interruption;
pub use error::PersistenceError;
pub use fork::Fork;
pub use health::{Health, StoreHealth};
pub use layers::checked::Checked;
pub use layers::redacting::Redacting;
pub use ledger::Ledger;

/// A store's redaction of secrets: its recorded mode, salt and rules (the
/// [`Settings`] it keeps them in), and the [`Redacting`] layer put around
/// a store whose mode is `secrets`. What is caught is [`secrets`]'.
pub mod redaction {
    pub use crate::layers::redacting::{
        MODE_SETTING, RULES_SETTING, SALT_SETTING, reading_redactor, record_mode, record_rules, recorded_mode,
        recorded_rules, store_redactor, with_redaction,
    };
}
pub use layers::traced::{SLOW_CALL, Traced};
pub use persistence::Persistence;
pub use records::{MAX_SESSION_ID_BYTES, MessageRecord, MetadataRecord, SessionRecord, session_checksum};
pub use rewrite::Rewrite;
pub use search::{Search, SearchHit, SearchScope};
pub use settings::Settings;
pub use store::Store;
pub use transfer::Transfer;
pub use trash::{DeletedSession, Trash};
pub use types::{
    COMPACTION_HINT, CompactedStats, INTERRUPTION_PREVIEW_CHARS, InterruptionKind, Message, Role, SessionInfo,
    SessionUsage, TODO_KEY, TokenUsage,
};
