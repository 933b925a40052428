//! The order of pending jobs. `rank` is a job's key in the heap of team heads (admission
//! class, priority, starving first, fair-share standing, submission, id); `Ordered` is one
//! team's queue (priority, submission, id), packed for fast sorting.

use std::cmp::Reverse;

use crate::model::{JobId, PolicyKind, Secs};
use crate::state::Job;

use super::planner::Planner;

pub(super) type RankKey = (u8, i64, u8, u64, Secs, JobId);

pub(super) fn fixed_point_key(x: f64) -> u64 {
    (x.max(0.0) * 1e6).min(u64::MAX as f64) as u64
}

impl<'a> Planner<'a> {
    pub(super) fn rank(&self, job: &Job, team: usize) -> RankKey {
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
        let key = if starving == 0 {
            0
        } else {
            fixed_point_key(key)
        };
        (class, prio, starving, key, spec.submit_s, spec.id)
    }
}

/// A team's pending jobs in plan order: priority, then submission, then id. The key is packed
/// into one `u128` kept inline (priority 32 bits, submission and id 48 bits each; the rare
/// job beyond that sorts by the full tuple), so that sorting neither chases a pointer nor
/// compares a tuple per step: this sort is a seventh of a trace replay's time.
pub(super) struct Ordered<'a> {
    pub(super) keyed: Vec<(u128, &'a Job)>,
}

pub(super) const KEY_48: u64 = (1 << 48) - 1;

pub(super) fn order_key(j: &Job) -> Option<u128> {
    let s = &j.spec;
    let p = (i64::from(i32::MAX) - i64::from(s.priority)) as u128;
    (s.submit_s <= KEY_48 && s.id.0 <= KEY_48)
        .then(|| (p << 96) | (u128::from(s.submit_s) << 48) | u128::from(s.id.0))
}

impl<'a> Ordered<'a> {
    pub(super) fn new(jobs: Vec<&'a Job>) -> Ordered<'a> {
        Ordered {
            keyed: jobs
                .into_iter()
                .map(|j| (order_key(j).unwrap_or(u128::MAX), j))
                .collect(),
        }
    }

    pub(super) fn sort(&mut self) {
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
    pub(super) fn least_suffix(&self) -> Vec<u64> {
        let mut least = vec![u64::MAX; self.keyed.len() + 1];
        for k in (0..self.keyed.len()).rev() {
            least[k] = least[k + 1].min(self.keyed[k].1.spec.milli_total());
        }
        least
    }

    /// The `i`-th job in order.
    pub(super) fn get(&self, i: usize) -> Option<&'a Job> {
        self.keyed.get(i).map(|k| k.1)
    }
}
