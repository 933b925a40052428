//! Reclaim: who is preempted for whom, and what protects a borrower.

use qm_core::testkit::{Harness, JobBuilder};
use qm_core::*;

use super::{reason, slotted_nodes, two_teams};

#[test]
fn reclaim_preempts_the_borrowers_losing_least_work_and_holds_gpus_for_the_owner() {
    let mut h = Harness::new(two_teams(4, 16, 16));
    // B fills its guarantee with long jobs, then borrows 12 GPUs, one job every 100 s.
    let mut guaranteed = Vec::new();
    for _ in 0..16 {
        guaranteed.push(h.submit(JobBuilder::new("b").limit(100_000)));
    }
    h.step();
    let mut borrowed = Vec::new();
    for i in 0..12 {
        h.now = 100 * (i + 1);
        borrowed.push(h.submit(JobBuilder::new("b").limit(100_000)));
        h.step();
    }
    assert!(borrowed.iter().all(|&j| h.is_running(j)));
    let plan = h.step();
    let b = plan.teams.iter().find(|t| t.team == "b").unwrap();
    assert_eq!(b.borrowed_milli, 12_000);

    h.now = 1300;
    let owner = h.submit(JobBuilder::new("a").gpus(8));
    let plan = h.step();
    let mut victims: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    victims.sort();
    // The four youngest borrowed jobs lose the least work, and sit on the node with 4 free.
    assert_eq!(victims, borrowed[8..].to_vec());
    let node_of = |h: &Harness, j: JobId| h.state_of(j).run().unwrap().placement[0].node;
    let on = node_of(&h, victims[0]);
    assert!(victims.iter().all(|&v| node_of(&h, v) == on));
    assert_eq!(h.state.node(on).unwrap().whole_gpus_free(), 4);
    assert!(plan
        .stops
        .iter()
        .all(|s| s.cause == StopCause::Reclaim && s.beneficiary == Some(owner)));
    assert!(matches!(
        plan.pending_job(owner).unwrap().reason,
        Reason::WaitingForReclaim { .. }
    ));
    let victim_node = h.state_of(victims[0]).run().unwrap().placement[0].node;
    // Nothing else may take the freed GPUs: a B job submitted now does not start there.
    let intruder = h.submit(JobBuilder::new("b"));
    h.reap();
    let plan = h.step();
    assert!(plan.start_of(intruder).is_none());
    let start = plan
        .start_of(owner)
        .expect("owner starts on the freed GPUs");
    assert_eq!(start.admission, Admission::Guaranteed);
    assert_eq!(start.placement[0].node, victim_node);
    // The victims went back to the queue, keeping their place (submission time).
    for (i, v) in (8u64..).zip(&victims) {
        assert!(h.is_pending(*v));
        let job = h.state.job(*v).unwrap();
        assert_eq!(job.preemptions, 1);
        assert_eq!(
            job.spec.submit_s,
            100 * (i + 1),
            "{v} keeps its submission time"
        );
    }
    assert!(guaranteed.iter().all(|&j| h.is_running(j)));
}

#[test]
fn reclaim_prefers_jobs_that_checkpoint() {
    let mut h = Harness::new(two_teams(1, 4, 4));
    let old_ckpt = h.submit(JobBuilder::new("b").gpus(4).checkpoint_every(60));
    h.step();
    h.now = 3000;
    let young = h.submit(JobBuilder::new("b").gpus(4));
    h.step();
    h.now = 3100;
    // Old job ran 3100 s but checkpoints every minute: it loses 40 s; young loses 100 s.
    // B is guaranteed 4; the younger job is the borrowed one, so only it may be preempted.
    let owner = h.submit(JobBuilder::new("a").gpus(4));
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, young);
    assert_eq!(plan.stops[0].lost_gpu_s, 400);
    let _ = (old_ckpt, owner);

    // With both jobs borrowed (B guaranteed nothing), the checkpointing one goes first.
    let mut h = Harness::new(two_teams(1, 4, 0));
    let ckpt = h.submit(JobBuilder::new("b").gpus(4).checkpoint_every(60));
    h.step();
    h.now = 3000;
    h.submit(JobBuilder::new("b").gpus(4));
    h.step();
    h.now = 3100;
    h.submit(JobBuilder::new("a").gpus(4));
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, ckpt);
    assert_eq!(plan.stops[0].lost_gpu_s, 4 * (3100 % 60));
}

#[test]
fn minimum_run_time_protects_borrowers_until_it_has_passed() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let borrower = h.submit(JobBuilder::new("b").gpus(8).min_run(600));
    h.step();
    h.now = 100;
    let owner = h.submit(JobBuilder::new("a").gpus(8));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    assert!(h.is_pending(owner));
    h.now = 600;
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, borrower);
    h.reap();
    h.step();
    assert!(h.is_running(owner));
}

#[test]
fn non_preemptible_borrowers_are_never_reclaimed() {
    // B's job started on GPUs no team was guaranteed; then A was guaranteed the node.
    let mut h = Harness::new(two_teams(1, 0, 0));
    h.submit(JobBuilder::new("b").gpus(8).not_preemptible().limit(500));
    assert_eq!(h.step().starts.len(), 1);
    apply(&mut h.state, Event::SetTeam(TeamSpec::new("a", 8))).unwrap();
    let owner = h.submit(JobBuilder::new("a").gpus(8));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    // It gets a reservation for when the borrower's time limit ends instead.
    assert_eq!(
        plan.pending_job(owner).unwrap().reason,
        Reason::Reserved { start_s: 500 }
    );
}

#[test]
fn work_that_cannot_be_preempted_needs_a_time_limit_to_borrow() {
    // A is guaranteed node 0; node 1 is nobody's. B has no guarantee.
    let mut h = Harness::new(two_teams(2, 8, 0));
    let b_unbounded = h.submit(JobBuilder::new("b").gpus(8).not_preemptible().no_limit());
    let a_inside = h.submit(JobBuilder::new("a").gpus(8).not_preemptible().no_limit());
    let a_beyond = h.submit(JobBuilder::new("a").gpus(8).not_preemptible().no_limit());
    let plan = h.step();
    // Within its guarantee it needs no limit.
    assert!(plan.start_of(a_inside).is_some());
    // Beyond it, even on nobody's idle node, it would never give the GPUs back: it waits.
    for (job, team) in [(b_unbounded, "b"), (a_beyond, "a")] {
        let p = plan.pending_job(job).unwrap();
        assert_eq!(p.reason, Reason::NeedsTimeLimit { team: team.into() });
        assert!(
            p.reason.to_string().contains("--time-limit"),
            "{}",
            p.reason
        );
    }
    // With a time limit it borrows the idle node.
    let bounded = h.submit(JobBuilder::new("b").gpus(8).not_preemptible().limit(500));
    let plan = h.step();
    assert_eq!(plan.start_of(bounded).unwrap().placement[0].node.0, 1);
}

#[test]
fn work_that_cannot_be_preempted_never_borrows_another_teams_guarantee() {
    // A is guaranteed node 0; node 1 is nobody's. B has no guarantee.
    let mut h = Harness::new(two_teams(2, 8, 0));
    let first = h.submit(JobBuilder::new("b").gpus(8).not_preemptible().limit(5000));
    let second = h.submit(JobBuilder::new("b").gpus(8).not_preemptible().limit(500));
    let plan = h.step();
    assert!(
        plan.start_of(first).is_some(),
        "node 1 is nobody's: it may run there"
    );
    let node = &plan.start_of(first).unwrap().placement[0].node;
    assert_eq!(node.0, 1, "not in A's home");
    // A's idle node is lent only to work that can be taken back: the second waits for the
    // first's node, not A's.
    assert_eq!(
        plan.pending_job(second).unwrap().reason,
        Reason::Reserved { start_s: 5000 }
    );
    let r = plan.reservations.iter().find(|r| r.job == second).unwrap();
    assert_eq!(r.placement[0].node.0, 1, "not in A's home");
    // Preemptible work borrows A's node, and A takes it back.
    let lent = h.submit(JobBuilder::new("b").gpus(8).limit(500));
    apply(
        &mut h.state,
        Event::Cancel {
            job: second,
            at_s: 0,
            unmet: None,
        },
    )
    .unwrap();
    assert!(h.step().start_of(lent).is_some());
    h.now = 400;
    let owner = h.submit(JobBuilder::new("a").gpus(8));
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, lent);
    h.reap();
    h.step();
    assert!(h.is_running(owner));
}

#[test]
fn a_lowered_guarantee_becomes_reclaimable_and_a_raised_one_reclaims() {
    let mut h = Harness::new(two_teams(2, 16, 0));
    let a_jobs: Vec<JobId> = (0..16)
        .map(|_| h.submit(JobBuilder::new("a").limit(10_000)))
        .collect();
    h.step();
    let b_job = h.submit(JobBuilder::new("b").gpus(8));
    let plan = h.step();
    assert!(
        plan.stops.is_empty(),
        "A runs within its guarantee: nothing to reclaim"
    );
    // Move 8 GPUs of guarantee from A to B at run time.
    apply(&mut h.state, Event::SetTeam(TeamSpec::new("a", 8))).unwrap();
    apply(&mut h.state, Event::SetTeam(TeamSpec::new("b", 8))).unwrap();
    let plan = h.step();
    let a = plan.teams.iter().find(|t| t.team == "a").unwrap();
    assert_eq!(a.borrowed_milli, 8_000, "A's excess is now borrowed");
    let victims: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    assert_eq!(victims.len(), 8);
    // The youngest 8 of A's jobs are the borrowed ones.
    assert!(
        victims.iter().all(|v| a_jobs[8..].contains(v)),
        "{victims:?}"
    );
    h.reap();
    h.step();
    assert!(h.is_running(b_job));
}

#[test]
fn a_team_reclaims_only_up_to_its_guarantee_per_plan() {
    // A is guaranteed 8 and queues five 8-GPU jobs; B borrows the whole cluster.
    let mut h = Harness::new(two_teams(4, 8, 0));
    for _ in 0..4 {
        h.submit(JobBuilder::new("b").gpus(8).limit(10_000));
    }
    h.step();
    let mine: Vec<JobId> = (0..5)
        .map(|_| h.submit(JobBuilder::new("a").gpus(8)))
        .collect();
    let plan = h.step();
    assert_eq!(
        plan.stops.len(),
        1,
        "one 8-GPU reclaim fills A's guarantee of 8"
    );
    assert_eq!(plan.reclaims.len(), 1);
    assert_eq!(plan.reclaims[0].job, mine[0]);
    // The next plan, with the victim still stopping, reclaims nothing more.
    let plan = qm_core::plan(&h.state, h.now);
    assert!(plan.stops.is_empty());
}

#[test]
fn reclaim_for_one_task_frees_a_node_that_no_reservation_holds() {
    // Three 8-GPU nodes. Node 0: b's guaranteed job (4 GPUs) and a cheap borrowed 1-GPU job
    // of c. Node 2: a's guaranteed 1-GPU job and c's borrowed 7-GPU job. Node 1: free.
    let b = slotted_nodes(3);
    let state = b.team("a", 17).team("b", 7).team("c", 0).build();
    let mut h = Harness::new(state);
    let on = |j: JobBuilder, n: &str| j.selector("slot", n).limit(100_000);
    h.submit(on(JobBuilder::new("b").gpus(4), "n0").limit(10_000));
    let cheap = h.submit(on(JobBuilder::new("c").gpus(1), "n0").limit(10_000));
    h.submit(on(JobBuilder::new("a").gpus(1), "n2"));
    let dear = h.submit(on(JobBuilder::new("c").gpus(7), "n2"));
    h.step();
    // a's two-node gang can be made whole neither on node 0 (b's guaranteed job) nor on
    // node 2 (a's own): it is reserved nodes 1 and 0 from when node 0's jobs must end.
    h.now = 100;
    let gang = h.submit(
        JobBuilder::new("a")
            .tasks(2)
            .gpus(8)
            .priority(1)
            .limit(100_000),
    );
    h.step();
    assert!(matches!(
        reason(&h, gang),
        Reason::Reserved { start_s: 10_000 }
    ));
    // b's next job is inside its guarantee. The free GPUs (node 1, and node 0 beside the
    // cheap borrower) are promised to the gang; taking back c's larger job on node 2 makes
    // room outside the reservation, so reclaim takes that one, not the cheaper job on a
    // reserved node (which would leave the job waiting behind the gang).
    h.now = 200;
    let owner = h.submit(JobBuilder::new("b").gpus(1).limit(100_000));
    let plan = h.step();
    let victims: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    assert_eq!(victims, vec![dear]);
    assert!(h.is_running(cheap));
    assert!(matches!(
        plan.pending_job(owner).unwrap().reason,
        Reason::WaitingForReclaim { .. }
    ));
    h.reap();
    let plan = h.step();
    // It starts on the GPUs freed for it, not on the gang's reserved node beside them.
    let start = plan.start_of(owner).expect("the owner starts");
    assert_eq!(start.placement[0].node.0, 2);
    assert_eq!(
        reason(&h, gang),
        Reason::Reserved { start_s: 10_000 },
        "the gang keeps its reservation"
    );
}
