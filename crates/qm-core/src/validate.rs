//! Checks of submissions and starts, before `apply` changes anything.
//!
//! A job that could never run, whatever the load, is refused at submission with a reason;
//! it is never left pending forever.

use std::collections::BTreeMap;

use crate::error::ApplyError;
use crate::model::{After, GpuAsk, JobId, JobSpec, NodeId, NodeState, MILLI_PER_GPU};
use crate::state::{placement_milli, task_shape, ClusterState, JobState, Node, TaskPlacement};

/// Most tasks one gang may have.
pub const MAX_TASKS: u32 = 100_000;

/// Longest grace period between SIGTERM and SIGKILL.
pub const MAX_GRACE_S: u64 = 24 * 3600;

/// Whether a node could ever host tasks of this job, ignoring what runs there now.
pub(crate) fn node_matches(spec: &JobSpec, node: &Node) -> bool {
    spec.gpu_model
        .as_ref()
        .is_none_or(|m| *m == node.spec.gpu_model)
        && spec
            .node_selector
            .iter()
            .all(|(k, v)| node.spec.labels.get(k) == Some(v))
}

/// How many tasks of this job an empty node could hold.
pub(crate) fn tasks_per_empty_node(spec: &JobSpec, node: &Node) -> u64 {
    let by_gpu = match spec.gpu {
        GpuAsk::Whole(0) => u64::MAX,
        GpuAsk::Whole(n) => u64::from(node.spec.gpus / n),
        GpuAsk::Milli(m) => u64::from(node.spec.gpus) * u64::from(MILLI_PER_GPU / m.max(1)),
    };
    let by_cpu = node
        .spec
        .cpu_milli
        .checked_div(spec.cpu_milli)
        .unwrap_or(u64::MAX);
    let by_mem = node
        .spec
        .mem_mib
        .checked_div(spec.mem_mib)
        .unwrap_or(u64::MAX);
    by_gpu.min(by_cpu).min(by_mem)
}

pub(crate) fn job(state: &ClusterState, spec: &JobSpec) -> Result<(), ApplyError> {
    let id = spec.id;
    let invalid = |why: String| ApplyError::InvalidJob { job: id, why };
    let never = |why: String| ApplyError::Unrunnable { job: id, why };
    if state.job(id).is_some() {
        return Err(ApplyError::DuplicateJob(id));
    }
    if spec.tasks == 0 || spec.tasks > MAX_TASKS {
        return Err(invalid(format!(
            "tasks is {}; a job needs 1..={MAX_TASKS} tasks",
            spec.tasks
        )));
    }
    match spec.gpu {
        GpuAsk::Whole(0) if spec.cpu_milli == 0 => {
            return Err(invalid(
                "asks for no GPU and no CPU; a task without GPUs must ask for CPU (cpu_milli > 0), else ask for at least one whole GPU or a share of one (gpu_milli 1..=1000)".into(),
            ))
        }
        GpuAsk::Whole(0) if spec.gpu_model.is_some() => {
            return Err(invalid(
                "asks for no GPU but names a GPU model; drop the model (use a node selector to choose nodes), or ask for GPUs".into(),
            ))
        }
        GpuAsk::Milli(m) if m == 0 || m > MILLI_PER_GPU => {
            return Err(invalid(format!(
                "gpu_milli is {m}; a share of one GPU must be 1..=1000 milli-GPUs"
            )))
        }
        _ => {}
    }
    if spec.time_limit_s == Some(0) {
        return Err(invalid(
            "time limit is 0 s; give a positive limit or none".into(),
        ));
    }
    if spec.grace_s > MAX_GRACE_S {
        return Err(invalid(format!(
            "grace period is {} s; it must be at most {MAX_GRACE_S} s",
            spec.grace_s
        )));
    }
    if spec.checkpoint_every_s == Some(0) {
        return Err(invalid(
            "checkpoint interval is 0 s; give a positive interval or none".into(),
        ));
    }
    if state.forgotten_up_to.is_some_and(|f| id <= f) {
        return Err(invalid(format!(
            "ids up to {} belong to forgotten jobs; use a higher id",
            state.forgotten_up_to.unwrap_or_default()
        )));
    }
    let mut deps: Vec<JobId> = spec.depends_on.iter().map(|d| d.job).collect();
    deps.sort();
    deps.dedup();
    if deps.len() != spec.depends_on.len() {
        return Err(invalid("lists a dependency twice".into()));
    }
    if deps.contains(&id) {
        return Err(invalid("depends on itself".into()));
    }
    for dep in &spec.depends_on {
        match state.job(dep.job) {
            None => {
                return Err(invalid(format!(
                    "depends on {}, which does not exist",
                    dep.job
                )))
            }
            Some(j) if j.state.is_terminal() => {
                let succeeded = matches!(j.state, JobState::Succeeded { .. });
                if !dep.when.met_by(succeeded) {
                    return Err(never(format!(
                        "it depends on {} ending {}, and it ended {}",
                        dep.job,
                        match dep.when {
                            After::Ok => "successfully",
                            After::Any => "at all",
                            After::Failed => "unsuccessfully",
                        },
                        j.state.name()
                    )));
                }
            }
            Some(_) => {}
        }
    }
    if let Some(a) = spec.array {
        if a.array > id {
            return Err(invalid(format!(
                "belongs to array {}, whose id must be its first job's, at most its own",
                a.array.0
            )));
        }
        if a.max_running == Some(0) {
            return Err(invalid(
                "its array allows 0 jobs to run at once; give at least 1, or no limit".into(),
            ));
        }
    }
    let Some(team) = state.teams.get(&spec.team) else {
        return Err(ApplyError::UnknownTeam {
            team: spec.team.clone(),
            known: state
                .teams
                .values()
                .filter(|t| {
                    !state
                        .teams
                        .values()
                        .any(|c| c.spec.parent.as_ref() == Some(&t.spec.name))
                })
                .map(|t| t.spec.name.clone())
                .collect(),
        });
    };
    let children: Vec<&str> = state
        .teams
        .values()
        .filter(|t| t.spec.parent.as_deref() == Some(team.spec.name.as_str()))
        .map(|t| t.spec.name.as_str())
        .collect();
    if !children.is_empty() {
        return Err(invalid(format!(
            "team {:?} has sub-teams; submit to one of: {}",
            spec.team,
            children.join(", ")
        )));
    }
    let (models, index) = state.team_index();
    if let Some(model) = &spec.gpu_model {
        if !models.contains(model) {
            return Err(never(format!(
                "no node has GPU model {model:?}; models in the cluster: {}",
                if models.is_empty() {
                    "none yet".to_string()
                } else {
                    models.join(", ")
                }
            )));
        }
    }
    // The nodes the job may use, walked lazily: a submission that fits stops at the first
    // nodes that hold it (every submission is checked; clusters have thousands of nodes).
    let eligible = || state.nodes.values().filter(|n| node_matches(spec, n));
    if eligible().next().is_none() {
        return Err(never(format!(
            "no node has GPU model {} and labels {:?}",
            spec.gpu_model.as_deref().unwrap_or("(any)"),
            spec.node_selector
        )));
    }
    // Per model: can one task fit a node, and can the whole gang fit the model's nodes?
    let t = index.by_name[&spec.team];
    let mut why_not = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        let nodes = || eligible().filter(|n| &n.spec.gpu_model == model);
        if nodes().next().is_none() {
            continue;
        }
        // Tasks the model's empty nodes hold, counted as far as the job's tasks (all of them
        // only where they fall short, for the message).
        let mut per_node: u64 = 0;
        for n in nodes() {
            per_node = per_node.saturating_add(tasks_per_empty_node(spec, n));
            if per_node >= u64::from(spec.tasks.max(1)) {
                break;
            }
        }
        if per_node == 0 {
            let gpus = match spec.gpu {
                GpuAsk::Whole(n) => format!("{n} GPU(s)"),
                GpuAsk::Milli(m) => format!("{m} milli-GPU"),
            };
            let biggest = nodes().map(|n| n.spec.gpus).max().unwrap_or(0);
            let cpu = nodes().map(|n| n.spec.cpu_milli).max().unwrap_or(0);
            let mem = nodes().map(|n| n.spec.mem_mib).max().unwrap_or(0);
            why_not.push(format!(
                "a task asks for {gpus}, {} CPU milli-cores and {} MiB but no {model} node has that much (at most {biggest} GPUs, {cpu} CPU milli-cores, {mem} MiB)",
                spec.cpu_milli, spec.mem_mib
            ));
            continue;
        }
        if per_node < u64::from(spec.tasks) {
            why_not.push(format!(
                "{} tasks asked but all {model} nodes together hold at most {per_node} such tasks",
                spec.tasks
            ));
            continue;
        }
        let over_max = index.lineage[t].iter().find_map(|&a| {
            let pool = &index.pools[a][index.pool_of_model[a][mi]];
            pool.max
                .filter(|&max| spec.milli_total() > max)
                .map(|max| (a, max))
        });
        if let Some((a, max)) = over_max {
            why_not.push(format!(
                "it needs {} GPUs of {model} but team {:?} may hold at most {}",
                spec.milli_total() as f64 / 1000.0,
                index.names[a],
                max / 1000
            ));
            continue;
        }
        return Ok(());
    }
    Err(never(why_not.join("; ")))
}

pub(crate) fn placement(
    state: &ClusterState,
    spec: &JobSpec,
    placement: &[TaskPlacement],
) -> Result<(), ApplyError> {
    let bad = |why: String| ApplyError::BadPlacement { job: spec.id, why };
    if placement.len() != spec.tasks as usize {
        return Err(bad(format!(
            "{} task placements for {} tasks",
            placement.len(),
            spec.tasks
        )));
    }
    let (gpus, milli) = task_shape(spec.gpu);
    let mut model: Option<&str> = None;
    let mut added: BTreeMap<NodeId, (Vec<u32>, u64, u64)> = BTreeMap::new();
    for task in placement {
        let node = state
            .nodes
            .get(&task.node)
            .ok_or_else(|| bad(format!("{} does not exist", task.node)))?;
        if node.state != NodeState::Ready {
            return Err(bad(format!("{} is {:?}", task.node, node.state)));
        }
        if !node_matches(spec, node) {
            return Err(bad(format!(
                "{} does not match the job's GPU model or labels",
                task.node
            )));
        }
        if *model.get_or_insert(&node.spec.gpu_model) != node.spec.gpu_model {
            return Err(bad("a gang must run on one GPU model".into()));
        }
        if task.gpus.len() != gpus || task.gpu_milli != milli {
            return Err(bad(format!(
                "each task takes {gpus} GPU(s) of {milli} milli-GPUs, not {} of {}",
                task.gpus.len(),
                task.gpu_milli
            )));
        }
        let entry = added
            .entry(task.node)
            .or_insert_with(|| (vec![0; node.spec.gpus as usize], 0, 0));
        for (i, &g) in task.gpus.iter().enumerate() {
            if g >= node.spec.gpus || task.gpus[..i].contains(&g) {
                return Err(bad(format!("GPU index {g} is invalid on {}", task.node)));
            }
            entry.0[g as usize] += task.gpu_milli;
        }
        entry.1 += spec.cpu_milli;
        entry.2 += spec.mem_mib;
    }
    for (id, (gpu_add, cpu, mem)) in &added {
        let node = &state.nodes[id];
        for (g, add) in gpu_add.iter().enumerate() {
            if node.gpu_used_milli[g] + add > MILLI_PER_GPU {
                return Err(bad(format!(
                    "GPU {g} of {id} has {} milli-GPUs free, not {add}",
                    MILLI_PER_GPU - node.gpu_used_milli[g]
                )));
            }
        }
        if node.cpu_used_milli + cpu > node.spec.cpu_milli
            || node.mem_used_mib + mem > node.spec.mem_mib
        {
            return Err(bad(format!("{id} lacks the CPU or memory")));
        }
    }
    debug_assert_eq!(placement_milli(placement), spec.milli_total());
    Ok(())
}
