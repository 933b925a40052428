//! Priorities inside a team: a pending job that cannot start now (no placement, or its team
//! at a `max`) may preempt its own team's preemptible jobs of strictly lower priority that
//! are past their minimum run time, cheapest lost work first, with reclaim's victim choice
//! (`reclaim.rs`: per node for one task; free, place, prune for a gang) and reclaim's holds,
//! grace periods and explanation. Another team's work is never touched: its protection is
//! its guarantee, and priorities order a team's own jobs only. Jobs belong to leaf teams
//! (a submission to a team with sub-teams is refused), so sub-teams of one parent never
//! preempt each other either: each one's protection is its own guarantee.
//!
//! Accounting: the victims count against their team's `max` until they exit, and the
//! beneficiary is counted too, so nothing else of the team starts in their place meanwhile;
//! only the beneficiary's own `max` check counts its victims as gone (it starts once they
//! have exited, so the team never holds more than its `max`). In the guarantee, the
//! beneficiary takes its victims' place: they leave it (`classify` puts them last), and the
//! beneficiary is guaranteed if it fits in what they held there and what was left, as if it
//! had started guaranteed after the team's other guaranteed jobs, before any that started
//! borrowed (`running.rs`). A borrowed victim's GPUs therefore give a guaranteed place only
//! where the team had one to give, and a guaranteed victim's place goes to the beneficiary,
//! not to the team's borrowed jobs.
//!
//! `default` only, like reclaim: `fifo` preempts nothing, and `static` partitions run their
//! queue in priority order and preempt nothing either.

use std::collections::BTreeMap;

use crate::model::PolicyKind;
use crate::state::{Admission, Job, JobState, StopCause};

use super::passes::keep_to;
use super::place::Ask;
use super::planner::{shape_of, Planner, MAX_FAILED_ATTEMPTS};

/// The runs a priority preemption may stop, found once per plan.
#[derive(Default)]
pub(super) struct Outranked {
    /// `(team, model)`: preemptible runs past their minimum run time with a priority below
    /// some pending job of their team, cheapest to stop first.
    pub(super) by_team_model: BTreeMap<(usize, usize), Vec<usize>>,
    /// `[team]` the lowest priority among those runs.
    pub(super) floor: Vec<Option<i32>>,
    /// How many of those runs are not stopped yet (an upper bound).
    pub(super) left: usize,
}

impl<'a> Planner<'a> {
    /// Finds the runs that some pending job of their own team outranks (`default` only).
    pub(super) fn find_outranked(&mut self) {
        let n = self.teams.names.len();
        let mut top: Vec<Option<i32>> = vec![None; n];
        // A queue's head has its team's highest priority.
        for (&id, queue) in &self.state.jobs.queues {
            let t = self.team_by_id.get(id as usize).copied().flatten();
            if let (Some(t), Some(head)) = (t, queue.order.first()) {
                top[t] = top[t].max(Some(head.0 .0));
            }
        }
        let mut out = Outranked {
            floor: vec![None; n],
            ..Outranked::default()
        };
        // From the tallies: where no team outranks its lowest run, no run is outranked, and
        // the runs need not be listed for it.
        if let Some(lowest) = &self.lowest_takable {
            if !lowest
                .iter()
                .zip(&top)
                .any(|(&l, &p)| l.zip(p).is_some_and(|(l, p)| l < p))
            {
                self.outranked = out;
                return;
            }
        }
        self.ensure_runs();
        for (i, r) in self.runs.iter().enumerate() {
            let Some(t) = r.team else { continue };
            let note = r.note;
            let eligible = !r.stopped
                && note.preemptible
                && top[t].is_some_and(|p| note.priority < p)
                && self.now.saturating_sub(note.started_s) >= note.min_run_s;
            if eligible {
                out.by_team_model.entry((t, r.model)).or_default().push(i);
                out.floor[t] = Some(out.floor[t].map_or(note.priority, |f| f.min(note.priority)));
                out.left += 1;
            }
        }
        for list in out.by_team_model.values_mut() {
            list.sort_by_key(|&i| self.victim_key(i));
        }
        self.outranked = out;
    }

    /// No priority preemption can happen in the rest of this plan.
    pub(super) fn priority_exhausted(&self) -> bool {
        self.policy != PolicyKind::Default
            || self.outranked.left == 0
            || self.attempts.priority >= self.cfg.max_reclaims
            || self.attempts.failed_priority >= MAX_FAILED_ATTEMPTS
    }

    /// Preempts the job's own team's lower-priority work to make room for it, on the first
    /// model (of those `admissible`, then those `capped` by a `max`) where that works: room
    /// for its placement, and under every `max` of the team and its ancestors once the
    /// victims are gone.
    pub(super) fn preempt_for_priority(
        &mut self,
        job: &Job,
        t: usize,
        admissible: &[(usize, usize, Admission)],
        capped: &[(usize, usize)],
    ) -> bool {
        let spec = &job.spec;
        if self.priority_exhausted()
            || job.stopped_idle
            || self.outranked.floor[t].is_none_or(|f| spec.priority <= f)
            || self.waits_on_victims(job)
        {
            return false;
        }
        self.settle();
        let milli = spec.milli_total();
        let (end_s, _) = self.end_of(spec, self.now);
        let safe = self.safe;
        let capped: Vec<(usize, usize, Admission)> = capped
            .iter()
            .map(|&(m, g)| (m, g, self.class_of(t, m, milli)))
            .collect();
        for &(m, g, class) in admissible.iter().chain(&capped) {
            let Some(list) = self.outranked.by_team_model.get(&(t, m)) else {
                continue;
            };
            let candidates: Vec<usize> = list
                .iter()
                .copied()
                .filter(|&i| !self.runs[i].stopped && self.runs[i].note.priority < spec.priority)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Cheap bounds first: the quota the candidates give back, and the free GPUs plus
            // every GPU a candidate touches.
            let need = self.beyond_max(t, m, milli);
            let freeable: u64 = candidates.iter().map(|&i| self.runs[i].milli).sum();
            let touched: u64 = candidates.iter().map(|&i| self.runs[i].touched).sum();
            if freeable < need || self.view.group_free_milli[g] + touched < milli {
                continue;
            }
            // A job that failed outranks no fewer runs than one of lower priority, and its
            // end was no later: the same shape fails too.
            let memo = shape_of(spec, g).map(|s| (t, spec.preemptible, s));
            if let Some(k) = &memo {
                let failed = self.memo.no_priority.get(k).is_some_and(|fails| {
                    fails
                        .iter()
                        .any(|&(p, end)| p >= spec.priority && end_s >= end)
                });
                if failed {
                    continue;
                }
            }
            let within = keep_to(safe, t, spec, class, self.homeless(t, m));
            let ask = Ask::new(spec, g, end_s).within(within);
            // Where it fits already, only its team's `max` stands in the way.
            let found = match self.find_memo(&ask, shape_of(spec, g)) {
                Some(p) => Some((Vec::new(), p)),
                None => self.victims_and_place(&ask, &candidates, None),
            };
            let Some((mut chosen, placement)) = found else {
                self.attempts.failed_priority += 1;
                if let Some(k) = memo {
                    self.memo
                        .no_priority
                        .entry(k)
                        .or_default()
                        .push((spec.priority, end_s));
                }
                continue;
            };
            // Then, cheapest first, enough of the others to bring the team within its max.
            let mut freed: u64 = chosen.iter().map(|&i| self.runs[i].milli).sum();
            for &i in &candidates {
                if freed >= need {
                    break;
                }
                if !chosen.contains(&i) {
                    chosen.push(i);
                    freed += self.runs[i].milli;
                }
            }
            if freed < need || chosen.is_empty() {
                continue;
            }
            for &i in &chosen {
                let r = &self.runs[i];
                if r.mode == Admission::Borrowed {
                    // It was a victim for reclaim too.
                    let gpus = r.touched;
                    self.victims.milli_left[m] = self.victims.milli_left[m].saturating_sub(gpus);
                }
            }
            self.outranked.left = self.outranked.left.saturating_sub(chosen.len());
            self.attempts.priority += 1;
            let class = self.take_place(t, m, milli, &chosen);
            self.preempt(
                job,
                t,
                (m, g),
                &chosen,
                placement,
                (StopCause::Priority, class),
            );
            return true;
        }
        false
    }

    /// The victims leave the team's guarantee (the next plans classify them last), and the
    /// job is admitted in their place for the rest of this plan: guaranteed if it fits in
    /// what they held inside the guarantee and what was left of it. The next plans also rank
    /// it ahead of the team's jobs that started borrowed, so they may find room for it where
    /// this one did not; it is admitted for good when it starts.
    fn take_place(&mut self, t: usize, m: usize, milli: u64, victims: &[usize]) -> Admission {
        let pool = self.teams.pool_of_model[t][m];
        for &i in victims {
            let r = &self.runs[i];
            if r.mode == Admission::Guaranteed && self.teams.pool_of_model[t][r.model] == pool {
                let used = &mut self.acct.guaranteed_used[t][pool];
                *used = used.saturating_sub(r.milli);
            }
        }
        self.class_of(t, m, milli)
    }

    /// Milli-GPUs by which starting `milli` more on `model` would take the team or an
    /// ancestor above its `max` (0 where it would not).
    pub(super) fn beyond_max(&self, team: usize, model: usize, milli: u64) -> u64 {
        let mut over = 0;
        for &a in &self.teams.lineage[team] {
            let pool = self.teams.pool_of_model[a][model];
            if let Some(max) = self.teams.pools[a][pool].max {
                over = over.max((self.acct.alloc[a][pool] + milli).saturating_sub(max));
            }
        }
        over
    }

    /// Whether the job holds GPUs freed for it by jobs that are still stopping: it waits for
    /// them, and preempts no more.
    pub(super) fn waits_on_victims(&self, job: &Job) -> bool {
        self.state.holds.get(&job.spec.id).is_some_and(|hold| {
            self.now <= hold.until_s
                && hold.victims.iter().any(|v| {
                    self.state
                        .job(*v)
                        .is_some_and(|v| matches!(v.state, JobState::Stopping(..)))
                })
        })
    }
}
