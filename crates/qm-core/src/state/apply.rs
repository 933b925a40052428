//! The handlers behind `apply`, one per event: each validates completely before it mutates,
//! so a refused event changes nothing, and every accepted one is followed by the invariant
//! checks of [`super::invariants`] for what it touched.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Admission, ClusterState, Derived, Event, HeldShare, Hold, Job, JobState, Node, Run, Stop,
    StopCause, TaskPlacement, Team,
};
use crate::error::ApplyError;
use crate::model::{JobId, JobSpec, NodeId, NodeSpec, NodeState, Secs, TeamSpec};
use crate::teams;

impl ClusterState {
    /// The ended jobs `Forget { before_s, jobs }` drops: those that ended before `before_s`
    /// and those of `jobs` that have ended, except any a live job depends on; in id order.
    pub fn forgettable(&self, before_s: Secs, jobs: &[JobId]) -> Vec<JobId> {
        let needed: BTreeSet<JobId> = self
            .jobs
            .values()
            .flat_map(|j| j.spec.depends_on.iter().map(|d| d.job))
            .collect();
        let mut out: BTreeSet<JobId> = self
            .done
            .iter()
            .filter(|(_, j)| matches!(j.state.ended_s(), Some(at) if at < before_s))
            .map(|(id, _)| *id)
            .collect();
        out.extend(
            jobs.iter()
                .filter(|id| self.done.get(id).is_some_and(|j| j.state.is_terminal())),
        );
        out.retain(|id| !needed.contains(id));
        out.into_iter().collect()
    }

    fn forget_finished(&mut self, before_s: Secs, jobs: &[JobId]) {
        let gone = self.forgettable(before_s, jobs);
        for id in &gone {
            self.done.remove(id);
        }
        self.forgotten_up_to = self.forgotten_up_to.max(gone.last().copied());
    }

    pub(super) fn apply(&mut self, event: Event) -> Result<(), ApplyError> {
        // Every arm validates completely before it mutates. Usage decay runs first (it needs
        // the allocation before the event) and is rolled back if the event is refused.
        let saved_clock = self.clock_s;
        let saved_usage: Vec<(f64, f64)> = self
            .teams
            .values()
            .map(|t| (t.usage_decayed, t.idle_decayed))
            .collect();
        if let Some(at) = event.at_s() {
            self.advance_usage(at);
        }
        let touched = self.touched_by(&event);
        let result = self.apply_checked(event);
        if result.is_ok() {
            self.check_invariants_for(&touched);
        } else {
            self.clock_s = saved_clock;
            for (team, (usage, idle)) in self.teams.values_mut().zip(saved_usage) {
                team.usage_decayed = usage;
                team.idle_decayed = idle;
            }
        }
        result
    }

    fn apply_checked(&mut self, event: Event) -> Result<(), ApplyError> {
        match event {
            Event::NodeUp(spec) => self.node_up(spec),
            Event::NodeState { node, state, at_s } => self.set_node_state(node, state, at_s),
            Event::SetTeam(spec) => self.set_team(spec),
            Event::RemoveTeam { name } => self.remove_team(&name),
            Event::Submit(spec) => self.submit(spec),
            Event::Cancel { job, at_s, unmet } => {
                if let Some(dep) = unmet {
                    self.check_unmet(job, dep)?;
                }
                self.cancel(job, at_s)
            }
            Event::Start {
                job,
                placement,
                admission,
                at_s,
            } => self.start(job, placement, admission, at_s),
            Event::Stop {
                job,
                cause,
                beneficiary,
                borrowing,
                at_s,
            } => self.stop(job, cause, (beneficiary, borrowing), at_s),
            Event::Exited {
                job,
                success,
                attempt,
                at_s,
            } => {
                self.check_attempt(job, attempt)?;
                self.exited(job, success, at_s)
            }
            Event::Requeue { job, attempt, at_s } => {
                self.check_attempt(job, attempt)?;
                self.requeue(job, at_s)
            }
            Event::Utilisation {
                job,
                pct,
                attempt,
                at_s,
            } => {
                self.check_attempt(job, attempt)?;
                self.utilisation(job, pct, at_s)
            }
            Event::Forget { before_s, jobs } => {
                self.forget_finished(before_s, &jobs);
                Ok(())
            }
        }
    }

    /// Brings every team's decayed usage forward to `at` (never backwards).
    fn advance_usage(&mut self, at: Secs) {
        if at <= self.clock_s {
            return;
        }
        let dt = (at - self.clock_s) as f64;
        let lambda = std::f64::consts::LN_2 / self.config.fair_share_half_life_s.max(1) as f64;
        let keep = (-lambda * dt).exp();
        for team in self.teams.values_mut() {
            let added = team.alloc_milli as f64 * (1.0 - keep) / lambda;
            team.usage_decayed = team.usage_decayed * keep + added;
            team.idle_decayed *= keep;
        }
        self.clock_s = at;
    }

    fn node_up(&mut self, spec: NodeSpec) -> Result<(), ApplyError> {
        if spec.gpus == 0 {
            return Err(ApplyError::invalid_node(
                &spec.name,
                "a node needs at least one GPU",
            ));
        }
        if spec.gpus > 64 {
            return Err(ApplyError::invalid_node(
                &spec.name,
                "at most 64 GPUs per node are supported",
            ));
        }
        if spec.gpu_model.is_empty() || spec.gpu_model == crate::model::ANY_MODEL {
            return Err(ApplyError::invalid_node(
                &spec.name,
                "the GPU model must be a name such as \"H100\"",
            ));
        }
        if spec.name.is_empty() {
            return Err(ApplyError::invalid_node(
                &spec.id.to_string(),
                "a node needs a name (its host name)",
            ));
        }
        if spec.cpu_milli == 0 || spec.mem_mib == 0 {
            return Err(ApplyError::invalid_node(
                &spec.name,
                "CPU and memory must be positive (cpu_milli, mem_mib)",
            ));
        }
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.spec.name == spec.name && n.spec.id != spec.id)
        {
            return Err(ApplyError::invalid_node(
                &spec.name,
                &format!(
                    "the name is already registered as {}; re-register with that id",
                    other.spec.id
                ),
            ));
        }
        if let Some(node) = self.nodes.get_mut(&spec.id) {
            let used = node.gpu_used_milli.iter().any(|&m| m > 0)
                || node.cpu_used_milli > 0
                || node.mem_used_mib > 0;
            let shrinks = spec.gpus != node.spec.gpus
                || spec.cpu_milli < node.cpu_used_milli
                || spec.mem_mib < node.mem_used_mib
                || spec.gpu_model != node.spec.gpu_model;
            if used && shrinks {
                return Err(ApplyError::invalid_node(
                    &spec.name,
                    "cannot change GPUs, GPU model or shrink CPU/memory while tasks run there",
                ));
            }
            if !used {
                node.gpu_used_milli = vec![0; spec.gpus as usize];
            }
            node.spec = spec;
            self.node_log.note(node.spec.id);
            self.derived = Derived::default();
            // Coming back clears an outage, not an operator's drain.
            if node.state == NodeState::Down {
                node.state = NodeState::Ready;
            }
            return Ok(());
        }
        let gpus = spec.gpus as usize;
        self.derived = Derived::default();
        self.nodes.insert(
            spec.id,
            Node {
                spec,
                state: NodeState::Ready,
                gpu_used_milli: vec![0; gpus],
                cpu_used_milli: 0,
                mem_used_mib: 0,
            },
        );
        Ok(())
    }

    fn set_node_state(
        &mut self,
        node: NodeId,
        state: NodeState,
        at_s: Secs,
    ) -> Result<(), ApplyError> {
        let Some(n) = self.nodes.get_mut(&node) else {
            return Err(ApplyError::UnknownNode(node));
        };
        n.state = state;
        self.node_log.note(node);
        if state == NodeState::Down {
            // The jobs holding resources there, in id order. A run with every task on nodes
            // that are down goes back to the queue whole at once. One with tasks still on a
            // live node is stopped (`Lost`): those tasks are being killed, and their GPUs stay
            // held until the shell reports them gone, then the job is requeued.
            let victims: Vec<JobId> = self
                .jobs
                .holding_by_node
                .get(&node)
                .map_or_else(Vec::new, |ids| ids.iter().copied().collect());
            for job in victims {
                let j = &self.jobs[&job];
                let run = j.state.run().expect("holding");
                let elsewhere = run.placement.iter().any(|t| {
                    self.nodes
                        .get(&t.node)
                        .is_some_and(|n| n.state != NodeState::Down)
                });
                match (&j.state, elsewhere) {
                    (JobState::Running(_), true) => {
                        self.stop(job, StopCause::Lost, (None, false), at_s)?
                    }
                    (JobState::Stopping(..), true) => {}
                    _ => self.requeue(job, at_s)?,
                }
            }
        }
        Ok(())
    }

    fn set_team(&mut self, spec: TeamSpec) -> Result<(), ApplyError> {
        let mut specs: BTreeMap<String, TeamSpec> = self
            .teams
            .iter()
            .map(|(k, t)| (k.clone(), t.spec.clone()))
            .collect();
        specs.insert(spec.name.clone(), spec.clone());
        teams::validate(&specs)?;
        if let Some(parent) = &spec.parent {
            let parent_has_jobs = self.jobs.values().any(|j| &j.spec.team == parent);
            if parent_has_jobs {
                return Err(ApplyError::InvalidTeam {
                    team: spec.name.clone(),
                    why: format!(
                        "its parent {parent:?} has jobs of its own; only teams without sub-teams run jobs"
                    ),
                });
            }
        }
        self.derived = Derived::default();
        match self.teams.get_mut(&spec.name) {
            Some(team) => team.spec = spec,
            None => {
                let id = self.next_team_id;
                self.next_team_id += 1;
                self.teams.insert(
                    spec.name.clone(),
                    Team {
                        spec,
                        id,
                        alloc_milli: 0,
                        usage_decayed: 0.0,
                        idle_decayed: 0.0,
                        idle_milli_s_total: 0,
                    },
                );
            }
        }
        Ok(())
    }

    fn remove_team(&mut self, name: &str) -> Result<(), ApplyError> {
        if !self.teams.contains_key(name) {
            return Err(ApplyError::UnknownTeam {
                team: name.to_string(),
                known: self.teams.keys().cloned().collect(),
            });
        }
        if let Some(child) = self
            .teams
            .values()
            .find(|t| t.spec.parent.as_deref() == Some(name))
        {
            return Err(ApplyError::InvalidTeam {
                team: name.to_string(),
                why: format!("it still has the sub-team {:?}", child.spec.name),
            });
        }
        if self.jobs.values().any(|j| j.spec.team == name) {
            return Err(ApplyError::InvalidTeam {
                team: name.to_string(),
                why: "it still has pending or running jobs".to_string(),
            });
        }
        self.derived = Derived::default();
        self.teams.remove(name);
        Ok(())
    }

    fn submit(&mut self, spec: JobSpec) -> Result<(), ApplyError> {
        crate::validate::job(self, &spec)?;
        let team_id = self.teams[&spec.team].id;
        self.jobs.enter(Job {
            team_id,
            spec,
            state: JobState::Pending,
            preemptions: 0,
            runs: 0,
            idle_milli_s: 0,
            stopped_idle: false,
            first_start_s: None,
            ran_s: 0,
            gpu_milli_s: 0,
            preempted_others: 0,
        });
        Ok(())
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, ApplyError> {
        self.live_job(id)?;
        Ok(self.jobs.get_mut(&id).expect("live"))
    }

    fn check_attempt(&self, id: JobId, attempt: Option<u32>) -> Result<(), ApplyError> {
        let job = self.live_job(id)?;
        let current = job.state.run().map(|r| r.attempt);
        match attempt {
            Some(a) if current != Some(a) => Err(ApplyError::StaleRun {
                job: id,
                attempt: a,
                current,
            }),
            _ => Ok(()),
        }
    }

    /// A cancel for an unmet dependency must name a dependency of a pending job that ended
    /// so that the job can never start.
    fn check_unmet(&self, id: JobId, dep: JobId) -> Result<(), ApplyError> {
        let job = self.live_job(id)?;
        if job.state != JobState::Pending {
            return Err(self.wrong_state(id, "pending"));
        }
        match crate::plan::dependency_block(self, &job.spec) {
            Some(crate::plan::Reason::DependencyFailed { on, .. }) if on == dep => Ok(()),
            _ => Err(ApplyError::Invalid(format!(
                "{id} is cancelled for its dependency on {dep}, but that dependency can still be met"
            ))),
        }
    }

    fn cancel(&mut self, id: JobId, at_s: Secs) -> Result<(), ApplyError> {
        let job = self.job_mut(id)?;
        match &job.state {
            JobState::Pending => {
                job.state = JobState::Cancelled { at_s };
                self.retire(id);
                Ok(())
            }
            JobState::Running(_) => self.stop(id, StopCause::Cancel, (None, false), at_s),
            JobState::Stopping(run, stop) => {
                // Already stopping: it ends cancelled instead of being requeued. A job stopped
                // for its time limit still ends failed (timed out).
                if stop.cause.requeues() {
                    let (run, mut stop) = (run.clone(), stop.clone());
                    stop.cause = StopCause::Cancel;
                    job.state = JobState::Stopping(run, stop);
                    self.jobs.renote(id);
                }
                Ok(())
            }
            _ => Err(self.wrong_state(id, "pending, running or stopping")),
        }
    }

    fn start(
        &mut self,
        id: JobId,
        placement: Vec<TaskPlacement>,
        admission: Admission,
        at_s: Secs,
    ) -> Result<(), ApplyError> {
        let job = self.live_job(id)?;
        if job.state != JobState::Pending {
            return Err(self.wrong_state(id, "pending"));
        }
        crate::validate::placement(self, &job.spec, &placement)?;
        if let Some(reason) = crate::plan::dependency_block(self, &job.spec) {
            return Err(ApplyError::Invalid(format!("{id} may not start: {reason}")));
        }
        if let Some(a) = job.spec.array {
            if let Some(max) = a
                .max_running
                .filter(|&m| self.array_holding(a.array) >= m as usize)
            {
                return Err(ApplyError::Invalid(format!(
                    "{id} may not start: {max} jobs of array {} run already, the most it allows",
                    a.array.0
                )));
            }
        }
        let milli = job.spec.milli_total();
        let (cpu, mem) = (job.spec.cpu_milli, job.spec.mem_mib);
        let team = job.spec.team.clone();
        self.take(&placement, cpu, mem);
        if let Some(t) = self.teams.get_mut(&team) {
            t.alloc_milli += milli;
        }
        self.holds.remove(&id);
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.runs += 1;
        job.stopped_idle = false;
        job.first_start_s.get_or_insert(at_s);
        job.state = JobState::Running(Run {
            attempt: job.runs,
            placement,
            started_s: at_s,
            admission,
            idle_since_s: None,
            last_sample_s: None,
            last_util_pct: None,
        });
        self.jobs.hold(id);
        Ok(())
    }

    fn take(&mut self, placement: &[TaskPlacement], cpu: u64, mem: u64) {
        for task in placement {
            let node = self.nodes.get_mut(&task.node).expect("validated");
            for &g in &task.gpus {
                node.gpu_used_milli[g as usize] += task.gpu_milli;
            }
            node.cpu_used_milli += cpu;
            node.mem_used_mib += mem;
            self.node_log.note(task.node);
        }
    }

    fn give_back(&mut self, placement: &[TaskPlacement], cpu: u64, mem: u64) {
        for task in placement {
            // A node may have been re-registered empty; never underflow.
            if let Some(node) = self.nodes.get_mut(&task.node) {
                for &g in &task.gpus {
                    if let Some(used) = node.gpu_used_milli.get_mut(g as usize) {
                        *used = used.saturating_sub(task.gpu_milli);
                    }
                }
                node.cpu_used_milli = node.cpu_used_milli.saturating_sub(cpu);
                node.mem_used_mib = node.mem_used_mib.saturating_sub(mem);
                self.node_log.note(task.node);
            }
        }
    }

    /// Frees a job's resources and takes it off its team's allocation.
    fn release(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        let Some(run) = job.state.run() else { return };
        let placement = run.placement.clone();
        let (cpu, mem, milli) = (job.spec.cpu_milli, job.spec.mem_mib, job.spec.milli_total());
        let team = job.spec.team.clone();
        self.jobs.unhold(id);
        self.give_back(&placement, cpu, mem);
        if let Some(t) = self.teams.get_mut(&team) {
            t.alloc_milli = t.alloc_milli.saturating_sub(milli);
        }
    }

    fn stop(
        &mut self,
        id: JobId,
        cause: StopCause,
        (beneficiary, borrowing): (Option<JobId>, bool),
        at_s: Secs,
    ) -> Result<(), ApplyError> {
        self.live_job(id)?;
        let job = &self.jobs[&id];
        let JobState::Running(run) = &job.state else {
            return Err(self.wrong_state(id, "running"));
        };
        if matches!(cause, StopCause::Reclaim | StopCause::Priority) && !job.spec.preemptible {
            return Err(ApplyError::NotPreemptible(id));
        }
        if cause == StopCause::Idle && run.idle_since_s.is_none() {
            return Err(ApplyError::Invalid(format!(
                "{id} cannot be stopped as idle: its last utilisation sample is at or above the idle threshold"
            )));
        }
        if let Some(b) = beneficiary {
            let ok = self
                .jobs
                .get(&b)
                .is_some_and(|j| j.state == JobState::Pending);
            if !ok {
                return Err(ApplyError::BadBeneficiary {
                    victim: id,
                    beneficiary: b,
                });
            }
        }
        if cause == StopCause::Priority {
            // Priority orders a team's own jobs: it never reaches into another team.
            let outranked = beneficiary
                .and_then(|b| self.jobs.get(&b))
                .is_some_and(|b| b.team_id == job.team_id && b.spec.priority > job.spec.priority);
            if !outranked {
                return Err(ApplyError::NotOutranked {
                    victim: id,
                    beneficiary,
                });
            }
        }
        let run = run.clone();
        let grace = job.spec.grace_s;
        let deadline_s = at_s.saturating_add(grace);
        if let Some(b) = beneficiary {
            let slack = self.config.hold_slack_s;
            let fresh = Hold {
                shares: Vec::new(),
                victims: BTreeSet::new(),
                until_s: 0,
                borrowing,
            };
            let hold = self.holds.entry(b).or_insert_with(|| fresh.clone());
            if hold.until_s < at_s {
                // A lapsed hold holds nothing any more: start over.
                *hold = fresh;
            }
            hold.victims.insert(id);
            // Inside the guarantee if any of its stops says so.
            hold.borrowing &= borrowing;
            hold.until_s = hold.until_s.max(deadline_s.saturating_add(slack));
            hold.shares.extend(run.placement.iter().map(|t| HeldShare {
                victim: id,
                task: t.clone(),
                cpu_milli: job.spec.cpu_milli,
                mem_mib: job.spec.mem_mib,
            }));
        }
        if let Some(b) = beneficiary.and_then(|b| self.jobs.get_mut(&b)) {
            b.preempted_others += 1;
        }
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.state = JobState::Stopping(
            run,
            Stop {
                cause,
                asked_s: at_s,
                deadline_s,
                beneficiary,
            },
        );
        self.jobs.renote(id);
        Ok(())
    }

    fn exited(&mut self, id: JobId, success: bool, at_s: Secs) -> Result<(), ApplyError> {
        let job = self.live_job(id)?;
        let next = match &job.state {
            JobState::Running(_) if success => JobState::Succeeded { at_s },
            JobState::Running(_) => JobState::Failed {
                at_s,
                timed_out: false,
            },
            JobState::Stopping(_, stop) => match stop.cause {
                c if c.requeues() => JobState::Pending,
                StopCause::TimeLimit => JobState::Failed {
                    at_s,
                    timed_out: true,
                },
                _ => JobState::Cancelled { at_s },
            },
            _ => return Err(self.wrong_state(id, "running or stopping")),
        };
        self.end_run(id, next);
        Ok(())
    }

    fn requeue(&mut self, id: JobId, at_s: Secs) -> Result<(), ApplyError> {
        let job = self.live_job(id)?;
        if job.state.run().is_none() {
            return Err(self.wrong_state(id, "running or stopping"));
        }
        // A job already on its way out ends as its stop said; anything else is requeued.
        let next = match &job.state {
            JobState::Stopping(_, s) if s.cause == StopCause::Cancel => {
                JobState::Cancelled { at_s }
            }
            JobState::Stopping(_, s) if s.cause == StopCause::TimeLimit => JobState::Failed {
                at_s,
                timed_out: true,
            },
            _ => JobState::Pending,
        };
        self.end_run(id, next);
        Ok(())
    }

    /// Ends a live job's run: its resources go back, and it is pending again (a
    /// preemption more) or, in any other state, retired among the ended jobs.
    fn end_run(&mut self, id: JobId, next: JobState) {
        let requeued = next == JobState::Pending;
        self.release(id);
        let now = self.clock_s;
        let job = self.jobs.get_mut(&id).expect("a live job");
        if let Some(run) = job.state.run() {
            let held = now.saturating_sub(run.started_s);
            job.ran_s += held;
            job.gpu_milli_s += held * job.spec.milli_total();
        }
        let idle = matches!(&job.state, JobState::Stopping(_, s) if s.cause == StopCause::Idle);
        job.state = next;
        if requeued {
            job.preemptions += 1;
            job.stopped_idle = idle;
        } else {
            self.retire(id);
        }
    }

    fn utilisation(&mut self, id: JobId, pct: u8, at_s: Secs) -> Result<(), ApplyError> {
        if pct > 100 {
            return Err(ApplyError::Invalid(format!(
                "utilisation of {id} is {pct}%; it must be 0..=100"
            )));
        }
        let threshold = self.config.idle_threshold_pct;
        if self.done.contains_key(&id) {
            // Late samples from a job that already ended are harmless: ignore them.
            return Ok(());
        }
        let job = self.jobs.get_mut(&id).ok_or(ApplyError::UnknownJob(id))?;
        let milli = job.spec.milli_total();
        if milli == 0 {
            // A job without GPUs holds none idle: its samples change nothing.
            return Ok(());
        }
        let team = job.spec.team.clone();
        let run = match &mut job.state {
            JobState::Running(run) | JobState::Stopping(run, _) => run,
            _ => {
                // Late samples from a job that already stopped are harmless: ignore them.
                return Ok(());
            }
        };
        // Samples from before this run, or older than the last one, change nothing.
        if at_s < run.started_s || run.last_sample_s.is_some_and(|last| at_s <= last) {
            return Ok(());
        }
        let idle = pct < threshold;
        let mut charged = 0u64;
        if idle {
            if let (Some(prev_at), Some(prev_pct)) = (run.last_sample_s, run.last_util_pct) {
                if prev_pct < threshold {
                    charged = milli.saturating_mul(at_s - prev_at);
                }
            }
            run.idle_since_s.get_or_insert(at_s);
        } else {
            run.idle_since_s = None;
        }
        run.last_sample_s = Some(at_s);
        run.last_util_pct = Some(pct);
        job.idle_milli_s = job.idle_milli_s.saturating_add(charged);
        self.jobs.renote(id);
        if let Some(t) = self.teams.get_mut(&team) {
            t.idle_milli_s_total = t.idle_milli_s_total.saturating_add(charged);
            t.idle_decayed += charged as f64;
        }
        Ok(())
    }
}
