//! The planner of one plan: what it reads, what it builds, and the order of its steps. One
//! pass over the running jobs (accounting, admission modes, time limits, idle reclaim), one
//! over the holds left by earlier reclaims, then the pending jobs in policy order, then
//! estimated start times. Each step lives in its own module; this one holds what they share:
//! the planner's state and the small questions every step asks (which group, which models,
//! over a `max`, inside the guarantee), and `start`, the one way a plan starts a job.

use std::collections::BTreeMap;

use crate::model::{GpuAsk, JobId, JobSpec, NodeId, PolicyKind, SchedulerConfig, Secs};
pub(super) use crate::state::gpu_mask;
use crate::state::{Admission, ClusterState, Holder, Job, JobState, TaskPlacement};
use crate::teams::TeamIndex;

use super::estimate::EstimateInputs;
use super::homes::Homes;
use super::partition::static_partition;
use super::place::{self, Ask};
use super::priority::Outranked;
use super::reclaim::Victims;
use super::reserve::{Release, Timeline};
use super::running::{Accounting, RunInfo};
use super::view::View;
use super::{PendingJob, Plan, Reason, Start};

/// Loop bounds beyond the configured ones: reclaim and reservation attempts that fail.
pub(super) const MAX_FAILED_ATTEMPTS: usize = 256;

/// Victims dropped one by one when minimising a gang's reclaim.
pub(super) const MAX_PRUNE_STEPS: usize = 64;

/// What placement depends on, for jobs without a node selector: group, tasks, GPU ask, CPU,
/// memory.
pub(super) type Shape = (usize, u32, GpuAsk, u64, u64);

pub(super) fn shape_of(spec: &JobSpec, group: usize) -> Option<Shape> {
    spec.node_selector.is_empty().then_some((
        group,
        spec.tasks,
        spec.gpu,
        spec.cpu_milli,
        spec.mem_mib,
    ))
}

/// When a job started at `from` with this time limit and runtime estimate ends: by its
/// time limit, and by its estimate (or its time limit); `Secs::MAX` for never.
fn ends(time_limit_s: Option<Secs>, estimate_s: Option<Secs>, from: Secs) -> (Secs, Secs) {
    let limit = time_limit_s.map_or(Secs::MAX, |l| from.saturating_add(l));
    let est = estimate_s
        .or(time_limit_s)
        .map_or(Secs::MAX, |l| from.saturating_add(l));
    (limit, est)
}

/// The indices of the set bits, lowest first.
pub(super) fn mask_bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros();
            mask &= mask - 1;
            i
        })
    })
}

/// Why `spec`'s dependencies keep it from starting, if they do: one not met yet, or one
/// that ended so that it never will be (a job the state no longer knows never will either).
pub fn dependency_block(state: &ClusterState, spec: &JobSpec) -> Option<Reason> {
    // One that can never be met decides, whatever the others are waiting for.
    let mut waiting = None;
    for d in &spec.depends_on {
        let ended = match state.job(d.job).map(|j| &j.state) {
            Some(JobState::Succeeded { .. }) => Some(true),
            Some(JobState::Failed { .. } | JobState::Cancelled { .. }) | None => Some(false),
            Some(_) => None,
        };
        match ended {
            Some(succeeded) if d.when.met_by(succeeded) => {}
            Some(_) => {
                return Some(Reason::DependencyFailed {
                    on: d.job,
                    when: d.when,
                })
            }
            None => {
                waiting = waiting.or(Some(Reason::Dependency {
                    on: d.job,
                    when: d.when,
                }))
            }
        }
    }
    waiting
}

/// The two passes of the ordered planner.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Only jobs (and GPU models) inside their team's guarantee; reclaim allowed.
    Guaranteed,
    /// Everything left, on any model, borrowing idle capacity; no reclaim.
    Borrowing,
}

/// One plan in the making: what it reads (the state, the time, indices of models, teams and
/// nodes), the free capacity it hands out, and what it has decided so far.
pub(crate) struct Planner<'a> {
    pub(super) state: &'a ClusterState,
    /// Also explain every pending job and give each team its standing.
    pub(super) explain: bool,
    pub(super) cfg: &'a SchedulerConfig,
    pub(super) now: Secs,
    pub(super) policy: PolicyKind,
    /// GPU models, sorted: a model's index is its place here.
    pub(super) models: Vec<String>,
    pub(super) teams: &'a TeamIndex,
    /// `[team]` rank among the leaf teams (`static` partitions are per leaf).
    pub(super) leaf_rank: Vec<Option<usize>>,
    pub(super) leaf_count: usize,
    /// Team id (as jobs carry it) to the planner's team index.
    pub(super) team_by_id: Vec<Option<usize>>,
    /// Free capacity, updated as the plan starts, claims and reserves.
    pub(super) view: View<'a>,
    /// Where each team's guarantee lives (`default` only; see `homes.rs`).
    pub(super) homes: &'a Homes,
    /// `[team]`: where the team's jobs that cannot be preempted may run (its home and
    /// nobody's), or `None` for anywhere.
    pub(super) safe: &'a [Option<Vec<u64>>],
    /// While a job that cannot be preempted is being reserved for: the nodes it may use.
    pub(super) keep_to: Option<Vec<u64>>,
    /// Reservations decided but not yet made (`decide` only, that is without `explain`:
    /// `reserve.rs`, "Deferred").
    pub(super) deferred: Vec<super::reserve::Deferred<'a>>,
    /// Every running or stopping job, as the plan sees it, once listed (`runs_listed`).
    pub(super) runs: Vec<RunInfo<'a>>,
    /// The runs are listed (`ensure_runs`): at the scan, or, where the plan summed them from
    /// the teams' tallies (`tally.rs`), when a step first asks for them.
    pub(super) runs_listed: bool,
    /// From the tallies (`default`): `[team]` the lowest priority among its runs that a
    /// pending job of the team may outrank (`find_outranked`).
    pub(super) lowest_takable: Option<Vec<Option<i32>>>,
    /// The team ids whose tallies this plan added, in order, with their stamps (`tally.rs`):
    /// the timeline's releases are then theirs, one after another (`releases`).
    pub(super) tallied: Option<Vec<(u32, u64)>>,
    /// `[run]` the records of the runs, looked up together when a step first needs many
    /// of them (`resolve_runs`): most plans need none.
    pub(super) run_jobs: std::cell::OnceCell<Vec<&'a Job>>,
    /// Indices of the runs whose GPUs are idle (their last samples below the threshold).
    pub(super) idle: Vec<usize>,
    pub(super) acct: Accounting,
    pub(super) victims: Victims,
    /// Runs that a pending job of their own team outranks (`priority.rs`).
    pub(super) outranked: Outranked,
    pub(super) timeline: Timeline,
    pub(super) attempts: Attempts,
    pub(super) memo: Memos,
    pub(super) eta: EstimateInputs,
    /// Jobs of each array with a running limit that this plan starts.
    pub(super) array_started: BTreeMap<JobId, usize>,
    /// The plan being built.
    pub(super) out: Plan,
}

/// How many reclaims and priority preemptions the plan has made, and how many reclaim,
/// priority and reservation attempts failed: each is bounded per plan.
#[derive(Default)]
pub(super) struct Attempts {
    pub(super) reclaims: usize,
    pub(super) failed_reclaims: usize,
    pub(super) priority: usize,
    pub(super) failed_priority: usize,
    pub(super) failed_reservations: usize,
}

/// Ends of releases, ascending, each with the milli-GPUs it frees.
pub(super) type EndsFreed = std::rc::Rc<Vec<(Secs, u64)>>;

/// Failures remembered within one plan, so that the same question is not asked twice:
/// capacity only shrinks and guards only tighten during a plan.
#[derive(Default)]
pub(super) struct Memos {
    /// Shapes that did not fit (ignoring guards or not), with the earliest end that failed.
    pub(super) no_fit: BTreeMap<(Shape, bool, usize), Secs>,
    /// (team, preemptible, shape) whose reclaim failed, with the earliest end that failed.
    pub(super) no_reclaim: BTreeMap<(usize, bool, Shape), Secs>,
    /// (team, preemptible, shape) whose priority preemption failed, with the priority and
    /// end of each failure (a lower priority outranks fewer runs, a later end fits no
    /// better: either fails too).
    pub(super) no_priority: BTreeMap<(usize, bool, Shape), Vec<(i32, Secs)>>,
    /// Shapes for which no reservation could be found, and how many releases there were
    /// then (a later start, with its own end, may make one possible).
    pub(super) no_reserve: BTreeMap<Shape, usize>,
    /// Groups where nothing had a finite end (and how many releases and promises there
    /// were then): no reservation can be promised there until that changes.
    pub(super) unreservable: BTreeMap<usize, usize>,
    /// Per group, the finite ends of the timeline's releases and the milli-GPUs each frees,
    /// sorted by end, with how many releases there were then (releases are only appended):
    /// every gang's reservation in the group reads them.
    pub(super) group_releases: BTreeMap<usize, (usize, EndsFreed)>,
    /// Per shape of a single task, where it first fits on each node (`[node]`), as the last
    /// reservation of that shape found it.
    pub(super) earliest: BTreeMap<Shape, Vec<Option<super::reserve::NodeEarliest>>>,
}

impl<'a> Planner<'a> {
    /// `explain`: also give every pending job its reason and estimate, and each team its
    /// standing. Without it the planner makes the very same decisions, faster.
    pub(super) fn new(state: &'a ClusterState, now: Secs, explain: bool) -> Planner<'a> {
        let cfg = &state.config;
        let policy = cfg.policy;
        let (models, teams) = state.team_index();
        let models = models.to_vec();
        let mut leaf_rank = vec![None; teams.names.len()];
        let mut leaf_count = 0;
        for (t, rank) in leaf_rank.iter_mut().enumerate() {
            if teams.is_leaf[t] {
                *rank = Some(leaf_count);
                leaf_count += 1;
            }
        }
        let partition = if policy == PolicyKind::Static {
            static_partition(state, &models, teams, &leaf_rank)
        } else {
            BTreeMap::new()
        };
        let groups = if policy == PolicyKind::Static {
            models.len() * leaf_count
        } else {
            models.len()
        };
        let view = View::build(state, groups, |node, model| {
            let m = model?;
            if policy == PolicyKind::Static {
                partition.get(&node).map(|r| m * leaf_count + r)
            } else {
                Some(m)
            }
        });
        let mut team_by_id = Vec::new();
        for t in state.teams.values() {
            if let Some(&i) = teams.by_name.get(&t.spec.name) {
                let id = t.id as usize;
                if team_by_id.len() <= id {
                    team_by_id.resize(id + 1, None);
                }
                team_by_id[id] = Some(i);
            }
        }
        let mut view = view;
        view.mix_src = Some((state, models.clone()));
        let node_count = view.ids.len();
        let acct = Accounting::new(state, teams, now);
        let (homes, safe) = super::homes::of_state(state, policy == PolicyKind::Default);
        Planner {
            state,
            explain,
            cfg,
            now,
            policy,
            victims: Victims::new(models.len()),
            outranked: Outranked::default(),
            models,
            teams,
            leaf_rank,
            leaf_count,
            team_by_id,
            view,
            homes,
            safe,
            keep_to: None,
            deferred: Vec::new(),
            runs: Vec::new(),
            runs_listed: false,
            lowest_takable: None,
            tallied: None,
            run_jobs: std::cell::OnceCell::new(),
            idle: Vec::new(),
            acct,
            timeline: Timeline::new(node_count),
            attempts: Attempts::default(),
            memo: Memos::default(),
            eta: EstimateInputs::default(),
            array_started: BTreeMap::new(),
            out: Plan::empty(policy, now),
        }
    }

    /// The steps of a plan, in order.
    pub(super) fn run(mut self) -> Plan {
        self.scan_running();
        if self.policy == PolicyKind::Default {
            self.find_outranked();
        }
        let held = self.occupy_holds();
        let handled = self.serve_holds(held);
        match self.policy {
            PolicyKind::Fifo => self.fifo_pass(&handled),
            _ => self.ordered_pass(&handled),
        }
        if self.explain {
            self.estimate();
            self.standings();
            self.out.pending.sort_by_key(|p| p.job);
        }
        self.out
    }

    /// The group of the view a team's job on `model` places in: the model, or under `static`
    /// the model's partition of the team (`None` for a team that is not a leaf).
    pub(super) fn group(&self, team: usize, model: usize) -> Option<usize> {
        match self.policy {
            PolicyKind::Static => self.leaf_rank[team].map(|r| model * self.leaf_count + r),
            _ => Some(model),
        }
    }

    /// The GPU model of a placement (of its first task's node).
    pub(super) fn model_of(&self, placement: &[TaskPlacement]) -> Option<usize> {
        self.model_of_node(placement.first()?.node)
    }

    /// The GPU model of a node.
    pub(super) fn model_of_node(&self, node: NodeId) -> Option<usize> {
        let n = self.view.dense(node)?;
        Some(self.model_at(n))
    }

    /// The GPU model of dense node `n` (index into `models`).
    pub(super) fn model_at(&self, n: u32) -> usize {
        match self.view.model[n as usize] {
            u32::MAX => 0,
            m => m as usize,
        }
    }

    /// The planner's index of a job's team.
    pub(super) fn team_of(&self, job: &Job) -> Option<usize> {
        self.team_of_id(job.team_id)
    }

    /// The planner's index of a team by its id.
    pub(super) fn team_of_id(&self, id: u32) -> Option<usize> {
        self.team_by_id.get(id as usize).copied().flatten()
    }

    /// The record of run `i`: from the records looked up together, once a step has asked
    /// for them (`resolve_runs`), or else looked up alone.
    pub(super) fn job(&self, i: usize) -> &'a Job {
        match self.run_jobs.get() {
            Some(jobs) => jobs[i],
            None => &self.state.jobs[&self.runs[i].id],
        }
    }

    /// The placement of run `i`.
    pub(super) fn placement(&self, i: usize) -> &'a [TaskPlacement] {
        &self.job(i).state.run().expect("a run holds").placement
    }

    /// Looks the records of all runs up at once, for a step about to read many of them
    /// (reclaim's victims): one walk of the live jobs where most of them hold, one lookup
    /// each where the queue is long.
    pub(super) fn resolve_runs(&self) {
        self.run_jobs.get_or_init(|| {
            let jobs = &self.state.jobs;
            if self.runs.len() * 4 < jobs.len() {
                return self.runs.iter().map(|r| &jobs[&r.id]).collect();
            }
            // The runs come by team: walk the live jobs in id order beside them in id order.
            let mut by_id: Vec<(JobId, usize)> = self
                .runs
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id, i))
                .collect();
            by_id.sort_unstable();
            let mut found = vec![None; self.runs.len()];
            let mut all = jobs.values();
            for (id, i) in by_id {
                found[i] = all.find(|j| j.spec.id == id);
            }
            found
                .into_iter()
                .map(|j| j.expect("a run is live"))
                .collect()
        });
    }

    /// When a run ends, from its note: a stopping one by its stop's deadline, any other as
    /// `end_of` says (by its time limit, and by its estimate).
    pub(super) fn run_ends(&self, note: &Holder) -> (Secs, Secs) {
        match note.stop {
            Some((deadline, _)) => (deadline, deadline),
            None => ends(note.time_limit_s, note.runtime_estimate_s, note.started_s),
        }
    }

    /// When a job started at `from` ends: by its time limit, and by its runtime estimate (or
    /// its time limit); `Secs::MAX` for never.
    pub(super) fn end_of(&self, spec: &JobSpec, from: Secs) -> (Secs, Secs) {
        ends(spec.time_limit_s, spec.runtime_estimate_s, from)
    }

    pub(super) fn pend(&mut self, job: JobId, reason: Reason, eta_s: Option<Secs>) {
        if self.explain {
            self.out.pending.push(PendingJob { job, reason, eta_s });
        }
    }

    pub(super) fn deps_ready(&self, job: &Job) -> bool {
        self.dep_block(job).is_none()
    }

    /// Why a pending job may not be considered at all: a dependency not met (yet or ever),
    /// or its array's running limit reached.
    pub(super) fn dep_block(&self, job: &Job) -> Option<Reason> {
        if let Some(reason) = dependency_block(self.state, &job.spec) {
            return Some(reason);
        }
        self.array_full(&job.spec)
    }

    /// Whether the job's array already runs as many jobs as it allows, counting this plan's
    /// starts (a job is checked again when it is considered: its lane may have offered it
    /// before another job of its array started).
    pub(super) fn array_full(&self, spec: &JobSpec) -> Option<Reason> {
        let a = spec.array?;
        let max = a.max_running?;
        let running = self.state.array_holding(a.array)
            + self.array_started.get(&a.array).copied().unwrap_or(0);
        (running >= max as usize).then_some(Reason::ArrayLimit {
            array: a.array,
            max_running: max,
        })
    }

    /// The GPU models a job may run on, as a range of model indices.
    pub(super) fn candidate_models(&self, spec: &JobSpec) -> std::ops::Range<usize> {
        match &spec.gpu_model {
            Some(m) => match self.models.binary_search(m) {
                Ok(i) => i..i + 1,
                Err(_) => 0..0,
            },
            None => 0..self.models.len(),
        }
    }

    /// The team (this one or an ancestor) whose max the job would break, if any.
    pub(super) fn over_max(&self, team: usize, model: usize, milli: u64) -> Option<Reason> {
        self.over_max_after(team, model, milli, 0)
    }

    /// As [`Self::over_max`], once the team's runs holding `freed` milli-GPUs of `model` have
    /// given them back.
    pub(super) fn over_max_after(
        &self,
        team: usize,
        model: usize,
        milli: u64,
        freed: u64,
    ) -> Option<Reason> {
        if self.policy != PolicyKind::Default {
            return None;
        }
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            if let Some(max) = self.teams.pools[a][pool].max {
                let used = self.acct.alloc[a][pool].saturating_sub(freed);
                if used + milli > max {
                    return Some(Reason::OverMax {
                        team: self.teams.names[a].clone(),
                        model: self.models[model].clone(),
                        used_milli: used,
                        ask_milli: milli,
                        max_milli: max,
                    });
                }
            }
        }
        None
    }

    /// The team (this one or an ancestor) whose CPU cap the job would break, if any.
    pub(super) fn over_cpu_max(&self, team: usize, spec: &JobSpec) -> Option<Reason> {
        if self.policy != PolicyKind::Default {
            return None;
        }
        let ask = spec.cpu_milli * u64::from(spec.tasks);
        for &a in &self.teams.lineage[team] {
            if let Some(max) = self.teams.max_cpu[a] {
                let used = self.acct.cpu[a];
                if used + ask > max {
                    return Some(Reason::OverCpuMax {
                        team: self.teams.names[a].clone(),
                        used_milli: used,
                        ask_milli: ask,
                        max_milli: max,
                    });
                }
            }
        }
        None
    }

    /// Whether the job may start in this class: work on GPUs that can neither be preempted
    /// nor ends by a time limit runs only inside its team's guarantee (`default`; the
    /// baselines have no borrowing). Work without GPUs holds no guarantee's GPUs, and is
    /// always borrowed: it is exempt.
    pub(super) fn may_borrow(&self, spec: &JobSpec, class: Admission) -> bool {
        self.policy != PolicyKind::Default
            || class == Admission::Guaranteed
            || spec.preemptible
            || spec.time_limit_s.is_some()
            || spec.milli_total() == 0
    }

    /// Guaranteed if the job fits what is left of its team's guarantee for the model's pool.
    pub(super) fn class_of(&self, team: usize, model: usize, milli: u64) -> Admission {
        if self.policy != PolicyKind::Default {
            return Admission::Guaranteed;
        }
        // Guarantees are GPUs: work without GPUs holds none, and always borrows.
        if milli == 0 {
            return Admission::Borrowed;
        }
        let pool = self.teams.pool_of_model[team][model];
        if self.acct.guaranteed_used[team][pool] + milli <= self.teams.pools[team][pool].guaranteed
        {
            Admission::Guaranteed
        } else {
            Admission::Borrowed
        }
    }

    /// Starts a job: takes its placement from the view, counts it against its team, and
    /// records when it releases what it takes.
    pub(super) fn start(
        &mut self,
        job: &Job,
        team: usize,
        model: usize,
        p: Vec<TaskPlacement>,
        class: Admission,
    ) {
        let spec = &job.spec;
        let (end_s, est_s) = self.end_of(spec, self.now);
        place::commit(&mut self.view, spec, &p, end_s);
        self.account(team, spec, model, class);
        if self.explain {
            self.eta
                .job_ends
                .push((est_s, team, model, spec.milli_total()));
        }
        for task in &p {
            if let Some(n) = self.view.dense(task.node) {
                self.push_release(Release {
                    end_s,
                    est_s,
                    node: n,
                    gpus: gpu_mask(&task.gpus),
                    milli: task.gpu_milli,
                    cpu: spec.cpu_milli,
                    mem: spec.mem_mib,
                });
            }
        }
        if let Some(a) = spec.array.filter(|a| a.max_running.is_some()) {
            *self.array_started.entry(a.array).or_default() += 1;
        }
        self.out.starts.push(Start {
            job: spec.id,
            placement: p,
            admission: class,
        });
    }

    /// How many decisions the plan holds so far.
    pub(super) fn decisions(&self) -> (usize, usize, usize, usize) {
        (
            self.out.starts.len(),
            self.out.stops.len(),
            self.timeline.promises.len() + self.deferred.len(),
            self.out.reclaims.len(),
        )
    }

    /// `place::find`, remembering failures: capacity only shrinks and guards only tighten
    /// during a plan, so a shape that did not fit with some end time does not fit later with
    /// the same or a later one.
    pub(super) fn find_memo(
        &mut self,
        ask: &Ask,
        shape: Option<Shape>,
    ) -> Option<Vec<TaskPlacement>> {
        self.find_memo_scored(ask, shape).map(|(p, _)| p)
    }

    pub(super) fn find_memo_scored(
        &mut self,
        ask: &Ask,
        shape: Option<Shape>,
    ) -> Option<(Vec<TaskPlacement>, f64)> {
        // With reservations deferred, the guards they would set are not there yet: where
        // the job does not fit even without guards it does not fit with them; where it
        // does, the deferred reservations are made first and the guarded question asked.
        if !ask.ignore_guards && !self.deferred.is_empty() {
            let free = Ask {
                ignore_guards: true,
                ..*ask
            };
            self.find_memo_scored(&free, shape)?;
            self.settle();
        }
        let key = shape.map(|s| (s, ask.ignore_guards, ask.within.map_or(0, |w| w.0 + 1)));
        if let Some(k) = &key {
            if self.memo.no_fit.get(k).is_some_and(|&end| ask.end_s >= end) {
                return None;
            }
        }
        let found = place::find_scored(&self.view, ask);
        if let (None, Some(k)) = (&found, key) {
            let end = self.memo.no_fit.entry(k).or_insert(ask.end_s);
            *end = (*end).min(ask.end_s);
        }
        found
    }

    /// No job asking for `least` milli-GPUs or more fits the free capacity of any group.
    pub(super) fn cannot_fit(&self, least: u64) -> bool {
        self.view
            .group_free_milli
            .iter()
            .max()
            .is_none_or(|&f| least > f)
    }
}
