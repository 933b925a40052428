//! The discrete-event loop: the very `qm-core` planner on a virtual clock.
//!
//! At every instant something happens (a submission, a job's end, a stopped job's SIGKILL
//! deadline), the simulator applies the events, calls `plan(state, now)` and executes the plan
//! exactly as the server does (it calls `decide`, which makes the same decisions as `plan`
//! without explaining every pending job): `Stop` for each stop (the job exits after its grace period),
//! `Start` for each start (the job ends after its recorded duration). A preempted job is
//! requeued by the core and restarts from the beginning when it starts again: the work since
//! its start is lost, and counted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use qm_core::{
    apply, decide, ClusterState, Event, GpuAsk, JobId, JobSpec, JobState, PolicyKind,
    SchedulerConfig, Secs, StopCause, TeamSpec,
};

use crate::cluster::{ClusterSpec, SpecError};
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
}

impl SimOptions {
    pub fn new(policy: PolicyKind) -> SimOptions {
        SimOptions {
            policy,
            grace_s: 30,
            min_run_s: 300,
            split_to_nodes: false,
            max_reservations: SchedulerConfig::default().max_reservations,
        }
    }
}

/// What happened to one trace job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: JobId,
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
}

/// Everything a run produced, for the report.
#[derive(Clone, Debug)]
pub struct SimResult {
    pub policy: PolicyKind,
    pub jobs: Vec<JobRecord>,
    pub total_gpus: u64,
    /// (time, allocated milli-GPUs), one point per change.
    pub allocated: Vec<(Secs, u64)>,
    pub plans: u64,
    pub end_s: Secs,
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
        checkpoint_every_s: None,
        depends_on: Vec::new(),
        submit_s: job.submit_s,
    }
}

/// Builds the starting state: nodes, then teams parents first.
pub fn initial_state(
    cluster: &ClusterSpec,
    teams: &[TeamSpec],
    options: &SimOptions,
) -> Result<ClusterState, SpecError> {
    let mut state = ClusterState::new(SchedulerConfig {
        policy: options.policy,
        max_reservations: options.max_reservations,
        ..SchedulerConfig::default()
    });
    for node in cluster.nodes() {
        apply(&mut state, Event::NodeUp(node)).map_err(|e| SpecError(e.to_string()))?;
    }
    let mut left: Vec<&TeamSpec> = teams.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut rest = Vec::new();
        for t in left {
            let ready = t.parent.as_ref().is_none_or(|p| state.team(p).is_some());
            if ready {
                apply(&mut state, Event::SetTeam(t.clone()))
                    .map_err(|e| SpecError(e.to_string()))?;
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
    let mut state = initial_state(cluster, teams, options)?;
    let mut records: Vec<JobRecord> = jobs
        .iter()
        .map(|j| JobRecord {
            id: JobId(j.id),
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
        })
        .collect();
    let index: BTreeMap<JobId, usize> =
        records.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (jobs[i].submit_s, jobs[i].id));
    let mut heap: BinaryHeap<Reverse<(Secs, Kind, JobId, u32)>> = BinaryHeap::new();
    let mut next = 0;
    let mut allocated: Vec<(Secs, u64)> = vec![(0, 0)];
    let mut alloc_now: u64 = 0;
    let mut plans = 0u64;
    let mut done = 0usize;
    let mut now: Secs = 0;
    let report_every = (jobs.len() / 200).max(1);
    let node_gpus = cluster.group.iter().map(|g| g.gpus).max().unwrap_or(0);
    loop {
        let t_arrival = order.get(next).map(|&i| jobs[i].submit_s);
        let t_event = heap.peek().map(|Reverse(e)| e.0);
        now = match (t_arrival, t_event) {
            (Some(a), Some(e)) => a.min(e),
            (Some(a), None) => a,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        while let Some(&i) = order.get(next) {
            if jobs[i].submit_s != now {
                break;
            }
            next += 1;
            let spec = job_spec(&jobs[i], options, node_gpus);
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
                Kind::Kill => continue,
            };
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
                _ => {
                    r.end_s = Some(now);
                    done += 1;
                }
            }
        }
        let p = decide(&state, now);
        plans += 1;
        for event in p.events(now) {
            match event {
                Event::Stop { job: id, cause, .. } => {
                    let j = state.job(id).expect("planned");
                    let run = j.state.run().expect("running");
                    let (attempt, started) = (run.attempt, run.started_s);
                    let milli = j.spec.milli_total();
                    let grace = j.spec.grace_s;
                    apply(&mut state, event)
                        .map_err(|e| SpecError(format!("simulator bug: {e}")))?;
                    if matches!(cause, StopCause::Reclaim | StopCause::Idle) {
                        let r = &mut records[index[&id]];
                        r.preemptions += 1;
                        // The run is lost up to its SIGKILL.
                        r.lost_milli_s += milli * (now + grace - started);
                    }
                    heap.push(Reverse((now + grace, Kind::Kill, id, attempt)));
                }
                Event::Start { job: id, .. } => {
                    apply(&mut state, event)
                        .map_err(|e| SpecError(format!("simulator bug: {e}")))?;
                    let i = index[&id];
                    let job = state.job(id).expect("started");
                    let attempt = job.state.run().expect("running").attempt;
                    alloc_now += job.spec.milli_total();
                    records[i].first_start_s.get_or_insert(now);
                    heap.push(Reverse((
                        now + jobs[i].duration_s,
                        Kind::Finish,
                        id,
                        attempt,
                    )));
                }
                _ => unreachable!("a plan's events are stops and starts"),
            }
        }
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
        jobs: records,
        total_gpus: cluster.gpus(),
        allocated,
        plans,
        end_s: now,
    })
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
}
