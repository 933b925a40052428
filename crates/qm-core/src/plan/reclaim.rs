//! Reclaim: for a guaranteed job that does not fit, preempt borrowed jobs of other teams
//! that lose the least work. One task: on each node, the cheapest victims that make room
//! there, and the cheapest node wins. A gang: free every candidate, place, keep the victims
//! under the placement, then spare the most expensive ones that prove unnecessary.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::PolicyKind;
use crate::state::{Admission, Job, StopCause, TaskPlacement};

use super::homes::bit;
use super::place::{self, Ask};
use super::planner::{shape_of, Planner, MAX_FAILED_ATTEMPTS, MAX_PRUNE_STEPS};
use super::view::View;
use super::{Reason, Reservation, StopOrder};

/// Up to this many task placements, `find_without` gives runs back on the view itself rather
/// than on a copy of it.
const IN_PLACE_TASKS: usize = 64;

/// Borrowed, preemptible runs past their minimum run time: what reclaim may stop.
pub(super) struct Victims {
    /// `[model]` indices into the planner's runs, cheapest to stop first once `sorted`.
    pub(super) by_model: Vec<Vec<usize>>,
    /// `by_model` is in order ([`Planner::sort_victims`]).
    pub(super) sorted: bool,
    /// `[model]` upper bound of milli-GPUs the remaining victims would free.
    pub(super) milli_left: Vec<u64>,
    /// `[model]` milli-GPUs of guaranteed runs away from their team's home that reclaim may
    /// take for a job that cannot be preempted (`home_victims`).
    pub(super) away_milli: Vec<u64>,
    /// Some pending job cannot be preempted (and so may take a home back whole).
    pub(super) pinned_pending: bool,
    /// `[model]` runs counted inside the guarantee of a team that holds more than its
    /// guarantee, preemptible and past their minimum run time (in no order): which of such
    /// a team's runs count as borrowed is a convention, so reclaim may take any of them as
    /// long as the team keeps its guarantee (`surplus_fits`).
    pub(super) surplus: Vec<Vec<usize>>,
    pub(super) surplus_milli: Vec<u64>,
    /// `(team, pool)`: milli-GPUs of the team's runs (sub-teams' included) that this plan's
    /// reclaims have stopped.
    pub(super) taken: BTreeMap<(usize, usize), u64>,
    /// `[model]` how many of `by_model` are idle runs that yielded (an upper bound of those
    /// not stopped yet): any pending job may take those (`take_yielded`).
    pub(super) yielded: Vec<usize>,
}

impl Victims {
    pub(super) fn new(models: usize) -> Victims {
        Victims {
            by_model: vec![Vec::new(); models],
            sorted: false,
            milli_left: vec![0; models],
            away_milli: vec![0; models],
            pinned_pending: false,
            surplus: vec![Vec::new(); models],
            surplus_milli: vec![0; models],
            taken: BTreeMap::new(),
            yielded: vec![0; models],
        }
    }
}

impl<'a> Planner<'a> {
    /// No reclaim can happen in the rest of this plan.
    pub(super) fn reclaim_exhausted(&self) -> bool {
        self.policy != PolicyKind::Default
            || self.attempts.reclaims >= self.cfg.max_reclaims
            || self.attempts.failed_reclaims >= MAX_FAILED_ATTEMPTS
            || self
                .victims
                .milli_left
                .iter()
                .zip(&self.victims.away_milli)
                .zip(&self.victims.surplus_milli)
                .all(|((&m, &a), &s)| m == 0 && s == 0 && (a == 0 || !self.victims.pinned_pending))
    }

    /// No idle run that yielded can be taken in the rest of this plan.
    pub(super) fn yield_exhausted(&self) -> bool {
        self.policy != PolicyKind::Default
            || self.attempts.reclaims >= self.cfg.max_reclaims
            || self.attempts.failed_reclaims >= MAX_FAILED_ATTEMPTS
            || self.victims.yielded.iter().all(|&n| n == 0)
    }

    /// Frees the job's GPUs by preempting borrowed jobs that lose the least work.
    pub(super) fn reclaim(&mut self, job: &Job, m: usize, g: usize) -> bool {
        if self.attempts.reclaims >= self.cfg.max_reclaims
            || self.attempts.failed_reclaims >= MAX_FAILED_ATTEMPTS
            || job.stopped_idle
        {
            return false;
        }
        let spec = &job.spec;
        // Cheap bound first: free GPUs plus every GPU a victim touches (a victim's share of a
        // GPU may free the whole GPU).
        let takable = self.victims.milli_left[m]
            + self.victims.surplus_milli[m]
            + if spec.preemptible {
                0
            } else {
                self.victims.away_milli[m]
            };
        if self.view.group_free_milli[g] + takable < spec.milli_total() {
            return false;
        }
        let Some(team) = self.team_of(job) else {
            return false;
        };
        let (end_s, _) = self.end_of(spec, self.now);
        let memo = shape_of(spec, g).map(|s| (team, spec.preemptible, s));
        if let Some(k) = &memo {
            if self.memo.no_reclaim.get(k).is_some_and(|&end| end_s >= end) {
                return false;
            }
        }
        // With reservations deferred (`reserve.rs`, `Deferred`), their guards are not there
        // yet: where no victims make room even without guards, none make room with them;
        // where some do, the reservations are made and the guarded search decides.
        let mut found = None;
        if self.deferred.is_empty()
            || self
                .reclaim_search(job, team, (m, g), end_s, true)
                .is_some()
        {
            self.settle();
            found = self.reclaim_search(job, team, (m, g), end_s, false);
        }
        let Some((chosen, placement)) = found else {
            self.attempts.failed_reclaims += 1;
            if let Some(k) = memo {
                let end = self.memo.no_reclaim.entry(k).or_insert(end_s);
                *end = (*end).min(end_s);
            }
            return false;
        };
        for (key, milli) in self.takes(&chosen, true) {
            *self.victims.taken.entry(key).or_default() += milli;
        }
        for &i in &chosen {
            let r = &self.runs[i];
            if r.mode == Admission::Guaranteed && self.victims.surplus[m].contains(&i) {
                let milli = r.milli;
                self.victims.surplus_milli[m] = self.victims.surplus_milli[m].saturating_sub(milli);
                continue;
            }
            // Borrowed victims count against what reclaim may still free; runs taken only
            // to give a home back whole, against what that may still take.
            if r.mode == Admission::Borrowed {
                let freed = r.touched;
                self.victims.milli_left[m] = self.victims.milli_left[m].saturating_sub(freed);
            } else {
                let milli = r.milli;
                self.victims.away_milli[m] = self.victims.away_milli[m].saturating_sub(milli);
            }
        }
        self.attempts.reclaims += 1;
        let stop = (StopCause::Reclaim, Admission::Guaranteed);
        self.preempt(job, team, (m, g), &chosen, placement, stop);
        true
    }

    /// Reclaim's search: the victims that make room for the job on group `g` of model `m`,
    /// and where it then goes (guards ignored or not).
    fn reclaim_search(
        &mut self,
        job: &Job,
        team: usize,
        (m, g): (usize, usize),
        end_s: crate::model::Secs,
        ignore_guards: bool,
    ) -> Option<(Vec<usize>, Vec<TaskPlacement>)> {
        let spec = &job.spec;
        // A team's guarantee protects it from other teams; it does not preempt itself, but
        // for its own idle runs that yielded.
        self.sort_victims();
        let victims: Vec<usize> = self.victims.by_model[m]
            .iter()
            .copied()
            .filter(|&i| {
                let r = &self.runs[i];
                !r.stopped && (r.team != Some(team) || r.yielded)
            })
            .collect();
        let homes = self.homes;
        let ask = Ask {
            ignore_guards,
            ..Ask::new(spec, g, end_s)
        };
        // First the borrowed work that loses least, wherever it is. A job that cannot be
        // preempted cannot borrow instead: where borrowed work alone cannot make room for it,
        // it takes its team's home back whole, preempting every run there that is away from
        // its own team's home too.
        let mut found = None;
        if !victims.is_empty() {
            found = self.victims_and_place(&ask, &victims, None);
        }
        // Then runs of teams above their guarantee that count inside it, as long as each
        // such team keeps its guarantee: the guarantee comes back in the shape the job needs
        // where borrowed work is spread too thin to make it.
        if found.is_none() && !self.victims.surplus[m].is_empty() {
            let mut wide: Vec<usize> = self.victims.surplus[m]
                .iter()
                .copied()
                .filter(|&i| !self.runs[i].stopped && self.runs[i].team != Some(team))
                .chain(victims.iter().copied())
                .collect();
            wide.sort_by_key(|&i| self.victim_key(i));
            if wide.len() > victims.len() {
                found = self.victims_and_place(&ask, &wide, Some(m));
            }
        }
        if found.is_none() && !spec.preemptible && homes.of(team, m).is_some() {
            let home = homes.own_bits(team);
            let wide = self.home_victims(team, m, &home, &victims);
            if wide.len() > victims.len() {
                let ask = Ask {
                    ignore_guards,
                    ..Ask::new(spec, g, end_s).within(Some((2 * team, &home)))
                };
                found = self.victims_and_place(&ask, &wide, None);
                // Where the home cannot be made whole now (runs there still within their
                // minimum run time, a node down), the same victims may make room anywhere:
                // the rest of the job's shape comes from nodes borrowed work is taken back
                // from. Without this, short work kept starting on the home's free nodes,
                // each run protected for its minimum run time, and a 2,048-GPU gang waited
                // hours for its own guarantee (`qm sim gen big-gang --duration-scale 0.33`).
                if found.is_none() {
                    let anywhere = Ask {
                        ignore_guards,
                        ..Ask::new(spec, g, end_s)
                    };
                    found = self.victims_and_place(&anywhere, &wide, None);
                }
            }
        }
        found
    }

    /// For a job that cannot start now and would borrow: preempts idle runs that
    /// yielded (`IdlePolicy::Yield`), of any team, its own included, where they make room for
    /// it, on the first model of `admissible` (with the class it has there) where they do.
    /// The same victim choice, holds and grace periods as reclaim; the victims are stopped
    /// as idle.
    pub(super) fn take_yielded<'w>(
        &mut self,
        job: &Job,
        team: usize,
        admissible: &[(usize, usize, Admission)],
        within: &dyn Fn(usize, Admission) -> Option<(usize, &'w [u64])>,
    ) -> bool {
        if self.yield_exhausted() || self.waits_on_victims(job) || job.stopped_idle {
            return false;
        }
        self.settle();
        let spec = &job.spec;
        let (end_s, _) = self.end_of(spec, self.now);
        for &(m, g, class) in admissible {
            // Inside its guarantee, reclaim has taken idle runs with the borrowed ones.
            if class == Admission::Guaranteed || self.victims.yielded[m] == 0 {
                continue;
            }
            self.sort_victims();
            let idle: Vec<usize> = self.victims.by_model[m]
                .iter()
                .copied()
                .filter(|&i| self.runs[i].yielded && !self.runs[i].stopped)
                .collect();
            let touched: u64 = idle.iter().map(|&i| self.runs[i].touched).sum();
            if idle.is_empty() || self.view.group_free_milli[g] + touched < spec.milli_total() {
                continue;
            }
            let ask = Ask::new(spec, g, end_s).within(within(m, class));
            let Some((chosen, placement)) = self.victims_and_place(&ask, &idle, None) else {
                self.attempts.failed_reclaims += 1;
                continue;
            };
            for &i in &chosen {
                let freed = self.runs[i].touched;
                self.victims.milli_left[m] = self.victims.milli_left[m].saturating_sub(freed);
            }
            self.victims.yielded[m] = self.victims.yielded[m].saturating_sub(chosen.len());
            self.attempts.reclaims += 1;
            self.preempt(
                job,
                team,
                (m, g),
                &chosen,
                placement,
                (StopCause::Idle, class),
            );
            return true;
        }
        false
    }

    /// Milli-GPUs that stopping `runs` takes from each team and its ancestors, by
    /// `(team, pool of the run's model)`. With `yielded_gone`, idle runs that yielded are
    /// left out: they left their team when they yielded (`scan_running` counted them in
    /// `Victims::taken`).
    pub(super) fn takes(
        &self,
        runs: &[usize],
        yielded_gone: bool,
    ) -> BTreeMap<(usize, usize), u64> {
        let mut take = BTreeMap::new();
        for &i in runs {
            let r = &self.runs[i];
            let Some(t) = r.team else { continue };
            if yielded_gone && r.yielded {
                continue;
            }
            let pool = self.teams.pool_of_model[t][r.model];
            for &a in &self.teams.lineage[t] {
                *take.entry((a, pool)).or_default() += r.milli;
            }
        }
        take
    }

    /// Whether every team (and ancestor) `chosen` would take runs from keeps at least its
    /// guarantee of model `m`'s pool, counting what earlier reclaims of this plan took.
    fn surplus_fits(&self, chosen: &[usize]) -> bool {
        let take = self.takes(chosen, true);
        take.iter().all(|(&(a, pool), &milli)| {
            let before = self.victims.taken.get(&(a, pool)).copied().unwrap_or(0);
            let held = self.acct.alloc[a][pool].saturating_sub(before);
            held.saturating_sub(milli) >= self.teams.pools[a][pool].guaranteed
        })
    }

    /// Stops the `chosen` runs for `job` with `cause`, keeps the free part of the job's
    /// future `placement` for it in this plan, counts it against its team as `class`, and
    /// explains it as waiting for its victims.
    pub(super) fn preempt(
        &mut self,
        job: &Job,
        team: usize,
        (m, g): (usize, usize),
        chosen: &[usize],
        placement: Vec<TaskPlacement>,
        (cause, class): (StopCause, Admission),
    ) {
        let spec = &job.spec;
        // Keep the free part of the future placement for this job, in this plan.
        for task in &placement {
            Self::occupy(&mut self.view, task, spec.cpu_milli, spec.mem_mib);
        }
        let mut ready_by_s = self.now;
        let mut ids = Vec::new();
        for &i in chosen {
            let r = &mut self.runs[i];
            r.stopped = true;
            ready_by_s = ready_by_s.max(self.now.saturating_add(r.note.grace_s));
            ids.push(r.id);
            // An idle run that yielded is stopped as idle, whatever made room for whom.
            let cause = if r.yielded { StopCause::Idle } else { cause };
            self.out.stops.push(StopOrder {
                job: r.id,
                cause,
                beneficiary: Some(spec.id),
                lost_gpu_s: r.lost_gpu_s,
                borrowing: class == Admission::Borrowed,
            });
        }
        ids.sort();
        self.claim(job, team, m, g, &placement, ready_by_s, class);
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
                lower_priority: cause == StopCause::Priority,
            },
            Some(ready_by_s),
        );
    }

    /// Victims among `victims` (cheapest first) that make room for the ask, and where it goes.
    /// With `surplus` (the model), runs counted inside the guarantee of a team above it are
    /// among the `victims`: every team must keep its guarantee of that model's pool
    /// (`surplus_fits`), which for one task is checked node by node, so that another node
    /// can serve where the cheapest would take too much from a team.
    pub(super) fn victims_and_place(
        &mut self,
        ask: &Ask,
        victims: &[usize],
        surplus: Option<usize>,
    ) -> Option<(Vec<usize>, Vec<TaskPlacement>)> {
        let chosen = if ask.spec.tasks == 1 {
            self.victims_for_task(ask, victims, surplus)
        } else {
            self.victims_for_gang(ask, victims)
                .filter(|chosen| surplus.is_none_or(|_| self.surplus_fits(chosen)))
        }?;
        let placement = self.find_without(&chosen, ask)?;
        Some((chosen, placement))
    }

    /// The borrowed `victims`, and every other run that may be preempted and sits in the
    /// team's own `home` away from its own team's home, cheapest first: what the team may
    /// take back to have its guarantee in shape.
    fn home_victims(&self, team: usize, m: usize, home: &[u64], victims: &[usize]) -> Vec<usize> {
        let mut out: Vec<usize> = victims.to_vec();
        self.resolve_runs();
        for (i, r) in self.runs.iter().enumerate() {
            let in_home = || {
                self.placement(i)
                    .iter()
                    .any(|t| self.view.dense(t.node).is_some_and(|n| bit(home, n)))
            };
            let eligible = !r.stopped
                && r.model == m
                && r.team.is_some_and(|t| t != team)
                && r.mode == Admission::Guaranteed
                && r.note.preemptible
                && self.now.saturating_sub(r.note.started_s) >= r.note.min_run_s
                && in_home()
                && !self.run_at_home(i);
            if eligible {
                out.push(i);
            }
        }
        out.sort_by_key(|&i| self.victim_key(i));
        out
    }

    /// Where the ask goes once the given running jobs have given their resources back. A few
    /// runs are given back on the view itself and taken again (the view is left as it was:
    /// its indices are ordered sets, so their contents alone decide every later query);
    /// many, on a copy, which then costs less.
    pub(super) fn find_without(&mut self, runs: &[usize], ask: &Ask) -> Option<Vec<TaskPlacement>> {
        let tasks: usize = runs.iter().map(|&i| self.runs[i].note.tasks as usize).sum();
        if tasks > IN_PLACE_TASKS {
            return place::find(&self.view_without(runs), ask);
        }
        self.resolve_runs();
        for &i in runs {
            let (note, placement) = (self.runs[i].note, self.placement(i));
            self.view.give(placement, note.cpu_milli, note.mem_mib);
        }
        let found = place::find(&self.view, ask);
        for &i in runs.iter().rev() {
            let (note, placement) = (self.runs[i].note, self.placement(i));
            self.view.take(placement, note.cpu_milli, note.mem_mib);
        }
        found
    }

    /// A copy of the view with the given running jobs' resources given back.
    fn view_without(&self, runs: &[usize]) -> View<'a> {
        let mut v = self.view.clone();
        self.resolve_runs();
        for &i in runs {
            let note = self.runs[i].note;
            v.give(self.placement(i), note.cpu_milli, note.mem_mib);
        }
        v
    }

    /// For one task: on each node, the cheapest victims there that make room; the cheapest
    /// node wins.
    pub(super) fn victims_for_task(
        &self,
        ask: &Ask,
        victims: &[usize],
        surplus: Option<usize>,
    ) -> Option<Vec<usize>> {
        let (spec, g) = (ask.spec, ask.group);
        let mut on_node: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        self.resolve_runs();
        for &i in victims {
            for task in self.placement(i) {
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
                || ask.within.is_some_and(|(_, h)| !bit(h, n))
                || !spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| self.view.nodes[n as usize].spec.labels.get(k) == Some(v))
            {
                continue;
            }
            // GPUs, CPU and memory promised to reservations that start before the job would
            // end stay theirs, whatever the victims give back (as `find_without` places).
            let forbidden = place::forbidden(&self.view, ask, n);
            let (cpu_slack, mem_slack) = place::guard_slack(&self.view, ask, n);
            let mut used = self.view.used_of(n).to_vec();
            for (gi, u) in used.iter_mut().enumerate() {
                if forbidden & (1 << gi) != 0 {
                    *u = crate::model::MILLI_PER_GPU;
                }
            }
            let mut cpu = self.view.cpu_free[n as usize];
            let mut mem = self.view.mem_free[n as usize];
            let mut cost = 0u64;
            let mut chosen = Vec::new();
            for i in list {
                let r = &self.runs[i];
                for task in self
                    .placement(i)
                    .iter()
                    .filter(|t| t.node == self.view.ids[n as usize])
                {
                    for &gi in task.gpus.iter().filter(|&&gi| forbidden & (1 << gi) == 0) {
                        used[gi as usize] = used[gi as usize].saturating_sub(task.gpu_milli);
                    }
                    cpu += r.note.cpu_milli;
                    mem += r.note.mem_mib;
                }
                cost += r.lost_gpu_s;
                chosen.push(i);
                if super::reserve::fits(spec, &used, cpu.min(cpu_slack), mem.min(mem_slack)) {
                    let fits = surplus.is_none_or(|_| self.surplus_fits(&chosen));
                    if fits && best.as_ref().is_none_or(|b| (cost, n) < (b.0, b.1)) {
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
    pub(super) fn victims_for_gang(&mut self, ask: &Ask, victims: &[usize]) -> Option<Vec<usize>> {
        let p = self.find_without(victims, ask)?;
        let used: BTreeSet<(crate::model::NodeId, u32)> = p
            .iter()
            .flat_map(|t| t.gpus.iter().map(move |&g| (t.node, g)))
            .collect();
        let mut chosen: Vec<usize> = victims
            .iter()
            .copied()
            .filter(|&i| {
                self.placement(i)
                    .iter()
                    .any(|t| t.gpus.iter().any(|&g| used.contains(&(t.node, g))))
            })
            .collect();
        chosen.sort_by_key(|&i| Reverse((self.runs[i].lost_gpu_s, self.runs[i].id)));
        let mut k = 0;
        let mut steps = 0;
        while k < chosen.len() && steps < MAX_PRUNE_STEPS {
            steps += 1;
            let mut trial = chosen.clone();
            trial.remove(k);
            if self.find_without(&trial, ask).is_some() {
                chosen = trial;
            } else {
                k += 1;
            }
        }
        Some(chosen)
    }
}
