//! Scenario tests: small clusters built with the testkit, one behaviour each, by subject.

mod cpu;
mod idle;
mod lifecycle;
mod placement;
mod priority;
mod queues;
mod reclaim;
mod reservations;
mod sharing;
mod teams;

use qm_core::testkit::{ClusterBuilder, Harness};
use qm_core::*;

fn two_teams(nodes: u32, a: u32, b: u32) -> ClusterState {
    ClusterBuilder::new()
        .racks(1, nodes, 8)
        .team("a", a)
        .team("b", b)
        .build()
}

fn reason(h: &Harness, job: JobId) -> Reason {
    let plan = qm_core::plan(&h.state, h.now);
    plan.pending_job(job)
        .unwrap_or_else(|| panic!("{job} is not pending"))
        .reason
        .clone()
}
