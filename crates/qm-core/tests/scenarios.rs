//! Scenario tests: small clusters built with the testkit, one behaviour each.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, NodeBuilder, TeamBuilder};
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
    for v in &victims {
        assert!(h.is_pending(*v));
        assert_eq!(h.state.job(*v).unwrap().preemptions, 1);
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
    let mut h = Harness::new(two_teams(1, 8, 0));
    h.submit(JobBuilder::new("b").gpus(8).not_preemptible().limit(500));
    h.step();
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
fn gangs_are_packed_into_the_fewest_racks_and_nodes() {
    let state = ClusterBuilder::new().racks(2, 4, 8).team("a", 64).build();
    let mut h = Harness::new(state);
    // Occupy 3 nodes of rack-0 and 1 node of rack-1 completely: five whole-node jobs fill
    // rack-0 and one node of rack-1, then one of rack-0's ends.
    let fillers: Vec<JobId> = (0..5)
        .map(|_| h.submit(JobBuilder::new("a").gpus(8).limit(10_000).grace(0)))
        .collect();
    h.step();
    let nodes_in = |h: &Harness, job: JobId| -> Vec<String> {
        let run = h.state_of(job).run().unwrap();
        run.placement
            .iter()
            .map(|t| h.state.node(t.node).unwrap().spec.topology[1].clone())
            .collect()
    };
    let racks: Vec<String> = fillers.iter().flat_map(|&j| nodes_in(&h, j)).collect();
    assert_eq!(racks, ["rack-0", "rack-0", "rack-0", "rack-0", "rack-1"]);
    let at_s = h.now;
    apply(
        &mut h.state,
        Event::Cancel {
            job: fillers[0],
            at_s,
        },
    )
    .unwrap();
    h.reap();
    // A 16-GPU gang fits rack-1 (3 free nodes), not rack-0 (1 free node).
    let gang = h.submit(JobBuilder::new("a").gpus(8).tasks(2));
    h.step();
    assert_eq!(nodes_in(&h, gang), ["rack-1", "rack-1"]);
    // A 4-task gang of 1 GPU lands on a single node.
    let small = h.submit(JobBuilder::new("a").tasks(4));
    h.step();
    let run = h.state_of(small).run().unwrap();
    assert!(run
        .placement
        .iter()
        .all(|t| t.node == run.placement[0].node));
}

#[test]
fn single_tasks_fill_partly_used_nodes_first() {
    let state = ClusterBuilder::new().racks(1, 2, 8).team("a", 16).build();
    let mut h = Harness::new(state);
    let first = h.submit(JobBuilder::new("a").gpus(3));
    h.step();
    let second = h.submit(JobBuilder::new("a").gpus(2));
    h.step();
    let node = |j| h.state_of(j).run().unwrap().placement[0].node;
    assert_eq!(node(first), node(second));
    // One node stays whole for an 8-GPU job.
    let whole = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    assert!(h.is_running(whole));
}

#[test]
fn fractional_tasks_share_gpus_and_leave_whole_ones_free() {
    let state = ClusterBuilder::new().racks(1, 1, 8).team("a", 8).build();
    let mut h = Harness::new(state);
    let quarter: Vec<JobId> = (0..4)
        .map(|_| h.submit(JobBuilder::new("a").milli(250)))
        .collect();
    h.step();
    let gpus: Vec<u32> = quarter
        .iter()
        .map(|&j| h.state_of(j).run().unwrap().placement[0].gpus[0])
        .collect();
    assert!(
        gpus.iter().all(|&g| g == gpus[0]),
        "quarters share one GPU: {gpus:?}"
    );
    let node = h.state.nodes().next().unwrap();
    assert_eq!(node.whole_gpus_free(), 7);
    let big = h.submit(JobBuilder::new("a").milli(600));
    let small = h.submit(JobBuilder::new("a").milli(400));
    h.step();
    let g = |j| h.state_of(j).run().unwrap().placement[0].gpus[0];
    assert_eq!(g(big), g(small), "600 + 400 fill one GPU exactly");
    assert_eq!(h.state.nodes().next().unwrap().whole_gpus_free(), 6);
}

#[test]
fn jobs_that_can_never_run_are_refused_and_change_nothing() {
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("org").guaranteed(16).build())
        .team_spec(
            TeamBuilder::new("a")
                .parent("org")
                .guaranteed(8)
                .max(12)
                .build(),
        )
        .build();
    let before = state.clone();
    let mut h = Harness::new(state);
    let cases: Vec<(JobBuilder, &str)> = vec![
        (JobBuilder::new("nobody"), "unknown team"),
        (JobBuilder::new("org"), "has sub-teams"),
        (JobBuilder::new("a").tasks(0), "tasks is 0"),
        (JobBuilder::new("a").gpus(0), "0 GPUs"),
        (JobBuilder::new("a").milli(0), "gpu_milli is 0"),
        (JobBuilder::new("a").milli(1001), "gpu_milli is 1001"),
        (JobBuilder::new("a").gpus(9), "at most 8 GPUs"),
        (
            JobBuilder::new("a").model("B200"),
            "no node has GPU model \"B200\"",
        ),
        (
            JobBuilder::new("a").gpus(8).tasks(3),
            "hold at most 2 such tasks",
        ),
        (JobBuilder::new("a").gpus(8).tasks(2), "may hold at most 12"),
        (JobBuilder::new("a").selector("zone", "x"), "labels"),
        (JobBuilder::new("a").cpu_milli(1_000_000), "CPU milli-cores"),
        (JobBuilder::new("a").limit(0), "time limit is 0"),
        (JobBuilder::new("a").after(JobId(999)), "does not exist"),
    ];
    for (job, expected) in cases {
        let err = h.try_submit(job).expect_err(expected).to_string();
        assert!(
            err.contains(expected),
            "{err:?} should mention {expected:?}"
        );
        assert_eq!(h.state, before, "a refused job changed the state");
    }
}

#[test]
fn team_trees_whose_children_exceed_their_parent_are_refused_naming_the_team() {
    let mut state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(TeamBuilder::new("org").guaranteed(8).build())
        .team_spec(TeamBuilder::new("x").parent("org").guaranteed(6).build())
        .build();
    let before = state.clone();
    let err = apply(
        &mut state,
        Event::SetTeam(TeamBuilder::new("y").parent("org").guaranteed(4).build()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"org\""), "{err}");
    assert!(err.contains("10 GPUs"), "{err}");
    assert_eq!(state, before);
    let err = apply(
        &mut state,
        Event::SetTeam(TeamBuilder::new("z").guaranteed(4).max(2).build()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max 2 is below guaranteed 4"), "{err}");
    let err = apply(
        &mut state,
        Event::SetTeam(TeamBuilder::new("org").parent("x").guaranteed(8).build()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("loops"), "{err}");
    assert_eq!(state, before);
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
fn borrowing_stops_at_max_and_says_so() {
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("a").guaranteed(2).max(4).build())
        .team("b", 14)
        .build();
    let mut h = Harness::new(state);
    let jobs: Vec<JobId> = (0..5).map(|_| h.submit(JobBuilder::new("a"))).collect();
    h.step();
    assert_eq!(jobs.iter().filter(|&&j| h.is_running(j)).count(), 4);
    match reason(&h, jobs[4]) {
        Reason::OverMax {
            team,
            max_milli,
            used_milli,
            ..
        } => {
            assert_eq!(team, "a");
            assert_eq!(max_milli, 4000);
            assert_eq!(used_milli, 4000);
        }
        r => panic!("{r:?}"),
    }
    // It starts when the first of A's own jobs ends (one-hour limits from t=0).
    let plan = qm_core::plan(&h.state, h.now);
    assert_eq!(plan.pending_job(jobs[4]).unwrap().eta_s, Some(3600));
}

#[test]
fn idle_capacity_is_shared_by_weight_between_borrowers() {
    let state = ClusterBuilder::new()
        .racks(1, 4, 8)
        .team("owner", 32)
        .team_spec(TeamBuilder::new("heavy").weight(3).build())
        .team_spec(TeamBuilder::new("light").weight(1).build())
        .build();
    let mut h = Harness::new(state);
    for _ in 0..40 {
        h.submit(JobBuilder::new("light"));
        h.submit(JobBuilder::new("heavy"));
    }
    h.step();
    let plan = h.step();
    let alloc = |t: &str| plan.teams.iter().find(|s| s.team == t).unwrap().alloc_milli / 1000;
    assert_eq!(alloc("heavy") + alloc("light"), 32);
    assert_eq!(alloc("heavy"), 24, "weight 3:1 splits 32 idle GPUs 24:8");
}

#[test]
fn guaranteed_work_goes_before_borrowing_and_priority_orders_within() {
    let mut h = Harness::new(two_teams(1, 4, 4));
    let borrow = h.submit(JobBuilder::new("a").gpus(4).priority(10));
    let low = h.submit(JobBuilder::new("a").gpus(4).priority(-1));
    let b = h.submit(JobBuilder::new("b").gpus(4));
    h.step();
    assert!(
        h.is_running(borrow),
        "A's highest priority job runs in its guarantee"
    );
    assert!(
        h.is_running(b),
        "B's guaranteed job goes before A's borrowing"
    );
    assert!(h.is_pending(low));
}

#[test]
fn dependencies_wait_for_success_and_give_up_after_failure() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let first = h.submit(JobBuilder::new("a"));
    let second = h.submit(JobBuilder::new("a").after(first));
    h.step();
    assert_eq!(reason(&h, second), Reason::Dependency { on: first });
    h.exit(first, true);
    h.step();
    assert!(h.is_running(second));
    let third = h.submit(JobBuilder::new("a").after(second));
    h.exit(second, false);
    assert_eq!(reason(&h, third), Reason::DependencyFailed { on: second });
}

#[test]
fn submitting_after_a_failed_job_is_refused() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let first = h.submit(JobBuilder::new("a"));
    h.step();
    h.exit(first, false);
    let err = h.try_submit(JobBuilder::new("a").after(first)).unwrap_err();
    assert!(err.to_string().contains("can never run"), "{err}");
}

#[test]
fn idle_allocations_are_warned_reclaimed_or_requeued_by_team_policy() {
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(TeamBuilder::new("warn").guaranteed(2).build())
        .team_spec(
            TeamBuilder::new("reclaim")
                .guaranteed(1)
                .idle_policy(IdlePolicy::ReclaimBorrowed)
                .build(),
        )
        .team_spec(
            TeamBuilder::new("requeue")
                .guaranteed(2)
                .idle_policy(IdlePolicy::Requeue { grace_s: 600 })
                .build(),
        )
        .build();
    let mut h = Harness::new(state);
    let w = h.submit(JobBuilder::new("warn").limit(100_000));
    let r_guaranteed = h.submit(JobBuilder::new("reclaim").limit(100_000));
    let r_borrowed = h.submit(JobBuilder::new("reclaim").limit(100_000));
    let q = h.submit(JobBuilder::new("requeue").limit(100_000));
    h.step();
    for t in (0..=1800).step_by(300) {
        h.now = t;
        for j in [w, r_guaranteed, r_borrowed, q] {
            apply(
                &mut h.state,
                Event::Utilisation {
                    job: j,
                    pct: 1,
                    attempt: None,
                    at_s: t,
                },
            )
            .unwrap();
        }
    }
    let plan = qm_core::plan(&h.state, 1800);
    let action = |j| plan.idle.iter().find(|n| n.job == j).map(|n| n.action);
    assert_eq!(action(w), Some(IdleAction::Warn));
    assert_eq!(action(r_guaranteed), Some(IdleAction::Warn));
    assert_eq!(action(r_borrowed), Some(IdleAction::Reclaimed));
    assert_eq!(action(q), Some(IdleAction::RequeueAt(2400)));
    let stopped: Vec<JobId> = plan.stops.iter().map(|s| s.job).collect();
    assert_eq!(stopped, vec![r_borrowed]);
    let plan = qm_core::plan(&h.state, 2400);
    assert!(plan
        .stops
        .iter()
        .any(|s| s.job == q && s.cause == StopCause::Idle));
    // Idle time is charged: 1800 s x 1 GPU for each of the four jobs.
    let warn = plan.teams.iter().find(|t| t.team == "warn").unwrap();
    assert!(
        (warn.idle_gpu_hours - 0.5).abs() < 1e-9,
        "{}",
        warn.idle_gpu_hours
    );
    // A busy sample clears the idle state.
    apply(
        &mut h.state,
        Event::Utilisation {
            job: w,
            pct: 80,
            attempt: None,
            at_s: 1900,
        },
    )
    .unwrap();
    let plan = qm_core::plan(&h.state, 1900);
    assert!(plan.idle.iter().all(|n| n.job != w));
}

#[test]
fn jobs_past_their_time_limit_are_stopped_and_end_failed() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let job = h.submit(JobBuilder::new("a").limit(100).runs_for(1000));
    h.step();
    h.now = 100;
    let plan = h.step();
    assert_eq!(plan.stops[0].cause, StopCause::TimeLimit);
    h.reap();
    assert_eq!(
        h.state_of(job),
        &JobState::Failed {
            at_s: 100,
            timed_out: true
        }
    );
}

#[test]
fn a_node_going_down_requeues_its_gangs_whole() {
    let mut h = Harness::new(two_teams(2, 16, 0));
    let gang = h.submit(JobBuilder::new("a").gpus(8).tasks(2));
    h.step();
    assert!(h.is_running(gang));
    let node = h.state_of(gang).run().unwrap().placement[0].node;
    apply(
        &mut h.state,
        Event::NodeState {
            node,
            state: NodeState::Down,
            at_s: 5,
        },
    )
    .unwrap();
    assert!(h.is_pending(gang));
    assert!(h.state.nodes().all(|n| n.cpu_used_milli == 0));
    let plan = h.step();
    assert!(plan.starts.is_empty(), "one node left cannot hold the gang");
}

#[test]
fn gpu_models_and_labels_steer_placement() {
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).model("A100"))
        .node(NodeBuilder::new(8).model("H100").label("zone", "west"))
        .team("a", 16)
        .build();
    let mut h = Harness::new(state);
    let a100 = h.submit(JobBuilder::new("a").model("A100"));
    let west = h.submit(JobBuilder::new("a").selector("zone", "west"));
    h.step();
    let model = |j| {
        let n = h.state_of(j).run().unwrap().placement[0].node;
        h.state.node(n).unwrap().spec.gpu_model.clone()
    };
    assert_eq!(model(a100), "A100");
    assert_eq!(model(west), "H100");
}

#[test]
fn per_model_quotas_count_against_their_own_pool() {
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8).model("A100"))
        .node(NodeBuilder::new(8).model("H100"))
        .team_spec(TeamBuilder::new("a").quota("H100", 8, None).build())
        .team_spec(TeamBuilder::new("b").quota("A100", 8, None).build())
        .build();
    let mut h = Harness::new(state);
    // B borrows the H100 node while A is idle.
    let b_borrow = h.submit(JobBuilder::new("b").gpus(8).model("H100"));
    h.step();
    assert!(h.is_running(b_borrow));
    let a_job = h.submit(JobBuilder::new("a").gpus(8).model("H100"));
    let plan = h.step();
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].job, b_borrow);
    h.reap();
    h.step();
    assert!(h.is_running(a_job));
}

#[test]
fn fifo_blocks_behind_its_head_and_static_confines_teams() {
    let state = ClusterBuilder::new()
        .policy(PolicyKind::Fifo)
        .racks(1, 2, 8)
        .team("a", 8)
        .team("b", 8)
        .build();
    let mut h = Harness::new(state);
    h.submit(JobBuilder::new("a").gpus(8));
    let head = h.submit(JobBuilder::new("a").gpus(8).tasks(2));
    let small = h.submit(JobBuilder::new("b"));
    h.step();
    assert!(h.is_pending(head));
    assert_eq!(reason(&h, small), Reason::BlockedByHead { head });

    let state = ClusterBuilder::new()
        .policy(PolicyKind::Static)
        .racks(1, 2, 8)
        .team("a", 8)
        .team("b", 8)
        .build();
    let mut h = Harness::new(state);
    let a1 = h.submit(JobBuilder::new("a").gpus(8));
    let a2 = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    assert!(h.is_running(a1));
    assert!(
        h.is_pending(a2),
        "B's idle partition is not lent under static"
    );
    let b1 = h.submit(JobBuilder::new("b").gpus(8));
    h.step();
    assert!(h.is_running(b1));
    assert_ne!(
        h.state_of(a1).run().unwrap().placement[0].node,
        h.state_of(b1).run().unwrap().placement[0].node
    );
}

#[test]
fn policies_are_selected_by_name() {
    assert_eq!("static".parse::<PolicyKind>().unwrap(), PolicyKind::Static);
    let err = "lottery".parse::<PolicyKind>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown policy \"lottery\"; valid policies: default, fifo, static"
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
    assert!(waiting.iter().all(|j| matches!(
        plan.pending_job(*j).unwrap().reason,
        Reason::WaitingForReclaim { .. }
    )));
    let pending: Vec<JobId> = h
        .state
        .live_jobs()
        .filter(|j| j.state == JobState::Pending)
        .map(|j| j.spec.id)
        .collect();
    assert_eq!(pending.len(), plan.pending.len());
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
fn late_reports_about_an_earlier_run_change_nothing() {
    let mut h = Harness::new(two_teams(2, 16, 0));
    let job = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    let node = h.state_of(job).run().unwrap().placement[0].node;
    apply(
        &mut h.state,
        Event::NodeState {
            node,
            state: NodeState::Down,
            at_s: 10,
        },
    )
    .unwrap();
    h.now = 10;
    h.step();
    let run = h.state_of(job).run().unwrap().clone();
    assert_eq!(run.attempt, 2);
    let before = h.state.clone();
    // The lost node's agent comes back and reports the first run's exit.
    let stale = Event::Exited {
        job,
        success: false,
        attempt: Some(1),
        at_s: 20,
    };
    let err = apply(&mut h.state, stale).unwrap_err();
    assert!(err.to_string().contains("current run is 2"), "{err}");
    assert_eq!(h.state, before);
    // Samples out of order or from before the run are ignored.
    for (at, pct) in [(30, 0), (50, 0), (40, 0), (5, 0)] {
        let e = Event::Utilisation {
            job,
            pct,
            attempt: Some(2),
            at_s: at,
        };
        apply(&mut h.state, e).unwrap();
    }
    assert_eq!(h.state.job(job).unwrap().idle_milli_s, 8 * 1000 * 20);
}

#[test]
fn a_timed_out_job_that_loses_its_node_still_ends_timed_out() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let job = h.submit(JobBuilder::new("a").limit(100).grace(60));
    h.step();
    h.now = 100;
    h.step();
    let node = h.state_of(job).run().unwrap().placement[0].node;
    let down = Event::NodeState {
        node,
        state: NodeState::Down,
        at_s: 120,
    };
    apply(&mut h.state, down).unwrap();
    assert_eq!(
        h.state_of(job),
        &JobState::Failed {
            at_s: 120,
            timed_out: true
        }
    );
}

#[test]
fn a_node_that_registers_again_stays_drained() {
    let mut state = two_teams(1, 8, 0);
    let node = state.nodes().next().unwrap().spec.clone();
    let drain = Event::NodeState {
        node: node.id,
        state: NodeState::Draining,
        at_s: 1,
    };
    apply(&mut state, drain).unwrap();
    apply(&mut state, Event::NodeUp(node.clone())).unwrap();
    assert_eq!(state.node(node.id).unwrap().state, NodeState::Draining);
    let mut twin = node.clone();
    twin.id = NodeId(77);
    let err = apply(&mut state, Event::NodeUp(twin))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already registered as node#0"), "{err}");
}

#[test]
fn per_model_guarantees_of_sub_teams_must_fit_the_parent_pool_by_pool() {
    let mut state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(
            TeamBuilder::new("org")
                .guaranteed(100)
                .quota("H100", 4, None)
                .build(),
        )
        .build();
    // The child's "*" guarantee also covers H100s, of which the parent has only 4.
    let child = TeamBuilder::new("c").parent("org").guaranteed(50).build();
    let err = apply(&mut state, Event::SetTeam(child))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"org\""), "{err}");
    assert!(err.contains("50 GPUs of GPU model H100"), "{err}");
    let child = TeamBuilder::new("c")
        .parent("org")
        .guaranteed(50)
        .quota("H100", 4, None)
        .build();
    apply(&mut state, Event::SetTeam(child)).unwrap();
}

#[test]
fn a_guaranteed_job_is_not_stuck_behind_its_own_teams_borrowing() {
    // The team's older job is too big for its guarantee and gets a reservation; the
    // younger job fits the guarantee and must not wait behind it.
    let mut h = Harness::new(two_teams(2, 2, 0));
    for _ in 0..12 {
        h.submit(JobBuilder::new("b").limit(5000));
    }
    h.step();
    let big = h.submit(JobBuilder::new("a").gpus(8).limit(5000));
    let small = h.submit(JobBuilder::new("a").gpus(2).limit(6000));
    let plan = h.step();
    assert!(
        plan.start_of(small).is_some(),
        "{:?}",
        plan.pending_job(small)
    );
    assert!(h.is_pending(big));
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
