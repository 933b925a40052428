//! Holds: GPUs that earlier reclaims freed, kept for the jobs they were freed for. They are
//! occupied first, so nothing else takes them; then each waiting job starts on them, or keeps
//! waiting for its victims with the free part of its future placement claimed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{JobId, JobSpec, PolicyKind, Secs, MILLI_PER_GPU};
use crate::state::{Admission, Hold, Job, JobState, TaskPlacement};

use super::place::{self, Ask};
use super::planner::Planner;
use super::reserve::Promise;
use super::view::View;
use super::{Reason, Reservation};

/// The key of the "held nodes only" restriction of a beneficiary's placement (`Ask::within`;
/// other keys are `2 * team` for a home and `2 * team + 1` for where work that cannot be
/// preempted may borrow). Such asks are never memoised; the key only has to differ.
const HELD_NODES: usize = usize::MAX / 2;

/// Amounts actually taken from the view on someone's behalf, to give back exactly.
pub(super) struct Taken {
    pub(super) node: u32,
    pub(super) gpu: Option<u32>,
    pub(super) milli: i64,
    pub(super) cpu: i64,
    pub(super) mem: i64,
}

impl<'a> Planner<'a> {
    pub(super) fn occupy(view: &mut View, task: &TaskPlacement, cpu: u64, mem: u64) -> Vec<Taken> {
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

    pub(super) fn give_back(view: &mut View, taken: &[Taken]) {
        for t in taken {
            let gpus: Vec<u32> = t.gpu.into_iter().collect();
            view.adjust(t.node, &gpus, -t.milli, -t.cpu, -t.mem);
        }
    }

    /// Marks GPUs that earlier reclaims freed as taken, on behalf of the jobs they were
    /// freed for, so nothing else takes them first.
    pub(super) fn occupy_holds(&mut self) -> BTreeMap<JobId, Vec<Taken>> {
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
    pub(super) fn serve_holds(&mut self, held: BTreeMap<JobId, Vec<Taken>>) -> BTreeSet<JobId> {
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
            if let Some((st, pool, milli)) = self.acct.guarantee_set_aside.remove(&b) {
                self.acct.guaranteed_used[st][pool] -= milli;
            }
            let (end_s, _) = self.end_of(spec, self.now);
            // On the held nodes first: their GPUs were freed for it. Elsewhere only where they
            // do not suffice: a free GPU elsewhere may be one a job ranked before it is about
            // to be promised (this plan's reservations are made after the holds are served),
            // and the victims would have been stopped for nothing.
            let mut held_nodes = vec![0u64; self.view.ids.len().div_ceil(64)];
            for x in &taken {
                super::homes::set_bit(&mut held_nodes, x.node);
            }
            let within = Some((HELD_NODES, held_nodes.as_slice()));
            let fit = self
                .first_fit(&self.view, spec, t, end_s, &[], within)
                .or_else(|| self.first_fit(&self.view, spec, t, end_s, &[], None));
            if let Some((m, _, p)) = fit {
                let class = self.class_of(t, m, spec.milli_total());
                if !self.may_borrow(spec, class) {
                    // No longer inside its guarantee (lowered meanwhile): it may not borrow.
                    let team = spec.team.clone();
                    self.pend(b, Reason::NeedsTimeLimit { team }, None);
                    handled.insert(b);
                    continue;
                }
                self.start(job, t, m, p, class);
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
            // Victims of its own team (a priority preemption) still count against the team's
            // `max`; once they have exited they no longer do.
            let mut freed = vec![0u64; self.models.len()];
            for v in &stopping {
                let run = v.state.run().expect("stopping");
                future.give(&run.placement, v.spec.cpu_milli, v.spec.mem_mib);
                if v.team_id == job.team_id {
                    if let Some(m) = self.model_of(&run.placement) {
                        freed[m] += v.spec.milli_total();
                    }
                }
            }
            if let Some((m, g, p)) = self.first_fit(&future, spec, t, end_s, &freed, None) {
                let class = self.class_of(t, m, spec.milli_total());
                if !self.may_borrow(spec, class) {
                    let team = spec.team.clone();
                    self.pend(b, Reason::NeedsTimeLimit { team }, None);
                    handled.insert(b);
                    continue;
                }
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
                        lower_priority: self.priority_hold(job, hold),
                    },
                    Some(ready_by_s.max(self.now)),
                );
                handled.insert(b);
            }
        }
        handled
    }

    /// Whether a hold was left by a priority preemption: every victim is of the job's own
    /// team (a reclaim's are all of other teams).
    pub(super) fn priority_hold(&self, job: &Job, hold: &Hold) -> bool {
        hold.victims
            .iter()
            .all(|v| self.state.job(*v).is_some_and(|v| v.team_id == job.team_id))
    }

    /// The first GPU model, in the job's order of candidates, on which its team may grow by
    /// the job (once runs of the team holding `freed[model]` milli-GPUs have exited) and
    /// `view` has a placement (on the nodes of `within` only, where given): (model, group,
    /// placement).
    fn first_fit(
        &self,
        view: &View,
        spec: &JobSpec,
        team: usize,
        end_s: Secs,
        freed: &[u64],
        within: Option<(usize, &[u64])>,
    ) -> Option<(usize, usize, Vec<TaskPlacement>)> {
        // A CPU cap holds on every model alike.
        if self.over_cpu_max(team, spec).is_some() {
            return None;
        }
        for m in self.candidate_models(spec) {
            let freed = freed.get(m).copied().unwrap_or(0);
            if self
                .over_max_after(team, m, spec.milli_total(), freed)
                .is_some()
            {
                continue;
            }
            let Some(g) = self.group(team, m) else {
                continue;
            };
            let ask = Ask::new(spec, g, end_s).within(within);
            if let Some(p) = place::find(view, &ask) {
                return Some((m, g, p));
            }
        }
        None
    }

    /// Records GPUs promised to a job waiting for its victims: they count against its team
    /// now, and reservation probes see them occupied from `from_s`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim(
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
        self.account(team, spec, model, class);
        let (end_s, _) = self.end_of(spec, from_s);
        self.push_reservation(Promise {
            group,
            counted_from_s: Secs::MAX,
            end_s,
            placement: placement.to_vec(),
            cpu: spec.cpu_milli,
            mem: spec.mem_mib,
        });
    }
}
