//! `plan(state, now) -> Plan`: every start, stop and reservation decision, as a pure function.
//!
//! The planner copies the cluster's free capacity into a [`view::View`], walks the pending
//! jobs in policy order and records what it decides. It never mutates the state; the shell
//! (server or simulator) executes the plan by applying the matching events.

mod estimate;
mod frag;
mod holds;
pub(crate) mod homes;
mod order;
mod partition;
mod passes;
mod place;
mod planner;
mod priority;
mod reclaim;
mod reserve;
mod running;
pub(crate) mod tally;
pub(crate) mod view;

pub use planner::dependency_block;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{After, GpuAsk, JobId, NodeId, PolicyKind, Secs};
use crate::state::{Admission, ClusterState, Event, StopCause, TaskPlacement};

/// What the scheduler decided at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub policy: PolicyKind,
    pub now_s: Secs,
    /// Jobs to start now, in the order the planner chose them.
    pub starts: Vec<Start>,
    /// Running jobs to stop now: reclaim, idle reclaim, time limit.
    pub stops: Vec<StopOrder>,
    /// Blocked jobs and where and when they are promised to start.
    pub reservations: Vec<Reservation>,
    /// Jobs waiting for preempted jobs to exit, and where they will start when they have.
    pub reclaims: Vec<Reservation>,
    /// Every job left pending, by id, with why and an estimated start.
    pub pending: Vec<PendingJob>,
    /// Allocations whose GPUs have been idle past the window.
    pub idle: Vec<IdleNotice>,
    /// Each team's standing, by name.
    pub teams: Vec<TeamStanding>,
}

impl Plan {
    /// A plan that decides nothing.
    pub(crate) fn empty(policy: PolicyKind, now_s: Secs) -> Plan {
        Plan {
            policy,
            now_s,
            starts: Vec::new(),
            stops: Vec::new(),
            reservations: Vec::new(),
            reclaims: Vec::new(),
            pending: Vec::new(),
            idle: Vec::new(),
            teams: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub job: JobId,
    pub placement: Vec<TaskPlacement>,
    pub admission: Admission,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOrder {
    pub job: JobId,
    pub cause: StopCause,
    /// The job the freed GPUs are held for.
    pub beneficiary: Option<JobId>,
    /// GPU-seconds of work the stop throws away (since the last checkpoint).
    pub lost_gpu_s: u64,
    /// The beneficiary would borrow (it took idle runs that yielded, outside its team's
    /// guarantee): its hold is not set aside inside the guarantee.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub job: JobId,
    /// The job starts by then if running jobs end within their time limits.
    pub start_s: Secs,
    pub placement: Vec<TaskPlacement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJob {
    pub job: JobId,
    pub reason: Reason,
    /// Estimated start, where one can be computed.
    pub eta_s: Option<Secs>,
}

/// Why a job is not starting now. Data, not prose: `Display` renders it for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// A job it depends on has not ended yet (`when`: how it must end).
    Dependency {
        on: JobId,
        #[serde(default)]
        when: After,
    },
    /// A job it depends on ended otherwise than `when` asks (or is unknown): it will never
    /// start, and the server ends it.
    DependencyFailed {
        on: JobId,
        #[serde(default)]
        when: After,
    },
    /// As many jobs of its array as the array allows are running.
    ArrayLimit { array: JobId, max_running: u32 },
    /// Starting it would put `team` (itself or an ancestor) above its `max`.
    OverMax {
        team: String,
        model: String,
        used_milli: u64,
        ask_milli: u64,
        max_milli: u64,
    },
    /// Starting it would put `team` (itself or an ancestor) above its CPU cap.
    OverCpuMax {
        team: String,
        used_milli: u64,
        ask_milli: u64,
        max_milli: u64,
    },
    /// Running jobs are being preempted for it: borrowed jobs of other teams, to give its
    /// team's guarantee back, or (`lower_priority`) its own team's jobs of lower priority.
    WaitingForReclaim {
        victims: Vec<JobId>,
        ready_by_s: Secs,
        /// The victims are jobs of its own team with a lower priority (absent when false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lower_priority: bool,
    },
    /// It holds a reservation: the GPUs it needs are promised at `start_s`.
    Reserved { start_s: Secs },
    /// It would fit now, but would delay a reserved job.
    BehindReservation { reserved: JobId, start_s: Secs },
    /// Not enough free GPUs in the right shape.
    NoPlacement {
        tasks: u32,
        gpu: GpuAsk,
        model: Option<String>,
        free_gpus: u64,
        largest_free_block: u32,
    },
    /// `fifo`: the job at the head of the queue is blocked, and everything waits behind it.
    BlockedByHead { head: JobId },
    /// `static`: the team has no partition (no guarantee for this GPU model).
    NoPartition { team: String },
    /// It cannot be preempted, so it runs only where no other team's guarantee lives (its
    /// team's home, nodes no team is guaranteed), and those have no room for it now (it would
    /// fit elsewhere) or ever (it is bigger than that).
    NotPreemptible { team: String },
    /// It cannot be preempted and has no time limit, so it runs only within its team's
    /// guarantee, and that is in use: it may not borrow.
    NeedsTimeLimit { team: String },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpus = |m: u64| m as f64 / 1000.0;
        match self {
            Reason::Dependency { on, when } => write!(
                f,
                "waiting for {on} to {}",
                match when {
                    After::Ok => "succeed",
                    After::Any => "end",
                    After::Failed => "fail",
                }
            ),
            Reason::DependencyFailed { on, when } => write!(
                f,
                "{on} {}, so this job, which was to start only after it {}, never will",
                match when {
                    After::Failed => "succeeded",
                    _ => "failed, was cancelled or is unknown",
                },
                match when {
                    After::Ok => "succeeded",
                    After::Any => "ended",
                    After::Failed => "failed",
                }
            ),
            Reason::ArrayLimit { array, max_running } => write!(
                f,
                "{max_running} jobs of array {} are running, the most it allows at once",
                array.0
            ),
            Reason::OverMax {
                team,
                model,
                used_milli,
                ask_milli,
                max_milli,
            } => write!(
                f,
                "over quota: team {team} holds {} {model} GPUs, this job needs {} more and the team's max is {}",
                gpus(*used_milli),
                gpus(*ask_milli),
                gpus(*max_milli)
            ),
            Reason::OverCpuMax {
                team,
                used_milli,
                ask_milli,
                max_milli,
            } => write!(
                f,
                "over CPU cap: team {team} holds {} CPUs, this job needs {} more and the team's CPU max is {}",
                gpus(*used_milli),
                gpus(*ask_milli),
                gpus(*max_milli)
            ),
            Reason::WaitingForReclaim {
                victims,
                ready_by_s,
                lower_priority,
            } => {
                let list: Vec<String> = victims.iter().map(ToString::to_string).collect();
                let whom = if *lower_priority {
                    "lower-priority jobs of its own team: "
                } else {
                    "borrowed "
                };
                write!(
                    f,
                    "waiting for reclaim: preempting {whom}{} (done by t={ready_by_s}s)",
                    list.join(", ")
                )
            }
            Reason::Reserved { start_s } => {
                write!(
                    f,
                    "GPUs reserved; starts by t={start_s}s if running jobs keep their time limits and no job that goes before it takes them first"
                )
            }
            Reason::BehindReservation { reserved, start_s } => write!(
                f,
                "would fit, but would delay {reserved}, which has GPUs reserved from t={start_s}s; a shorter time limit would let it backfill"
            ),
            Reason::NoPlacement {
                tasks,
                gpu,
                model,
                free_gpus,
                largest_free_block,
            } => {
                let per_task = match gpu {
                    GpuAsk::Whole(n) => format!("{n} GPU(s)"),
                    GpuAsk::Milli(m) => format!("{m} milli-GPU"),
                };
                write!(
                    f,
                    "no placement for {tasks} task(s) of {per_task} of model {}: {free_gpus} whole GPUs free, the largest free block is {largest_free_block} on one node",
                    model.as_deref().unwrap_or("any")
                )
            }
            Reason::BlockedByHead { head } => {
                write!(f, "queued behind {head}, which is blocked (fifo)")
            }
            Reason::NoPartition { team } => {
                write!(f, "team {team} has no partition for this GPU model (static)")
            }
            Reason::NotPreemptible { team } => write!(
                f,
                "cannot be preempted, so it runs only inside team {team}'s guarantee (its home nodes) or on nodes no team is guaranteed, which have no room for it now or ever; as a preemptible job it could borrow other teams' idle GPUs"
            ),
            Reason::NeedsTimeLimit { team } => write!(
                f,
                "cannot be preempted and has no time limit, so it runs only within team {team}'s guarantee, which is in use; with a time limit (--time-limit) it could borrow idle GPUs, or as a preemptible job"
            ),
        }
    }
}

/// What happens to an idle allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    /// Flagged; nothing else will happen (`warn`).
    Warn,
    /// Flagged and unprotected: any pending job that needs its GPUs may preempt it (`yield`);
    /// with `release`, it is stopped at `release_at_s` unless it gets busy first.
    Yield { release_at_s: Option<Secs> },
    /// Stopped and requeued by this plan (listed in `stops`): `release`, past its window.
    Released,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleNotice {
    pub job: JobId,
    pub team: String,
    pub idle_since_s: Secs,
    pub action: IdleAction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeamStanding {
    pub team: String,
    /// Guaranteed GPUs over all pools.
    pub guaranteed_gpus: u32,
    /// Milli-GPUs held by the team's own jobs now.
    pub alloc_milli: u64,
    /// The part of `alloc_milli` beyond the guarantee.
    pub borrowed_milli: u64,
    /// The part of `alloc_milli` that is idle now.
    pub idle_milli: u64,
    /// Fair-share standing: decayed usage over entitlement; lower goes first.
    pub standing: f64,
    pub idle_gpu_hours: f64,
}

impl Plan {
    pub fn pending_job(&self, job: JobId) -> Option<&PendingJob> {
        self.pending
            .binary_search_by_key(&job, |p| p.job)
            .ok()
            .map(|i| &self.pending[i])
    }

    pub fn start_of(&self, job: JobId) -> Option<&Start> {
        self.starts.iter().find(|s| s.job == job)
    }

    /// The events that execute this plan at `at_s`, in the order to apply them: every stop
    /// first (a reclaim's victims stop before anything starts), then every start, each in
    /// plan order. A shell applies them one by one (a refused one changes nothing) or
    /// commits them as one batch.
    pub fn events(&self, at_s: Secs) -> Vec<Event> {
        let stops = self.stops.iter().map(|stop| stop.event(at_s));
        let starts = self.starts.iter().map(|start| start.event(at_s));
        stops.chain(starts).collect()
    }
}

impl Start {
    /// The event that executes this start at `at_s`.
    pub fn event(&self, at_s: Secs) -> Event {
        Event::Start {
            job: self.job,
            placement: self.placement.clone(),
            admission: self.admission,
            at_s,
        }
    }
}

impl StopOrder {
    /// The event that executes this stop at `at_s`.
    pub fn event(&self, at_s: Secs) -> Event {
        Event::Stop {
            job: self.job,
            cause: self.cause,
            beneficiary: self.beneficiary,
            borrowing: self.borrowing,
            at_s,
        }
    }
}

/// Each running (or stopping) job's admission under the quotas in force at `now`, as every
/// plan classifies it: a job that started on lent capacity counts as guaranteed once its
/// team's guarantee covers it, and a guaranteed one as borrowed once the guarantee shrinks
/// below it. What a shell shows as borrowed (reclaimable) capacity.
pub fn admissions(state: &ClusterState, now: Secs) -> BTreeMap<JobId, Admission> {
    let mut planner = planner::Planner::new(state, now, false);
    planner.scan_running();
    planner.ensure_runs();
    planner.runs.iter().map(|run| (run.id, run.mode)).collect()
}

/// Where teams' guarantees live under the `default` policy (`homes.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeMap {
    /// Each team's own home, by team name (a parent's holds its sub-teams'); teams without
    /// one are absent.
    pub teams: BTreeMap<String, std::collections::BTreeSet<NodeId>>,
    /// Nodes that are nobody's home: common ground, where every team is at home too.
    pub common: std::collections::BTreeSet<NodeId>,
}

/// Each team's home (see [`HomeMap`]); empty under `fifo` and `static`.
pub fn homes(state: &ClusterState) -> HomeMap {
    let planner = planner::Planner::new(state, state.clock_s, false);
    let mut out = HomeMap::default();
    let n = planner.view.ids.len() as u32;
    for (t, name) in planner.teams.names.iter().enumerate() {
        let nodes: std::collections::BTreeSet<NodeId> = planner
            .homes
            .own(t)
            .map(|n| planner.view.ids[n as usize])
            .collect();
        if !nodes.is_empty() {
            out.teams.insert(name.clone(), nodes);
        }
    }
    if !out.teams.is_empty() {
        out.common = (0..n)
            .filter(|&i| planner.homes.common(i))
            .map(|i| planner.view.ids[i as usize])
            .collect();
    }
    out
}

/// Plans with the policy named in the state's configuration.
pub fn plan(state: &ClusterState, now: Secs) -> Plan {
    planner::Planner::new(state, now, true).run()
}

/// The same decisions as [`plan`] (starts, stops, reclaims, idle notices), without
/// explaining the jobs that stay pending: `pending` and `teams` are empty. For shells that
/// only execute plans, such as the simulator. Its reservations are a prefix of `plan`'s: it
/// stops once nothing more can start, and makes a reservation only when a later decision
/// reads it (`reserve.rs`, `Deferred`).
pub fn decide(state: &ClusterState, now: Secs) -> Plan {
    if let Some(quiet) = running::quiet_plan(state, now) {
        debug_assert_eq!(
            quiet,
            planner::Planner::new(state, now, false).run(),
            "a plan where nothing waits decides what the planner does"
        );
        return quiet;
    }
    planner::Planner::new(state, now, false).run()
}
