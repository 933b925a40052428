//! A simulated `qm agent`: it registers (with its saved credential, else the join token),
//! polls for commands, runs each launched task for the time its command says and exits with
//! the code it says, reports running tasks and exits in heartbeats (exits until the server
//! acknowledges them), ignores a launch of a task it runs or has run, and stops a task on a
//! kill. When it crashes its tasks keep running, unsupervised, until it starts again and ends
//! them (as `qm agent` does with its ledger of process groups); its credential, a file,
//! survives. A fenced job's task is killed by its agent once no heartbeat sent within the
//! launch's `fence_after_ms` has been answered, and reported as fenced. Each agent keeps time
//! by its own clock: offset from the others' and running a little fast or slow.

use std::collections::{BTreeMap, BTreeSet};

use qm_proto::{Command, Heartbeat, Launch, RegisterRequest, TaskExit, TaskKey};

use super::net::{Down, Up};

/// A task process as the node sees it.
#[derive(Clone, Debug)]
pub struct Task {
    pub key: TaskKey,
    pub gpus: Vec<u32>,
    pub milli: u32,
    pub ends_at: u64,
    pub code: i32,
    /// A fenced job's task: how long it may go without an answered heartbeat.
    pub fence_after: Option<u64>,
    /// Killed by the fence.
    pub fenced: bool,
}

pub struct SimAgent {
    pub name: String,
    req: RegisterRequest,
    join: String,
    /// The node's credential, chosen by the agent and kept in a file: it survives a crash.
    credential: String,
    /// The server does not know the credential yet: propose it beside the join token.
    with_join: bool,
    pub up: bool,
    back_at: u64,
    registered: bool,
    last_register: Option<u64>,
    tasks: BTreeMap<TaskKey, Task>,
    /// Tasks of an earlier life, still running until this agent starts again.
    orphans: Vec<Task>,
    finished: BTreeSet<TaskKey>,
    exited: Vec<TaskExit>,
    hb_every: u64,
    next_hb: u64,
    next_poll: u64,
    urgent: bool,
    pub log: Vec<String>,
    /// Every task this node started, in order (for the world's check that none runs twice).
    pub started: Vec<TaskKey>,
    /// When the last answered heartbeat (or registration) was sent, by this agent's clock.
    last_ok: Option<u64>,
    /// This agent's clock: milliseconds ahead of the world's, and its rate (1.0 exact).
    offset_ms: u64,
    rate: f64,
}

/// A task that ended on the node: (job, attempt, task, exit code).
pub type Ended = (u64, u32, u32, i32);

impl SimAgent {
    pub fn new(req: RegisterRequest, join: String, hb_every: u64, credential: String) -> SimAgent {
        SimAgent {
            name: req.name.clone(),
            req,
            join,
            credential,
            with_join: false,
            up: true,
            back_at: 0,
            registered: false,
            last_register: None,
            tasks: BTreeMap::new(),
            orphans: Vec::new(),
            finished: BTreeSet::new(),
            exited: Vec::new(),
            hb_every,
            next_hb: 0,
            next_poll: 0,
            urgent: false,
            log: Vec::new(),
            started: Vec::new(),
            last_ok: None,
            offset_ms: 0,
            rate: 1.0,
        }
    }

    /// Sets this agent's clock: `offset_ms` ahead of the world's, running at `rate`.
    pub fn skew(&mut self, offset_ms: u64, rate: f64) {
        self.offset_ms = offset_ms;
        self.rate = rate;
    }

    /// The world's time `now` on this agent's clock: everything the agent times (beats,
    /// polls, task run times, the fence) is by this clock.
    pub fn local(&self, now: u64) -> u64 {
        self.offset_ms + (now as f64 * self.rate) as u64
    }

    fn token(&self) -> String {
        if self.registered || !self.with_join {
            self.credential.clone()
        } else {
            self.join.clone()
        }
    }

    /// What the agent does at `now`: messages to send (token, request) and the tasks that
    /// ended on the node.
    pub fn act(&mut self, now: u64) -> (Vec<(String, Up)>, Vec<Ended>) {
        let mut ended = Vec::new();
        // Orphans end on their own, unreported.
        self.orphans.retain(|t| {
            let done = t.ends_at <= now;
            if done {
                ended.push((t.key.job, t.key.attempt, t.key.task, t.code));
            }
            !done
        });
        if !self.up {
            if now < self.back_at {
                return (Vec::new(), ended);
            }
            // Starting again: end what the last life left running.
            for t in self.orphans.drain(..) {
                ended.push((t.key.job, t.key.attempt, t.key.task, 137));
                self.log.push(format!("ends orphan {}", key_text(&t.key)));
            }
            self.up = true;
            self.registered = false;
            self.last_register = None;
            self.last_ok = None;
            self.log.push("starts again".into());
        }
        // The fence: a fenced job's task without an answered heartbeat for its time is
        // killed now (SIGKILL), whether or not the agent is registered.
        if let Some(ok) = self.last_ok {
            for t in self.tasks.values_mut() {
                if !t.fenced
                    && t.fence_after
                        .is_some_and(|after| now.saturating_sub(ok) > after)
                {
                    t.fenced = true;
                    t.ends_at = now;
                    t.code = 137;
                    self.log.push(format!(
                        "fences {}: no answered heartbeat for {} ms",
                        key_text(&t.key),
                        now - ok
                    ));
                }
            }
        }
        let mut out = Vec::new();
        if !self.registered {
            if self.last_register.is_none_or(|t| now >= t + 2_000) {
                self.last_register = Some(now);
                let req = RegisterRequest {
                    credential: Some(self.credential.clone()),
                    ..self.req.clone()
                };
                out.push((self.token(), Up::Register(req)));
            }
            return (out, ended);
        }
        let done: Vec<TaskKey> = self
            .tasks
            .values()
            .filter(|t| t.ends_at <= now)
            .map(|t| t.key.clone())
            .collect();
        for key in done {
            let t = self.tasks.remove(&key).expect("listed");
            ended.push((key.job, key.attempt, key.task, t.code));
            self.finished.insert(key.clone());
            self.exited.push(TaskExit {
                key,
                code: t.code,
                message: None,
                fenced: t.fenced,
            });
            self.urgent = true;
        }
        if self.urgent || now >= self.next_hb {
            self.urgent = false;
            self.next_hb = now + self.hb_every;
            let hb = Heartbeat {
                running: self.tasks.keys().cloned().collect(),
                exited: self.exited.clone(),
                util: Vec::new(),
            };
            out.push((self.token(), Up::Heartbeat(hb, now)));
        }
        if now >= self.next_poll {
            self.next_poll = now + 500;
            out.push((self.token(), Up::Poll));
        }
        (out, ended)
    }

    /// An answer from the server.
    pub fn receive(&mut self, down: Down, now: u64) {
        if !self.up {
            return;
        }
        match down {
            Down::Registered(c) => {
                self.credential = c;
                self.last_ok = self.last_ok.max(self.last_register);
                self.registered = true;
                self.with_join = false;
                self.log.push("registered".into());
            }
            Down::Refused(m) => self.log.push(format!("refused: {m}")),
            Down::Unauthorized => {
                // The server does not know the credential: register again, proposing it
                // beside the join token.
                self.registered = false;
                self.with_join = true;
                self.last_register = None;
            }
            Down::HeartbeatAck(keys, sent) => {
                self.exited.retain(|e| !keys.contains(&e.key));
                self.last_ok = self.last_ok.max(Some(sent));
            }
            Down::Commands(cmds) => {
                for c in cmds {
                    match c {
                        Command::Launch(l) => self.launch(l, now),
                        Command::Kill { key, grace_s } => {
                            if let Some(t) = self.tasks.get_mut(&key) {
                                // SIGTERM: it exits within its grace (here, at once).
                                let by = now + 100.min(grace_s * 1000);
                                if by < t.ends_at {
                                    t.ends_at = by;
                                    t.code = 143;
                                }
                                self.log.push(format!("kills {}", key_text(&key)));
                            }
                        }
                    }
                }
            }
        }
    }

    fn launch(&mut self, l: Launch, now: u64) {
        if self.tasks.contains_key(&l.key) || self.finished.contains(&l.key) {
            return;
        }
        self.started.push(l.key.clone());
        let duration: u64 = l
            .command
            .get(1)
            .and_then(|d| d.parse().ok())
            .unwrap_or(1_000);
        let code: i32 = l.command.get(2).and_then(|c| c.parse().ok()).unwrap_or(0);
        let gpus = l
            .env
            .get("CUDA_VISIBLE_DEVICES")
            .map(|v| v.split(',').filter_map(|g| g.parse().ok()).collect())
            .unwrap_or_default();
        let milli = l
            .env
            .get("QM_GPU_MILLI")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1000);
        self.log
            .push(format!("launches {} on GPUs {gpus:?}", key_text(&l.key)));
        self.tasks.insert(
            l.key.clone(),
            Task {
                key: l.key,
                gpus,
                milli,
                ends_at: now + duration,
                code,
                fence_after: l.fence_after_ms,
                fenced: false,
            },
        );
    }

    /// Crashes at `now` until `back`: its tasks run on, orphaned, but a fenced job's die with
    /// it (their guard's parent-death signal); what it had not reported is lost. What it
    /// launched is in a file (`qm agent`'s `launched`): a launch sent again is not run a
    /// second time. Returns the tasks that died.
    pub fn crash(&mut self, now: u64, back: u64) -> Vec<Ended> {
        self.up = false;
        self.back_at = self.local(back);
        self.registered = false;
        let mut died = Vec::new();
        for (key, t) in std::mem::take(&mut self.tasks) {
            self.finished.insert(key.clone());
            if t.fence_after.is_some() && t.ends_at > self.local(now) {
                self.log.push(format!("its guard kills {}", key_text(&key)));
                died.push((key.job, key.attempt, key.task, 137));
            } else {
                self.orphans.push(t);
            }
        }
        self.exited.clear();
        died
    }

    /// Faults are over: a crashed agent starts again now.
    pub fn heal(&mut self, now: u64) {
        if !self.up {
            self.back_at = self.local(now);
        }
    }

    /// The attempts of `job` alive on this node, orphans of a crashed life included.
    pub fn attempts_of(&self, job: u64) -> impl Iterator<Item = u32> + '_ {
        self.tasks
            .values()
            .chain(&self.orphans)
            .filter(move |t| t.key.job == job)
            .map(|t| t.key.attempt)
    }

    /// Some GPU of the node given to more than one whole GPU's worth of live tasks.
    pub fn overcommitted(&self) -> Option<String> {
        let mut used: BTreeMap<u32, (u32, Vec<String>)> = BTreeMap::new();
        for t in self.tasks.values().chain(&self.orphans) {
            for &g in &t.gpus {
                let e = used.entry(g).or_default();
                e.0 += t.milli;
                e.1.push(key_text(&t.key));
            }
        }
        used.into_iter()
            .find(|(_, (m, _))| *m > 1000)
            .map(|(g, (m, who))| format!("GPU {g} holds {m} milli-GPUs: {}", who.join(", ")))
    }

    /// The tasks alive on the node, orphans included.
    pub fn alive(&self) -> Vec<String> {
        self.tasks
            .values()
            .chain(&self.orphans)
            .map(|t| key_text(&t.key))
            .collect()
    }
}

pub fn key_text(k: &TaskKey) -> String {
    format!("job {} task {} attempt {}", k.job, k.task, k.attempt)
}
