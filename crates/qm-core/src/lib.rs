//! Quartermaster's scheduling core: the domain model and every scheduling policy, as pure
//! functions.
//!
//! - [`ClusterState`] holds nodes, the team tree, jobs and their allocations.
//! - [`apply`] is the only way it changes: one [`Event`] at a time, checked first, so a
//!   refused event changes nothing.
//! - [`plan`] is a pure function of the state and the time: the same inputs give the same
//!   [`Plan`], byte for byte.
//!
//! This crate knows nothing about HTTP, SQL, files, threads or the clock: time is an argument.

pub mod error;
pub mod model;
pub mod plan;
pub mod state;
pub mod teams;
/// Builders and a minimal shell for tests: compiled for this crate's tests and for crates
/// that enable the `testkit` feature (in their `[dev-dependencies]`).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod validate;

pub use error::ApplyError;
pub use model::*;
pub use plan::{
    admissions, decide, dependency_block, homes, plan, HomeMap, IdleAction, IdleNotice, PendingJob,
    Plan, Reason, Reservation, Start, StopOrder, TeamStanding,
};
pub use state::{
    apply, Admission, ClusterState, Event, Hold, Job, JobState, Node, Run, StopCause,
    TaskPlacement, Team,
};
pub use validate::MAX_TASKS;

/// The README's tour is compiled and run as a test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeTour;
