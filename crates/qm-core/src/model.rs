//! The domain model: nodes, jobs, teams and the scheduler's configuration.
//!
//! Everything here is plain data with serde derives, so that the simulator, the store and the
//! wire protocol can carry it unchanged. GPU amounts are counted internally in milli-GPUs
//! (1 whole GPU = 1000), so whole and fractional requests share one unit.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Seconds on the caller's clock. The core never reads a clock: every event and every plan
/// carries the time it happens at.
pub type Secs = u64;

/// Milli-GPUs in one whole GPU.
pub const MILLI_PER_GPU: u32 = 1000;

/// A node's identity, chosen by the caller (the server or the simulator).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

/// A job's identity, chosen by the caller. Lower ids are older jobs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// Whether a node takes new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new tasks.
    #[default]
    Ready,
    /// Keeps what runs there, takes nothing new.
    Draining,
    /// Unreachable: what ran there has been requeued.
    Down,
}

/// A node as it registers: whole GPUs of one model plus CPU and memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub name: String,
    pub gpus: u32,
    pub gpu_model: String,
    pub gpu_mem_mib: u64,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Outermost domain first, e.g. `["pod-2", "rack-17"]`.
    #[serde(default)]
    pub topology: Vec<String>,
}

/// What one task asks of GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuAsk {
    /// Whole GPUs, exclusively.
    Whole(u32),
    /// A share of one GPU, in milli-GPUs (1..=1000); other shares may sit on the same GPU.
    Milli(u32),
}

impl GpuAsk {
    /// Milli-GPUs one task takes.
    pub fn milli(self) -> u64 {
        match self {
            GpuAsk::Whole(n) => u64::from(n) * u64::from(MILLI_PER_GPU),
            GpuAsk::Milli(m) => u64::from(m),
        }
    }
}

/// What a job asks for and how it may be treated. Submitted once, never changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: JobId,
    #[serde(default)]
    pub name: String,
    pub team: String,
    #[serde(default)]
    pub user: String,
    /// Higher runs first within the same admission class.
    #[serde(default)]
    pub priority: i32,
    /// Gang size: all tasks start together or none does.
    pub tasks: u32,
    pub gpu: GpuAsk,
    #[serde(default)]
    pub cpu_milli: u64,
    #[serde(default)]
    pub mem_mib: u64,
    /// Only nodes with this GPU model; any model when absent.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Only nodes carrying all these labels.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Wall-clock limit; the job is stopped when it runs past it. Reservations and backfill
    /// rely on it; a job without one is never backfilled ahead of a reservation.
    #[serde(default)]
    pub time_limit_s: Option<Secs>,
    /// The user's guess of the run time, used for estimated start times only.
    #[serde(default)]
    pub runtime_estimate_s: Option<Secs>,
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Between SIGTERM and SIGKILL when preempted.
    #[serde(default = "default_grace_s")]
    pub grace_s: Secs,
    /// Never preempted before it has run this long.
    #[serde(default)]
    pub min_run_s: Secs,
    /// The job checkpoints this often, so a preemption loses at most this much work.
    #[serde(default)]
    pub checkpoint_every_s: Option<Secs>,
    /// Starts only once each of these jobs has ended as its condition asks.
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    /// The job is one element of an array (one submission, many jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayMember>,
    pub submit_s: Secs,
}

/// How a dependency must end for its dependent to start.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Succeeded (`afterok`).
    #[default]
    Ok,
    /// Ended, however (`afterany`).
    Any,
    /// Failed or was cancelled (`afternotok`).
    Failed,
}

impl After {
    pub const ALL: [After; 3] = [After::Ok, After::Any, After::Failed];

    pub fn name(self) -> &'static str {
        match self {
            After::Ok => "ok",
            After::Any => "any",
            After::Failed => "failed",
        }
    }

    /// Whether a job that ended `succeeded` (or not) meets the condition.
    pub fn met_by(self, succeeded: bool) -> bool {
        match self {
            After::Ok => succeeded,
            After::Any => true,
            After::Failed => !succeeded,
        }
    }
}

impl std::str::FromStr for After {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        After::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                UnknownName::new(("condition", "conditions"), s, &After::ALL, After::name)
            })
    }
}

/// A job another job waits for, and how it must end. Stored as the bare id when the
/// condition is `ok` (the only form older stores hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "DependencyRepr", into = "DependencyRepr")]
pub struct Dependency {
    pub job: JobId,
    pub when: After,
}

impl Dependency {
    /// Waits for `job` to succeed.
    pub fn ok(job: JobId) -> Dependency {
        Dependency {
            job,
            when: After::Ok,
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
enum DependencyRepr {
    Ok(JobId),
    With { job: JobId, when: After },
}

impl From<DependencyRepr> for Dependency {
    fn from(r: DependencyRepr) -> Dependency {
        match r {
            DependencyRepr::Ok(job) => Dependency::ok(job),
            DependencyRepr::With { job, when } => Dependency { job, when },
        }
    }
}

impl From<Dependency> for DependencyRepr {
    fn from(d: Dependency) -> DependencyRepr {
        match d.when {
            After::Ok => DependencyRepr::Ok(d.job),
            when => DependencyRepr::With { job: d.job, when },
        }
    }
}

/// Which array a job belongs to and where. The array's id is its first element's job id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArrayMember {
    pub array: JobId,
    pub index: u32,
    /// At most this many of the array's jobs run at once (`--array 0-99%8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
}

fn yes() -> bool {
    true
}

fn default_grace_s() -> Secs {
    30
}

impl JobSpec {
    /// Milli-GPUs the whole gang takes.
    pub fn milli_total(&self) -> u64 {
        self.gpu.milli() * u64::from(self.tasks)
    }
}

/// What happens to a job whose GPUs stay idle: a ladder, each step after its own window.
/// Every policy flags the job once its GPUs have stayed below the idle threshold for the
/// idle window ([`SchedulerConfig::idle_window_s`]); what follows is the team's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdlePolicy {
    /// Flag it (job history, dashboard, metrics); nothing else.
    Warn,
    /// Flag it, and from then on, while it stays idle, it loses its protection: it counts as
    /// borrowed work outside its team's guarantee, and any pending job that needs its GPUs,
    /// of its own team or another, may preempt it (with the usual grace period), whether or
    /// not it was submitted preemptible. Nothing happens to it while nobody needs the GPUs.
    /// (`reclaim_borrowed`, an older name, reads as this.)
    #[serde(alias = "reclaim_borrowed")]
    Yield,
    /// Yield, and once it has stayed idle `after_s` beyond the idle window, stop and requeue
    /// it whatever the demand. (`requeue` with `grace_s`, an older form, reads as this.) The
    /// default, with `after_s` [`IdlePolicy::RELEASE_AFTER_S`]: measured on the `hoarding`
    /// scenario, `yield` alone leaves idle the GPUs no waiting job can use without preempting
    /// busy work (small idle jobs on nodes that whole-node jobs wait for); releasing them
    /// after an hour more gives those nodes back too (BENCHMARKS.md).
    #[serde(alias = "requeue")]
    Release {
        #[serde(alias = "grace_s")]
        after_s: Secs,
    },
}

impl Default for IdlePolicy {
    fn default() -> IdlePolicy {
        IdlePolicy::Release {
            after_s: IdlePolicy::RELEASE_AFTER_S,
        }
    }
}

impl IdlePolicy {
    /// How long a job may stay idle beyond the idle window under `release` where the team
    /// does not say.
    pub const RELEASE_AFTER_S: Secs = 3_600;

    /// Whether a job idle since `since` has lost its protection at `now` (`window`: the idle
    /// window).
    pub fn yields(self, since: Secs, now: Secs, window: Secs) -> bool {
        self != IdlePolicy::Warn && now.saturating_sub(since) >= window
    }

    /// When a job idle since `since` is stopped (`window`: the idle window), if ever.
    pub fn release_at(self, since: Secs, window: Secs) -> Option<Secs> {
        match self {
            IdlePolicy::Release { after_s } => {
                Some(since.saturating_add(window).saturating_add(after_s))
            }
            _ => None,
        }
    }
}

/// Quota of one team for one GPU pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Quota {
    /// GPUs the team gets back on demand, by preemption of borrowers if needed.
    pub guaranteed: u32,
    /// The most GPUs the team (with its sub-teams) may hold; unlimited when absent.
    #[serde(default)]
    pub max: Option<u32>,
}

/// The quota key that covers every GPU model without a key of its own.
pub const ANY_MODEL: &str = "*";

/// One node of the team tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamSpec {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    /// Quotas by GPU model; the key [`ANY_MODEL`] covers the models not named.
    #[serde(default)]
    pub quotas: BTreeMap<String, Quota>,
    /// Share of idle capacity relative to the other teams.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub idle_policy: IdlePolicy,
    /// The priorities its members may give their jobs, `[lowest, highest]` (default `[0, 0]`:
    /// members cannot rank their work above other teams' fair share). Set by an admin; an
    /// admin's own submissions are not bounded.
    #[serde(default)]
    pub priorities: [i32; 2],
    /// The most CPU (milli-CPUs) the team's running jobs may hold at once, its sub-teams'
    /// included, jobs with GPUs and without alike; `None`: no cap. GPUs are guaranteed,
    /// CPU is only capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_milli: Option<u64>,
    /// Slurm partition names that mean this team in a batch script's `#SBATCH -p` (set by
    /// an admin; each names at most one team). The core does not read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

impl TeamSpec {
    /// A team with one quota for every GPU model.
    pub fn new(name: &str, guaranteed: u32) -> TeamSpec {
        let mut quotas = BTreeMap::new();
        quotas.insert(
            ANY_MODEL.to_string(),
            Quota {
                guaranteed,
                max: None,
            },
        );
        TeamSpec {
            name: name.to_string(),
            parent: None,
            quotas,
            weight: 1,
            idle_policy: IdlePolicy::default(),
            priorities: [0, 0],
            max_cpu_milli: None,
            partitions: Vec::new(),
        }
    }
}

/// Which planner runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Guarantees, borrowing, reclaim, gangs, reservations and backfill.
    #[default]
    Default,
    /// One shared queue in submission order, blocked by its head; no quotas, no backfill.
    Fifo,
    /// Each team confined to its own partition of nodes sized to its guarantee.
    Static,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Default, PolicyKind::Fifo, PolicyKind::Static];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Default => "default",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Static => "static",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name outside a closed set (a policy, a trace format, ...); its message says what it
/// should have been and lists the valid names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What the name names, and its plural: "policy", "policies".
    pub what: (&'static str, &'static str),
    pub given: String,
    pub valid: Vec<&'static str>,
}

impl UnknownName {
    pub fn new<T: Copy>(
        what: (&'static str, &'static str),
        given: &str,
        all: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> UnknownName {
        UnknownName {
            what,
            given: given.to_string(),
            valid: all.iter().map(|&t| name(t)).collect(),
        }
    }
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (one, many) = self.what;
        write!(
            f,
            "unknown {one} {:?}; valid {many}: {}",
            self.given,
            self.valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

impl std::str::FromStr for PolicyKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                UnknownName::new(
                    ("policy", "policies"),
                    s,
                    &PolicyKind::ALL,
                    PolicyKind::name,
                )
            })
    }
}

/// Knobs of the planner. The defaults are what `qm up` runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub policy: PolicyKind,
    /// Half-life of the usage history behind fair-share standing.
    pub fair_share_half_life_s: Secs,
    /// An allocation below this utilisation (percent) counts as idle ...
    pub idle_threshold_pct: u8,
    /// ... once it has stayed below it this long.
    pub idle_window_s: Secs,
    /// Blocked jobs that get a reservation in one plan, at most.
    pub max_reservations: usize,
    /// Jobs that get preemptions planned for them in one plan, at most.
    pub max_reclaims: usize,
    /// Where set, a job waiting longer than this is ordered ahead of younger work of its
    /// class and priority, by age alone (strict first come, first served among such jobs).
    /// Off by default: under sustained load nearly every job waits longer than any
    /// threshold of hours, and the rule then replaces fair-share order with age order,
    /// which lengthened the mean wait by half on the Philly trace and made it hinge on
    /// tie-breaks (ARCHITECTURE.md, "Order"). A big job is protected from a stream of small
    /// ones by its reservation, not by its age.
    #[serde(default)]
    pub starvation_wait_s: Option<Secs>,
    /// Freed GPUs stay held for the job they were reclaimed for this long after the
    /// preemption was asked, beyond the victims' grace periods.
    pub hold_slack_s: Secs,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: PolicyKind::Default,
            fair_share_half_life_s: 7 * 24 * 3600,
            idle_threshold_pct: 5,
            idle_window_s: 30 * 60,
            max_reservations: 4,
            max_reclaims: 32,
            starvation_wait_s: None,
            hold_slack_s: 300,
        }
    }
}
