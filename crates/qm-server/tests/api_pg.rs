//! The API's cases (`common/api_cases.rs`) on PostgreSQL: each case's server on a new
//! database of the server `scripts/test` starts (`QM_TEST_PG`); they fail, never skip,
//! without it.

mod common;

#[path = "common/api_cases.rs"]
mod cases;

/// The store each case's server opens: a new, empty database.
fn store() -> Box<dyn qm_store::Store> {
    let base = std::env::var("QM_TEST_PG").expect(
        "QM_TEST_PG is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL and sets it",
    );
    let url = qm_store::pg::throwaway_database(&base).expect("a throwaway database");
    qm_store::open(&url, &qm_store::DbAccess::default()).expect("the PostgreSQL store")
}
