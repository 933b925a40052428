//! The control plane. [`Server`] owns the scheduling core's `ClusterState` and the store;
//! every change is a `qm_core::Event`, appended to the store before it takes effect outside
//! (before the API answers, before an agent is told). The scheduling loop ([`Server::run`])
//! calls `decide` whenever something changed and executes the plan: it never decides
//! placement itself. Agents long-poll for commands and report what they observe in
//! heartbeats; the server reconciles the two.

mod api;
mod auth;
mod dash;
mod exec;
pub mod faults;
mod journal;
mod limits;
mod metrics;
mod retain;
pub mod standby;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qm_core::{apply, ApplyError, ClusterState, Event, JobId, SchedulerConfig, Secs};
use qm_proto::{Command, JobEvent, JobEventKind, Role, TaskKey};
use qm_store::{JobPayload, NodeRecord, Store, StoreError, TokenRecord};
use tokio::sync::Notify;

pub use api::{app, openapi_doc};
pub use auth::{hash_token, new_token};
pub use dash::snapshot_of as dashboard_snapshot;
pub use dash::MAX_STREAMS as MAX_DASHBOARD_STREAMS;
pub use metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
pub use views::usage_rows;

/// Knobs of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A node whose agent has not reported for this long is marked down and its jobs are
    /// requeued whole.
    pub node_timeout_s: u64,
    /// A snapshot of the state every this many events, so a restart replays only the rest.
    pub snapshot_every: u64,
    /// Most output stored per task; the rest is dropped with a marker in the log.
    pub max_log_bytes: u64,
    /// The largest log chunk a node may send at once (at most [`MAX_LOG_CHUNK`]).
    pub max_log_chunk: usize,
    /// Most jobs one user, and one team, may have pending.
    pub max_pending_per_user: usize,
    pub max_pending_per_team: usize,
    /// Ended jobs stay in memory this long after they end; then only their record in the
    /// store remains (`qm show` and `qm jobs --all` read it there).
    pub retain_ended_s: u64,
    /// At most this many ended jobs stay in memory (the most recently ended).
    pub retain_ended_max: usize,
    /// Task output is deleted once its job ended this long ago and left memory.
    pub retain_logs_s: u64,
    /// Members see only their own teams' jobs.
    pub private_jobs: bool,
    /// Each team's use (guaranteed, used, borrowed, lent, idle) is sampled into the store
    /// this often, for `qm report` and the dashboard's history.
    pub usage_every_s: u64,
    /// Usage samples older than this are deleted (checked hourly).
    pub retain_usage_s: u64,
    /// Print each refused agent request on standard error (a simulation turns it off).
    pub log_refusals: bool,
    pub scheduler: SchedulerConfig,
}

/// How often the scheduling loop deletes task output past `retain_logs_s`.
const LOG_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The most a log chunk may ever be (agents send at most 256 KiB): a request body is read
/// whole, and axum reads at most 2 MiB of one, JSON escapes included.
pub const MAX_LOG_CHUNK: usize = 1 << 20;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_timeout_s: 30,
            snapshot_every: 10_000,
            max_log_bytes: 64 << 20,
            max_log_chunk: MAX_LOG_CHUNK,
            max_pending_per_user: 10_000,
            max_pending_per_team: 50_000,
            retain_ended_s: 24 * 3600,
            retain_ended_max: 10_000,
            retain_logs_s: 30 * 86_400,
            private_jobs: false,
            usage_every_s: 300,
            retain_usage_s: 400 * 86_400,
            log_refusals: true,
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// Wall-clock Unix seconds, as the system says.
pub fn now_s() -> Secs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the server reads time: wall-clock Unix seconds for the scheduling core and the
/// records, monotonic milliseconds for timeouts (a silent node, a launch never seen). The
/// system's in `qm server` and `qm up`; a simulation drives its own, so that everything the
/// server decides follows from what it was told and when.
pub trait Clock: Send + Sync {
    fn now_s(&self) -> Secs;
    fn mono_ms(&self) -> u64;
}

/// A clock that moves only when told (simulations and tests): milliseconds since its start,
/// wall seconds from `epoch_s`.
pub struct ManualClock {
    ms: std::sync::atomic::AtomicU64,
    epoch_s: Secs,
    /// Steps of the wall clock (seconds, either way), as NTP makes after a reboot.
    wall_step_s: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn new(epoch_s: Secs) -> ManualClock {
        ManualClock {
            ms: std::sync::atomic::AtomicU64::new(0),
            epoch_s,
            wall_step_s: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Steps the wall clock by `s` seconds (back when negative); monotonic time is unmoved.
    pub fn step_wall_s(&self, s: i64) {
        self.wall_step_s
            .fetch_add(s, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn advance_ms(&self, ms: u64) {
        self.ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_s(&self) -> Secs {
        let step = self.wall_step_s.load(std::sync::atomic::Ordering::Relaxed);
        (self.epoch_s + self.mono_ms() / 1000).saturating_add_signed(step)
    }

    fn mono_ms(&self) -> u64 {
        self.ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The system's clock.
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_s(&self) -> Secs {
        now_s()
    }

    fn mono_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// One agent's live session.
pub(crate) struct Agent {
    /// [`Clock::mono_ms`] of its last request.
    pub last_seen: u64,
    /// Commands for the agent, each with the journal ticket it waits for: it goes out only
    /// once the change that caused it is durable.
    pub outbox: Vec<(u64, Command)>,
    pub wake: Arc<Notify>,
}

/// A task launch the agent has received: when, so a heartbeat that lacks it later means the
/// task was lost.
pub(crate) struct Sent {
    pub node: u32,
    /// [`Clock::mono_ms`] when the agent took it.
    pub at: u64,
}

pub(crate) struct Inner {
    pub config: ServerConfig,
    pub state: ClusterState,
    /// The store, behind group commit.
    pub journal: Arc<journal::Journal>,
    pub payloads: BTreeMap<u64, JobPayload>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub nodes: Nodes,
    pub agents: BTreeMap<u32, Agent>,
    /// Exit codes of the current run's tasks, by (job, attempt).
    pub exits: BTreeMap<(u64, u32), BTreeMap<u32, i32>>,
    /// Launches handed to agents and not yet seen exited.
    pub sent: BTreeMap<TaskKey, Sent>,
    pub history: BTreeMap<u64, Vec<JobEvent>>,
    /// The node of each task of every run, by (job, attempt): what a node may speak for.
    pub placed: BTreeMap<(u64, u32), Vec<u32>>,
    /// Utilisation reports of running jobs, by (job, attempt).
    pub util: BTreeMap<(u64, u32), UtilSeen>,
    /// Jobs whose idle warning was recorded, by (job, attempt).
    pub idle_noted: BTreeSet<(u64, u32)>,
    pub next_job: u64,
    /// [`Clock::mono_ms`] at start.
    pub started: u64,
    pub clock: Arc<dyn Clock>,
    /// How this start began: (snapshot taken at event, events replayed after it).
    pub resumed: (u64, u64),
    pub metrics: metrics::Metrics,
    /// Bumped by every change, for the dashboard's stream.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Sequence number of the last event (queued for the store), and events since the last
    /// snapshot.
    pub seq: u64,
    pub since_snapshot: u64,
    /// [`Clock::mono_ms`] after which retention looks for ended jobs to forget.
    pub next_retain_ms: u64,
}

/// The registered nodes by name, indexed by id and by credential hash, so that an agent's
/// request (2,048 of them a second on a large cluster) is resolved without a scan.
#[derive(Default)]
pub(crate) struct Nodes {
    by_name: BTreeMap<String, NodeRecord>,
    names: BTreeMap<u32, String>,
    by_credential: std::collections::HashMap<String, u32>,
}

impl Nodes {
    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.by_name.get(name)
    }

    pub fn values(&self) -> impl Iterator<Item = &NodeRecord> {
        self.by_name.values()
    }

    /// The record of node `id`.
    pub fn record(&self, id: u32) -> Option<&NodeRecord> {
        self.names.get(&id).and_then(|n| self.by_name.get(n))
    }

    /// The node whose credential hashes to `hash` (a reset node's empty hash names none).
    pub fn by_credential(&self, hash: &str) -> Option<u32> {
        self.by_credential.get(hash).copied()
    }

    /// The next id for a new node.
    pub fn next_id(&self) -> u32 {
        self.names.keys().next_back().map_or(0, |id| id + 1)
    }

    /// Adds or replaces a node's record (by name; its id stays with its name).
    pub fn insert(&mut self, rec: NodeRecord) {
        if let Some(old) = self.by_name.get(&rec.name) {
            if self.by_credential.get(&old.credential_hash) == Some(&old.id) {
                self.by_credential.remove(&old.credential_hash);
            }
        }
        if !rec.credential_hash.is_empty() {
            self.by_credential
                .insert(rec.credential_hash.clone(), rec.id);
        }
        self.names.insert(rec.id, rec.name.clone());
        self.by_name.insert(rec.name.clone(), rec);
    }
}

/// The latest utilisation of each task of a run, and the last value sent to the core.
#[derive(Debug, Default)]
pub(crate) struct UtilSeen {
    pub tasks: BTreeMap<u32, u8>,
    /// (percent, at) of the last `Utilisation` event.
    pub sent: Option<(u8, Secs)>,
}

/// Why a request changed nothing.
#[derive(Debug)]
pub enum Refusal {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Over a limit on how much one user or team may have waiting (429).
    TooMany(String),
    /// The path exists, not with this method (405).
    MethodNotAllowed(String),
    Internal(String),
}

impl Refusal {
    /// What the refusal says, for answers that list several.
    pub fn message(&self) -> String {
        match self {
            Refusal::BadRequest(m)
            | Refusal::Unauthorized(m)
            | Refusal::Forbidden(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::TooMany(m)
            | Refusal::MethodNotAllowed(m)
            | Refusal::Internal(m) => m.clone(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Internal(e.to_string())
    }
}

impl From<ApplyError> for Refusal {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::UnknownJob(_) | ApplyError::UnknownNode(_) => {
                Refusal::NotFound(e.to_string())
            }
            ApplyError::DuplicateJob(_) | ApplyError::WrongState { .. } => {
                Refusal::Conflict(e.to_string())
            }
            _ => Refusal::BadRequest(e.to_string()),
        }
    }
}

/// The control plane, shared by the HTTP handlers and the scheduling loop.
pub struct Server {
    inner: Mutex<Inner>,
    /// The store behind group commit (the same as the state's), and its flusher thread.
    pub(crate) journal: Arc<journal::Journal>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Something changed: plan again.
    pub(crate) wake: Notify,
    /// Bumped by every change (the dashboard's stream waits on it).
    pub(crate) changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Overview samples for the dashboard, one per 5 s.
    pub(crate) history: Mutex<std::collections::VecDeque<dash::Sample>>,
    /// The dashboard's latest snapshot, shared by its streams, and how many are open.
    pub(crate) dash_cache: Mutex<dash::SharedSnapshot>,
    /// Each team's idle GPU-hours over the last 7 days, from the store's usage samples,
    /// summed again after each sample (off the state's lock).
    pub(crate) idle_week: Mutex<BTreeMap<String, f64>>,
    pub(crate) streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    /// Opens the server on a store, replaying its events, with the system's clock.
    pub fn open(store: Box<dyn Store>, config: ServerConfig) -> Result<Arc<Server>, Refusal> {
        Server::open_with_clock(store, config, Arc::new(SystemClock::default()))
    }

    /// [`Server::open`] with a clock of the caller's (a test's [`ManualClock`]).
    pub fn open_with_clock(
        store: Box<dyn Store>,
        config: ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Server>, Refusal> {
        let inner = Inner::open(store, config, clock)?;
        let changes = inner.changes.clone();
        let journal = inner.journal.clone();
        let flusher = {
            let journal = journal.clone();
            std::thread::Builder::new()
                .name("qm-journal".into())
                .spawn(move || journal.run())
                .map_err(|e| Refusal::Internal(format!("cannot start the store's writer: {e}")))?
        };
        Ok(Arc::new(Server {
            inner: Mutex::new(inner),
            journal,
            flusher: Mutex::new(Some(flusher)),
            wake: Notify::new(),
            changes,
            history: Mutex::new(std::collections::VecDeque::new()),
            dash_cache: Mutex::new(None),
            idle_week: Mutex::new(BTreeMap::new()),
            streams: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }))
    }
}

impl Drop for Server {
    /// Writes what is queued and ends the flusher, so that the store is closed (a lease
    /// released, a file unlocked) when the server is gone.
    fn drop(&mut self) {
        self.journal.close();
        let handle = self
            .flusher
            .get_mut()
            .map_or_else(|p| p.into_inner().take(), Option::take);
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Inner {
    /// The control plane's state, loaded from a store: its snapshot, then the events after
    /// it. Launches of running jobs are queued again for their agents.
    pub(crate) fn open(
        mut store: Box<dyn Store>,
        config: ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Inner, Refusal> {
        let loaded = store.load()?;
        let mut state = loaded
            .state
            .unwrap_or_else(|| ClusterState::new(config.scheduler.clone()));
        let extra = match &loaded.extra {
            Some(text) => Extra::read(text)?,
            None => Extra::default(),
        };
        let mut history = extra.history;
        let mut placed: BTreeMap<(u64, u32), Vec<u32>> = extra
            .placed
            .into_iter()
            .map(|(job, attempt, nodes)| ((job, attempt), nodes))
            .collect();
        let mut since_snapshot = 0;
        for (seq, event) in loaded.events {
            since_snapshot += 1;
            record(&mut history, &state, &event);
            let start = start_of(&event);
            // What the server derived about jobs this event forgets goes with them (their
            // payloads and exits were deleted from the store in the same transaction).
            let forgotten = match &event {
                Event::Forget { before_s, jobs } => state.forgettable(*before_s, jobs),
                _ => Vec::new(),
            };
            apply(&mut state, event).map_err(|e| {
                Refusal::Internal(format!("event {seq} of the store does not apply: {e}"))
            })?;
            note_placed(&mut placed, &state, start);
            for id in forgotten {
                history.remove(&id.0);
                retain::remove_runs(&mut placed, id.0);
            }
        }
        // A state that breaks an invariant (a bad snapshot) stops the server here, naming the
        // invariant, rather than at whichever later event first touches the broken part.
        state.check_invariants();
        let next_job = state
            .jobs()
            .map(|j| j.spec.id)
            .chain(state.forgotten_up_to())
            .max()
            .map_or(0, |id| id.0)
            + 1;
        let journal = Arc::new(journal::Journal::new(store, loaded.last_seq));
        let started = clock.mono_ms();
        let changes = Arc::new(tokio::sync::watch::channel(0u64).0);
        let inner = Inner {
            config,
            state,
            journal,
            payloads: loaded.payloads.into_iter().collect(),
            tokens: loaded
                .tokens
                .into_iter()
                .map(|t| (t.hash.clone(), t))
                .collect(),
            nodes: {
                let mut nodes = Nodes::default();
                for n in loaded.nodes {
                    nodes.insert(n);
                }
                nodes
            },
            agents: BTreeMap::new(),
            exits: {
                let mut exits: BTreeMap<(u64, u32), BTreeMap<u32, i32>> = BTreeMap::new();
                for ((job, task, attempt), code) in &loaded.exits {
                    exits
                        .entry((*job, *attempt))
                        .or_default()
                        .insert(*task, *code);
                }
                exits
            },
            sent: BTreeMap::new(),
            history,
            placed,
            util: BTreeMap::new(),
            idle_noted: BTreeSet::new(),
            next_job,
            started,
            clock,
            metrics: metrics::Metrics::default(),
            changes: changes.clone(),
            seq: loaded.last_seq,
            since_snapshot,
            resumed: (loaded.snapshot_seq, since_snapshot),
            next_retain_ms: started + retain::RETAIN_EVERY_MS,
        };
        let mut inner = inner;
        // The scheduler's settings are the command line's, not those the snapshot was taken
        // under: the events stored so far replayed under the settings they were applied
        // with, and a snapshot taken now makes every later one replay under the new ones.
        if inner.state.config != inner.config.scheduler {
            inner.state.config = inner.config.scheduler.clone();
            inner.snapshot_now();
        }
        // Launches of running jobs may not have reached their agents before the last stop:
        // send them again (an agent ignores a launch of a task it runs or has run).
        let running: Vec<JobId> = inner
            .state
            .live_jobs()
            .filter(|j| matches!(j.state, qm_core::JobState::Running(_)))
            .map(|j| j.spec.id)
            .collect();
        for job in running {
            inner.launch(job);
        }
        // Jobs that were stopping: their agents are told again (a kill may have been lost
        // with the last life), and a task no agent reports any more counts as gone, so that
        // the stop completes even where the task never ran or its agent lost it.
        let stopping: Vec<JobId> = inner
            .state
            .live_jobs()
            .filter(|j| matches!(j.state, qm_core::JobState::Stopping(..)))
            .map(|j| j.spec.id)
            .collect();
        for job in stopping {
            inner.kill_run(job);
            inner.watch_run(job);
        }
        Ok(inner)
    }

    /// Expects every task of the job's run on its node from now on: one its agent does not
    /// report within the lost window counts as gone.
    pub(crate) fn watch_run(&mut self, id: JobId) {
        let Some(run) = self.state.job(id).and_then(|j| j.state.run()) else {
            return;
        };
        let at = self.clock.mono_ms();
        let keys: Vec<(TaskKey, u32)> = run
            .placement
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let key = TaskKey {
                    job: id.0,
                    task: i as u32,
                    attempt: run.attempt,
                };
                (key, t.node.0)
            })
            .collect();
        for (key, node) in keys {
            self.sent.entry(key).or_insert(Sent { node, at });
        }
    }

    /// Logs a refused agent request.
    pub(crate) fn refused(&self, message: &str) {
        if self.config.log_refusals {
            eprintln!("qm server: refused: {message}");
        }
    }

    /// Wall-clock seconds, from the server's clock.
    pub fn now_s(&self) -> Secs {
        self.clock.now_s()
    }

    /// Monotonic milliseconds, from the server's clock.
    pub fn mono_ms(&self) -> u64 {
        self.clock.mono_ms()
    }
}

impl Server {
    /// The state, under its one lock. A poisoned lock means a panic happened while the state
    /// was being changed: nothing can trust it any more, so this panics too (and the
    /// scheduling loop's panic stops the process) rather than recover it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the server's state lock is poisoned: a panic happened while the state was being changed")
    }

    /// The dashboard's overview samples (poisoned like [`Server::lock`]).
    pub(crate) fn history(&self) -> MutexGuard<'_, std::collections::VecDeque<dash::Sample>> {
        self.history.lock().expect(
            "the dashboard's history lock is poisoned: a panic happened while it was being changed",
        )
    }

    /// (The event the state was loaded from a snapshot at, 0 for none; events replayed.)
    pub fn resumed(&self) -> (u64, u64) {
        self.lock().resumed
    }

    /// The settings the planner runs with.
    pub fn scheduler_config(&self) -> qm_core::SchedulerConfig {
        self.lock().state.config.clone()
    }

    /// Whether any admin token exists (a fresh store has none).
    pub fn has_admin(&self) -> bool {
        self.lock().tokens.values().any(|t| t.role == Role::Admin)
    }

    /// Creates a token and returns it (its hash is stored). `role` is a wire name (`admin`,
    /// `member`, `join`); any other is refused with the valid ones.
    pub fn create_token(
        &self,
        name: &str,
        role: &str,
        teams: &[String],
    ) -> Result<String, Refusal> {
        let role: Role = role
            .parse()
            .map_err(|e: qm_proto::UnknownValue| Refusal::BadRequest(e.to_string()))?;
        self.create_token_for(name, role, teams)
    }

    /// [`Server::create_token`] for a typed role; durable when it returns.
    pub fn create_token_for(
        &self,
        name: &str,
        role: Role,
        teams: &[String],
    ) -> Result<String, Refusal> {
        self.write_sync(|inner| inner.create_token(name, role, teams))
    }

    /// Runs a change under the lock and returns once it is durable, writing it in this thread
    /// if the flusher has not (for callers outside the runtime: `qm up`, tests).
    pub(crate) fn write_sync<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let (out, ticket) = self.change(f);
        self.journal.flush_to(ticket);
        out
    }

    /// Runs a change under the lock; returns its result and the journal ticket that makes
    /// it durable.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, Refusal>,
    ) -> (Result<T, Refusal>, u64) {
        let mut inner = self.lock();
        let out = f(&mut inner);
        (out, inner.journal.queued())
    }

    /// Reads under the lock, then waits, without the lock, until every change the answer may
    /// show is durable: no client is shown what a crash could take back.
    pub(crate) async fn read<T>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let out = f(&self.lock());
        self.settled().await;
        out
    }

    /// Waits until everything queued so far is durable.
    pub(crate) async fn settled(&self) {
        let ticket = self.journal.queued();
        self.journal.wait(ticket).await;
    }

    /// Runs a change under the lock, then waits, without the lock, until it is durable: the
    /// store's sync is shared with every request that arrives meanwhile (group commit).
    /// A refused change waits too, for whatever it did queue before it was refused.
    pub(crate) async fn write<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let (out, ticket) = self.change(f);
        self.journal.wait(ticket).await;
        self.wake.notify_one();
        out
    }

    /// Sends every running job back to the queue whole (for a clean stop of `qm up`, whose
    /// agent then ends their tasks); they start again when capacity returns.
    pub fn requeue_all(&self, why: &str) -> Result<(), Refusal> {
        self.write_sync(|inner| {
            let now = inner.now_s();
            let runs: Vec<(JobId, u32)> = inner
                .state
                .live_jobs()
                .filter_map(|j| j.state.run().map(|r| (j.spec.id, r.attempt)))
                .collect();
            for (job, attempt) in runs {
                let e = Event::Requeue {
                    job,
                    attempt: Some(attempt),
                    at_s: now,
                };
                if inner.commit(vec![e], &[]).is_ok() {
                    if let Some(last) = inner.history.get_mut(&job.0).and_then(|h| h.last_mut()) {
                        last.detail = why.to_string();
                    }
                }
            }
            Ok(())
        })
    }

    /// The scheduling loop: plans whenever woken, and at least every second (node timeouts,
    /// time limits, idle windows). Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut last_sample: Option<Instant> = None;
        let mut last_prune: Option<Instant> = None;
        let mut last_usage: Option<u64> = None;
        loop {
            if last_prune.is_none_or(|t| t.elapsed() >= LOG_PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                let s = self.clone();
                // Off the async threads: the store's lock may wait for a write in flight.
                let pruned =
                    tokio::task::spawn_blocking(move || (s.prune_logs(), s.prune_usage())).await;
                match pruned {
                    Ok((logs, usage)) => {
                        match logs {
                            Ok(0) => {}
                            Ok(n) => {
                                eprintln!("qm server: deleted {n} log chunks past --retain-logs")
                            }
                            Err(e) => eprintln!("qm server: pruning old task logs failed: {e:?}"),
                        }
                        match usage {
                            Ok(0) => {}
                            Ok(n) => eprintln!(
                                "qm server: deleted {n} usage samples past --retain-usage"
                            ),
                            Err(e) => {
                                eprintln!("qm server: pruning old usage samples failed: {e:?}")
                            }
                        }
                    }
                    Err(e) => eprintln!("qm server: pruning old task logs failed: {e}"),
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
            if last_sample.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                let inner = self.lock();
                let mut h = self.history();
                dash::sample(&inner, &mut h);
                last_sample = Some(Instant::now());
            }
            let sampled = {
                // Usage samples fall on multiples of the interval (on the server's clock),
                // so that a restart or a standby taking over continues the same series.
                let inner = self.lock();
                let every = inner.config.usage_every_s.max(1);
                let slot = inner.now_s() / every * every;
                if last_usage.is_none_or(|l| slot > l) {
                    last_usage = Some(slot);
                    let rows = views::usage_rows(&inner.state, slot, inner.now_s());
                    inner.journal.usage(rows);
                    true
                } else {
                    false
                }
            };
            if sampled {
                let s = self.clone();
                // Off the async threads and the state's lock: a week of samples is read.
                let summed = tokio::task::spawn_blocking(move || s.sum_idle_week()).await;
                if let Ok(Err(e)) = summed {
                    eprintln!("qm server: summing the week's idle GPU-hours failed: {e:?}");
                }
            }
            let t0 = Instant::now();
            if let Err(e) = self.tick() {
                // The state ran ahead of the store: stop rather than act on what may be lost.
                eprintln!("qm server: fatal: {e:?}");
                std::process::exit(70);
            }
            // A round holds the state's lock. Under a stream of changes, each waking the
            // loop, rounds would follow each other and starve the requests: the lock is left
            // free for four times as long as the last round held it, if it held it 1 ms or
            // more (a fifth of the time at most goes to planning; a launch waits at most four
            // plans' time more), and the wakes that come meanwhile are served by one round.
            let spent = t0.elapsed();
            if spent >= Duration::from_millis(1) {
                tokio::time::sleep((spent * 4).min(Duration::from_secs(1))).await;
            }
        }
    }

    /// Deletes the output of tasks whose jobs ended more than `retain_logs_s` ago and have
    /// left memory (their records are in the store); returns how many chunks went.
    pub fn prune_logs(&self) -> Result<u64, Refusal> {
        let before = {
            let inner = self.lock();
            inner.now_s().saturating_sub(inner.config.retain_logs_s)
        };
        Ok(self.journal.store().prune_logs(before)?)
    }

    /// Sums each team's idle GPU-hours over the last 7 days from the store's usage samples
    /// (once what was queued is durable, the newest sample among them).
    pub fn sum_idle_week(&self) -> Result<(), Refusal> {
        let (now, every) = {
            let inner = self.lock();
            (inner.now_s(), inner.config.usage_every_s.max(1))
        };
        self.journal.flush_to(self.journal.queued());
        let rows = self
            .journal
            .store()
            .usage(now.saturating_sub(7 * 86_400), now)?;
        let mut week: BTreeMap<String, f64> = BTreeMap::new();
        for r in rows {
            *week.entry(r.team).or_default() +=
                r.idle_milli as f64 * every as f64 / 1000.0 / 3600.0;
        }
        *self
            .idle_week
            .lock()
            .expect("the idle week's lock is poisoned") = week;
        Ok(())
    }

    /// Each team's idle GPU-hours over the last 7 days (see [`Server::sum_idle_week`]).
    pub(crate) fn idle_week(&self, team: &str) -> f64 {
        self.idle_week
            .lock()
            .expect("the idle week's lock is poisoned")
            .get(team)
            .copied()
            .unwrap_or(0.0)
    }

    /// Deletes the usage samples older than `retain_usage_s`.
    pub fn prune_usage(&self) -> Result<u64, Refusal> {
        let before = {
            let inner = self.lock();
            inner.now_s().saturating_sub(inner.config.retain_usage_s)
        };
        Ok(self.journal.store().prune_usage(before)?)
    }

    /// One round: node timeouts, then a plan, executed.
    pub fn tick(&self) -> Result<(), Refusal> {
        self.lock().round()
    }
}

impl Inner {
    /// One round of the scheduling loop: node timeouts, jobs whose dependencies can never be
    /// met, a plan executed, retention.
    pub(crate) fn round(&mut self) -> Result<(), Refusal> {
        self.check_timeouts()?;
        self.end_unmet()?;
        self.schedule()?;
        self.retain()
    }

    /// Creates a token (see [`Server::create_token`]); its hash is queued for the store.
    pub(crate) fn create_token(
        &mut self,
        name: &str,
        role: Role,
        teams: &[String],
    ) -> Result<String, Refusal> {
        if role == Role::Member && teams.is_empty() {
            return Err(Refusal::BadRequest(
                "a member token needs at least one team".into(),
            ));
        }
        if role == Role::Member {
            limits::member_name(name).map_err(Refusal::BadRequest)?;
        }
        for t in teams {
            if self.state.team(t).is_none() {
                return Err(Refusal::BadRequest(format!("unknown team {t:?}")));
            }
        }
        let token = new_token();
        let rec = TokenRecord {
            hash: hash_token(&token),
            name: name.to_string(),
            role,
            teams: teams.to_vec(),
        };
        self.journal.token(rec.clone());
        self.tokens.insert(rec.hash.clone(), rec);
        Ok(token)
    }

    /// Who holds the token of this hash.
    pub(crate) fn principal(&self, hash: &str) -> Result<auth::Principal, Refusal> {
        if let Some(t) = self.tokens.get(hash) {
            return Ok(match t.role {
                Role::Admin => auth::Principal::Admin,
                Role::Join => auth::Principal::Join,
                Role::Member => auth::Principal::Member {
                    name: t.name.clone(),
                    teams: t.teams.clone(),
                },
            });
        }
        if let Some(id) = self.nodes.by_credential(hash) {
            return Ok(auth::Principal::Node(id));
        }
        Err(Refusal::Unauthorized("unknown token".into()))
    }

    /// Ends the pending jobs that can never start because a job they depend on ended
    /// otherwise than they wait for (each with that cause in its history), so that nothing
    /// waits for ever.
    pub(crate) fn end_unmet(&mut self) -> Result<(), Refusal> {
        let unmet = self.state.unmet_dependencies();
        if unmet.is_empty() {
            return Ok(());
        }
        let at_s = self.now_s();
        let events = unmet
            .into_iter()
            .map(|(job, dep)| Event::Cancel {
                job,
                at_s,
                unmet: Some(dep),
            })
            .collect();
        self.commit(events, &[])
    }

    /// Applies events and queues them for the store, all or nothing: a refused event changes
    /// nothing (the core checks an event before it mutates; a batch of several is rolled
    /// back from a copy). The events are durable once the journal's ticket at return is
    /// ([`Server::write`]); until then nothing that follows from them leaves the process.
    pub fn commit(
        &mut self,
        events: Vec<Event>,
        payloads: &[(u64, JobPayload)],
    ) -> Result<(), Refusal> {
        self.commit_with(events, payloads, Vec::new())
    }

    /// [`Inner::commit`] with the records of the jobs the events forget, in one write.
    pub(crate) fn commit_with(
        &mut self,
        events: Vec<Event>,
        payloads: &[(u64, JobPayload)],
        ended: Vec<qm_store::EndedJob>,
    ) -> Result<(), Refusal> {
        let backup = (events.len() > 1).then(|| self.state.clone());
        let mut hist = BTreeMap::new();
        let mut started = Vec::new();
        for e in &events {
            record(&mut hist, &self.state, e);
            if let Err(err) = apply(&mut self.state, e.clone()) {
                if let Some(b) = backup {
                    self.state = b;
                }
                return Err(err.into());
            }
            if let Some(job) = start_of(e) {
                let run = self.state.job(job).and_then(|j| j.state.run());
                started.extend(run.map(|r| (job, r.attempt, nodes_of(r))));
            }
        }
        self.seq = self.journal.events(&events, payloads, ended);
        for (job, mut list) in hist {
            self.history.entry(job).or_default().append(&mut list);
        }
        for (job, attempt, nodes) in started {
            self.placed.insert((job.0, attempt), nodes);
        }
        self.since_snapshot += events.len() as u64;
        if self.since_snapshot >= self.config.snapshot_every {
            self.snapshot_now();
        }
        for (job, p) in payloads {
            self.payloads.insert(*job, p.clone());
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Queues a snapshot of the state (with the server's job histories) at the last event.
    fn snapshot_now(&mut self) {
        let extra = Extra::write(&self.history, &self.placed);
        self.journal.snapshot(self.seq, self.state.clone(), extra);
        self.since_snapshot = 0;
    }

    pub fn node_name(&self, id: u32) -> String {
        self.nodes
            .record(id)
            .map_or_else(|| format!("node-{id}"), |n| n.name.clone())
    }

    pub fn push(&mut self, node: u32, command: Command) {
        let ticket = self.journal.queued();
        if let Some(a) = self.agents.get_mut(&node) {
            a.outbox.push((ticket, command));
            a.wake.notify_one();
        } else {
            // Not connected now: the command waits for its next poll.
            let wake = Arc::new(Notify::new());
            self.agents.insert(
                node,
                Agent {
                    last_seen: self.started,
                    outbox: vec![(ticket, command)],
                    wake,
                },
            );
        }
    }

    pub fn note(&mut self, job: u64, at_s: Secs, what: JobEventKind, detail: String) {
        self.history.entry(job).or_default().push(JobEvent {
            at_s,
            at: String::new(),
            what,
            detail,
        });
    }
}

/// What an event means for a job's history.
/// What a snapshot keeps beside the core's state: each job's history for people, and the node
/// of every task of every run (what a node may speak for, logs of ended runs included).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Extra {
    history: BTreeMap<u64, Vec<JobEvent>>,
    /// (job, attempt, node of each task).
    #[serde(default)]
    placed: Vec<(u64, u32, Vec<u32>)>,
}

impl Extra {
    /// Reads a snapshot's extra, also in the older form that was the history alone.
    fn read(text: &str) -> Result<Extra, Refusal> {
        serde_json::from_str::<Extra>(text)
            .or_else(|_| {
                serde_json::from_str(text).map(|history| Extra {
                    history,
                    placed: Vec::new(),
                })
            })
            .map_err(|e| Refusal::Internal(format!("the snapshot's history does not read: {e}")))
    }

    fn write(
        history: &BTreeMap<u64, Vec<JobEvent>>,
        placed: &BTreeMap<(u64, u32), Vec<u32>>,
    ) -> String {
        #[derive(serde::Serialize)]
        struct View<'a> {
            history: &'a BTreeMap<u64, Vec<JobEvent>>,
            placed: Vec<(u64, u32, &'a Vec<u32>)>,
        }
        let placed = placed.iter().map(|(&(j, a), n)| (j, a, n)).collect();
        serde_json::to_string(&View { history, placed }).unwrap_or_else(|_| "{}".into())
    }
}

/// The job an event starts, if it starts one.
fn start_of(e: &Event) -> Option<JobId> {
    match e {
        Event::Start { job, .. } => Some(*job),
        _ => None,
    }
}

/// The node of each task of a run.
fn nodes_of(run: &qm_core::Run) -> Vec<u32> {
    run.placement.iter().map(|t| t.node.0).collect()
}

/// Records where the run that `start` began (already applied to `state`) placed its tasks.
fn note_placed(
    placed: &mut BTreeMap<(u64, u32), Vec<u32>>,
    state: &ClusterState,
    start: Option<JobId>,
) {
    if let Some(job) = start {
        if let Some(run) = state.job(job).and_then(|j| j.state.run()) {
            placed.insert((job.0, run.attempt), nodes_of(run));
        }
    }
}

fn record(history: &mut BTreeMap<u64, Vec<JobEvent>>, state: &ClusterState, e: &Event) {
    let mut push = |job: JobId, at_s: Secs, what: JobEventKind, detail: String| {
        history.entry(job.0).or_default().push(JobEvent {
            at_s,
            at: String::new(),
            what,
            detail,
        });
    };
    match e {
        Event::Submit(spec) => push(spec.id, spec.submit_s, JobEventKind::Queued, String::new()),
        Event::Start {
            job,
            placement,
            admission,
            at_s,
        } => {
            let nodes: Vec<String> = placement
                .iter()
                .map(|t| {
                    let node = state
                        .node(t.node)
                        .map_or_else(|| format!("node {}", t.node.0), |n| n.spec.name.clone());
                    format!("{node} GPUs {:?}", t.gpus)
                })
                .collect();
            push(
                *job,
                *at_s,
                JobEventKind::Started,
                format!("{} on {}", views::admission(*admission), nodes.join(", ")),
            );
        }
        Event::Stop {
            job,
            cause,
            beneficiary,
            at_s,
            ..
        } => {
            let why = match (cause, beneficiary) {
                (qm_core::StopCause::Reclaim, Some(b)) => {
                    format!("preempted: GPUs reclaimed for job {}", b.0)
                }
                (qm_core::StopCause::Priority, Some(b)) => format!(
                    "preempted: GPUs given to job {}, of the same team and a higher priority",
                    b.0
                ),
                (qm_core::StopCause::Idle, Some(b)) => format!(
                    "preempted: its GPUs sat idle past the idle window, and job {} needed them (the team's idle policy yields)",
                    b.0
                ),
                (qm_core::StopCause::Idle, None) => {
                    "released: its GPUs sat idle past the team's release window; requeued".into()
                }
                (c, _) => format!("stopping: {}", views::stop_cause_text(*c)),
            };
            push(*job, *at_s, JobEventKind::Stopping, why);
        }
        Event::Exited {
            job, success, at_s, ..
        } => {
            let what = match state.job(*job).map(|j| &j.state) {
                Some(qm_core::JobState::Stopping(_, s))
                    if matches!(
                        s.cause,
                        qm_core::StopCause::Reclaim
                            | qm_core::StopCause::Priority
                            | qm_core::StopCause::Idle
                            | qm_core::StopCause::Lost
                    ) =>
                {
                    JobEventKind::Requeued
                }
                _ if *success => JobEventKind::Succeeded,
                _ => JobEventKind::Exited,
            };
            push(*job, *at_s, what, String::new());
        }
        Event::Requeue { job, at_s, .. } => push(
            *job,
            *at_s,
            JobEventKind::Requeued,
            "its run lost its resources; back to the queue whole".into(),
        ),
        Event::Cancel {
            job,
            at_s,
            unmet: None,
        } => push(*job, *at_s, JobEventKind::Cancelled, String::new()),
        Event::Cancel {
            job,
            at_s,
            unmet: Some(dep),
        } => {
            let detail = state
                .job(*job)
                .and_then(|j| qm_core::dependency_block(state, &j.spec))
                .map_or_else(
                    || {
                        format!(
                            "job {} it depends on ended so that it can never start",
                            dep.0
                        )
                    },
                    |r| r.to_string(),
                );
            push(*job, *at_s, JobEventKind::Cancelled, detail)
        }
        _ => {}
    }
}

#[cfg(test)]
mod fail_stop {
    use std::sync::Arc;
    use std::time::Duration;

    use qm_store::SqliteStore;

    use super::{Server, ServerConfig};

    fn server() -> Arc<Server> {
        Server::open(
            Box::new(SqliteStore::memory().unwrap()),
            ServerConfig::default(),
        )
        .unwrap()
    }

    fn poison(server: &Arc<Server>) {
        let s = server.clone();
        let died = std::thread::spawn(move || {
            let _inner = s.lock();
            panic!("an invariant broke while the state was being changed");
        })
        .join();
        assert!(died.is_err());
    }

    #[test]
    fn a_poisoned_state_is_never_used_again() {
        let server = server();
        poison(&server);
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(server.lock());
        }));
        assert!(again.is_err(), "the lock was recovered from poisoning");
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.tick())).is_err());
    }

    #[tokio::test]
    async fn the_scheduling_loop_stops_on_a_poisoned_state() {
        let server = server();
        poison(&server);
        let run = tokio::spawn(server.clone().run());
        let ended = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the scheduling loop went on with a poisoned state");
        assert!(ended.unwrap_err().is_panic());
    }
}

#[cfg(test)]
mod scheduler_settings {
    use qm_core::{Event, SchedulerConfig, TeamSpec};
    use qm_store::SqliteStore;

    use super::{Server, ServerConfig};

    fn open(db: &std::path::Path, scheduler: SchedulerConfig) -> std::sync::Arc<Server> {
        let config = ServerConfig {
            snapshot_every: 1,
            scheduler,
            ..ServerConfig::default()
        };
        Server::open(Box::new(SqliteStore::open(db).unwrap()), config).unwrap()
    }

    /// A server restarted with other scheduler settings runs with them, although its state
    /// comes from a snapshot taken under the old ones, and keeps them across a later restart
    /// with no event in between (the settings were ignored once a snapshot existed).
    #[test]
    fn a_restart_takes_the_scheduler_settings_of_its_command_line() {
        let dir = std::env::temp_dir().join(format!("qm-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("qm.db");
        let old = SchedulerConfig {
            starvation_wait_s: Some(3600),
            ..SchedulerConfig::default()
        };
        let server = open(&db, old.clone());
        server
            .write_sync(|inner| inner.commit(vec![Event::SetTeam(TeamSpec::new("t", 0))], &[]))
            .unwrap();
        assert_eq!(server.scheduler_config(), old);
        drop(server);
        let new = SchedulerConfig {
            idle_window_s: 900,
            ..SchedulerConfig::default()
        };
        let server = open(&db, new.clone());
        assert!(server.resumed().0 > 0, "the state came from a snapshot");
        assert_eq!(server.scheduler_config(), new);
        let seq = server.lock().seq;
        drop(server);
        let server = open(&db, new.clone());
        assert_eq!(
            server.resumed(),
            (seq, 0),
            "a snapshot was taken at the restart"
        );
        assert_eq!(server.scheduler_config(), new);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
