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

use qm_core::testkit::{ClusterBuilder, Harness, NodeBuilder};
use qm_core::*;

fn two_teams(nodes: u32, a: u32, b: u32) -> ClusterState {
    ClusterBuilder::new()
        .racks(1, nodes, 8)
        .team("a", a)
        .team("b", b)
        .build()
}

/// `n` nodes of 8 GPUs in one rack, node `i` labelled `slot=n{i}` so that a job can be
/// pinned to it with `.selector("slot", "n{i}")`.
fn slotted_nodes(n: u32) -> ClusterBuilder {
    (0..n).fold(ClusterBuilder::new(), |b, i| {
        b.node(
            NodeBuilder::new(8)
                .label("slot", &format!("n{i}"))
                .topology(&["pod", "rack-0"]),
        )
    })
}

fn reason(h: &Harness, job: JobId) -> Reason {
    let plan = qm_core::plan(&h.state, h.now);
    plan.pending_job(job)
        .unwrap_or_else(|| panic!("{job} is not pending"))
        .reason
        .clone()
}
