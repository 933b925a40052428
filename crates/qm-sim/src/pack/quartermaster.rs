//! The `quartermaster` policy: each pod, CPU-only ones included, is submitted to a real
//! `qm-core` [`ClusterState`] and started only if `decide` starts it.

use qm_core::{
    apply, decide, ClusterState, Event, JobId, JobSpec, NodeId, NodeSpec, SchedulerConfig, TeamSpec,
};

use super::{PackInput, Pod};

/// The `qm-core` planner, fed one pod at a time.
pub(super) struct Core {
    pub(super) state: ClusterState,
}

impl Core {
    pub(super) fn new(input: &PackInput) -> Core {
        let mut state = ClusterState::new(SchedulerConfig::default());
        // The core has no nodes without GPUs (the protocol's cluster has none either).
        for (i, n) in input.nodes.iter().enumerate().filter(|(_, n)| n.gpus > 0) {
            let spec = NodeSpec {
                id: NodeId(i as u32),
                name: n.name.clone(),
                gpus: n.gpus,
                gpu_model: n.model.clone(),
                gpu_mem_mib: 0,
                cpu_milli: n.cpu_milli,
                mem_mib: n.mem_mib,
                labels: Default::default(),
                topology: Vec::new(),
            };
            apply(&mut state, Event::NodeUp(spec)).expect("a valid node");
        }
        let gpus: u32 = input.nodes.iter().map(|n| n.gpus).sum();
        apply(&mut state, Event::SetTeam(TeamSpec::new("openb", gpus))).expect("a valid team");
        Core { state }
    }

    /// Submits the pod as a job, lets `decide` start it or not, and forgets it if not.
    pub(super) fn place(&mut self, pod: &Pod, step: u64) -> Option<(usize, Vec<usize>)> {
        let id = JobId(step + 1);
        let spec = JobSpec {
            id,
            name: pod.name.clone(),
            team: "openb".into(),
            user: String::new(),
            priority: 0,
            tasks: 1,
            gpu: pod.gpu_ask().unwrap_or(qm_core::GpuAsk::Whole(0)),
            cpu_milli: pod.cpu_milli,
            mem_mib: pod.mem_mib,
            gpu_model: pod.first_model(),
            node_selector: Default::default(),
            time_limit_s: None,
            runtime_estimate_s: None,
            preemptible: false,
            grace_s: 0,
            min_run_s: 0,
            checkpoint_every_s: None,
            depends_on: Vec::new(),
            array: None,
            submit_s: step,
        };
        if apply(&mut self.state, Event::Submit(spec)).is_err() {
            return None; // Never fits this cluster.
        }
        let plan = decide(&self.state, step);
        let start = plan.starts.into_iter().find(|s| s.job == id);
        match start {
            Some(s) => {
                let task = &s.placement[0];
                let n = task.node.0 as usize;
                let gpus = task.gpus.iter().map(|&g| g as usize).collect();
                apply(&mut self.state, s.event(step)).expect("a planned start applies");
                Some((n, gpus))
            }
            None => {
                apply(
                    &mut self.state,
                    Event::Cancel {
                        job: id,
                        at_s: step,
                        unmet: None,
                    },
                )
                .expect("a pending job cancels");
                apply(
                    &mut self.state,
                    Event::Forget {
                        before_s: step + 1,
                        jobs: Vec::new(),
                    },
                )
                .expect("forgetting ended jobs");
                None
            }
        }
    }
}
