//! The whole conformance suite against `PostgresStore`, each case in its own
//! fresh schema (see `support` for how the server is found).

mod support;

use support::FreshSchema;

koda_persistence_conformance::conformance_tests!(FreshSchema);
