//! The whole conformance suite under a least-privilege runtime role: the
//! documented grants only (`grant_sql`: no `CREATE` anywhere), opened with
//! `migrate=false` on a schema its owner migrated.

mod support;

use support::RuntimeRole;

koda_persistence_conformance::conformance_tests!(RuntimeRole);
