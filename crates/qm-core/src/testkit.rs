//! Builders and a small driver that make a scheduling scenario a few lines.
//!
//! ```
//! use qm_core::testkit::{ClusterBuilder, Harness, JobBuilder};
//!
//! let state = ClusterBuilder::new().racks(1, 2, 8).team("a", 8).team("b", 8).build();
//! let mut h = Harness::new(state);
//! let job = h.submit(JobBuilder::new("a").gpus(8));
//! h.step();
//! assert!(h.is_running(job));
//! ```
//!
//! [`Harness`] is the smallest possible shell around the core: it applies a plan's starts and
//! stops as events, and advances a virtual clock to the next job end or stop deadline.

use std::collections::BTreeMap;

use crate::model::{
    GpuAsk, IdlePolicy, JobId, JobSpec, NodeId, NodeSpec, PolicyKind, Quota, SchedulerConfig, Secs,
    TeamSpec, ANY_MODEL,
};
use crate::plan::{plan, Plan};
use crate::state::{apply, ClusterState, Event, JobState};

/// Builds a cluster state: nodes, teams and configuration.
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    config: SchedulerConfig,
    nodes: Vec<NodeSpec>,
    teams: Vec<TeamSpec>,
}

impl ClusterBuilder {
    pub fn new() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    pub fn policy(mut self, policy: PolicyKind) -> Self {
        self.config.policy = policy;
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut SchedulerConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// `racks` racks of `per_rack` nodes with `gpus` H100s each, in one pod.
    pub fn racks(mut self, racks: u32, per_rack: u32, gpus: u32) -> Self {
        for r in 0..racks {
            for _ in 0..per_rack {
                let node = NodeBuilder::new(gpus).topology(&["pod-0", &format!("rack-{r}")]);
                self = self.node(node);
            }
        }
        self
    }

    pub fn node(mut self, node: NodeBuilder) -> Self {
        let id = NodeId(self.nodes.len() as u32);
        let mut spec = node.spec;
        spec.id = id;
        if spec.name.is_empty() {
            spec.name = format!("node-{:04}", id.0);
        }
        self.nodes.push(spec);
        self
    }

    /// A top-level team guaranteed `guaranteed` GPUs of any model.
    pub fn team(self, name: &str, guaranteed: u32) -> Self {
        self.team_spec(TeamSpec::new(name, guaranteed))
    }

    pub fn team_spec(mut self, spec: TeamSpec) -> Self {
        self.teams.push(spec);
        self
    }

    /// The state; panics if a node or team is refused (a broken test setup).
    pub fn build(self) -> ClusterState {
        let mut state = ClusterState::new(self.config);
        for node in self.nodes {
            apply(&mut state, Event::NodeUp(node)).expect("node refused");
        }
        // Parents before children.
        let mut teams = self.teams;
        let mut guard = 0;
        while !teams.is_empty() {
            guard += 1;
            assert!(guard < 1000, "team tree does not resolve");
            let spec = teams.remove(0);
            let parent_known = spec.parent.as_ref().is_none_or(|p| state.team(p).is_some());
            if parent_known {
                apply(&mut state, Event::SetTeam(spec)).expect("team refused");
            } else {
                teams.push(spec);
            }
        }
        state
    }
}

/// Builds one team with quotas.
#[derive(Clone, Debug)]
pub struct TeamBuilder {
    spec: TeamSpec,
}

impl TeamBuilder {
    pub fn new(name: &str) -> TeamBuilder {
        TeamBuilder {
            spec: TeamSpec {
                name: name.to_string(),
                parent: None,
                quotas: BTreeMap::new(),
                weight: 1,
                idle_policy: IdlePolicy::default(),
                priorities: [0, 0],
                max_cpu_milli: None,
                partitions: Vec::new(),
            },
        }
    }

    pub fn parent(mut self, parent: &str) -> Self {
        self.spec.parent = Some(parent.to_string());
        self
    }

    pub fn guaranteed(self, gpus: u32) -> Self {
        self.quota(ANY_MODEL, gpus, None)
    }

    pub fn max(mut self, gpus: u32) -> Self {
        self.spec
            .quotas
            .entry(ANY_MODEL.to_string())
            .or_default()
            .max = Some(gpus);
        self
    }

    pub fn quota(mut self, model: &str, guaranteed: u32, max: Option<u32>) -> Self {
        self.spec
            .quotas
            .insert(model.to_string(), Quota { guaranteed, max });
        self
    }

    /// Caps the CPU the team's running jobs may hold, in whole CPUs.
    pub fn max_cpu(mut self, cpus: u64) -> Self {
        self.spec.max_cpu_milli = Some(cpus * 1000);
        self
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.spec.weight = weight;
        self
    }

    pub fn idle_policy(mut self, policy: IdlePolicy) -> Self {
        self.spec.idle_policy = policy;
        self
    }

    pub fn build(self) -> TeamSpec {
        self.spec
    }
}

/// Builds one node.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    spec: NodeSpec,
}

impl NodeBuilder {
    pub fn new(gpus: u32) -> NodeBuilder {
        NodeBuilder {
            spec: NodeSpec {
                id: NodeId(0),
                name: String::new(),
                gpus,
                gpu_model: "H100".to_string(),
                gpu_mem_mib: 81_920,
                cpu_milli: 16_000 * u64::from(gpus),
                mem_mib: 128 * 1024 * u64::from(gpus),
                labels: BTreeMap::new(),
                topology: Vec::new(),
            },
        }
    }

    pub fn model(mut self, model: &str) -> Self {
        self.spec.gpu_model = model.to_string();
        self
    }

    pub fn cpu_milli(mut self, cpu: u64) -> Self {
        self.spec.cpu_milli = cpu;
        self
    }

    pub fn mem_mib(mut self, mem: u64) -> Self {
        self.spec.mem_mib = mem;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.spec.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn topology(mut self, path: &[&str]) -> Self {
        self.spec.topology = path.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Builds one job. Defaults: one task of one whole GPU, preemptible, one-hour time limit.
#[derive(Clone, Debug)]
pub struct JobBuilder {
    spec: JobSpec,
    duration_s: Option<Secs>,
    submit_set: bool,
}

impl JobBuilder {
    pub fn new(team: &str) -> JobBuilder {
        JobBuilder {
            spec: JobSpec {
                id: JobId(0),
                name: String::new(),
                team: team.to_string(),
                user: "user".to_string(),
                priority: 0,
                tasks: 1,
                gpu: GpuAsk::Whole(1),
                cpu_milli: 1000,
                mem_mib: 1024,
                gpu_model: None,
                node_selector: BTreeMap::new(),
                time_limit_s: Some(3600),
                runtime_estimate_s: None,
                preemptible: true,
                grace_s: 0,
                min_run_s: 0,
                checkpoint_every_s: None,
                depends_on: Vec::new(),
                array: None,
                submit_s: 0,
            },
            duration_s: None,
            submit_set: false,
        }
    }

    pub fn gpus(mut self, n: u32) -> Self {
        self.spec.gpu = GpuAsk::Whole(n);
        self
    }

    pub fn milli(mut self, m: u32) -> Self {
        self.spec.gpu = GpuAsk::Milli(m);
        self
    }

    pub fn tasks(mut self, n: u32) -> Self {
        self.spec.tasks = n;
        self
    }

    pub fn cpu_milli(mut self, cpu: u64) -> Self {
        self.spec.cpu_milli = cpu;
        self
    }

    pub fn mem_mib(mut self, mem: u64) -> Self {
        self.spec.mem_mib = mem;
        self
    }

    pub fn model(mut self, model: &str) -> Self {
        self.spec.gpu_model = Some(model.to_string());
        self
    }

    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.spec
            .node_selector
            .insert(key.to_string(), value.to_string());
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.spec.priority = p;
        self
    }

    pub fn limit(mut self, s: Secs) -> Self {
        self.spec.time_limit_s = Some(s);
        self
    }

    pub fn no_limit(mut self) -> Self {
        self.spec.time_limit_s = None;
        self
    }

    pub fn estimate(mut self, s: Secs) -> Self {
        self.spec.runtime_estimate_s = Some(s);
        self
    }

    /// How long the job really runs in a [`Harness`]; defaults to its time limit.
    pub fn runs_for(mut self, s: Secs) -> Self {
        self.duration_s = Some(s);
        self
    }

    pub fn not_preemptible(mut self) -> Self {
        self.spec.preemptible = false;
        self
    }

    pub fn grace(mut self, s: Secs) -> Self {
        self.spec.grace_s = s;
        self
    }

    pub fn min_run(mut self, s: Secs) -> Self {
        self.spec.min_run_s = s;
        self
    }

    pub fn checkpoint_every(mut self, s: Secs) -> Self {
        self.spec.checkpoint_every_s = Some(s);
        self
    }

    pub fn after(mut self, job: JobId) -> Self {
        self.spec.depends_on.push(crate::model::Dependency::ok(job));
        self
    }

    /// Starts only once `job` has ended as `when` asks.
    pub fn after_if(mut self, job: JobId, when: crate::model::After) -> Self {
        self.spec
            .depends_on
            .push(crate::model::Dependency { job, when });
        self
    }

    /// Element `index` of array `array`, which runs at most `max_running` at once.
    pub fn array(mut self, array: JobId, index: u32, max_running: Option<u32>) -> Self {
        self.spec.array = Some(crate::model::ArrayMember {
            array,
            index,
            max_running,
        });
        self
    }

    pub fn id(mut self, id: u64) -> Self {
        self.spec.id = JobId(id);
        self
    }

    /// Submission time; a [`Harness`] otherwise submits at its current time.
    pub fn submit_at(mut self, s: Secs) -> Self {
        self.spec.submit_s = s;
        self.submit_set = true;
        self
    }

    pub fn spec(self) -> JobSpec {
        self.spec
    }
}

/// A minimal shell: applies plans and moves a virtual clock. Panics when the core refuses
/// one of its own plan's events, which is a planner bug.
#[derive(Clone, Debug)]
pub struct Harness {
    pub state: ClusterState,
    pub now: Secs,
    next_id: u64,
    durations: BTreeMap<JobId, Secs>,
    /// Every plan it executed, oldest first.
    pub plans: Vec<Plan>,
    /// When each job last started.
    pub started: BTreeMap<JobId, Secs>,
}

impl Harness {
    pub fn new(state: ClusterState) -> Harness {
        let next_id = state.jobs().map(|j| j.spec.id.0 + 1).max().unwrap_or(1);
        Harness {
            state,
            now: 0,
            next_id,
            durations: BTreeMap::new(),
            plans: Vec::new(),
            started: BTreeMap::new(),
        }
    }

    /// Submits at the current time with the next free id (unless the builder set one).
    pub fn submit(&mut self, job: JobBuilder) -> JobId {
        self.try_submit(job).expect("submission refused")
    }

    pub fn try_submit(&mut self, job: JobBuilder) -> Result<JobId, crate::ApplyError> {
        let mut spec = job.spec;
        if spec.id == JobId(0) {
            spec.id = JobId(self.next_id);
        }
        self.next_id = self.next_id.max(spec.id.0 + 1);
        if !job.submit_set {
            spec.submit_s = self.now;
        }
        let id = spec.id;
        let duration = job.duration_s.or(spec.time_limit_s);
        apply(&mut self.state, Event::Submit(spec))?;
        if let Some(d) = duration {
            self.durations.insert(id, d);
        }
        Ok(id)
    }

    /// Plans now and executes the plan's starts and stops. Returns the plan.
    pub fn step(&mut self) -> Plan {
        let plan = plan(&self.state, self.now);
        self.execute(&plan);
        self.plans.push(plan.clone());
        plan
    }

    pub fn execute(&mut self, plan: &Plan) {
        for event in plan.events(self.now) {
            let start = match &event {
                Event::Start { job, .. } => Some(*job),
                _ => None,
            };
            apply(&mut self.state, event).expect("planned event refused");
            if let Some(job) = start {
                self.started.insert(job, self.now);
            }
        }
    }

    /// A utilisation sample of the job's GPUs (percent) now.
    pub fn sample(&mut self, job: JobId, pct: u8) {
        apply(
            &mut self.state,
            Event::Utilisation {
                job,
                pct,
                attempt: None,
                at_s: self.now,
            },
        )
        .expect("sample refused");
    }

    /// Every stopping job whose grace period has passed exits now.
    pub fn reap(&mut self) {
        let due: Vec<JobId> = self
            .state
            .live_jobs()
            .filter(|j| matches!(&j.state, JobState::Stopping(_, s) if s.deadline_s <= self.now))
            .map(|j| j.spec.id)
            .collect();
        for job in due {
            self.exit(job, false);
        }
    }

    pub fn exit(&mut self, job: JobId, success: bool) {
        apply(
            &mut self.state,
            Event::Exited {
                job,
                success,
                attempt: None,
                at_s: self.now,
            },
        )
        .expect("exit refused");
    }

    /// Plans, reaps and plans again until nothing changes at the current time.
    pub fn settle(&mut self) -> Plan {
        let mut plan = self.step();
        for _ in 0..16 {
            self.reap();
            let next = self.step();
            let quiet = next.starts.is_empty() && next.stops.is_empty();
            plan = next;
            if quiet {
                break;
            }
        }
        plan
    }

    /// Runs the virtual clock until `until_s`: jobs end after their durations, stopped jobs
    /// exit at their deadline, and the planner runs after every change.
    pub fn run_until(&mut self, until_s: Secs) {
        self.settle();
        for _ in 0..1_000_000 {
            let next = self.next_event();
            match next {
                Some(t) if t <= until_s => {
                    self.now = t;
                    self.finish_due();
                    self.reap();
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until_s);
    }

    fn next_event(&self) -> Option<Secs> {
        self.state
            .live_jobs()
            .filter_map(|j| match &j.state {
                JobState::Running(run) => self.durations.get(&j.spec.id).map(|d| run.started_s + d),
                JobState::Stopping(_, s) => Some(s.deadline_s),
                _ => None,
            })
            .min()
    }

    fn finish_due(&mut self) {
        let due: Vec<JobId> = self
            .state
            .live_jobs()
            .filter(|j| match &j.state {
                JobState::Running(run) => self
                    .durations
                    .get(&j.spec.id)
                    .is_some_and(|d| run.started_s + d <= self.now),
                _ => false,
            })
            .map(|j| j.spec.id)
            .collect();
        for job in due {
            self.exit(job, true);
        }
    }

    pub fn state_of(&self, job: JobId) -> &JobState {
        &self.state.job(job).expect("known job").state
    }

    pub fn is_running(&self, job: JobId) -> bool {
        matches!(self.state_of(job), JobState::Running(_))
    }

    pub fn is_pending(&self, job: JobId) -> bool {
        matches!(self.state_of(job), JobState::Pending)
    }

    pub fn started_at(&self, job: JobId) -> Option<Secs> {
        self.state_of(job).run().map(|r| r.started_s)
    }
}
