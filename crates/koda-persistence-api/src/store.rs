//! [`Store`]: koda's [`Persistence`] together with every capability
//! trait, the one type a store is handed out as.

use crate::capabilities::Capabilities;
use crate::fork::Fork;
use crate::health::Health;
use crate::persistence::Persistence;
use crate::search::Search;
use crate::transfer::Transfer;
use crate::trash::Trash;

/// A whole store: what koda calls ([`Persistence`], with koda's own
/// signatures) and every capability ([`Transfer`], [`Search`], [`Fork`],
/// [`Trash`], [`Health`]), with what this store supports declared by
/// [`capabilities`](Self::capabilities).
///
/// `koda_persistence::open` returns an `Arc<dyn Store>`: koda searches,
/// forks and restores through the handle it opened, and an
/// `Arc<dyn Store>` coerces to `Arc<dyn Persistence>` where only koda's
/// calls are wanted.
pub trait Store: Persistence + Transfer + Search + Fork + Trash + Health {
    /// What this store supports, as opened (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;
}
