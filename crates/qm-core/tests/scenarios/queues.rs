//! Deep queues: a plan walks each team's queue from its head only as far as it must, and
//! sets aside or drops what cannot change it; the jobs it must reach are still reached.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder};
use qm_core::*;

/// `decide` (which stops walking early) and `plan` (which explains every job) agree.
fn same_decisions(h: &Harness) -> Plan {
    let full = qm_core::plan(&h.state, h.now);
    let quick = decide(&h.state, h.now);
    assert_eq!(full.starts, quick.starts);
    assert_eq!(full.stops, quick.stops);
    full
}

/// Two nodes of 8 GPUs, teams `a` and `b` guaranteed one each: a's node full, one GPU free
/// on the other.
fn nearly_full(policy: PolicyKind) -> Harness {
    let state = ClusterBuilder::new()
        .policy(policy)
        .racks(1, 2, 8)
        .team("a", 8)
        .team("b", 8)
        .build();
    let mut h = Harness::new(state);
    h.submit(JobBuilder::new("a").gpus(8).limit(1_000));
    h.submit(JobBuilder::new("b").gpus(7).limit(5_000));
    h.step();
    h
}

#[test]
fn a_small_job_behind_hundreds_of_whole_node_jobs_still_backfills() {
    let mut h = nearly_full(PolicyKind::Default);
    // Team a is at its guarantee: its whole-node jobs are all borrowing, and none fits.
    let big: Vec<JobId> = (0..300)
        .map(|_| h.submit(JobBuilder::new("a").gpus(8).limit(3_600)))
        .collect();
    h.now = 10;
    let small = h.submit(JobBuilder::new("a").limit(100));
    let plan = same_decisions(&h);
    let started: Vec<JobId> = plan.starts.iter().map(|s| s.job).collect();
    assert_eq!(
        started,
        [small],
        "the last job of the queue takes the one free GPU"
    );
    assert!(plan.reservations.iter().any(|r| r.job == big[0]));
    assert_eq!(
        plan.pending.len(),
        300,
        "every other job is explained, however deep the queue"
    );
}

#[test]
fn under_static_a_full_partition_does_not_stop_another_teams_jobs() {
    let mut h = nearly_full(PolicyKind::Static);
    for _ in 0..200 {
        h.submit(JobBuilder::new("a").limit(3_600));
    }
    let b_small = h.submit(JobBuilder::new("b").limit(100));
    let a_small = h.submit(JobBuilder::new("a").limit(100));
    let plan = same_decisions(&h);
    let started: Vec<JobId> = plan.starts.iter().map(|s| s.job).collect();
    assert_eq!(
        started,
        [b_small],
        "b's partition has a GPU free, a's has none"
    );
    assert!(plan.pending_job(a_small).is_some());
}
