//! The order of pending jobs. `rank` is a job's key in the heap of team heads (admission
//! class, priority, starving first where a starvation wait is set, fair-share standing,
//! submission, id); a `Lane` is one team's queue (priority, submission, id) as a pass walks
//! it.

use crate::model::{JobId, PolicyKind, Secs};
use crate::state::{Job, QueueKey, TeamQueue};

use super::planner::Planner;

pub(super) type RankKey = (u8, i64, u8, u64, Secs, JobId);

pub(super) fn fixed_point_key(x: f64) -> u64 {
    (x.max(0.0) * 1e6).min(u64::MAX as f64) as u64
}

impl<'a> Planner<'a> {
    pub(super) fn rank(&self, job: &Job, team: usize) -> RankKey {
        self.rank_as(job, team, self.guaranteed_somewhere(job, team))
    }

    /// The key of a job ranked as inside its team's guarantee (`guaranteed`) or borrowing.
    pub(super) fn rank_as(&self, job: &Job, team: usize, guaranteed: bool) -> RankKey {
        let spec = &job.spec;
        // 0 sorts first: a job past the starvation wait, where one is set.
        let starving = u8::from(
            self.cfg
                .starvation_wait_s
                .is_none_or(|w| self.now.saturating_sub(spec.submit_s) < w),
        );
        let prio = -i64::from(spec.priority);
        if self.policy != PolicyKind::Default {
            return (0, prio, starving, 0, spec.submit_s, spec.id);
        }
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

/// One team's queue as a pass walks it: the state keeps the queue in plan order (priority,
/// submission, id; `state::TeamQueue`), and the pass takes jobs from its head only as far as
/// it gets, so a plan that ends early never touches the jobs behind.
pub(super) struct Lane<'a> {
    pub(super) team: usize,
    queue: &'a TeamQueue,
    rest: std::collections::btree_set::Iter<'a, QueueKey>,
    /// The next job not yet taken (dependency-blocked and hold-served jobs passed over).
    pub(super) head: Option<&'a Job>,
    /// Jobs the guaranteed phase set aside for the borrowing phase, in order.
    pub(super) skipped: Vec<&'a Job>,
    /// The guaranteed phase stopped walking: every job from `head` on is set aside too.
    pub(super) tail_skipped: bool,
    /// How many of `skipped` the borrowing phase has taken.
    pub(super) taken: usize,
    /// Nothing left in the lane can start, reserve or preempt in this plan (`decide`).
    pub(super) spent: bool,
    /// Milli-GPU asks of the jobs that have left the pass (decided, or passed over), by
    /// size, so that the least ask still left is known without a walk.
    gone: Vec<(u64, usize)>,
    /// Jobs passed over because this plan's starts filled their array: the pass began
    /// before, so nothing explained them yet (`plan` only).
    pub(super) filled: Vec<&'a Job>,
    /// The job the guaranteed phase offers as owed its guarantee's shape
    /// (`Planner::next_guaranteed`), until it is popped.
    pub(super) owed: Option<JobId>,
    /// The lane has offered such a job in this plan (at most one).
    pub(super) owed_done: bool,
}

impl<'a> Lane<'a> {
    pub(super) fn new(team: usize, queue: &'a TeamQueue) -> Lane<'a> {
        Lane {
            team,
            queue,
            rest: queue.order.iter(),
            head: None,
            skipped: Vec::new(),
            tail_skipped: false,
            taken: 0,
            spent: false,
            gone: Vec::new(),
            filled: Vec::new(),
            owed: None,
            owed_done: false,
        }
    }

    /// The next key of the queue, for the caller to look up and filter.
    pub(super) fn next_key(&mut self) -> Option<JobId> {
        self.rest.next().map(|k| k.2)
    }

    /// A job has left the pass.
    pub(super) fn gone(&mut self, job: &Job) {
        let milli = job.spec.milli_total();
        match self.gone.iter_mut().find(|g| g.0 == milli) {
            Some(g) => g.1 += 1,
            None => self.gone.push((milli, 1)),
        }
    }

    /// A lower bound of the asks still left in the pass (`u64::MAX` for none); with
    /// `nonzero`, of those asking for GPUs.
    pub(super) fn least_left(&self, nonzero: bool) -> u64 {
        for (&milli, &count) in &self.queue.asks {
            if nonzero && milli == 0 {
                continue;
            }
            let gone = self.gone.iter().find(|g| g.0 == milli).map_or(0, |g| g.1);
            if count > gone {
                return milli;
            }
        }
        u64::MAX
    }
}
