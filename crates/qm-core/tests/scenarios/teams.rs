//! Teams and order: trees, guarantees, max, sharing by weight, per-model pools, policies.

use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder, NodeBuilder, TeamBuilder};
use qm_core::*;

use super::{reason, two_teams};

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
    // The low-priority job is the older one: only priority can put the other first.
    let low = h.submit(JobBuilder::new("a").gpus(4).priority(-1));
    let high = h.submit(JobBuilder::new("a").gpus(4).priority(10));
    let b = h.submit(JobBuilder::new("b").gpus(4));
    h.step();
    assert!(
        h.is_running(high),
        "A's highest priority job runs in its guarantee"
    );
    assert_eq!(
        h.state_of(high).run().unwrap().admission,
        Admission::Guaranteed
    );
    assert!(
        h.is_running(b),
        "B's guaranteed job goes before A's borrowing"
    );
    assert!(h.is_pending(low));
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
    assert!(
        matches!(
            plan.pending_job(big).unwrap().reason,
            Reason::Reserved { .. }
        ),
        "{:?}",
        plan.pending_job(big)
    );
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

/// Plans and submissions read the GPU models and the team tree from a form built once and
/// kept until a node registers or a team changes: every such change shows at once.
#[test]
fn a_new_model_a_new_team_and_a_changed_guarantee_count_from_the_next_event() {
    let state = ClusterBuilder::new()
        .node(NodeBuilder::new(8))
        .node(NodeBuilder::new(8))
        .team("a", 8)
        .build();
    let mut h = Harness::new(state);
    h.step();
    let err = h
        .try_submit(JobBuilder::new("a").model("A100"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"A100\""), "{err}");
    let mut spec = ClusterBuilder::new()
        .node(NodeBuilder::new(8).model("A100"))
        .build()
        .nodes()
        .next()
        .expect("built")
        .spec
        .clone();
    spec.id = NodeId(7);
    spec.name = "a100-0".to_string();
    apply(&mut h.state, Event::NodeUp(spec)).expect("node registers");
    let on_a100 = h.submit(JobBuilder::new("a").model("A100"));
    let plan = h.step();
    assert_eq!(plan.starts.len(), 1);
    assert_eq!(plan.starts[0].job, on_a100);
    assert_eq!(plan.starts[0].placement[0].node, NodeId(7));

    let err = h.try_submit(JobBuilder::new("b")).unwrap_err().to_string();
    assert!(err.contains("\"b\""), "{err}");
    apply(
        &mut h.state,
        Event::SetTeam(TeamBuilder::new("b").guaranteed(4).build()),
    )
    .expect("team added");
    h.submit(JobBuilder::new("b"));
    let standing = |plan: &Plan, team: &str| {
        plan.teams
            .iter()
            .find(|t| t.team == team)
            .map(|t| t.guaranteed_gpus)
    };
    let plan = h.step();
    assert_eq!(standing(&plan, "b"), Some(4));
    // Homes as kept with the state, against homes computed afresh (a state read back from
    // its serialised form keeps nothing derived), after each kind of change.
    let fresh = |state: &ClusterState| {
        let json = serde_json::to_string(state).expect("serialises");
        let copy: ClusterState = serde_json::from_str(&json).expect("reads back");
        qm_core::homes(&copy)
    };
    let before = qm_core::homes(&h.state);
    assert_eq!(before, fresh(&h.state));
    let mut moved = h.state.nodes().next().expect("a node").spec.clone();
    moved.topology = vec!["rack-9".to_string()];
    apply(&mut h.state, Event::NodeUp(moved)).expect("node re-registers");
    let after = qm_core::homes(&h.state);
    assert_ne!(after, before, "homes are laid in topology order");
    assert_eq!(after, fresh(&h.state));
    apply(
        &mut h.state,
        Event::SetTeam(TeamBuilder::new("b").guaranteed(6).build()),
    )
    .expect("guarantee raised");
    let plan = h.step();
    assert_eq!(standing(&plan, "b"), Some(6));
    assert_eq!(standing(&plan, "a"), Some(8));
    assert_eq!(qm_core::homes(&h.state), fresh(&h.state));
    assert!(qm_core::homes(&h.state).teams.contains_key("b"));
}

/// Two teams borrowing one node's two GPUs: `heavy` has held both for two hours; its next
/// job has waited longer than `light`'s, both for over an hour. The GPU that frees goes by
/// fair-share standing, to `light`; only where an administrator set a starvation wait does
/// age alone decide it.
fn heavy_and_light(starvation_wait_s: Option<Secs>) -> (Harness, JobId, JobId) {
    let state = ClusterBuilder::new()
        .racks(1, 1, 2)
        .team("heavy", 0)
        .team("light", 0)
        .config(|c| c.starvation_wait_s = starvation_wait_s)
        .build();
    let mut h = Harness::new(state);
    h.submit(JobBuilder::new("heavy").runs_for(2 * 3600).limit(10 * 3600));
    h.submit(JobBuilder::new("heavy").runs_for(4 * 3600).limit(10 * 3600));
    h.step();
    let old = h.submit(JobBuilder::new("heavy").runs_for(3600).limit(10 * 3600));
    h.now = 60;
    let young = h.submit(JobBuilder::new("light").runs_for(3600).limit(10 * 3600));
    h.run_until(2 * 3600);
    (h, old, young)
}

#[test]
fn a_freed_gpu_goes_by_fair_share_however_long_both_waited() {
    let (h, old, young) = heavy_and_light(None);
    assert!(h.is_running(young), "the team that held nothing goes first");
    assert!(h.is_pending(old));
    assert_eq!(h.started_at(young), Some(2 * 3600));
}

#[test]
fn a_starvation_wait_puts_the_oldest_job_first_where_an_administrator_sets_one() {
    let (h, old, young) = heavy_and_light(Some(3600));
    assert!(h.is_running(old), "past the starvation wait, age decides");
    assert!(h.is_pending(young));
}
