//! The whole conformance suite under a least-privilege runtime role: the
//! documented grants only (`grant_sql`: no `CREATE` anywhere), opened with
//! `migrate=false` on a schema its owner migrated.

mod support;

use support::RuntimeRole;

// The state machine on a quarter of PROPTEST_CASES: the direct run
// (conformance.rs) has the full count; this one checks the path.
koda_persistence_conformance::conformance_tests!(RuntimeRole, machine_share = 4);
