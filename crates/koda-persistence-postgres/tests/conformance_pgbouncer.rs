//! The whole conformance suite a second time, through a real PgBouncer in
//! transaction pooling mode (`pooler=transaction`): each case in its own
//! fresh schema, migrated over a direct connection first.

mod support;

use support::ThroughPgBouncer;

koda_persistence_conformance::conformance_tests!(ThroughPgBouncer);
