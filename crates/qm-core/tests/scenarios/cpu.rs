//! Work without GPUs: accepted, placed where it strands the fewest GPUs, never holding a
//! guarantee.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, NodeBuilder, TeamBuilder};
use qm_core::*;

use super::reason;

fn node_of(h: &Harness, job: JobId) -> Vec<NodeId> {
    h.state_of(job)
        .run()
        .expect("running")
        .placement
        .iter()
        .map(|t| t.node)
        .collect()
}

#[test]
fn a_cpu_only_job_runs_where_it_strands_the_fewest_gpus() {
    // Node 0 has 64 cores, node 1 has 96; each runs four 1-GPU tasks of 8 cores, so node 0
    // has 32 cores left for its 4 free GPUs and node 1 has 64.
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).cpu_milli(64_000).label("n", "0"))
        .node(NodeBuilder::new(8).cpu_milli(96_000).label("n", "1"))
        .team("a", 16)
        .build();
    let mut h = Harness::new(state);
    for n in ["0", "0", "0", "0", "1", "1", "1", "1"] {
        h.submit(JobBuilder::new("a").cpu_milli(8_000).selector("n", n));
    }
    h.step();
    // 16 cores on node 0 would leave 16 for its 4 free GPUs: two of them stranded for the
    // 8-core tasks this workload runs. On node 1, 48 cores stay for 4 GPUs.
    let cpu = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(16_000));
    h.step();
    assert!(h.is_running(cpu));
    assert_eq!(node_of(&h, cpu), vec![NodeId(1)]);
    let run = h.state_of(cpu).run().unwrap();
    assert!(
        run.placement[0].gpus.is_empty(),
        "a CPU-only task holds no GPU"
    );
    // The GPUs it left alone still take the workload's tasks: four more on node 1, four on 0.
    let more: Vec<JobId> = (0..8)
        .map(|_| h.submit(JobBuilder::new("a").cpu_milli(8_000)))
        .collect();
    h.step();
    assert!(more.iter().all(|&j| h.is_running(j)), "no GPU stranded");
}

#[test]
fn cpu_only_tasks_of_a_gang_share_nodes_by_cpu() {
    let state = ClusterBuilder::new().racks(1, 2, 8).team("a", 16).build();
    let mut h = Harness::new(state);
    // Each node has 128 cores: 3 tasks of 48 cores need two nodes.
    let gang = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(48_000).tasks(3));
    h.step();
    assert!(h.is_running(gang));
    let mut nodes = node_of(&h, gang);
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 2);
    // A fourth such task does not fit beside them (128 - 2 x 48 = 32 cores on one node).
    let more = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(48_000).tasks(2));
    h.step();
    assert!(h.is_pending(more));
}

#[test]
fn cpu_only_work_holds_no_guarantee_and_stays_off_other_teams_homes_if_it_cannot_be_preempted() {
    // Team a is guaranteed node 0; node 1 is common ground.
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team("a", 8)
        .team("b", 0)
        .build();
    let mut h = Harness::new(state);
    let pinned = h.submit(
        JobBuilder::new("b")
            .gpus(0)
            .cpu_milli(8_000)
            .not_preemptible(),
    );
    h.step();
    assert!(h.is_running(pinned));
    assert_eq!(node_of(&h, pinned), vec![NodeId(1)]);
    let run = h.state_of(pinned).run().unwrap();
    assert_eq!(run.admission, Admission::Borrowed);
    // Team a's own CPU-only job borrows too: a guarantee is GPUs.
    let own = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(8_000));
    h.step();
    assert_eq!(
        h.state_of(own).run().unwrap().admission,
        Admission::Borrowed
    );
    // And it takes nothing from team a's guarantee: a's 8-GPU job still starts.
    let big = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    assert!(h.is_running(big));
}

#[test]
fn an_owner_takes_back_the_cpu_that_preemptible_cpu_only_work_borrowed() {
    // One node of 8 GPUs and 128 cores, all of it team a's guarantee.
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team("a", 8)
        .team("b", 0)
        .build();
    let mut h = Harness::new(state);
    let cpu = h.submit(JobBuilder::new("b").gpus(0).cpu_milli(120_000).grace(0));
    h.step();
    assert!(h.is_running(cpu));
    // Every GPU is free, but 8 cores are not enough for a's 16-core task.
    let owner = h.submit(JobBuilder::new("a").gpus(1).cpu_milli(16_000));
    h.settle();
    assert!(h.is_running(owner), "{:?}", h.state_of(owner));
    assert_eq!(h.state.job(cpu).map(|j| j.preemptions), Some(1));
}

#[test]
fn a_teams_cpu_cap_holds_for_jobs_with_and_without_gpus_and_for_its_sub_teams() {
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("a").guaranteed(8).max_cpu(10).build())
        .team_spec(TeamBuilder::new("org").guaranteed(4).max_cpu(4).build())
        .team_spec(TeamBuilder::new("x").parent("org").guaranteed(4).build())
        .team("b", 4)
        .build();
    let mut h = Harness::new(state);
    let gpu: Vec<JobId> = (0..3)
        .map(|_| h.submit(JobBuilder::new("a").cpu_milli(4_000)))
        .collect();
    h.step();
    // Two 4-CPU jobs hold 8 of a's 10 CPUs; the third would hold 12.
    assert!(h.is_running(gpu[0]) && h.is_running(gpu[1]));
    match reason(&h, gpu[2]) {
        Reason::OverCpuMax {
            team,
            used_milli,
            ask_milli,
            max_milli,
        } => {
            assert_eq!(team, "a");
            assert_eq!((used_milli, ask_milli, max_milli), (8_000, 4_000, 10_000));
        }
        r => panic!("{r:?}"),
    }
    assert!(reason(&h, gpu[2]).to_string().contains("CPU"));
    // Work without GPUs counts against the same cap: 2 CPUs fit, 3 more do not.
    let small = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(2_000));
    let big = h.submit(JobBuilder::new("a").gpus(0).cpu_milli(3_000));
    h.step();
    assert!(h.is_running(small));
    assert!(matches!(reason(&h, big), Reason::OverCpuMax { .. }));
    // Another team is not held back by a's cap.
    let other = h.submit(JobBuilder::new("b").cpu_milli(64_000));
    // A sub-team is capped by its parent's cap.
    let child = h.submit(JobBuilder::new("x").cpu_milli(6_000));
    h.step();
    assert!(h.is_running(other));
    match reason(&h, child) {
        Reason::OverCpuMax { team, .. } => assert_eq!(team, "org"),
        r => panic!("{r:?}"),
    }
    // Once a's runs give CPU back, the capped job starts.
    h.exit(gpu[0], true);
    h.step();
    assert!(h.is_running(gpu[2]));
    h.state.check_invariants();
}
