//! Jobs and nodes over time: refusals, dependencies, idle policy, time limits, lost and returning nodes, late reports.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, TeamBuilder};
use qm_core::*;

use super::{reason, two_teams};

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
        (
            JobBuilder::new("a").gpus(0).cpu_milli(0),
            "no GPU and no CPU",
        ),
        (
            JobBuilder::new("a").gpus(0).cpu_milli(1000).model("H100"),
            "names a GPU model",
        ),
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
fn dependencies_wait_for_success_and_give_up_after_failure() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let first = h.submit(JobBuilder::new("a"));
    let second = h.submit(JobBuilder::new("a").after(first));
    h.step();
    assert_eq!(
        reason(&h, second),
        Reason::Dependency {
            on: first,
            when: After::Ok
        }
    );
    h.exit(first, true);
    h.step();
    assert!(h.is_running(second));
    let third = h.submit(JobBuilder::new("a").after(second));
    h.exit(second, false);
    assert_eq!(
        reason(&h, third),
        Reason::DependencyFailed {
            on: second,
            when: After::Ok
        }
    );
}

#[test]
fn dependencies_wait_for_the_ending_they_name_and_unmeetable_ones_are_cancelled_with_their_cause() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let first = h.submit(JobBuilder::new("a"));
    let on_any = h.submit(JobBuilder::new("a").after_if(first, After::Any));
    let on_fail = h.submit(JobBuilder::new("a").after_if(first, After::Failed));
    let on_ok = h.submit(JobBuilder::new("a").after(first));
    // Waits for a job that runs on, and for `first`.
    let running = h.submit(JobBuilder::new("a").runs_for(1000));
    let both = h.submit(JobBuilder::new("a").after(running).after(first));
    h.step();
    assert_eq!(
        reason(&h, on_fail),
        Reason::Dependency {
            on: first,
            when: After::Failed
        }
    );
    assert!(reason(&h, on_any).to_string().contains("to end"));
    assert!(h.state.unmet_dependencies().is_empty());
    // A cancel that claims an unmet dependency while it can still be met is refused.
    let before = h.state.clone();
    let err = apply(
        &mut h.state,
        Event::Cancel {
            job: on_ok,
            at_s: h.now,
            unmet: Some(first),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("can still be met"), "{err}");
    assert_eq!(h.state, before);
    h.exit(first, false);
    h.step();
    assert!(h.is_running(on_any), "afterany starts after a failure");
    assert!(h.is_running(on_fail), "afternotok starts after a failure");
    assert!(h.is_pending(on_ok));
    assert_eq!(
        reason(&h, on_ok),
        Reason::DependencyFailed {
            on: first,
            when: After::Ok
        }
    );
    // One that can never be met decides, though the other still runs.
    assert!(h.is_running(running));
    assert_eq!(
        reason(&h, both),
        Reason::DependencyFailed {
            on: first,
            when: After::Ok
        }
    );
    assert_eq!(
        h.state.unmet_dependencies(),
        vec![(on_ok, first), (both, first)]
    );
    apply(
        &mut h.state,
        Event::Cancel {
            job: both,
            at_s: h.now,
            unmet: Some(first),
        },
    )
    .unwrap();
    apply(
        &mut h.state,
        Event::Cancel {
            job: on_ok,
            at_s: h.now,
            unmet: Some(first),
        },
    )
    .unwrap();
    assert!(matches!(h.state_of(on_ok), JobState::Cancelled { .. }));
    assert!(h.state.unmet_dependencies().is_empty());
    // Waiting for a failure of a job that succeeded can never be met either.
    let done = h.submit(JobBuilder::new("a"));
    h.step();
    h.exit(done, true);
    let err = h
        .try_submit(JobBuilder::new("a").after_if(done, After::Failed))
        .unwrap_err();
    assert!(err.to_string().contains("ending unsuccessfully"), "{err}");
    h.submit(JobBuilder::new("a").after_if(done, After::Any));
}

#[test]
fn an_array_runs_at_most_its_limit_at_once_and_the_rest_follow_as_they_end() {
    let mut h = Harness::new(two_teams(1, 8, 0));
    let first = JobId(h.state.jobs().map(|j| j.spec.id.0 + 1).max().unwrap_or(1));
    let members: Vec<JobId> = (0..5)
        .map(|i| h.submit(JobBuilder::new("a").array(first, i, Some(2))))
        .collect();
    assert_eq!(members[0], first);
    h.step();
    let running = |h: &Harness| members.iter().filter(|&&j| h.is_running(j)).count();
    assert_eq!(
        running(&h),
        2,
        "the limit of 2 holds though 8 GPUs are free"
    );
    assert_eq!(h.state.array_holding(first), 2);
    assert_eq!(
        reason(&h, members[2]),
        Reason::ArrayLimit {
            array: first,
            max_running: 2
        }
    );
    // A start beyond the limit is refused by apply itself.
    let node = h.state.nodes().next().unwrap().spec.id;
    let before = h.state.clone();
    let err = apply(
        &mut h.state,
        Event::Start {
            job: members[2],
            placement: vec![TaskPlacement {
                node,
                gpus: vec![7],
                gpu_milli: 1000,
            }],
            admission: Admission::Guaranteed,
            at_s: h.now,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("the most it allows"), "{err}");
    assert_eq!(h.state, before);
    h.exit(members[0], true);
    h.step();
    assert_eq!(running(&h), 2);
    assert!(h.is_running(members[2]), "the next element in order starts");
    // Without a limit, every element starts where it fits.
    let free = JobId(members[4].0 + 1);
    let open: Vec<JobId> = (0..3)
        .map(|i| h.submit(JobBuilder::new("a").array(free, i, None)))
        .collect();
    h.step();
    assert!(open.iter().all(|&j| h.is_running(j)));
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
fn idle_allocations_are_flagged_then_yield_or_are_released_by_team_policy() {
    let state = ClusterBuilder::new()
        .racks(1, 1, 8)
        .team_spec(
            TeamBuilder::new("warn")
                .guaranteed(2)
                .idle_policy(IdlePolicy::Warn)
                .build(),
        )
        .team_spec(
            TeamBuilder::new("yield")
                .guaranteed(1)
                .idle_policy(IdlePolicy::Yield)
                .build(),
        )
        .team_spec(
            TeamBuilder::new("release")
                .guaranteed(2)
                .idle_policy(IdlePolicy::Release { after_s: 600 })
                .build(),
        )
        .build();
    let mut h = Harness::new(state);
    let w = h.submit(JobBuilder::new("warn").limit(100_000));
    let y_guaranteed = h.submit(JobBuilder::new("yield").limit(100_000));
    let y_borrowed = h.submit(JobBuilder::new("yield").limit(100_000));
    let q = h.submit(JobBuilder::new("release").limit(100_000));
    h.step();
    for t in (0..=1800).step_by(300) {
        h.now = t;
        for j in [w, y_guaranteed, y_borrowed, q] {
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
    // Not yet idle for the whole window: nothing to say.
    assert!(qm_core::plan(&h.state, 1799).idle.is_empty());
    let plan = qm_core::plan(&h.state, 1800);
    let action = |j| plan.idle.iter().find(|n| n.job == j).map(|n| n.action);
    assert_eq!(action(w), Some(IdleAction::Warn));
    let yielding = IdleAction::Yield { release_at_s: None };
    assert_eq!(action(y_guaranteed), Some(yielding));
    assert_eq!(action(y_borrowed), Some(yielding));
    assert_eq!(
        action(q),
        Some(IdleAction::Yield {
            release_at_s: Some(2400)
        })
    );
    // Yielding stops nothing while no one needs the GPUs.
    assert!(plan.stops.is_empty(), "{:?}", plan.stops);
    let plan = qm_core::plan(&h.state, 2400);
    let stopped: Vec<(JobId, StopCause)> = plan.stops.iter().map(|s| (s.job, s.cause)).collect();
    assert_eq!(stopped, vec![(q, StopCause::Idle)]);
    assert_eq!(
        plan.idle.iter().find(|n| n.job == q).map(|n| n.action),
        Some(IdleAction::Released)
    );
    // Idle time is charged: 1800 s x 1 GPU for each of the four jobs.
    for (team, jobs) in [("warn", 1.0), ("yield", 2.0), ("release", 1.0)] {
        let standing = plan.teams.iter().find(|t| t.team == team).unwrap();
        assert!(
            (standing.idle_gpu_hours - 0.5 * jobs).abs() < 1e-9,
            "{team}: {}",
            standing.idle_gpu_hours
        );
    }
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
    // Its task on the surviving node is being stopped, and keeps its GPUs until it has
    // exited: nothing new may land on a GPU a killed task still uses.
    assert!(matches!(
        h.state_of(gang),
        JobState::Stopping(_, s) if s.cause == StopCause::Lost
    ));
    let other = h.state_of(gang).run().unwrap().placement[1].node;
    assert!(h
        .state
        .node(other)
        .unwrap()
        .gpu_used_milli
        .iter()
        .all(|&m| m == 1000));
    h.now = 6;
    assert!(h.step().starts.is_empty());
    // The surviving task has exited: the gang goes back to the queue whole, everything free.
    apply(
        &mut h.state,
        Event::Exited {
            job: gang,
            success: false,
            attempt: Some(1),
            at_s: 7,
        },
    )
    .unwrap();
    assert!(h.is_pending(gang));
    assert!(h.state.nodes().all(|n| n.cpu_used_milli == 0
        && n.mem_used_mib == 0
        && n.gpu_used_milli.iter().all(|&m| m == 0)));
    let plan = h.step();
    assert!(plan.starts.is_empty(), "one node left cannot hold the gang");
}

#[test]
fn a_run_wholly_on_nodes_that_went_down_is_requeued_at_once() {
    let mut h = Harness::new(two_teams(2, 16, 0));
    let job = h.submit(JobBuilder::new("a").gpus(8));
    h.step();
    let node = h.state_of(job).run().unwrap().placement[0].node;
    apply(
        &mut h.state,
        Event::NodeState {
            node,
            state: NodeState::Down,
            at_s: 5,
        },
    )
    .unwrap();
    assert!(h.is_pending(job));
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

/// Found by fuzzing the event log's replay (`scripts/fuzz`, `event_replay`): a plan far in
/// the future of a big running job overflowed while it weighed the work a preemption would
/// lose (GPU-milli times seconds). It saturates now.
#[test]
fn a_plan_far_in_the_future_of_a_big_job_does_not_overflow() {
    let state = ClusterBuilder::new()
        .racks(1, 2, 8)
        .team_spec(TeamBuilder::new("a").guaranteed(16).build())
        .build();
    let mut h = Harness::new(state);
    let big = h.submit(JobBuilder::new("a").gpus(8).tasks(2));
    h.step();
    assert!(h.is_running(big));
    h.now = u64::MAX / 2;
    let waiting = h.submit(JobBuilder::new("a").gpus(1));
    let plan = h.step();
    assert!(plan.starts.is_empty(), "{plan:?}");
    assert!(!h.is_running(waiting));
}
