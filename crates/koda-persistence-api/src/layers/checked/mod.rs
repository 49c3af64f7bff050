//! [`Checked`]: any store, with the contract's argument checks run before
//! each call reaches it. One file per capability trait.

mod fork;
mod health;
mod ledger;
mod persistence;
mod rewrite;
mod search;
mod settings;
mod transfer;
mod trash;

use crate::capabilities::Capabilities;
use crate::store::Store;

/// Any store, with the contract's argument checks run before each call
/// reaches it: a negative `limit` or token counter and a project root
/// that is not UTF-8 are `InvalidInput`, and so are import records and id
/// claims that fail [`check_session_record`](crate::backend::check_session_record), [`check_message_records`](crate::backend::check_message_records) or
/// [`check_claim`](crate::backend::check_claim). A session id no store can hold (see
/// [`check_session_id`](crate::backend::check_session_id): empty, over [`MAX_SESSION_ID_BYTES`](crate::MAX_SESSION_ID_BYTES), or with NUL)
/// gets the unknown session's answer here (empty reads, `false`, `None`;
/// `SessionNotFound` from writes, after the arguments were checked), so no
/// backend needs its own guard. A backend implements storage only; the facade and
/// [`backend::open_url`](crate::backend::open_url) put this layer around
/// every store they open, and the conformance suite runs against stores
/// opened that way (its bad-input cases fail on a store without it).
#[derive(Debug, Clone)]
pub struct Checked<P> {
    pub(super) inner: P,
}

impl<P> Checked<P> {
    /// `inner`, checked.
    pub fn new(inner: P) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped store, unwrapped.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P> std::ops::Deref for Checked<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.inner
    }
}

impl<P: Store> Store for Checked<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
