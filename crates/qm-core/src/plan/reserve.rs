//! Reservations: a blocked job gets the earliest time at which running jobs' time limits
//! free a placement for it, and guards on those GPUs keep backfill that would delay it off.
//! The timeline they are found on: when each running task releases what it holds, and what
//! reservations and claims have promised from when on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::model::{GpuAsk, JobId, JobSpec, Secs, MILLI_PER_GPU};
use crate::state::{Admission, Holder, Job, TaskPlacement};

use super::homes::bit;
use super::place;
use super::planner::{gpu_mask, mask_bits, shape_of, EndsFreed, Planner, MAX_FAILED_ATTEMPTS};
use super::{Reason, Reservation};

/// Where a single task of some shape first fits on a node (`Planner::earliest_single`), as
/// last computed, with the node's changes then (its capacity's, its timeline's).
#[derive(Clone, Copy)]
pub(super) struct NodeEarliest {
    changes: (u32, u32),
    first: First,
}

#[derive(Clone, Copy)]
enum First {
    /// At this time, with this many whole GPUs free.
    At(Secs, u32),
    /// Not before this time (the search stopped there: another node was earlier).
    After(Secs),
    /// At none of the node's times.
    Never,
}

/// Whether one task of the job fits a node with these GPUs' used milli, free CPU and free
/// memory.
pub(super) fn fits(spec: &JobSpec, used: &[u32], cpu: u64, mem: u64) -> bool {
    let gpu_ok = match spec.gpu {
        GpuAsk::Whole(k) => used.iter().filter(|&&u| u == 0).count() >= k as usize,
        GpuAsk::Milli(m) => used.iter().any(|&u| u + m <= MILLI_PER_GPU),
    };
    gpu_ok && cpu >= spec.cpu_milli && mem >= spec.mem_mib
}

/// What one running (or starting) task gives back, and when.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Release {
    /// By its time limit (`Secs::MAX` without one): what promises are computed from.
    pub(super) end_s: Secs,
    /// By its runtime estimate, else its time limit: what estimates are computed from.
    pub(super) est_s: Secs,
    /// Dense node index.
    pub(super) node: u32,
    /// GPU indices on the node, one bit each (nodes have at most 64 GPUs).
    pub(super) gpus: u64,
    /// Milli-GPUs on each of those GPUs.
    pub(super) milli: u32,
    /// CPU milli-cores and memory (MiB).
    pub(super) cpu: u64,
    pub(super) mem: u64,
}

/// An occupation promised from some time on: a reservation (from its start) or a claim of a
/// job waiting for its victims (from their deadline), until the job's time limit would end it.
pub(super) struct Promise {
    pub(super) group: usize,
    /// From when [`Planner::earliest_gang`]'s aggregate bound counts it against the group's
    /// free GPUs: a reservation's start (from then on its GPUs are free of running work and
    /// of the other promises it counts with); never (`Secs::MAX`) for a claim, part of whose
    /// GPUs the view already counts as taken. Before, its GPUs may still be busy with work
    /// that the bound counts already: counting them twice would rule out times at which the
    /// job fits.
    pub(super) counted_from_s: Secs,
    pub(super) end_s: Secs,
    pub(super) placement: Vec<TaskPlacement>,
    /// CPU milli-cores and memory (MiB) per task.
    pub(super) cpu: u64,
    pub(super) mem: u64,
}

/// A reservation `decide` has decided to make but not made yet: the planner knows it will
/// succeed (the job fits group `group` once every running job and promise with an end has
/// ended), which is all the plan's counts and the order of its passes depend on. Where and
/// when it starts matters only through the guards and promises it adds, so it is made (in
/// order, before anything else) only when the plan comes to read them: a placement that
/// would succeed without guards, another reservation that cannot be deferred, a reclaim
/// or a preemption. Where nothing of that kind follows (two reservations in three on the
/// 160,000-job week, two in five on Philly), deciding never computes them. `plan` makes
/// every reservation at once.
pub(super) struct Deferred<'a> {
    job: &'a Job,
    group: usize,
    admissible: Vec<(usize, usize, Admission)>,
    keep_to: Option<Vec<u64>>,
}

/// CPU and memory a node will have left once a reservation has started there.
pub(super) type Slack = (u32, u64, u64);

/// When running tasks release what they hold, and what has been promised from when on.
pub(super) struct Timeline {
    /// Built on first use ([`Planner::releases`]): most plans that end early never ask.
    pub(super) built: bool,
    /// Releases of the jobs this plan starts before the timeline is built, in order.
    pub(super) deferred: Vec<Release>,
    /// Every release: those known when the timeline was built, by node (a node's in the
    /// order of the plan's runs, then of its starts), then those of later starts, in order.
    pub(super) releases: Vec<Release>,
    /// `[node]` where the node's releases known at build time begin in `releases` (one
    /// more entry for the end): one array instead of a list per node.
    pub(super) releases_from: Vec<u32>,
    /// `[node]` indices into `releases` of later starts' releases there.
    pub(super) later_by_node: Vec<Vec<usize>>,
    /// Reservations and claims, in the order they were made.
    pub(super) promises: Vec<Promise>,
    /// `[node]` indices into `promises` touching the node.
    pub(super) promises_by_node: Vec<Vec<usize>>,
    /// `[node]` how many releases and promises were added there after the build.
    pub(super) changes: Vec<u32>,
    /// Reservations made per group, against `max_reservations`.
    pub(super) reservations_by_group: BTreeMap<usize, usize>,
}

impl Timeline {
    /// The releases on dense node `n`, in the order they became known.
    pub(super) fn on_node(&self, n: usize) -> impl Iterator<Item = &Release> + '_ {
        let built = match self.releases_from.get(n..n + 2) {
            Some(&[from, to]) => &self.releases[from as usize..to as usize],
            _ => &[],
        };
        built
            .iter()
            .chain(self.later_by_node[n].iter().map(|&i| &self.releases[i]))
    }

    pub(super) fn new(nodes: usize) -> Timeline {
        Timeline {
            built: false,
            deferred: Vec::new(),
            releases: Vec::new(),
            releases_from: Vec::new(),
            later_by_node: vec![Vec::new(); nodes],
            promises: Vec::new(),
            promises_by_node: vec![Vec::new(); nodes],
            changes: vec![0; nodes],
            reservations_by_group: BTreeMap::new(),
        }
    }
}

impl<'a> Planner<'a> {
    /// Records an occupation promised from now (reservation or claim), indexed by node.
    pub(super) fn push_reservation(&mut self, rec: Promise) {
        let i = self.timeline.promises.len();
        for task in &rec.placement {
            if let Some(n) = self.view.dense(task.node) {
                let list = &mut self.timeline.promises_by_node[n as usize];
                if list.last() != Some(&i) {
                    list.push(i);
                    self.timeline.changes[n as usize] += 1;
                }
            }
        }
        self.timeline.promises.push(rec);
    }

    pub(super) fn push_release(&mut self, rel: Release) {
        if !self.timeline.built {
            self.timeline.deferred.push(rel);
            return;
        }
        self.timeline.later_by_node[rel.node as usize].push(self.timeline.releases.len());
        self.timeline.changes[rel.node as usize] += 1;
        self.timeline.releases.push(rel);
    }

    /// Builds the timeline's releases, if not yet built: what each running or stopping task
    /// gives back and when (by its time limit, or its stop's deadline), in the order of the
    /// plan's runs, then those of the jobs the plan has started so far.
    pub(super) fn releases(&mut self) {
        if self.timeline.built {
            return;
        }
        self.timeline.built = true;
        let mut known = match self.tallied_releases() {
            Some(known) => {
                debug_assert_eq!(known, self.walked_releases(), "releases from the tallies");
                known
            }
            None => self.walked_releases(),
        };
        known.append(&mut self.timeline.deferred);
        // By node, each node's in the order they came (a counting sort).
        let nodes = self.timeline.later_by_node.len();
        let mut from = vec![0u32; nodes + 1];
        for r in &known {
            from[r.node as usize + 1] += 1;
        }
        for n in 0..nodes {
            from[n + 1] += from[n];
        }
        let mut next = from.clone();
        let mut sorted = known.clone();
        for r in known {
            let at = &mut next[r.node as usize];
            sorted[*at as usize] = r;
            *at += 1;
        }
        self.timeline.releases = sorted;
        self.timeline.releases_from = from;
    }

    /// The releases of the runs, walking the holders' notes: the runs as the scan sees them
    /// (holders whose first node is in the view), in their order, whether or not the plan
    /// listed them.
    fn walked_releases(&self) -> Vec<Release> {
        let state = self.state;
        let holding = &state.jobs.holding;
        let mut known = Vec::with_capacity(holding.len() + self.timeline.deferred.len());
        for (key, note) in holding {
            if note
                .first
                .and_then(|(node, ..)| self.view.dense(node))
                .is_none()
            {
                continue;
            }
            self.run_releases(key.id, note, |r| known.push(r));
        }
        known
    }

    /// What run `id` (its note `note`, whose first node is in the view) gives back and when,
    /// task by task: one task from the note, a gang's tasks from its record.
    pub(super) fn run_releases(&self, id: JobId, note: &Holder, mut each: impl FnMut(Release)) {
        let (end_s, est_s) = self.run_ends(note);
        let release = |node, gpus, milli| Release {
            end_s,
            est_s,
            node,
            gpus,
            milli,
            cpu: note.cpu_milli,
            mem: note.mem_mib,
        };
        match note.first {
            Some((node, gpus, milli)) if note.tasks == 1 => {
                if let Some(n) = self.view.dense(node) {
                    each(release(n, gpus, milli));
                }
            }
            _ => {
                let run = self.state.jobs[&id].state.run().expect("a run holds");
                for task in &run.placement {
                    if let Some(n) = self.view.dense(task.node) {
                        each(release(n, gpu_mask(&task.gpus), task.gpu_milli));
                    }
                }
            }
        }
    }

    /// Gives a blocked job the earliest start that running jobs' time limits promise, over
    /// its admissible GPU models, and guards the GPUs against backfill that would delay it;
    /// when deciding, possibly later ([`Deferred`]).
    pub(super) fn reserve(
        &mut self,
        job: &'a Job,
        admissible: &[(usize, usize, Admission)],
    ) -> bool {
        if !self.explain {
            match self.defer(job, admissible) {
                Some(deferred) => return deferred,
                None => self.settle(),
            }
        }
        self.reserve_now(job, admissible)
    }

    /// Makes the deferred reservations, in the order they were decided.
    pub(super) fn settle(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut self.deferred);
        // Counted when deferred; counted again as each is made.
        for d in &deferred {
            if let Some(c) = self.timeline.reservations_by_group.get_mut(&d.group) {
                *c -= 1;
            }
        }
        for d in deferred {
            let keep_to = std::mem::replace(&mut self.keep_to, d.keep_to);
            let made = self.reserve_now(d.job, &d.admissible);
            debug_assert!(made, "a deferred reservation is made");
            self.keep_to = keep_to;
        }
    }

    /// Whether the reservation can be deferred: `Some(false)` where no group would even be
    /// tried (nothing to do), `Some(true)` where it was deferred, `None` where it must be
    /// made now. It can be deferred where exactly one group would be tried, the job has a
    /// time limit (its promise ends) and it fits that group once everything that ends has
    /// ended: then [`Self::reserve_now`] succeeds there, whatever the earlier deferred
    /// reservations (all of which end too) take.
    fn defer(&mut self, job: &'a Job, admissible: &[(usize, usize, Admission)]) -> Option<bool> {
        let spec = &job.spec;
        let mut tried = None;
        for &(_, g, _) in admissible {
            if self.not_tried(spec, g) {
                continue;
            }
            if tried.is_some() {
                return None;
            }
            tried = Some(g);
        }
        let Some(g) = tried else {
            return Some(false);
        };
        if self.end_of(spec, self.now).0 == Secs::MAX {
            return None;
        }
        if !self.empties_for(spec, g) {
            self.releases();
            if !self.fits_in_the_end(spec, g) {
                return None;
            }
        }
        *self.timeline.reservations_by_group.entry(g).or_default() += 1;
        self.deferred.push(Deferred {
            job,
            group: g,
            admissible: admissible.to_vec(),
            keep_to: self.keep_to.clone(),
        });
        Some(true)
    }

    /// Whether a single task fits some node of group `g` (within `keep_to`) that empties:
    /// everything on it ends by a time limit (its drain time is finite), nothing is held
    /// there for a reclaim's beneficiary and nothing is promised yet. Then it fits there
    /// once everything has ended, as [`Self::fits_in_the_end`] would find, without building
    /// the timeline.
    fn empties_for(&self, spec: &JobSpec, g: usize) -> bool {
        if spec.tasks != 1 || !self.state.holds.is_empty() || !self.timeline.promises.is_empty() {
            return false;
        }
        let empty = [0u32; 64];
        self.view.group_nodes[g].iter().any(|&n| {
            let node = &self.view.nodes[n as usize].spec;
            self.keep_to.as_ref().is_none_or(|w| bit(w, n))
                && self
                    .view
                    .drain
                    .get(n as usize)
                    .is_some_and(|&d| d != Secs::MAX)
                && spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| node.labels.get(k) == Some(v))
                && fits(
                    spec,
                    &empty[..self.view.gpus[n as usize] as usize],
                    node.cpu_milli,
                    node.mem_mib,
                )
        })
    }

    /// Whether the job fits group `g` (within `keep_to`) once every release and promise
    /// that ends has ended: capacity on the timeline only grows with time, so then
    /// [`Self::earliest`] finds a start. A gang also needs some end in the group (its
    /// search probes only those).
    fn fits_in_the_end(&mut self, spec: &JobSpec, g: usize) -> bool {
        let end = Secs::MAX - 1;
        let mut node = ([0u32; 64], 0, 0);
        if spec.tasks == 1 {
            return self.view.group_nodes[g].iter().any(|&n| {
                self.cap_at(spec, g, n, end, &mut node)
                    .is_some_and(|cap| cap >= 1)
            });
        }
        let ends = !self.group_releases(g).is_empty()
            || self.deferred.iter().any(|d| d.group == g)
            || self
                .timeline
                .promises
                .iter()
                .any(|p| p.group == g && p.end_s != Secs::MAX);
        if !ends {
            return false;
        }
        let need = u64::from(spec.tasks);
        let mut have = 0u64;
        for &n in &self.view.group_nodes[g] {
            have += self.cap_at(spec, g, n, end, &mut node).unwrap_or(0);
            if have >= need {
                return true;
            }
        }
        false
    }

    /// Whether a reservation on group `g` is not even sought: the group's reservations are
    /// used up, too many failed in this plan, or one failed for this shape (or for anything
    /// in the group) and nothing has ended or been promised since. Deferred reservations
    /// count as made.
    fn not_tried(&self, spec: &JobSpec, g: usize) -> bool {
        let seen = self.timeline.releases.len();
        let promised = seen + self.timeline.promises.len() + self.deferred.len();
        let used = self
            .timeline
            .reservations_by_group
            .get(&g)
            .copied()
            .unwrap_or(0);
        used >= self.cfg.max_reservations
            || self.attempts.failed_reservations >= MAX_FAILED_ATTEMPTS
            || shape_of(spec, g).is_some_and(|s| self.memo.no_reserve.get(&s) == Some(&seen))
            || self.memo.unreservable.get(&g) == Some(&promised)
    }

    /// [`Self::reserve`], now.
    fn reserve_now(&mut self, job: &Job, admissible: &[(usize, usize, Admission)]) -> bool {
        self.releases();
        let spec = &job.spec;
        let mut best: Option<(Secs, usize, Vec<TaskPlacement>, Vec<Slack>)> = None;
        for &(_, g, _) in admissible {
            if self.not_tried(spec, g) {
                continue;
            }
            let shape = shape_of(spec, g);
            match self.earliest(spec, g) {
                Some((t, p, slack)) => {
                    if best.as_ref().is_none_or(|b| t < b.0) {
                        best = Some((t, g, p, slack));
                    }
                }
                None => {
                    self.attempts.failed_reservations += 1;
                    // More reservations only push later: until something else starts, this
                    // shape will not get one (on every node; kept to some, it may fail where
                    // others would not).
                    if let Some(s) = shape.filter(|_| self.keep_to.is_none()) {
                        self.memo.no_reserve.insert(s, self.timeline.releases.len());
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
                let mask = gpu_mask(&task.gpus);
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
        self.push_reservation(Promise {
            group: g,
            counted_from_s: t,
            end_s,
            placement: p.clone(),
            cpu: spec.cpu_milli,
            mem: spec.mem_mib,
        });
        *self.timeline.reservations_by_group.entry(g).or_default() += 1;
        self.out.reservations.push(Reservation {
            job: spec.id,
            start_s: t,
            placement: p,
        });
        self.eta.group_of.insert(spec.id, g);
        self.pend(spec.id, Reason::Reserved { start_s: t }, Some(t));
        true
    }

    /// The earliest time the job fits group `g`, from running jobs' time limits: when, where,
    /// and the CPU and memory each node it uses will have left then.
    pub(super) fn earliest(
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
    /// the fewest whole GPUs free then, then the lowest index. What each node gave is kept
    /// for the next job of the same shape in this plan (`Memos::earliest`) and read again
    /// while neither the node's capacity nor its releases and promises have changed.
    pub(super) fn earliest_single(
        &mut self,
        spec: &JobSpec,
        g: usize,
    ) -> Option<(Secs, TaskPlacement, Slack)> {
        let Some(shape) = shape_of(spec, g) else {
            return self.earliest_single_with(spec, g, &mut []);
        };
        let mut memo =
            (self.memo.earliest.remove(&shape)).unwrap_or_else(|| vec![None; self.view.ids.len()]);
        let found = self.earliest_single_with(spec, g, &mut memo);
        self.memo.earliest.insert(shape, memo);
        debug_assert_eq!(
            found,
            self.earliest_single_with(spec, g, &mut []),
            "what was kept of each node gives what the nodes give"
        );
        found
    }

    /// `earliest_single`, reading and keeping what each node gave in `memo` (`[node]`;
    /// empty: nothing kept).
    fn earliest_single_with(
        &self,
        spec: &JobSpec,
        g: usize,
        memo: &mut [Option<NodeEarliest>],
    ) -> Option<(Secs, TaskPlacement, Slack)> {
        let mut best: Option<(Secs, u32, u32)> = None;
        // One buffer of probe times for every node: this runs for each blocked job's
        // reservation, over every node of the group.
        let mut times: Vec<Secs> = Vec::new();
        for &n in &self.view.group_nodes[g] {
            let node = self.view.nodes[n as usize];
            if self.keep_to.as_ref().is_some_and(|w| !bit(w, n)) {
                continue;
            }
            if !spec
                .node_selector
                .iter()
                .all(|(k, v)| node.spec.labels.get(k) == Some(v))
            {
                continue;
            }
            let ni = n as usize;
            let changes = (self.view.changes[ni], self.timeline.changes[ni]);
            let known = memo.get(ni).copied().flatten();
            match known
                .filter(|k: &NodeEarliest| k.changes == changes)
                .map(|k| k.first)
            {
                Some(First::At(t, whole)) => {
                    if best.is_none_or(|b| (t, whole, n) < b) {
                        best = Some((t, whole, n));
                    }
                    continue;
                }
                Some(First::Never) => continue,
                Some(First::After(from)) if best.is_some_and(|b| from > b.0) => continue,
                _ => {}
            }
            times.clear();
            times.push(self.now);
            let mut ended = false;
            times.extend(
                self.timeline
                    .on_node(ni)
                    .map(|r| r.end_s)
                    .filter(|&e| e != Secs::MAX)
                    .map(|e| {
                        ended |= e <= self.now;
                        e.max(self.now)
                    }),
            );
            // Nothing on the node has ended yet and it lacks room now: then it lacks room at
            // `now` on the timeline too (promises only take more), so that probe is skipped.
            let full_now = !ended
                && !fits(
                    spec,
                    self.view.used_of(n),
                    self.view.cpu_free[ni],
                    self.view.mem_free[ni],
                );
            times.extend(
                self.timeline.promises_by_node[ni]
                    .iter()
                    .map(|&i| &self.timeline.promises[i])
                    .filter(|r| r.group == g && r.end_s != Secs::MAX)
                    .map(|r| r.end_s),
            );
            times.sort_unstable();
            times.dedup();
            let mut node = ([0u32; 64], 0, 0);
            let mut first = First::Never;
            for &t in &times {
                if best.is_some_and(|b| t > b.0) {
                    first = First::After(t);
                    break;
                }
                if full_now && t == self.now {
                    continue;
                }
                self.node_at(n, g, t, &mut node);
                let (buf, cpu, mem) = (&node.0, node.1, node.2);
                let used = &buf[..self.view.gpus[n as usize] as usize];
                if fits(spec, used, cpu, mem) {
                    let whole = used.iter().filter(|&&u| u == 0).count() as u32;
                    first = First::At(t, whole);
                    if best.is_none_or(|b| (t, whole, n) < b) {
                        best = Some((t, whole, n));
                    }
                    break;
                }
            }
            if let Some(slot) = memo.get_mut(ni) {
                *slot = Some(NodeEarliest { changes, first });
            }
        }
        let (t, _, n) = best?;
        let mut node = ([0u32; 64], 0, 0);
        self.node_at(n, g, t, &mut node);
        let used = &node.0[..self.view.gpus[n as usize] as usize];
        let task = place::task_on(used, &self.view, n, spec.gpu);
        Some((t, task, (n, node.1 - spec.cpu_milli, node.2 - spec.mem_mib)))
    }

    /// A gang: probe the whole group at release times.
    pub(super) fn earliest_gang(
        &mut self,
        spec: &JobSpec,
        g: usize,
    ) -> Option<(Secs, Vec<TaskPlacement>, Vec<Slack>)> {
        let rel = self.group_releases(g);
        // Release ends are sorted already; the few promises' ends are merged in.
        let mut ends: Vec<Secs> = self
            .timeline
            .promises
            .iter()
            .filter(|r| r.group == g && r.end_s != Secs::MAX)
            .map(|r| r.end_s)
            .collect();
        ends.sort_unstable();
        let mut times: Vec<Secs> = Vec::with_capacity(rel.len() + ends.len());
        let (mut a, mut b) = (rel.iter().map(|r| r.0.max(self.now)).peekable(), 0);
        while let Some(&t) = a.peek() {
            if b < ends.len() && ends[b] < t {
                times.push(ends[b]);
                b += 1;
            } else {
                times.push(t);
                a.next();
            }
        }
        times.extend_from_slice(&ends[b..]);
        times.dedup();
        if times.is_empty() {
            // Nothing here ever ends by itself: no promise is possible, for any job.
            let seen = self.timeline.releases.len() + self.timeline.promises.len();
            self.memo.unreservable.insert(g, seen);
            return None;
        }
        // Necessary condition, cheap: enough milli-GPUs free by then in aggregate. Free now,
        // plus what has ended by `t`, less what is promised over `t` on GPUs that nothing
        // else counts then: the promises that have started by `t` (see
        // `Promise::counted_from_s`). Those are changes in time order: `+` where one starts,
        // `-` where it ends.
        let free_now = self.view.free_milli(g);
        let need = spec.milli_total();
        let mut promised: Vec<(Secs, i64)> = Vec::new();
        for r in &self.timeline.promises {
            if r.group != g || r.counted_from_s >= r.end_s {
                continue;
            }
            let milli = crate::state::placement_milli(&r.placement) as i64;
            promised.push((r.counted_from_s, milli));
            promised.push((r.end_s, -milli));
        }
        promised.sort_unstable();
        let mut reserved: i64 = 0;
        let (mut freed, mut ri, mut pi) = (0u64, 0, 0);
        let mut first = None;
        for (i, &t) in times.iter().enumerate() {
            while ri < rel.len() && rel[ri].0 <= t {
                freed += rel[ri].1;
                ri += 1;
            }
            while pi < promised.len() && promised[pi].0 <= t {
                reserved += promised[pi].1;
                pi += 1;
            }
            if (free_now + freed).saturating_sub(reserved.max(0) as u64) >= need {
                first = Some(i);
                break;
            }
        }
        let first = first?;
        // Often the gang fits at the first time the aggregate allows; else the first time it
        // fits is found in one sweep of every node's capacity changes. Build the view and the
        // placement once, at the time found.
        let at = if self.gang_fits_at(spec, g, times[first]) {
            first
        } else {
            self.gang_first_fit(spec, g, &times[first..])? + first
        };
        self.gang_at(spec, g, times[at])
            .map(|(p, slack)| (times[at], p, slack))
    }

    /// The finite ends of the releases of group `g`'s nodes, sorted, with the milli-GPUs
    /// each frees: computed once for every gang reserved until the timeline grows.
    fn group_releases(&mut self, g: usize) -> EndsFreed {
        let seen = self.timeline.releases.len();
        if let Some((n, rel)) = self.memo.group_releases.get(&g) {
            if *n == seen {
                return rel.clone();
            }
        }
        let mut rel: Vec<(Secs, u64)> = self
            .timeline
            .releases
            .iter()
            .filter(|r| r.end_s != Secs::MAX && self.view.group[r.node as usize] == Some(g))
            .map(|r| (r.end_s, u64::from(r.milli) * u64::from(r.gpus.count_ones())))
            .collect();
        rel.sort_unstable();
        let rel = std::rc::Rc::new(rel);
        self.memo.group_releases.insert(g, (seen, rel.clone()));
        rel
    }

    /// The first of `times` (ascending) at which the gang fits group `g`, as
    /// [`Self::gang_fits_at`] would say. A node's capacity for the job changes only when one
    /// of its releases or promises of the group ends (and only grows then), so it is
    /// computed at the first time and then at each of those ends as the sweep through the
    /// times reaches it (nodes' next ends in a heap), stopping at the first time the group's
    /// total holds the gang: the ends beyond the answer are never probed.
    pub(super) fn gang_first_fit(&self, spec: &JobSpec, g: usize, times: &[Secs]) -> Option<usize> {
        let start = *times.first()?;
        let last_time = *times.last()?;
        let need = i128::from(spec.tasks);
        let mut total: i128 = 0;
        let mut node = ([0u32; 64], 0, 0);
        // Per node of the group that may hold the job: its capacity so far, and its ends
        // after `start` (up to the last time tried), ascending, in `ends[from..to]`.
        let mut nodes: Vec<(u32, u64, usize, usize)> = Vec::new();
        let mut ends: Vec<Secs> = Vec::new();
        let mut mine: Vec<Secs> = Vec::new();
        let mut next: BinaryHeap<Reverse<(Secs, usize)>> = BinaryHeap::new();
        for &n in &self.view.group_nodes[g] {
            let Some(cap) = self.cap_at(spec, g, n, start, &mut node) else {
                continue;
            };
            total += i128::from(cap);
            let ni = n as usize;
            let within = |c: &Secs| *c > start && *c <= last_time;
            mine.clear();
            mine.extend(self.timeline.on_node(ni).map(|r| r.end_s).filter(within));
            mine.extend(
                self.timeline.promises_by_node[ni]
                    .iter()
                    .map(|&i| &self.timeline.promises[i])
                    .filter(|r| r.group == g)
                    .map(|r| r.end_s)
                    .filter(within),
            );
            mine.sort_unstable();
            mine.dedup();
            let from = ends.len();
            ends.extend_from_slice(&mine);
            if ends.len() > from {
                next.push(Reverse((ends[from], nodes.len())));
            }
            nodes.push((n, cap, from, ends.len()));
        }
        for (i, &t) in times.iter().enumerate() {
            while let Some(&Reverse((c, k))) = next.peek() {
                if c > t {
                    break;
                }
                next.pop();
                let (n, last, from, to) = nodes[k];
                let cap = self.cap_at(spec, g, n, c, &mut node).unwrap_or(last);
                total += i128::from(cap) - i128::from(last);
                nodes[k] = (n, cap, from + 1, to);
                if from + 1 < to {
                    next.push(Reverse((ends[from + 1], k)));
                }
            }
            if total >= need {
                return Some(i);
            }
        }
        None
    }

    /// Where the gang goes at time `t` (packed as `place::find` packs), and the CPU and
    /// memory its nodes have left then.
    pub(super) fn gang_at(
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
    pub(super) fn node_at(&self, n: u32, g: usize, t: Secs, out: &mut ([u32; 64], u64, u64)) {
        let ni = n as usize;
        let id = self.view.ids[ni];
        let (used, cpu, mem) = out;
        let now = self.view.used_of(n);
        used[..now.len()].copy_from_slice(now);
        *cpu = self.view.cpu_free[ni];
        *mem = self.view.mem_free[ni];
        for r in self.timeline.on_node(ni) {
            if r.end_s != Secs::MAX && r.end_s <= t {
                for gi in mask_bits(r.gpus) {
                    used[gi as usize] = used[gi as usize].saturating_sub(r.milli);
                }
                *cpu += r.cpu;
                *mem += r.mem;
            }
        }
        for &i in &self.timeline.promises_by_node[ni] {
            let resv = &self.timeline.promises[i];
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
    pub(super) fn cap_at(
        &self,
        spec: &JobSpec,
        g: usize,
        n: u32,
        t: Secs,
        out: &mut ([u32; 64], u64, u64),
    ) -> Option<u64> {
        if self.keep_to.as_ref().is_some_and(|w| !bit(w, n)) {
            return None;
        }
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
            GpuAsk::Whole(k) => (used.iter().filter(|&&u| u == 0).count() as u64)
                .checked_div(u64::from(k))
                .unwrap_or(u64::MAX),
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
    pub(super) fn gang_fits_at(&self, spec: &JobSpec, g: usize, t: Secs) -> bool {
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
}
