//! What a store supports, declared by its backend rather than discovered
//! by trying: [`Capabilities`], read with
//! [`Store::capabilities`](crate::Store::capabilities).
//!
//! Every backend implements every capability trait ([`Transfer`](crate::Transfer),
//! [`Search`](crate::Search), [`Fork`](crate::Fork), [`Trash`](crate::Trash),
//! [`Health`](crate::Health), [`Settings`](crate::Settings), [`Rewrite`](crate::Rewrite), [`Ledger`](crate::Ledger)) with the same behaviour; what differs between
//! backends is how, and that is what this struct says: whether values are
//! encrypted and how, whether a key can change in place, whether large
//! outputs are stored once, what narrows a search, whether several
//! handles may share the store, and the grace period of deleted sessions.
//! Tools (`koda-store`) and the conformance suite read it instead of
//! probing a backend's option types.

/// What a store (as opened) supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// How the store is encrypted at rest (with `key_file=` on its URL).
    pub encryption: Encryption,
    /// Whether the key of an encrypted store can be changed in place
    /// (`koda-store rekey`); otherwise a new key means a copy
    /// (`koda-store encrypt --to`).
    pub rekey_in_place: bool,
    /// Whether large outputs are stored once ([`crate::bodies`]).
    pub bodies: Bodies,
    /// What narrows a search before the shared grammar judges each
    /// candidate ([`crate::search`]).
    pub search_index: SearchIndex,
    /// Whether other handles (processes, connections) may open the same
    /// store at the same time.
    pub handles: Handles,
    /// The grace period of deleted sessions on this handle, in days
    /// ([`crate::trash`]; 0: deletes are for good at once).
    pub keep_deleted_days: u32,
}

/// How a store is encrypted at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encryption {
    /// Not encrypted: every value is stored as given.
    None,
    /// The whole file is encrypted page by page (SQLite with SQLCipher).
    WholeFile,
    /// Each value is sealed on its own with the field cipher
    /// ([`crate::cipher`]), bound to its row.
    Fields,
}

impl Encryption {
    /// Whether values are encrypted at rest.
    pub fn is_encrypted(self) -> bool {
        self != Encryption::None
    }
}

/// Whether large outputs are stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bodies {
    /// Every store of this backend stores them once.
    Always,
    /// Chosen per store: a SQLite file an older koda may still read keeps
    /// them inline until `blobs=on` (or `koda-store compact-bodies`);
    /// `stored_once` says whether this store stores them once.
    OptIn {
        /// Whether this store stores them once.
        stored_once: bool,
    },
}

/// What narrows a search's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SearchIndex {
    /// No index: every message in scope is read (memory, sled).
    Scan,
    /// SQLite's FTS5 over the shared tokenizer's words.
    Fts5,
    /// A PostgreSQL `tsvector` computed by this layer, with a GIN index.
    Tsvector,
}

/// Whether several handles may open one store at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Handles {
    /// One handle at a time (a private in-memory store; a sled directory,
    /// which locks itself).
    One,
    /// Many: other processes or connections share it (a SQLite file, a
    /// PostgreSQL schema).
    Many,
}
