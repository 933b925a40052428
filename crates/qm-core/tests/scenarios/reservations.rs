//! Reservations, backfill and estimated starts.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, NodeBuilder};
use qm_core::*;

use super::two_teams;

#[test]
fn a_2048_gpu_gang_behind_a_stream_of_1_gpu_jobs_starts_when_its_reservation_says() {
    let state = ClusterBuilder::new()
        .racks(8, 32, 8)
        .team("research", 1024)
        .team("prod", 1024)
        .build();
    let mut h = Harness::new(state);
    // The cluster is full of 1-GPU jobs with one-hour limits that end at staggered times.
    for i in 0..2048u64 {
        let team = if i % 2 == 0 { "research" } else { "prod" };
        h.submit(
            JobBuilder::new(team)
                .limit(3600)
                .runs_for(600 + (i % 30) * 60),
        );
    }
    h.step();
    h.now = 10;
    let gang = h.submit(
        JobBuilder::new("research")
            .gpus(8)
            .tasks(256)
            .limit(7200)
            .runs_for(3600),
    );
    // A stream of 1-GPU jobs keeps arriving behind it, short and long.
    for i in 0..400u64 {
        let limit = if i % 2 == 0 { 300 } else { 5000 };
        h.submit(JobBuilder::new("prod").limit(limit).runs_for(limit / 2));
    }
    let plan = h.step();
    let reserved_at = match plan.pending_job(gang).unwrap().reason {
        Reason::Reserved { start_s } => start_s,
        ref r => panic!("gang not reserved: {r}"),
    };
    // Every 1-GPU job has a one-hour limit from t=0, so the promise is at most one hour.
    assert!(reserved_at <= 3600, "reserved at {reserved_at}");
    assert_eq!(plan.pending_job(gang).unwrap().eta_s, Some(reserved_at));
    h.run_until(reserved_at + 1);
    let started = *h.started.get(&gang).expect("gang started");
    assert!(
        started <= reserved_at,
        "started {started} > promised {reserved_at}"
    );
    // Whole: 256 tasks on 256 distinct nodes, packed into 8 racks.
    let run = h.state_of(gang).run().expect("gang runs");
    assert_eq!(run.placement.len(), 256);
    assert!(run.placement.iter().all(|t| t.gpus.len() == 8));
    let nodes: std::collections::BTreeSet<NodeId> = run.placement.iter().map(|t| t.node).collect();
    assert_eq!(nodes.len(), 256, "one task per node");
    let racks: std::collections::BTreeSet<&str> = nodes
        .iter()
        .map(|&n| h.state.node(n).unwrap().spec.topology[1].as_str())
        .collect();
    assert_eq!(racks.len(), 8);
}

#[test]
fn backfill_uses_reserved_gpus_only_for_jobs_that_end_before_the_reservation() {
    let mut h = Harness::new(two_teams(2, 8, 8));
    // 12 GPUs busy until t=1000; 4 free.
    for _ in 0..12 {
        h.submit(JobBuilder::new("b").limit(1000));
    }
    h.step();
    let big = h.submit(JobBuilder::new("a").gpus(8).tasks(2).limit(5000));
    let plan = h.step();
    assert_eq!(
        plan.pending_job(big).unwrap().reason,
        Reason::Reserved { start_s: 1000 }
    );
    let short = h.submit(JobBuilder::new("b").limit(900));
    let long = h.submit(JobBuilder::new("b").limit(2000));
    let plan = h.step();
    assert!(
        plan.start_of(short).is_some(),
        "a job ending before t=1000 backfills"
    );
    assert!(matches!(
        plan.pending_job(long).unwrap().reason,
        Reason::BehindReservation { reserved, start_s: 1000 } if reserved == big
    ));
}

#[test]
fn work_that_outlives_a_reservation_never_shares_its_gpus() {
    // Everything here is inside A's guarantee, so only age orders the jobs.
    let state = ClusterBuilder::new().racks(1, 1, 8).team("a", 32).build();
    let mut h = Harness::new(state);
    // Half of GPU 0 and all of GPUs 1-7 are busy until t=100.
    h.submit(JobBuilder::new("a").milli(500).limit(100));
    h.submit(JobBuilder::new("a").gpus(7).limit(100));
    h.step();
    let big = h.submit(JobBuilder::new("a").gpus(8).limit(1000));
    let plan = h.step();
    assert_eq!(
        plan.pending_job(big).unwrap().reason,
        Reason::Reserved { start_s: 100 }
    );
    // A long half-GPU job would fit on GPU 0 now, but would delay the 8-GPU job.
    let long = h.submit(JobBuilder::new("a").milli(500).no_limit());
    let short = h.submit(JobBuilder::new("a").milli(400).limit(50));
    let plan = h.step();
    assert!(plan.start_of(long).is_none());
    assert!(matches!(
        plan.pending_job(long).unwrap().reason,
        Reason::BehindReservation { .. }
    ));
    assert!(
        plan.start_of(short).is_some(),
        "work ending before t=100 may use it"
    );
}

#[test]
fn every_pending_job_has_a_reason_and_blocked_ones_an_estimate() {
    let mut h = Harness::new(two_teams(1, 4, 4));
    for _ in 0..8 {
        h.submit(JobBuilder::new("a").limit(1000));
    }
    h.step();
    let waiting: Vec<JobId> = (0..4)
        .map(|_| h.submit(JobBuilder::new("b").estimate(100)))
        .collect();
    let plan = qm_core::plan(&h.state, h.now);
    // B is guaranteed 4: it reclaims from A's borrowed jobs.
    // Each waits for its victims, with their grace deadline as its estimated start.
    for j in &waiting {
        let p = plan.pending_job(*j).unwrap();
        assert!(
            matches!(p.reason, Reason::WaitingForReclaim { ready_by_s, .. }
                if p.eta_s == Some(ready_by_s.max(h.now))),
            "{p:?}"
        );
    }
    // Exactly the pending jobs are explained, each once.
    let pending: Vec<JobId> = h
        .state
        .live_jobs()
        .filter(|j| j.state == JobState::Pending)
        .map(|j| j.spec.id)
        .collect();
    let explained: Vec<JobId> = plan.pending.iter().map(|p| p.job).collect();
    assert_eq!(pending, explained);
    // A's next job waits for capacity: reserved, with a start time.
    let more = h.submit(JobBuilder::new("a").gpus(8));
    let plan = qm_core::plan(&h.state, h.now);
    let p = plan.pending_job(more).unwrap();
    assert!(
        matches!(p.reason, Reason::Reserved { start_s } if p.eta_s == Some(start_s)),
        "{p:?}"
    );
}

#[test]
fn a_job_that_fits_its_teams_guarantee_whole_reserves_ahead_of_borrowers_once_younger_work_passed_it(
) {
    // Teams a and b are guaranteed two nodes each of four. One reservation per plan.
    let state = ClusterBuilder::new()
        .racks(1, 4, 8)
        .team("a", 16)
        .team("b", 16)
        .config(|c| c.max_reservations = 1)
        .build();
    let mut h = Harness::new(state);
    h.submit(JobBuilder::new("a").gpus(8).limit(10_000));
    h.submit(JobBuilder::new("b").gpus(8).limit(1_000));
    h.step();
    // b's three-node gang can only borrow, and takes the reservation.
    h.now = 10;
    let borrower = h.submit(JobBuilder::new("b").gpus(8).tasks(3).limit(5_000));
    assert!(matches!(
        h.step().pending_job(borrower).unwrap().reason,
        Reason::Reserved { .. }
    ));
    // a's two-node gang fits a's guarantee whole, but not what a's run leaves of it; a's
    // younger 8-GPU job fits what is left, and starts inside the guarantee.
    h.now = 15;
    let owed = h.submit(JobBuilder::new("a").gpus(8).tasks(2).limit(5_000));
    h.step();
    h.now = 20;
    let younger = h.submit(JobBuilder::new("a").gpus(8).limit(10_000));
    h.step();
    assert_eq!(h.started.get(&younger), Some(&20));
    // In a partition of its own the gang would head a's queue and hold the reservation; in
    // the pool it now reserves ahead of every borrower.
    h.now = 21;
    let plan = h.step();
    match plan.pending_job(owed).unwrap().reason {
        Reason::Reserved { start_s } => assert_eq!(start_s, 1_000, "when b's run ends"),
        ref r => panic!("a's gang not reserved: {r}"),
    }
    assert!(
        !matches!(
            plan.pending_job(borrower).unwrap().reason,
            Reason::Reserved { .. }
        ),
        "the one reservation goes to the job owed its guarantee's shape"
    );
    h.run_until(1_001);
    assert_eq!(h.started.get(&owed), Some(&1_000));
    assert!(!h.started.contains_key(&borrower));
}

/// `decide` defers a reservation until a later decision reads it (`Deferred` in
/// `plan/reserve.rs`). A job that fits the free GPUs only by ignoring the reservation's
/// guards comes later: the reservation is made first, and the job is decided as `plan`
/// decides it, both when it ends before the reserved start and when it would delay it.
#[test]
fn deciding_makes_a_deferred_reservation_before_a_later_job_reads_its_guards() {
    let mut h = Harness::new(two_teams(2, 8, 8));
    // 12 GPUs busy until t=1000; 4 free.
    for _ in 0..12 {
        h.submit(JobBuilder::new("b").limit(1000));
    }
    h.step();
    let big = h.submit(JobBuilder::new("a").gpus(8).tasks(2).limit(5000));
    let long = h.submit(JobBuilder::new("b").limit(2000));
    let full = plan(&h.state, h.now);
    let quick = decide(&h.state, h.now);
    assert_eq!(
        full.pending_job(big).unwrap().reason,
        Reason::Reserved { start_s: 1000 }
    );
    assert!(matches!(
        full.pending_job(long).unwrap().reason,
        Reason::BehindReservation { reserved, start_s: 1000 } if reserved == big
    ));
    assert!(quick.starts.is_empty(), "{:?}", quick.starts);
    assert_eq!(full.stops, quick.stops);
    assert_eq!(full.reservations, quick.reservations);
    // One that ends before t=1000 backfills, in both.
    let short = h.submit(JobBuilder::new("b").limit(900));
    let full = plan(&h.state, h.now);
    let quick = decide(&h.state, h.now);
    assert!(full.start_of(short).is_some());
    assert_eq!(full.starts, quick.starts);
    assert_eq!(full.stops, quick.stops);
}

#[test]
fn a_gang_is_promised_gpus_that_free_before_an_earlier_reservation_starts() {
    // Node 0 frees at t=1000; nodes 1 and 2 at t=5000.
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).label("big", "no"))
        .node(NodeBuilder::new(8).label("big", "yes"))
        .node(NodeBuilder::new(8).label("big", "yes"))
        .team("a", 24)
        .build();
    let mut h = Harness::new(state);
    h.submit(
        JobBuilder::new("a")
            .gpus(8)
            .selector("big", "no")
            .limit(1000),
    );
    for _ in 0..2 {
        h.submit(
            JobBuilder::new("a")
                .gpus(8)
                .selector("big", "yes")
                .limit(5000),
        );
    }
    h.step();
    // The first gang can only have nodes 1 and 2, at t=5000; their GPUs are busy until then
    // and promised from then on. The second gang fits node 0 at t=1000.
    let first = h.submit(
        JobBuilder::new("a")
            .gpus(8)
            .tasks(2)
            .selector("big", "yes")
            .limit(5000),
    );
    let second = h.submit(JobBuilder::new("a").gpus(4).tasks(2).limit(5000));
    let plan = h.step();
    {
        assert_eq!(
            plan.pending_job(first).map(|p| &p.reason),
            Some(&Reason::Reserved { start_s: 5000 })
        );
        assert_eq!(
            plan.pending_job(second).map(|p| &p.reason),
            Some(&Reason::Reserved { start_s: 1000 }),
            "the first gang's GPUs, busy before it starts, are not counted twice"
        );
    }
}
