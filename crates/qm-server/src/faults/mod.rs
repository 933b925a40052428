//! A deterministic simulation of the control plane under faults: one server (its real
//! reconciliation code, `Inner`, on a real SQLite store held in memory) and a few simulated
//! agents that behave like `qm agent`, over a simulated network that loses, delays (and so
//! reorders) and duplicates messages and cuts nodes off; the server and the agents crash and
//! restart. Each agent keeps time by its own clock (offset by up to an hour, 2 % fast or
//! slow), and the server's wall clock may step by up to a minute either way when it restarts
//! (as NTP does after a reboot). Everything comes from one seed, and the server reads time
//! only from the simulation's clock, so a failing seed replays exactly, with a readable
//! trace.
//!
//! After every step the invariants are checked:
//! - no GPU share is given twice as the agents see it: on every node, the tasks still alive
//!   (reported or not, on a node cut off or whose agent crashed and left them running) never
//!   take more than a whole GPU;
//! - every accepted submission exists, and once ended stays ended the same way;
//! - a job that succeeded ran every task of its final attempt to exit 0 (on the agents);
//! - a task runs at most once per attempt (an agent's later life does not run it again);
//! - a fenced job never runs two attempts at once (its tasks die with a crashed agent, as
//!   `qm agent`'s fence guards make them);
//! - the core's own invariants hold on the server's state;
//! - an agent is never refused for speaking about a task (a legitimate agent only speaks
//!   for its own).
//!
//! Once the faults stop and everything is reachable again, every job ends and no task is
//! left running anywhere.
//!
//! `qm sim faults --seed N` replays one seed and prints its trace; the tests run thousands.

mod agent;
mod net;

use std::collections::BTreeMap;
use std::sync::Arc;

use qm_core::{JobId, JobState, Secs};
use qm_proto::{RegisterRequest, SubmitRequest, TaskKey};
use qm_store::{SqliteStore, Store};

use crate::auth::{hash_token, Principal};
use crate::{Clock, Inner, ManualClock, Refusal, ServerConfig};

use agent::SimAgent;
pub use net::Rng;
use net::{Down, Msg, Network, Up};

/// Wall-clock seconds at the start of every simulation.
const EPOCH_S: Secs = 1_800_000_000;

/// The shape of one simulation.
#[derive(Clone, Debug)]
pub struct Options {
    pub agents: u32,
    pub gpus_per_node: u32,
    pub jobs: u32,
    /// Milliseconds of faults (submissions arrive during them).
    pub fault_ms: u64,
    /// Milliseconds after the faults stop by which every job must have ended.
    pub heal_ms: u64,
    /// Keep a readable trace.
    pub trace: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            agents: 3,
            gpus_per_node: 4,
            jobs: 12,
            fault_ms: 120_000,
            heal_ms: 600_000,
            trace: false,
        }
    }
}

/// What a seed's run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    /// The first invariant broken, if any.
    pub failure: Option<String>,
    /// Jobs accepted, and how many succeeded.
    pub accepted: usize,
    pub succeeded: usize,
    /// Accepted jobs the server had forgotten by the end (their records in the store).
    pub forgotten: usize,
    /// Faults injected: server crashes, agent crashes, partitions.
    pub server_crashes: u32,
    pub agent_crashes: u32,
    pub partitions: u32,
    pub trace: Vec<String>,
}

impl Outcome {
    /// A seed's outcome before it has run.
    fn new(seed: u64) -> Outcome {
        Outcome {
            seed,
            failure: None,
            accepted: 0,
            succeeded: 0,
            forgotten: 0,
            server_crashes: 0,
            agent_crashes: 0,
            partitions: 0,
            trace: Vec::new(),
        }
    }
}

/// The step of simulated time.
const STEP_MS: u64 = 100;

struct World {
    opts: Options,
    rng: Rng,
    clock: Arc<ManualClock>,
    /// `None` while crashed; its store survives in `store`.
    server: Option<Inner>,
    store: Option<Box<dyn Store>>,
    server_back_at: u64,
    next_tick: u64,
    agents: Vec<SimAgent>,
    net: Network,
    /// Accepted jobs: (duration ms, exit code, tasks) as submitted.
    accepted: BTreeMap<u64, (u64, i32, u32)>,
    /// How each ended job ended, as first seen.
    ended: BTreeMap<u64, &'static str>,
    /// Forgotten jobs whose durable record was read and checked: a durable record stays, so
    /// it is not read again while the job is not in memory.
    recorded: std::collections::BTreeSet<u64>,
    /// Real exits on the agents: (job, attempt, task) -> code.
    ledger: BTreeMap<(u64, u32, u32), i32>,
    /// Every (job, task, attempt) some agent started.
    runs: std::collections::BTreeSet<(u64, u32, u32)>,
    /// Accepted jobs submitted fenced.
    fenced: std::collections::BTreeSet<u64>,
    submitted: u32,
    out: Outcome,
}

impl World {
    fn now(&self) -> u64 {
        self.clock.mono_ms()
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = format!("{:>8.1}s {}", self.now() as f64 / 1000.0, what());
            self.out.trace.push(line);
        }
    }

    fn fail(&mut self, what: String) {
        if self.out.failure.is_none() {
            let at = format!("at {:.1}s: {what}", self.now() as f64 / 1000.0);
            self.log(|| format!("INVARIANT BROKEN: {what}"));
            self.out.failure = Some(at);
        }
    }

    fn config() -> ServerConfig {
        ServerConfig {
            node_timeout_s: 30,
            // Snapshots often, so restarts load them.
            snapshot_every: 50,
            // Ended jobs forgotten early and often, so that crashes fall between a job's
            // end, its forgetting and its record being written.
            retain_ended_s: 60,
            retain_ended_max: 3,
            log_refusals: false,
            ..ServerConfig::default()
        }
    }

    fn open_server(&mut self, faults: bool) {
        // A reboot: NTP may step the wall clock by up to a minute either way.
        if faults && self.rng.chance(0.3) {
            let step = self.rng.below(121) as i64 - 60;
            self.clock.step_wall_s(step);
            self.log(|| format!("server: wall clock stepped {step:+} s"));
        }
        let store = self.store.take().expect("the store outlives the server");
        match Inner::open(store, Self::config(), self.clock.clone()) {
            Ok(inner) => self.server = Some(inner),
            Err(e) => self.fail(format!("the server cannot restart: {e:?}")),
        }
    }

    fn crash_server(&mut self) {
        if let Some(inner) = self.server.take() {
            // What was queued and not yet written is lost with the process: no answer or
            // command that depends on it has gone out.
            let lost = inner.journal.queued() - inner.journal.durable();
            let journal = std::sync::Arc::try_unwrap(inner.journal)
                .unwrap_or_else(|_| panic!("the simulated server alone holds its journal"));
            self.store = Some(journal.into_store());
            self.out.server_crashes += 1;
            self.log(|| format!("server: crashed with {lost} changes not yet written"));
        }
    }

    /// Handles one message from an agent, as the HTTP handlers would.
    fn serve(&mut self, node: usize, token: &str, msg: Up) -> Option<Down> {
        let inner = self.server.as_mut()?;
        let who = inner.principal(&hash_token(token)).ok();
        if matches!(msg, Up::Poll) {
            // The long poll waits until the commands' causes are durable.
            inner.journal.flush_to(inner.journal.queued());
        }
        let down = match msg {
            Up::Register(req) => match who {
                Some(who) => match inner.register(&who, token, &req) {
                    Ok(c) => Down::Registered(c),
                    Err(e) => Down::Refused(format!("{e:?}")),
                },
                None => Down::Unauthorized,
            },
            Up::Heartbeat(hb, sent) => match who {
                Some(Principal::Node(id)) => {
                    let exits: Vec<TaskKey> = hb.exited.iter().map(|e| e.key.clone()).collect();
                    inner.agent_seen(id);
                    match inner.heartbeat(id, hb) {
                        Ok(()) => Down::HeartbeatAck(exits, sent),
                        Err(Refusal::Forbidden(m)) => Down::Refused(m),
                        Err(e) => Down::Refused(format!("{e:?}")),
                    }
                }
                _ => Down::Unauthorized,
            },
            Up::Poll => match who {
                Some(Principal::Node(id)) => {
                    inner.agent_seen(id);
                    Down::Commands(inner.take_commands(id))
                }
                _ => Down::Unauthorized,
            },
        };
        // Every answer waits until what its request changed is durable.
        inner.journal.flush_to(inner.journal.queued());
        if let Down::Refused(m) = &down {
            if !m.contains("registered already") {
                let name = self.agents[node].name.clone();
                self.fail(format!("agent {name} was refused: {m}"));
            }
        }
        Some(down)
    }

    fn submit_one(&mut self) {
        let Some(inner) = self.server.as_mut() else {
            return;
        };
        // Clients submit once the cluster has its nodes (before, a job that fits no node is
        // rightly refused).
        if inner.state.nodes().count() < self.agents.len() {
            return;
        }
        let tasks = if self.rng.chance(0.3) { 2 } else { 1 };
        let gpus = 1 + self.rng.below(2) as u32;
        let duration = 2_000 + self.rng.below(40_000);
        let code = if self.rng.chance(0.1) { 1 } else { 0 };
        let fence = self.rng.chance(0.3);
        let req = SubmitRequest {
            team: "t".into(),
            name: String::new(),
            tasks: Some(tasks),
            gpus: Some(gpus),
            gpu_milli: None,
            gpu_model: None,
            cpu_milli: None,
            mem_mib: None,
            priority: None,
            time_limit_s: None,
            preemptible: Some(true),
            checkpoint_every_s: None,
            env: Default::default(),
            workdir: None,
            command: vec!["sim".into(), duration.to_string(), code.to_string()],
            user: None,
            fence,
            // One job in five waits for the previous one to end in one of three ways: one
            // whose condition can no longer be met must be ended, not left waiting.
            after: match self.accepted.keys().next_back() {
                Some(&prev) if self.rng.chance(0.2) => vec![qm_proto::DependencyView {
                    job: prev,
                    when: [
                        qm_proto::After::Ok,
                        qm_proto::After::Any,
                        qm_proto::After::Failed,
                    ][self.rng.below(3) as usize],
                    array: false,
                }],
                _ => Vec::new(),
            },
            array: None,
            script: None,
        };
        let r = inner.submit(&Principal::Admin, &req).map(|ids| ids[0]);
        inner.journal.flush_to(inner.journal.queued());
        match r {
            Ok(id) => {
                self.accepted.insert(id.0, (duration, code, tasks));
                if fence {
                    self.fenced.insert(id.0);
                }
                self.submitted += 1;
                self.log(|| {
                    format!(
                        "submit: job {} ({tasks}x{gpus} GPU, {duration} ms, exit {code}{})",
                        id.0,
                        if fence { ", fenced" } else { "" }
                    )
                });
            }
            // Waiting for a job that already ended otherwise is rightly refused.
            Err(crate::Refusal::BadRequest(m)) if !req.after.is_empty() && m.contains("never") => {}
            Err(e) => self.fail(format!("a valid submission was refused: {e:?}")),
        }
    }

    fn cancel_one(&mut self) {
        let Some(inner) = self.server.as_mut() else {
            return;
        };
        let live: Vec<u64> = inner.state.live_jobs().map(|j| j.spec.id.0).collect();
        if live.is_empty() {
            return;
        }
        let job = live[self.rng.below(live.len() as u64) as usize];
        let at_s = inner.now_s();
        let r = inner.commit(
            vec![qm_core::Event::Cancel {
                job: JobId(job),
                at_s,
                unmet: None,
            }],
            &[],
        );
        if r.is_ok() {
            inner.kill_run(JobId(job));
            inner.journal.flush_to(inner.journal.queued());
            self.log(|| format!("cancel: job {job}"));
        }
    }

    /// One step of `STEP_MS`: faults, deliveries, agents, the server's loop, the checks.
    fn step(&mut self, faults: bool) {
        let now = self.now();
        if faults {
            self.inject();
        }
        // The server comes back.
        if self.server.is_none() && now >= self.server_back_at {
            self.open_server(faults);
            self.log(|| "server: restarted from its store".into());
        }
        // Deliveries due now.
        for msg in self.net.due(now) {
            match msg {
                Msg::ToServer { node, token, up } => {
                    if let Some(down) = self.serve(node, &token, up) {
                        let delay = self.net.delay(&mut self.rng, faults);
                        let msg = Msg::ToAgent { node, down };
                        self.net.send(msg, now + delay, &mut self.rng, faults);
                    }
                }
                Msg::ToAgent { node, down } => {
                    let local = self.agents[node].local(now);
                    self.agents[node].receive(down, local);
                }
            }
        }
        // Agents act.
        for i in 0..self.agents.len() {
            let local = self.agents[i].local(now);
            let (ups, ended) = self.agents[i].act(local);
            for (job, attempt, task, code) in ended {
                self.ledger.insert((job, attempt, task), code);
            }
            for (token, up) in ups {
                let delay = self.net.delay(&mut self.rng, faults);
                let msg = Msg::ToServer { node: i, token, up };
                self.net.send(msg, now + delay, &mut self.rng, faults);
            }
            if self.opts.trace {
                let name = self.agents[i].name.clone();
                for line in std::mem::take(&mut self.agents[i].log) {
                    self.log(|| format!("agent {name}: {line}"));
                }
            } else {
                self.agents[i].log.clear();
            }
        }
        // The server's loop: node timeouts, then a plan, executed.
        if now >= self.next_tick {
            self.next_tick = now + 500;
            if let Some(inner) = self.server.as_mut() {
                let r = inner.round();
                // The round's writes reach the store with the next answer, or now; a crash
                // before then loses them, and the commands they hold back, together.
                if self.rng.chance(0.5) {
                    inner.journal.flush_to(inner.journal.queued());
                }
                if let Err(e) = r {
                    self.fail(format!("the scheduling round failed: {e:?}"));
                }
            }
        }
        self.check();
    }

    fn inject(&mut self) {
        let now = self.now();
        // Submissions and cancels.
        if self.submitted < self.opts.jobs && self.rng.chance(0.02) {
            self.submit_one();
        }
        if self.rng.chance(0.001) {
            self.cancel_one();
        }
        // The server crashes now and then, for 1-20 s.
        if self.server.is_some() && self.rng.chance(0.002) {
            self.crash_server();
            self.server_back_at = now + 1_000 + self.rng.below(19_000);
            self.log(|| "server: CRASH".into());
        }
        for i in 0..self.agents.len() {
            // An agent crashes (its tasks are orphaned until it restarts) for 1-40 s.
            if self.agents[i].up && self.rng.chance(0.0005) {
                let back = now + 1_000 + self.rng.below(39_000);
                for (job, attempt, task, code) in self.agents[i].crash(now, back) {
                    self.ledger.insert((job, attempt, task), code);
                }
                self.out.agent_crashes += 1;
                let name = self.agents[i].name.clone();
                self.log(|| format!("agent {name}: CRASH until {:.1}s", back as f64 / 1000.0));
            }
            // A node is cut off from the server for 1-60 s.
            if !self.net.cut(i, now) && self.rng.chance(0.0005) {
                let until = now + 1_000 + self.rng.below(59_000);
                self.net.partition(i, until);
                self.out.partitions += 1;
                let name = self.agents[i].name.clone();
                self.log(|| format!("node {name}: cut off until {:.1}s", until as f64 / 1000.0));
            }
        }
    }

    fn check(&mut self) {
        // A task runs once per attempt, on one node.
        for i in 0..self.agents.len() {
            for key in std::mem::take(&mut self.agents[i].started) {
                if !self.runs.insert((key.job, key.task, key.attempt)) {
                    let what = format!(
                        "job {} task {} attempt {} started a second time (on {})",
                        key.job, key.task, key.attempt, self.agents[i].name
                    );
                    self.fail(what);
                    return;
                }
            }
        }
        // A fenced job runs one attempt at a time.
        for &job in &self.fenced {
            let attempts: std::collections::BTreeSet<u32> = self
                .agents
                .iter()
                .flat_map(|a| a.attempts_of(job))
                .collect();
            if attempts.len() > 1 {
                self.fail(format!(
                    "fenced job {job} runs attempts {attempts:?} at once"
                ));
                return;
            }
        }
        // No GPU share given twice, as the agents see it.
        for ag in &self.agents {
            if let Some(why) = ag.overcommitted() {
                let what = format!("node {}: {why}", ag.name);
                self.fail(what);
                return;
            }
        }
        let Some(inner) = self.server.as_ref() else {
            return;
        };
        inner.state.check_invariants();
        // An ending counts as seen only once it is durable: until then a crash may take it
        // back, and no client can have been told (reads wait for what they show).
        let settled = inner.journal.queued() == inner.journal.durable();
        let mut problems = Vec::new();
        let mut newly = Vec::new();
        let mut newly_recorded = Vec::new();
        for (&id, &(_, _, tasks)) in &self.accepted {
            let (end, attempt) = match inner.state.job(JobId(id)) {
                Some(job) => match job.state {
                    JobState::Succeeded { .. } => ("succeeded", job.runs),
                    JobState::Failed { .. } => ("failed", job.runs),
                    JobState::Cancelled { .. } => ("cancelled", job.runs),
                    _ => {
                        if let Some(was) = self.ended.get(&id) {
                            problems.push(format!(
                                "job {id} ended ({was}) and is {} again",
                                job.state.name()
                            ));
                        }
                        continue;
                    }
                },
                // Forgotten: its record is in the store once the forgetting is durable.
                None if !settled || self.recorded.contains(&id) => continue,
                None => match inner.journal.store().ended_job(id) {
                    Ok(Some(rec)) => {
                        let view: qm_proto::JobView =
                            serde_json::from_str(&rec.view).expect("a record reads");
                        let end = match view.state {
                            qm_proto::JobState::Succeeded => "succeeded",
                            qm_proto::JobState::Failed => "failed",
                            qm_proto::JobState::Cancelled => "cancelled",
                            other => {
                                problems.push(format!("job {id} was forgotten {other}"));
                                continue;
                            }
                        };
                        newly_recorded.push(id);
                        (end, view.attempt)
                    }
                    Ok(None) => {
                        problems.push(format!("accepted job {id} is gone, with no record"));
                        continue;
                    }
                    Err(e) => {
                        problems.push(format!("job {id}'s record does not read: {e}"));
                        continue;
                    }
                },
            };
            match self.ended.get(&id) {
                Some(was) if *was != end => {
                    problems.push(format!("job {id} ended {was}, then {end}"));
                }
                Some(_) => {}
                None if !settled => {}
                None => {
                    if end == "succeeded" {
                        for t in 0..tasks {
                            let code = self.ledger.get(&(id, attempt, t));
                            if code != Some(&0) {
                                problems.push(format!(
                                    "job {id} succeeded, but task {t} of its attempt {attempt} exited {code:?} on the agents"
                                ));
                            }
                        }
                    }
                    newly.push((id, end));
                }
            }
        }
        self.recorded.extend(newly_recorded);
        for (id, end) in newly {
            self.ended.insert(id, end);
            self.log(|| format!("job {id}: {end}"));
        }
        if let Some(p) = problems.into_iter().next() {
            self.fail(p);
        }
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: &Options) -> Outcome {
    let store: Box<dyn Store> = Box::new(SqliteStore::memory().expect("an in-memory store"));
    run_on(seed, opts, store)
}

/// Runs one seed on a store of the caller's (empty): a PostgreSQL database, for the same
/// faults on the other backend.
pub fn run_on(seed: u64, opts: &Options, store: Box<dyn Store>) -> Outcome {
    let clock = Arc::new(ManualClock::new(EPOCH_S));
    let mut inner = Inner::open(store, World::config(), clock.clone()).expect("a fresh server");
    let admin = crate::new_token();
    let join = crate::new_token();
    for (token, name, role) in [
        (&admin, "admin", qm_proto::Role::Admin),
        (&join, "agents", qm_proto::Role::Join),
    ] {
        let rec = qm_store::TokenRecord {
            hash: hash_token(token),
            name: name.into(),
            role,
            teams: Vec::new(),
        };
        inner.journal.token(rec.clone());
        inner.tokens.insert(rec.hash.clone(), rec);
    }
    inner
        .commit(
            vec![qm_core::Event::SetTeam(qm_core::TeamSpec::new(
                "t",
                opts.agents * opts.gpus_per_node,
            ))],
            &[],
        )
        .expect("a team");
    inner.journal.flush_to(inner.journal.queued());
    let mut skew = Rng::new(seed ^ 0x5eed_c10c);
    let agents = (0..opts.agents)
        .map(|i| {
            let req = RegisterRequest {
                name: format!("n{i}"),
                gpus: opts.gpus_per_node,
                gpu_model: "SIM".into(),
                gpu_mem_mib: 0,
                cpu_milli: 64_000,
                mem_mib: 256 << 10,
                labels: BTreeMap::new(),
                topology: Vec::new(),
                address: format!("10.0.0.{i}"),
                credential: None,
            };
            let credential = format!("qmn_sim{seed:016x}{i:04}{:020}", 0);
            let mut a = SimAgent::new(req, join.clone(), 900 + 50 * u64::from(i), credential);
            // Up to an hour apart, up to 2 % fast or slow.
            let rate = 0.98 + skew.below(4_001) as f64 / 100_000.0;
            a.skew(skew.below(3_600_000), rate);
            a
        })
        .collect();
    let mut w = World {
        opts: opts.clone(),
        rng: Rng::new(seed),
        clock,
        server: Some(inner),
        store: None,
        server_back_at: 0,
        next_tick: 0,
        agents,
        net: Network::default(),
        accepted: BTreeMap::new(),
        ended: BTreeMap::new(),
        recorded: std::collections::BTreeSet::new(),
        ledger: BTreeMap::new(),
        runs: Default::default(),
        fenced: Default::default(),
        submitted: 0,
        out: Outcome::new(seed),
    };
    let end_faults = opts.fault_ms;
    let end = opts.fault_ms + opts.heal_ms;
    while w.now() < end && w.out.failure.is_none() {
        let faults = w.now() < end_faults;
        if !faults && w.now() < end_faults + STEP_MS {
            // Heal: the server is back, every agent up, the network whole.
            if w.server.is_none() {
                w.server_back_at = w.now();
            }
            let now = w.now();
            for a in &mut w.agents {
                a.heal(now);
            }
            w.net.heal();
            w.log(|| "faults end: everything reachable".into());
        }
        // Every job submitted before the faults end.
        if !faults && w.submitted < w.opts.jobs && w.server.is_some() {
            w.submit_one();
        }
        w.step(faults);
        w.clock.advance_ms(STEP_MS);
    }
    if w.out.failure.is_none() {
        w.liveness();
    }
    w.out.accepted = w.accepted.len();
    w.out.succeeded = w.ended.values().filter(|e| **e == "succeeded").count();
    if let Some(inner) = &w.server {
        w.out.forgotten = w
            .accepted
            .keys()
            .filter(|&&id| inner.state.job(JobId(id)).is_none())
            .count();
    }
    w.out
}

impl World {
    /// After the heal: every accepted job ended, no task left running on any agent.
    fn liveness(&mut self) {
        let Some(inner) = self.server.as_ref() else {
            self.fail("the server is down at the end".into());
            return;
        };
        let open: Vec<String> = self
            .accepted
            .keys()
            .filter_map(|&id| {
                let j = inner.state.job(JobId(id))?;
                (!j.state.is_terminal()).then(|| format!("job {id} {}", j.state.name()))
            })
            .collect();
        if !open.is_empty() {
            self.fail(format!(
                "{} s after the faults stopped, jobs have not ended: {}",
                self.opts.heal_ms / 1000,
                open.join(", ")
            ));
            return;
        }
        let running: Vec<String> = self
            .agents
            .iter()
            .flat_map(|a| {
                a.alive()
                    .into_iter()
                    .map(move |k| format!("{} on {}", k, a.name))
            })
            .collect();
        if !running.is_empty() {
            self.fail(format!(
                "tasks still alive at the end: {}",
                running.join(", ")
            ));
        }
    }
}

/// Runs seeds `from..to` on every core and returns how many ran and the failures (at most
/// `keep`, lowest seeds first).
pub fn sweep(from: u64, to: u64, opts: &Options, keep: usize) -> (usize, Vec<Outcome>) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16) as u64;
    let results: Vec<(usize, Vec<Outcome>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let seeds = (from..to).filter(|seed| seed % threads == t);
                    sweep_seeds(seeds, opts, keep)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a sweep thread"))
            .collect()
    });
    let ran = results.iter().map(|r| r.0).sum();
    let mut failures: Vec<Outcome> = results.into_iter().flat_map(|r| r.1).collect();
    failures.sort_by_key(|o| o.seed);
    failures.truncate(keep);
    (ran, failures)
}

fn sweep_seeds(
    seeds: impl Iterator<Item = u64>,
    opts: &Options,
    keep: usize,
) -> (usize, Vec<Outcome>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in seeds {
        let o = std::panic::catch_unwind(|| run(seed, opts)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome {
                failure: Some(format!("panic: {what}")),
                ..Outcome::new(seed)
            }
        });
        ran += 1;
        if o.failure.is_some() && failures.len() < keep {
            failures.push(o);
        }
    }
    (ran, failures)
}
