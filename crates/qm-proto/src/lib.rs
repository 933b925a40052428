//! The wire types of Quartermaster's HTTP API, shared by the server, the agent and the CLI.
//!
//! Everything is JSON. Client calls live under `/api/v1`, agent calls under `/agent/v1`;
//! every call carries `Authorization: Bearer TOKEN`. Errors come back as [`ApiError`] with a
//! 4xx or 5xx status. Times are Unix seconds; GPU amounts are milli-GPUs where named `milli`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod dash;
mod wire;

pub use dash::{
    DashJob, DashNode, DashOverview, DashPending, DashQueue, DashReservation, DashSnapshot,
    DashTask, DashTeam, QueuePage, Standing, WhoAmI,
};
pub use wire::{
    Admission, After, GpuAsk, IdlePolicy, JobEventKind, JobState, NodeState, PreemptionCause,
    Reason, ReasonKind, Role, UnknownValue,
};

/// Seconds since the Unix epoch as RFC 3339 in UTC (`2026-11-30T19:51:49Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_068_309), "2026-11-30T19:51:49Z");
    }
}

/// The error body of every failed call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `internal`.
    pub error: String,
    /// What was wrong and what would be right, for people.
    pub message: String,
    /// With `standby` (503): the URL of the server that leads, where it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The schema of a command: a program (not empty), then its arguments.
fn command_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .prefix_items([ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .build()])
        .items(ObjectBuilder::new().schema_type(Type::String))
        .min_items(Some(1))
        .max_items(Some(4096))
        .build()
}

/// `POST /api/v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub team: String,
    #[serde(default)]
    #[schema(max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub name: String,
    /// Tasks of the gang (default 1).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub tasks: Option<u32>,
    /// Whole GPUs per task (default 1 unless `gpu_milli` is given).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// A share of one GPU per task, 1..=1000 milli-GPUs, instead of whole GPUs.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub gpu_milli: Option<u32>,
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub gpu_model: Option<String>,
    #[serde(default)]
    pub cpu_milli: Option<u64>,
    #[serde(default)]
    pub mem_mib: Option<u64>,
    #[serde(default)]
    pub priority: Option<i32>,
    /// Seconds; none for no limit.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub time_limit_s: Option<i64>,
    /// Default true.
    #[serde(default)]
    pub preemptible: Option<bool>,
    /// How often the job writes a checkpoint it resumes from, in seconds of its run (the
    /// submitter's word). A preempted job then loses only the work since its last
    /// checkpoint: reclaim counts that as what stopping it costs, and may stop a job that
    /// checkpoints to give another team its guarantee back whole. Absent: the job restarts
    /// from the beginning.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub checkpoint_every_s: Option<i64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(pattern = "^/[^\\u0000-\\u001F\\u007F-\\u009F]*$", max_length = 4096)]
    pub workdir: Option<String>,
    /// The program and its arguments.
    #[schema(schema_with = command_schema)]
    pub command: Vec<String>,
    /// The Unix user to run as, when the agent runs as root (default: the submitter's).
    #[serde(default)]
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
    /// Fenced: each task is killed by its own agent when the agent has had no word from the
    /// server for two thirds of the node timeout, before the server gives the node up and
    /// runs the job elsewhere, so that two attempts never run at once (for jobs that write
    /// shared storage). The price: a server away that long stops the job too.
    #[serde(default)]
    pub fence: bool,
    /// Start only once each of these jobs has ended as its condition says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 64)]
    pub after: Vec<DependencyView>,
    /// Submit an array: one job per index, each with `QM_ARRAY_JOB_ID` (the first job's id)
    /// and `QM_ARRAY_INDEX` in its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayRequest>,
    /// A batch script to run: the agent writes it to a private file and runs it with the
    /// interpreter of its `#!` line (`/bin/sh` without one); `command[0]` names the script
    /// as submitted, the rest are its arguments. Stored with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1048576)]
    pub script: Option<String>,
}

/// A job another waits for, and how it must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DependencyView {
    pub job: u64,
    /// Default `ok`.
    #[serde(default)]
    pub when: After,
    /// In a submission: `job` is an array's id and the dependency is on every job of the
    /// array (`ok`: all succeed; `any`: all end), as Slurm's `afterok:ARRAY`. The job then
    /// depends on each of them, which is how it is shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub array: bool,
}

/// `POST /api/v1/jobs/cancel`: many jobs at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelRequest {
    /// The jobs' ids (an array's jobs each by its own id), at most 10,000.
    pub jobs: Vec<u64>,
}

/// What a cancellation of many jobs did, job by job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelReport {
    /// Cancelled now (those that were running are stopping).
    pub cancelled: Vec<u64>,
    /// Those that had already ended.
    pub already_ended: Vec<u64>,
    /// Those not cancelled, each with why (unknown, or another team's).
    pub refused: Vec<CancelRefused>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelRefused {
    pub job: u64,
    pub reason: String,
}

/// The indices of an array and how many of its jobs may run at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayRequest {
    /// Distinct, each at most 1,000,000.
    #[schema(min_items = 1, max_items = 10000)]
    pub indices: Vec<u32>,
    /// At most this many of its jobs run at once (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_running: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmitResponse {
    /// The job's id; an array's id (its first job's).
    pub job: u64,
    /// An array's jobs, by index order (absent for a single job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<u64>,
}

/// `GET /api/v1/report`: each team's use of the cluster over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportView {
    pub since_s: u64,
    pub until_s: u64,
    /// How often the server samples the teams' use (each sample counts for this long).
    pub sample_every_s: u64,
    /// Samples found in the window (none: the server was not running, or too recently).
    pub samples: u64,
    /// Set when the window holds more ended jobs than one report reads (the newest are
    /// counted): the job figures (jobs, waits, preemptions) then cover only the later part
    /// of the window; GPU-hours, from the samples, cover all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_counted_since_s: Option<u64>,
    pub teams: Vec<TeamReport>,
    /// With `series`: the samples themselves, in time order (thinned to at most 1,000
    /// moments, each a whole sample of every team).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<UsagePoint>,
}

/// One team's GPUs at one moment, in milli-GPUs, as the server samples them: what it is
/// guaranteed, what its running jobs (and its sub-teams') hold, the part of that which is
/// borrowed (beyond its guarantee), the part of its guarantee it leaves unused while other
/// teams borrow (lent), and what its jobs hold idle. The store keeps these rows as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsagePoint {
    pub at_s: u64,
    pub team: String,
    pub guaranteed_milli: u64,
    pub used_milli: u64,
    pub borrowed_milli: u64,
    pub lent_milli: u64,
    pub idle_milli: u64,
}

/// One team's figures in a [`ReportView`]; GPU-hours from the usage samples, the rest from
/// the jobs that ended in the window or are running and started in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TeamReport {
    pub team: String,
    pub guaranteed_gpu_hours: f64,
    /// Held by its jobs (and its sub-teams').
    pub used_gpu_hours: f64,
    /// The part of that beyond its guarantee.
    pub borrowed_gpu_hours: f64,
    /// Of its guarantee, what it left unused while other teams borrowed.
    pub lent_gpu_hours: f64,
    /// Held by its jobs while their GPUs sat idle.
    pub idle_gpu_hours: f64,
    pub jobs: u64,
    /// Waits from submission to first start, of the jobs that started.
    pub wait_p50_s: Option<u64>,
    pub wait_p99_s: Option<u64>,
    /// Times its jobs were preempted, and running jobs stopped to make room for its jobs.
    pub preemptions_suffered: u64,
    pub preemptions_caused: u64,
}

/// Where a job sits in its array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayView {
    /// The array's id: its first job's.
    pub array: u64,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
}

/// One task's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    pub index: u32,
    pub node: String,
    pub gpus: Vec<u32>,
    pub gpu_milli: u32,
    /// Exit code once the task of the current run has exited.
    pub exit_code: Option<i32>,
}

/// A running job whose GPUs are idle, and what its team's idle policy does about it: it is
/// flagged at `flagged_at_s` (the idle window after `since_s`); under `yield` and `release`
/// it then yields (any job that needs its GPUs may preempt it); under `release` it is
/// stopped and requeued at `release_at_s`, unless it gets busy first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdleView {
    pub job: u64,
    pub since_s: u64,
    pub policy: IdlePolicy,
    pub flagged_at_s: u64,
    /// Flagged (past the window) now.
    pub flagged: bool,
    /// Unprotected now: any job that needs its GPUs may preempt it.
    pub yielding: bool,
    pub release_at_s: Option<u64>,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: u64,
    pub name: String,
    pub team: String,
    pub user: String,
    pub state: JobState,
    pub tasks: u32,
    /// Whole GPUs per task, or 0 for a share or for a task without GPUs.
    pub gpus: u32,
    /// 1000 for whole GPUs, the share for a share, 0 for a task without GPUs.
    pub gpu_milli: u32,
    /// CPU milli-cores and memory (MiB) reserved per task; 0 where none was asked for.
    #[serde(default)]
    pub cpu_milli: u64,
    #[serde(default)]
    pub mem_mib: u64,
    pub gpu_model: Option<String>,
    pub priority: i32,
    pub time_limit_s: Option<u64>,
    pub preemptible: bool,
    /// How often the job checkpoints, seconds (as submitted).
    #[serde(default)]
    pub checkpoint_every_s: Option<u64>,
    pub submit_s: u64,
    pub started_s: Option<u64>,
    pub ended_s: Option<u64>,
    /// `submit_s`, `started_s` and `ended_s` in RFC 3339 (UTC).
    #[serde(default)]
    pub submitted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub attempt: u32,
    pub preemptions: u32,
    /// When it first started (its wait ends there), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_started_s: Option<u64>,
    /// Seconds its runs held their resources, all runs together (the current one so far).
    #[serde(default)]
    pub ran_s: u64,
    /// GPU-seconds its runs held (GPUs times seconds, shares counted as fractions).
    #[serde(default)]
    pub gpu_s: u64,
    /// GPU-seconds of those its GPUs sat idle.
    #[serde(default)]
    pub idle_gpu_s: u64,
    /// Running jobs stopped to make room for it.
    #[serde(default)]
    pub preempted_others: u32,
    /// The exit codes of its last run's tasks that have exited, by task index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i32>,
    /// While running.
    pub admission: Option<Admission>,
    pub placement: Vec<TaskView>,
    /// Latest GPU utilisation sample of the running job, percent.
    pub util_pct: Option<u8>,
    /// Since when the running job's GPUs have been idle.
    pub idle_since_s: Option<u64>,
    /// Where the running job's GPUs are idle: what its team's idle policy does about it,
    /// and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleView>,
    pub command: Vec<String>,
    /// The batch script it runs, if it was submitted with one (shown to those who may see
    /// its command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Its array and index, if it is one job of an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayView>,
    /// The jobs it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<DependencyView>,
    /// What happened to the job, oldest first.
    pub events: Vec<JobEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub at_s: u64,
    /// `at_s` in RFC 3339 (UTC), in views.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    pub what: JobEventKind,
    pub detail: String,
}

/// `GET /api/v1/jobs/{id}/why`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhyView {
    pub job: u64,
    pub state: JobState,
    /// The structured reason, as the scheduling core gives it (absent unless pending).
    pub reason: Option<Reason>,
    /// The reason for people.
    pub message: String,
    pub eta_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    pub state: NodeState,
    pub gpus: u32,
    pub gpu_model: String,
    pub gpus_used_milli: Vec<u32>,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    pub labels: BTreeMap<String, String>,
    pub last_seen_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TeamView {
    pub name: String,
    pub parent: Option<String>,
    /// Whole GPUs per model (`*`: any model).
    pub guaranteed: BTreeMap<String, u32>,
    pub max: BTreeMap<String, Option<u32>>,
    pub weight: u32,
    pub idle_policy: IdlePolicy,
    /// With `release`: seconds a job may stay idle beyond the idle window before it is
    /// stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_release_after_s: Option<u64>,
    pub used_milli: u64,
    pub borrowed_milli: u64,
    pub idle_milli: u64,
    /// GPU-hours its jobs held idle, charged to its fair share, since it was created.
    pub idle_gpu_hours: f64,
    /// GPU-hours its jobs held idle over the last 7 days, from the usage samples (as
    /// `qm report --since 7d` counts them).
    #[serde(default)]
    pub idle_gpu_hours_7d: f64,
    /// The nodes where the team's guarantee lives (its home, sub-teams' included), by name:
    /// work of the team that cannot be preempted borrows only there and on nodes nobody is
    /// guaranteed. Empty for a team without a guarantee.
    #[serde(default)]
    pub home: Vec<String>,
    /// The priorities its members may give their jobs, `[lowest, highest]`.
    #[serde(default)]
    pub priorities: [i32; 2],
    /// The most milli-CPUs its running jobs may hold at once (sub-teams' included), if capped.
    #[serde(default)]
    pub max_cpu_milli: Option<u64>,
    /// Its own running jobs whose GPUs are idle now, and what the idle policy does next.
    #[serde(default)]
    pub idle_jobs: Vec<IdleView>,
    /// Slurm partition names that mean this team in `#SBATCH -p`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
}

/// `POST /api/v1/admin/teams`: create or change a team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    /// Whole GPUs guaranteed, for any model.
    #[serde(default)]
    pub guaranteed: Option<u32>,
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub idle_policy: Option<IdlePolicy>,
    /// With `release`: seconds a job may stay idle beyond the idle window before it is
    /// stopped (default 3600).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub idle_release_after_s: Option<u64>,
    /// The priorities its members may give their jobs, `[lowest, highest]`.
    #[serde(default)]
    #[schema(min_items = 2, max_items = 2)]
    pub priorities: Option<[i32; 2]>,
    /// The most CPUs its running jobs may hold at once, jobs with GPUs and without alike
    /// (sub-teams' included); `0` removes the cap.
    #[serde(default)]
    pub max_cpu: Option<u32>,
    /// Slurm partition names that mean this team in a batch script's `#SBATCH -p`,
    /// replacing the team's list (`[]` clears it); each may name one team only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 64)]
    pub partitions: Option<Vec<String>>,
}

/// `POST /api/v1/admin/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub teams: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// Shown once; the server keeps only its hash.
    pub token: String,
}

/// `POST /agent/v1/register` (with a join token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub name: String,
    pub gpus: u32,
    pub gpu_model: String,
    pub gpu_mem_mib: u64,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    pub labels: BTreeMap<String, String>,
    /// Outermost first, e.g. `["pod-1", "rack-7"]`.
    pub topology: Vec<String>,
    /// Where tasks on this node can reach each other (MASTER_ADDR).
    pub address: String,
    /// The credential the agent chose for its node (random, kept in its credential file
    /// before it first registers): registering again with it, even with the join token
    /// after an answer was lost, is the same node coming back, not a takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_-]{32,128}$")]
    pub credential: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterResponse {
    /// The node's own credential for every later agent call.
    pub credential: String,
}

/// A task the agent runs, as reported in heartbeats.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct TaskKey {
    pub job: u64,
    pub task: u32,
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskExit {
    pub key: TaskKey,
    pub code: i32,
    /// Why the task never started (for example, its user does not exist on the node), for
    /// the job's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Killed by its agent's fence (no word from the server for the launch's
    /// `fence_after_ms`): lost, not failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskUtil {
    pub key: TaskKey,
    pub pct: u8,
}

/// `POST /agent/v1/heartbeat`: what the node observes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Heartbeat {
    pub running: Vec<TaskKey>,
    pub exited: Vec<TaskExit>,
    pub util: Vec<TaskUtil>,
}

/// The answer to a heartbeat (what the server wants comes by the commands long poll).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct HeartbeatAck {}

/// What the server wants of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Command {
    Launch(Launch),
    /// SIGTERM the task's process group, SIGKILL after `grace_s`.
    Kill {
        key: TaskKey,
        grace_s: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Launch {
    pub key: TaskKey,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// A fenced job's task: the agent kills it once no heartbeat it sent this long ago, or
    /// later, has been answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_after_ms: Option<u64>,
    /// A batch script: the agent writes it to a private file and runs it with the
    /// interpreter of its `#!` line (`/bin/sh` without one), with `command[1..]` as its
    /// arguments (`command[0]` names the script as submitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// `GET /agent/v1/commands?wait_s=N`: long poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Commands {
    pub commands: Vec<Command>,
}

/// `POST /agent/v1/logs`: new bytes of a task's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub key: TaskKey,
    /// Byte offset of the chunk in the task's log.
    pub offset: u64,
    /// The chunk as text (an older agent's way; lossy for output that is not UTF-8).
    #[serde(default)]
    pub data: String,
    /// The chunk's bytes exactly, base64 (standard alphabet, padded); taken over `data`.
    /// Logs are bytes: binary output, or a character split at a chunk's edge, must neither
    /// skip nor repeat a byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

/// The answer to a log upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogAck {
    /// The log's length after the upload.
    pub length: u64,
}

/// `GET /api/v1/cluster`: the servers behind the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `sqlite` (one server) or `postgres` (servers sharing a database, one leading).
    pub store: String,
    /// The lease's holder (absent on SQLite).
    pub leader: Option<LeaderView>,
    /// The other servers seen on the database in the last minute: standbys, waiting for the
    /// lease.
    pub standbys: Vec<ServerSeen>,
}

/// Who leads, by the database's lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaderView {
    /// `ADDRESS on HOST (pid N)`.
    pub holder: String,
    /// Grows by one at every takeover; every write of the leader is fenced by it.
    pub term: i64,
    /// When the term began and when the lease lapses unless renewed (Unix seconds, the
    /// database's clock).
    pub since_s: f64,
    pub expires_s: f64,
}

/// A server seen on the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerSeen {
    pub holder: String,
    pub seen_s_ago: f64,
}

/// `GET /api/v1/jobs/{id}/logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogView {
    pub job: u64,
    pub task: u32,
    pub attempt: u32,
    /// Offset of `data` in the log, and the next offset to ask for.
    pub offset: u64,
    pub next: u64,
    /// The bytes as text, for people (invalid UTF-8 replaced).
    pub data: String,
    /// The bytes exactly, base64 (standard alphabet, padded).
    #[serde(default)]
    pub data_b64: String,
    /// No more output will come (the task has exited).
    pub done: bool,
}
