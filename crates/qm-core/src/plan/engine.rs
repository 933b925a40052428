//! The planner proper: one pass over the running jobs (accounting, time limits, idle
//! reclaim), one over the holds left by earlier reclaims, then the pending jobs in policy
//! order, then estimated start times.
//!
//! Order (default policy): admission class (jobs inside their team's guarantee first), then
//! priority, then starving jobs first, then the team's fair-share standing, then submission
//! time, then id. Each team keeps its own queue; a heap holds every team's head job, so the
//! team with the lowest standing is served next (progressive filling, i.e. weighted max-min).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::model::{
    GpuAsk, IdlePolicy, JobId, JobSpec, PolicyKind, SchedulerConfig, Secs, MILLI_PER_GPU,
};
use crate::state::{Admission, ClusterState, Job, JobState, StopCause, TaskPlacement};
use crate::teams::TeamIndex;

use super::place::{self, Ask};
use super::view::View;
use super::{
    IdleAction, IdleNotice, PendingJob, Plan, Reason, Reservation, Start, StopOrder, TeamStanding,
};

/// Loop bounds beyond the configured ones: reclaim and reservation attempts that fail.
const MAX_FAILED_ATTEMPTS: usize = 256;
/// Victims dropped one by one when minimising a gang's reclaim.
const MAX_PRUNE_STEPS: usize = 64;

struct RunInfo<'a> {
    job: &'a Job,
    placement: &'a [TaskPlacement],
    team: Option<usize>,
    model: usize,
    mode: Admission,
    stopping: bool,
    /// GPU-seconds lost if preempted now.
    cost: u64,
    taken: bool,
}

struct Release {
    end_s: Secs,
    est_s: Secs,
    node: u32,
    /// GPU indices on the node, one bit each (nodes have at most 64 GPUs).
    gpus: u64,
    milli: u32,
    cpu: u64,
    mem: u64,
}

struct ResvRec {
    group: usize,
    end_s: Secs,
    placement: Vec<TaskPlacement>,
    cpu: u64,
    mem: u64,
}

/// Amounts actually taken from the view on someone's behalf, to give back exactly.
struct Taken {
    node: u32,
    gpu: Option<u32>,
    milli: i64,
    cpu: i64,
    mem: i64,
}

type Key = (u8, i64, u8, u64, Secs, JobId);

/// CPU and memory a node will have left once a reservation has started there.
type Slack = (u32, u64, u64);

/// What placement depends on, for jobs without a node selector: group, tasks, GPU ask, CPU,
/// memory.
type Shape = (usize, u32, GpuAsk, u64, u64);

fn mask_of(gpus: &[u32]) -> u64 {
    gpus.iter().fold(0, |m, &g| m | (1 << g))
}

/// The indices of the set bits, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros();
            mask &= mask - 1;
            i
        })
    })
}

fn shape_of(spec: &JobSpec, group: usize) -> Option<Shape> {
    spec.node_selector.is_empty().then_some((
        group,
        spec.tasks,
        spec.gpu,
        spec.cpu_milli,
        spec.mem_mib,
    ))
}

/// The two passes of the ordered planner.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only jobs (and GPU models) inside their team's guarantee; reclaim allowed.
    Guaranteed,
    /// Everything left, on any model, borrowing idle capacity; no reclaim.
    Borrowing,
}

pub(crate) struct Planner<'a> {
    state: &'a ClusterState,
    explain: bool,
    cfg: &'a SchedulerConfig,
    now: Secs,
    policy: PolicyKind,
    models: Vec<String>,
    teams: TeamIndex,
    leaf_rank: Vec<Option<usize>>,
    n_leaves: usize,
    /// [`Team::id`](crate::Team) to the planner's team index.
    /// Team id (as jobs carry it) to the planner's team index.
    team_by_id: Vec<Option<usize>>,
    /// `[node]` index into `models`.
    node_model: Vec<usize>,
    view: View<'a>,
    /// `[team][pool]` milli-GPUs held, sub-teams included, updated as the plan starts jobs.
    alloc: Vec<Vec<u64>>,
    /// `[team]` milli-GPUs over all pools, sub-teams included.
    alloc_total: Vec<u64>,
    /// `[team]` the history part of fair-share usage.
    history: Vec<f64>,
    runs: Vec<RunInfo<'a>>,
    /// Every pending, running or stopping job, read once per plan.
    live: Vec<&'a Job>,
    victims_by_model: Vec<Vec<usize>>,
    releases: Vec<Release>,
    reservations: Vec<ResvRec>,
    /// `[node]` indices into `releases` and `reservations` touching the node.
    rel_by_node: Vec<Vec<usize>>,
    resv_by_node: Vec<Vec<usize>>,
    resv_by_group: BTreeMap<usize, usize>,
    /// `[team][pool]` milli-GPUs held or claimed inside the guarantee.
    gused: Vec<Vec<u64>>,
    /// Guaranteed usage set aside for each job waiting on a hold: (team, pool, milli).
    hold_seed: BTreeMap<JobId, (usize, usize, u64)>,
    /// `[model]` upper bound of milli-GPUs the remaining victims would free.
    victim_milli_left: Vec<u64>,
    failed_reclaims: usize,
    failed_reservations: usize,
    /// Groups where nothing had a finite end (and how many releases and reservations there
    /// were then): no reservation can be promised there until that changes.
    unreservable: BTreeMap<usize, usize>,
    reclaims: usize,
    /// Shapes that did not fit (ignoring guards or not), with the earliest end that failed.
    no_fit: BTreeMap<(Shape, bool), Secs>,
    /// (team, shape) whose reclaim failed, with the earliest end that failed.
    no_reclaim: BTreeMap<(usize, Shape), Secs>,
    /// Shapes for which no reservation could be found, and how many releases there were
    /// then (a later start, with its own end, may make one possible).
    no_reserve: BTreeMap<Shape, usize>,
    /// Group in which each capacity-blocked pending job waits, for estimates.
    eta_group: BTreeMap<JobId, usize>,
    /// Expected end (runtime estimate or time limit), team, model and milli-GPUs of every
    /// holding or starting job, for estimates of jobs waiting on a `max`.
    job_ends: Vec<(Secs, usize, usize, u64)>,
    /// Jobs waiting on a `max`: (job, team whose max, model, milli-GPUs over the max).
    over_max_waits: Vec<(JobId, usize, usize, u64)>,
    out: Plan,
}

fn key_f64(x: f64) -> u64 {
    (x.max(0.0) * 1e6).min(u64::MAX as f64) as u64
}

impl<'a> Planner<'a> {
    /// `explain`: also give every pending job its reason and estimate, and each team its
    /// standing. Without it the planner makes the very same decisions, faster.
    pub fn new(state: &'a ClusterState, now: Secs, explain: bool) -> Planner<'a> {
        let cfg = &state.config;
        let policy = cfg.policy;
        let mut models: Vec<String> = state
            .nodes
            .values()
            .map(|n| n.spec.gpu_model.clone())
            .collect();
        models.sort();
        models.dedup();
        let teams = TeamIndex::build(state.teams.values().map(|t| &t.spec), &models);
        let mut leaf_rank = vec![None; teams.names.len()];
        let mut n_leaves = 0;
        for (t, rank) in leaf_rank.iter_mut().enumerate() {
            if teams.is_leaf[t] {
                *rank = Some(n_leaves);
                n_leaves += 1;
            }
        }
        let partition = if policy == PolicyKind::Static {
            static_partition(state, &models, &teams, &leaf_rank)
        } else {
            BTreeMap::new()
        };
        let groups = if policy == PolicyKind::Static {
            models.len() * n_leaves
        } else {
            models.len()
        };
        let view = View::build(state, groups, |node| {
            let m = models.binary_search(&node.spec.gpu_model).ok()?;
            if policy == PolicyKind::Static {
                partition.get(&node.spec.id).map(|r| m * n_leaves + r)
            } else {
                Some(m)
            }
        });
        let team_count = teams.names.len();
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
        let node_model: Vec<usize> = view
            .nodes
            .iter()
            .map(|n| models.binary_search(&n.spec.gpu_model).unwrap_or(0))
            .collect();
        let mut view = view;
        view.mix_src = Some((state, models.clone()));
        let node_count = view.ids.len();
        let alloc = teams.pools.iter().map(|p| vec![0; p.len()]).collect();
        let teams_gused = teams.pools.iter().map(|p| vec![0; p.len()]).collect();
        let models_len = models.len();
        let history = Self::histories(state, &teams, now);
        Planner {
            state,
            explain,
            cfg,
            now,
            policy,
            victims_by_model: vec![Vec::new(); models.len()],
            models,
            teams,
            leaf_rank,
            n_leaves,
            team_by_id,
            node_model,
            view,
            alloc,
            alloc_total: vec![0; team_count],
            history,
            runs: Vec::new(),
            live: Vec::new(),
            releases: Vec::new(),
            reservations: Vec::new(),
            rel_by_node: vec![Vec::new(); node_count],
            resv_by_node: vec![Vec::new(); node_count],
            resv_by_group: BTreeMap::new(),
            gused: teams_gused,
            hold_seed: BTreeMap::new(),
            victim_milli_left: vec![0; models_len],
            failed_reclaims: 0,
            failed_reservations: 0,
            unreservable: BTreeMap::new(),
            reclaims: 0,
            no_fit: BTreeMap::new(),
            no_reclaim: BTreeMap::new(),
            no_reserve: BTreeMap::new(),
            eta_group: BTreeMap::new(),
            job_ends: Vec::new(),
            over_max_waits: Vec::new(),
            out: Plan {
                policy,
                now_s: now,
                starts: Vec::new(),
                stops: Vec::new(),
                reservations: Vec::new(),
                reclaims: Vec::new(),
                pending: Vec::new(),
                idle: Vec::new(),
                teams: Vec::new(),
            },
        }
    }

    pub fn run(mut self) -> Plan {
        self.scan_running();
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

    fn group(&self, team: usize, model: usize) -> Option<usize> {
        match self.policy {
            PolicyKind::Static => self.leaf_rank[team].map(|r| model * self.n_leaves + r),
            _ => Some(model),
        }
    }

    fn model_of(&self, placement: &[TaskPlacement]) -> Option<usize> {
        let n = self.view.dense(placement.first()?.node)?;
        Some(self.node_model[n as usize])
    }

    /// The planner's index of a job's team.
    fn team_of(&self, job: &Job) -> Option<usize> {
        self.team_by_id.get(job.team_id as usize).copied().flatten()
    }

    fn end_of(&self, spec: &JobSpec, from: Secs) -> (Secs, Secs) {
        let limit = spec
            .time_limit_s
            .map_or(Secs::MAX, |l| from.saturating_add(l));
        let est = spec
            .runtime_estimate_s
            .or(spec.time_limit_s)
            .map_or(Secs::MAX, |l| from.saturating_add(l));
        (limit, est)
    }

    fn add_alloc(&mut self, team: usize, model: usize, milli: u64) {
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            self.alloc[a][pool] += milli;
            self.alloc_total[a] += milli;
        }
    }

    /// Accounting, releases, admission modes, time limits and idle reclaim of holding jobs.
    fn scan_running(&mut self) {
        let state = self.state;
        self.live = state.live_jobs().collect();
        self.view.mix_jobs = self.live.clone();
        let live = self.live.clone();
        for job in live {
            let Some(run) = job.state.run() else { continue };
            let Some(model) = self.model_of(&run.placement) else {
                continue;
            };
            let team = self.team_of(job);
            let milli = job.spec.milli_total();
            if let Some(t) = team {
                self.add_alloc(t, model, milli);
            }
            let expected_end = match &job.state {
                JobState::Stopping(_, stop) => stop.deadline_s,
                _ => self.end_of(&job.spec, run.started_s).1,
            };
            if let Some(t) = team {
                self.job_ends.push((expected_end, t, model, milli));
            }
            let stopping = match &job.state {
                JobState::Stopping(_, stop) => Some(stop.deadline_s),
                _ => None,
            };
            let (limit, est) = match stopping {
                Some(deadline) => (deadline, deadline),
                None => self.end_of(&job.spec, run.started_s),
            };
            for task in &run.placement {
                if let Some(n) = self.view.dense(task.node) {
                    self.push_release(Release {
                        end_s: limit,
                        est_s: est,
                        node: n,
                        gpus: mask_of(&task.gpus),
                        milli: task.gpu_milli,
                        cpu: job.spec.cpu_milli,
                        mem: job.spec.mem_mib,
                    });
                }
            }
            let elapsed = self.now.saturating_sub(run.started_s);
            let lost = match job.spec.checkpoint_every_s {
                Some(every) if every > 0 => elapsed % every,
                _ => elapsed,
            };
            self.runs.push(RunInfo {
                job,
                placement: &run.placement,
                team,
                model,
                mode: Admission::Guaranteed,
                stopping: stopping.is_some(),
                cost: milli * lost / u64::from(MILLI_PER_GPU),
                taken: stopping.is_some(),
            });
        }
        self.classify();
        // Time limits, for every policy.
        for r in &mut self.runs {
            let spec = &r.job.spec;
            let run = r.job.state.run().expect("holding");
            let over = spec
                .time_limit_s
                .is_some_and(|l| self.now >= run.started_s.saturating_add(l));
            if over && !r.stopping {
                r.taken = true;
                self.out.stops.push(StopOrder {
                    job: spec.id,
                    cause: StopCause::TimeLimit,
                    beneficiary: None,
                    lost_gpu_s: 0,
                });
            }
        }
        if self.policy != PolicyKind::Default {
            return;
        }
        self.idle_reclaim();
        for (i, r) in self.runs.iter().enumerate() {
            let spec = &r.job.spec;
            let run = r.job.state.run().expect("holding");
            let eligible = !r.taken
                && r.mode == Admission::Borrowed
                && spec.preemptible
                && self.now.saturating_sub(run.started_s) >= spec.min_run_s;
            if eligible {
                self.victims_by_model[r.model].push(i);
            }
        }
        for (m, list) in self.victims_by_model.iter().enumerate() {
            self.victim_milli_left[m] = list
                .iter()
                .flat_map(|&i| self.runs[i].placement.iter())
                .map(|t| t.gpus.len() as u64 * u64::from(MILLI_PER_GPU))
                .sum();
        }
        for list in &mut self.victims_by_model {
            let runs = &self.runs;
            // Keys inline, so that sorting does not chase pointers per comparison.
            let mut keyed: Vec<_> = list
                .iter()
                .map(|&i| {
                    let r = &runs[i];
                    let started = r.job.state.run().map_or(0, |run| run.started_s);
                    ((r.cost, Reverse(started), r.job.spec.id), i)
                })
                .collect();
            keyed.sort_unstable();
            list.clear();
            list.extend(keyed.into_iter().map(|k| k.1));
        }
    }

    /// Recomputes each running job's admission from the current quotas: a team's jobs, oldest
    /// first, are guaranteed while they fit in its guarantee; the rest are borrowed. A lowered
    /// guarantee thereby turns the excess into reclaimable borrowed capacity.
    ///
    /// Jobs waiting on a hold were admitted as guaranteed when their reclaim was planned: they
    /// keep their place in the guarantee first. Then jobs that started guaranteed, then the
    /// others, oldest first.
    fn classify(&mut self) {
        let mut by_team: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.runs.iter_mut().enumerate() {
            if let Some(t) = r.team {
                by_team.entry(t).or_default().push(i);
            } else {
                r.mode = Admission::Borrowed;
            }
        }
        if self.policy == PolicyKind::Default {
            for (b, hold) in &self.state.holds {
                let Some(job) = self.state.job(*b) else {
                    continue;
                };
                if job.state != JobState::Pending || self.now > hold.until_s {
                    continue;
                }
                let Some(t) = self.team_of(job) else {
                    continue;
                };
                let model = hold
                    .shares
                    .first()
                    .and_then(|s| self.model_of(std::slice::from_ref(&s.task)));
                let Some(model) = model else { continue };
                let pool = self.teams.pool_of_model[t][model];
                self.gused[t][pool] += job.spec.milli_total();
                self.hold_seed.insert(*b, (t, pool, job.spec.milli_total()));
            }
        }
        for (t, mut list) in by_team {
            let mut keyed: Vec<_> = list
                .iter()
                .map(|&i| {
                    let r = &self.runs[i];
                    let run = r.job.state.run().expect("holding");
                    ((run.admission, run.started_s, r.job.spec.id), i)
                })
                .collect();
            keyed.sort_unstable();
            list.clear();
            list.extend(keyed.into_iter().map(|k| k.1));
            let mut used = std::mem::take(&mut self.gused[t]);
            for i in list {
                let r = &mut self.runs[i];
                let pool = self.teams.pool_of_model[t][r.model];
                let milli = r.job.spec.milli_total();
                if self.policy != PolicyKind::Default
                    || used[pool] + milli <= self.teams.pools[t][pool].guaranteed
                {
                    used[pool] += milli;
                    r.mode = Admission::Guaranteed;
                } else {
                    r.mode = Admission::Borrowed;
                }
            }
            self.gused[t] = used;
        }
    }

    fn idle_reclaim(&mut self) {
        let window = self.cfg.idle_window_s;
        for r in &mut self.runs {
            if r.taken {
                continue;
            }
            let run = r.job.state.run().expect("holding");
            let Some(since) = run.idle_since_s else {
                continue;
            };
            if self.now.saturating_sub(since) < window {
                continue;
            }
            let policy = self
                .state
                .teams
                .get(&r.job.spec.team)
                .map_or(IdlePolicy::Warn, |t| t.spec.idle_policy);
            let preemptible = r.job.spec.preemptible;
            let action = match policy {
                IdlePolicy::Warn => IdleAction::Warn,
                IdlePolicy::ReclaimBorrowed if r.mode == Admission::Borrowed && preemptible => {
                    IdleAction::Reclaimed
                }
                IdlePolicy::ReclaimBorrowed => IdleAction::Warn,
                IdlePolicy::Requeue { grace_s } => {
                    let due = since.saturating_add(window).saturating_add(grace_s);
                    if self.now >= due && preemptible {
                        IdleAction::Reclaimed
                    } else {
                        IdleAction::RequeueAt(due)
                    }
                }
            };
            if action == IdleAction::Reclaimed {
                r.taken = true;
                let lost = r.cost;
                self.out.stops.push(StopOrder {
                    job: r.job.spec.id,
                    cause: StopCause::Idle,
                    beneficiary: None,
                    lost_gpu_s: lost,
                });
            }
            self.out.idle.push(IdleNotice {
                job: r.job.spec.id,
                team: r.job.spec.team.clone(),
                idle_since_s: since,
                action,
            });
        }
    }

    fn occupy(view: &mut View, task: &TaskPlacement, cpu: u64, mem: u64) -> Vec<Taken> {
        let Some(n) = view.dense(task.node) else {
            return Vec::new();
        };
        let mut taken = Vec::with_capacity(task.gpus.len() + 1);
        for &g in &task.gpus {
            let Some(&used) = view.used_of(n).get(g as usize) else {
                continue;
            };
            let amount = i64::from(task.gpu_milli.min(MILLI_PER_GPU - used));
            if amount > 0 {
                view.adjust(n, &[g], amount, 0, 0);
                taken.push(Taken {
                    node: n,
                    gpu: Some(g),
                    milli: amount,
                    cpu: 0,
                    mem: 0,
                });
            }
        }
        let cpu = cpu.min(view.cpu_free[n as usize]) as i64;
        let mem = mem.min(view.mem_free[n as usize]) as i64;
        view.adjust(n, &[], 0, cpu, mem);
        let guard = &mut view.guard[n as usize];
        guard.cpu_slack = guard.cpu_slack.saturating_sub(cpu as u64);
        guard.mem_slack = guard.mem_slack.saturating_sub(mem as u64);
        taken.push(Taken {
            node: n,
            gpu: None,
            milli: 0,
            cpu,
            mem,
        });
        taken
    }

    fn give_back(view: &mut View, taken: &[Taken]) {
        for t in taken {
            let gpus: Vec<u32> = t.gpu.into_iter().collect();
            view.adjust(t.node, &gpus, -t.milli, -t.cpu, -t.mem);
        }
    }

    /// Marks GPUs that earlier reclaims freed as taken, on behalf of the jobs they were
    /// freed for, so nothing else takes them first.
    fn occupy_holds(&mut self) -> BTreeMap<JobId, Vec<Taken>> {
        let mut held = BTreeMap::new();
        if self.policy != PolicyKind::Default {
            return held;
        }
        for (b, hold) in &self.state.holds {
            let pending = self
                .state
                .jobs
                .get(b)
                .is_some_and(|j| j.state == JobState::Pending);
            if !pending || self.now > hold.until_s {
                continue;
            }
            let mut taken = Vec::new();
            for share in &hold.shares {
                let victim_holds = self
                    .state
                    .jobs
                    .get(&share.victim)
                    .is_some_and(|v| matches!(v.state, JobState::Stopping(..)));
                if !victim_holds {
                    taken.extend(Self::occupy(
                        &mut self.view,
                        &share.task,
                        share.cpu_milli,
                        share.mem_mib,
                    ));
                }
            }
            held.insert(*b, taken);
        }
        held
    }

    /// Jobs with a hold go first: they start on the held GPUs if those suffice, or keep
    /// waiting for their victims (keeping the free part of their future placement).
    fn serve_holds(&mut self, held: BTreeMap<JobId, Vec<Taken>>) -> BTreeSet<JobId> {
        let mut handled = BTreeSet::new();
        for (b, taken) in held {
            Self::give_back(&mut self.view, &taken);
            let job = &self.state.jobs[&b];
            let Some(t) = self.team_of(job) else {
                continue;
            };
            if !self.deps_ready(job) {
                continue;
            }
            let spec = &job.spec;
            // Its place in the guarantee was set aside; it takes it now (or gives it up).
            if let Some((st, pool, milli)) = self.hold_seed.remove(&b) {
                self.gused[st][pool] -= milli;
            }
            let (end_s, _) = self.end_of(spec, self.now);
            let mut started = false;
            for m in self.candidate_models(spec) {
                if self.over_max(t, m, spec.milli_total()).is_some() {
                    continue;
                }
                let Some(g) = self.group(t, m) else { continue };
                let ask = Ask {
                    spec,
                    group: g,
                    end_s,
                    ignore_guards: false,
                };
                if let Some(p) = place::find(&self.view, &ask) {
                    let class = self.class_of(t, m, spec.milli_total());
                    self.start(job, t, m, p, class);
                    started = true;
                    break;
                }
            }
            if started {
                handled.insert(b);
                continue;
            }
            let hold = &self.state.holds[&b];
            let stopping: Vec<&Job> = hold
                .victims
                .iter()
                .filter_map(|v| self.state.job(*v))
                .filter(|v| matches!(v.state, JobState::Stopping(..)))
                .collect();
            if stopping.is_empty() {
                continue;
            }
            let mut future = self.view.clone();
            for v in &stopping {
                let run = v.state.run().expect("stopping");
                future.give(&run.placement, v.spec.cpu_milli, v.spec.mem_mib);
            }
            for m in self.candidate_models(spec) {
                if self.over_max(t, m, spec.milli_total()).is_some() {
                    continue;
                }
                let Some(g) = self.group(t, m) else { continue };
                let ask = Ask {
                    spec,
                    group: g,
                    end_s,
                    ignore_guards: false,
                };
                if let Some(p) = place::find(&future, &ask) {
                    for task in &p {
                        Self::occupy(&mut self.view, task, spec.cpu_milli, spec.mem_mib);
                    }
                    let claim = p;
                    let ready_by_s = stopping
                        .iter()
                        .filter_map(|v| match &v.state {
                            JobState::Stopping(_, s) => Some(s.deadline_s),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(self.now);
                    let class = self.class_of(t, m, spec.milli_total());
                    self.claim(job, t, m, g, &claim, ready_by_s.max(self.now), class);
                    self.out.reclaims.push(Reservation {
                        job: b,
                        start_s: ready_by_s.max(self.now),
                        placement: claim,
                    });
                    self.pend(
                        b,
                        Reason::WaitingForReclaim {
                            victims: stopping.iter().map(|v| v.spec.id).collect(),
                            ready_by_s,
                        },
                        Some(ready_by_s.max(self.now)),
                    );
                    handled.insert(b);
                    break;
                }
            }
        }
        handled
    }

    fn pend(&mut self, job: JobId, reason: Reason, eta_s: Option<Secs>) {
        if self.explain {
            self.out.pending.push(PendingJob { job, reason, eta_s });
        }
    }

    /// `place::find`, remembering failures: capacity only shrinks and guards only tighten
    /// during a plan, so a shape that did not fit with some end time does not fit later with
    /// the same or a later one.
    fn find_memo(&mut self, ask: &Ask, shape: Option<Shape>) -> Option<Vec<TaskPlacement>> {
        self.find_memo_scored(ask, shape).map(|(p, _)| p)
    }

    fn find_memo_scored(
        &mut self,
        ask: &Ask,
        shape: Option<Shape>,
    ) -> Option<(Vec<TaskPlacement>, f64)> {
        let key = shape.map(|s| (s, ask.ignore_guards));
        if let Some(k) = &key {
            if self.no_fit.get(k).is_some_and(|&end| ask.end_s >= end) {
                return None;
            }
        }
        let found = place::find_scored(&self.view, ask);
        if let (None, Some(k)) = (&found, key) {
            let end = self.no_fit.entry(k).or_insert(ask.end_s);
            *end = (*end).min(ask.end_s);
        }
        found
    }

    /// No reclaim can happen in the rest of this plan.
    fn no_reclaim(&self) -> bool {
        self.policy != PolicyKind::Default
            || self.reclaims >= self.cfg.max_reclaims
            || self.failed_reclaims >= MAX_FAILED_ATTEMPTS
            || self.victim_milli_left.iter().all(|&m| m == 0)
    }

    /// No job asking for `least` milli-GPUs or more fits the free capacity of any group.
    fn cannot_fit(&self, least: u64) -> bool {
        self.view
            .group_free_milli
            .iter()
            .max()
            .is_none_or(|&f| least > f)
    }

    fn deps_ready(&self, job: &Job) -> bool {
        self.dep_block(job).is_none()
    }

    fn dep_block(&self, job: &Job) -> Option<Reason> {
        for on in &job.spec.depends_on {
            match self.state.job(*on).map(|j| &j.state) {
                Some(JobState::Succeeded { .. }) => {}
                Some(JobState::Failed { .. } | JobState::Cancelled { .. }) | None => {
                    return Some(Reason::DependencyFailed { on: *on })
                }
                Some(_) => return Some(Reason::Dependency { on: *on }),
            }
        }
        None
    }

    /// The GPU models a job may run on, as a range of model indices.
    fn candidate_models(&self, spec: &JobSpec) -> std::ops::Range<usize> {
        match &spec.gpu_model {
            Some(m) => match self.models.binary_search(m) {
                Ok(i) => i..i + 1,
                Err(_) => 0..0,
            },
            None => 0..self.models.len(),
        }
    }

    /// The team (this one or an ancestor) whose max the job would break, if any.
    fn over_max(&self, team: usize, model: usize, milli: u64) -> Option<Reason> {
        if self.policy != PolicyKind::Default {
            return None;
        }
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            if let Some(max) = self.teams.pools[a][pool].max {
                let used = self.alloc[a][pool];
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

    fn class_of(&self, team: usize, model: usize, milli: u64) -> Admission {
        if self.policy != PolicyKind::Default {
            return Admission::Guaranteed;
        }
        let pool = self.teams.pool_of_model[team][model];
        if self.gused[team][pool] + milli <= self.teams.pools[team][pool].guaranteed {
            Admission::Guaranteed
        } else {
            Admission::Borrowed
        }
    }

    /// Records GPUs promised to a job waiting for its victims: they count against its team
    /// now, and reservation probes see them occupied from `from_s`.
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        job: &Job,
        team: usize,
        model: usize,
        group: usize,
        placement: &[TaskPlacement],
        from_s: Secs,
        class: Admission,
    ) {
        let spec = &job.spec;
        self.account(team, model, spec.milli_total(), class);
        let (end_s, _) = self.end_of(spec, from_s);
        self.push_reservation(ResvRec {
            group,
            end_s,
            placement: placement.to_vec(),
            cpu: spec.cpu_milli,
            mem: spec.mem_mib,
        });
    }

    /// Records an occupation promised from now (reservation or claim), indexed by node.
    fn push_reservation(&mut self, rec: ResvRec) {
        let i = self.reservations.len();
        for task in &rec.placement {
            if let Some(n) = self.view.dense(task.node) {
                let list = &mut self.resv_by_node[n as usize];
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        self.reservations.push(rec);
    }

    fn push_release(&mut self, rel: Release) {
        self.rel_by_node[rel.node as usize].push(self.releases.len());
        self.releases.push(rel);
    }

    /// Counts a start or a claim against the team's allocation (and guarantee).
    fn account(&mut self, team: usize, model: usize, milli: u64, class: Admission) {
        self.add_alloc(team, model, milli);
        if class == Admission::Guaranteed {
            let pool = self.teams.pool_of_model[team][model];
            self.gused[team][pool] += milli;
        }
    }

    /// Fair-share usage: half current allocation, half decayed history, plus idle charge.
    fn usage(&self, team: usize) -> f64 {
        0.5 * self.alloc_total[team] as f64 + self.history[team]
    }

    /// Per team: half the decayed average allocation plus the decayed idle charge, brought
    /// forward from the state's clock to `now` (milli-GPUs).
    fn histories(state: &ClusterState, teams: &TeamIndex, now: Secs) -> Vec<f64> {
        let lambda = std::f64::consts::LN_2 / state.config.fair_share_half_life_s.max(1) as f64;
        let dt = now.saturating_sub(state.clock_s) as f64;
        let keep = (-lambda * dt).exp();
        teams
            .names
            .iter()
            .map(|name| {
                let Some(t) = state.teams.get(name) else {
                    return 0.0;
                };
                let hist = (t.usage_decayed * keep + t.alloc_milli as f64 * (1.0 - keep) / lambda)
                    * lambda;
                0.5 * hist + t.idle_decayed * keep * lambda
            })
            .collect()
    }

    fn guaranteed_total(&self, team: usize) -> u64 {
        self.teams.pools[team].iter().map(|p| p.guaranteed).sum()
    }

    fn rank(&self, job: &Job, team: usize) -> Key {
        let spec = &job.spec;
        let starving =
            u8::from(self.now.saturating_sub(spec.submit_s) < self.cfg.starvation_wait_s);
        let prio = -i64::from(spec.priority);
        if self.policy != PolicyKind::Default {
            return (0, prio, starving, 0, spec.submit_s, spec.id);
        }
        let guaranteed = self.guaranteed_somewhere(job, team);
        let usage = self.usage(team);
        let g = self.guaranteed_total(team) as f64;
        let (class, key) = if guaranteed {
            (0, usage / g.max(1.0))
        } else {
            (1, (usage - g).max(0.0) / f64::from(self.teams.weight[team]))
        };
        // Starving jobs are ordered by age alone, so their order (and with it the head's
        // reservation) no longer moves with fair-share standings.
        let key = if starving == 0 { 0 } else { key_f64(key) };
        (class, prio, starving, key, spec.submit_s, spec.id)
    }

    fn start(
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
        self.account(team, model, spec.milli_total(), class);
        self.job_ends.push((est_s, team, model, spec.milli_total()));
        for task in &p {
            if let Some(n) = self.view.dense(task.node) {
                self.push_release(Release {
                    end_s,
                    est_s,
                    node: n,
                    gpus: mask_of(&task.gpus),
                    milli: task.gpu_milli,
                    cpu: spec.cpu_milli,
                    mem: spec.mem_mib,
                });
            }
        }
        self.out.starts.push(Start {
            job: spec.id,
            placement: p,
            admission: class,
        });
    }

    /// Pending jobs that a pass considers, with the dependency-blocked ones explained.
    fn queue(&mut self, handled: &BTreeSet<JobId>) -> Vec<&'a Job> {
        let mut queue = Vec::new();
        let live = std::mem::take(&mut self.live);
        for &job in &live {
            if job.state != JobState::Pending || handled.contains(&job.spec.id) {
                continue;
            }
            if let Some(reason) = self.dep_block(job) {
                self.pend(job.spec.id, reason, None);
                continue;
            }
            queue.push(job);
        }
        self.live = live;
        queue
    }

    fn fifo_pass(&mut self, handled: &BTreeSet<JobId>) {
        let mut queue = self.queue(handled);
        queue.sort_by_key(|j| (j.spec.submit_s, j.spec.id));
        let mut head: Option<JobId> = None;
        for job in queue {
            if let Some(h) = head {
                if !self.explain {
                    break;
                }
                self.pend(job.spec.id, Reason::BlockedByHead { head: h }, None);
                continue;
            }
            let spec = &job.spec;
            let t = self.team_of(job);
            let (end_s, _) = self.end_of(spec, self.now);
            let mut started = false;
            for m in self.candidate_models(spec) {
                let ask = Ask {
                    spec,
                    group: m,
                    end_s,
                    ignore_guards: true,
                };
                if let Some(p) = place::find(&self.view, &ask) {
                    match t {
                        Some(t) => self.start(job, t, m, p, Admission::Guaranteed),
                        None => continue,
                    }
                    started = true;
                    break;
                }
            }
            if !started {
                head = Some(spec.id);
                let m = self.candidate_models(spec).next();
                self.no_placement(job, m.unwrap_or(usize::MAX));
            }
        }
    }

    fn no_placement(&mut self, job: &Job, group: usize) {
        if !self.explain {
            return;
        }
        let spec = &job.spec;
        let (free, largest) = if group < self.view.buckets.len() {
            (
                self.view.group_whole_free[group],
                self.view.largest_free_block(group),
            )
        } else {
            (0, 0)
        };
        let model = spec.gpu_model.clone().or_else(|| {
            let m = if self.policy == PolicyKind::Static && self.n_leaves > 0 {
                group / self.n_leaves
            } else {
                group
            };
            self.models.get(m).cloned()
        });
        if group < self.view.buckets.len() {
            self.eta_group.insert(spec.id, group);
        }
        self.pend(
            spec.id,
            Reason::NoPlacement {
                tasks: spec.tasks,
                gpu: spec.gpu,
                model,
                free_gpus: free,
                largest_free_block: largest,
            },
            None,
        );
    }

    fn ordered_pass(&mut self, handled: &BTreeSet<JobId>) {
        let queue = self.queue(handled);
        let mut per_team: Vec<Vec<&'a Job>> = vec![Vec::new(); self.teams.names.len()];
        for job in queue {
            match self.team_of(job) {
                Some(t) => per_team[t].push(job),
                None => {
                    let team = job.spec.team.clone();
                    self.pend(job.spec.id, Reason::NoPartition { team }, None);
                }
            }
        }
        let mut lists: Vec<(usize, Ordered<'a>)> = per_team
            .into_iter()
            .enumerate()
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(t, jobs)| (t, Ordered::new(jobs)))
            .collect();
        for (_, list) in &mut lists {
            list.sort();
        }
        // Phase 1, guaranteed work: each team offers its first job that fits its guarantee;
        // the jobs it skips (too big for what is left of the guarantee, which only shrinks
        // during a plan) wait for phase 2 in their order. Phase 2, borrowing: every team
        // offers its skipped jobs in order.
        let mut skipped: Vec<Vec<&'a Job>> = vec![Vec::new(); lists.len()];
        let mut cursor = vec![0usize; lists.len()];
        let mut heap: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
        for i in 0..lists.len() {
            if let Some(key) = self.next_guaranteed(&mut lists, &mut cursor, &mut skipped, i) {
                heap.push(Reverse((key, i)));
            }
        }
        // In `decide`, the pass ends once nothing left can start or reclaim: no job left (in
        // the lists or set aside for phase 2) fits the free capacity of any group, and no
        // reclaim can happen.
        let lists_least: Vec<Vec<u64>> = if self.explain {
            Vec::new()
        } else {
            lists.iter().map(|(_, l)| l.least_suffix()).collect()
        };
        let mut skipped_least = u64::MAX;
        let mut pops = 0usize;
        let mut last_fail: Vec<Option<Fate<'a>>> = vec![None; lists.len()];
        let mut folded = vec![0usize; lists.len()];
        // Each pop consumes one job; every job is pushed at most once per phase.
        while let Some(Reverse((_, i))) = heap.pop() {
            // The check only matters once it can succeed; every 8th pop is enough (it stays
            // true once true: free capacity only shrinks, what is left only grows).
            pops += 1;
            if !self.explain && pops % 8 == 1 {
                for (j, list) in skipped.iter().enumerate() {
                    for job in &list[folded[j]..] {
                        skipped_least = skipped_least.min(job.spec.milli_total());
                    }
                    folded[j] = list.len();
                }
                let least = (0..lists.len())
                    .map(|j| lists_least[j][cursor[j]])
                    .min()
                    .unwrap_or(u64::MAX)
                    .min(skipped_least);
                if self.no_reclaim() && self.cannot_fit(least) {
                    return;
                }
            }
            let t = lists[i].0;
            let job = lists[i].1.get(cursor[i]).expect("a job at the cursor");
            cursor[i] += 1;
            // A job like the team's last one that changed nothing, with nothing changed since
            // (by any team), fares as that one did.
            let fate = last_fail[i]
                .filter(|&(f, at, _)| at == self.decisions() && self.same_fate(f, job))
                .map(|(_, _, decided)| decided);
            let decided = match fate {
                Some(decided) => decided,
                None => {
                    let before = self.decisions();
                    let decided = self.consider(job, t, Phase::Guaranteed);
                    last_fail[i] = (!self.explain && self.decisions() == before)
                        .then_some((job, before, decided));
                    decided
                }
            };
            if !decided {
                // It may still borrow elsewhere: phase 2 decides.
                skipped[i].push(job);
            }
            // As in phase 2: the team's next jobs that would be popped right now anyway and
            // share the fate of its last job that changed nothing are passed over here.
            while let Some(key) = self.next_guaranteed(&mut lists, &mut cursor, &mut skipped, i) {
                let next = lists[i].1.get(cursor[i]).expect("a job at the cursor");
                let fate = last_fail[i]
                    .filter(|&(f, at, _)| at == self.decisions() && self.same_fate(f, next))
                    .map(|(_, _, decided)| decided);
                let first = heap.peek().is_none_or(|Reverse(top)| (key, i) < *top);
                match fate {
                    Some(decided) if first => {
                        cursor[i] += 1;
                        if !decided {
                            skipped[i].push(next);
                        }
                    }
                    _ => {
                        heap.push(Reverse((key, i)));
                        break;
                    }
                }
            }
        }
        let mut cursor = vec![0usize; lists.len()];
        let mut last_fail: Vec<Option<Fate<'a>>> = vec![None; lists.len()];
        for (i, list) in skipped.iter().enumerate() {
            if let Some(job) = list.first() {
                heap.push(Reverse((self.rank(job, lists[i].0), i)));
            }
        }
        // Borrowing stops nothing and reclaims nothing: once no job left can fit the free
        // capacity of any group, nothing left can start (reservations only tighten).
        let least_left: Vec<Vec<u64>> = if self.explain {
            Vec::new()
        } else {
            skipped
                .iter()
                .map(|list| {
                    let mut least = vec![u64::MAX; list.len() + 1];
                    for k in (0..list.len()).rev() {
                        least[k] = least[k + 1].min(list[k].spec.milli_total());
                    }
                    least
                })
                .collect()
        };
        while let Some(Reverse((_, i))) = heap.pop() {
            pops += 1;
            if !self.explain && pops % 8 == 1 {
                let least = (0..skipped.len())
                    .map(|j| least_left[j][cursor[j]])
                    .min()
                    .unwrap_or(u64::MAX);
                if self.cannot_fit(least) {
                    return;
                }
            }
            let (t, job) = (lists[i].0, skipped[i][cursor[i]]);
            cursor[i] += 1;
            let same = last_fail[i]
                .is_some_and(|(f, at, _)| at == self.decisions() && self.same_fate(f, job));
            if !same {
                let before = self.decisions();
                self.consider(job, t, Phase::Borrowing);
                last_fail[i] =
                    (!self.explain && self.decisions() == before).then_some((job, before, true));
            }
            // The team's next jobs that would be popped right now anyway (before any other
            // team's) and share the fate of its last job that changed nothing are passed over
            // here, without a trip through the heap.
            let mut next_key = None;
            while let Some(&next) = skipped[i].get(cursor[i]) {
                let key = self.rank(next, t);
                let fails = last_fail[i]
                    .is_some_and(|(f, at, _)| at == self.decisions() && self.same_fate(f, next));
                let first = heap.peek().is_none_or(|Reverse(top)| (key, i) < *top);
                if !(fails && first) {
                    next_key = Some(key);
                    break;
                }
                cursor[i] += 1;
            }
            if let Some(key) = next_key {
                heap.push(Reverse((key, i)));
            }
        }
    }

    /// How many decisions the plan holds so far.
    fn decisions(&self) -> (usize, usize, usize, usize) {
        (
            self.out.starts.len(),
            self.out.stops.len(),
            self.reservations.len(),
            self.out.reclaims.len(),
        )
    }

    /// Whether `next`, of the same team and right after `failed` in its queue, is certain to
    /// be decided as `failed` was when nothing changed in between: the same demands, no node
    /// selector, and an end no earlier (capacity only shrinks and guards only tighten during
    /// a plan, and every memo is keyed by these).
    fn same_fate(&self, failed: &Job, next: &Job) -> bool {
        let (a, b) = (&failed.spec, &next.spec);
        a.tasks == b.tasks
            && a.gpu == b.gpu
            && a.cpu_milli == b.cpu_milli
            && a.mem_mib == b.mem_mib
            && a.gpu_model == b.gpu_model
            && a.node_selector.is_empty()
            && b.node_selector.is_empty()
            && self.end_of(b, self.now).0 >= self.end_of(a, self.now).0
    }

    /// Moves team `i`'s cursor to its next job inside the guarantee, setting aside the ones
    /// it passes; returns that job's rank.
    fn next_guaranteed(
        &self,
        lists: &mut [(usize, Ordered<'a>)],
        cursor: &mut [usize],
        skipped: &mut [Vec<&'a Job>],
        i: usize,
    ) -> Option<Key> {
        let (t, list) = (lists[i].0, &lists[i].1);
        while let Some(job) = list.get(cursor[i]) {
            if self.guaranteed_somewhere(job, t) {
                return Some(self.rank(job, t));
            }
            skipped[i].push(job);
            cursor[i] += 1;
        }
        None
    }

    /// Whether the job fits its team's guarantee for some model it can run on (class 0 of
    /// [`Self::rank`], without computing the rest of the key).
    fn guaranteed_somewhere(&self, job: &Job, team: usize) -> bool {
        if self.policy != PolicyKind::Default {
            return true;
        }
        let milli = job.spec.milli_total();
        self.candidate_models(&job.spec)
            .any(|m| self.class_of(team, m, milli) == Admission::Guaranteed)
    }

    /// Starts the job, or reclaims for it, or reserves for it, or explains why not. In the
    /// guaranteed phase it only starts where it is guaranteed, and returns `false` (deciding
    /// nothing) when it could still borrow elsewhere.
    fn consider(&mut self, job: &'a Job, t: usize, phase: Phase) -> bool {
        let spec = &job.spec;
        let milli = spec.milli_total();
        let (end_s, _) = self.end_of(spec, self.now);
        let mut blocked: Option<Reason> = None;
        let mut admissible: Vec<(usize, usize, Admission)> = Vec::new();
        let mut behind: Option<(JobId, Secs)> = None;
        for m in self.candidate_models(spec) {
            if let Some(r) = self.over_max(t, m, milli) {
                blocked = Some(r);
                continue;
            }
            let Some(g) = self.group(t, m) else {
                blocked = Some(Reason::NoPartition {
                    team: spec.team.clone(),
                });
                continue;
            };
            if self.view.group_nodes[g].is_empty() && self.policy == PolicyKind::Static {
                blocked = Some(Reason::NoPartition {
                    team: spec.team.clone(),
                });
                continue;
            }
            let class = self.class_of(t, m, milli);
            admissible.push((m, g, class));
        }
        // Models where the job is guaranteed first.
        admissible.sort_by_key(|a| a.2);
        // A single task that several models of its best class can take goes where it grows
        // the fragmentation least.
        if spec.tasks == 1 && admissible.len() > 1 {
            let best_class = admissible[0].2;
            if !(phase == Phase::Guaranteed && best_class == Admission::Borrowed) {
                let mut best: Option<(f64, usize, usize, Vec<TaskPlacement>)> = None;
                for &(m, g, class) in &admissible {
                    if class != best_class {
                        break;
                    }
                    let ask = Ask {
                        spec,
                        group: g,
                        end_s,
                        ignore_guards: false,
                    };
                    if let Some((p, d)) = self.find_memo_scored(&ask, shape_of(spec, g)) {
                        if best.as_ref().is_none_or(|b| d < b.0 - 1e-9) {
                            best = Some((d, m, g, p));
                        }
                    }
                }
                if let Some((_, m, _, p)) = best {
                    self.start(job, t, m, p, best_class);
                    return true;
                }
            }
        }
        for &(m, g, class) in &admissible {
            if phase == Phase::Guaranteed && class == Admission::Borrowed {
                continue;
            }
            let ask = Ask {
                spec,
                group: g,
                end_s,
                ignore_guards: false,
            };
            let shape = shape_of(spec, g);
            if let Some(p) = self.find_memo(&ask, shape) {
                self.start(job, t, m, p, class);
                return true;
            }
            if behind.is_none() && !self.reservations.is_empty() {
                let free_ask = Ask {
                    ignore_guards: true,
                    ..ask
                };
                if self.find_memo(&free_ask, shape).is_some() {
                    behind = self
                        .out
                        .reservations
                        .iter()
                        .map(|r| (r.start_s, r.job))
                        .min()
                        .map(|(s, j)| (j, s));
                }
            }
        }
        if admissible.is_empty() {
            let reason = blocked.unwrap_or(Reason::NoPartition {
                team: spec.team.clone(),
            });
            if let Reason::OverMax {
                team,
                model,
                used_milli,
                ask_milli,
                max_milli,
            } = &reason
            {
                let a = self.teams.by_name[team];
                let m = self.models.binary_search(model).unwrap_or(0);
                let over = (used_milli + ask_milli).saturating_sub(*max_milli);
                self.over_max_waits.push((spec.id, a, m, over));
            }
            self.pend(spec.id, reason, None);
            return true;
        }
        if self.policy == PolicyKind::Default && phase == Phase::Guaranteed {
            for &(m, g, class) in &admissible {
                if class == Admission::Guaranteed && self.reclaim(job, m, g) {
                    return true;
                }
            }
            if admissible.iter().any(|a| a.2 == Admission::Borrowed) {
                return false;
            }
        }
        if let Some((reserved, start_s)) = behind {
            self.eta_group.insert(spec.id, admissible[0].1);
            self.pend(
                spec.id,
                Reason::BehindReservation { reserved, start_s },
                None,
            );
            return true;
        }
        if self.reserve(job, &admissible) {
            return true;
        }
        self.no_placement(job, admissible[0].1);
        true
    }

    /// Frees the job's GPUs by preempting borrowed jobs that lose the least work.
    fn reclaim(&mut self, job: &Job, m: usize, g: usize) -> bool {
        if self.reclaims >= self.cfg.max_reclaims || self.failed_reclaims >= MAX_FAILED_ATTEMPTS {
            return false;
        }
        let spec = &job.spec;
        // Cheap bound first: free GPUs plus every GPU a victim touches (a victim's share of a
        // GPU may free the whole GPU).
        if self.view.group_free_milli[g] + self.victim_milli_left[m] < spec.milli_total() {
            return false;
        }
        let Some(team) = self.team_of(job) else {
            return false;
        };
        let (end_s, _) = self.end_of(spec, self.now);
        let memo = shape_of(spec, g).map(|s| (team, s));
        if let Some(k) = &memo {
            if self.no_reclaim.get(k).is_some_and(|&end| end_s >= end) {
                return false;
            }
        }
        // A team's guarantee protects it from other teams; it does not preempt itself.
        let victims: Vec<usize> = self.victims_by_model[m]
            .iter()
            .copied()
            .filter(|&i| !self.runs[i].taken && self.runs[i].team != Some(team))
            .collect();
        if victims.is_empty() {
            return false;
        }
        let ask = Ask {
            spec,
            group: g,
            end_s,
            ignore_guards: false,
        };
        let chosen = if spec.tasks == 1 {
            self.victims_for_task(spec, g, &victims)
        } else {
            self.victims_for_gang(&ask, &victims)
        };
        let placement = chosen.as_ref().and_then(|chosen| {
            let future = self.view_without(chosen);
            place::find(&future, &ask)
        });
        let (Some(chosen), Some(placement)) = (chosen, placement) else {
            self.failed_reclaims += 1;
            if let Some(k) = memo {
                let end = self.no_reclaim.entry(k).or_insert(end_s);
                *end = (*end).min(end_s);
            }
            return false;
        };
        // Keep the free part of the future placement for this job, in this plan.
        for task in &placement {
            Self::occupy(&mut self.view, task, spec.cpu_milli, spec.mem_mib);
        }
        let mut ready_by_s = self.now;
        let mut ids = Vec::new();
        for &i in &chosen {
            let r = &mut self.runs[i];
            r.taken = true;
            let freed: u64 = r
                .placement
                .iter()
                .map(|t| t.gpus.len() as u64 * u64::from(MILLI_PER_GPU))
                .sum();
            self.victim_milli_left[m] = self.victim_milli_left[m].saturating_sub(freed);
            ready_by_s = ready_by_s.max(self.now.saturating_add(r.job.spec.grace_s));
            ids.push(r.job.spec.id);
            self.out.stops.push(StopOrder {
                job: r.job.spec.id,
                cause: StopCause::Reclaim,
                beneficiary: Some(spec.id),
                lost_gpu_s: r.cost,
            });
        }
        ids.sort();
        self.reclaims += 1;
        self.claim(
            job,
            team,
            m,
            g,
            &placement,
            ready_by_s,
            Admission::Guaranteed,
        );
        self.out.reclaims.push(Reservation {
            job: spec.id,
            start_s: ready_by_s,
            placement,
        });
        self.pend(
            spec.id,
            Reason::WaitingForReclaim {
                victims: ids,
                ready_by_s,
            },
            Some(ready_by_s),
        );
        true
    }

    /// A copy of the view with the given running jobs' resources given back.
    fn view_without(&self, runs: &[usize]) -> View<'a> {
        let mut v = self.view.clone();
        for &i in runs {
            let r = &self.runs[i];
            v.give(r.placement, r.job.spec.cpu_milli, r.job.spec.mem_mib);
        }
        v
    }

    /// For one task: on each node, the cheapest victims there that make room; the cheapest
    /// node wins.
    fn victims_for_task(&self, spec: &JobSpec, g: usize, victims: &[usize]) -> Option<Vec<usize>> {
        let mut on_node: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &i in victims {
            for task in self.runs[i].placement {
                if let Some(n) = self.view.dense(task.node) {
                    let list = on_node.entry(n).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
        let mut best: Option<(u64, u32, Vec<usize>)> = None;
        for (n, list) in on_node {
            if self.view.group[n as usize] != Some(g)
                || !spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| self.view.nodes[n as usize].spec.labels.get(k) == Some(v))
            {
                continue;
            }
            let mut used = self.view.used_of(n).to_vec();
            let mut cpu = self.view.cpu_free[n as usize];
            let mut mem = self.view.mem_free[n as usize];
            let mut cost = 0u64;
            let mut chosen = Vec::new();
            for i in list {
                let r = &self.runs[i];
                for task in r
                    .placement
                    .iter()
                    .filter(|t| t.node == self.view.ids[n as usize])
                {
                    for &gi in &task.gpus {
                        used[gi as usize] = used[gi as usize].saturating_sub(task.gpu_milli);
                    }
                    cpu += r.job.spec.cpu_milli;
                    mem += r.job.spec.mem_mib;
                }
                cost += r.cost;
                chosen.push(i);
                let gpu_ok = match spec.gpu {
                    GpuAsk::Whole(k) => used.iter().filter(|&&u| u == 0).count() >= k as usize,
                    GpuAsk::Milli(m) => used.iter().any(|&u| u + m <= MILLI_PER_GPU),
                };
                if gpu_ok && cpu >= spec.cpu_milli && mem >= spec.mem_mib {
                    if best.as_ref().is_none_or(|b| (cost, n) < (b.0, b.1)) {
                        best = Some((cost, n, chosen.clone()));
                    }
                    break;
                }
            }
        }
        best.map(|b| b.2)
    }

    /// For a gang: free every candidate, place, keep the victims under the placement, then
    /// spare the most expensive ones that turn out not to be needed.
    fn victims_for_gang(&self, ask: &Ask, victims: &[usize]) -> Option<Vec<usize>> {
        let all = self.view_without(victims);
        let p = place::find(&all, ask)?;
        let used: BTreeSet<(crate::model::NodeId, u32)> = p
            .iter()
            .flat_map(|t| t.gpus.iter().map(move |&g| (t.node, g)))
            .collect();
        let mut chosen: Vec<usize> = victims
            .iter()
            .copied()
            .filter(|&i| {
                self.runs[i]
                    .placement
                    .iter()
                    .any(|t| t.gpus.iter().any(|&g| used.contains(&(t.node, g))))
            })
            .collect();
        chosen.sort_by_key(|&i| Reverse((self.runs[i].cost, self.runs[i].job.spec.id)));
        let mut k = 0;
        let mut steps = 0;
        while k < chosen.len() && steps < MAX_PRUNE_STEPS {
            steps += 1;
            let mut trial = chosen.clone();
            trial.remove(k);
            if place::find(&self.view_without(&trial), ask).is_some() {
                chosen = trial;
            } else {
                k += 1;
            }
        }
        Some(chosen)
    }

    /// Gives a blocked job the earliest start that running jobs' time limits promise, over
    /// its admissible GPU models, and guards the GPUs against backfill that would delay it.
    fn reserve(&mut self, job: &Job, admissible: &[(usize, usize, Admission)]) -> bool {
        let spec = &job.spec;
        let mut best: Option<(Secs, usize, Vec<TaskPlacement>, Vec<Slack>)> = None;
        for &(_, g, _) in admissible {
            let used = self.resv_by_group.get(&g).copied().unwrap_or(0);
            let shape = shape_of(spec, g);
            if used >= self.cfg.max_reservations
                || self.failed_reservations >= MAX_FAILED_ATTEMPTS
                || shape.is_some_and(|s| self.no_reserve.get(&s) == Some(&self.releases.len()))
                || self.unreservable.get(&g)
                    == Some(&(self.releases.len() + self.reservations.len()))
            {
                continue;
            }
            match self.earliest(spec, g) {
                Some((t, p, slack)) => {
                    if best.as_ref().is_none_or(|b| t < b.0) {
                        best = Some((t, g, p, slack));
                    }
                }
                None => {
                    self.failed_reservations += 1;
                    // More reservations only push later: until something else starts, this
                    // shape will not get one.
                    if let Some(s) = shape {
                        self.no_reserve.insert(s, self.releases.len());
                    }
                }
            }
        }
        let Some((t, g, p, slack)) = best else {
            return false;
        };
        // Guard the reserved GPUs themselves, and leave work that outlives the reservation
        // only the CPU and memory that will still be free when it starts.
        for task in &p {
            if let Some(n) = self.view.dense(task.node) {
                let mask = task.gpus.iter().fold(0u64, |m, &g| m | (1 << g));
                let guard = &mut self.view.guard[n as usize];
                guard.earliest_s = guard.earliest_s.min(t);
                guard.gpus |= mask;
            }
        }
        for (n, cpu, mem) in slack {
            let guard = &mut self.view.guard[n as usize];
            guard.cpu_slack = guard.cpu_slack.min(cpu);
            guard.mem_slack = guard.mem_slack.min(mem);
        }
        let (end_s, _) = self.end_of(spec, t);
        self.push_reservation(ResvRec {
            group: g,
            end_s,
            placement: p.clone(),
            cpu: spec.cpu_milli,
            mem: spec.mem_mib,
        });
        *self.resv_by_group.entry(g).or_default() += 1;
        self.out.reservations.push(Reservation {
            job: spec.id,
            start_s: t,
            placement: p,
        });
        self.eta_group.insert(spec.id, g);
        self.pend(spec.id, Reason::Reserved { start_s: t }, Some(t));
        true
    }

    /// The earliest time the job fits group `g`, from running jobs' time limits: when, where,
    /// and the CPU and memory each node it uses will have left then.
    fn earliest(
        &mut self,
        spec: &JobSpec,
        g: usize,
    ) -> Option<(Secs, Vec<TaskPlacement>, Vec<Slack>)> {
        if spec.tasks == 1 {
            return self
                .earliest_single(spec, g)
                .map(|(t, task, slack)| (t, vec![task], vec![slack]));
        }
        self.earliest_gang(spec, g)
    }

    /// One task: node by node, the first time (among its own releases and the ends of what
    /// was promised there) at which the task fits; the earliest node wins, then the one with
    /// the fewest whole GPUs free then, then the lowest index.
    fn earliest_single(&self, spec: &JobSpec, g: usize) -> Option<(Secs, TaskPlacement, Slack)> {
        let mut best: Option<(Secs, u32, u32, Vec<u32>, u64, u64)> = None;
        for &n in &self.view.group_nodes[g] {
            let node = self.view.nodes[n as usize];
            if !spec
                .node_selector
                .iter()
                .all(|(k, v)| node.spec.labels.get(k) == Some(v))
            {
                continue;
            }
            let ni = n as usize;
            let mut times: Vec<Secs> = vec![self.now];
            times.extend(
                self.rel_by_node[ni]
                    .iter()
                    .map(|&i| self.releases[i].end_s)
                    .filter(|&e| e != Secs::MAX)
                    .map(|e| e.max(self.now)),
            );
            times.extend(
                self.resv_by_node[ni]
                    .iter()
                    .map(|&i| &self.reservations[i])
                    .filter(|r| r.group == g && r.end_s != Secs::MAX)
                    .map(|r| r.end_s),
            );
            times.sort_unstable();
            times.dedup();
            let mut node = ([0u32; 64], 0, 0);
            for t in times {
                if best.as_ref().is_some_and(|b| t > b.0) {
                    break;
                }
                self.node_at(n, g, t, &mut node);
                let (buf, cpu, mem) = (&node.0, node.1, node.2);
                let used = &buf[..self.view.gpus[n as usize] as usize];
                let gpu_ok = match spec.gpu {
                    GpuAsk::Whole(k) => used.iter().filter(|&&u| u == 0).count() >= k as usize,
                    GpuAsk::Milli(m) => used.iter().any(|&u| u + m <= MILLI_PER_GPU),
                };
                if gpu_ok && cpu >= spec.cpu_milli && mem >= spec.mem_mib {
                    let whole = used.iter().filter(|&&u| u == 0).count() as u32;
                    let better = best
                        .as_ref()
                        .is_none_or(|b| (t, whole, n) < (b.0, b.1, b.2));
                    if better {
                        best = Some((t, whole, n, used.to_vec(), cpu, mem));
                    }
                    break;
                }
            }
        }
        let (t, _, n, used, cpu, mem) = best?;
        let task = place::task_on(&used, &self.view, n, spec.gpu);
        Some((t, task, (n, cpu - spec.cpu_milli, mem - spec.mem_mib)))
    }

    /// A gang: probe the whole group at release times.
    fn earliest_gang(
        &mut self,
        spec: &JobSpec,
        g: usize,
    ) -> Option<(Secs, Vec<TaskPlacement>, Vec<Slack>)> {
        let mut rel: Vec<&Release> = self
            .releases
            .iter()
            .filter(|r| r.end_s != Secs::MAX && self.view.group[r.node as usize] == Some(g))
            .collect();
        rel.sort_by_key(|r| r.end_s);
        let mut times: Vec<Secs> = rel.iter().map(|r| r.end_s.max(self.now)).collect();
        times.extend(
            self.reservations
                .iter()
                .filter(|r| r.group == g && r.end_s != Secs::MAX)
                .map(|r| r.end_s),
        );
        times.sort_unstable();
        times.dedup();
        if times.is_empty() {
            // Nothing here ever ends by itself: no promise is possible, for any job.
            let seen = self.releases.len() + self.reservations.len();
            self.unreservable.insert(g, seen);
            return None;
        }
        // Necessary condition, cheap: enough milli-GPUs free by then in aggregate.
        let free_now: u64 = self.view.group_nodes[g]
            .iter()
            .map(|&n| {
                self.view
                    .used_of(n)
                    .iter()
                    .map(|&u| u64::from(MILLI_PER_GPU - u))
                    .sum::<u64>()
            })
            .sum();
        let need = spec.milli_total();
        // Promised milli-GPUs of the group by end time; those ending by `t` are free again.
        let mut promised: Vec<(Secs, u64)> = self
            .reservations
            .iter()
            .filter(|r| r.group == g)
            .map(|r| (r.end_s, crate::state::placement_milli(&r.placement)))
            .collect();
        promised.sort_unstable();
        let mut reserved: u64 = promised.iter().map(|p| p.1).sum();
        let (mut freed, mut ri, mut pi) = (0u64, 0, 0);
        let mut first = None;
        for (i, &t) in times.iter().enumerate() {
            while ri < rel.len() && rel[ri].end_s <= t {
                freed += u64::from(rel[ri].milli) * u64::from(rel[ri].gpus.count_ones());
                ri += 1;
            }
            while pi < promised.len() && promised[pi].0 <= t {
                reserved -= promised[pi].1;
                pi += 1;
            }
            if (free_now + freed).saturating_sub(reserved) >= need {
                first = Some(i);
                break;
            }
        }
        let first = first?;
        // Feasibility only grows with time: gallop, then bisect, counting per-node capacity
        // (cheap); build the view and the placement once, at the time found.
        let fits = |t: Secs| self.gang_fits_at(spec, g, t);
        if fits(times[first]) {
            return self
                .gang_at(spec, g, times[first])
                .map(|(p, slack)| (times[first], p, slack));
        }
        let (mut lo, mut step) = (first, 1);
        let last = times.len() - 1;
        let mut hi;
        loop {
            if lo == last {
                return None;
            }
            hi = (lo + step).min(last);
            if fits(times[hi]) {
                break;
            }
            lo = hi;
            step *= 2;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(times[mid]) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.gang_at(spec, g, times[hi])
            .map(|(p, slack)| (times[hi], p, slack))
    }

    /// Where the gang goes at time `t` (packed as `place::find` packs), and the CPU and
    /// memory its nodes have left then.
    fn gang_at(
        &self,
        spec: &JobSpec,
        g: usize,
        t: Secs,
    ) -> Option<(Vec<TaskPlacement>, Vec<Slack>)> {
        let mut items = Vec::new();
        let mut at: BTreeMap<u32, ([u32; 64], u64, u64)> = BTreeMap::new();
        for &n in &self.view.group_nodes[g] {
            let mut node = ([0u32; 64], 0, 0);
            let Some(cap) = self.cap_at(spec, g, n, t, &mut node) else {
                continue;
            };
            let (buf, cpu, mem) = node;
            if cap > 0 {
                items.push((n, cap));
                at.insert(n, (buf, cpu, mem));
            }
        }
        let need = u64::from(spec.tasks);
        if items.iter().map(|i| i.1).sum::<u64>() < need {
            return None;
        }
        let mut placement = Vec::with_capacity(spec.tasks as usize);
        let mut slack = Vec::new();
        for (n, count) in place::pick_nodes(&self.view, items, need) {
            let (buf, cpu, mem) = at[&n];
            let mut used = buf[..self.view.gpus[n as usize] as usize].to_vec();
            for _ in 0..count {
                let task = place::task_on(&used, &self.view, n, spec.gpu);
                for &gi in &task.gpus {
                    used[gi as usize] += task.gpu_milli;
                }
                placement.push(task);
            }
            slack.push((
                n,
                cpu.saturating_sub(count * spec.cpu_milli),
                mem.saturating_sub(count * spec.mem_mib),
            ));
        }
        Some((placement, slack))
    }

    /// Node `n` at time `t`: its GPU usage, free CPU and free memory once what runs there
    /// has ended by its time limit, with what reservations and claims of group `g` hold then.
    /// The usage comes in a fixed buffer (nodes have at most 64 GPUs): only the node's first
    /// `gpus` entries count.
    fn node_at(&self, n: u32, g: usize, t: Secs, out: &mut ([u32; 64], u64, u64)) {
        let ni = n as usize;
        let id = self.view.ids[ni];
        let (used, cpu, mem) = out;
        let now = self.view.used_of(n);
        used[..now.len()].copy_from_slice(now);
        *cpu = self.view.cpu_free[ni];
        *mem = self.view.mem_free[ni];
        for &i in &self.rel_by_node[ni] {
            let r = &self.releases[i];
            if r.end_s != Secs::MAX && r.end_s <= t {
                for gi in bits(r.gpus) {
                    used[gi as usize] = used[gi as usize].saturating_sub(r.milli);
                }
                *cpu += r.cpu;
                *mem += r.mem;
            }
        }
        for &i in &self.resv_by_node[ni] {
            let resv = &self.reservations[i];
            if resv.group != g || resv.end_s <= t {
                continue;
            }
            for task in resv.placement.iter().filter(|task| task.node == id) {
                for &gi in &task.gpus {
                    used[gi as usize] = (used[gi as usize] + task.gpu_milli).min(MILLI_PER_GPU);
                }
                *cpu = cpu.saturating_sub(resv.cpu);
                *mem = mem.saturating_sub(resv.mem);
            }
        }
    }

    /// How many tasks of the job node `n` can hold at time `t`; `None` when its labels
    /// rule it out. The node's state then is written to `out`.
    #[inline(always)]
    fn cap_at(
        &self,
        spec: &JobSpec,
        g: usize,
        n: u32,
        t: Secs,
        out: &mut ([u32; 64], u64, u64),
    ) -> Option<u64> {
        let labels = &self.view.nodes[n as usize].spec.labels;
        if !spec
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return None;
        }
        self.node_at(n, g, t, out);
        let (buf, cpu, mem) = out;
        let used = &buf[..self.view.gpus[n as usize] as usize];
        let by_gpu = match spec.gpu {
            GpuAsk::Whole(k) => used.iter().filter(|&&u| u == 0).count() as u64 / u64::from(k),
            GpuAsk::Milli(m) => used
                .iter()
                .map(|&u| u64::from((MILLI_PER_GPU - u) / m))
                .sum(),
        };
        let by_cpu = cpu.checked_div(spec.cpu_milli).unwrap_or(u64::MAX);
        let by_mem = mem.checked_div(spec.mem_mib).unwrap_or(u64::MAX);
        Some(by_gpu.min(by_cpu).min(by_mem))
    }

    /// Whether the gang fits group `g` at time `t` (ignoring guards, as reservations do).
    fn gang_fits_at(&self, spec: &JobSpec, g: usize, t: Secs) -> bool {
        let need = u64::from(spec.tasks);
        let mut have = 0u64;
        let mut node = ([0u32; 64], 0, 0);
        for &n in &self.view.group_nodes[g] {
            let Some(cap) = self.cap_at(spec, g, n, t, &mut node) else {
                continue;
            };
            have += cap;
            if have >= need {
                return true;
            }
        }
        false
    }

    /// Estimated starts of capacity-blocked jobs: walk them in plan order against the
    /// releases expected from runtime estimates (or time limits), in aggregate per group.
    fn estimate(&mut self) {
        self.estimate_over_max();
        if self.eta_group.is_empty() {
            return;
        }
        let groups = self.view.buckets.len();
        let mut rel: Vec<Vec<(Secs, u64)>> = vec![Vec::new(); groups];
        for r in &self.releases {
            if r.est_s == Secs::MAX {
                continue;
            }
            if let Some(g) = self.view.group[r.node as usize] {
                rel[g].push((
                    r.est_s.max(self.now),
                    u64::from(r.milli) * u64::from(r.gpus.count_ones()),
                ));
            }
        }
        let mut cum: Vec<Vec<(Secs, u64)>> = Vec::with_capacity(groups);
        for mut list in rel {
            list.sort_unstable();
            let mut total = 0;
            cum.push(
                list.into_iter()
                    .map(|(t, m)| {
                        total += m;
                        (t, total)
                    })
                    .collect(),
            );
        }
        let free: Vec<u64> = (0..groups)
            .map(|g| {
                self.view.group_nodes[g]
                    .iter()
                    .map(|&n| {
                        self.view
                            .used_of(n)
                            .iter()
                            .map(|&u| u64::from(MILLI_PER_GPU - u))
                            .sum::<u64>()
                    })
                    .sum()
            })
            .collect();
        let mut demand = vec![0u64; groups];
        for p in &mut self.out.pending {
            let Some(&g) = self.eta_group.get(&p.job) else {
                continue;
            };
            let milli = self.state.jobs[&p.job].spec.milli_total();
            demand[g] += milli;
            if p.eta_s.is_some() {
                continue;
            }
            let short = demand[g].saturating_sub(free[g]);
            let i = cum[g].partition_point(|&(_, c)| c < short);
            p.eta_s = cum[g].get(i).map(|&(t, _)| t.max(self.now));
        }
    }

    /// Jobs waiting on a `max` start once the capped team's own jobs have released enough;
    /// jobs of the same team and pool queue behind each other in plan order.
    fn estimate_over_max(&mut self) {
        if self.over_max_waits.is_empty() {
            return;
        }
        let mut curves: BTreeMap<(usize, usize), Vec<(Secs, u64)>> = BTreeMap::new();
        let mut queued: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut etas: BTreeMap<JobId, Secs> = BTreeMap::new();
        for &(job, a, m, over) in &self.over_max_waits {
            let pool = self.teams.pool_of_model[a][m];
            let curve = curves.entry((a, pool)).or_insert_with(|| {
                let mut ends: Vec<(Secs, u64)> = self
                    .job_ends
                    .iter()
                    .filter(|&&(end, t, jm, _)| {
                        end != Secs::MAX
                            && self.teams.lineage[t].contains(&a)
                            && self.teams.pool_of_model[a][jm] == pool
                    })
                    .map(|&(end, _, _, milli)| (end.max(self.now), milli))
                    .collect();
                ends.sort_unstable();
                let mut total = 0;
                for e in &mut ends {
                    total += e.1;
                    e.1 = total;
                }
                ends
            });
            let ahead = queued.entry((a, pool)).or_default();
            let need = over + *ahead;
            *ahead += self.state.jobs[&job].spec.milli_total();
            let i = curve.partition_point(|&(_, c)| c < need);
            if let Some(&(t, _)) = curve.get(i) {
                etas.insert(job, t);
            }
        }
        for p in &mut self.out.pending {
            if let Some(&t) = etas.get(&p.job) {
                p.eta_s = Some(t);
            }
        }
    }

    fn standings(&mut self) {
        let mut borrowed = vec![0u64; self.teams.names.len()];
        let mut idle = vec![0u64; self.teams.names.len()];
        let mut own = vec![0u64; self.teams.names.len()];
        for r in &self.runs {
            let Some(t) = r.team else { continue };
            let milli = r.job.spec.milli_total();
            let is_idle = r.job.state.run().is_some_and(|x| x.idle_since_s.is_some());
            for &a in &self.teams.lineage[t] {
                own[a] += milli;
                if r.mode == Admission::Borrowed {
                    borrowed[a] += milli;
                }
                if is_idle {
                    idle[a] += milli;
                }
            }
        }
        // Standing from the allocation before this plan's starts.
        self.alloc_total.clone_from(&own);
        for t in 0..self.teams.names.len() {
            let g = self.guaranteed_total(t);
            let standing = self.usage(t) / (g.max(1)) as f64;
            let idle_total = self
                .state
                .teams
                .get(&self.teams.names[t])
                .map_or(0, |x| x.idle_milli_s_total);
            self.out.teams.push(TeamStanding {
                team: self.teams.names[t].clone(),
                guaranteed_gpus: (g / u64::from(MILLI_PER_GPU)) as u32,
                alloc_milli: own[t],
                borrowed_milli: borrowed[t],
                idle_milli: idle[t],
                standing,
                idle_gpu_hours: idle_total as f64 / 1000.0 / 3600.0,
            });
        }
    }
}

/// `static`: each leaf team gets whole nodes of each GPU model in proportion to its
/// guarantee for that model, contiguous in topology order.
fn static_partition(
    state: &ClusterState,
    models: &[String],
    teams: &TeamIndex,
    leaf_rank: &[Option<usize>],
) -> BTreeMap<crate::model::NodeId, usize> {
    let mut out = BTreeMap::new();
    for (m, model) in models.iter().enumerate() {
        let mut nodes: Vec<_> = state
            .nodes
            .values()
            .filter(|n| &n.spec.gpu_model == model)
            .collect();
        nodes.sort_by(|a, b| {
            a.spec
                .topology
                .cmp(&b.spec.topology)
                .then(a.spec.id.cmp(&b.spec.id))
        });
        let capacity: u64 = nodes.iter().map(|n| u64::from(n.spec.gpus)).sum();
        let shares: Vec<(usize, u64)> = leaf_rank
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.map(|r| (r, teams.guaranteed(t, m))))
            .filter(|&(_, g)| g > 0)
            .collect();
        let total: u64 = shares.iter().map(|s| s.1).sum();
        if total == 0 || capacity == 0 {
            continue;
        }
        // A node goes to the team whose share of the line contains the node's midpoint.
        let mut pos = 0u64;
        let mut idx = 0;
        let mut cum = shares[0].1;
        for node in nodes {
            let mid2 = 2 * pos + u64::from(node.spec.gpus);
            while idx + 1 < shares.len() && mid2 * total >= 2 * cum * capacity {
                idx += 1;
                cum += shares[idx].1;
            }
            out.insert(node.spec.id, shares[idx].0);
            pos += u64::from(node.spec.gpus);
        }
    }
    out
}

/// A team's pending jobs in plan order: priority, then submission, then id. The key is packed
/// into one `u128` kept inline (priority 32 bits, submission and id 48 bits each; the rare
/// job beyond that sorts by the full tuple), so that sorting neither chases a pointer nor
/// compares a tuple per step: this sort is a seventh of a trace replay's time.
struct Ordered<'a> {
    keyed: Vec<(u128, &'a Job)>,
}

const KEY_48: u64 = (1 << 48) - 1;

fn order_key(j: &Job) -> Option<u128> {
    let s = &j.spec;
    let p = (i64::from(i32::MAX) - i64::from(s.priority)) as u128;
    (s.submit_s <= KEY_48 && s.id.0 <= KEY_48)
        .then(|| (p << 96) | (u128::from(s.submit_s) << 48) | u128::from(s.id.0))
}

impl<'a> Ordered<'a> {
    fn new(jobs: Vec<&'a Job>) -> Ordered<'a> {
        Ordered {
            keyed: jobs
                .into_iter()
                .map(|j| (order_key(j).unwrap_or(u128::MAX), j))
                .collect(),
        }
    }

    fn sort(&mut self) {
        if self.keyed.iter().any(|k| k.0 == u128::MAX) {
            self.keyed.sort_by_key(|k| {
                let s = &k.1.spec;
                (Reverse(s.priority), s.submit_s, s.id)
            });
        } else if !self.keyed.is_sorted_by_key(|k| k.0) {
            self.keyed.sort_unstable_by_key(|k| k.0);
        }
    }

    /// `out[k]`: the fewest milli-GPUs any job from the `k`-th on asks for (`u64::MAX` past
    /// the end).
    fn least_suffix(&self) -> Vec<u64> {
        let mut least = vec![u64::MAX; self.keyed.len() + 1];
        for k in (0..self.keyed.len()).rev() {
            least[k] = least[k + 1].min(self.keyed[k].1.spec.milli_total());
        }
        least
    }

    /// The `i`-th job in order.
    fn get(&self, i: usize) -> Option<&'a Job> {
        self.keyed.get(i).map(|k| k.1)
    }
}

/// A job that changed nothing, the decision count when it was considered, and whether it was
/// decided (in the guaranteed phase, undecided jobs go on to borrow).
type Fate<'a> = (&'a Job, (usize, usize, usize, usize), bool);
