//! How a backend hands the suite a fresh store.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::at_rest::AtRest;
use koda_persistence_api::{ManualClock, Persistence, Store};

/// The instant every case's clock starts at: 2026-11-26T05:07:04.123Z.
pub const START_MS: i64 = 1_795_669_624_123;

type Teardown = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

type Opener = Box<dyn Fn(u32) -> Pin<Box<dyn Future<Output = anyhow::Result<Fixture>> + Send>> + Send + Sync>;

type Probe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<i64>> + Send>> + Send + Sync>;

/// One fresh, empty store and the clock it reads.
pub struct Fixture {
    /// The store under test, with every capability.
    pub store: Arc<dyn Store>,
    /// The clock the store reads; cases move it.
    pub clock: ManualClock,
    guard: Option<Box<dyn Any + Send>>,
    teardown: Option<Teardown>,
    deadlocks: Option<Probe>,
    second: Option<Arc<dyn Persistence>>,
    grace: Option<Opener>,
    at_rest: Option<Arc<dyn AtRest>>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl Fixture {
    /// A context for `store` reading `clock`.
    pub fn new(store: Arc<dyn Store>, clock: ManualClock) -> Self {
        Self { store, clock, guard: None, teardown: None, deadlocks: None, second: None, grace: None, at_rest: None }
    }

    /// A capability: `open(days)` makes another fresh, empty store of the
    /// same backend (and the same kind of location), opened with
    /// `keep_deleted_days=days`, with a clock of its own starting at
    /// [`START_MS`]. Cases about the grace period setting use it.
    pub fn with_grace_opener<F, Fut>(mut self, open: F) -> Self
    where
        F: Fn(u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Fixture>> + Send + 'static,
    {
        self.grace = Some(Box::new(move |days| Box::pin(open(days))));
        self
    }

    /// A fresh store opened with `keep_deleted_days=days`, when the factory
    /// gave an opener (see [`Fixture::with_grace_opener`]). End it with
    /// [`Fixture::finish`].
    ///
    /// # Errors
    /// The opener's.
    pub async fn fresh_with_grace(&self, days: u32) -> anyhow::Result<Option<Fixture>> {
        match &self.grace {
            Some(open) => Ok(Some(open(days).await?)),
            None => Ok(None),
        }
    }

    /// A capability: `second` is another handle on the same store (another
    /// koda process on the same file or schema: its own connections and its
    /// own context cache). Backends whose store belongs to one handle (sled,
    /// a private in-memory database) leave it out, and the cases that need
    /// it say they do not apply.
    pub fn with_second_handle(mut self, second: Arc<dyn Persistence>) -> Self {
        self.second = Some(second);
        self
    }

    /// The second handle, when the backend has one (see
    /// [`Fixture::with_second_handle`]).
    pub fn second_handle(&self) -> Option<&Arc<dyn Persistence>> {
        self.second.as_ref()
    }

    /// A capability: the backend's stores at rest ([`AtRest`]), for the
    /// cipher area. A backend whose stores declare encryption
    /// ([`Capabilities::encryption`](koda_persistence_api::Capabilities::encryption))
    /// must give it; the cipher cases fail on such a fixture without it.
    pub fn with_at_rest(mut self, at_rest: Arc<dyn AtRest>) -> Self {
        self.at_rest = Some(at_rest);
        self
    }

    /// The backend's stores at rest, when the factory gave them (see
    /// [`Fixture::with_at_rest`]).
    pub fn at_rest(&self) -> Option<&Arc<dyn AtRest>> {
        self.at_rest.as_ref()
    }

    /// Lets cases read the server's deadlock counter (PostgreSQL's
    /// `pg_stat_database.deadlocks`), for backends where deadlocks can occur
    /// and be counted. Cases that race writers require it not to rise.
    pub fn with_deadlock_probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<i64>> + Send + 'static,
    {
        self.deadlocks = Some(Box::new(move || Box::pin(probe())));
        self
    }

    /// The server's deadlock counter, when the factory gave a probe.
    ///
    /// # Errors
    /// The probe's.
    pub async fn deadlocks(&self) -> anyhow::Result<Option<i64>> {
        match &self.deadlocks {
            Some(p) => Ok(Some(p().await?)),
            None => Ok(None),
        }
    }

    /// Keeps `guard` (a temp dir, a server handle…) alive as long as the store.
    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Runs `teardown` (for example dropping a Postgres schema) after the case.
    pub fn with_teardown<F, Fut>(mut self, teardown: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.teardown = Some(Box::new(move || Box::pin(teardown())));
        self
    }

    /// Ends a case: drops the store, runs the teardown, and returns the case's
    /// outcome (or the teardown's error when the case passed).
    ///
    /// # Errors
    /// The case's error, else the teardown's.
    pub async fn finish(self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let Fixture { store, guard, teardown, second, .. } = self;
        drop(second);
        drop(store);
        let torn = match teardown {
            Some(t) => t().await,
            None => Ok(()),
        };
        drop(guard);
        outcome.and(torn)
    }
}

/// Returned (inside the `anyhow::Error`) by a [`Factory`] whose backend is
/// not available and whose user opted out of it explicitly. The suite then
/// prints `SKIPPED` with the reason instead of running the case; a factory
/// must never use it silently.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Skipped(pub String);

/// Builds fresh, empty stores of one backend.
#[async_trait::async_trait]
pub trait Factory: Send + Sync {
    /// A fresh, empty store whose clock starts at `start_ms`. Each call must
    /// be independent of every other (its own file, directory or schema), so
    /// cases run in parallel.
    ///
    /// # Errors
    /// When the backend cannot be opened; for a backend that needs a server
    /// the message says how to provide one.
    async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture>;
}
