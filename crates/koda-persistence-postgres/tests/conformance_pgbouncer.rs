//! The whole conformance suite a second time, through a real PgBouncer in
//! transaction pooling mode (`pooler=transaction`): each case in its own
//! fresh schema, migrated over a direct connection first.

mod support;

use support::ThroughPgBouncer;

// The state machine on a quarter of PROPTEST_CASES: the direct run
// (conformance.rs) has the full count; this one checks the path.
koda_persistence_conformance::conformance_tests!(ThroughPgBouncer, machine_share = 4);
