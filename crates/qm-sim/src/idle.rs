//! Idle GPUs in a replay: which jobs hold GPUs they do not use, how many GPU-hours that
//! comes to, how much of it while other work waited, and how much the idle policies gave
//! back.
//!
//! A trace job may say how busy it keeps its GPUs (`util_pct`, percent while it works) and
//! when it stops using them (`idle_after_s`: after that much work it holds them idle until
//! its duration is over). The replay feeds the core utilisation samples as the server does
//! from its agents: one below the idle threshold when a job's GPUs go idle, then one at
//! every window's end (so the core charges idle time and its idle policies act on time) and
//! one just before the job ends. A job whose utilisation is unknown gets no samples, and is
//! never idle. A job is idle for the whole of a run if its `util_pct` is below the
//! threshold.
//!
//! A job stopped while it holds its GPUs idle after its work is done (by a policy that
//! released it, or by a preemption it yielded to) has nothing left to run: the replay ends
//! it there, as the person who left a notebook open would find it gone. Its GPU-hours from
//! then to the end it would have held them are *reclaimed*.

use std::collections::BTreeMap;

use qm_core::{ClusterState, Secs};

/// What the replay knows of one job's current run, for idleness.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RunIdle {
    /// When the run's GPUs went idle, if they have.
    pub since: Option<Secs>,
    /// Its work is done: idle because of `idle_after_s`, not because of low utilisation.
    pub done_working: bool,
    /// When the run would end by itself.
    pub ends_s: Secs,
}

/// Idle GPU time integrated over a replay.
#[derive(Debug, Default)]
pub(crate) struct IdleMeter {
    last: Secs,
    /// Milli-GPUs held idle now, in all and per team.
    now_milli: u64,
    team_now: BTreeMap<String, u64>,
    /// Some job that asks for GPUs is pending now.
    waiting: bool,
    pub(crate) milli_s: u128,
    pub(crate) while_waiting_milli_s: u128,
    pub(crate) reclaimed_milli_s: u128,
    pub(crate) team_milli_s: BTreeMap<String, u128>,
    /// Jobs stopped as idle while the replay knew them to be busy (must stay 0).
    pub(crate) busy_stopped: u64,
    /// Jobs ended because they were stopped while idle after their work was done.
    pub(crate) ended_idle: u64,
}

impl IdleMeter {
    /// Adds what was held idle from the last change up to `now`.
    pub(crate) fn until(&mut self, now: Secs) {
        let dt = u128::from(now.saturating_sub(self.last));
        if dt > 0 {
            let idle = u128::from(self.now_milli) * dt;
            self.milli_s += idle;
            if self.waiting {
                self.while_waiting_milli_s += idle;
            }
            for (team, &milli) in &self.team_now {
                *self.team_milli_s.entry(team.clone()).or_default() += u128::from(milli) * dt;
            }
        }
        self.last = self.last.max(now);
    }

    /// A job of `team` holding `milli` went idle (`true`) or stopped holding idle GPUs.
    pub(crate) fn change(&mut self, team: &str, milli: u64, idle: bool) {
        let t = self.team_now.entry(team.to_string()).or_default();
        if idle {
            self.now_milli += milli;
            *t += milli;
        } else {
            self.now_milli = self.now_milli.saturating_sub(milli);
            *t = t.saturating_sub(milli);
        }
    }

    /// Whether some job that asks for GPUs waits, after a plan.
    pub(crate) fn after_plan(&mut self, state: &ClusterState) {
        self.waiting = state
            .teams()
            .any(|t| state.least_pending_gpu_ask(&t.spec.name).is_some());
    }

    pub(crate) fn totals(self) -> IdleTotals {
        IdleTotals {
            milli_s: self.milli_s,
            while_waiting_milli_s: self.while_waiting_milli_s,
            reclaimed_milli_s: self.reclaimed_milli_s,
            team_milli_s: self.team_milli_s,
            busy_stopped: self.busy_stopped,
            ended_idle: self.ended_idle,
        }
    }
}

/// A replay's idle figures ([`crate::sim::SimResult::idle`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdleTotals {
    /// Milli-GPU-seconds allocated to jobs while they were idle.
    pub milli_s: u128,
    /// The part of `milli_s` held while some job asking for GPUs was pending.
    pub while_waiting_milli_s: u128,
    /// Milli-GPU-seconds idle jobs would still have held when a stop gave their GPUs back
    /// (from the end of the grace period to the end they would have reached by themselves).
    pub reclaimed_milli_s: u128,
    /// `milli_s` per team with idle time.
    pub team_milli_s: BTreeMap<String, u128>,
    /// Jobs stopped as idle while they worked above the idle threshold: must be 0.
    pub busy_stopped: u64,
    /// Jobs ended because they were stopped while idle after their work was done.
    pub ended_idle: u64,
}
