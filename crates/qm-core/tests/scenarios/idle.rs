//! Idle policies: a job whose GPUs sit idle past the window is flagged; under `yield` it
//! loses its protection (any pending job that needs its GPUs may preempt it), under
//! `release` it is also stopped after a second window; busy work is never touched.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, TeamBuilder};
use qm_core::*;

/// One node of 8 GPUs: team `hoard` guaranteed all of it under `policy`, team `other`
/// guaranteed nothing. `hoard` runs one 8-GPU job that cannot be preempted.
fn hoarded(policy: IdlePolicy) -> (Harness, JobId) {
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(
            TeamBuilder::new("hoard")
                .guaranteed(8)
                .idle_policy(policy)
                .build(),
        )
        .team_spec(TeamBuilder::new("other").build())
        .build();
    let mut h = Harness::new(state);
    let held = h.submit(
        JobBuilder::new("hoard")
            .gpus(8)
            .not_preemptible()
            .no_limit(),
    );
    h.step();
    assert!(h.is_running(held));
    (h, held)
}

/// Samples `job` at `pct` every 5 minutes from now to `until`.
fn samples(h: &mut Harness, job: JobId, pct: u8, until: Secs) {
    while h.now < until {
        h.sample(job, pct);
        h.now += 300;
    }
    h.now = until;
    h.sample(job, pct);
}

#[test]
fn an_idle_job_that_yields_gives_its_gpus_to_another_teams_job_that_needs_them() {
    let (mut h, held) = hoarded(IdlePolicy::Yield);
    let window = h.state.config.idle_window_s;
    // Idle, but not yet for the whole window: the other team's job waits.
    samples(&mut h, held, 0, window - 60);
    let wanting = h.submit(JobBuilder::new("other").gpus(8).limit(3600));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    assert!(h.is_pending(wanting));
    // Past the window it yields: stopped as idle, for the job that needs its GPUs, which
    // starts once the grace period is over.
    samples(&mut h, held, 0, window);
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, held);
    assert_eq!(plan.stops[0].cause, StopCause::Idle);
    assert_eq!(plan.stops[0].beneficiary, Some(wanting));
    h.now += 60;
    h.reap();
    h.settle();
    assert!(h.is_running(wanting));
    assert!(h.is_pending(held), "the idle job is requeued, not lost");
    // Back in the queue, it takes only free GPUs: it does not take back at once, by its
    // guarantee, what it gave up by sitting idle.
    h.now += 600;
    let plan = h.step();
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    assert!(h.is_running(wanting));
    assert!(h.state.job(held).unwrap().stopped_idle);
}

#[test]
fn busy_work_keeps_its_gpus_whatever_the_policy() {
    let (mut h, held) = hoarded(IdlePolicy::Release { after_s: 60 });
    let window = h.state.config.idle_window_s;
    samples(&mut h, held, 40, 4 * window);
    let wanting = h.submit(JobBuilder::new("other").gpus(8).limit(3600));
    let plan = h.step();
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    assert!(plan.idle.is_empty());
    assert!(h.is_pending(wanting));
    // Idle once, busy again before the window is over: nothing either.
    samples(&mut h, held, 0, 4 * window + window / 2);
    samples(&mut h, held, 90, 6 * window);
    assert!(h.step().stops.is_empty());
}

#[test]
fn warn_flags_an_idle_job_and_nothing_more() {
    let (mut h, held) = hoarded(IdlePolicy::Warn);
    let window = h.state.config.idle_window_s;
    samples(&mut h, held, 0, 4 * window);
    let wanting = h.submit(JobBuilder::new("other").gpus(8).limit(3600));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    assert_eq!(plan.idle.len(), 1);
    assert_eq!(plan.idle[0].action, IdleAction::Warn);
    assert!(h.is_pending(wanting));
}

#[test]
fn an_idle_job_yields_to_its_own_teams_next_job() {
    let (mut h, held) = hoarded(IdlePolicy::Yield);
    let window = h.state.config.idle_window_s;
    samples(&mut h, held, 0, window);
    let next = h.submit(JobBuilder::new("hoard").gpus(8).limit(3600));
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, held);
    assert_eq!(plan.stops[0].beneficiary, Some(next));
    // Its place in the guarantee goes to the job that works.
    h.now += 60;
    h.reap();
    h.settle();
    assert!(h.is_running(next));
    assert_eq!(
        admissions(&h.state, h.now).get(&next),
        Some(&Admission::Guaranteed)
    );
}

#[test]
fn an_idle_job_no_longer_counts_inside_its_teams_guarantee() {
    // `hoard` is guaranteed 8 GPUs on two nodes and holds one idle 8-GPU job; `other`
    // borrows the second node. Once the idle job yields, `hoard`'s next job is inside
    // the guarantee again and takes the borrowed node back.
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("hoard").guaranteed(8).build())
        .team_spec(TeamBuilder::new("other").build())
        .build();
    let mut h = Harness::new(state);
    let held = h.submit(JobBuilder::new("hoard").gpus(8).limit(100_000));
    h.step();
    let borrowed = h.submit(JobBuilder::new("other").gpus(8).limit(100_000));
    h.step();
    assert!(h.is_running(borrowed));
    let window = h.state.config.idle_window_s;
    samples(&mut h, held, 0, window);
    assert_eq!(
        admissions(&h.state, h.now).get(&held),
        Some(&Admission::Borrowed),
        "the default policy yields"
    );
    let next = h.submit(JobBuilder::new("hoard").gpus(8).limit(3600));
    let plan = h.step();
    // The idle job goes first: it loses nothing that works.
    let stopped: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    assert_eq!(stopped, vec![held]);
    assert_eq!(plan.stops[0].beneficiary, Some(next));
}

#[test]
fn a_hold_for_a_borrowing_job_never_pushes_its_teams_running_job_out_of_the_guarantee() {
    // One node of 8 GPUs: `a` and `b` guaranteed 4 each. `a` runs 4 GPUs inside its
    // guarantee; `b`'s job sits idle and yields. `a`'s next job would borrow: it takes the
    // yielded job's GPUs (held for it through the grace period). Meanwhile `b` wants its
    // guarantee back: the borrowing is what gives way, never `a`'s guaranteed job.
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(TeamBuilder::new("a").guaranteed(4).build())
        .team_spec(
            TeamBuilder::new("b")
                .guaranteed(4)
                .idle_policy(IdlePolicy::Yield)
                .build(),
        )
        .build();
    let mut h = Harness::new(state);
    let a1 = h.submit(JobBuilder::new("a").gpus(4).limit(100_000));
    let idle = h.submit(JobBuilder::new("b").gpus(4).limit(100_000));
    h.step();
    assert!(h.is_running(a1) && h.is_running(idle));
    let window = h.state.config.idle_window_s;
    samples(&mut h, idle, 0, window);
    let a2 = h.submit(JobBuilder::new("a").gpus(4).limit(3600));
    let plan = h.step();
    let stopped: Vec<(JobId, Option<JobId>)> =
        plan.stops.iter().map(|s| (s.job, s.beneficiary)).collect();
    assert_eq!(stopped, vec![(idle, Some(a2))]);
    // During the grace period `a1` stays inside `a`'s guarantee.
    assert_eq!(
        admissions(&h.state, h.now).get(&a1),
        Some(&Admission::Guaranteed)
    );
    let b2 = h.submit(JobBuilder::new("b").gpus(4).limit(3600));
    for _ in 0..4 {
        h.now += 20;
        h.reap();
        let plan = h.step();
        assert!(
            plan.stops.iter().all(|s| s.job != a1),
            "a's guaranteed job was preempted: {:?}",
            plan.stops
        );
    }
    h.now += 120;
    h.reap();
    h.settle();
    assert!(h.is_running(a1));
    // `b`'s requeued idle job takes free GPUs only and does not hold `b`'s guarantee,
    // though it is older: `b`'s next job takes the guarantee back from the borrowing job,
    // never from `a`'s guaranteed one.
    assert!(h.is_running(b2), "b has its guarantee back");
    assert!(h.is_pending(idle), "the idle job waits for free GPUs");
    assert!(!h.is_running(a2), "the borrowing job gave way");
    let reclaimed = h
        .plans
        .iter()
        .flat_map(|p| &p.stops)
        .any(|s| s.job == a2 && s.beneficiary == Some(b2));
    assert!(reclaimed, "a2 was reclaimed for b2");
}
