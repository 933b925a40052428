//! `ClusterState` and `apply`: the only way the state changes.
//!
//! Every event is checked before anything is touched, so a refused event (an [`ApplyError`])
//! leaves the state exactly as it was. The checks here are also the last line of defence of
//! the core's invariants: `apply` refuses a start that would give a GPU share twice, whatever
//! the caller believes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;

mod apply;
mod invariants;
use crate::model::{
    GpuAsk, JobId, JobSpec, NodeId, NodeSpec, NodeState, SchedulerConfig, Secs, TeamSpec,
    MILLI_PER_GPU,
};

/// Where one task of a job runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskPlacement {
    pub node: NodeId,
    /// Indices of the GPUs on that node.
    pub gpus: Vec<u32>,
    /// Milli-GPUs taken on each listed GPU (1000 for whole GPUs).
    pub gpu_milli: u32,
}

/// GPU indices as a bit mask (nodes have at most 64 GPUs).
pub(crate) fn gpu_mask(gpus: &[u32]) -> u64 {
    gpus.iter().fold(0, |m, &g| m | (1 << g))
}

/// Whether a job runs inside its team's guarantee or on lent capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    Guaranteed,
    Borrowed,
}

/// Why a running job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// Its GPUs go back to the team that is guaranteed them; the job is requeued.
    Reclaim,
    /// Its GPUs go to a job of its own team with a higher priority; the job is requeued.
    Priority,
    /// Its GPUs sat idle; the job is requeued.
    Idle,
    /// It ran past its time limit; it ends as failed.
    TimeLimit,
    /// Its owner cancelled it.
    Cancel,
    /// A task of its run was lost (its node restarted without it): the others are stopped,
    /// their GPUs held until they exit, and the job is requeued.
    Lost,
}

impl StopCause {
    fn requeues(self) -> bool {
        matches!(
            self,
            StopCause::Reclaim | StopCause::Priority | StopCause::Idle | StopCause::Lost
        )
    }
}

/// A job that holds resources.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// 1 for the job's first run, 2 after its first requeue, and so on. Reports about a
    /// run carry it, so a late report from an earlier run cannot touch the current one.
    pub attempt: u32,
    pub placement: Vec<TaskPlacement>,
    pub started_s: Secs,
    pub admission: Admission,
    /// Since when every sample has been below the idle threshold.
    pub idle_since_s: Option<Secs>,
    pub last_sample_s: Option<Secs>,
    pub last_util_pct: Option<u8>,
}

/// A running job told to stop; it keeps its resources until it exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub cause: StopCause,
    pub asked_s: Secs,
    /// SIGKILL time: asked + grace.
    pub deadline_s: Secs,
    pub beneficiary: Option<JobId>,
}

/// A job's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running(Run),
    Stopping(Run, Stop),
    Succeeded { at_s: Secs },
    Failed { at_s: Secs, timed_out: bool },
    Cancelled { at_s: Secs },
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running(_) => "running",
            JobState::Stopping(..) => "stopping",
            JobState::Succeeded { .. } => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled { .. } => "cancelled",
        }
    }

    /// When the job ended (`None` while it is pending, running or stopping).
    pub fn ended_s(&self) -> Option<Secs> {
        match *self {
            JobState::Succeeded { at_s }
            | JobState::Failed { at_s, .. }
            | JobState::Cancelled { at_s } => Some(at_s),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. } | JobState::Failed { .. } | JobState::Cancelled { .. }
        )
    }

    /// The resources a job holds, if it holds any.
    pub fn run(&self) -> Option<&Run> {
        match self {
            JobState::Running(run) | JobState::Stopping(run, _) => Some(run),
            _ => None,
        }
    }
}

/// A submitted job and what has happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// [`Team::id`] of `spec.team`.
    pub team_id: u32,
    pub state: JobState,
    pub preemptions: u32,
    /// Times the job has started.
    pub runs: u32,
    /// GPU milli-seconds this job spent allocated but idle.
    pub idle_milli_s: u64,
    /// Its last run was stopped because it sat idle: until it starts again it takes only
    /// free GPUs (its team's guarantee included, where free), and preempts nobody for them,
    /// so that work that was idle does not take back at once what it just gave up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_idle: bool,
    /// When it first started, if ever (accounting: its wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_start_s: Option<Secs>,
    /// Seconds its runs that have ended held their resources, and milli-GPU-seconds.
    #[serde(default)]
    pub ran_s: Secs,
    #[serde(default)]
    pub gpu_milli_s: u64,
    /// Running jobs stopped to make room for it (reclaim, priority, idle).
    #[serde(default)]
    pub preempted_others: u32,
}

/// A node with what is given out on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub spec: NodeSpec,
    pub state: NodeState,
    /// Milli-GPUs given out, per GPU index.
    pub gpu_used_milli: Vec<u32>,
    pub cpu_used_milli: u64,
    pub mem_used_mib: u64,
}

impl Node {
    pub fn whole_gpus_free(&self) -> u32 {
        self.gpu_used_milli.iter().filter(|&&m| m == 0).count() as u32
    }
}

/// A team with its usage history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub spec: TeamSpec,
    /// Stable internal number, so jobs refer to their team without comparing names.
    pub id: u32,
    /// Milli-GPUs held now by this team's own jobs.
    pub alloc_milli: u64,
    /// Exponentially decayed integral of `alloc_milli` over time (milli-GPU-seconds).
    pub usage_decayed: f64,
    /// Same, for GPU time that was allocated but idle.
    pub idle_decayed: f64,
    /// All idle GPU time ever charged to the team, in milli-GPU-seconds.
    pub idle_milli_s_total: u64,
}

/// GPUs freed by preemption and kept for the job they were freed for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub shares: Vec<HeldShare>,
    pub victims: BTreeSet<JobId>,
    /// After this the hold lapses and the GPUs go back to everyone.
    pub until_s: Secs,
    /// Held for a job that would borrow (it took idle runs that yielded): not set aside
    /// inside its team's guarantee.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowing: bool,
}

/// One task's worth of resources in a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldShare {
    pub victim: JobId,
    pub task: TaskPlacement,
    pub cpu_milli: u64,
    pub mem_mib: u64,
}

/// Everything the scheduler knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    pub config: SchedulerConfig,
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    pub(crate) teams: BTreeMap<String, Team>,
    /// Pending, running and stopping jobs: the only ones a plan looks at.
    pub(crate) jobs: LiveJobs,
    /// Jobs that ended, kept for dependencies and reports until forgotten.
    pub(crate) done: BTreeMap<JobId, Job>,
    pub(crate) holds: BTreeMap<JobId, Hold>,
    /// Time of the latest event seen, for usage decay.
    pub(crate) clock_s: Secs,
    /// Next [`Team::id`].
    pub(crate) next_team_id: u32,
    /// Highest id of a forgotten job: ids up to it are never reused.
    pub(crate) forgotten_up_to: Option<JobId>,
    /// The GPU models, the team tree in dense form, the teams' homes and the nodes' layout,
    /// built on first use after a node registered or a team changed (`apply` drops them
    /// there): every plan and every submission's check read them.
    #[serde(skip)]
    pub(crate) derived: Derived,
    /// The nodes whose capacity or state changed, in order, so that the free capacity a
    /// plan starts from is brought up to date node by node (`plan/view.rs`, `Capacity`).
    #[serde(skip)]
    pub(crate) node_log: NodeLog,
}

/// Changes in the order they were made, the oldest dropped once there are more than
/// `KEPT`: a reader that has seen the log up to some position reads the changes since, or
/// learns that the log no longer reaches back that far. Not part of the state's value.
#[derive(Clone, Debug)]
pub(crate) struct Log<T, const KEPT: usize> {
    /// Position of the first change kept.
    start: u64,
    changes: std::collections::VecDeque<T>,
}

/// The nodes whose usage or state changed (a start, a release, a state change), in the
/// order of the changes: the free capacity a plan starts from is brought up to date from
/// them (`plan/view.rs`, `Capacity`).
pub(crate) type NodeLog = Log<NodeId, 16_384>;

impl<T, const KEPT: usize> Default for Log<T, KEPT> {
    fn default() -> Self {
        Log {
            start: 0,
            changes: std::collections::VecDeque::new(),
        }
    }
}

impl<T, const KEPT: usize> Log<T, KEPT> {
    pub(crate) fn note(&mut self, change: T) {
        if self.changes.len() == KEPT {
            self.changes.drain(..KEPT / 2);
            self.start += (KEPT / 2) as u64;
        }
        self.changes.push_back(change);
    }

    /// The position after the latest change.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.changes.len() as u64
    }

    /// The changes from position `seen` on; `None` where the log no longer reaches back
    /// that far.
    pub(crate) fn since(&self, seen: u64) -> Option<impl Iterator<Item = &T>> {
        let from = usize::try_from(seen.checked_sub(self.start)?).ok()?;
        (from <= self.changes.len()).then(|| self.changes.range(from..))
    }
}

impl<T, const KEPT: usize> PartialEq for Log<T, KEPT> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What is derived from the nodes' specs and the team specs alone, built once for
/// every plan and submission until one of them changes. Not part of the state's value:
/// two states are equal, and serialise, without it.
#[derive(Clone, Default)]
pub(crate) struct Derived {
    index: std::sync::OnceLock<(Vec<String>, crate::teams::TeamIndex)>,
    /// Where guarantees live under `default` (`plan/homes.rs`), and the nodes each team's
    /// work that cannot be preempted may borrow.
    pub(crate) homes: std::sync::OnceLock<crate::plan::homes::HomesAndSafe>,
    /// The same without homes (`fifo`, `static`).
    pub(crate) no_homes: std::sync::OnceLock<crate::plan::homes::HomesAndSafe>,
    /// The nodes' dense numbering, GPU counts and topology domains (`plan/view.rs`).
    pub(crate) layout: std::sync::OnceLock<crate::plan::view::Layout>,
    /// What each team's runs add up to, as the last plan that walked them found it
    /// (`plan/tally.rs`): read again while the team's holders are unchanged.
    pub(crate) tallies: crate::plan::tally::Tallies,
    /// The nodes' free capacity as the last plan found it, and how far into the state's
    /// `NodeLog` it is up to date (`plan/view.rs`).
    pub(crate) capacity: crate::plan::view::CapacityCache,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

/// The live jobs by id, with an index of those holding resources (running or stopping), by
/// node and by team, so the invariants sum a node's or a team's holders without
/// walking the pending queue, and the number of pending jobs by team and by user, so a
/// submission's limits are checked without a scan. `apply` keeps the index where resources
/// are taken (a start) and given back (a release), and the counts where a job enters (a
/// submission) and leaves (it ends); none of it is stored, but rebuilt from the jobs when a
/// state is loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LiveJobs {
    map: BTreeMap<JobId, Job>,
    pub(crate) holding_by_node: BTreeMap<NodeId, BTreeSet<JobId>>,
    /// Per team id, its holders with the milli-GPUs each takes (the job's, noted when it
    /// starts to hold), so that the invariant on a team's allocation sums them without
    /// looking every holder up.
    pub(crate) holding_by_team: BTreeMap<u32, BTreeMap<JobId, u64>>,
    /// Per team id with holders, the sum of its holders' milli-GPUs as `holding_by_team`
    /// notes them, kept as holders enter and leave: the invariant on a team's allocation
    /// after an event compares with it instead of walking the team's holders, and
    /// `check_invariants` recounts it from the notes.
    pub(crate) held_milli_by_team: BTreeMap<u32, u64>,
    /// Live jobs that hold nothing (pending), by team id and by user.
    pub(crate) pending_by_team: BTreeMap<u32, usize>,
    pub(crate) pending_by_user: BTreeMap<String, usize>,
    /// Every job that holds resources, with what a plan reads of it (`Holder`), by team and
    /// in the order a plan counts a team's runs inside its guarantee (`HoldKey`): a plan
    /// walks these compact notes instead of every holder's record, and needs not sort them.
    pub(crate) holding: BTreeMap<HoldKey, Holder>,
    /// The holders a plan must act on as the clock runs, from their notes (`Clocked`).
    pub(crate) clocked: Clocked,
    /// The notes that entered and left, in order (`HolderLog`).
    pub(crate) holder_log: HolderLog,
    /// Each team's pending jobs in plan order, and how many of them ask for each number of
    /// milli-GPUs: the planner walks a queue from its head as far as a plan needs, instead
    /// of gathering and sorting every pending job at every plan.
    pub(crate) queues: BTreeMap<u32, TeamQueue>,
    /// Tasks of the live jobs by shape, GPU-less work left out: the workload's mix, from
    /// which the planner learns which shapes to keep room for (`plan/frag.rs`).
    pub(crate) shapes: BTreeMap<MixKey, u64>,
    /// Jobs holding resources of each array that limits how many of its jobs run at once.
    pub(crate) holding_by_array: BTreeMap<JobId, usize>,
    /// When each team's holders last changed (`Stamps`).
    pub(crate) stamps: Stamps,
}

/// The holders with a task that the clock alone may make a plan act on, from their notes:
/// those not stopping that have a time limit, by the time they reach it, and those not
/// stopping that are idle. A plan where nothing waits acts on these only
/// (`plan::running::quiet_plan`), so it reads them here instead of walking every holder.
/// Kept as holders enter, change and leave; `check_invariants` recounts them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Clocked {
    pub(crate) due: BTreeSet<(Secs, JobId)>,
    pub(crate) idle: BTreeSet<JobId>,
}

impl Clocked {
    /// Files a holder's note in (`on`) or out.
    pub(crate) fn file(&mut self, id: JobId, note: &Holder, on: bool) {
        if note.first.is_none() || note.stop.is_some() {
            return;
        }
        if let Some(limit) = note.time_limit_s {
            let due = (note.started_s.saturating_add(limit), id);
            if on {
                self.due.insert(due);
            } else {
                self.due.remove(&due);
            }
        }
        if note.idle_since_s.is_some() {
            if on {
                self.idle.insert(id);
            } else {
                self.idle.remove(&id);
            }
        }
    }

    /// What it would be for these notes.
    pub(crate) fn of<'n>(notes: impl Iterator<Item = (JobId, &'n Holder)>) -> Clocked {
        let mut clocked = Clocked::default();
        for (id, note) in notes {
            clocked.file(id, note, true);
        }
        clocked
    }
}

/// The holders' notes as they entered (a start, a renewed note) and left (an exit, a
/// renewed note's old version), in order: a team's tally of its runs (`plan/tally.rs`) is
/// brought up to date from the changes since it was made, where they allow, instead of
/// walking all the team's runs again. A reader further behind than the changes kept walks
/// the holders anew.
pub(crate) type HolderLog = Log<HolderChange, 4_096>;

/// One note that entered (`entered`) or left the holders, at its place.
#[derive(Clone, Debug)]
pub(crate) struct HolderChange {
    pub(crate) key: HoldKey,
    pub(crate) note: Holder,
    pub(crate) entered: bool,
}

impl HolderChange {
    fn of(key: HoldKey, note: &Holder, entered: bool) -> HolderChange {
        HolderChange {
            key,
            note: note.clone(),
            entered,
        }
    }
}

/// A stamp per team id, renewed whenever one of the team's holders enters, leaves or has
/// its note renewed with a change: a plan reads a team's tally of its runs again while the
/// team's stamp is the one the tally was made at (`plan/tally.rs`). Stamps only grow, so a
/// stamp is never seen twice for a team within one state. Not part of the state's value:
/// two states are equal, and serialise, without them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamps {
    last: u64,
    by_team: BTreeMap<u32, u64>,
}

impl Stamps {
    /// The team's stamp: 0 until one of its holders first changes.
    pub(crate) fn of(&self, team_id: u32) -> u64 {
        self.by_team.get(&team_id).copied().unwrap_or(0)
    }

    fn renew(&mut self, team_id: u32) {
        self.last += 1;
        self.by_team.insert(team_id, self.last);
    }
}

impl PartialEq for Stamps {
    fn eq(&self, _: &Stamps) -> bool {
        true
    }
}

/// What a plan reads of a job that holds resources, noted when it starts to hold and
/// renewed by every event that changes its run (a stop, a cancel while stopping, a
/// utilisation sample): the planner's scan of running work reads these notes, in id order,
/// and looks a holder's record up only where it needs more (a gang's tasks, a victim's
/// placement). `check_job` asserts after every event that each touched holder's note is
/// `Holder::of` its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) team_id: u32,
    pub(crate) priority: i32,
    /// Tasks placed; the first one's node, GPUs (a mask: a node has at most 64) and
    /// milli-GPUs on each of them (`None` without tasks).
    pub(crate) tasks: u32,
    pub(crate) first: Option<(NodeId, u64, u32)>,
    /// Milli-GPUs it holds, over all tasks.
    pub(crate) milli: u64,
    /// Milli-GPUs of every GPU it touches (whole or in part): what stopping it may free.
    pub(crate) touched: u64,
    /// Per task.
    pub(crate) cpu_milli: u64,
    pub(crate) mem_mib: u64,
    pub(crate) started_s: Secs,
    pub(crate) admission: Admission,
    pub(crate) preemptible: bool,
    pub(crate) min_run_s: Secs,
    pub(crate) grace_s: Secs,
    pub(crate) checkpoint_every_s: Option<Secs>,
    pub(crate) time_limit_s: Option<Secs>,
    pub(crate) runtime_estimate_s: Option<Secs>,
    pub(crate) idle_since_s: Option<Secs>,
    /// Stopping: its deadline and cause.
    pub(crate) stop: Option<(Secs, StopCause)>,
}

/// A holder's place among the holders: by team id, then in the order in which a plan counts
/// a team's runs inside its guarantee (`plan/running.rs`, `classify`): the victims of a
/// priority preemption last (they are leaving), the runs admitted as guaranteed when they
/// started before those admitted as borrowed, then oldest first, then by id. Only `leaving`
/// changes while a job holds (a priority stop, or a cancel of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HoldKey {
    pub(crate) team_id: u32,
    pub(crate) leaving: bool,
    pub(crate) admission: Admission,
    pub(crate) started_s: Secs,
    pub(crate) id: JobId,
}

impl HoldKey {
    /// The key of a job that holds resources; `None` for one that does not.
    pub(crate) fn of(job: &Job) -> Option<HoldKey> {
        let run = job.state.run()?;
        Some(HoldKey {
            team_id: job.team_id,
            leaving: matches!(&job.state,
                JobState::Stopping(_, s) if s.cause == StopCause::Priority),
            admission: run.admission,
            started_s: run.started_s,
            id: job.spec.id,
        })
    }

    /// The first key a holder of team `team_id` can have.
    pub(crate) fn first_of(team_id: u32) -> HoldKey {
        HoldKey {
            team_id,
            leaving: false,
            admission: Admission::Guaranteed,
            started_s: 0,
            id: JobId(0),
        }
    }

    /// The same holder with `leaving` flipped: where its note was before a change of cause.
    pub(crate) fn flipped(self) -> HoldKey {
        HoldKey {
            leaving: !self.leaving,
            ..self
        }
    }
}

impl Holder {
    /// The note of a job that holds resources; `None` for one that does not.
    pub(crate) fn of(job: &Job) -> Option<Holder> {
        let run = job.state.run()?;
        let spec = &job.spec;
        let first = run
            .placement
            .first()
            .map(|t| (t.node, gpu_mask(&t.gpus), t.gpu_milli));
        Some(Holder {
            team_id: job.team_id,
            priority: spec.priority,
            tasks: run.placement.len() as u32,
            first,
            milli: spec.milli_total(),
            touched: run
                .placement
                .iter()
                .map(|t| t.gpus.len() as u64 * u64::from(MILLI_PER_GPU))
                .sum(),
            cpu_milli: spec.cpu_milli,
            mem_mib: spec.mem_mib,
            started_s: run.started_s,
            admission: run.admission,
            preemptible: spec.preemptible,
            min_run_s: spec.min_run_s,
            grace_s: spec.grace_s,
            checkpoint_every_s: spec.checkpoint_every_s,
            time_limit_s: spec.time_limit_s,
            runtime_estimate_s: spec.runtime_estimate_s,
            idle_since_s: run.idle_since_s,
            stop: match &job.state {
                JobState::Stopping(_, stop) => Some((stop.deadline_s, stop.cause)),
                _ => None,
            },
        })
    }
}

/// A task's shape as the mix counts it: milli-GPUs each GPU must have free, how many such
/// GPUs, CPU, memory and GPU model (`None` for any).
pub(crate) type MixKey = (u32, u32, u64, u64, Option<String>);

/// A job's task shape and task count, or `None` for work without GPUs.
pub(crate) fn mix_key(spec: &JobSpec) -> Option<(MixKey, u64)> {
    let (need, count) = match spec.gpu {
        GpuAsk::Whole(0) => return None,
        GpuAsk::Whole(k) => (MILLI_PER_GPU, k),
        GpuAsk::Milli(m) => (m, 1),
    };
    let key = (
        need,
        count,
        spec.cpu_milli,
        spec.mem_mib,
        spec.gpu_model.clone(),
    );
    Some((key, u64::from(spec.tasks)))
}

/// A job's place in its team's queue: higher priority first, then earlier submission, then
/// lower id.
pub(crate) type QueueKey = (std::cmp::Reverse<i32>, Secs, JobId);

pub(crate) fn queue_key(spec: &JobSpec) -> QueueKey {
    (std::cmp::Reverse(spec.priority), spec.submit_s, spec.id)
}

/// One team's pending jobs.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TeamQueue {
    pub(crate) order: BTreeSet<QueueKey>,
    /// Milli-GPUs asked (the whole job's) to how many pending jobs ask for them.
    pub(crate) asks: BTreeMap<u64, usize>,
    /// How many of them cannot be preempted.
    pub(crate) pinned: usize,
}

/// Counts one more (`up`) or one less under `key`, dropping the key at zero.
fn bump<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K, up: bool) {
    if up {
        *counts.entry(key).or_default() += 1;
        return;
    }
    let c = counts
        .get_mut(&key)
        .expect("a pending count never goes below zero");
    *c -= 1;
    if *c == 0 {
        counts.remove(&key);
    }
}

impl LiveJobs {
    /// Counts a job as pending, or no longer, and enters it into its team's queue or takes
    /// it out.
    fn pending(&mut self, id: JobId, up: bool) {
        let job = &self.map[&id];
        let (team, user) = (job.team_id, job.spec.user.clone());
        let (key, milli) = (queue_key(&job.spec), job.spec.milli_total());
        let pinned = usize::from(!job.spec.preemptible);
        bump(&mut self.pending_by_team, team, up);
        bump(&mut self.pending_by_user, user, up);
        let queue = self.queues.entry(team).or_default();
        bump(&mut queue.asks, milli, up);
        if up {
            queue.order.insert(key);
            queue.pinned += pinned;
        } else {
            queue.order.remove(&key);
            queue.pinned -= pinned;
            if queue.order.is_empty() {
                self.queues.remove(&team);
            }
        }
    }

    /// A new job enters, pending.
    pub(crate) fn enter(&mut self, job: Job) {
        let id = job.spec.id;
        debug_assert!(job.state.run().is_none(), "a job enters pending");
        Self::count_shape(&mut self.shapes, &job.spec, true);
        self.map.insert(id, job);
        self.pending(id, true);
    }

    /// Counts a live job's tasks in the mix, or no longer.
    fn count_shape(shapes: &mut BTreeMap<MixKey, u64>, spec: &JobSpec, up: bool) {
        let Some((key, tasks)) = mix_key(spec) else {
            return;
        };
        if up {
            *shapes.entry(key).or_default() += tasks;
            return;
        }
        let count = shapes.get_mut(&key).expect("a live job's shape is counted");
        *count -= tasks;
        if *count == 0 {
            shapes.remove(&key);
        }
    }

    /// A job that holds nothing (any more) leaves.
    pub(crate) fn leave(&mut self, id: JobId) -> Option<Job> {
        if !self.map.contains_key(&id) {
            return None;
        }
        assert!(!self.holds(id), "a job leaves holding nothing");
        self.pending(id, false);
        let job = self.map.remove(&id)?;
        Self::count_shape(&mut self.shapes, &job.spec, false);
        Some(job)
    }

    /// Whether the index lists `id` as holding.
    fn holds(&self, id: JobId) -> bool {
        let job = &self.map[&id];
        self.holding_by_team
            .get(&job.team_id)
            .is_some_and(|s| s.contains_key(&id))
    }

    /// Enters a job that now holds resources (its run is set) into the index.
    pub(crate) fn hold(&mut self, id: JobId) {
        if self.holds(id) {
            return;
        }
        self.pending(id, false);
        let job = &self.map[&id];
        let key = HoldKey::of(job).expect("a job that holds has a run");
        let note = Holder::of(job).expect("a job that holds has a run");
        self.clocked.file(id, &note, true);
        self.holder_log.note(HolderChange::of(key, &note, true));
        self.holding.insert(key, note);
        self.stamps.renew(job.team_id);
        if let Some(a) = job.spec.array.filter(|a| a.max_running.is_some()) {
            bump(&mut self.holding_by_array, a.array, true);
        }
        let run = job.state.run().expect("a job that holds has a run");
        let milli = job.spec.milli_total();
        self.holding_by_team
            .entry(job.team_id)
            .or_default()
            .insert(id, milli);
        *self.held_milli_by_team.entry(job.team_id).or_default() += milli;
        for task in &run.placement {
            self.holding_by_node
                .entry(task.node)
                .or_default()
                .insert(id);
        }
    }

    /// Renews a holder's note after its run changed (stopping, a cause, an idle sample),
    /// and its place, where a priority stop began or was cancelled.
    pub(crate) fn renote(&mut self, id: JobId) {
        let job = &self.map[&id];
        let (Some(key), Some(note)) = (HoldKey::of(job), Holder::of(job)) else {
            return;
        };
        if let Some(noted) = self.holding.get_mut(&key) {
            if *noted != note {
                self.clocked.file(id, noted, false);
                self.clocked.file(id, &note, true);
                self.holder_log.note(HolderChange::of(key, noted, false));
                self.holder_log.note(HolderChange::of(key, &note, true));
                *noted = note;
                self.stamps.renew(key.team_id);
            }
        } else if let Some(noted) = self.holding.remove(&key.flipped()) {
            self.clocked.file(id, &noted, false);
            self.clocked.file(id, &note, true);
            self.holder_log
                .note(HolderChange::of(key.flipped(), &noted, false));
            self.holder_log.note(HolderChange::of(key, &note, true));
            self.holding.insert(key, note);
            self.stamps.renew(key.team_id);
        }
    }

    /// Takes a job whose resources go back (its run still set) out of the index.
    pub(crate) fn unhold(&mut self, id: JobId) {
        let job = &self.map[&id];
        let Some(run) = job.state.run() else { return };
        if !self.holds(id) {
            return;
        }
        let key = HoldKey::of(job).expect("a job that holds has a run");
        if let Some(noted) = self.holding.remove(&key) {
            self.clocked.file(id, &noted, false);
            self.holder_log.note(HolderChange::of(key, &noted, false));
        }
        self.stamps.renew(job.team_id);
        let job = &self.map[&id];
        if let Some(a) = job.spec.array.filter(|a| a.max_running.is_some()) {
            bump(&mut self.holding_by_array, a.array, false);
        }
        if let Some(set) = self.holding_by_team.get_mut(&job.team_id) {
            let milli = set.remove(&id).unwrap_or(0);
            if let Some(sum) = self.held_milli_by_team.get_mut(&job.team_id) {
                *sum -= milli;
            }
            if set.is_empty() {
                self.holding_by_team.remove(&job.team_id);
                self.held_milli_by_team.remove(&job.team_id);
            }
        }
        for task in &run.placement {
            if let Some(set) = self.holding_by_node.get_mut(&task.node) {
                set.remove(&id);
                if set.is_empty() {
                    self.holding_by_node.remove(&task.node);
                }
            }
        }
        self.pending(id, true);
    }
}

impl std::ops::Deref for LiveJobs {
    type Target = BTreeMap<JobId, Job>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for LiveJobs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Serialize for LiveJobs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LiveJobs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<JobId, Job>::deserialize(deserializer)?;
        let holders: Vec<JobId> = map
            .values()
            .filter(|job| job.state.run().is_some())
            .map(|job| job.spec.id)
            .collect();
        let ids: Vec<JobId> = map.keys().copied().collect();
        let mut jobs = LiveJobs {
            map,
            ..LiveJobs::default()
        };
        for id in ids {
            jobs.pending(id, true);
            LiveJobs::count_shape(&mut jobs.shapes, &jobs.map[&id].spec, true);
        }
        for id in holders {
            jobs.hold(id);
        }
        Ok(jobs)
    }
}

/// Something that happened. `apply` is the only way state changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A node registers (or re-registers after an outage, coming back ready).
    NodeUp(NodeSpec),
    /// An operator or the reconciler changes a node's state. `Down` requeues what ran there.
    NodeState {
        node: NodeId,
        state: NodeState,
        at_s: Secs,
    },
    /// Creates a team or changes its quotas, weight, parent or idle policy.
    SetTeam(TeamSpec),
    /// Removes a team without jobs and without sub-teams.
    RemoveTeam {
        name: String,
    },
    Submit(JobSpec),
    /// A pending job ends at once; a running one is stopped and ends cancelled.
    Cancel {
        job: JobId,
        at_s: Secs,
        /// Set when the job is ended because this job, which it depends on, ended so that
        /// the job can never start (`apply` checks that it did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unmet: Option<JobId>,
    },
    /// The shell executed a start of the plan.
    Start {
        job: JobId,
        placement: Vec<TaskPlacement>,
        admission: Admission,
        at_s: Secs,
    },
    /// The shell told a running job to stop (SIGTERM now, SIGKILL after its grace period).
    Stop {
        job: JobId,
        cause: StopCause,
        beneficiary: Option<JobId>,
        /// The beneficiary would borrow: its hold is outside its team's guarantee.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        borrowing: bool,
        at_s: Secs,
    },
    /// Every task of the job has exited. A stopped job goes where its stop cause says.
    /// `attempt`, when given, must be the current run's (see [`Run::attempt`]).
    Exited {
        job: JobId,
        success: bool,
        #[serde(default)]
        attempt: Option<u32>,
        at_s: Secs,
    },
    /// The job lost its resources (its node went away) and goes back to the queue whole.
    Requeue {
        job: JobId,
        #[serde(default)]
        attempt: Option<u32>,
        at_s: Secs,
    },
    /// Highest GPU utilisation over the job's GPUs since the previous sample.
    Utilisation {
        job: JobId,
        pct: u8,
        #[serde(default)]
        attempt: Option<u32>,
        at_s: Secs,
    },
    /// Drops jobs that ended before `before_s`, and the ended jobs of `jobs` (unless a live
    /// job depends on them), to bound memory in long-running servers and simulations.
    Forget {
        before_s: Secs,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        jobs: Vec<JobId>,
    },
}

impl Event {
    fn at_s(&self) -> Option<Secs> {
        match self {
            Event::NodeState { at_s, .. }
            | Event::Cancel { at_s, .. }
            | Event::Start { at_s, .. }
            | Event::Stop { at_s, .. }
            | Event::Exited { at_s, .. }
            | Event::Requeue { at_s, .. }
            | Event::Utilisation { at_s, .. } => Some(*at_s),
            Event::Submit(spec) => Some(spec.submit_s),
            Event::NodeUp(_)
            | Event::SetTeam(_)
            | Event::RemoveTeam { .. }
            | Event::Forget { .. } => None,
        }
    }
}

/// Applies one event; on error nothing changed.
pub fn apply(state: &mut ClusterState, event: Event) -> Result<(), ApplyError> {
    state.apply(event)
}

impl ClusterState {
    pub fn new(config: SchedulerConfig) -> ClusterState {
        ClusterState {
            config,
            ..ClusterState::default()
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn teams(&self) -> impl Iterator<Item = &Team> {
        self.teams.values()
    }

    pub fn team(&self, name: &str) -> Option<&Team> {
        self.teams.get(name)
    }

    /// Every job known: the live ones, then the ended ones, each in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().chain(self.done.values())
    }

    /// The highest id of a forgotten job: ids up to it are never given again.
    pub fn forgotten_up_to(&self) -> Option<JobId> {
        self.forgotten_up_to
    }

    /// The GPU models of the registered nodes, sorted, each once.
    pub fn gpu_models(&self) -> Vec<String> {
        // Few models, many nodes: collected without sorting a name per node.
        let mut names: Vec<&str> = Vec::new();
        for n in self.nodes.values() {
            let m = n.spec.gpu_model.as_str();
            if names.last() != Some(&m) && !names.contains(&m) {
                names.push(m);
            }
        }
        names.sort_unstable();
        names.into_iter().map(String::from).collect()
    }

    /// The GPU models (as [`Self::gpu_models`]) and the team tree indexed over them, kept
    /// until a node registers or a team changes.
    pub(crate) fn team_index(&self) -> (&[String], &crate::teams::TeamIndex) {
        let (models, index) = self.derived.index.get_or_init(|| {
            let models = self.gpu_models();
            let index =
                crate::teams::TeamIndex::build(self.teams.values().map(|t| &t.spec), &models);
            (models, index)
        });
        (models, index)
    }

    /// How many ended jobs are still held.
    pub fn ended_count(&self) -> usize {
        self.done.len()
    }

    /// Ended jobs still held, by id.
    pub fn ended_jobs(&self) -> impl Iterator<Item = &Job> {
        self.done.values()
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).or_else(|| self.done.get(&id))
    }

    /// The least GPU ask (milli-GPUs, the whole job's) among team `team`'s pending jobs
    /// that ask for GPUs; none when it has no such job.
    pub fn least_pending_gpu_ask(&self, team: &str) -> Option<u64> {
        let id = self.teams.get(team)?.id;
        let queue = self.jobs.queues.get(&id)?;
        queue.asks.range(1..).next().map(|(&milli, _)| milli)
    }

    /// The GPU asks (milli-GPUs, whole jobs') of team `team`'s pending jobs, summed.
    pub fn pending_gpu_milli(&self, team: &str) -> u64 {
        let Some(queue) = self
            .teams
            .get(team)
            .and_then(|t| self.jobs.queues.get(&t.id))
        else {
            return 0;
        };
        queue.asks.iter().map(|(&milli, &n)| milli * n as u64).sum()
    }

    /// How many jobs `user` has pending (in every team), and how many team `team` has.
    pub fn pending_counts(&self, team: &str, user: &str) -> (usize, usize) {
        let by_team = self
            .teams
            .get(team)
            .and_then(|t| self.jobs.pending_by_team.get(&t.id))
            .copied()
            .unwrap_or(0);
        let by_user = self.jobs.pending_by_user.get(user).copied().unwrap_or(0);
        (by_user, by_team)
    }

    /// Pending jobs that can never start, because a job they depend on ended otherwise than
    /// they wait for (or is unknown), with that dependency: the server ends them.
    pub fn unmet_dependencies(&self) -> Vec<(JobId, JobId)> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Pending && !j.spec.depends_on.is_empty())
            .filter_map(|j| match crate::plan::dependency_block(self, &j.spec) {
                Some(crate::plan::Reason::DependencyFailed { on, .. }) => Some((j.spec.id, on)),
                _ => None,
            })
            .collect()
    }

    /// How many jobs of `array` hold resources now (counted only for arrays with a limit).
    pub fn array_holding(&self, array: JobId) -> usize {
        self.jobs.holding_by_array.get(&array).copied().unwrap_or(0)
    }

    /// Jobs that are pending, running or stopping, in id order.
    pub fn live_jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// A job that has just ended moves out of the live map.
    fn retire(&mut self, id: JobId) {
        if let Some(job) = self.jobs.leave(id) {
            self.done.insert(id, job);
        }
        self.holds.remove(&id);
    }

    /// A live job, or why not.
    fn live_job(&self, id: JobId) -> Result<&Job, ApplyError> {
        match (self.jobs.get(&id), self.done.get(&id)) {
            (Some(job), _) => Ok(job),
            (None, Some(_)) => Err(self.wrong_state(id, "pending, running or stopping")),
            (None, None) => Err(ApplyError::UnknownJob(id)),
        }
    }

    fn wrong_state(&self, id: JobId, expected: &'static str) -> ApplyError {
        ApplyError::WrongState {
            job: id,
            state: self.job(id).map_or("unknown", |j| j.state.name()),
            expected,
        }
    }

    pub fn holds(&self) -> &BTreeMap<JobId, Hold> {
        &self.holds
    }

    pub fn clock_s(&self) -> Secs {
        self.clock_s
    }
}

/// Milli-GPUs a placement takes, for checks.
pub(crate) fn placement_milli(placement: &[TaskPlacement]) -> u64 {
    placement
        .iter()
        .map(|t| u64::from(t.gpu_milli) * t.gpus.len() as u64)
        .sum()
}

/// The placement shape a task of `ask` must have.
pub(crate) fn task_shape(ask: GpuAsk) -> (usize, u32) {
    match ask {
        GpuAsk::Whole(n) => (n as usize, MILLI_PER_GPU),
        GpuAsk::Milli(m) => (1, m),
    }
}
