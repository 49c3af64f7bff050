//! [`Store`]: koda's [`Persistence`] together with every capability
//! trait, the one type a store is handed out as.

use crate::capabilities::Capabilities;
use crate::fork::Fork;
use crate::health::Health;
use crate::ledger::Ledger;
use crate::persistence::Persistence;
use crate::rewrite::Rewrite;
use crate::search::Search;
use crate::settings::Settings;
use crate::transfer::Transfer;
use crate::trash::Trash;

/// A whole store: what koda calls ([`Persistence`], with koda's own
/// signatures) and every capability ([`Transfer`], [`Search`], [`Fork`],
/// [`Trash`], [`Health`], [`Settings`], [`Rewrite`], [`Ledger`]), with what this store supports declared by
/// [`capabilities`](Self::capabilities).
///
/// `koda_persistence::open` returns an `Arc<dyn Store>`: koda searches,
/// forks and restores through the handle it opened, and an
/// `Arc<dyn Store>` coerces to `Arc<dyn Persistence>` where only koda's
/// calls are wanted.
///
/// **Secrets.** A store whose redaction mode is `secrets` (recorded in its
/// [`Settings`] by the first open with `redact=secrets`, or by
/// `koda-store redact --mode secrets`) stores every credential the rules
/// of [`crate::secrets`] find in the text it is given (content, full
/// output, tool calls, titles, modes, metadata and TODO values, summaries,
/// stubs, imported records) as `[REDACTED:<rule>:<tag>]`: what is read
/// back is the redacted text, never the secret. Every handle applies the
/// mode the store records; once it records `secrets`, a URL asking
/// `redact=off` is `InvalidInput` (until `koda-store redact --mode off`).
/// The default is `off`: every byte is stored as given. Text stored
/// before the mode was recorded keeps what it holds until it is cleaned
/// in place through [`Rewrite`] (`koda-store redact`).
pub trait Store: Persistence + Transfer + Search + Fork + Trash + Health + Settings + Rewrite + Ledger {
    /// What this store supports, as opened (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;
}
