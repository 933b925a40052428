//! Explanations that need the whole plan: estimated starts of jobs left waiting for capacity
//! (walked in plan order against expected releases) or for a team's `max` (against the
//! capped team's own releases), and each team's standing.

use std::collections::BTreeMap;

use crate::model::{JobId, Secs, MILLI_PER_GPU};
use crate::state::Admission;

use super::planner::Planner;
use super::TeamStanding;

/// What the estimates are computed from, gathered during the plan.
#[derive(Default)]
pub(super) struct EstimateInputs {
    /// Group in which each capacity-blocked pending job waits.
    pub(super) group_of: BTreeMap<JobId, usize>,
    /// Expected end (runtime estimate or time limit), team, model and milli-GPUs of every
    /// holding or starting job, for estimates of jobs waiting on a `max` (gathered only when the
    /// plan explains).
    pub(super) job_ends: Vec<(Secs, usize, usize, u64)>,
    /// Jobs waiting on a `max`: (job, team whose max, model, milli-GPUs over the max).
    pub(super) over_max_waits: Vec<(JobId, usize, usize, u64)>,
}

impl<'a> Planner<'a> {
    /// Estimated starts of capacity-blocked jobs: walk them in plan order against the
    /// releases expected from runtime estimates (or time limits), in aggregate per group.
    pub(super) fn estimate(&mut self) {
        self.estimate_over_max();
        if self.eta.group_of.is_empty() {
            return;
        }
        self.releases();
        let groups = self.view.buckets.len();
        let mut rel: Vec<Vec<(Secs, u64)>> = vec![Vec::new(); groups];
        for r in &self.timeline.releases {
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
        let free: Vec<u64> = (0..groups).map(|g| self.view.free_milli(g)).collect();
        let mut demand = vec![0u64; groups];
        for p in &mut self.out.pending {
            let Some(&g) = self.eta.group_of.get(&p.job) else {
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
    pub(super) fn estimate_over_max(&mut self) {
        if self.eta.over_max_waits.is_empty() {
            return;
        }
        let mut curves: BTreeMap<(usize, usize), Vec<(Secs, u64)>> = BTreeMap::new();
        let mut queued: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut etas: BTreeMap<JobId, Secs> = BTreeMap::new();
        for &(job, a, m, over) in &self.eta.over_max_waits {
            let pool = self.teams.pool_of_model[a][m];
            let curve = curves.entry((a, pool)).or_insert_with(|| {
                let mut ends: Vec<(Secs, u64)> = self
                    .eta
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

    pub(super) fn standings(&mut self) {
        let mut borrowed = vec![0u64; self.teams.names.len()];
        let mut idle = vec![0u64; self.teams.names.len()];
        let mut own = vec![0u64; self.teams.names.len()];
        for r in &self.runs {
            let Some(t) = r.team else { continue };
            let milli = r.milli;
            let is_idle = r.note.idle_since_s.is_some();
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
        self.acct.alloc_total.clone_from(&own);
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
