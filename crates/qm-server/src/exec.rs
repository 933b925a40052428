//! Executing plans and reconciling with agents: what the server tells agents to do, and what
//! it makes of what they report.

use std::collections::BTreeMap;
use std::time::Instant;

use qm_core::{decide, Event, IdleAction, JobId, JobState, NodeId, NodeState, StopCause};
use qm_proto::{Command, Heartbeat, JobEventKind, Launch, TaskExit, TaskKey};

use crate::{Inner, Refusal, Sent};

/// How long a launched task may be missing from its agent's heartbeats before it counts as
/// lost (the agent restarted without it).
const LOST_AFTER_MS: u64 = 10_000;

/// The exit code recorded for a task that vanished from its node.
pub const LOST_CODE: i32 = -1;

/// How long an agent lets a fenced job's task run without word from the server: two thirds
/// of the node timeout. The agent counts from when it sent its last answered heartbeat,
/// which is before the server last heard from it, so its kill comes at least a third of the
/// timeout before the server may give the node up and start the job elsewhere.
pub fn fence_after_ms(node_timeout_s: u64) -> u64 {
    node_timeout_s.saturating_mul(1000) * 2 / 3
}

/// Utilisation of a running job becomes an event at least this often (seconds).
const UTIL_EVERY_S: u64 = 30;

/// A run's job, attempt and (task, node) pairs.
type RunTasks = (u64, u32, Vec<(u32, NodeId)>);

/// An idle notice's action in a job's history.
fn idle_action_text(a: IdleAction) -> String {
    match a {
        IdleAction::Warn => "flagged (policy warn: nothing more will happen)".into(),
        IdleAction::Yield { release_at_s: None } => {
            "flagged and yielding: any job that needs these GPUs may preempt it".into()
        }
        IdleAction::Yield {
            release_at_s: Some(t),
        } => format!(
            "flagged and yielding: any job that needs these GPUs may preempt it; released at {t} unless busy again"
        ),
        IdleAction::Released => "released: stopped and requeued".into(),
    }
}

impl Inner {
    /// Marks down the nodes whose agents stopped reporting; the core requeues their jobs.
    pub fn check_timeouts(&mut self) -> Result<(), Refusal> {
        let timeout_ms = self.config.node_timeout_s.saturating_mul(1000);
        let now = self.now_s();
        let mono = self.mono_ms();
        let mut events = Vec::new();
        for rec in self.nodes.values() {
            let node = NodeId(rec.id);
            let Some(n) = self.state.node(node) else {
                continue;
            };
            if n.state == NodeState::Down {
                continue;
            }
            let seen = self
                .agents
                .get(&rec.id)
                .map_or(self.started, |a| a.last_seen);
            if mono.saturating_sub(seen) > timeout_ms {
                events.push(Event::NodeState {
                    node,
                    state: NodeState::Down,
                    at_s: now,
                });
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        // Jobs running there lose every task: the ones on other nodes are killed.
        let down: Vec<NodeId> = events
            .iter()
            .filter_map(|e| match e {
                Event::NodeState { node, .. } => Some(*node),
                _ => None,
            })
            .collect();
        let hit: Vec<RunTasks> = self
            .state
            .live_jobs()
            .filter_map(|j| {
                let run = j.state.run()?;
                run.placement
                    .iter()
                    .any(|t| down.contains(&t.node))
                    .then(|| {
                        (
                            j.spec.id.0,
                            run.attempt,
                            run.placement
                                .iter()
                                .enumerate()
                                .map(|(i, t)| (i as u32, t.node))
                                .collect(),
                        )
                    })
            })
            .collect();
        self.commit(events, &[])?;
        // Runs with tasks on live nodes are now stopping: the tasks on the down nodes count
        // as lost (exited, `LOST_CODE`); the others are killed, and the job is requeued once
        // they have exited. Runs wholly on down nodes were requeued by the core.
        let mut ended = Vec::new();
        for (job, attempt, tasks) in hit {
            let stopping = self
                .state
                .job(JobId(job))
                .and_then(|j| j.state.run())
                .is_some_and(|r| r.attempt == attempt);
            let what = if stopping {
                "a node of the job went down; its other tasks are stopped, then it goes back to the queue"
            } else {
                "a node of the job went down"
            };
            self.note(job, now, JobEventKind::Requeued, what.into());
            for &(task, node) in &tasks {
                let key = TaskKey { job, task, attempt };
                if down.contains(&node) {
                    self.sent.remove(&key);
                    if stopping {
                        self.journal.exit((job, task, attempt), LOST_CODE);
                        self.exits
                            .entry((job, attempt))
                            .or_default()
                            .insert(task, LOST_CODE);
                    }
                } else {
                    self.push(node.0, Command::Kill { key, grace_s: 0 });
                }
            }
            let complete = self
                .exits
                .get(&(job, attempt))
                .is_some_and(|c| c.len() == tasks.len());
            if stopping && complete {
                ended.push(Event::Exited {
                    job: JobId(job),
                    success: false,
                    attempt: Some(attempt),
                    at_s: now,
                });
            }
        }
        for e in ended {
            self.commit(vec![e], &[])?;
        }
        Ok(())
    }

    /// Tells the agents of a job's run to stop its tasks, each within the job's grace.
    pub(crate) fn kill_run(&mut self, id: JobId) {
        let Some(job) = self.state.job(id) else {
            return;
        };
        let Some(run) = job.state.run() else { return };
        let grace_s = job.spec.grace_s;
        let tasks: Vec<(u32, u32, u32)> = run
            .placement
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32, t.node.0, run.attempt))
            .collect();
        for (task, node, attempt) in tasks {
            self.push(
                node,
                Command::Kill {
                    key: TaskKey {
                        job: id.0,
                        task,
                        attempt,
                    },
                    grace_s,
                },
            );
        }
    }

    /// Plans and executes: stops first (SIGTERM now, SIGKILL after the grace period), then
    /// starts (one launch per task). Events are durable before any agent hears of them.
    pub fn schedule(&mut self) -> Result<(), Refusal> {
        let now = self.now_s();
        let t0 = Instant::now();
        let plan = decide(&self.state, now);
        self.metrics.planned(t0.elapsed().as_secs_f64());
        for notice in &plan.idle {
            let attempt = self
                .state
                .job(notice.job)
                .and_then(|j| j.state.run())
                .map_or(0, |r| r.attempt);
            if self.idle_noted.insert((notice.job.0, attempt)) {
                self.note(
                    notice.job.0,
                    now,
                    JobEventKind::Idle,
                    format!(
                        "gpus idle since {}: {}",
                        notice.idle_since_s,
                        idle_action_text(notice.action)
                    ),
                );
            }
        }
        if plan.starts.is_empty() && plan.stops.is_empty() {
            return Ok(());
        }
        let events = plan.events(now);
        self.commit(events, &[])?;
        for stop in &plan.stops {
            let Some(job) = self.state.job(stop.job) else {
                continue;
            };
            let Some(run) = job.state.run() else { continue };
            let grace_s = job.spec.grace_s;
            let attempt = run.attempt;
            let tasks: Vec<(u32, u32)> = run
                .placement
                .iter()
                .enumerate()
                .map(|(i, t)| (i as u32, t.node.0))
                .collect();
            for (task, node) in tasks {
                let key = TaskKey {
                    job: stop.job.0,
                    task,
                    attempt,
                };
                self.push(node, Command::Kill { key, grace_s });
            }
        }
        for stop in &plan.stops {
            let cause = match stop.cause {
                StopCause::Reclaim => qm_proto::PreemptionCause::Reclaim,
                StopCause::Priority => qm_proto::PreemptionCause::Priority,
                StopCause::Idle => qm_proto::PreemptionCause::Idle,
                _ => continue,
            };
            if let Some(job) = self.state.job(stop.job) {
                self.metrics.preempted(job.spec.team.clone(), cause);
            }
        }
        for start in &plan.starts {
            if let Some(job) = self.state.job(start.job) {
                let wait = now.saturating_sub(job.spec.submit_s);
                self.metrics.job_waited(wait);
            }
            self.launch(start.job);
        }
        Ok(())
    }

    /// Sends each task of the job's current run to its node's agent.
    pub(crate) fn launch(&mut self, id: JobId) {
        let Some(job) = self.state.job(id) else {
            return;
        };
        let Some(run) = job.state.run() else { return };
        let payload = self.payloads.get(&id.0).cloned().unwrap_or_default();
        let world = run.placement.len();
        let master = run
            .placement
            .first()
            .map(|t| {
                self.nodes
                    .record(t.node.0)
                    .map_or_else(|| "127.0.0.1".to_string(), |n| n.address.clone())
            })
            .unwrap_or_default();
        let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
        for t in &run.placement {
            *per_node.entry(t.node).or_default() += 1;
        }
        let mut local: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut launches = Vec::new();
        for (i, t) in run.placement.iter().enumerate() {
            let local_rank = local.entry(t.node).or_default();
            let mut env = payload.env.clone();
            let gpus: Vec<String> = t.gpus.iter().map(u32::to_string).collect();
            env.insert("CUDA_VISIBLE_DEVICES".into(), gpus.join(","));
            env.insert("MASTER_ADDR".into(), master.clone());
            env.insert("MASTER_PORT".into(), (20_000 + id.0 % 20_000).to_string());
            env.insert("WORLD_SIZE".into(), world.to_string());
            env.insert("RANK".into(), i.to_string());
            env.insert("LOCAL_RANK".into(), local_rank.to_string());
            env.insert("LOCAL_WORLD_SIZE".into(), per_node[&t.node].to_string());
            env.insert("QM_JOB_ID".into(), id.0.to_string());
            env.insert("QM_NODE".into(), self.node_name(t.node.0));
            env.insert("QM_TASK_INDEX".into(), i.to_string());
            env.insert("QM_ATTEMPT".into(), run.attempt.to_string());
            if t.gpu_milli < 1000 {
                env.insert("QM_GPU_MILLI".into(), t.gpu_milli.to_string());
            }
            if let Some(a) = job.spec.array {
                env.insert("QM_ARRAY_JOB_ID".into(), a.array.0.to_string());
                env.insert("QM_ARRAY_INDEX".into(), a.index.to_string());
            }
            *local_rank += 1;
            let key = TaskKey {
                job: id.0,
                task: i as u32,
                attempt: run.attempt,
            };
            launches.push((
                t.node.0,
                Launch {
                    key,
                    command: payload.command.clone(),
                    env,
                    workdir: payload.workdir.clone(),
                    user: payload.user.clone(),
                    fence_after_ms: payload
                        .fence
                        .then(|| fence_after_ms(self.config.node_timeout_s)),
                    script: payload.script.clone(),
                },
            ));
        }
        // Tasks that already exited are not launched again.
        let exited = self
            .exits
            .get(&(id.0, run.attempt))
            .cloned()
            .unwrap_or_default();
        launches.retain(|(_, l)| !exited.contains_key(&l.key.task));
        for (node, launch) in launches {
            self.sent.insert(
                launch.key.clone(),
                Sent {
                    node,
                    at: self.clock.mono_ms(),
                },
            );
            self.push(node, Command::Launch(launch));
        }
    }

    /// What an agent reports: exits end runs, utilisation feeds idle detection, tasks it
    /// runs that the server does not want are killed, tasks it lost count as failed.
    /// The node the server placed a task on: by the job's current run, else by an earlier
    /// run's record; `None` for a task it never placed.
    pub fn task_node(&self, key: &TaskKey) -> Option<u32> {
        let current = self
            .state
            .job(JobId(key.job))
            .and_then(|j| j.state.run())
            .filter(|r| r.attempt == key.attempt);
        match current {
            Some(r) => r.placement.get(key.task as usize).map(|t| t.node.0),
            None => self
                .placed
                .get(&(key.job, key.attempt))
                .and_then(|n| n.get(key.task as usize))
                .copied(),
        }
    }

    /// Refuses (403, logged, counted) a node's word about a task the server placed on another
    /// node, and, unless `unknown_ok`, about one it never placed anywhere.
    pub fn speaks_for(
        &self,
        node: u32,
        key: &TaskKey,
        what: &'static str,
        unknown_ok: bool,
    ) -> Result<(), Refusal> {
        let owner = self.task_node(key);
        // A run the server knows (current, or recorded) but without this task: never placed.
        let known_run = self.placed.contains_key(&(key.job, key.attempt))
            || self
                .state
                .job(JobId(key.job))
                .and_then(|j| j.state.run())
                .is_some_and(|r| r.attempt == key.attempt);
        if owner == Some(node) || (owner.is_none() && unknown_ok && !known_run) {
            return Ok(());
        }
        let name = self.node_name(node);
        let task = format!(
            "job {} task {} (attempt {})",
            key.job, key.task, key.attempt
        );
        let message = match owner {
            Some(other) => format!(
                "node {name} sent a {what} about {task}, which runs on node {}: a node speaks only for its own tasks",
                self.node_name(other)
            ),
            None => format!(
                "node {name} sent a {what} about {task}, which was never placed on it: a node speaks only for its own tasks"
            ),
        };
        self.refused(&message);
        self.metrics.agent_refused(name, what);
        Err(Refusal::Forbidden(message))
    }

    pub fn heartbeat(&mut self, node: u32, hb: Heartbeat) -> Result<(), Refusal> {
        let now = self.now_s();
        let mono = self.mono_ms();
        // Nothing of a heartbeat counts if any of it speaks for another node's task.
        let keys = hb
            .running
            .iter()
            .chain(hb.exited.iter().map(|e| &e.key))
            .chain(hb.util.iter().map(|u| &u.key));
        for key in keys {
            self.speaks_for(node, key, "heartbeat", true)?;
        }
        if let Some(a) = self.agents.get_mut(&node) {
            a.last_seen = mono;
        }
        let name = self.node_name(node);
        self.metrics.heartbeat(name);
        let mut events = Vec::new();
        // A node that was marked down comes back, once it runs nothing the server does not
        // expect there: tasks of runs that ended while it was away still hold their GPUs
        // (they are killed below), and nothing new may land on those GPUs before they exit.
        let stale = hb.running.iter().any(|k| {
            self.state
                .job(JobId(k.job))
                .and_then(|j| j.state.run())
                .is_none_or(|r| r.attempt != k.attempt)
        });
        if !stale
            && self
                .state
                .node(NodeId(node))
                .is_some_and(|n| n.state == NodeState::Down)
        {
            events.push(Event::NodeState {
                node: NodeId(node),
                state: NodeState::Ready,
                at_s: now,
            });
        }
        // A task of the job's current run (its attempt, and an index within the gang).
        let current = |inner: &Inner, key: &TaskKey| {
            inner
                .state
                .job(JobId(key.job))
                .and_then(|j| j.state.run())
                .is_some_and(|r| {
                    r.attempt == key.attempt && (key.task as usize) < r.placement.len()
                })
        };
        for key in &hb.running {
            // A task of a run that ended, or of one stopping past its deadline (a kill lost
            // on the way): killed, again if need be.
            let overdue = self.state.job(JobId(key.job)).is_some_and(
                |j| matches!(&j.state, JobState::Stopping(_, st) if now > st.deadline_s),
            );
            if !current(self, key) || overdue {
                self.push(
                    node,
                    Command::Kill {
                        key: key.clone(),
                        grace_s: 0,
                    },
                );
            }
        }
        // A task its agent's fence killed is lost, not failed: the job runs again.
        let (fenced, exits): (Vec<TaskExit>, Vec<TaskExit>) =
            hb.exited.iter().cloned().partition(|e| e.fenced);
        let fence_s = fence_after_ms(self.config.node_timeout_s) as f64 / 1000.0;
        // Launched here, received, and neither running nor exited: lost.
        let lost: Vec<(TaskKey, String)> = self
            .sent
            .iter()
            .filter(|(k, s)| {
                s.node == node
                    && mono.saturating_sub(s.at) > LOST_AFTER_MS
                    && !hb.running.contains(k)
            })
            .map(|(k, _)| k.clone())
            .filter(|k| !hb.exited.iter().any(|e| &e.key == k))
            .map(|k| {
                let why = format!("task {} vanished from its node", k.task);
                (k, why)
            })
            .chain(fenced.into_iter().map(|e| {
                let why = format!(
                    "task {} was fenced: its node heard nothing from the server for {fence_s:.1} s and killed it",
                    e.key.task
                );
                (e.key, why)
            }))
            .collect();
        // A lost task (its agent restarted without it) loses the whole run. It counts as
        // exited (`LOST_CODE`, stored like a reported exit). The gang's other tasks are
        // killed, and their GPUs stay held (the job is stopping) until they have exited too:
        // nothing new may land on a GPU a killed task still uses. Then the job goes back to
        // the queue whole (at once when nothing else of the run is left).
        for (key, why) in lost {
            self.sent.remove(&key);
            if !current(self, &key) {
                continue;
            }
            let Some((run, stopping)) = self.state.job(JobId(key.job)).and_then(|j| {
                let run = j.state.run()?.clone();
                Some((run, matches!(j.state, JobState::Stopping(..))))
            }) else {
                continue;
            };
            self.note(key.job, now, JobEventKind::Lost, why);
            self.journal
                .exit((key.job, key.task, key.attempt), LOST_CODE);
            let codes = self.exits.entry((key.job, key.attempt)).or_default();
            codes.insert(key.task, LOST_CODE);
            let codes = codes.clone();
            let job = JobId(key.job);
            let ends = events.iter().any(|e| {
                matches!(e, Event::Requeue { job: j, .. } | Event::Exited { job: j, .. } if *j == job)
            });
            if ends {
                continue;
            }
            if codes.len() == run.placement.len() {
                events.push(if stopping {
                    Event::Exited {
                        job,
                        success: false,
                        attempt: Some(run.attempt),
                        at_s: now,
                    }
                } else {
                    Event::Requeue {
                        job,
                        attempt: Some(run.attempt),
                        at_s: now,
                    }
                });
            } else if !stopping {
                events.push(Event::Stop {
                    job,
                    cause: StopCause::Lost,
                    beneficiary: None,
                    borrowing: false,
                    at_s: now,
                });
                for (i, t) in run.placement.iter().enumerate() {
                    if !codes.contains_key(&(i as u32)) {
                        let k = TaskKey {
                            job: key.job,
                            task: i as u32,
                            attempt: run.attempt,
                        };
                        self.push(t.node.0, Command::Kill { key: k, grace_s: 0 });
                    }
                }
            }
        }
        for exit in &exits {
            self.sent.remove(&exit.key);
            if !current(self, &exit.key) {
                continue;
            }
            let job = JobId(exit.key.job);
            if let Some(why) = &exit.message {
                let node = self.node_name(node);
                self.note(
                    job.0,
                    now,
                    JobEventKind::Failed,
                    format!(
                        "task {} could not start on node {node}: {why}",
                        exit.key.task
                    ),
                );
            }
            // Durable before it counts: a restart must not forget that a task of a gang
            // still running has already exited.
            self.journal
                .exit((exit.key.job, exit.key.task, exit.key.attempt), exit.code);
            let codes = self
                .exits
                .entry((exit.key.job, exit.key.attempt))
                .or_default();
            codes.insert(exit.key.task, exit.code);
            let codes = codes.clone();
            let (run, stopping, grace_s) = {
                let j = self.state.job(job).expect("current");
                (
                    j.state.run().expect("current").clone(),
                    matches!(j.state, JobState::Stopping(..)),
                    j.spec.grace_s,
                )
            };
            if codes.len() == run.placement.len() {
                let success = codes.values().all(|&c| c == 0);
                events.push(Event::Exited {
                    job,
                    success,
                    attempt: Some(run.attempt),
                    at_s: now,
                });
            } else if exit.code != 0 && !stopping {
                // One task of the gang failed: the job fails; stop the others.
                events.push(Event::Stop {
                    job,
                    cause: StopCause::Cancel,
                    beneficiary: None,
                    borrowing: false,
                    at_s: now,
                });
                for (i, t) in run.placement.iter().enumerate() {
                    if !codes.contains_key(&(i as u32)) {
                        let key = TaskKey {
                            job: job.0,
                            task: i as u32,
                            attempt: run.attempt,
                        };
                        self.push(t.node.0, Command::Kill { key, grace_s });
                    }
                }
                self.note(
                    job.0,
                    now,
                    JobEventKind::Failed,
                    format!("task {} exited with code {}", exit.key.task, exit.code),
                );
            }
        }
        // Utilisation: the job's is the highest of its tasks' (reported by every node it runs
        // on). It becomes an event (stored like every other) when it first arrives, when it
        // crosses the idle threshold, and at least every UTIL_EVERY_S otherwise: enough for
        // idle detection, without an event per job per second.
        let threshold = self.state.config.idle_threshold_pct;
        for u in &hb.util {
            if !current(self, &u.key) {
                continue;
            }
            let entry = self.util.entry((u.key.job, u.key.attempt)).or_default();
            entry.tasks.insert(u.key.task, u.pct);
            let pct = entry.tasks.values().copied().max().unwrap_or(0);
            // The core keeps one sample per second: a second one in the same second waits.
            let due = match entry.sent {
                None => true,
                Some((last_pct, at)) => {
                    now > at
                        && ((last_pct < threshold) != (pct < threshold) || now - at >= UTIL_EVERY_S)
                }
            };
            if due {
                entry.sent = Some((pct, now));
                events.push(Event::Utilisation {
                    job: JobId(u.key.job),
                    pct,
                    attempt: Some(u.key.attempt),
                    at_s: now,
                });
            }
        }
        // Forget runs that ended.
        let live = &self.state;
        self.util.retain(|&(job, attempt), _| {
            live.job(JobId(job))
                .and_then(|j| j.state.run())
                .is_some_and(|r| r.attempt == attempt)
        });
        // One end per job in one batch: a run whose every task has exited ends (`Exited`),
        // even if an earlier exit of this batch would only have stopped it (two tasks of a
        // gang failing together); otherwise the first of each.
        let ended: std::collections::BTreeSet<JobId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Exited { job, .. } => Some(*job),
                _ => None,
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        events.retain(|e| match e {
            Event::Stop { job, .. } if ended.contains(job) => false,
            Event::Exited { job, .. } | Event::Stop { job, .. } => seen.insert(job.0),
            _ => true,
        });
        if !events.is_empty() {
            // Apply one at a time so one stale report cannot refuse the rest.
            for e in events {
                match self.commit(vec![e], &[]) {
                    Ok(())
                    | Err(Refusal::BadRequest(_) | Refusal::Conflict(_) | Refusal::NotFound(_)) => {
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qm_core::testkit::JobBuilder;
    use qm_core::{NodeSpec, SchedulerConfig, TeamSpec};
    use qm_proto::TaskUtil;
    use qm_store::SqliteStore;

    use super::*;
    use crate::{Server, ServerConfig};

    fn node(id: u32) -> Event {
        Event::NodeUp(NodeSpec {
            id: NodeId(id),
            name: format!("n{id}"),
            gpus: 1,
            gpu_model: "SIM".into(),
            gpu_mem_mib: 0,
            cpu_milli: 1000,
            mem_mib: 1024,
            labels: Default::default(),
            topology: Vec::new(),
        })
    }

    #[test]
    fn a_gangs_utilisation_is_its_busiest_task_and_is_stored_only_when_it_matters() {
        let server = Server::open(
            Box::new(SqliteStore::memory().unwrap()),
            ServerConfig {
                scheduler: SchedulerConfig::default(),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let mut inner = server.lock();
        let spec = JobBuilder::new("t")
            .id(1)
            .tasks(2)
            .cpu_milli(0)
            .mem_mib(0)
            .no_limit()
            .submit_at(crate::now_s())
            .spec();
        inner
            .commit(
                vec![
                    node(0),
                    node(1),
                    Event::SetTeam(TeamSpec::new("t", 2)),
                    Event::Submit(spec),
                ],
                &[],
            )
            .unwrap();
        inner.schedule().unwrap();
        let run = inner
            .state
            .job(JobId(1))
            .unwrap()
            .state
            .run()
            .unwrap()
            .clone();
        assert_eq!(run.placement.len(), 2);
        let key = |task: u32| TaskKey {
            job: 1,
            task,
            attempt: run.attempt,
        };
        let beat = |inner: &mut Inner, node: u32, task: u32, pct: u8| {
            inner
                .heartbeat(
                    node,
                    Heartbeat {
                        running: vec![key(task)],
                        exited: Vec::new(),
                        util: vec![TaskUtil {
                            key: key(task),
                            pct,
                        }],
                    },
                )
                .unwrap();
        };
        let node_of = |task: usize| run.placement[task].node.0;
        let before = inner.seq;
        beat(&mut inner, node_of(0), 0, 0);
        // The core keeps one sample per second: the clock must move on.
        let next_second = || std::thread::sleep(std::time::Duration::from_millis(1100));
        next_second();
        beat(&mut inner, node_of(1), 1, 90);
        let util = |inner: &Inner| {
            inner
                .state
                .job(JobId(1))
                .unwrap()
                .state
                .run()
                .unwrap()
                .last_util_pct
        };
        assert_eq!(util(&inner), Some(90), "the busiest task counts");
        let after_two = inner.seq;
        assert_eq!(
            after_two - before,
            2,
            "the first sample and a threshold crossing"
        );
        // The idle task reports after the busy one, a second later: the gang is as busy as
        // its busiest task, not as its latest report (which would cross the idle threshold
        // and be stored).
        next_second();
        beat(&mut inner, node_of(0), 0, 0);
        assert_eq!(
            util(&inner),
            Some(90),
            "the busiest task counts, not the latest"
        );
        assert_eq!(inner.seq, after_two, "nothing that matters changed");
        for _ in 0..2 {
            next_second();
            beat(&mut inner, node_of(0), 0, 0);
            beat(&mut inner, node_of(1), 1, 85);
        }
        assert_eq!(
            inner.seq, after_two,
            "no event while nothing that matters changed"
        );
        next_second();
        beat(&mut inner, node_of(1), 1, 1);
        assert_eq!(
            inner.seq,
            after_two + 1,
            "falling below the idle threshold is stored"
        );
        assert_eq!(util(&inner), Some(1));
    }
}
