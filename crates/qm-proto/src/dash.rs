//! The dashboard's snapshot, as `GET /api/v1/stream` sends it and `assets/app.js` reads it.
//! Field names are the JSON keys the page reads; milli-GPUs where named `milli`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Admission, JobState, NodeState};

/// Everything the dashboard shows, as of `now`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashSnapshot {
    pub now: u64,
    pub overview: DashOverview,
    /// Overview samples, oldest first: `[time, allocated, borrowed, idle]` in milli-GPUs.
    pub history: Vec<[u64; 4]>,
    pub teams: Vec<DashTeam>,
    pub queue: DashQueue,
    pub nodes: Vec<DashNode>,
    /// The latest jobs, newest first.
    pub jobs: Vec<DashJob>,
}

/// The snapshot as JSON (what the stream sends).
impl fmt::Display for DashSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// The cluster's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashOverview {
    /// GPUs on nodes that are not down.
    pub gpus_milli: u64,
    pub allocated_milli: u64,
    pub borrowed_milli: u64,
    pub idle_milli: u64,
    pub free_milli: u64,
    /// Jobs pending now.
    pub pending: u64,
    /// Jobs running or stopping now.
    pub running: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashTeam {
    pub name: String,
    pub parent: Option<String>,
    /// Over all GPU models.
    pub guaranteed_milli: u64,
    pub used_milli: u64,
    pub borrowed_milli: u64,
    pub idle_milli: u64,
    pub idle_gpu_hours: f64,
    /// Over the last 7 days, from the usage samples.
    #[serde(default)]
    pub idle_gpu_hours_7d: f64,
    /// The team's fair-share standing in the latest plan.
    pub standing: Option<Standing>,
    /// Its running jobs whose GPUs are idle now, and what its idle policy does next.
    #[serde(default)]
    pub idle_jobs: Vec<crate::IdleView>,
}

/// A team's standing, as the scheduling core reports it in a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Standing {
    pub team: String,
    /// Guaranteed GPUs over all pools.
    pub guaranteed_gpus: u32,
    /// Milli-GPUs held by the team and its sub-teams.
    pub alloc_milli: u64,
    /// The part of `alloc_milli` beyond the guarantee.
    pub borrowed_milli: u64,
    /// The part of `alloc_milli` that is idle now.
    pub idle_milli: u64,
    /// Decayed usage over entitlement; lower goes first.
    pub standing: f64,
    pub idle_gpu_hours: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashQueue {
    /// Pending jobs in all (`jobs` holds the first of them).
    pub total: u64,
    pub jobs: Vec<DashPending>,
    pub reservations: Vec<DashReservation>,
}

/// A pending job, in plan order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashPending {
    pub id: u64,
    pub team: String,
    /// E.g. `2x8 GPU` or `1x250 mGPU`.
    pub ask: String,
    /// Why it waits, for people.
    pub reason: String,
    pub eta_s: Option<u64>,
    pub wait_s: u64,
    /// Its array's id and its index there, for a job of an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<(u64, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashReservation {
    pub id: u64,
    pub start_s: u64,
    /// Node of each task.
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashNode {
    pub name: String,
    /// The `rack` label, else the innermost topology domain.
    pub rack: String,
    pub model: String,
    pub state: NodeState,
    /// Per GPU: `[allocated milli-GPUs, utilisation percent]`.
    pub gpus: Vec<[u32; 2]>,
    /// The tasks running here: which job holds which GPUs (for the heat map's hover and
    /// search). Where jobs are private, only the member's own teams' tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<DashTask>,
}

/// A task on a node: its job, the job's team and the GPUs it holds there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashTask {
    pub job: u64,
    pub team: String,
    pub gpus: Vec<u32>,
}

/// One page of the pending queue in plan order (`GET /api/v1/queue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueuePage {
    /// Pending jobs in all (that the caller may see).
    pub total: u64,
    /// Those matching the filter.
    pub matched: u64,
    /// Where this page starts among the matching jobs.
    pub offset: u64,
    pub jobs: Vec<DashPending>,
}

/// Who a token is (`GET /api/v1/whoami`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub role: crate::Role,
    /// A member's token name (the Unix user its tasks run as); none for an admin.
    pub name: Option<String>,
    /// A member's teams; an admin may act for every team.
    pub teams: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashJob {
    pub id: u64,
    pub team: String,
    pub state: JobState,
    pub ask: String,
    pub name: String,
    pub preemptions: u32,
    pub admission: Option<Admission>,
}
