//! The discrete-event loop: the very `qm-core` planner on a virtual clock.
//!
//! At every instant something happens (a submission, a job's end, a stopped job's SIGKILL
//! deadline), the simulator applies the events, calls `plan(state, now)` and executes the plan
//! exactly as the server does (it calls `decide`, which makes the same decisions as `plan`
//! without explaining every pending job): `Stop` for each stop (the job exits after its grace period),
//! `Start` for each start (the job ends after its recorded duration). A preempted job is
//! requeued by the core and restarts from the beginning when it starts again: the work since
//! its start is lost, and counted.
//!
//! The core breaks every tie by id: between jobs equal in every key (submitted in the same
//! second, say) the lower job id goes first, between equally good nodes the lower node id.
//! A perturbed replay ([`SimOptions::perturb_seed`]) breaks those ties another way, so that
//! the spread of a figure over a few perturbed replays shows how much of it is the
//! particular order of ties: the trace's job ids are dealt to its jobs through a seeded
//! permutation, and equivalent racks trade their blocks of node ids ([`renumber_racks`]).
//! Each [`JobRecord`] keeps the trace's id beside the id the core knew the job by.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use qm_core::{
    apply, decide, ClusterState, Event, GpuAsk, IdlePolicy, JobId, JobSpec, JobState, NodeId,
    NodeSpec, PolicyKind, SchedulerConfig, Secs, StopCause, TeamSpec, MILLI_PER_GPU,
};

use crate::cluster::{ClusterSpec, SpecError};
use crate::idle::{IdleMeter, IdleTotals, RunIdle};
use crate::rng::Rng;
use crate::trace::{default_time_limit, TraceJob};

/// Knobs of a run that the trace does not give.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub policy: PolicyKind,
    /// Between SIGTERM and SIGKILL for every job.
    pub grace_s: Secs,
    /// No job is preempted before it has run this long.
    pub min_run_s: Secs,
    /// A task asking for more whole GPUs than the largest node has becomes a gang of tasks of
    /// the largest node's size, when that divides it (for traces that record only a job's
    /// GPU count, such as Philly and Tiresias).
    pub split_to_nodes: bool,
    /// Blocked jobs that get a reservation in each plan ([`SchedulerConfig::max_reservations`]).
    pub max_reservations: usize,
    /// None: the replay in the trace's order (job ids are the trace's, nodes numbered in
    /// topology order). Some: a perturbed replay, its ties broken as this seed deals them:
    /// `Rng::new(seed)` shuffles the job ids ([`core_ids`]), then renumbers equivalent racks
    /// ([`renumber_racks`]).
    pub perturb_seed: Option<u64>,
    /// What if every job wrote a checkpoint this often (seconds of its run)? A preempted job
    /// then resumes from its last checkpoint instead of from the beginning, and the core
    /// knows it (`JobSpec::checkpoint_every_s`: reclaim counts only the work since the last
    /// checkpoint as lost). None: trace jobs do not checkpoint.
    pub checkpoint_every_s: Option<Secs>,
    /// Every team's idle policy, whatever the teams file says (`qm sim run --idle-policy`).
    pub idle_policy: Option<IdlePolicy>,
    /// How long GPUs stay below the idle threshold before a job counts as idle
    /// ([`SchedulerConfig::idle_window_s`]).
    pub idle_window_s: Secs,
    /// Jobs waiting longer than this go first, by age alone
    /// ([`SchedulerConfig::starvation_wait_s`]; none by default).
    pub starvation_wait_s: Option<Secs>,
    /// The trace's id of a job whose story the replay records ([`SimResult::explained`]):
    /// why it waited at each plan where that changed, when it started, was stopped and
    /// ended (`qm sim run --explain-job`).
    pub explain_job: Option<JobId>,
}

impl SimOptions {
    pub fn new(policy: PolicyKind) -> SimOptions {
        SimOptions {
            policy,
            grace_s: 30,
            min_run_s: 300,
            split_to_nodes: false,
            max_reservations: SchedulerConfig::default().max_reservations,
            perturb_seed: None,
            checkpoint_every_s: None,
            idle_policy: None,
            idle_window_s: SchedulerConfig::default().idle_window_s,
            starvation_wait_s: SchedulerConfig::default().starvation_wait_s,
            explain_job: None,
        }
    }
}

/// One step of a job's story in a replay ([`SimOptions::explain_job`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    pub at_s: Secs,
    pub what: String,
}

/// What happened to one trace job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// The trace's id for the job: the same in every replay of the trace.
    pub id: JobId,
    /// The id the core knew the job by in this replay: [`JobRecord::id`] unless the replay is
    /// perturbed.
    pub core_id: JobId,
    pub team: String,
    pub submit_s: Secs,
    pub duration_s: Secs,
    pub gpu_milli: u64,
    pub first_start_s: Option<Secs>,
    pub end_s: Option<Secs>,
    /// Refused at submission: why.
    pub rejected: Option<String>,
    pub timed_out: bool,
    pub preemptions: u32,
    /// Milli-GPU-seconds of work thrown away by preemptions.
    pub lost_milli_s: u64,
    /// Submitted while what its team held and had pending left room in its guarantee for the
    /// job, and the free GPUs were too few for it: the team's guarantee was lent out.
    pub reclaim_wait: bool,
    /// Ended by a stop while it held its GPUs idle after its work was done ([`crate::idle`]).
    pub ended_idle: bool,
}

/// Everything a run produced, for the report.
#[derive(Clone, Debug)]
pub struct SimResult {
    pub policy: PolicyKind,
    /// [`SimOptions::idle_policy`] of the replay.
    pub idle_policy: Option<IdlePolicy>,
    /// [`SimOptions::perturb_seed`] of the replay.
    pub perturb_seed: Option<u64>,
    pub jobs: Vec<JobRecord>,
    pub total_gpus: u64,
    /// (time, allocated milli-GPUs), one point per change.
    pub allocated: Vec<(Secs, u64)>,
    pub plans: u64,
    pub end_s: Secs,
    /// Per team with a guarantee and no sub-teams: milli-GPU-seconds of its guarantee it did
    /// not hold while it had a pending job that would have fitted in what was left of it
    /// ([`Denied`]).
    pub guarantee_denied: BTreeMap<String, u128>,
    /// GPU time held idle, and what the idle policies gave back ([`crate::idle`]).
    pub idle: IdleTotals,
    /// The story of [`SimOptions::explain_job`], in time order (empty without one).
    pub explained: Vec<Explained>,
}

impl SimResult {
    /// The replay's name in reports: its policy, and the idle policy where the run set one
    /// for every team (`default/yield`).
    pub fn label(&self) -> String {
        match self.idle_policy {
            Some(p) => format!("{}/{}", self.policy.name(), idle_policy_name(p)),
            None => self.policy.name().to_string(),
        }
    }
}

/// `warn`, `yield` or `release:SECONDS` (what [`parse_idle_policy`] reads).
pub fn idle_policy_name(p: IdlePolicy) -> String {
    match p {
        IdlePolicy::Warn => "warn".into(),
        IdlePolicy::Yield => "yield".into(),
        IdlePolicy::Release { after_s } => format!("release:{after_s}"),
    }
}

/// `warn`, `yield`, `release` (after [`IdlePolicy::RELEASE_AFTER_S`]) or `release:SECONDS`.
pub fn parse_idle_policy(text: &str) -> Result<IdlePolicy, String> {
    let bad = || {
        format!(
            "unknown idle policy {text:?}; expected warn, yield, release or release:SECONDS (seconds idle beyond the idle window before it is stopped, at least 1)"
        )
    };
    match text.trim() {
        "warn" => Ok(IdlePolicy::Warn),
        "yield" => Ok(IdlePolicy::Yield),
        "release" => Ok(IdlePolicy::Release {
            after_s: IdlePolicy::RELEASE_AFTER_S,
        }),
        t => {
            let after_s: Secs = t
                .strip_prefix("release:")
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .ok_or_else(bad)?;
            Ok(IdlePolicy::Release { after_s })
        }
    }
}

/// Sharing safety measured directly: how much of each team's guarantee sat out of its reach
/// while it had work that fitted in it. At every plan, a team that holds less than its
/// guarantee and has a pending job asking for no more than the difference is *denied* that
/// difference until the next plan. Under `static` that is what packing inside the partition
/// leaves (a 4-GPU job running, an 8-GPU job waiting); in the shared pool, also what the
/// guarantee failed to bring back in the shape the team needed.
struct Denied {
    /// Leaf teams with a guarantee: (name, guarantee in milli-GPUs, denied now, denied so far
    /// in milli-GPU-seconds).
    teams: Vec<(String, u64, u64, u128)>,
    since: Secs,
}

impl Denied {
    fn new(state: &ClusterState) -> Denied {
        let parents: BTreeSet<&str> = state
            .teams()
            .filter_map(|t| t.spec.parent.as_deref())
            .collect();
        let teams = state
            .teams()
            .filter(|t| !parents.contains(t.spec.name.as_str()))
            .map(|t| (t.spec.name.clone(), guaranteed_milli(t), 0, 0))
            .filter(|t| t.1 > 0)
            .collect();
        Denied { teams, since: 0 }
    }

    /// Adds what was denied from the last plan up to `now`.
    fn until(&mut self, now: Secs) {
        let dt = u128::from(now.saturating_sub(self.since));
        for (_, _, denied, total) in &mut self.teams {
            *total += u128::from(*denied) * dt;
        }
        self.since = now;
    }

    /// What each team is denied after a plan at `now`.
    fn after_plan(&mut self, state: &ClusterState, now: Secs) {
        self.since = now;
        for (name, guaranteed, denied, _) in &mut self.teams {
            let held = state.team(name).map_or(0, |t| t.alloc_milli);
            let left = guaranteed.saturating_sub(held);
            *denied = match state.least_pending_gpu_ask(name) {
                Some(ask) if ask <= left => left,
                _ => 0,
            };
        }
    }

    fn totals(self) -> BTreeMap<String, u128> {
        self.teams
            .into_iter()
            .map(|(name, _, _, total)| (name, total))
            .collect()
    }
}

/// A team's guarantee over all GPU models, in milli-GPUs.
fn guaranteed_milli(t: &qm_core::Team) -> u64 {
    let gpus: u64 = t
        .spec
        .quotas
        .values()
        .map(|q| u64::from(q.guaranteed))
        .sum();
    gpus * u64::from(MILLI_PER_GPU)
}

/// One trace job as the core sees it, on a cluster whose largest node has `node_gpus`.
pub fn job_spec(job: &TraceJob, options: &SimOptions, node_gpus: u32) -> JobSpec {
    let (tasks, gpu) = match job.gpu {
        GpuAsk::Whole(k)
            if options.split_to_nodes && node_gpus > 0 && k > node_gpus && k % node_gpus == 0 =>
        {
            (job.tasks * (k / node_gpus), GpuAsk::Whole(node_gpus))
        }
        other => (job.tasks, other),
    };
    let per_task = |x: u64| match job.gpu {
        GpuAsk::Whole(k) if tasks != job.tasks => x * u64::from(node_gpus) / u64::from(k),
        _ => x,
    };
    JobSpec {
        id: JobId(job.id),
        name: String::new(),
        team: job.team.clone(),
        user: job.user.clone(),
        priority: job.priority,
        tasks,
        gpu,
        cpu_milli: per_task(job.cpu_milli),
        mem_mib: per_task(job.mem_mib),
        gpu_model: job.gpu_model.clone(),
        node_selector: Default::default(),
        time_limit_s: Some(
            job.time_limit_s
                .unwrap_or_else(|| default_time_limit(job.duration_s)),
        ),
        runtime_estimate_s: None,
        preemptible: job.preemptible,
        grace_s: options.grace_s,
        min_run_s: options.min_run_s,
        checkpoint_every_s: options.checkpoint_every_s.filter(|&every| every > 0),
        depends_on: Vec::new(),
        array: None,
        submit_s: job.submit_s,
    }
}

/// The seeds of perturbed replays 1 to `replays`: the first outputs of the stream of `seed`,
/// so replay p is the same whatever the number of replays.
pub fn perturb_seeds(seed: u64, replays: usize) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..replays).map(|_| rng.next_u64()).collect()
}

/// The ids the core knows `jobs` by: the trace's, or with `rng` the trace's ids shuffled
/// among the jobs. Jobs equal in every other key (submitted in the same second, of the same
/// priority) are then taken in another order.
pub fn core_ids(jobs: &[TraceJob], rng: Option<&mut Rng>) -> Vec<JobId> {
    let mut ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    if let Some(rng) = rng {
        rng.shuffle(&mut ids);
    }
    ids.into_iter().map(JobId).collect()
}

/// `nodes` with equivalent racks' node ids (and names) traded, sorted by id. Two racks are
/// equivalent when they are in the same domain one level up (the same pod) and their nodes
/// are alike, position by position, in all but id, name and rack: nothing but the ids tells
/// them apart, and the core breaks ties between them by node id (single tasks go to the
/// lowest id that fits, so racks fill in id order, while a gang goes to the fullest domain
/// that holds it). Each rack keeps a block of ids that another rack had, so a rack's nodes
/// stay numbered together. Nodes within a rack are not renumbered: alike in all but id, any
/// renumbering of them gives the very same cluster.
pub fn renumber_racks(mut nodes: Vec<NodeSpec>, rng: &mut Rng) -> Vec<NodeSpec> {
    // Racks in order of first appearance, each its nodes' positions in `nodes`.
    let mut racks: Vec<Vec<usize>> = Vec::new();
    let mut rack_of: BTreeMap<&[String], usize> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.topology.is_empty() {
            continue;
        }
        let r = *rack_of.entry(n.topology.as_slice()).or_insert_with(|| {
            racks.push(Vec::new());
            racks.len() - 1
        });
        racks[r].push(i);
    }
    // What a rack is but for its ids: its domain one level up and its nodes.
    let shape = |rack: &[usize]| -> Vec<NodeSpec> {
        rack.iter()
            .map(|&i| {
                let n = &nodes[i];
                NodeSpec {
                    id: NodeId(0),
                    name: String::new(),
                    topology: n.topology[..n.topology.len() - 1].to_vec(),
                    ..n.clone()
                }
            })
            .collect()
    };
    let mut classes: Vec<(Vec<NodeSpec>, Vec<usize>)> = Vec::new();
    for (r, rack) in racks.iter().enumerate() {
        let s = shape(rack);
        match classes.iter_mut().find(|c| c.0 == s) {
            Some(c) => c.1.push(r),
            None => classes.push((s, vec![r])),
        }
    }
    let labels: Vec<(NodeId, String)> = nodes.iter().map(|n| (n.id, n.name.clone())).collect();
    for (_, class) in classes.iter().filter(|c| c.1.len() > 1) {
        let mut blocks = class.clone();
        rng.shuffle(&mut blocks);
        for (&rack, &block) in class.iter().zip(&blocks) {
            for (&i, &j) in racks[rack].iter().zip(&racks[block]) {
                (nodes[i].id, nodes[i].name) = labels[j].clone();
            }
        }
    }
    nodes.sort_by_key(|n| n.id);
    nodes
}

/// Builds the starting state: `nodes`, then teams parents first.
pub fn initial_state(
    nodes: Vec<NodeSpec>,
    teams: &[TeamSpec],
    options: &SimOptions,
) -> Result<ClusterState, SpecError> {
    let mut state = ClusterState::new(SchedulerConfig {
        policy: options.policy,
        max_reservations: options.max_reservations,
        idle_window_s: options.idle_window_s,
        starvation_wait_s: options.starvation_wait_s,
        ..SchedulerConfig::default()
    });
    for node in nodes {
        apply(&mut state, Event::NodeUp(node)).map_err(|e| SpecError(e.to_string()))?;
    }
    let mut left: Vec<&TeamSpec> = teams.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut rest = Vec::new();
        for t in left {
            let ready = t.parent.as_ref().is_none_or(|p| state.team(p).is_some());
            if ready {
                let mut t = t.clone();
                if let Some(policy) = options.idle_policy {
                    t.idle_policy = policy;
                }
                apply(&mut state, Event::SetTeam(t)).map_err(|e| SpecError(e.to_string()))?;
            } else {
                rest.push(t);
            }
        }
        if rest.len() == before {
            let names: Vec<&str> = rest.iter().map(|t| t.name.as_str()).collect();
            return Err(SpecError(format!(
                "teams {} name parents that do not exist",
                names.join(", ")
            )));
        }
        left = rest;
    }
    Ok(state)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The run ends by itself.
    Finish,
    /// A stopped job's grace period is over.
    Kill,
    /// The run's work is done: from now on it holds its GPUs idle.
    Idle,
    /// An idle window of the run's team ends: a sample, and a plan.
    Wake,
}

/// Replays `jobs` (sorted by submission) through the planner. `progress` is called with
/// (jobs done, jobs total) now and then.
pub fn simulate(
    jobs: &[TraceJob],
    cluster: &ClusterSpec,
    teams: &[TeamSpec],
    options: &SimOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SimResult, SpecError> {
    let mut rng = options.perturb_seed.map(Rng::new);
    let ids = core_ids(jobs, rng.as_mut());
    let nodes = match rng.as_mut() {
        Some(rng) => renumber_racks(cluster.nodes(), rng),
        None => cluster.nodes(),
    };
    let mut state = initial_state(nodes, teams, options)?;
    let mut records: Vec<JobRecord> = jobs
        .iter()
        .zip(&ids)
        .map(|(j, &core_id)| JobRecord {
            id: JobId(j.id),
            core_id,
            team: j.team.clone(),
            submit_s: j.submit_s,
            duration_s: j.duration_s,
            gpu_milli: j.gpu.milli() * u64::from(j.tasks),
            first_start_s: None,
            end_s: None,
            rejected: None,
            timed_out: false,
            preemptions: 0,
            lost_milli_s: 0,
            reclaim_wait: false,
            ended_idle: false,
        })
        .collect();
    let index: BTreeMap<JobId, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (jobs[i].submit_s, ids[i]));
    let mut heap: BinaryHeap<Reverse<(Secs, Kind, JobId, u32)>> = BinaryHeap::new();
    let mut next = 0;
    // Per job (trace order): seconds of its work saved by checkpoints of earlier runs.
    let mut saved: Vec<Secs> = vec![0; jobs.len()];
    let every = options.checkpoint_every_s.filter(|&every| every > 0);
    let mut allocated: Vec<(Secs, u64)> = vec![(0, 0)];
    let mut alloc_now: u64 = 0;
    let mut plans = 0u64;
    let mut done = 0usize;
    let mut now: Secs = 0;
    let report_every = (jobs.len() / 200).max(1);
    let node_gpus = cluster.group.iter().map(|g| g.gpus).max().unwrap_or(0);
    let mut denied = Denied::new(&state);
    let guarantees: BTreeMap<String, u64> = state
        .teams()
        .map(|t| (t.spec.name.clone(), guaranteed_milli(t)))
        .collect();
    let total_milli = cluster.gpus() * u64::from(MILLI_PER_GPU);
    let (threshold, window) = (state.config.idle_threshold_pct, state.config.idle_window_s);
    let mut meter = IdleMeter::default();
    let mut runs: Vec<RunIdle> = vec![RunIdle::default(); jobs.len()];
    let explain = options
        .explain_job
        .and_then(|x| jobs.iter().position(|j| JobId(j.id) == x))
        .map(|i| ids[i]);
    let mut story = Story::default();
    loop {
        let t_arrival = order.get(next).map(|&i| jobs[i].submit_s);
        let t_event = heap.peek().map(|Reverse(e)| e.0);
        now = match (t_arrival, t_event) {
            (Some(a), Some(e)) => a.min(e),
            (Some(a), None) => a,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        denied.until(now);
        meter.until(now);
        while let Some(&i) = order.get(next) {
            if jobs[i].submit_s != now {
                break;
            }
            next += 1;
            let spec = JobSpec {
                id: ids[i],
                ..job_spec(&jobs[i], options, node_gpus)
            };
            // With the team's jobs already waiting ahead of it, the job fits in what is left
            // of the guarantee, and the free GPUs are too few: it waits for its guarantee to
            // come back, not behind its own team's work.
            let ask = spec.milli_total();
            let held = state.team(&spec.team).map_or(0, |t| t.alloc_milli)
                + state.pending_gpu_milli(&spec.team);
            let guaranteed = guarantees.get(&spec.team).copied().unwrap_or(0);
            records[i].reclaim_wait =
                held + ask <= guaranteed && total_milli.saturating_sub(alloc_now) < ask;
            if let Err(e) = apply(&mut state, Event::Submit(spec)) {
                records[i].rejected = Some(e.to_string());
                done += 1;
            }
        }
        while let Some(Reverse((t, kind, job, attempt))) = heap.peek().copied() {
            if t != now {
                break;
            }
            heap.pop();
            let current = state
                .job(job)
                .and_then(|j| j.state.run())
                .map(|r| r.attempt);
            if current != Some(attempt) {
                continue; // A stale timer of an earlier run.
            }
            let j = state.job(job).expect("known");
            let milli = j.spec.milli_total();
            let stopping = matches!(j.state, JobState::Stopping(..));
            let i = index[&job];
            match kind {
                Kind::Idle => {
                    let sample = go_idle(&mut runs[i], &mut meter, &jobs[i], milli, now, true);
                    idle_sample(&mut state, job, attempt, sample, now)?;
                    wake_ups(&state, &jobs[i], now, window, attempt, job, &mut heap);
                    continue;
                }
                Kind::Wake => {
                    if runs[i].since.is_some() {
                        idle_sample(
                            &mut state,
                            job,
                            attempt,
                            sample_pct(&runs[i], &jobs[i]),
                            now,
                        )?;
                    }
                    continue;
                }
                Kind::Finish | Kind::Kill => {}
            }
            let event = match kind {
                // Its run was cut short: the SIGKILL timer decides what becomes of it.
                Kind::Finish if stopping => continue,
                Kind::Finish => Event::Exited {
                    job,
                    success: true,
                    attempt: Some(attempt),
                    at_s: now,
                },
                Kind::Kill if stopping => Event::Exited {
                    job,
                    success: false,
                    attempt: Some(attempt),
                    at_s: now,
                },
                Kind::Kill | Kind::Idle | Kind::Wake => continue,
            };
            if runs[i].since.take().is_some() {
                // The last sample charges the idle time up to the end.
                idle_sample(
                    &mut state,
                    job,
                    attempt,
                    sample_pct(&runs[i], &jobs[i]),
                    now,
                )?;
                meter.change(&jobs[i].team, milli, false);
            }
            apply(&mut state, event).map_err(|e| SpecError(format!("simulator bug: {e}")))?;
            alloc_now -= milli;
            let r = &mut records[index[&job]];
            match &state.job(job).expect("known").state {
                JobState::Pending => {}
                JobState::Failed { timed_out, .. } => {
                    r.end_s = Some(now);
                    r.timed_out = *timed_out;
                    done += 1;
                }
                JobState::Cancelled { .. } => {
                    r.end_s = Some(now);
                    r.ended_idle = true;
                    meter.ended_idle += 1;
                    done += 1;
                }
                _ => {
                    r.end_s = Some(now);
                    done += 1;
                }
            }
        }
        let p = decide(&state, now);
        plans += 1;
        if let Some(x) = explain {
            story.tell(&state, &p, x, now);
        }
        for event in p.events(now) {
            match event {
                Event::Stop { job: id, cause, .. } => {
                    let j = state.job(id).expect("planned");
                    let run = j.state.run().expect("running");
                    let (attempt, started) = (run.attempt, run.started_s);
                    let milli = j.spec.milli_total();
                    let grace = j.spec.grace_s;
                    let i = index[&id];
                    let idle = runs[i];
                    if cause == StopCause::Idle
                        && (idle.since.is_none()
                            || (!idle.done_working
                                && jobs[i].util_pct.is_some_and(|u| u >= threshold)))
                    {
                        meter.busy_stopped += 1;
                    }
                    apply(&mut state, event)
                        .map_err(|e| SpecError(format!("simulator bug: {e}")))?;
                    if idle.since.is_some() {
                        let back = idle.ends_s.saturating_sub(now + grace);
                        meter.reclaimed_milli_s += u128::from(milli) * u128::from(back);
                    }
                    if idle.done_working {
                        // Its work is done: it ends when it has stopped, not requeued.
                        apply(
                            &mut state,
                            Event::Cancel {
                                job: id,
                                at_s: now,
                                unmet: None,
                            },
                        )
                        .map_err(|e| SpecError(format!("simulator bug: {e}")))?;
                    }
                    if matches!(
                        cause,
                        StopCause::Reclaim | StopCause::Priority | StopCause::Idle
                    ) {
                        let r = &mut records[i];
                        r.preemptions += 1;
                        // The run is lost up to its SIGKILL, but for what its checkpoints
                        // (those written before the stop) saved; nothing where its work
                        // was done.
                        let ran = now - started;
                        let kept = every.map_or(0, |e| ran - ran % e);
                        saved[i] = (saved[i] + kept).min(jobs[i].duration_s);
                        if !idle.done_working {
                            r.lost_milli_s += milli * (now + grace - started - kept);
                        }
                    }
                    heap.push(Reverse((now + grace, Kind::Kill, id, attempt)));
                }
                Event::Start { job: id, .. } => {
                    apply(&mut state, event)
                        .map_err(|e| SpecError(format!("simulator bug: {e}")))?;
                    let i = index[&id];
                    let job = state.job(id).expect("started");
                    let attempt = job.state.run().expect("running").attempt;
                    let milli = job.spec.milli_total();
                    alloc_now += milli;
                    records[i].first_start_s.get_or_insert(now);
                    let ends_s = now + (jobs[i].duration_s - saved[i]);
                    heap.push(Reverse((ends_s, Kind::Finish, id, attempt)));
                    runs[i] = RunIdle {
                        since: None,
                        done_working: false,
                        ends_s,
                    };
                    if let Some(util) = jobs[i].util_pct {
                        let work_left = jobs[i].idle_after_s.map(|a| a.saturating_sub(saved[i]));
                        if work_left == Some(0) || util < threshold {
                            let done_working = work_left == Some(0);
                            let sample = go_idle(
                                &mut runs[i],
                                &mut meter,
                                &jobs[i],
                                milli,
                                now,
                                done_working,
                            );
                            idle_sample(&mut state, id, attempt, sample, now)?;
                            wake_ups(&state, &jobs[i], now, window, attempt, id, &mut heap);
                        } else if let Some(w) = work_left.filter(|&w| now + w < ends_s) {
                            heap.push(Reverse((now + w, Kind::Idle, id, attempt)));
                        }
                    }
                }
                _ => unreachable!("a plan's events are stops and starts"),
            }
        }
        denied.after_plan(&state, now);
        meter.after_plan(&state);
        if allocated.last().map(|a| a.1) != Some(alloc_now) {
            if allocated.last().map(|a| a.0) == Some(now) {
                allocated.pop();
            }
            allocated.push((now, alloc_now));
        }
        if plans.is_multiple_of(report_every as u64) {
            progress(done, jobs.len());
        }
    }
    progress(done, jobs.len());
    Ok(SimResult {
        policy: options.policy,
        idle_policy: options.idle_policy,
        perturb_seed: options.perturb_seed,
        jobs: records,
        total_gpus: cluster.gpus(),
        allocated,
        plans,
        end_s: now,
        guarantee_denied: denied.totals(),
        idle: meter.totals(),
        explained: story.lines,
    })
}

/// A job's story as a replay goes ([`SimOptions::explain_job`]): a line where why it waits
/// changes, and where it starts, is stopped or ends.
#[derive(Default)]
struct Story {
    lines: Vec<Explained>,
    /// What the last line said of the job's state, so that a plan that changes nothing for
    /// it adds none.
    last: Option<String>,
}

impl Story {
    /// What plan `p`, made at `now` of `state`, means for job `x`: a full plan (with its
    /// explanations) is made where the job waits.
    fn tell(&mut self, state: &ClusterState, p: &qm_core::Plan, x: JobId, now: Secs) {
        let Some(job) = state.job(x) else { return };
        let what = match &job.state {
            JobState::Pending => match p.starts.iter().find(|s| s.job == x) {
                Some(start) => {
                    let mut nodes: Vec<u32> = start.placement.iter().map(|t| t.node.0).collect();
                    nodes.dedup();
                    format!(
                        "starts, {} its team's guarantee, on node(s) {nodes:?}",
                        match start.admission {
                            qm_core::Admission::Guaranteed => "inside",
                            qm_core::Admission::Borrowed => "beyond",
                        }
                    )
                }
                None => {
                    let full = qm_core::plan(state, now);
                    match full.pending_job(x) {
                        Some(pending) => format!("waits: {}", pending.reason),
                        None => "waits".to_string(),
                    }
                }
            },
            JobState::Running(_) => match p.stops.iter().find(|s| s.job == x) {
                Some(stop) => match stop.beneficiary {
                    Some(b) => format!("is stopped ({:?}) for job {}", stop.cause, b.0),
                    None => format!("is stopped ({:?})", stop.cause),
                },
                None => "runs".to_string(),
            },
            JobState::Stopping(..) => "is stopping".to_string(),
            ended => format!("has ended: {}", ended.name()),
        };
        if self.last.as_deref() != Some(what.as_str()) {
            if what != "runs" && what != "is stopping" {
                self.lines.push(Explained {
                    at_s: now,
                    what: what.clone(),
                });
            }
            self.last = Some(what);
        }
    }
}

/// The run's GPUs go idle now: counted by the meter; returns the sample to send.
fn go_idle(
    run: &mut RunIdle,
    meter: &mut IdleMeter,
    job: &TraceJob,
    milli: u64,
    now: Secs,
    done_working: bool,
) -> u8 {
    run.since = Some(now);
    run.done_working = done_working;
    meter.change(&job.team, milli, true);
    sample_pct(run, job)
}

/// What an idle run's GPUs read: 0 once its work is done, else its utilisation.
fn sample_pct(run: &RunIdle, job: &TraceJob) -> u8 {
    if run.done_working {
        0
    } else {
        job.util_pct.unwrap_or(0)
    }
}

fn idle_sample(
    state: &mut ClusterState,
    job: JobId,
    attempt: u32,
    pct: u8,
    now: Secs,
) -> Result<(), SpecError> {
    let event = Event::Utilisation {
        job,
        pct,
        attempt: Some(attempt),
        at_s: now,
    };
    apply(state, event).map_err(|e| SpecError(format!("simulator bug: {e}")))
}

/// Plans at the ends of the idle windows of a run idle from `now`: when its team's policy
/// flags it (and yields), and when it releases it.
fn wake_ups(
    state: &ClusterState,
    job: &TraceJob,
    now: Secs,
    window: Secs,
    attempt: u32,
    id: JobId,
    heap: &mut BinaryHeap<Reverse<(Secs, Kind, JobId, u32)>>,
) {
    heap.push(Reverse((now + window, Kind::Wake, id, attempt)));
    let policy = state
        .team(&job.team)
        .map_or(IdlePolicy::default(), |t| t.spec.idle_policy);
    if let Some(at) = policy.release_at(now, window) {
        heap.push(Reverse((at, Kind::Wake, id, attempt)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(gpus: u32) -> TraceJob {
        TraceJob {
            id: 1,
            submit_s: 0,
            duration_s: 60,
            tasks: 1,
            gpu: GpuAsk::Whole(gpus),
            cpu_milli: 8000,
            mem_mib: 8192,
            team: "a".into(),
            user: String::new(),
            priority: 0,
            gpu_model: None,
            time_limit_s: None,
            preemptible: true,
            util_pct: None,
            idle_after_s: None,
        }
    }

    #[test]
    fn jobs_bigger_than_a_node_become_gangs_of_node_sized_tasks_when_asked() {
        let mut options = SimOptions::new(PolicyKind::Default);
        assert_eq!(
            job_spec(&job(8), &options, 4).tasks,
            1,
            "not split unless asked"
        );
        options.split_to_nodes = true;
        let spec = job_spec(&job(8), &options, 4);
        assert_eq!((spec.tasks, spec.gpu), (2, GpuAsk::Whole(4)));
        assert_eq!(
            (spec.cpu_milli, spec.mem_mib),
            (4000, 4096),
            "CPU and memory split too"
        );
        assert_eq!(
            job_spec(&job(6), &options, 4).tasks,
            1,
            "6 does not divide by 4"
        );
        assert_eq!(spec.time_limit_s, Some(3600), "the documented limit rule");
    }

    /// Racks of two nodes: `a_racks` of 8-GPU nodes, then 2 racks of 4-GPU nodes, 8 racks
    /// to a pod.
    fn racks(a_racks: u32) -> Vec<NodeSpec> {
        let toml = format!(
            "[[group]]\ncount = {}\ngpus = 8\nnodes_per_rack = 2\n\n[[group]]\ncount = 4\ngpus = 4\nnodes_per_rack = 2\n",
            2 * a_racks
        );
        ClusterSpec::from_toml("c.toml", &toml).unwrap().nodes()
    }

    #[test]
    fn perturbed_job_ids_are_the_traces_ids_dealt_by_the_seed() {
        let jobs: Vec<TraceJob> = (1..=50)
            .map(|id| TraceJob {
                id: id * 10,
                ..job(1)
            })
            .collect();
        let trace: Vec<JobId> = jobs.iter().map(|j| JobId(j.id)).collect();
        assert_eq!(core_ids(&jobs, None), trace, "no seed: the trace's ids");
        let dealt = |seed: u64| core_ids(&jobs, Some(&mut Rng::new(seed)));
        let (a, b) = (dealt(7), dealt(8));
        assert_eq!(a, dealt(7), "the same seed deals the same ids");
        assert_ne!(a, trace);
        assert_ne!(a, b);
        for ids in [a, b] {
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(sorted, trace, "a permutation of the trace's ids");
        }
        let seeds = perturb_seeds(42, 3);
        assert_eq!(seeds.len(), 3);
        assert_eq!(perturb_seeds(42, 5)[..3], seeds[..], "replay p whatever K");
    }

    #[test]
    fn equivalent_racks_trade_blocks_of_node_ids_and_nothing_else_moves() {
        // Nine racks of 8-GPU nodes: eight in pod 0, the ninth alone in pod 1; then two racks
        // of 4-GPU nodes in pod 1.
        let plain = racks(9);
        let spec = |n: &NodeSpec| (n.gpus, n.topology.clone());
        let mut moved = false;
        for seed in 0..4 {
            let renumbered = renumber_racks(plain.clone(), &mut Rng::new(seed));
            let ids: Vec<NodeId> = renumbered.iter().map(|n| n.id).collect();
            let plain_ids: Vec<NodeId> = plain.iter().map(|n| n.id).collect();
            assert_eq!(ids, plain_ids, "the same ids, sorted");
            for n in &renumbered {
                assert_eq!(n.name, format!("node-{:05}", n.id.0), "names follow ids");
            }
            // Rack by rack: two consecutive ids, the block of a rack of the same kind.
            let mut by_rack: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
            for n in &renumbered {
                by_rack.entry(n.topology.clone()).or_default().push(n.id.0);
            }
            for (rack, ids) in &by_rack {
                assert!(ids.len() == 2 && ids[0] % 2 == 0 && ids[1] == ids[0] + 1);
                let was = &plain[ids[0] as usize];
                assert_eq!(spec(was).0, renumbered[ids[0] as usize].gpus);
                assert_eq!(was.topology[0], rack[0], "no rack leaves its pod");
                moved |= &was.topology != rack;
            }
            // The rack alone of its kind in its pod keeps its ids.
            for id in 16..18 {
                assert_eq!(spec(&renumbered[id]), spec(&plain[id]), "node {id}");
            }
        }
        assert!(moved, "some seed renumbers some rack");
    }

    #[test]
    fn a_perturbed_replay_records_the_traces_ids_and_the_cores() {
        let jobs: Vec<TraceJob> = (1..=6)
            .map(|id| TraceJob {
                id,
                submit_s: 0,
                duration_s: 100 * id,
                ..job(8)
            })
            .collect();
        let cluster = ClusterSpec::shorthand("2x8").unwrap();
        let teams = crate::teamspec::auto(&jobs, cluster.gpus(), 1);
        let run = |seed: Option<u64>| {
            let mut options = SimOptions::new(PolicyKind::Default);
            options.perturb_seed = seed;
            simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap()
        };
        let plain = run(None);
        assert!(plain.jobs.iter().all(|j| j.core_id == j.id));
        assert_eq!(plain.perturb_seed, None);
        // Six whole-node jobs submitted together on two nodes: the two lowest core ids start
        // first.
        let first = |r: &SimResult| -> Vec<JobId> {
            let mut started: Vec<&JobRecord> = r.jobs.iter().collect();
            started.sort_by_key(|j| (j.first_start_s, j.core_id));
            started.iter().take(2).map(|j| j.id).collect()
        };
        assert_eq!(first(&plain), [JobId(1), JobId(2)]);
        let mut differs = false;
        for seed in perturb_seeds(42, 4) {
            let p = run(Some(seed));
            assert_eq!(p.perturb_seed, Some(seed));
            let trace: Vec<JobId> = p.jobs.iter().map(|j| j.id).collect();
            assert_eq!(trace, (1..=6).map(JobId).collect::<Vec<_>>(), "trace order");
            let mut lowest: Vec<&JobRecord> = p.jobs.iter().collect();
            lowest.sort_by_key(|j| j.core_id);
            let expected: Vec<JobId> = lowest.iter().take(2).map(|j| j.id).collect();
            let mut got = first(&p);
            got.sort();
            let mut expected = expected;
            expected.sort();
            assert_eq!(got, expected, "the ties go to the lowest core ids");
            differs |= got != [JobId(1), JobId(2)];
        }
        assert!(differs, "some seed starts other jobs first");
    }

    /// One node of 8 GPUs guaranteed to team a; team b (no guarantee) borrows `b_gpus` of it
    /// from 0 s for 10,000 s; a's whole-node job of 100 s arrives at 1,000 s.
    fn lent_node(b_gpus: u32) -> (Vec<TraceJob>, ClusterSpec, Vec<TeamSpec>) {
        let jobs = vec![
            TraceJob {
                id: 1,
                duration_s: 10_000,
                team: "b".into(),
                ..job(b_gpus)
            },
            TraceJob {
                id: 2,
                submit_s: 1_000,
                duration_s: 100,
                ..job(8)
            },
        ];
        let cluster = ClusterSpec::shorthand("1x8").unwrap();
        (
            jobs,
            cluster,
            vec![TeamSpec::new("a", 8), TeamSpec::new("b", 0)],
        )
    }

    #[test]
    fn a_guarantee_lent_out_is_denied_until_its_owner_has_it_back() {
        // Team b (no guarantee) borrows a GPU of a's node; a's whole-node job arrives at
        // 1,000 s and waits for b's job's grace period: a is denied its 8 GPUs for 30 s.
        // Under `static` a's partition is its own: denied nothing.
        let (jobs, cluster, teams) = lent_node(1);
        let run = |policy| {
            let options = SimOptions::new(policy);
            simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap()
        };
        let pool = run(PolicyKind::Default);
        assert_eq!(pool.jobs[1].first_start_s, Some(1_030), "after b's grace");
        let denied: Vec<(&str, u128)> = pool
            .guarantee_denied
            .iter()
            .map(|(t, &d)| (t.as_str(), d))
            .collect();
        assert_eq!(denied, [("a", 8_000 * 30)], "b has no guarantee to deny");
        let partition = run(PolicyKind::Static);
        assert_eq!(partition.jobs[1].first_start_s, Some(1_000));
        assert_eq!(partition.guarantee_denied.get("a"), Some(&0));
    }

    #[test]
    fn a_replay_tells_the_story_of_the_job_it_is_asked_about() {
        // b borrows a's node at 0 s; a's job arrives at 1,000 s and takes it back; b is
        // killed at 1,030 s, waits while a's job runs and starts again at 1,130 s, from the
        // beginning: it ends at 11,130 s.
        let (jobs, cluster, teams) = lent_node(8);
        let mut options = SimOptions::new(PolicyKind::Default);
        let quiet = simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap();
        assert!(quiet.explained.is_empty(), "no story unless asked");
        options.explain_job = Some(JobId(1));
        let told = simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap();
        assert_eq!(told.jobs, quiet.jobs, "telling changes nothing");
        let story: Vec<(Secs, &str)> = told
            .explained
            .iter()
            .map(|l| (l.at_s, l.what.as_str()))
            .collect();
        let at: Vec<Secs> = story.iter().map(|s| s.0).collect();
        assert_eq!(at, [0, 1_000, 1_030, 1_130, 11_130], "{story:?}");
        assert!(story[0]
            .1
            .starts_with("starts, beyond its team's guarantee"));
        assert_eq!(story[1].1, "is stopped (Reclaim) for job 2");
        assert!(story[2].1.starts_with("waits: "), "{story:?}");
        assert!(story[3]
            .1
            .starts_with("starts, beyond its team's guarantee"));
        assert_eq!(story[4].1, "has ended: succeeded");
    }

    #[test]
    fn a_preempted_job_that_checkpoints_resumes_from_its_last_checkpoint() {
        // b borrows the node; a takes it back at 1,000 s; b is killed at 1,030 s and starts
        // again when a's job ends at 1,130 s.
        let (jobs, cluster, teams) = lent_node(8);
        let run = |every| {
            let mut options = SimOptions::new(PolicyKind::Default);
            options.checkpoint_every_s = every;
            simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap()
        };
        let scratch = run(None);
        assert_eq!(scratch.jobs[0].preemptions, 1);
        assert_eq!(
            scratch.jobs[0].end_s,
            Some(1_130 + 10_000),
            "from the beginning"
        );
        assert_eq!(scratch.jobs[0].lost_milli_s, 8_000 * 1_030);
        // Checkpoints every 600 s: the one at 600 s is kept, the 430 s after it are lost.
        let resumed = run(Some(600));
        assert_eq!(resumed.jobs[0].end_s, Some(1_130 + 10_000 - 600));
        assert_eq!(resumed.jobs[0].lost_milli_s, 8_000 * 430);
        assert_eq!(resumed.jobs[1].first_start_s, Some(1_030));
    }

    /// One node of 8 GPUs guaranteed to team a. a's whole-node job works 600 s, then holds
    /// the node idle until 20,000 s; b's whole-node job (no guarantee) arrives at 1,000 s.
    fn hoarded_node(policy: IdlePolicy) -> SimResult {
        let jobs = vec![
            TraceJob {
                id: 1,
                duration_s: 20_000,
                util_pct: Some(90),
                idle_after_s: Some(600),
                ..job(8)
            },
            TraceJob {
                id: 2,
                submit_s: 1_000,
                duration_s: 100,
                team: "b".into(),
                ..job(8)
            },
        ];
        let cluster = ClusterSpec::shorthand("1x8").unwrap();
        let teams = vec![TeamSpec::new("a", 8), TeamSpec::new("b", 0)];
        let mut options = SimOptions::new(PolicyKind::Default);
        options.idle_policy = Some(policy);
        simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap()
    }

    #[test]
    fn an_idle_job_that_yields_gives_its_node_to_the_waiting_job_and_ends() {
        let window = SchedulerConfig::default().idle_window_s;
        let r = hoarded_node(IdlePolicy::Yield);
        // Idle from 600 s; yields at 600 + window, when b's job waits: stopped, its GPUs back
        // after the 30 s grace period, and it ends there (its work was done).
        let stop = 600 + window;
        assert_eq!(r.jobs[1].first_start_s, Some(stop + 30));
        assert_eq!(r.jobs[0].end_s, Some(stop + 30));
        assert!(r.jobs[0].ended_idle);
        assert_eq!(r.jobs[0].lost_milli_s, 0, "it lost no work");
        let idle = &r.idle;
        assert_eq!(idle.milli_s, 8_000 * u128::from(window + 30));
        assert_eq!(
            idle.while_waiting_milli_s,
            8_000 * u128::from(window + 30 - 400)
        );
        assert_eq!(
            idle.reclaimed_milli_s,
            8_000 * u128::from(20_000 - stop - 30)
        );
        assert_eq!(idle.busy_stopped, 0);
        assert_eq!(idle.ended_idle, 1);
        assert_eq!(idle.team_milli_s.get("a"), Some(&idle.milli_s));
        // b's job was submitted while its team had no guarantee: no reclaim wait.
        assert!(!r.jobs[1].reclaim_wait);
    }

    #[test]
    fn under_warn_an_idle_job_keeps_its_node_to_the_end() {
        let r = hoarded_node(IdlePolicy::Warn);
        assert_eq!(r.jobs[0].end_s, Some(20_000));
        assert_eq!(r.jobs[1].first_start_s, Some(20_000));
        let idle = &r.idle;
        assert_eq!(idle.milli_s, 8_000 * 19_400);
        assert_eq!(idle.while_waiting_milli_s, 8_000 * 19_000);
        assert_eq!(idle.reclaimed_milli_s, 0);
        assert_eq!(idle.ended_idle, 0);
    }

    #[test]
    fn release_stops_an_idle_job_whatever_the_demand() {
        let window = SchedulerConfig::default().idle_window_s;
        let r = hoarded_node(IdlePolicy::Release { after_s: 5_000 });
        // b's job came at 1,000 s and took it at the window (release yields first).
        let stop = 600 + window;
        assert_eq!(r.jobs[1].first_start_s, Some(stop + 30));
        // Alone, the idle job is released 5,000 s after the window.
        let jobs = vec![TraceJob {
            id: 1,
            duration_s: 20_000,
            util_pct: Some(90),
            idle_after_s: Some(600),
            ..job(8)
        }];
        let cluster = ClusterSpec::shorthand("1x8").unwrap();
        let mut options = SimOptions::new(PolicyKind::Default);
        options.idle_policy = Some(IdlePolicy::Release { after_s: 5_000 });
        let teams = vec![TeamSpec::new("a", 8)];
        let alone = simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap();
        assert_eq!(alone.jobs[0].end_s, Some(600 + window + 5_000 + 30));
        assert!(alone.jobs[0].ended_idle);
        assert_eq!(alone.idle.while_waiting_milli_s, 0, "nothing waited");
    }

    #[test]
    fn a_job_below_the_threshold_from_its_start_is_idle_all_along() {
        let jobs = vec![TraceJob {
            id: 1,
            duration_s: 1_000,
            util_pct: Some(2),
            ..job(4)
        }];
        let cluster = ClusterSpec::shorthand("1x8").unwrap();
        let options = SimOptions::new(PolicyKind::Default);
        let teams = vec![TeamSpec::new("a", 8)];
        let r = simulate(&jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap();
        assert_eq!(r.idle.milli_s, 4_000 * 1_000);
        assert_eq!(r.jobs[0].end_s, Some(1_000));
    }
}
