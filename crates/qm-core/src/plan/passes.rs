//! The passes over pending jobs. `ordered_pass` (default and static): each team's queue in
//! plan order, a heap of every team's head so that the team with the lowest standing is
//! served next; first only work inside guarantees (reclaiming for it), then everything left,
//! borrowing. `consider` decides one job: start, reclaim, preempt its team's lower-priority
//! work, reserve, or why not. `fifo_pass`:
//! one queue by submission time, blocked by its head.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::model::{JobId, JobSpec, PolicyKind, Secs};
use crate::state::{Admission, Job, JobState, TaskPlacement};

use super::homes::bit;
use super::order::{Lane, RankKey};
use super::place::{self, Ask};
use super::planner::{shape_of, Phase, Planner};
use super::Reason;

/// A job that changed nothing, the decision count when it was considered, and whether it was
/// decided (in the guaranteed phase, undecided jobs go on to borrow).
pub(super) type Fate<'a> = (&'a Job, (usize, usize, usize, usize), bool);

impl<'a> Planner<'a> {
    /// Pending jobs that a pass considers, with the dependency-blocked ones explained.
    pub(super) fn queue(&mut self, handled: &BTreeSet<JobId>) -> Vec<&'a Job> {
        let mut queue = Vec::new();
        let state = self.state;
        for job in state.live_jobs() {
            if job.state != JobState::Pending || handled.contains(&job.spec.id) {
                continue;
            }
            if let Some(reason) = self.dep_block(job) {
                self.pend(job.spec.id, reason, None);
                continue;
            }
            queue.push(job);
        }
        queue
    }

    pub(super) fn fifo_pass(&mut self, handled: &BTreeSet<JobId>) {
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
            if let Some(reason) = self.array_full(spec) {
                self.pend(spec.id, reason, None);
                continue;
            }
            let t = self.team_of(job);
            let (end_s, _) = self.end_of(spec, self.now);
            let mut started = false;
            for m in self.candidate_models(spec) {
                let ask = Ask {
                    spec,
                    group: m,
                    end_s,
                    ignore_guards: true,
                    within: None,
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

    pub(super) fn no_placement(&mut self, job: &Job, group: usize) {
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
            let m = if self.policy == PolicyKind::Static && self.leaf_count > 0 {
                group / self.leaf_count
            } else {
                group
            };
            self.models.get(m).cloned()
        });
        if group < self.view.buckets.len() {
            self.eta.group_of.insert(spec.id, group);
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

    pub(super) fn ordered_pass(&mut self, handled: &BTreeSet<JobId>) {
        if self.explain {
            self.explain_unqueued(handled);
        }
        let state = self.state;
        let mut lanes: Vec<Lane<'a>> = state
            .jobs
            .queues
            .iter()
            .filter_map(|(&id, q)| {
                let t = self.team_by_id.get(id as usize).copied().flatten()?;
                Some(Lane::new(t, q))
            })
            .collect();
        lanes.sort_by_key(|l| l.team);
        for lane in &mut lanes {
            self.advance(lane, handled);
        }
        // Phase 1, guaranteed work: each team offers its first job that fits its guarantee;
        // the jobs it skips (too big for what is left of the guarantee, which only shrinks
        // during a plan) wait for phase 2 in their order. Phase 2, borrowing: every team
        // offers its skipped jobs in order.
        let mut heap: BinaryHeap<Reverse<(RankKey, usize)>> = BinaryHeap::new();
        for (i, lane) in lanes.iter_mut().enumerate() {
            if let Some(key) = self.next_guaranteed(lane, handled) {
                heap.push(Reverse((key, i)));
            }
        }
        // In `decide`, the pass ends once nothing left can start, reclaim or preempt: no job
        // left (in the queues or set aside for phase 2) fits the free capacity of any group,
        // and no reclaim or priority preemption can happen. What is left is bounded from
        // below by each queue's asks less those of the jobs that have left the pass.
        let least_left = |lanes: &[Lane<'a>]| {
            lanes
                .iter()
                .filter(|l| !l.spent)
                .map(|l| l.least_left(false))
                .min()
                .unwrap_or(u64::MAX)
        };
        let mut pops = 0usize;
        let mut last_fail: Vec<Option<Fate<'a>>> = vec![None; lanes.len()];
        // Each pop consumes one job; every job is pushed at most once per phase.
        while let Some(Reverse((_, i))) = heap.pop() {
            // The check only matters once it can succeed; every 8th pop is enough (it stays
            // true once true: free capacity only shrinks, what is left only grows).
            pops += 1;
            if !self.explain
                && pops % 8 == 1
                && self.reclaim_exhausted()
                && self.priority_exhausted()
                && self.cannot_fit(least_left(&lanes))
            {
                return;
            }
            if self.lane_spent(&lanes[i]) {
                lanes[i].spent = true;
                continue;
            }
            let t = lanes[i].team;
            let job = lanes[i].head.expect("a job at the head");
            self.advance(&mut lanes[i], handled);
            // A job like the team's last one that changed nothing, with nothing changed since
            // (by any team), fares as that one did.
            let fate = last_fail[i]
                .filter(|&(f, at, _)| at == self.decisions() && self.same_fate(f, job))
                .map(|(_, _, decided)| decided);
            // A job owed its guarantee's shape (`next_guaranteed`) that could start now is
            // left to the borrowing phase, where it starts at its turn; one that cannot is
            // decided here, at its team's standing among guaranteed work: it reserves ahead
            // of every borrower and of the guaranteed jobs ranked after it (ARCHITECTURE.md,
            // "A job passed inside its team's guarantee reserves first").
            let owed = lanes[i].owed.take() == Some(job.spec.id);
            let decided = match fate {
                _ if owed && self.could_start_now(job, t) => false,
                _ if owed => self.consider(job, t, Phase::Borrowing),
                Some(decided) => decided,
                None => {
                    let before = self.decisions();
                    let decided = self.consider(job, t, Phase::Guaranteed);
                    last_fail[i] = (!self.explain && self.decisions() == before)
                        .then_some((job, before, decided));
                    decided
                }
            };
            if decided {
                lanes[i].gone(job);
            } else {
                // It may still borrow elsewhere: phase 2 decides.
                lanes[i].skipped.push(job);
            }
            // As in phase 2: the team's next jobs that would be popped right now anyway and
            // share the fate of its last job that changed nothing are passed over here.
            while let Some(key) = self.next_guaranteed(&mut lanes[i], handled) {
                let next = lanes[i].head.expect("a job at the head");
                let fate = last_fail[i]
                    .filter(|&(f, at, _)| at == self.decisions() && self.same_fate(f, next))
                    .map(|(_, _, decided)| decided);
                let first = heap.peek().is_none_or(|Reverse(top)| (key, i) < *top);
                match fate {
                    Some(decided) if first && lanes[i].owed != Some(next.spec.id) => {
                        self.advance(&mut lanes[i], handled);
                        if decided {
                            lanes[i].gone(next);
                        } else {
                            lanes[i].skipped.push(next);
                        }
                    }
                    _ => {
                        heap.push(Reverse((key, i)));
                        break;
                    }
                }
            }
        }
        let mut last_fail: Vec<Option<Fate<'a>>> = vec![None; lanes.len()];
        for (i, lane) in lanes.iter().enumerate().filter(|(_, l)| !l.spent) {
            if let Some(job) = self.borrow_head(lane) {
                heap.push(Reverse((self.rank(job, lane.team), i)));
            }
        }
        // Borrowing reclaims nothing (it takes only idle runs that yielded): once no job
        // left can fit the free capacity of any group and no priority preemption or taking
        // of idle runs can happen, nothing left can start (reservations only tighten).
        let over = |p: &Self, lanes: &[Lane<'a>]| {
            !p.explain
                && p.priority_exhausted()
                && p.yield_exhausted()
                && p.cannot_fit(least_left(lanes))
        };
        while let Some(Reverse((_, i))) = heap.pop() {
            pops += 1;
            if pops % 8 == 1 && over(self, &lanes) {
                return;
            }
            if self.lane_spent(&lanes[i]) {
                continue;
            }
            let t = lanes[i].team;
            let job = self.borrow_take(&mut lanes[i], handled);
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
            // A long run of such jobs is walked only while something could still start: the
            // pass's end is checked here too, as at the pops (a team's lane whose jobs all
            // share one standing stays ahead of the others and would be walked to its end).
            let mut next_key = None;
            let mut walked = 0usize;
            while let Some(next) = self.borrow_head(&lanes[i]) {
                let key = self.rank(next, t);
                let fails = last_fail[i]
                    .is_some_and(|(f, at, _)| at == self.decisions() && self.same_fate(f, next));
                let first = heap.peek().is_none_or(|Reverse(top)| (key, i) < *top);
                if !(fails && first) {
                    next_key = Some(key);
                    break;
                }
                self.borrow_take(&mut lanes[i], handled);
                walked += 1;
                if walked.is_multiple_of(8) && over(self, &lanes) {
                    return;
                }
            }
            if let Some(key) = next_key {
                heap.push(Reverse((key, i)));
            }
        }
        for lane in &lanes {
            for job in &lane.filled {
                if let Some(reason) = self.array_full(&job.spec) {
                    self.pend(job.spec.id, reason, None);
                }
            }
        }
    }

    /// In `decide`, whether nothing left in a lane can change the plan: no reclaim or
    /// priority preemption can happen any more, and on every group the team may use, its
    /// least ask left exceeds the free capacity (which only shrinks) and the group's
    /// reservations are used up (so its jobs neither start nor reserve, and count no failed
    /// attempt). The lane is then dropped unwalked. Where teams share groups (`default`)
    /// this is rare before the whole pass can end; under `static`, where each team has its
    /// own, a full partition no longer costs a walk of its queue at every plan.
    fn lane_spent(&self, lane: &Lane<'a>) -> bool {
        if self.explain || !self.reclaim_exhausted() || !self.priority_exhausted() {
            return false;
        }
        let least = lane.least_left(false);
        (0..self.models.len()).all(|m| match self.group(lane.team, m) {
            None => true,
            Some(g) => {
                self.view.group_free_milli.get(g).is_none_or(|&f| f < least)
                    && self
                        .timeline
                        .reservations_by_group
                        .get(&g)
                        .is_some_and(|&r| r >= self.cfg.max_reservations)
            }
        })
    }

    /// Whether a job's `block` comes from this plan's own starts filling its array: it was
    /// free to start when the pass began (and so not explained then).
    fn filled_in_plan(&self, spec: &JobSpec, block: &Reason) -> bool {
        matches!(block, Reason::ArrayLimit { .. })
            && spec
                .array
                .and_then(|a| a.max_running.map(|max| (a.array, max)))
                .is_some_and(|(a, max)| self.state.array_holding(a) < max as usize)
    }

    /// Explains the pending jobs no lane offers: those waiting on a dependency, and those of
    /// a team the plan does not know (`plan` only).
    fn explain_unqueued(&mut self, handled: &BTreeSet<JobId>) {
        let state = self.state;
        let pending = || {
            state
                .live_jobs()
                .filter(|j| j.state == JobState::Pending && !handled.contains(&j.spec.id))
        };
        for job in pending() {
            if let Some(reason) = self.dep_block(job) {
                self.pend(job.spec.id, reason, None);
            }
        }
        for job in pending() {
            if self.team_of(job).is_none() && self.deps_ready(job) {
                let team = job.spec.team.clone();
                self.pend(job.spec.id, Reason::NoPartition { team }, None);
            }
        }
    }

    /// Moves a lane's head to its next job that a pass considers: not served by a hold, not
    /// waiting on a dependency.
    fn advance(&self, lane: &mut Lane<'a>, handled: &BTreeSet<JobId>) {
        lane.head = None;
        while let Some(id) = lane.next_key() {
            let job = self.state.jobs.get(&id).expect("a queued job is live");
            if handled.contains(&id) {
                lane.gone(job);
                continue;
            }
            if let Some(reason) = self.dep_block(job) {
                if self.explain && self.filled_in_plan(&job.spec, &reason) {
                    lane.filled.push(job);
                }
                lane.gone(job);
                continue;
            }
            lane.head = Some(job);
            return;
        }
    }

    /// The next job of a lane's borrowing phase: its skipped jobs, then its tail.
    fn borrow_head(&self, lane: &Lane<'a>) -> Option<&'a Job> {
        match lane.skipped.get(lane.taken) {
            Some(&job) => Some(job),
            None if lane.tail_skipped => lane.head,
            None => None,
        }
    }

    /// Takes that job.
    fn borrow_take(&self, lane: &mut Lane<'a>, handled: &BTreeSet<JobId>) -> &'a Job {
        let job = self.borrow_head(lane).expect("a job to borrow for");
        if lane.taken < lane.skipped.len() {
            lane.taken += 1;
        } else {
            self.advance(lane, handled);
        }
        lane.gone(job);
        job
    }

    /// Whether `next`, of the same team and right after `failed` in its queue, is certain to
    /// be decided as `failed` was when nothing changed in between: the same demands, both
    /// preemptible or neither (which decides where it may run), of the same array or none
    /// (an array's running limit holds back its own jobs only), no node selector, and an end
    /// no earlier (capacity only shrinks and guards only tighten during a plan, and every
    /// memo is keyed by these). `next` has no higher priority (the queue's order), so it
    /// outranks no more of its team's runs; `failed` must not have been kept from preempting
    /// by a hold of its own, nor by an idle stop (`Job::stopped_idle`) that `next` lacks.
    pub(super) fn same_fate(&self, failed: &Job, next: &Job) -> bool {
        let (a, b) = (&failed.spec, &next.spec);
        (!failed.stopped_idle || next.stopped_idle)
            && a.tasks == b.tasks
            && a.gpu == b.gpu
            && a.preemptible == b.preemptible
            && a.cpu_milli == b.cpu_milli
            && a.mem_mib == b.mem_mib
            && a.gpu_model == b.gpu_model
            && a.array.map(|x| x.array) == b.array.map(|x| x.array)
            && a.node_selector.is_empty()
            && b.node_selector.is_empty()
            && self.end_of(b, self.now).0 >= self.end_of(a, self.now).0
            && (self.state.holds.is_empty() || !self.state.holds.contains_key(&a.id))
    }

    /// Moves a lane's head to its next job inside the guarantee, setting aside the ones it
    /// passes; returns that job's rank. Once no job left in the lane can fit what is left of
    /// the team's guarantee on any model, the rest of the lane is set aside whole, unwalked.
    pub(super) fn next_guaranteed(
        &self,
        lane: &mut Lane<'a>,
        handled: &BTreeSet<JobId>,
    ) -> Option<RankKey> {
        let t = lane.team;
        if lane.tail_skipped {
            return None;
        }
        while let Some(job) = lane.head {
            // A team's first job set aside that fits its guarantee whole, while work of the
            // team that started after it was submitted holds part of the guarantee: in a
            // partition of its own it would head the queue and hold a reservation, and
            // younger work would only fill in around it. Offered among guaranteed work
            // once per plan.
            if self.policy == PolicyKind::Default
                && !lane.owed_done
                && lane.skipped.is_empty()
                && job.spec.submit_s < self.acct.guaranteed_latest_start[t]
                && !self.guaranteed_somewhere(job, t)
                && self.fits_guarantee_whole(job, t)
            {
                lane.owed_done = true;
                lane.owed = Some(job.spec.id);
                return Some(self.rank_as(job, t, true));
            }
            if self.policy == PolicyKind::Default && self.guarantee_left(t) < lane.least_left(true)
            {
                lane.tail_skipped = true;
                return None;
            }
            // A job requeued after an idle stop takes free GPUs only: it does not hold its
            // team's guarantee (and place) against the team's next jobs, which may reclaim.
            if !job.stopped_idle && self.guaranteed_somewhere(job, t) {
                return Some(self.rank(job, t));
            }
            lane.skipped.push(job);
            self.advance(lane, handled);
        }
        None
    }

    /// Whether the job would start now on free capacity as a borrower (what `consider`
    /// tries first in the borrowing phase).
    fn could_start_now(&mut self, job: &Job, t: usize) -> bool {
        let spec = &job.spec;
        let (end_s, _) = self.end_of(spec, self.now);
        let safe = self.safe;
        for m in self.candidate_models(spec) {
            let Some(g) = self.group(t, m) else { continue };
            let within = keep_to(safe, t, spec, Admission::Borrowed, self.homeless(t, m));
            let ask = Ask::new(spec, g, end_s).within(within);
            if self.find_memo(&ask, shape_of(spec, g)).is_some() {
                return true;
            }
        }
        false
    }

    /// Whether team `t` is guaranteed GPUs of model `m` but has no home for them (then its
    /// work that cannot be preempted is not kept to one: `keep_to`).
    pub(super) fn homeless(&self, t: usize, m: usize) -> bool {
        self.teams.guaranteed(t, m) > 0 && self.homes.of(t, m).is_none()
    }

    /// Whether the job would fit its team's guarantee on some model were none of it used.
    fn fits_guarantee_whole(&self, job: &Job, team: usize) -> bool {
        let milli = job.spec.milli_total();
        milli > 0
            && !job.stopped_idle
            && self.candidate_models(&job.spec).any(|m| {
                let pool = self.teams.pool_of_model[team][m];
                milli <= self.teams.pools[team][pool].guaranteed
            })
    }

    /// The most milli-GPUs left of the team's guarantee on any model.
    fn guarantee_left(&self, team: usize) -> u64 {
        (0..self.models.len())
            .map(|m| {
                let pool = self.teams.pool_of_model[team][m];
                self.teams.pools[team][pool]
                    .guaranteed
                    .saturating_sub(self.acct.guaranteed_used[team][pool])
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether the job fits its team's guarantee for some model it can run on (class 0 of
    /// [`Self::rank`], without computing the rest of the key).
    pub(super) fn guaranteed_somewhere(&self, job: &Job, team: usize) -> bool {
        if self.policy != PolicyKind::Default {
            return true;
        }
        let milli = job.spec.milli_total();
        self.candidate_models(&job.spec)
            .any(|m| self.class_of(team, m, milli) == Admission::Guaranteed)
    }

    /// Starts the job, or reclaims for it, or preempts its team's lower-priority work for it,
    /// or reserves for it, or explains why not. In the guaranteed phase it only starts where
    /// it is guaranteed, and returns `false` (deciding nothing) when it could still borrow
    /// elsewhere.
    pub(super) fn consider(&mut self, job: &'a Job, t: usize, phase: Phase) -> bool {
        let spec = &job.spec;
        let milli = spec.milli_total();
        let (end_s, _) = self.end_of(spec, self.now);
        let mut blocked: Option<Reason> = None;
        let mut admissible: Vec<(usize, usize, Admission)> = Vec::new();
        // Models where only a `max` stands in the way: a priority preemption may make room
        // under it.
        let mut capped: Vec<(usize, usize)> = Vec::new();
        let mut behind: Option<(JobId, Secs)> = None;
        // A CPU cap holds on every model alike: the job waits until its team's runs give
        // CPU back.
        if let Some(reason) = self.over_cpu_max(t, spec).or_else(|| self.array_full(spec)) {
            self.pend(spec.id, reason, None);
            return true;
        }
        for m in self.candidate_models(spec) {
            if let Some(r) = self.over_max(t, m, milli) {
                blocked = Some(r);
                if let Some(g) = self.group(t, m) {
                    capped.push((m, g));
                }
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
        // Work that can neither be preempted nor ends by a time limit never borrows: the GPUs
        // it took could be another team's guarantee (now, or once an admin raises one), and
        // the owner would never get them back. It runs within its team's guarantee only.
        if !self.may_borrow(spec, Admission::Borrowed) {
            let any = !admissible.is_empty();
            admissible.retain(|a| a.2 == Admission::Guaranteed);
            if any && admissible.is_empty() {
                let team = spec.team.clone();
                self.pend(spec.id, Reason::NeedsTimeLimit { team }, None);
                return true;
            }
        }
        // Models where the job is guaranteed first.
        admissible.sort_by_key(|a| a.2);
        let safe = self.safe;
        let homeless: Vec<bool> = (0..self.models.len())
            .map(|m| self.homeless(t, m))
            .collect();
        // Work that cannot be preempted goes only where it never blocks another team's
        // guarantee.
        let within = |m: usize, class: Admission| keep_to(safe, t, spec, class, homeless[m]);
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
                    let ask = Ask::new(spec, g, end_s).within(within(m, class));
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
            let ask = Ask::new(spec, g, end_s).within(within(m, class));
            let shape = shape_of(spec, g);
            if let Some(p) = self.find_memo(&ask, shape) {
                self.start(job, t, m, p, class);
                return true;
            }
            if behind.is_none() && !self.timeline.promises.is_empty() {
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
        // A job that cannot start now may preempt its own team's lower-priority work, after
        // any reclaim from other teams (in the guaranteed phase, only once it is decided
        // there): where it is admissible, then where only a `max` stands in the way.
        if admissible.is_empty() {
            if self.preempt_for_priority(job, t, &admissible, &capped) {
                return true;
            }
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
                self.eta.over_max_waits.push((spec.id, a, m, over));
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
        if self.take_yielded(job, t, &admissible, &within) {
            return true;
        }
        if self.preempt_for_priority(job, t, &admissible, &capped) {
            return true;
        }
        if let Some((reserved, start_s)) = behind {
            self.eta.group_of.insert(spec.id, admissible[0].1);
            self.pend(
                spec.id,
                Reason::BehindReservation { reserved, start_s },
                None,
            );
            return true;
        }
        // A job that cannot be preempted is promised GPUs only where it may run.
        self.keep_to = match admissible.first() {
            Some(&(m, _, Admission::Borrowed)) if !spec.preemptible && !homeless[m] => {
                self.safe[t].clone()
            }
            _ => None,
        };
        let reserved = self.reserve(job, &admissible);
        self.keep_to = None;
        if reserved {
            return true;
        }
        let borrowing = admissible.iter().all(|a| a.2 == Admission::Borrowed);
        if self.explain && self.safe[t].is_some() && !spec.preemptible && borrowing {
            let ask = Ask {
                ignore_guards: true,
                ..Ask::new(spec, admissible[0].1, end_s)
            };
            let safe = self.safe;
            let within = keep_to(safe, t, spec, Admission::Borrowed, false);
            let never = !self.fits_empty(spec, admissible[0].1, within);
            if never || place::find(&self.view, &ask).is_some() {
                let team = spec.team.clone();
                self.pend(spec.id, Reason::NotPreemptible { team }, None);
                return true;
            }
        }
        self.no_placement(job, admissible[0].1);
        true
    }

    /// Whether the job would fit group `g`'s nodes (within `within`) were they empty.
    fn fits_empty(&self, spec: &JobSpec, g: usize, within: Option<(usize, &[u64])>) -> bool {
        let mut cap = 0u64;
        for &n in &self.view.group_nodes[g] {
            if within.is_some_and(|(_, w)| !bit(w, n)) {
                continue;
            }
            cap = cap.saturating_add(crate::validate::tasks_per_empty_node(
                spec,
                self.view.nodes[n as usize],
            ));
        }
        cap >= u64::from(spec.tasks)
    }
}

/// The nodes a job may use at all: for one that cannot be preempted and would borrow, its
/// team's home and nobody's; otherwise (or where that is everywhere) any. Inside its team's
/// guarantee such a job may go anywhere it fits or borrowed work can be taken back for it.
pub(super) fn keep_to<'h>(
    safe: &'h [Option<Vec<u64>>],
    t: usize,
    spec: &crate::model::JobSpec,
    class: Admission,
    homeless: bool,
) -> Option<(usize, &'h [u64])> {
    if spec.preemptible || homeless || class == Admission::Guaranteed {
        None
    } else {
        safe[t].as_deref().map(|b| (2 * t + 1, b))
    }
}
