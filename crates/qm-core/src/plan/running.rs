//! The running jobs, as one plan sees them: what each team holds (pool by pool, inside its
//! guarantee or not), which runs are guaranteed and which borrowed under the current quotas,
//! which pass their time limit, which have sat idle past the window, and the fair-share usage
//! the order of pending jobs is computed from.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::model::{IdlePolicy, JobId, JobSpec, PolicyKind, Secs, MILLI_PER_GPU};
use crate::state::{Admission, ClusterState, Job, JobState, StopCause, TaskPlacement};
use crate::teams::TeamIndex;

use super::planner::Planner;
use super::{IdleAction, IdleNotice, StopOrder};

/// Reclaim takes a run counted inside its team's guarantee (from a team above its guarantee,
/// for a job that needs the guarantee in another shape) only if it checkpoints and would lose
/// at most this much of its run (`reclaim.rs`, `Victims::surplus`).
pub(super) const SURPLUS_MAX_LOSS_S: Secs = 3_600;

/// A running or stopping job, as this plan sees it.
pub(super) struct RunInfo<'a> {
    pub(super) job: &'a Job,
    pub(super) placement: &'a [TaskPlacement],
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
    /// Milli-GPUs it holds.
    pub(super) milli: u64,
    /// Milli-GPUs of every GPU it touches (whole or in part): what stopping it may free.
    pub(super) touched: u64,
}

/// What each team holds and has used, updated as the plan starts and claims.
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
        }
    }
}

impl<'a> Planner<'a> {
    /// Accounting, releases, admission modes, time limits and idle reclaim of holding jobs.
    pub(super) fn scan_running(&mut self) {
        let state = self.state;
        let holders = state.jobs.holding.len();
        self.runs.reserve(holders);
        self.eta.job_ends.reserve(holders);
        // The holders in id order: looked up one by one where the queue is long, read in
        // one walk of the live jobs where most of them hold.
        let by_lookup = holders * 4 < state.jobs.len();
        let mut looked_up = state.jobs.holding.iter().map(|id| &state.jobs[id]);
        let mut walked = state.jobs.values().filter(|j| j.state.run().is_some());
        let holding: &mut dyn Iterator<Item = &'a Job> = if by_lookup {
            &mut looked_up
        } else {
            &mut walked
        };
        for job in holding {
            let Some(run) = job.state.run() else { continue };
            let Some(model) = self.model_of(&run.placement) else {
                continue;
            };
            let team = self.team_of(job);
            let milli = job.spec.milli_total();
            if let Some(t) = team {
                self.add_alloc(t, model, milli);
                self.add_cpu(t, &job.spec);
            }
            let expected_end = match &job.state {
                JobState::Stopping(_, stop) => stop.deadline_s,
                _ => self.end_of(&job.spec, run.started_s).1,
            };
            if let Some(t) = team {
                self.eta.job_ends.push((expected_end, t, model, milli));
            }
            let stopping = match &job.state {
                JobState::Stopping(_, stop) => Some(stop.deadline_s),
                _ => None,
            };
            let spec = &job.spec;
            let elapsed = self.now.saturating_sub(run.started_s);
            let lost = match spec.checkpoint_every_s {
                Some(every) if every > 0 => elapsed % every,
                _ => elapsed,
            };
            let yielded = self.policy == PolicyKind::Default
                && run.idle_since_s.is_some_and(|since| {
                    self.idle_policy_of(job)
                        .yields(since, self.now, state.config.idle_window_s)
                });
            // Time limits, for every policy.
            let over = spec
                .time_limit_s
                .is_some_and(|l| self.now >= run.started_s.saturating_add(l));
            if over && stopping.is_none() {
                self.out.stops.push(StopOrder {
                    job: spec.id,
                    cause: StopCause::TimeLimit,
                    beneficiary: None,
                    lost_gpu_s: 0,
                    borrowing: false,
                });
            }
            self.runs.push(RunInfo {
                job,
                placement: &run.placement,
                team,
                model,
                mode: Admission::Guaranteed,
                lost_gpu_s: milli.saturating_mul(lost) / u64::from(MILLI_PER_GPU),
                stopped: stopping.is_some() || over,
                yielded,
                released: false,
                takable: spec.preemptible && elapsed >= spec.min_run_s,
                cheap: spec
                    .checkpoint_every_s
                    .is_some_and(|every| every > 0 && elapsed % every <= SURPLUS_MAX_LOSS_S),
                milli,
                touched: run
                    .placement
                    .iter()
                    .map(|t| t.gpus.len() as u64 * u64::from(MILLI_PER_GPU))
                    .sum(),
            });
        }
        self.classify();
        if self.policy != PolicyKind::Default {
            return;
        }
        self.idle_reclaim();
        // Idle runs that yielded, and those released by this plan, are no longer the team's
        // to keep: what reclaim may take from a team above its guarantee counts without
        // them (`surplus_fits`).
        let gone: Vec<usize> = (0..self.runs.len())
            .filter(|&i| self.runs[i].yielded || self.runs[i].released)
            .collect();
        for (key, milli) in self.takes(&gone, false) {
            *self.victims.taken.entry(key).or_default() += milli;
        }
        for (i, r) in self.runs.iter().enumerate() {
            let eligible =
                !r.stopped && (r.yielded || (r.mode == Admission::Borrowed && r.takable));
            if eligible {
                self.victims.by_model[r.model].push(i);
                self.victims.yielded[r.model] += usize::from(r.yielded);
                self.victims.milli_left[r.model] += r.touched;
            }
        }
        // Runs counted inside the guarantee of a team above its guarantee, where stopping
        // them costs little: they checkpoint, and lose at most `SURPLUS_MAX_LOSS_S` of work.
        for (i, r) in self.runs.iter().enumerate() {
            let Some(t) = r.team else { continue };
            if !(r.cheap && r.takable && !r.stopped && r.mode == Admission::Guaranteed) {
                continue;
            }
            let pool = self.teams.pool_of_model[t][r.model];
            let gone = self.victims.taken.get(&(t, pool)).copied().unwrap_or(0);
            if self.acct.alloc[t][pool].saturating_sub(gone) > self.teams.pools[t][pool].guaranteed
            {
                self.victims.surplus[r.model].push(i);
                self.victims.surplus_milli[r.model] += r.milli;
            }
        }
        self.victims.pinned_pending = self.state.jobs.queues.values().any(|q| q.pinned > 0);
        // Runs away from home matter only to a waiting job that cannot be preempted.
        let away_runs = if self.victims.pinned_pending {
            self.runs.len()
        } else {
            0
        };
        for i in 0..away_runs {
            let r = &self.runs[i];
            let away =
                !r.stopped && r.mode == Admission::Guaranteed && r.takable && !self.run_at_home(i);
            if away {
                self.victims.away_milli[r.model] += r.milli;
            }
        }
        // Victims are put in order when a reclaim first asks (`sort_victims`): most plans
        // reclaim nothing.
    }

    /// Puts each model's victims in order, cheapest to stop first, once per plan: their
    /// keys do not change during a plan.
    pub(super) fn sort_victims(&mut self) {
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
    /// are leaving.
    pub(super) fn classify(&mut self) {
        /// An entry: a running job (its index in `runs`), or past `runs.len()` a job waiting
        /// on a priority preemption's hold (its index in `waiting`, offset).
        type Entry = usize;
        let mut waiting: Vec<(JobId, usize, u64)> = Vec::new();
        let first_waiting = self.runs.len();
        let mut by_team: Vec<Vec<(u128, Entry)>> = vec![Vec::new(); self.teams.names.len()];
        for (i, r) in self.runs.iter_mut().enumerate() {
            if let Some(t) = r.team {
                let run = r.job.state.run().expect("holding");
                let leaving = matches!(&r.job.state,
                    JobState::Stopping(_, s) if s.cause == StopCause::Priority);
                let key = classify_key(
                    leaving,
                    r.yielded,
                    run.admission,
                    run.started_s,
                    r.job.spec.id,
                );
                by_team[t].push((key, i));
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
                let milli = job.spec.milli_total();
                if self.priority_hold(job, hold) {
                    let key = classify_key(false, false, Admission::Guaranteed, Secs::MAX, *b);
                    by_team[t].push((key, first_waiting + waiting.len()));
                    waiting.push((*b, model, milli));
                    continue;
                }
                // A reclaim's hold is inside the guarantee, before the team's running jobs;
                // one that took idle runs for a borrowing job (`take_yielded`) is outside it:
                // it never pushes a running job of its team out of the guarantee.
                if hold.borrowing {
                    continue;
                }
                let pool = self.teams.pool_of_model[t][model];
                if self.acct.guaranteed_used[t][pool] + milli > self.teams.pools[t][pool].guaranteed
                {
                    continue;
                }
                self.acct.guaranteed_used[t][pool] += milli;
                self.acct.guarantee_set_aside.insert(*b, (t, pool, milli));
            }
        }
        for (t, mut keyed) in by_team.into_iter().enumerate() {
            if keyed.is_empty() {
                continue;
            }
            let mut used = std::mem::take(&mut self.acct.guaranteed_used[t]);
            // Only `default` counts in order; and where every entry fits the guarantee
            // whatever the order, the order changes nothing: most teams, most plans.
            if self.policy == PolicyKind::Default {
                let mut all = used.clone();
                for &(_, e) in &keyed {
                    let (model, milli) = match e {
                        i if i < first_waiting => {
                            let r = &self.runs[i];
                            if r.yielded {
                                continue;
                            }
                            (r.model, r.milli)
                        }
                        w => (waiting[w - first_waiting].1, waiting[w - first_waiting].2),
                    };
                    all[self.teams.pool_of_model[t][model]] += milli;
                }
                let fits = all
                    .iter()
                    .zip(&self.teams.pools[t])
                    .all(|(&a, p)| a <= p.guaranteed);
                if !fits {
                    keyed.sort_unstable();
                }
            }
            for (_, entry) in keyed {
                match entry {
                    i if i < first_waiting => {
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
                        } else {
                            r.mode = Admission::Borrowed;
                        }
                    }
                    w => {
                        let (b, model, milli) = waiting[w - first_waiting];
                        let pool = self.teams.pool_of_model[t][model];
                        if used[pool] + milli <= self.teams.pools[t][pool].guaranteed {
                            used[pool] += milli;
                            self.acct.guarantee_set_aside.insert(b, (t, pool, milli));
                        }
                    }
                }
            }
            self.acct.guaranteed_used[t] = used;
        }
    }

    /// The order victims are taken in: idle runs that yielded first, then least work lost,
    /// then the youngest, then by id.
    pub(super) fn victim_key(&self, i: usize) -> (bool, u64, Reverse<Secs>, JobId) {
        let r = &self.runs[i];
        let started = r.job.state.run().map_or(0, |run| run.started_s);
        (!r.yielded, r.lost_gpu_s, Reverse(started), r.job.spec.id)
    }

    /// The idle policy of the job's team (the default where the team is gone).
    pub(super) fn idle_policy_of(&self, job: &Job) -> IdlePolicy {
        self.state
            .teams
            .get(&job.spec.team)
            .map_or(IdlePolicy::default(), |t| t.spec.idle_policy)
    }

    /// Whether every task of run `i` sits on a node that is home to its team.
    pub(super) fn run_at_home(&self, i: usize) -> bool {
        let r = &self.runs[i];
        let Some(t) = r.team else { return false };
        r.placement.iter().all(|task| {
            self.view
                .dense(task.node)
                .is_some_and(|n| self.homes.at_home(t, r.model, n))
        })
    }

    /// Idle runs past the window: flagged, and stopped where their team's policy releases
    /// them and their time has come (yielding is decided in `scan_running`).
    pub(super) fn idle_reclaim(&mut self) {
        let window = self.cfg.idle_window_s;
        for i in 0..self.runs.len() {
            let r = &self.runs[i];
            if r.stopped {
                continue;
            }
            let run = r.job.state.run().expect("holding");
            let Some(since) = run.idle_since_s else {
                continue;
            };
            if self.now.saturating_sub(since) < window {
                continue;
            }
            let policy = self.idle_policy_of(r.job);
            let action = match policy {
                IdlePolicy::Warn => IdleAction::Warn,
                _ => match policy.release_at(since, window) {
                    Some(due) if self.now >= due => IdleAction::Released,
                    release_at_s => IdleAction::Yield { release_at_s },
                },
            };
            let r = &mut self.runs[i];
            if action == IdleAction::Released {
                r.stopped = true;
                r.released = true;
                self.out.stops.push(StopOrder {
                    job: r.job.spec.id,
                    cause: StopCause::Idle,
                    beneficiary: None,
                    lost_gpu_s: r.lost_gpu_s,
                    borrowing: false,
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

    pub(super) fn add_alloc(&mut self, team: usize, model: usize, milli: u64) {
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            self.acct.alloc[a][pool] += milli;
            self.acct.alloc_total[a] += milli;
        }
    }

    /// Counts a job's CPU against its team and the team's ancestors.
    pub(super) fn add_cpu(&mut self, team: usize, spec: &JobSpec) {
        for &a in &self.teams.lineage[team] {
            self.acct.cpu[a] += spec.cpu_milli * u64::from(spec.tasks);
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

/// The order in which `classify` counts a team's runs inside its guarantee, packed into one
/// integer so that sorting compares no tuples: leaving (a priority preemption's victim),
/// yielded (idle), admitted at start as, started (clamped below 2^61 s; waiting entries
/// sort after every run of the same class), then the id, which makes keys unique.
fn classify_key(
    leaving: bool,
    yielded: bool,
    admission: Admission,
    started_s: Secs,
    id: JobId,
) -> u128 {
    const START_BITS: u32 = 61;
    let started = started_s.min((1 << START_BITS) - 1);
    let class = (u64::from(leaving) << 2) | (u64::from(yielded) << 1) | admission as u64;
    let hi = (class << START_BITS) | started;
    (u128::from(hi) << 64) | u128::from(id.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn admission() -> impl Strategy<Value = Admission> {
        prop_oneof![Just(Admission::Guaranteed), Just(Admission::Borrowed)]
    }

    fn started() -> impl Strategy<Value = Secs> {
        prop_oneof![0..10_000u64, 0..(1u64 << 61) - 1, Just(Secs::MAX)]
    }

    proptest! {
        /// The packed key orders entries exactly as the tuple it packs.
        #[test]
        fn classify_key_orders_as_its_tuple(
            a in (any::<bool>(), any::<bool>(), admission(), started(), any::<u64>()),
            b in (any::<bool>(), any::<bool>(), admission(), started(), any::<u64>()),
        ) {
            let key = |k: (bool, bool, Admission, Secs, u64)| {
                classify_key(k.0, k.1, k.2, k.3, JobId(k.4))
            };
            prop_assert_eq!(key(a).cmp(&key(b)), a.cmp(&b));
        }
    }
}
