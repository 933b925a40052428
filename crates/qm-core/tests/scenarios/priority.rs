//! Priorities inside a team: a job that cannot start preempts its own team's lower-priority
//! work, and nothing else.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, TeamBuilder};
use qm_core::*;

use super::{reason, two_teams};

fn priority_stops(plan: &Plan) -> Vec<(JobId, Option<JobId>)> {
    plan.stops
        .iter()
        .filter(|s| s.cause == StopCause::Priority)
        .map(|s| (s.job, s.beneficiary))
        .collect()
}

#[test]
fn a_higher_priority_job_preempts_its_teams_lower_priority_work_after_its_minimum_run_time() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let low = h.submit(
        JobBuilder::new("a")
            .gpus(8)
            .min_run(600)
            .grace(30)
            .limit(100_000),
    );
    h.step();
    let on = h.state_of(low).run().unwrap().placement.clone();
    h.now = 100;
    let high = h.submit(JobBuilder::new("a").gpus(8).priority(5));
    let plan = h.step();
    assert!(plan.stops.is_empty(), "the low-priority job is too young");
    assert!(!matches!(
        reason(&h, high),
        Reason::WaitingForReclaim { .. }
    ));

    h.now = 600;
    let plan = h.step();
    assert_eq!(
        plan.stops,
        vec![StopOrder {
            job: low,
            cause: StopCause::Priority,
            beneficiary: Some(high),
            lost_gpu_s: 8 * 600,
            borrowing: false,
        }]
    );
    let why = &plan.pending_job(high).unwrap().reason;
    assert_eq!(
        *why,
        Reason::WaitingForReclaim {
            victims: vec![low],
            ready_by_s: 630,
            lower_priority: true,
        }
    );
    assert_eq!(
        why.to_string(),
        format!(
            "waiting for reclaim: preempting lower-priority jobs of its own team: {low} (done by t=630s)"
        )
    );
    assert_eq!(plan.pending_job(high).unwrap().eta_s, Some(630));
    assert_eq!(plan.reclaims.len(), 1);
    assert_eq!(plan.reclaims[0].job, high);

    // The freed GPUs are held for the beneficiary: nothing else of the team takes them.
    let intruder = h.submit(JobBuilder::new("a"));
    h.now = 630;
    h.reap();
    let plan = h.step();
    let start = plan.start_of(high).expect("it starts on the held GPUs");
    assert_eq!(start.placement, on);
    assert_eq!(
        start.admission,
        Admission::Guaranteed,
        "in its victim's place"
    );
    assert!(h.is_pending(intruder));

    // The victim is back in the queue, keeps its submission time, and waits as any job
    // would: for the GPUs its preemptor holds until its time limit.
    let victim = h.state.job(low).unwrap();
    assert!(h.is_pending(low));
    assert_eq!(victim.preemptions, 1);
    assert_eq!(victim.spec.submit_s, 0);
    assert_eq!(
        reason(&h, low),
        Reason::Reserved {
            start_s: 630 + 3600
        }
    );

    // No ping-pong: the victim never preempts its preemptor, which runs to its end.
    h.run_until(630 + 3599);
    assert!(h.is_running(high));
    assert!(h.plans.iter().all(|p| priority_stops(p).len() <= 1));
    assert_eq!(h.state.job(low).unwrap().preemptions, 1);
}

#[test]
fn a_borrowed_victims_place_is_borrowed_and_a_guaranteed_victims_goes_to_its_beneficiary() {
    // A is guaranteed one node of two. Its oldest job is guaranteed, its younger one borrows
    // B's idle node, and a high-priority job arrives: the borrowed one loses least work.
    let mut h = Harness::new(two_teams(2, 8, 8));
    let old = h.submit(JobBuilder::new("a").gpus(8).limit(100_000));
    h.step();
    h.now = 100;
    let lent = h.submit(JobBuilder::new("a").gpus(8).limit(100_000));
    h.step();
    h.now = 200;
    let high = h.submit(JobBuilder::new("a").gpus(8).priority(5));
    let plan = h.step();
    assert_eq!(priority_stops(&plan), vec![(lent, Some(high))]);
    h.reap();
    let plan = h.step();
    assert_eq!(plan.start_of(high).unwrap().admission, Admission::Borrowed);
    let modes = admissions(&h.state, h.now);
    assert_eq!(modes[&old], Admission::Guaranteed);
    assert_eq!(modes[&high], Admission::Borrowed);

    // Now the only lower-priority job is the guaranteed one, and the team's other job of the
    // same priority borrows: the beneficiary takes the victim's place in the guarantee, the
    // borrower keeps borrowing.
    let mut h = Harness::new(two_teams(2, 8, 8));
    let low = h.submit(JobBuilder::new("a").gpus(8).limit(100_000).grace(30));
    h.step();
    h.now = 100;
    let peer = h.submit(JobBuilder::new("a").gpus(8).limit(100_000).priority(5));
    h.step();
    assert_eq!(admissions(&h.state, h.now)[&peer], Admission::Borrowed);
    h.now = 200;
    let high = h.submit(JobBuilder::new("a").gpus(8).priority(5));
    let plan = h.step();
    assert_eq!(priority_stops(&plan), vec![(low, Some(high))]);
    // While the victim stops, the borrower does not move into its place.
    h.now = 210;
    h.step();
    assert_eq!(admissions(&h.state, h.now)[&peer], Admission::Borrowed);
    h.now = 230;
    h.reap();
    let plan = h.step();
    assert_eq!(
        plan.start_of(high).unwrap().admission,
        Admission::Guaranteed
    );
    let modes = admissions(&h.state, h.now);
    assert_eq!(modes[&high], Admission::Guaranteed);
    assert_eq!(modes[&peer], Admission::Borrowed);
    let plan = qm_core::plan(&h.state, h.now);
    let a = plan.teams.iter().find(|t| t.team == "a").unwrap();
    assert_eq!((a.alloc_milli, a.borrowed_milli), (16_000, 8_000));
}

#[test]
fn priority_never_reaches_another_team_nor_work_of_equal_or_higher_priority() {
    // One node: B runs low-priority work inside its guarantee, A runs at its high priority
    // on what B lends.
    let mut h = Harness::new(two_teams(1, 0, 4));
    let theirs = h.submit(JobBuilder::new("b").gpus(4).limit(100_000));
    let peer = h.submit(JobBuilder::new("a").gpus(4).limit(100_000).priority(5));
    h.step();
    h.now = 1000;
    let high = h.submit(JobBuilder::new("a").gpus(4).priority(5));
    let low = h.submit(JobBuilder::new("a").gpus(4).priority(-1));
    let plan = h.step();
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    assert!(h.is_running(theirs) && h.is_running(peer));
    assert!(h.is_pending(high) && h.is_pending(low));

    // Sub-teams of one parent are teams of their own: x's urgent work waits for y's.
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(TeamBuilder::new("org").guaranteed(8).build())
        .team_spec(TeamBuilder::new("x").parent("org").guaranteed(0).build())
        .team_spec(TeamBuilder::new("y").parent("org").guaranteed(8).build())
        .build();
    let mut h = Harness::new(state);
    h.submit(JobBuilder::new("y").gpus(8).limit(100_000));
    h.step();
    h.now = 1000;
    let urgent = h.submit(JobBuilder::new("x").gpus(8).priority(100));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    assert!(h.is_pending(urgent));
}

#[test]
fn work_that_cannot_be_preempted_or_is_too_young_is_protected() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let pinned = h.submit(
        JobBuilder::new("a")
            .gpus(4)
            .not_preemptible()
            .limit(100_000),
    );
    let young = h.submit(JobBuilder::new("a").gpus(4).min_run(600).limit(100_000));
    h.step();
    h.now = 100;
    let high = h.submit(JobBuilder::new("a").gpus(4).priority(5));
    let whole = h.submit(JobBuilder::new("a").gpus(8).priority(5));
    let plan = h.step();
    assert!(plan.stops.is_empty());
    h.now = 600;
    let plan = h.step();
    // The 8-GPU job would need the pinned one's GPUs too: it preempts nothing.
    assert_eq!(priority_stops(&plan), vec![(young, Some(high))]);
    h.reap();
    h.step();
    assert!(h.is_running(high) && h.is_running(pinned));
    assert!(h.is_pending(whole));
}

#[test]
fn a_gang_preempts_as_few_of_its_teams_lower_priority_jobs_as_it_needs() {
    let mut h = Harness::new(two_teams(4, 32, 0));
    let mut low = Vec::new();
    for i in 0..4 {
        h.now = 100 * i;
        low.push(h.submit(JobBuilder::new("a").gpus(8).limit(100_000).grace(60)));
        h.step();
    }
    h.now = 1000;
    let gang = h.submit(JobBuilder::new("a").tasks(2).gpus(8).priority(5));
    let plan = h.step();
    let stops = priority_stops(&plan);
    assert_eq!(stops.len(), 2, "two nodes for two tasks: {stops:?}");
    assert!(stops.iter().all(|s| s.1 == Some(gang)));
    let freed: Vec<NodeId> = stops
        .iter()
        .map(|s| h.state_of(s.0).run().unwrap().placement[0].node)
        .collect();
    h.now = 1060;
    h.reap();
    let plan = h.step();
    let mut on: Vec<NodeId> = plan
        .start_of(gang)
        .unwrap()
        .placement
        .iter()
        .map(|t| t.node)
        .collect();
    on.sort();
    let mut freed = freed;
    freed.sort();
    assert_eq!(on, freed);
    assert_eq!(low.iter().filter(|&&j| h.is_running(j)).count(), 2);
}

#[test]
fn a_team_at_its_max_makes_room_by_priority_and_never_goes_over() {
    // A may hold at most 8 GPUs and holds them all; the cluster has 8 more free.
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("a").guaranteed(4).max(8).build())
        .team("b", 0)
        .build();
    let mut h = Harness::new(state);
    let low = h.submit(JobBuilder::new("a").gpus(8).limit(100_000).grace(30));
    h.step();
    h.now = 100;
    let high = h.submit(JobBuilder::new("a").gpus(4).priority(5));
    let plan = h.step();
    assert_eq!(priority_stops(&plan), vec![(low, Some(high))]);
    assert!(matches!(
        plan.pending_job(high).unwrap().reason,
        Reason::WaitingForReclaim {
            lower_priority: true,
            ..
        }
    ));
    // While its victim stops, neither it nor anything else of A starts: A would go over.
    let other = h.submit(JobBuilder::new("a").gpus(2).priority(5));
    for t in [110, 120] {
        h.now = t;
        let plan = h.step();
        assert!(plan.starts.is_empty());
        assert!(h.state.team("a").unwrap().alloc_milli <= 8_000);
    }
    h.now = 130;
    h.reap();
    let plan = h.step();
    assert!(plan.start_of(high).is_some());
    assert!(plan.start_of(other).is_some(), "within the max: 4 + 2");
    assert_eq!(h.state.team("a").unwrap().alloc_milli, 6_000);
}

#[test]
fn the_baselines_do_not_preempt_for_priority() {
    for policy in [PolicyKind::Fifo, PolicyKind::Static] {
        let state = ClusterBuilder::new()
            .racks(1, 1, 8)
            .team("a", 8)
            .policy(policy)
            .build();
        let mut h = Harness::new(state);
        h.submit(JobBuilder::new("a").gpus(8).limit(100_000));
        h.step();
        h.now = 1000;
        let high = h.submit(JobBuilder::new("a").gpus(8).priority(5));
        let plan = h.step();
        assert!(plan.stops.is_empty(), "{policy:?}");
        assert!(h.is_pending(high));
    }
}

#[test]
fn a_stop_for_priority_that_does_not_outrank_its_victim_is_refused() {
    let mut h = Harness::new(two_teams(1, 4, 4));
    let victim = h.submit(JobBuilder::new("a").gpus(4).priority(1));
    h.step();
    let equal = h.submit(JobBuilder::new("a").gpus(4).priority(1));
    let other = h.submit(JobBuilder::new("b").gpus(4).priority(9));
    let higher = h.submit(JobBuilder::new("a").gpus(4).priority(2));
    let before = h.state.clone();
    let stop = |beneficiary| Event::Stop {
        job: victim,
        cause: StopCause::Priority,
        beneficiary,
        borrowing: false,
        at_s: 0,
    };
    for b in [Some(equal), Some(other), None] {
        let err = apply(&mut h.state, stop(b)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::NotOutranked {
                victim,
                beneficiary: b
            }
        );
        assert_eq!(h.state, before);
    }
    assert!(apply(&mut h.state, stop(Some(equal)))
        .unwrap_err()
        .to_string()
        .contains("must belong to"));
    apply(&mut h.state, stop(Some(higher))).unwrap();
}
