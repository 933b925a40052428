//! Sharing safety: a guarantee comes back in the shape the team needs, from its home.

use std::collections::BTreeMap;

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder};

use super::slotted_nodes;
use qm_core::*;

/// 8 nodes of 8 GPUs, 4 per rack: `frontier` is guaranteed half the cluster, `x` and `y` a
/// quarter each.
fn frontier_cluster() -> ClusterState {
    ClusterBuilder::new()
        .racks(2, 4, 8)
        .team("frontier", 32)
        .team("x", 16)
        .team("y", 16)
        .build()
}

/// GPUs each team holds in running (not stopping) jobs.
fn held(h: &Harness) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for j in h.state.live_jobs() {
        if matches!(j.state, JobState::Running(_)) {
            *out.entry(j.spec.team.clone()).or_default() += j.spec.milli_total() / 1000;
        }
    }
    out
}

#[test]
fn homes_lay_guarantees_as_whole_nodes_largest_first_and_share_remainders() {
    let state = ClusterBuilder::new()
        .racks(2, 4, 8)
        .team("big", 32)
        .team("mid", 12)
        .team("small", 4)
        .build();
    let homes = qm_core::homes(&state);
    let ids = |team: &str| -> Vec<u32> { homes.teams[team].iter().map(|n| n.0).collect() };
    // 32 GPUs: four whole nodes, the first rack. 12: one whole node, then 4 GPUs of the next,
    // which `small` shares. Nodes 6 and 7 are nobody's: common ground for every team.
    assert_eq!(ids("big"), vec![0, 1, 2, 3]);
    assert_eq!(ids("mid"), vec![4, 5]);
    assert_eq!(ids("small"), vec![5]);
    let common: Vec<u32> = homes.common.iter().map(|n| n.0).collect();
    assert_eq!(common, vec![6, 7]);
}

#[test]
fn a_guaranteed_gang_takes_its_whole_home_back_within_minutes() {
    let mut h = Harness::new(frontier_cluster());
    // X and Y churn through short single-GPU jobs, borrowing frontier's idle half: who holds
    // which GPU ends up scattered by the order of ends and starts.
    for i in 0..400u64 {
        for team in ["x", "y"] {
            h.submit(
                JobBuilder::new(team)
                    .limit(4000)
                    .runs_for(600 + (i * 7919 + u64::from(team == "y") * 311) % 2400)
                    .grace(30)
                    .min_run(60),
            );
        }
    }
    h.run_until(5000);
    assert_eq!(held(&h).values().sum::<u64>(), 64, "the cluster is full");
    let before = held(&h);
    assert!(before["x"] >= 16 && before["y"] >= 16);
    // Frontier's one big run: 4 whole nodes, inside its guarantee, not preemptible.
    let gang = h.submit(
        JobBuilder::new("frontier")
            .tasks(4)
            .gpus(8)
            .not_preemptible()
            .limit(20_000),
    );
    let submitted = h.now;
    let home: Vec<NodeId> = qm_core::homes(&h.state).teams["frontier"]
        .iter()
        .copied()
        .collect();
    let first_plan = h.plans.len();
    // Borrowed work alone cannot make four whole nodes here: the gang, which cannot be
    // preempted and so runs only at home, takes its home back, runs there that are away from
    // their own homes included. Borrowers younger than their minimum run time (60 s) are
    // protected, then the grace period (30 s). The churn goes on meanwhile.
    while !h.is_running(gang) && h.now < submitted + 200 {
        let at = h.now + 10;
        h.run_until(at);
    }
    assert!(
        h.is_running(gang),
        "{:?}",
        qm_core::plan(&h.state, h.now).pending_job(gang)
    );
    let waited = h.started_at(gang).unwrap() - submitted;
    assert!(waited <= 60 + 30 + 10, "waited {waited} s");
    // Only work in frontier's home was stopped, and X and Y kept their guarantees.
    for plan in &h.plans[first_plan..] {
        for stop in &plan.stops {
            let job = h.state.job(stop.job).unwrap();
            assert_ne!(job.spec.team, "frontier");
        }
    }
    // A team that lost a run away from its home takes its guarantee back at its own home,
    // within its reclaim's grace period.
    let back = h.now + 60 + 30 + 10;
    h.run_until(back);
    let after = held(&h);
    assert!(after["x"] >= 16 && after["y"] >= 16, "{after:?}");
    assert_eq!(after["frontier"], 32);
    let run = h.state.job(gang).unwrap().state.run().unwrap().clone();
    assert!(run.placement.iter().all(|t| home.contains(&t.node)));
    assert_eq!(run.admission, Admission::Guaranteed);
}

#[test]
fn a_team_that_outgrows_its_home_borrows_elsewhere() {
    let mut h = Harness::new(frontier_cluster());
    // X's home is full of its own work; one more job must go elsewhere.
    for _ in 0..16 {
        h.submit(JobBuilder::new("x").limit(1000));
    }
    h.step();
    let admissions = qm_core::admissions(&h.state, h.now);
    assert!(admissions.values().all(|&a| a == Admission::Guaranteed));
    // A guarantee that X outgrew by one job: the 17th runs on lent GPUs, as borrowed.
    let extra = h.submit(JobBuilder::new("x").limit(1000));
    let plan = h.step();
    assert_eq!(plan.start_of(extra).unwrap().admission, Admission::Borrowed);
    let home = &qm_core::homes(&h.state).teams["x"];
    let node = plan.start_of(extra).unwrap().placement[0].node;
    assert!(!home.contains(&node));
}

#[test]
fn work_that_cannot_be_preempted_and_outgrows_its_home_is_told_so() {
    // A and B are guaranteed a node each; A's gang that cannot be preempted needs both.
    let mut h = Harness::new(
        ClusterBuilder::new()
            .racks(1, 2, 8)
            .team("a", 8)
            .team("b", 8)
            .build(),
    );
    let gang = h.submit(
        JobBuilder::new("a")
            .tasks(2)
            .gpus(8)
            .not_preemptible()
            .limit(100),
    );
    let plan = h.step();
    assert_eq!(
        plan.pending_job(gang).unwrap().reason,
        Reason::NotPreemptible { team: "a".into() }
    );
    // As preemptible work it borrows B's idle node.
    let borrower = h.submit(JobBuilder::new("a").tasks(2).gpus(8).limit(100));
    assert!(h.step().start_of(borrower).is_some());
}

/// Two nodes of 8 GPUs; `dense` and `small` are guaranteed one node's worth each. `small`
/// fills one node inside its guarantee, borrows the other, and then four of its first jobs
/// end: its remaining guarantee is counted on both nodes (four old runs on the first, the
/// four oldest borrowed runs on the second), so no node holds only borrowed work. Returns
/// the harness at 1,100 s, `small`'s first node's four remaining jobs, and `dense`'s job.
fn guarantee_counted_on_both_nodes(checkpoint: Option<Secs>) -> (Harness, Vec<JobId>, JobId) {
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team("dense", 8)
        .team("small", 8)
        .build();
    let mut h = Harness::new(state);
    let small = |h: &mut Harness| {
        let mut b = JobBuilder::new("small").limit(100_000);
        if let Some(every) = checkpoint {
            b = b.checkpoint_every(every);
        }
        h.submit(b)
    };
    let first: Vec<JobId> = (0..8).map(|_| small(&mut h)).collect();
    h.step();
    h.now = 100;
    let second: Vec<JobId> = (0..8).map(|_| small(&mut h)).collect();
    h.step();
    let node = |h: &Harness, j: JobId| h.state_of(j).run().unwrap().placement[0].node;
    assert!(first.iter().all(|&j| node(&h, j) == node(&h, first[0])));
    assert!(second.iter().all(|&j| node(&h, j) != node(&h, first[0])));
    h.now = 1_000;
    for &j in &first[..4] {
        h.exit(j, true);
    }
    h.now = 1_100;
    let job = h.submit(JobBuilder::new("dense").gpus(8).limit(100_000));
    (h, first[4..].to_vec(), job)
}

#[test]
fn a_guarantee_comes_back_whole_from_checkpointing_runs_of_a_team_above_its_guarantee() {
    let (mut h, on_first, job) = guarantee_counted_on_both_nodes(Some(600));
    let plan = h.step();
    // Borrowed work alone (four runs on the second node) cannot free a node. `small` holds
    // 12 GPUs against a guarantee of 8: its four runs on the first node may go, each losing
    // 500 s since its last checkpoint; taking the second node's eight would leave it 4.
    let mut victims: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    victims.sort();
    assert_eq!(victims, on_first);
    assert!(plan
        .stops
        .iter()
        .all(|s| s.cause == StopCause::Reclaim && s.beneficiary == Some(job)));
    assert_eq!(held(&h)["small"], 8, "small keeps its guarantee");
    h.reap();
    let plan = h.step();
    let start = plan.start_of(job).expect("dense starts on the freed node");
    assert_eq!(start.admission, Admission::Guaranteed);
    assert_eq!(held(&h)["dense"], 8);
}

#[test]
fn runs_that_do_not_checkpoint_keep_their_place_inside_their_teams_guarantee() {
    // The same cluster, but `small`'s runs restart from the beginning when stopped: only its
    // borrowed runs may be taken, and they alone cannot free a node.
    let (mut h, _, job) = guarantee_counted_on_both_nodes(None);
    let plan = h.step();
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    assert!(plan.start_of(job).is_none());
    assert_eq!(held(&h)["small"], 12);
}

#[test]
fn a_guaranteed_gang_whose_home_holds_a_young_run_takes_borrowed_nodes_elsewhere() {
    // Four 8-GPU nodes: `big` is at home on nodes 0 and 1, `small` on node 2; node 3 is
    // nobody's.
    let b = slotted_nodes(4);
    let mut h = Harness::new(b.team("big", 16).team("small", 8).build());
    let on = |n: &str| JobBuilder::new("small").selector("slot", n).limit(100_000);
    // Small's guaranteed run sits in big's home, away from its own; its work that cannot be
    // preempted borrows at its own home; a borrowed run on common ground; and a young
    // borrowed run, protected for its minimum run time, in big's home too.
    let away = h.submit(on("n1").gpus(8));
    let pinned = h.submit(on("n2").gpus(8).not_preemptible());
    let common = h.submit(on("n3").gpus(8));
    let young = h.submit(on("n0").gpus(1).min_run(10_000));
    h.step();
    assert!([away, pinned, common, young]
        .iter()
        .all(|&j| h.is_running(j)));
    // Big's two-node run, inside its guarantee, cannot be preempted. Its home cannot be made
    // whole before the young run's minimum run time has passed; borrowed work on common
    // ground can be taken back now. It takes node 1 back from the run away from its home
    // and node 3 from the borrowed run, and starts within the grace period.
    h.now = 100;
    let gang = h.submit(
        JobBuilder::new("big")
            .tasks(2)
            .gpus(8)
            .not_preemptible()
            .limit(1000),
    );
    let plan = h.step();
    let mut stopped: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    stopped.sort();
    assert_eq!(stopped, vec![away, common]);
    assert!(h.is_running(young) && h.is_running(pinned));
    h.reap();
    let plan = h.step();
    let start = plan
        .start_of(gang)
        .expect("the gang starts once its victims are gone");
    let mut nodes: Vec<u32> = start.placement.iter().map(|t| t.node.0).collect();
    nodes.sort();
    assert_eq!(nodes, vec![1, 3]);
    assert_eq!(start.admission, Admission::Guaranteed);
}
