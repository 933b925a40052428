//! The API through `app(server)` with `oneshot`: no socket, no agent process; on SQLite (in
//! memory). `api_pg.rs` runs the same cases on PostgreSQL.

mod common;

#[path = "common/api_cases.rs"]
mod cases;

/// The store each case's server opens.
fn store() -> Box<dyn qm_store::Store> {
    Box::new(qm_store::SqliteStore::memory().expect("an in-memory SQLite store"))
}
