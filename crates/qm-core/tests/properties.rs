//! Property tests: random clusters, team trees and event sequences, with the core's
//! invariants checked after every plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use qm_core::testkit::{ClusterBuilder, JobBuilder, NodeBuilder, TeamBuilder};
use qm_core::*;

/// Cases of the reservation property run, and those in which some plan made a reservation.
static RESERVATION_CASES: AtomicU64 = AtomicU64::new(0);
static RESERVED_CASES: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
struct Cluster {
    racks: Vec<(u32, u32, bool)>, // nodes, GPUs per node, second model
    teams: Vec<(u32, Option<u32>, u32, u8)>, // guaranteed, extra max, weight, idle policy
    nested: bool,
    policy: PolicyKind,
    /// Teams of weight 2 cap their CPU at their guarantee plus 2 CPUs.
    cpu_caps: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        team: usize,
        tasks: u32,
        whole: Option<u32>,
        milli: u32,
        limit: u64,
        run_pct: u64,
        preemptible: bool,
        min_run: u64,
        /// Grace period, and how often the job checkpoints (none: it does not).
        grace: (u64, Option<u64>),
        priority: i32,
        model: u8,
        dep: Option<usize>,
    },
    Advance(u64),
    Cancel(usize),
    Guarantee(usize, u32),
    Node(usize, u8),
    Util(usize, u8),
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(
            (1u32..=3, prop::sample::select(vec![4u32, 8]), any::<bool>()),
            1..=3,
        ),
        prop::collection::vec(
            (0u32..=12, prop::option::of(0u32..=16), 1u32..=3, 0u8..3),
            2..=4,
        ),
        any::<bool>(),
        prop::sample::select(vec![
            PolicyKind::Default,
            PolicyKind::Default,
            PolicyKind::Fifo,
            PolicyKind::Static,
        ]),
    )
        .prop_map(|(racks, teams, nested, policy)| Cluster {
            racks,
            teams,
            nested,
            policy,
            cpu_caps: true,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (
            0usize..4,
            prop::sample::select(vec![1u32, 1, 1, 2, 3]),
            // Some(0): a task without GPUs (CPU only).
            prop::option::of(prop::sample::select(vec![0u32, 1, 1, 2, 4, 8])),
            prop::sample::select(vec![100u32, 250, 500, 700, 1000]),
            prop::sample::select(vec![100u64, 300, 1000, 5000]),
            10u64..=100,
            prop::bool::weighted(0.8),
            prop::sample::select(vec![0u64, 0, 200]),
            (
                prop::sample::select(vec![0u64, 30]),
                prop::option::weighted(0.3, prop::sample::select(vec![50u64, 400])),
            ),
            -1i32..=1,
            0u8..4,
            prop::option::weighted(0.1, 0usize..64),
        )
            .prop_map(
                |(team, tasks, whole, milli, limit, run_pct, preemptible, min_run, grace, priority, model, dep)| {
                    Op::Submit {
                        team,
                        tasks,
                        whole,
                        milli,
                        limit,
                        run_pct,
                        preemptible,
                        min_run,
                        grace,
                        priority,
                        model,
                        dep,
                    }
                }
            ),
        3 => (1u64..=600).prop_map(Op::Advance),
        1 => (0usize..64).prop_map(Op::Cancel),
        1 => (0usize..4, 0u32..=16).prop_map(|(t, g)| Op::Guarantee(t, g)),
        1 => (0usize..12, 0u8..3).prop_map(|(n, s)| Op::Node(n, s)),
        1 => (0usize..64, 0u8..=100).prop_map(|(j, p)| Op::Util(j, p)),
    ]
}

fn build(c: &Cluster) -> (ClusterState, Vec<String>) {
    let mut b = ClusterBuilder::new();
    for (r, &(nodes, gpus, second)) in c.racks.iter().enumerate() {
        for _ in 0..nodes {
            let model = if second { "A100" } else { "H100" };
            let rack = format!("rack-{r}");
            b = b.node(
                NodeBuilder::new(gpus)
                    .model(model)
                    .topology(&["pod", &rack]),
            );
        }
    }
    let names: Vec<String> = (0..c.teams.len()).map(|i| format!("t{i}")).collect();
    let total_g: u32 = c.teams.iter().map(|t| t.0).sum();
    if c.nested {
        b = b.team_spec(TeamBuilder::new("org").guaranteed(total_g).build());
    }
    for (i, &(g, extra, w, idle)) in c.teams.iter().enumerate() {
        let mut t = TeamBuilder::new(&names[i]).guaranteed(g).weight(w);
        if let Some(extra) = extra {
            t = t.max(g + extra);
        }
        // Teams of weight 2 also cap their CPU (derived, so that the stored regressions keep
        // generating the clusters they were found on): jobs ask 1 CPU a task, so it binds.
        if w == 2 && c.cpu_caps {
            t = t.max_cpu(u64::from(g) + 2);
        }
        if c.nested {
            t = t.parent("org");
        }
        t = t.idle_policy(match idle {
            0 => IdlePolicy::Warn,
            1 => IdlePolicy::Yield,
            _ => IdlePolicy::Release { after_s: 120 },
        });
        b = b.team_spec(t.build());
    }
    let state = b
        .policy(c.policy)
        .config(|c| {
            c.idle_window_s = 300;
        })
        .build();
    (state, names)
}

/// Guaranteed usage of jobs waiting on holds, by team: a reclaim's beneficiaries keep their
/// place in the guarantee first; a priority preemption's take their victims' place.
#[derive(Default)]
struct Seeds {
    first: BTreeMap<String, u64>,
    /// Jobs this plan started off a reclaim's hold.
    reclaimed: BTreeSet<JobId>,
    /// Jobs this plan started off a priority preemption's hold: they count where they
    /// waited, after the jobs that started guaranteed, before the others.
    promoted: BTreeSet<JobId>,
    in_place: BTreeMap<String, Vec<(u64, u64)>>,
}

/// A tiny shell with a virtual clock that checks invariants after every plan.
struct World {
    state: ClusterState,
    now: u64,
    names: Vec<String>,
    ids: Vec<JobId>,
    durations: BTreeMap<JobId, u64>,
    /// Plans made since the last `drain`, when recording.
    history: Option<Vec<Plan>>,
}

impl World {
    fn plan_and_check(&mut self) -> Result<Plan, TestCaseError> {
        let plan = qm_core::plan(&self.state, self.now);
        // Determinism: same state and time, same plan, byte for byte; also after a round
        // trip of the state through serde.
        let again = qm_core::plan(&self.state, self.now);
        prop_assert_eq!(&plan, &again);
        // Deciding without explaining makes the very same decisions.
        let decided = qm_core::decide(&self.state, self.now);
        prop_assert_eq!(&plan.starts, &decided.starts);
        prop_assert_eq!(&plan.stops, &decided.stops);
        prop_assert_eq!(&plan.idle, &decided.idle);
        // What deciding reserves, planning reserves too, in the same order: deciding only
        // stops early, and leaves out reservations no later decision read.
        prop_assert!(
            plan.reservations.starts_with(&decided.reservations),
            "decided reservations {:?} are not a prefix of planned ones {:?}",
            decided.reservations,
            plan.reservations
        );
        let copy: ClusterState =
            serde_json::from_str(&serde_json::to_string(&self.state).unwrap()).unwrap();
        // A loaded state is the same state, the index of holding jobs rebuilt included.
        prop_assert!(copy == self.state, "a serde round trip changed the state");
        copy.check_invariants();
        let third = qm_core::plan(&copy, self.now);
        prop_assert_eq!(
            serde_json::to_string(&plan).unwrap(),
            serde_json::to_string(&third).unwrap()
        );
        // Every pending job is explained exactly once; nothing else is.
        let pending: Vec<JobId> = self
            .state
            .live_jobs()
            .filter(|j| j.state == JobState::Pending)
            .map(|j| j.spec.id)
            .filter(|id| plan.start_of(*id).is_none())
            .collect();
        let explained: Vec<JobId> = plan.pending.iter().map(|p| p.job).collect();
        prop_assert_eq!(pending, explained);
        // An array never runs more of its jobs at once than it allows, this plan's starts
        // included.
        let mut by_array: std::collections::BTreeMap<JobId, (usize, u32)> = Default::default();
        for j in self.state.live_jobs() {
            let started = plan.start_of(j.spec.id).is_some();
            if let Some(a) = j.spec.array.filter(|_| started || j.state.run().is_some()) {
                let e = by_array.entry(a.array).or_default();
                e.0 += 1;
                e.1 = a.max_running.unwrap_or(u32::MAX);
            }
        }
        for (array, (running, max)) in by_array {
            prop_assert!(
                running <= max as usize,
                "array {} runs {} jobs, more than its {}",
                array,
                running,
                max
            );
        }
        // Gangs whole in every start; work that can neither be preempted nor ends by a time
        // limit never borrows (`default`).
        for s in &plan.starts {
            let spec = &self.state.job(s.job).unwrap().spec;
            prop_assert_eq!(s.placement.len(), spec.tasks as usize);
            prop_assert!(
                plan.policy != PolicyKind::Default
                    || s.admission == Admission::Guaranteed
                    || spec.preemptible
                    || spec.time_limit_s.is_some()
                    || spec.milli_total() == 0,
                "{} borrows without a time limit or preemption",
                s.job
            );
        }
        self.check_priority_stops(&plan)?;
        self.check_idle_stops(&plan)?;
        // Jobs waiting on a hold keep their place in their team's guarantee: a reclaim's
        // first, a priority preemption's after the jobs that started guaranteed.
        let waiting: Vec<(JobId, bool)> = self
            .state
            .holds()
            .iter()
            .filter(|(b, h)| {
                self.now <= h.until_s && self.state.job(**b).unwrap().state == JobState::Pending
            })
            .map(|(b, h)| {
                let team = &self.state.job(*b).unwrap().spec.team;
                let own = h
                    .victims
                    .iter()
                    .all(|v| self.state.job(*v).is_some_and(|v| v.spec.team == *team));
                (*b, own)
            })
            .collect();
        self.execute(&plan)?;
        self.check_state()?;
        let mut seeds = Seeds::default();
        for (b, own) in waiting {
            let j = self.state.job(b).unwrap();
            if !own && plan.start_of(b).is_some() {
                // Started off its reclaim's hold: admitted when the reclaim was planned, it
                // keeps its place first in its team's guarantee.
                seeds.reclaimed.insert(b);
            }
            if own && plan.start_of(b).is_some() {
                seeds.promoted.insert(b);
            }
            if j.state == JobState::Pending {
                let team = j.spec.team.clone();
                if own {
                    seeds
                        .in_place
                        .entry(team)
                        .or_default()
                        .push((b.0, j.spec.milli_total()));
                } else {
                    *seeds.first.entry(team).or_default() += j.spec.milli_total();
                }
            }
        }
        self.check_guarantees(&plan, &seeds)?;
        if let Some(h) = &mut self.history {
            h.push(plan.clone());
        }
        Ok(plan)
    }

    fn execute(&mut self, plan: &Plan) -> Result<(), TestCaseError> {
        // `apply` refuses a start that gives a GPU share twice.
        for e in plan.events(self.now) {
            apply(&mut self.state, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Ok(())
    }

    /// No GPU capacity given twice, gangs whole, no team above its max.
    fn check_state(&self) -> Result<(), TestCaseError> {
        // The state's own invariants, over the whole state (`apply` checks only what each
        // event touched); a failing one panics.
        self.state.check_invariants();
        let mut used: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        let mut team_alloc: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut team_cpu: BTreeMap<String, u64> = BTreeMap::new();
        for job in self.state.live_jobs() {
            let Some(run) = job.state.run() else { continue };
            *team_cpu.entry(job.spec.team.clone()).or_default() +=
                job.spec.cpu_milli * u64::from(job.spec.tasks);
            prop_assert_eq!(run.placement.len(), job.spec.tasks as usize, "gang split");
            let mut model = None;
            for t in &run.placement {
                let node = self.state.node(t.node).unwrap();
                prop_assert!(model
                    .as_ref()
                    .is_none_or(|m: &String| *m == node.spec.gpu_model));
                model = Some(node.spec.gpu_model.clone());
                let u = used
                    .entry(t.node)
                    .or_insert_with(|| vec![0; node.spec.gpus as usize]);
                for &g in &t.gpus {
                    u[g as usize] += t.gpu_milli;
                }
            }
            *team_alloc
                .entry((job.spec.team.clone(), model.unwrap()))
                .or_default() += job.spec.milli_total();
        }
        for node in self.state.nodes() {
            let expect = used
                .get(&node.spec.id)
                .cloned()
                .unwrap_or_else(|| vec![0; node.spec.gpus as usize]);
            prop_assert_eq!(&node.gpu_used_milli, &expect);
            prop_assert!(expect.iter().all(|&m| m <= 1000), "GPU over-committed");
        }
        // Max, for each team and its ancestors (one "*" pool in these trees). The baselines
        // have no borrowing limits: fifo ignores teams, static confines them to partitions.
        let teams = self
            .state
            .teams()
            .filter(|_| self.state.config.policy == PolicyKind::Default);
        for team in teams {
            let Some(max) = team.spec.quotas.get(ANY_MODEL).and_then(|q| q.max) else {
                continue;
            };
            let alloc: u64 = team_alloc
                .iter()
                .filter(|((t, _), _)| {
                    *t == team.spec.name || team.spec.name == "org" // org holds every team
                })
                .map(|(_, m)| *m)
                .sum();
            prop_assert!(
                alloc <= u64::from(max) * 1000,
                "{} above max",
                team.spec.name
            );
        }
        // CPU caps (leaf teams only in these trees), under `default`.
        if self.state.config.policy == PolicyKind::Default {
            for team in self.state.teams() {
                if let Some(cap) = team.spec.max_cpu_milli {
                    let cpu = team_cpu.get(&team.spec.name).copied().unwrap_or(0);
                    prop_assert!(cpu <= cap, "{} above its CPU cap", team.spec.name);
                }
            }
        }
        Ok(())
    }

    /// A stop for priority only ever stops a preemptible job past its minimum run time, for
    /// a pending job of the very same team with a strictly higher priority, which the plan
    /// does not start but explains as waiting for its victims.
    fn check_priority_stops(&self, plan: &Plan) -> Result<(), TestCaseError> {
        for stop in plan.stops.iter().filter(|s| s.cause == StopCause::Priority) {
            let victim = self.state.job(stop.job).unwrap();
            let run = victim.state.run().unwrap();
            let b = stop
                .beneficiary
                .expect("a priority stop names its beneficiary");
            let beneficiary = self.state.job(b).unwrap();
            prop_assert_eq!(&victim.spec.team, &beneficiary.spec.team);
            prop_assert!(victim.spec.priority < beneficiary.spec.priority);
            prop_assert!(victim.spec.preemptible);
            prop_assert!(self.now - run.started_s >= victim.spec.min_run_s);
            prop_assert_eq!(plan.policy, PolicyKind::Default);
            prop_assert!(plan.start_of(b).is_none());
            prop_assert!(plan.reclaims.iter().any(|r| r.job == b));
            let why = &plan.pending_job(b).unwrap().reason;
            prop_assert!(
                matches!(why, Reason::WaitingForReclaim { victims, lower_priority: true, .. }
                    if victims.contains(&stop.job)),
                "{} stopped for {}, which waits because {}",
                stop.job,
                b,
                why
            );
        }
        Ok(())
    }

    /// A stop for idleness only ever stops a job idle for at least the idle window (its last
    /// sample below the threshold) of a team whose policy is not `warn`: for a pending job
    /// that waits for it (`yield`) or, with none, past the `release` window. Busy work is
    /// never stopped as idle.
    fn check_idle_stops(&self, plan: &Plan) -> Result<(), TestCaseError> {
        let window = self.state.config.idle_window_s;
        for stop in plan.stops.iter().filter(|s| s.cause == StopCause::Idle) {
            let victim = self.state.job(stop.job).unwrap();
            let run = victim.state.run().unwrap();
            let since = run.idle_since_s.expect("stopped as idle, so idle");
            prop_assert!(self.now - since >= window, "idle for less than the window");
            prop_assert!(run
                .last_util_pct
                .is_some_and(|p| p < self.state.config.idle_threshold_pct));
            let policy = self.state.team(&victim.spec.team).unwrap().spec.idle_policy;
            match stop.beneficiary {
                Some(b) => {
                    prop_assert_ne!(policy, IdlePolicy::Warn);
                    prop_assert!(plan.start_of(b).is_none());
                    prop_assert!(plan.reclaims.iter().any(|r| r.job == b));
                }
                None => {
                    let due = policy.release_at(since, window);
                    prop_assert!(due.is_some_and(|d| self.now >= d), "released early");
                }
            }
        }
        Ok(())
    }

    /// A guaranteed job is never left pending while borrowed capacity that could be reclaimed
    /// would let it run (but for one requeued after an idle stop, which takes free GPUs only).
    fn check_guarantees(&self, plan: &Plan, seeds: &Seeds) -> Result<(), TestCaseError> {
        if plan.policy != PolicyKind::Default {
            return Ok(()); // The baselines make no promise about guarantees.
        }
        // Capacity after the plan; reclaims and reservations are subtracted per job below.
        let used: BTreeMap<NodeId, (Vec<u32>, u64, u64)> = self
            .state
            .nodes()
            .map(|n| {
                (
                    n.spec.id,
                    (n.gpu_used_milli.clone(), n.cpu_used_milli, n.mem_used_mib),
                )
            })
            .collect();
        let occupy = |used: &mut BTreeMap<NodeId, (Vec<u32>, u64, u64)>, p: &[TaskPlacement]| {
            for t in p {
                let u = used.get_mut(&t.node).unwrap();
                for &g in &t.gpus {
                    u.0[g as usize] = (u.0[g as usize] + t.gpu_milli).min(1000);
                }
            }
        };
        // Recompute admission: jobs waiting on holds first, then each team's jobs that started
        // guaranteed, then the others, oldest first, guaranteed while they fit.
        let mut borrowed = Vec::new();
        // Guaranteed usage per team: running jobs inside the guarantee, plus GPUs being
        // reclaimed for the team's jobs.
        let mut inside_of: BTreeMap<String, u64> = BTreeMap::new();
        for r in &plan.reclaims {
            let j = self.state.job(r.job).unwrap();
            *inside_of.entry(j.spec.team.clone()).or_default() += j.spec.milli_total();
        }
        let mut by_team: BTreeMap<String, Vec<&Job>> = BTreeMap::new();
        for job in self.state.live_jobs() {
            if job.state.run().is_some() {
                by_team.entry(job.spec.team.clone()).or_default().push(job);
            }
        }
        for team in seeds.in_place.keys() {
            by_team.entry(team.clone()).or_default();
        }
        for (team, jobs) in by_team {
            // Jobs this plan started come after the ones already running: when the plan was
            // made they were pending, and took what was left of the guarantee. Jobs waiting
            // on a priority preemption come after those that started guaranteed, whether they
            // still wait or started in this plan, and its victims, leaving, last.
            let mut keyed: Vec<_> = jobs
                .into_iter()
                .map(|j| {
                    let run = j.state.run().unwrap();
                    let held = seeds.reclaimed.contains(&j.spec.id);
                    let new = plan.start_of(j.spec.id).is_some();
                    let leaving = matches!(&j.state,
                        JobState::Stopping(_, s) if s.cause == StopCause::Priority);
                    let key = if seeds.promoted.contains(&j.spec.id) {
                        (
                            true,
                            false,
                            false,
                            Admission::Guaranteed,
                            u64::MAX,
                            j.spec.id.0,
                        )
                    } else {
                        (
                            !held,
                            new,
                            leaving,
                            run.admission,
                            run.started_s,
                            j.spec.id.0,
                        )
                    };
                    (key, Some(j), 0)
                })
                .collect();
            for &(id, m) in seeds.in_place.get(&team).into_iter().flatten() {
                keyed.push((
                    (true, false, false, Admission::Guaranteed, u64::MAX, id),
                    None,
                    m,
                ));
            }
            keyed.sort_by_key(|k| k.0);
            let g =
                u64::from(self.state.team(&team).unwrap().spec.quotas[ANY_MODEL].guaranteed) * 1000;
            let mut inside = seeds.first.get(&team).copied().unwrap_or(0);
            for (_, j, waiting) in keyed {
                let Some(j) = j else {
                    if inside + waiting <= g {
                        inside += waiting;
                    }
                    continue;
                };
                let m = j.spec.milli_total();
                if inside + m <= g {
                    inside += m;
                    *inside_of.entry(team.clone()).or_default() += m;
                } else if let JobState::Running(run) = &j.state {
                    let old_enough = self.now - run.started_s >= j.spec.min_run_s;
                    let new = plan.start_of(j.spec.id).is_some();
                    if j.spec.preemptible && old_enough && !new {
                        borrowed.push(j);
                    }
                }
            }
        }
        for p in &plan.pending {
            if !matches!(
                p.reason,
                Reason::NoPlacement { .. }
                    | Reason::Reserved { .. }
                    | Reason::BehindReservation { .. }
            ) {
                continue;
            }
            let job = self.state.job(p.job).unwrap();
            // A job requeued after an idle stop takes free GPUs only until it runs again: it
            // does not take back, by its guarantee, what it just gave up.
            if job.stopped_idle {
                continue;
            }
            let team = self.state.team(&job.spec.team).unwrap();
            let g = u64::from(team.spec.quotas[ANY_MODEL].guaranteed) * 1000;
            let a = inside_of.get(&job.spec.team).copied().unwrap_or(0);
            if a + job.spec.milli_total() > g {
                continue;
            }
            let mut free = used.clone();
            // A team's guarantee is taken back from other teams, never from itself.
            for v in borrowed.iter().filter(|v| v.spec.team != job.spec.team) {
                for t in &v.state.run().unwrap().placement {
                    let u = free.get_mut(&t.node).unwrap();
                    for &gi in &t.gpus {
                        u.0[gi as usize] -= t.gpu_milli.min(u.0[gi as usize]);
                    }
                    u.1 -= v.spec.cpu_milli.min(u.1);
                    u.2 -= v.spec.mem_mib.min(u.2);
                }
            }
            // What others were promised stays theirs: reserved GPUs whole (work that would
            // outlive a reservation may not share its GPUs).
            for r in plan.reservations.iter().filter(|r| r.job != p.job) {
                for t in &r.placement {
                    let u = free.get_mut(&t.node).unwrap();
                    for &g in &t.gpus {
                        u.0[g as usize] = 1000;
                    }
                }
            }
            for r in plan.reclaims.iter() {
                occupy(&mut free, &r.placement);
            }
            for model in ["H100", "A100"] {
                if job.spec.gpu_model.as_deref().is_some_and(|m| m != model) {
                    continue;
                }
                let mut cap = 0u64;
                for node in self.state.nodes() {
                    if node.state != NodeState::Ready || node.spec.gpu_model != model {
                        continue;
                    }
                    let (u, cpu, mem) = &free[&node.spec.id];
                    let by_gpu = match job.spec.gpu {
                        GpuAsk::Whole(k) => (u.iter().filter(|&&x| x == 0).count() as u64)
                            .checked_div(u64::from(k))
                            .unwrap_or(u64::MAX),
                        GpuAsk::Milli(m) => u.iter().map(|&x| u64::from((1000 - x) / m)).sum(),
                    };
                    let by_cpu = (node.spec.cpu_milli - cpu) / job.spec.cpu_milli.max(1);
                    let by_mem = (node.spec.mem_mib - mem) / job.spec.mem_mib.max(1);
                    cap += by_gpu.min(by_cpu).min(by_mem);
                }
                prop_assert!(
                    cap < u64::from(job.spec.tasks),
                    "guaranteed {} left pending ({}) while reclaim would fit it on {model}",
                    p.job,
                    p.reason
                );
            }
        }
        Ok(())
    }

    fn advance(&mut self, dt: u64) -> Result<(), TestCaseError> {
        let target = self.now + dt;
        // Move event by event: job ends and stop deadlines, planning after each.
        for _ in 0..1000 {
            let next = self
                .state
                .live_jobs()
                .filter_map(|j| match &j.state {
                    JobState::Running(r) => self.durations.get(&j.spec.id).map(|d| r.started_s + d),
                    JobState::Stopping(_, s) => Some(s.deadline_s),
                    _ => None,
                })
                .filter(|&t| t <= target)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            let due: Vec<(JobId, bool)> = self
                .state
                .live_jobs()
                .filter_map(|j| match &j.state {
                    JobState::Running(r)
                        if self
                            .durations
                            .get(&j.spec.id)
                            .is_some_and(|d| r.started_s + d <= self.now) =>
                    {
                        Some((j.spec.id, true))
                    }
                    JobState::Stopping(_, s) if s.deadline_s <= self.now => {
                        Some((j.spec.id, false))
                    }
                    _ => None,
                })
                .collect();
            for (job, ok) in due {
                // Reports name the run they are about, as a real agent's do.
                let attempt = self.state.job(job).unwrap().state.run().map(|r| r.attempt);
                let e = Event::Exited {
                    job,
                    success: ok,
                    attempt,
                    at_s: self.now,
                };
                apply(&mut self.state, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            self.plan_and_check()?;
        }
        self.now = target;
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.state.clone();
        let result = match op.clone() {
            Op::Submit {
                team,
                tasks,
                whole,
                milli,
                limit,
                run_pct,
                preemptible,
                min_run,
                grace,
                priority,
                model,
                dep,
            } => {
                let name = &self.names[team % self.names.len()];
                let id = JobId(self.ids.len() as u64 + 1);
                let mut b = JobBuilder::new(name)
                    .id(id.0)
                    .tasks(tasks)
                    .limit(limit)
                    .min_run(min_run)
                    .grace(grace.0)
                    .priority(priority)
                    .submit_at(self.now);
                if let Some(every) = grace.1 {
                    b = b.checkpoint_every(every);
                }
                b = match whole {
                    Some(k) => b.gpus(k),
                    None => b.milli(milli),
                };
                if !preemptible {
                    b = b.not_preemptible();
                    // Some such work has no time limit (it runs `limit * run_pct` all the same).
                    if limit == 5000 {
                        b = b.no_limit();
                    }
                }
                b = match model {
                    0 => b.model("H100"),
                    1 => b.model("A100"),
                    _ => b,
                };
                match dep {
                    // One in four: an element of array 1 (one at a time) or 2 (two at once).
                    Some(d) if d % 4 == 3 => {
                        let array = 1 + (d as u64 % 2);
                        b = b.array(JobId(array), d as u32, Some(array as u32));
                    }
                    Some(d) if d < self.ids.len() => {
                        let when = [After::Ok, After::Any, After::Failed][d % 3];
                        b = b.after_if(self.ids[d], when);
                    }
                    _ => {}
                }
                let r = apply(&mut self.state, Event::Submit(b.spec()));
                if r.is_ok() {
                    self.ids.push(id);
                    self.durations.insert(id, limit * run_pct / 100);
                }
                r
            }
            Op::Advance(dt) => return self.advance(dt),
            Op::Cancel(j) => match self.ids.get(j) {
                Some(&job) => apply(
                    &mut self.state,
                    Event::Cancel {
                        job,
                        at_s: self.now,
                        unmet: None,
                    },
                ),
                None => Ok(()),
            },
            Op::Guarantee(t, g) => {
                let name = &self.names[t % self.names.len()];
                let mut spec = self.state.team(name).unwrap().spec.clone();
                spec.quotas.get_mut(ANY_MODEL).unwrap().guaranteed = g;
                apply(&mut self.state, Event::SetTeam(spec))
            }
            Op::Node(n, s) => {
                let ids: Vec<NodeId> = self.state.nodes().map(|n| n.spec.id).collect();
                let node = ids[n % ids.len()];
                let state = [NodeState::Ready, NodeState::Draining, NodeState::Down][s as usize];
                apply(
                    &mut self.state,
                    Event::NodeState {
                        node,
                        state,
                        at_s: self.now,
                    },
                )
            }
            Op::Util(j, pct) => match self.ids.get(j) {
                Some(&job) => apply(
                    &mut self.state,
                    Event::Utilisation {
                        job,
                        pct,
                        attempt: None,
                        at_s: self.now,
                    },
                ),
                None => Ok(()),
            },
        };
        if result.is_err() {
            // Nothing refused changes the state.
            prop_assert_eq!(&self.state, &before);
        }
        self.plan_and_check()?;
        Ok(())
    }
}

/// `PROPTEST_CASES` from the environment when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_plan(c in cluster(), ops in prop::collection::vec(op(), 1..60)) {
        let (state, names) = build(&c);
        let mut w = World { state, now: 0, names, ids: Vec::new(), durations: BTreeMap::new(), history: None };
        for op in &ops {
            w.apply_op(op)?;
        }
        w.advance(20_000)?;
    }

    /// Backfill never delays a reservation when time limits hold: the job holding the first
    /// reservation of a plan starts no later than that reservation promised. Every job here
    /// ends within its time limit, so a reserved job that never starts breaks the promise
    /// too.
    #[test]
    fn reservations_are_kept_when_time_limits_hold(
        c in cluster(),
        jobs in prop::collection::vec((0usize..4, 1u32..=6, prop::sample::select(vec![1u32, 2, 4, 8]),
                                        prop::sample::select(vec![100u64, 300, 1000, 3000]), 10u64..=100,
                                        0u64..2000), 1..40),
    ) {
        let mut c = c;
        c.policy = PolicyKind::Default;
        for t in &mut c.teams { t.0 = 0; t.1 = None; }
        // Every job here must be able to start: no CPU caps.
        c.cpu_caps = false;
        let (mut state, names) = build(&c);
        state.config.starvation_wait_s = Some(0);
        let mut w = World { state, now: 0, names, ids: Vec::new(), durations: BTreeMap::new(), history: Some(Vec::new()) };
        // Jobs arrive over time, each runs within its limit.
        let mut arrivals = jobs.clone();
        arrivals.sort_by_key(|j| j.5);
        let mut promised: BTreeMap<JobId, u64> = BTreeMap::new();
        let mut started: BTreeMap<JobId, u64> = BTreeMap::new();
        let record = |plan: &Plan, promised: &mut BTreeMap<JobId, u64>, started: &mut BTreeMap<JobId, u64>| {
            if let Some(r) = plan.reservations.first() {
                promised.entry(r.job).or_insert(r.start_s);
            }
            for s in &plan.starts {
                started.entry(s.job).or_insert(plan.now_s);
            }
        };
        for (team, tasks, k, limit, pct, at) in arrivals {
            w.advance(at.saturating_sub(w.now))?;
            let id = JobId(w.ids.len() as u64 + 1);
            let spec = JobBuilder::new(&w.names[team % w.names.len()]).id(id.0).tasks(tasks).gpus(k)
                .limit(limit).submit_at(w.now).spec();
            if apply(&mut w.state, Event::Submit(spec)).is_ok() {
                w.ids.push(id);
                w.durations.insert(id, limit * pct / 100);
            }
            w.plan_and_check()?;
            for p in w.history.replace(Vec::new()).unwrap() { record(&p, &mut promised, &mut started); }
        }
        // Run until every job has ended (each runs within its limit, and every limit is at
        // most 3,000 s, so 200 steps of 500 s are far more than enough).
        for _ in 0..200 {
            w.advance(500)?;
            for p in w.history.replace(Vec::new()).unwrap() { record(&p, &mut promised, &mut started); }
            if w.state.live_jobs().next().is_none() { break; }
        }
        let left: Vec<JobId> = w.state.live_jobs().map(|j| j.spec.id).collect();
        prop_assert!(left.is_empty(), "jobs {left:?} never ended (now {})", w.now);
        // The property says nothing in a case without reservations: enough cases must have
        // some, or the generator no longer tests it.
        let cases = RESERVATION_CASES.fetch_add(1, Ordering::Relaxed) + 1;
        let with = RESERVED_CASES.fetch_add(u64::from(!promised.is_empty()), Ordering::Relaxed)
            + u64::from(!promised.is_empty());
        prop_assert!(cases < 64 || with * 5 >= cases,
            "only {with} of {cases} cases made a reservation");
        for (job, at) in promised {
            let s = started.get(&job);
            prop_assert!(s.is_some(), "{job} promised {at}, never started");
            prop_assert!(s.is_some_and(|s| *s <= at), "{job} promised {at}, started {s:?}");
        }
    }
}

/// Found by `invariants_hold_after_every_plan` (a release run of 20,000 cases): a job of
/// array 2 that one team's start filled in the same plan, queued behind another team's
/// CPU-capped job, was passed over unexplained. Every pending job is explained once.
#[test]
fn a_job_whose_array_fills_during_the_plan_is_explained() {
    let c = Cluster {
        racks: vec![(2, 8, false), (2, 8, false)],
        teams: vec![(0, None, 1, 0), (0, None, 2, 0)],
        nested: false,
        policy: PolicyKind::Default,
        cpu_caps: true,
    };
    let submit = |team, model, dep| Op::Submit {
        team,
        tasks: 1,
        whole: None,
        milli: 100,
        limit: 100,
        run_pct: 10,
        preemptible: false,
        min_run: 0,
        grace: (0, None),
        priority: 0,
        model,
        dep,
    };
    let (state, names) = build(&c);
    let mut w = World {
        state,
        now: 0,
        names,
        ids: Vec::new(),
        durations: BTreeMap::new(),
        history: None,
    };
    for op in [
        submit(1, 2, None),
        submit(1, 0, Some(11)),
        submit(1, 0, None),
        submit(1, 2, Some(31)),
        submit(0, 2, Some(43)),
        submit(0, 0, None),
    ] {
        w.apply_op(&op).unwrap();
    }
    w.advance(20_000).unwrap();
}
