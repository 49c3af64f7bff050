//! [`Traced`]: any store, with a `tracing` span around every call. One
//! file per capability trait, each a list of its methods for [`traced!`].

/// Implements trait `$cap` for [`Traced`]: each listed method runs in
/// [`Traced::call`]'s span under its own name, with the session id
/// `=> session` gives (an expression of the method's arguments; `None`
/// when the call names no session). What follows the list is pasted into
/// the impl as written: a method that needs more than this.
macro_rules! traced {
    ($cap:ident {
        $( fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty => $session:expr; )*
    } $($rest:tt)*) => {
        #[async_trait::async_trait]
        impl<P: $cap> $cap for Traced<P> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.call(stringify!($name), $session, self.inner.$name($($arg),*))
                        .await
                }
            )*
            $($rest)*
        }
    };
}

mod fork;
mod health;
mod ledger;
mod persistence;
mod rewrite;
mod search;
mod settings;
mod transfer;
mod trash;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::Instrument as _;

use crate::capabilities::Capabilities;
use crate::store::Store;

/// A call slower than this is logged at `warn` (with its method and
/// duration); every call is logged at `debug` with its duration.
pub const SLOW_CALL: Duration = Duration::from_millis(250);

/// Wraps a store so that every trait call runs in a `tracing` span named
/// `persistence` with the fields `backend`, `method` and `session` (the
/// session id, when the call has one), and ends with a `debug` event giving
/// its duration (and its error, if any), or a `warn` event when it took
/// longer than [`SLOW_CALL`]. Message content, metadata values and
/// connection URLs are never recorded. `koda_persistence::open` wraps every
/// store it opens.
#[derive(Debug)]
pub struct Traced<P> {
    pub(super) inner: P,
    backend: &'static str,
}

impl<P> Traced<P> {
    /// `inner`, traced under the backend name `backend` (`sqlite`, …).
    pub fn new(inner: P, backend: &'static str) -> Self {
        Self { inner, backend }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub(super) async fn call<T>(
        &self,
        method: &'static str,
        session: Option<&str>,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // Nobody listens (not even for slow calls): no clock reads, no span.
        if !tracing::enabled!(tracing::Level::WARN) {
            return call.await;
        }
        let span =
            tracing::debug_span!("persistence", backend = self.backend, method, session = session.unwrap_or(""),);
        let started = Instant::now();
        let out = if span.is_disabled() { call.await } else { call.instrument(span.clone()).await };
        let elapsed = started.elapsed();
        let ms = elapsed.as_secs_f64() * 1e3;
        let _in = span.enter();
        match &out {
            Err(e) => tracing::debug!(ms, error = %e, "call failed"),
            Ok(_) if elapsed > SLOW_CALL => {
                tracing::warn!(backend = self.backend, method, ms, limit_ms = SLOW_CALL.as_millis() as u64, "slow call")
            }
            Ok(_) => tracing::debug!(ms, "call done"),
        }
        out
    }
}

impl<P: Store> Store for Traced<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
