//! The API's cases (`common/api_cases.rs`) on PostgreSQL: each case's server on a new
//! database of the server `scripts/test` starts (`QM_TEST_PG`); they fail, never skip,
//! without it.

mod common;

#[path = "common/api_cases.rs"]
mod cases;

/// The store each case's server opens: a new, empty database.
fn store() -> Box<dyn qm_store::Store> {
    let url = qm_store::pg::test_database();
    qm_store::open(&url, &qm_store::DbAccess::default()).expect("the PostgreSQL store")
}
