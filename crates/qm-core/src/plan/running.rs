//! The running jobs, as one plan sees them: what each team holds (pool by pool, inside its
//! guarantee or not), which runs are guaranteed and which borrowed under the current quotas,
//! which pass their time limit, which have sat idle past the window, and the fair-share usage
//! the order of pending jobs is computed from.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::model::{IdlePolicy, JobId, JobSpec, PolicyKind, Secs, MILLI_PER_GPU};
use crate::state::{Admission, ClusterState, Holder, Job, JobState, StopCause};
use crate::teams::TeamIndex;

use super::planner::Planner;
use super::reclaim::Victims;
use super::{IdleAction, IdleNotice, Plan, StopOrder};

/// Reclaim takes a run counted inside its team's guarantee (from a team above its guarantee,
/// for a job that needs the guarantee in another shape) only if it checkpoints and would lose
/// at most this much of its run (`reclaim.rs`, `Victims::surplus`).
pub(super) const SURPLUS_MAX_LOSS_S: Secs = 3_600;

/// A running or stopping job, as this plan sees it: its state's note (`Holder`) and what
/// the plan makes of it. Its record is looked up only where a plan needs more
/// (`Planner::job`).
pub(super) struct RunInfo<'a> {
    pub(super) id: JobId,
    pub(super) note: &'a Holder,
    /// The planner's index of its team.
    pub(super) team: Option<usize>,
    /// The planner's index of its GPU model.
    pub(super) model: usize,
    /// Guaranteed or borrowed under the current quotas (recomputed every plan).
    pub(super) mode: Admission,
    /// GPU-seconds lost if preempted now.
    pub(super) lost_gpu_s: u64,
    /// Stopped by this plan because it sat idle past its team's release window.
    pub(super) released: bool,
    /// Stopping, or stopped by this plan: no longer a victim for reclaim.
    pub(super) stopped: bool,
    /// Idle past the window under a team policy that yields (`IdlePolicy::yields`): it
    /// counts as borrowed, outside its team's guarantee, and any pending job that needs its
    /// GPUs may preempt it, its own team's included, preemptible or not.
    pub(super) yielded: bool,
    /// Preemptible and past its minimum run time.
    pub(super) takable: bool,
    /// It checkpoints and would lose at most `SURPLUS_MAX_LOSS_S` of work if stopped now.
    pub(super) cheap: bool,
    /// Milli-GPUs it holds, and of every GPU it touches: its note's, copied here for the
    /// steps that read little else of it.
    pub(super) milli: u64,
    pub(super) touched: u64,
    /// It counts after the jobs waiting on priority holds in its team's guarantee: it
    /// started borrowed, or it is a priority preemption's victim (`HoldKey`).
    pub(super) after_waiting: bool,
}

/// What each team holds and has used, updated as the plan starts and claims.
#[derive(Debug, PartialEq)]
pub(super) struct Accounting {
    /// `[team][pool]` milli-GPUs held, sub-teams included, updated as the plan starts jobs.
    pub(super) alloc: Vec<Vec<u64>>,
    /// `[team]` milli-GPUs over all pools, sub-teams included.
    pub(super) alloc_total: Vec<u64>,
    /// `[team]` milli-CPUs held, sub-teams included.
    pub(super) cpu: Vec<u64>,
    /// `[team]` the history part of fair-share usage.
    pub(super) history: Vec<f64>,
    /// `[team][pool]` milli-GPUs held or claimed inside the guarantee.
    pub(super) guaranteed_used: Vec<Vec<u64>>,
    /// Guaranteed usage set aside for each job waiting on a hold: (team, pool, milli).
    pub(super) guarantee_set_aside: BTreeMap<JobId, (usize, usize, u64)>,
    /// `[team]` the latest start of a run counted inside its guarantee (this plan's
    /// starts included).
    pub(super) guaranteed_latest_start: Vec<Secs>,
}

impl Accounting {
    pub(super) fn new(state: &ClusterState, teams: &TeamIndex, now: Secs) -> Accounting {
        Accounting {
            alloc: teams.pools.iter().map(|p| vec![0; p.len()]).collect(),
            alloc_total: vec![0; teams.names.len()],
            cpu: vec![0; teams.names.len()],
            history: Planner::histories(state, teams, now),
            guaranteed_used: teams.pools.iter().map(|p| vec![0; p.len()]).collect(),
            guarantee_set_aside: BTreeMap::new(),
            guaranteed_latest_start: vec![0; teams.names.len()],
        }
    }
}

/// What the scan of running work sums up, as the full scan made it (`Planner::list_runs`).
struct Sums {
    acct: Accounting,
    drain: Vec<Secs>,
    stops: Vec<StopOrder>,
    idle: Vec<IdleNotice>,
    victims: Victims,
}

impl<'a> Planner<'a> {
    /// Accounting, releases, admission modes, time limits and idle reclaim of holding jobs:
    /// from the teams' tallies where the plan needs no run one by one from the start
    /// (`tally.rs`), the runs then listed when a step first asks for them (`ensure_runs`);
    /// or else by walking every run.
    pub(super) fn scan_running(&mut self) {
        if !self.explain && self.scan_tallies() {
            if cfg!(debug_assertions) {
                self.check_tallies();
            }
            return;
        }
        self.scan_full();
        self.runs_listed = true;
    }

    /// Lists the runs (and reclaim's victims among them), where the plan summed them from
    /// the tallies: before any step reads a run.
    pub(super) fn ensure_runs(&mut self) {
        if !self.runs_listed {
            self.runs_listed = true;
            self.list_runs();
        }
    }

    /// Runs the full scan for its list of runs and of victims, keeping the plan's sums as
    /// they are (the plan may have changed them since its scan); the full scan's sums are
    /// the answer.
    fn list_runs(&mut self) -> Sums {
        let fresh = Accounting::new(self.state, self.teams, self.now);
        let acct = std::mem::replace(&mut self.acct, fresh);
        let drain = std::mem::take(&mut self.view.drain);
        let victims = std::mem::replace(&mut self.victims, Victims::new(self.models.len()));
        let (stops, idle) = (self.out.stops.len(), self.out.idle.len());
        self.scan_full();
        let mut sums = Sums {
            acct: std::mem::replace(&mut self.acct, acct),
            drain: std::mem::replace(&mut self.view.drain, drain),
            stops: self.out.stops.split_off(stops),
            idle: self.out.idle.split_off(idle),
            victims: std::mem::replace(&mut self.victims, victims),
        };
        self.victims.by_model = std::mem::take(&mut sums.victims.by_model);
        self.victims.surplus = std::mem::take(&mut sums.victims.surplus);
        sums
    }

    /// Debug builds: the sums from the tallies are the full scan's. The runs are then
    /// forgotten again, so that the steps list them as they would in a release build.
    fn check_tallies(&mut self) {
        let full = self.list_runs();
        assert_eq!(full.acct, self.acct, "accounts from the tallies");
        assert_eq!(full.drain, self.view.drain, "drain from the tallies");
        assert_eq!(full.stops, self.out.stops, "time limits from the tallies");
        assert!(full.idle.is_empty() && self.idle.is_empty(), "no idle run");
        let (v, w) = (&full.victims, &self.victims);
        assert_eq!(v.milli_left, w.milli_left, "victims from the tallies");
        assert_eq!(v.surplus_milli, w.surplus_milli, "surplus from the tallies");
        assert_eq!(v.away_milli, w.away_milli);
        assert_eq!(v.yielded, w.yielded);
        assert_eq!(v.taken, w.taken);
        assert_eq!(v.pinned_pending, w.pinned_pending);
        if let Some(lowest) = &self.lowest_takable {
            let mut from_runs = vec![None; lowest.len()];
            for r in &self.runs {
                let Some(t) = r.team else { continue };
                let note = r.note;
                if !r.stopped
                    && note.preemptible
                    && self.now.saturating_sub(note.started_s) >= note.min_run_s
                {
                    let l: &mut Option<i32> = &mut from_runs[t];
                    *l = Some(l.map_or(note.priority, |l| l.min(note.priority)));
                }
            }
            assert_eq!(&from_runs, lowest, "lowest priorities from the tallies");
        }
        self.runs.clear();
        for list in self
            .victims
            .by_model
            .iter_mut()
            .chain(&mut self.victims.surplus)
        {
            list.clear();
        }
        self.runs_listed = false;
    }

    /// Accounting, releases, admission modes, time limits and idle reclaim of holding jobs,
    /// walking every run.
    fn scan_full(&mut self) {
        let state = self.state;
        let holders = state.jobs.holding.len();
        self.runs.reserve(holders);
        if self.explain {
            self.eta.job_ends.reserve(holders);
        }
        let mut limit_stops = Vec::new();
        // What the team of the runs at hand holds, by model, and its CPU: the runs come by
        // team, so each team's sums are counted once.
        let mut held: Option<(usize, Vec<u64>, u64)> = None;
        let mut drain = vec![0; self.view.ids.len()];
        for (key, note) in &state.jobs.holding {
            let id = key.id;
            let Some(n) = note.first.and_then(|(node, ..)| self.view.dense(node)) else {
                continue;
            };
            let model = self.model_at(n);
            let team = self.team_of_id(note.team_id);
            let milli = note.milli;
            if let Some(t) = team {
                if held.as_ref().is_none_or(|h| h.0 != t) {
                    self.count_held(held.take());
                    held = Some((t, vec![0; self.models.len()], 0));
                }
                let h = held.as_mut().expect("just set");
                h.1[model] += milli;
                h.2 += note.cpu_milli * u64::from(note.tasks);
            }
            // Only estimates read the runs' expected ends (`explain`).
            if let Some(t) = team.filter(|_| self.explain) {
                let expected_end = self.run_ends(note).1;
                self.eta.job_ends.push((expected_end, t, model, milli));
            }
            let stopping = note.stop.is_some();
            let elapsed = self.now.saturating_sub(note.started_s);
            let yielded = self.policy == PolicyKind::Default
                && note.idle_since_s.is_some_and(|since| {
                    self.idle_policy_of(&state.jobs[&id]).yields(
                        since,
                        self.now,
                        state.config.idle_window_s,
                    )
                });
            // Time limits, for every policy.
            let over = past_limit(note, self.now);
            if over && !stopping {
                limit_stops.push(id);
            }
            let after_waiting = key.leaving || key.admission == Admission::Borrowed;
            if note.idle_since_s.is_some() {
                self.idle.push(self.runs.len());
            }
            self.runs.push(RunInfo {
                id,
                note,
                team,
                model,
                mode: Admission::Guaranteed,
                lost_gpu_s: lost_gpu_s(note, self.now),
                stopped: stopping || over,
                yielded,
                released: false,
                takable: note.preemptible && elapsed >= note.min_run_s,
                cheap: note
                    .checkpoint_every_s
                    .is_some_and(|every| every > 0 && elapsed % every <= SURPLUS_MAX_LOSS_S),
                milli,
                touched: note.touched,
                after_waiting,
            });
            // When each node's last run ends by its time limit: one task's node from the
            // note, a gang's from its record.
            let limit_end = self.run_ends(note).0;
            if note.tasks == 1 {
                drain[n as usize] = drain[n as usize].max(limit_end);
            } else {
                for task in self.placement(self.runs.len() - 1) {
                    if let Some(m) = self.view.dense(task.node) {
                        drain[m as usize] = drain[m as usize].max(limit_end);
                    }
                }
            }
        }
        self.count_held(held);
        self.view.drain = drain;
        // The runs come by team (`HoldKey`); what the plan says of them comes in id order.
        limit_stops.sort_unstable();
        self.out
            .stops
            .extend(limit_stops.into_iter().map(time_limit_stop));
        self.idle.sort_unstable_by_key(|&i| self.runs[i].id);
        self.classify();
        if self.policy != PolicyKind::Default {
            return;
        }
        self.idle_reclaim();
        // Idle runs that yielded, and those released by this plan, are no longer the team's
        // to keep: what reclaim may take from a team above its guarantee counts without
        // them (`surplus_fits`).
        let gone: Vec<usize> = self
            .idle
            .iter()
            .copied()
            .filter(|&i| self.runs[i].yielded || self.runs[i].released)
            .collect();
        for (key, milli) in self.takes(&gone, false) {
            *self.victims.taken.entry(key).or_default() += milli;
        }
        self.victims.pinned_pending = self.state.jobs.queues.values().any(|q| q.pinned > 0);
        for i in 0..self.runs.len() {
            let r = &self.runs[i];
            if r.stopped {
                continue;
            }
            let (model, milli) = (r.model, r.milli);
            // Victims of reclaim: borrowed runs that may be preempted, and idle ones that
            // yielded.
            if r.yielded || (r.mode == Admission::Borrowed && r.takable) {
                self.victims.by_model[model].push(i);
                self.victims.yielded[model] += usize::from(r.yielded);
                self.victims.milli_left[model] += r.touched;
            }
            if !(r.takable && r.mode == Admission::Guaranteed) {
                continue;
            }
            // Runs counted inside the guarantee of a team above its guarantee, where
            // stopping them costs little: they checkpoint, and lose at most
            // `SURPLUS_MAX_LOSS_S` of work.
            if let Some(t) = r.team.filter(|_| r.cheap) {
                let pool = self.teams.pool_of_model[t][model];
                let gone = self.victims.taken.get(&(t, pool)).copied().unwrap_or(0);
                if self.acct.alloc[t][pool].saturating_sub(gone)
                    > self.teams.pools[t][pool].guaranteed
                {
                    self.victims.surplus[model].push(i);
                    self.victims.surplus_milli[model] += milli;
                }
            }
            // Runs away from home matter only to a waiting job that cannot be preempted.
            if self.victims.pinned_pending && !self.run_at_home(i) {
                self.victims.away_milli[model] += milli;
            }
        }
        // Victims are put in order when a reclaim first asks (`sort_victims`): most plans
        // reclaim nothing.
    }

    /// Puts each model's victims in order, cheapest to stop first, once per plan: their
    /// keys do not change during a plan.
    pub(super) fn sort_victims(&mut self) {
        self.ensure_runs();
        if self.victims.sorted {
            return;
        }
        self.victims.sorted = true;
        let mut by_model = std::mem::take(&mut self.victims.by_model);
        for list in &mut by_model {
            // Keys inline, so that sorting does not chase pointers per comparison.
            let mut keyed: Vec<_> = list.iter().map(|&i| (self.victim_key(i), i)).collect();
            keyed.sort_unstable();
            list.clear();
            list.extend(keyed.into_iter().map(|k| k.1));
        }
        self.victims.by_model = by_model;
    }

    /// Recomputes each running job's admission from the current quotas: a team's jobs, oldest
    /// first, are guaranteed while they fit in its guarantee; the rest are borrowed. A lowered
    /// guarantee thereby turns the excess into reclaimable borrowed capacity.
    ///
    /// Jobs waiting on a reclaim's hold were admitted as guaranteed when their reclaim was
    /// planned: they keep their place in the guarantee first. Then jobs that started
    /// guaranteed; then jobs waiting on a priority preemption's hold, which take their
    /// victims' place (where it fits: as if they had started guaranteed last); then the jobs
    /// that started borrowed, oldest first; last the victims of priority preemptions, which
    /// are leaving. The state keeps the holders in this order (`HoldKey`), so the runs
    /// arrive in it and nothing is sorted.
    pub(super) fn classify(&mut self) {
        let mut waiting = self.count_holds();
        // The runs come by team, each team's in the order they count in (`HoldKey`): the
        // waiting jobs go after the runs that started guaranteed, before the others. Idle
        // runs that yielded count nowhere: where they come changes nothing.
        let mut i = 0;
        while i < self.runs.len() {
            let Some(t) = self.runs[i].team else {
                self.runs[i].mode = Admission::Borrowed;
                i += 1;
                continue;
            };
            let mut used = std::mem::take(&mut self.acct.guaranteed_used[t]);
            let mut held = waiting.remove(&t);
            while let Some(r) = self.runs.get_mut(i).filter(|r| r.team == Some(t)) {
                if r.after_waiting {
                    if let Some(held) = held.take() {
                        self.count_waiting(t, &held, &mut used);
                    }
                }
                let r = &mut self.runs[i];
                let pool = self.teams.pool_of_model[t][r.model];
                let milli = r.milli;
                if self.policy != PolicyKind::Default
                    || (milli > 0
                        && !r.yielded
                        && used[pool] + milli <= self.teams.pools[t][pool].guaranteed)
                {
                    used[pool] += milli;
                    r.mode = Admission::Guaranteed;
                    let latest = &mut self.acct.guaranteed_latest_start[t];
                    *latest = (*latest).max(r.note.started_s);
                } else {
                    r.mode = Admission::Borrowed;
                }
                i += 1;
            }
            if let Some(held) = held {
                self.count_waiting(t, &held, &mut used);
            }
            self.acct.guaranteed_used[t] = used;
        }
        self.count_waiting_without_runs(waiting);
    }

    /// Counts the jobs waiting on a priority preemption's hold of teams with no runs.
    pub(super) fn count_waiting_without_runs(
        &mut self,
        waiting: BTreeMap<usize, Vec<(JobId, usize, u64)>>,
    ) {
        for (t, held) in waiting {
            let mut used = std::mem::take(&mut self.acct.guaranteed_used[t]);
            self.count_waiting(t, &held, &mut used);
            self.acct.guaranteed_used[t] = used;
        }
    }

    /// Under `default`, counts the jobs waiting on a reclaim's hold inside their team's
    /// guarantee, before the team's runs (where they fit in what is left of it, setting
    /// their usage aside), and lists those waiting on a priority preemption's hold, per
    /// team in id order: (job, model, milli-GPUs), to be counted after the team's runs
    /// that started guaranteed (`count_waiting`).
    pub(super) fn count_holds(&mut self) -> BTreeMap<usize, Vec<(JobId, usize, u64)>> {
        let mut waiting: BTreeMap<usize, Vec<(JobId, usize, u64)>> = BTreeMap::new();
        if self.policy != PolicyKind::Default {
            return waiting;
        }
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
            let milli = job.spec.milli_total();
            if self.priority_hold(job, hold) {
                waiting.entry(t).or_default().push((*b, model, milli));
                continue;
            }
            // A reclaim's hold is inside the guarantee, before the team's running jobs;
            // one that took idle runs for a borrowing job (`take_yielded`) is outside it:
            // it never pushes a running job of its team out of the guarantee.
            if hold.borrowing {
                continue;
            }
            let pool = self.teams.pool_of_model[t][model];
            if self.acct.guaranteed_used[t][pool] + milli > self.teams.pools[t][pool].guaranteed {
                continue;
            }
            self.acct.guaranteed_used[t][pool] += milli;
            self.acct.guarantee_set_aside.insert(*b, (t, pool, milli));
        }
        waiting
    }

    /// Counts jobs waiting on a priority preemption's hold inside team `t`'s guarantee where
    /// they fit in what is left of it (`used`), setting their usage aside.
    pub(super) fn count_waiting(
        &mut self,
        t: usize,
        held: &[(JobId, usize, u64)],
        used: &mut [u64],
    ) {
        let mut aside = Vec::new();
        self.count_waiting_into(t, held, used, &mut aside);
        for (b, pool, milli) in aside {
            self.acct.guarantee_set_aside.insert(b, (t, pool, milli));
        }
    }

    /// `count_waiting` into a list: team `t`'s jobs waiting on a priority preemption's hold
    /// counted inside its guarantee where they fit in `used`, listed in `set_aside` with
    /// their pool and milli-GPUs.
    pub(super) fn count_waiting_into(
        &self,
        t: usize,
        held: &[(JobId, usize, u64)],
        used: &mut [u64],
        set_aside: &mut Vec<(JobId, usize, u64)>,
    ) {
        for &(b, model, milli) in held {
            let pool = self.teams.pool_of_model[t][model];
            if used[pool] + milli <= self.teams.pools[t][pool].guaranteed {
                used[pool] += milli;
                set_aside.push((b, pool, milli));
            }
        }
    }

    /// The order victims are taken in: idle runs that yielded first, then least work lost,
    /// then the youngest, then by id.
    pub(super) fn victim_key(&self, i: usize) -> (bool, u64, Reverse<Secs>, JobId) {
        let r = &self.runs[i];
        (!r.yielded, r.lost_gpu_s, Reverse(r.note.started_s), r.id)
    }

    /// The idle policy of the job's team (the default where the team is gone).
    pub(super) fn idle_policy_of(&self, job: &Job) -> IdlePolicy {
        idle_policy_of(self.state, job)
    }

    /// Whether every task of run `i` sits on a node that is home to its team.
    pub(super) fn run_at_home(&self, i: usize) -> bool {
        let r = &self.runs[i];
        let Some(t) = r.team else { return false };
        let at_home = |node| {
            self.view
                .dense(node)
                .is_some_and(|n| self.homes.at_home(t, r.model, n))
        };
        match r.note.first {
            Some((node, ..)) if r.note.tasks == 1 => at_home(node),
            _ => self.placement(i).iter().all(|task| at_home(task.node)),
        }
    }

    /// Idle runs past the window: flagged, and stopped where their team's policy releases
    /// them and their time has come (yielding is decided in `scan_running`).
    pub(super) fn idle_reclaim(&mut self) {
        for k in 0..self.idle.len() {
            let i = self.idle[k];
            let r = &self.runs[i];
            let Some(since) = r.note.idle_since_s.filter(|_| !r.stopped) else {
                continue;
            };
            let (job, lost) = (self.job(i), r.lost_gpu_s);
            if act_on_idle(self.state, job, since, lost, self.now, &mut self.out) {
                let r = &mut self.runs[i];
                r.stopped = true;
                r.released = true;
            }
        }
    }

    pub(super) fn add_alloc(&mut self, team: usize, model: usize, milli: u64) {
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            self.acct.alloc[a][pool] += milli;
            self.acct.alloc_total[a] += milli;
        }
    }

    /// Counts what a team's runs hold (milli-GPUs by model, milli-CPUs) against it and its
    /// ancestors.
    fn count_held(&mut self, held: Option<(usize, Vec<u64>, u64)>) {
        let Some((t, by_model, cpu)) = held else {
            return;
        };
        for (model, milli) in by_model.into_iter().enumerate() {
            if milli > 0 {
                self.add_alloc(t, model, milli);
            }
        }
        self.add_cpu_total(t, cpu);
    }

    /// Counts a job's CPU against its team and the team's ancestors.
    pub(super) fn add_cpu(&mut self, team: usize, spec: &JobSpec) {
        self.add_cpu_total(team, spec.cpu_milli * u64::from(spec.tasks));
    }

    /// Counts milli-CPUs against a team and the team's ancestors.
    fn add_cpu_total(&mut self, team: usize, cpu: u64) {
        for &a in &self.teams.lineage[team] {
            self.acct.cpu[a] += cpu;
        }
    }

    /// Counts a start or a claim against the team's allocation (and guarantee).
    pub(super) fn account(&mut self, team: usize, spec: &JobSpec, model: usize, class: Admission) {
        let milli = spec.milli_total();
        self.add_alloc(team, model, milli);
        self.add_cpu(team, spec);
        if class == Admission::Guaranteed {
            let pool = self.teams.pool_of_model[team][model];
            self.acct.guaranteed_used[team][pool] += milli;
            self.acct.guaranteed_latest_start[team] = self.now;
        }
    }

    /// Fair-share usage: half current allocation, half decayed history, plus idle charge.
    pub(super) fn usage(&self, team: usize) -> f64 {
        0.5 * self.acct.alloc_total[team] as f64 + self.acct.history[team]
    }

    /// Per team: half the decayed average allocation plus the decayed idle charge, brought
    /// forward from the state's clock to `now` (milli-GPUs).
    pub(super) fn histories(state: &ClusterState, teams: &TeamIndex, now: Secs) -> Vec<f64> {
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

    pub(super) fn guaranteed_total(&self, team: usize) -> u64 {
        self.teams.pools[team].iter().map(|p| p.guaranteed).sum()
    }
}

/// The idle policy of the job's team (the default where the team is gone).
fn idle_policy_of(state: &ClusterState, job: &Job) -> IdlePolicy {
    state
        .teams
        .get(&job.spec.team)
        .map_or(IdlePolicy::default(), |t| t.spec.idle_policy)
}

/// Whether a run has reached its time limit at `now`.
pub(super) fn past_limit(note: &Holder, now: Secs) -> bool {
    note.time_limit_s
        .is_some_and(|l| now >= note.started_s.saturating_add(l))
}

/// The stop of a run that reached its time limit (it loses nothing it could keep).
pub(super) fn time_limit_stop(job: JobId) -> StopOrder {
    StopOrder {
        job,
        cause: StopCause::TimeLimit,
        beneficiary: None,
        lost_gpu_s: 0,
        borrowing: false,
    }
}

/// GPU-seconds a run would lose if stopped at `now`: the work since its last checkpoint,
/// or since its start.
fn lost_gpu_s(note: &Holder, now: Secs) -> u64 {
    let elapsed = now.saturating_sub(note.started_s);
    let lost = match note.checkpoint_every_s {
        Some(every) if every > 0 => elapsed % every,
        _ => elapsed,
    };
    note.milli.saturating_mul(lost) / u64::from(MILLI_PER_GPU)
}

/// For a run idle since `since` and not stopping: past the idle window, flags it, and
/// stops it where its team's policy releases it and its time has come. Whether it stopped it.
fn act_on_idle(
    state: &ClusterState,
    job: &Job,
    since: Secs,
    lost_gpu_s: u64,
    now: Secs,
    out: &mut Plan,
) -> bool {
    let window = state.config.idle_window_s;
    if now.saturating_sub(since) < window {
        return false;
    }
    let policy = idle_policy_of(state, job);
    let action = match policy {
        IdlePolicy::Warn => IdleAction::Warn,
        _ => match policy.release_at(since, window) {
            Some(due) if now >= due => IdleAction::Released,
            release_at_s => IdleAction::Yield { release_at_s },
        },
    };
    let released = action == IdleAction::Released;
    if released {
        out.stops.push(StopOrder {
            job: job.spec.id,
            cause: StopCause::Idle,
            beneficiary: None,
            lost_gpu_s,
            borrowing: false,
        });
    }
    out.idle.push(IdleNotice {
        job: job.spec.id,
        team: job.spec.team.clone(),
        idle_since_s: since,
        action,
    });
    released
}

/// The plan of a state where nothing waits (no pending job, no hold), which only time limits
/// and idle policies can act on: the same stops and idle notices as the planner's, from the
/// state's index of the holders the clock may act on (`Clocked`: those past their time
/// limit, those idle), without the view, the accounting or the admission modes that only
/// matter to waiting work. `None` where something waits. (Every holder's nodes exist, an
/// invariant of the state, so every holder with a task is a run the planner sees.)
pub(super) fn quiet_plan(state: &ClusterState, now: Secs) -> Option<Plan> {
    if !state.jobs.queues.is_empty() || !state.holds.is_empty() {
        return None;
    }
    let policy = state.config.policy;
    let mut out = Plan::empty(policy, now);
    let clocked = &state.jobs.clocked;
    let due = clocked.due.iter().take_while(|(at, _)| *at <= now);
    out.stops.extend(due.map(|&(_, id)| time_limit_stop(id)));
    // In id order, as the planner says them (`scan_running`); idle policies act under
    // `default` only, after the time limits.
    out.stops.sort_unstable_by_key(|s| s.job);
    if policy == PolicyKind::Default {
        for &id in &clocked.idle {
            let job = &state.jobs[&id];
            let key = crate::state::HoldKey::of(job).expect("an idle holder holds");
            let note = &state.jobs.holding[&key];
            let since = note.idle_since_s.expect("an idle holder is idle");
            if !past_limit(note, now) {
                act_on_idle(state, job, since, lost_gpu_s(note, now), now, &mut out);
            }
        }
    }
    debug_assert_eq!(
        out,
        walked_quiet_plan(state, now),
        "the index of clocked holders"
    );
    Some(out)
}

/// `quiet_plan` from one walk of every holder's note (debug builds check the index with it).
fn walked_quiet_plan(state: &ClusterState, now: Secs) -> Plan {
    let policy = state.config.policy;
    let mut out = Plan::empty(policy, now);
    let mut idle = Vec::new();
    for (key, note) in &state.jobs.holding {
        if note.first.is_none() {
            continue;
        }
        let over = past_limit(note, now);
        if over && note.stop.is_none() {
            out.stops.push(time_limit_stop(key.id));
        }
        if let Some(since) = note.idle_since_s.filter(|_| note.stop.is_none() && !over) {
            idle.push((key.id, note, since));
        }
    }
    out.stops.sort_unstable_by_key(|s| s.job);
    if policy == PolicyKind::Default {
        idle.sort_unstable_by_key(|e| e.0);
        for (id, note, since) in idle {
            let job = &state.jobs[&id];
            act_on_idle(state, job, since, lost_gpu_s(note, now), now, &mut out);
        }
    }
    out
}
