//! The conformance suite for koda's [`Persistence`](koda_persistence_api::Persistence) backends.
//!
//! - [`cases`]: one plain `async fn` per rule of the contract, grouped by area.
//! - [`model`]: an obviously-correct reference model written from the contract.
//! - [`machine`]: a proptest state machine driving the model and a backend
//!   through the same random operations, comparing every result.
//!
//! A backend runs all of it from its `tests/conformance.rs` (with this crate
//! as a dev-dependency): a factory that makes a fresh, empty store per case,
//! and one macro call.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use koda_persistence_api::ManualClock;
//! use koda_persistence_api::backend::open_checked;
//! use koda_persistence_conformance::{Factory, Fixture};
//! use koda_persistence_memory::{Memory, MemoryOptions};
//!
//! /// A fresh store for every case, opened as the facade opens it: through
//! /// the backend's `Backend` impl, behind the `Checked` layer.
//! struct Fresh;
//!
//! #[async_trait::async_trait]
//! impl Factory for Fresh {
//!     async fn create(&self, start_ms: i64) -> anyhow::Result<Fixture> {
//!         let clock = ManualClock::new(start_ms);
//!         let store = open_checked::<Memory>(MemoryOptions::default(), Arc::new(clock.clone())).await?;
//!         Ok(Fixture::new(Arc::new(store), clock))
//!     }
//! }
//!
//! koda_persistence_conformance::conformance_tests!(Fresh);
//! # fn main() {}
//! ```
//!
//! The macro only emits one `#[tokio::test]` per case (and one for the state
//! machine); test bodies live here as ordinary functions.
#![deny(missing_docs)]

pub mod at_rest;
pub mod cases;
pub mod disk;
mod factory;
pub mod machine;
pub mod model;
pub mod process;
pub mod secrets;

pub use factory::{Factory, Fixture, START_MS, Skipped};

/// What a case does when its factory failed: a [`Skipped`] error prints
/// `SKIPPED <case>: <reason>` and passes; any other error fails the case.
///
/// # Errors
/// `err` itself, unless it is [`Skipped`].
pub fn skip_or_fail(case: &str, err: anyhow::Error) -> anyhow::Result<()> {
    match err.downcast_ref::<Skipped>() {
        Some(reason) => {
            say_skipped(case, &reason.to_string());
            Ok(())
        }
        None => Err(err),
    }
}

/// Prints `SKIPPED <case>: <reason>` where it is seen: straight to the
/// process's stderr, which the test harness's output capture (of `print!`
/// and `eprint!`) does not swallow for a passing test.
pub fn say_skipped(case: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {case}: {reason}");
}

#[doc(hidden)]
pub mod __private {
    pub use anyhow;
    pub use tokio;
}

/// Emits the whole suite for one backend: `conformance_tests!(FactoryValue);`
/// where `FactoryValue` is an expression of a type implementing [`Factory`].
/// The tests appear as `<area>::<case>` plus `state_machine`.
///
/// `conformance_tests!(FactoryValue, machine_share = N)` runs the state
/// machine on `1/N` of `PROPTEST_CASES` (for a second path to a backend
/// whose first run has the full count).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!($factory, machine_share = 1);
    };
    ($factory:expr, machine_share = $share:expr) => {
        $crate::__for_each_case!($crate::__emit_cases, $factory);

        #[test]
        fn state_machine() {
            $crate::machine::run_share(&$factory, $share);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_cases {
    ($factory:expr; $($area:ident : [$($name:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $area {
                #[allow(unused_imports)]
                use super::*;
                $(
                    #[$crate::__private::tokio::test(flavor = "multi_thread", worker_threads = 2, crate = "::koda_persistence_conformance::__private::tokio")]
                    async fn $name() -> $crate::__private::anyhow::Result<()> {
                        let fx = match $crate::Factory::create(&$factory, $crate::START_MS).await {
                            Ok(fx) => fx,
                            Err(e) => return $crate::skip_or_fail(stringify!($area::$name), e),
                        };
                        let outcome = $crate::cases::$area::$name(&fx).await;
                        fx.finish(outcome).await
                    }
                )*
            }
        )*
    };
}
