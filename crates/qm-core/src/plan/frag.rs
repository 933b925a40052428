//! Fragmentation-aware placement: which free GPU capacity the coming work cannot use.
//!
//! The planner learns the workload's *mix* from the live jobs (pending and running): the most
//! common task shapes (GPU ask, CPU, memory, GPU model) and their frequencies. A node's
//! *fragmentation* is the free GPU milli the mix cannot use there, in expectation: for each
//! shape, all of the node's free GPU milli if the shape cannot run there at all (wrong model,
//! too little CPU or memory, too few GPUs with room), else the free milli of the GPUs too full
//! for it. A single task goes where its placement grows the fragmentation least (the idea of
//! fragmentation gradient descent, Weng et al., ATC '23), which keeps room for the tasks that
//! are likely to come instead of stranding it.

use crate::model::{GpuAsk, MILLI_PER_GPU};
use crate::state::Job;

/// The most shapes the mix keeps.
pub(crate) const MIX_SHAPES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeKey {
    /// Milli-GPUs each GPU must have free, and how many such GPUs.
    need: u32,
    count: u32,
    cpu: u64,
    mem: u64,
    /// Model index, or `u32::MAX` for any.
    model: u32,
}

/// The workload's most common task shapes, with their probabilities.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mix {
    shapes: Vec<(ShapeKey, f64)>,
    /// Model index of each (dense) node.
    pub node_model: Vec<u32>,
}

impl Mix {
    /// The mix of `jobs`, each counted once per task. `model_index` maps a model name to the
    /// planner's index.
    pub fn of<'j>(
        jobs: impl Iterator<Item = &'j Job>,
        model_index: impl Fn(&str) -> Option<usize>,
        node_model: Vec<u32>,
    ) -> Mix {
        // Few distinct shapes in practice: a vector searched from the last hit.
        let mut counts: Vec<(ShapeKey, u64)> = Vec::new();
        let mut last = 0;
        for job in jobs {
            let spec = &job.spec;
            let (need, count) = match spec.gpu {
                GpuAsk::Whole(k) => (MILLI_PER_GPU, k),
                GpuAsk::Milli(m) => (m, 1),
            };
            let model = match &spec.gpu_model {
                Some(m) => match model_index(m) {
                    Some(i) => i as u32,
                    None => continue,
                },
                None => u32::MAX,
            };
            let key = ShapeKey {
                need,
                count,
                cpu: spec.cpu_milli,
                mem: spec.mem_mib,
                model,
            };
            let tasks = u64::from(spec.tasks);
            if counts.get(last).is_some_and(|c| c.0 == key) {
                counts[last].1 += tasks;
            } else if let Some(i) = counts.iter().position(|c| c.0 == key) {
                counts[i].1 += tasks;
                last = i;
            } else {
                last = counts.len();
                counts.push((key, tasks));
            }
        }
        let mut shapes = counts;
        shapes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        shapes.truncate(MIX_SHAPES);
        let kept: u64 = shapes.iter().map(|s| s.1).sum();
        Mix {
            shapes: shapes
                .into_iter()
                .map(|(k, c)| (k, c as f64 / kept as f64))
                .collect(),
            node_model,
        }
    }

    /// The share of tasks in the mix that need whole nodes of `node_gpus` GPUs (or more).
    pub fn whole_node_share(&self, node_gpus: u32) -> f64 {
        self.shapes
            .iter()
            .filter(|(s, _)| s.need == MILLI_PER_GPU && s.count >= node_gpus.max(1))
            .map(|(_, p)| p)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// The expected free GPU milli of node `n` that the mix cannot use, were the node's GPU
    /// usage `used` and its free CPU and memory `cpu` and `mem`.
    pub fn frag(&self, n: u32, used: &[u32], cpu: u64, mem: u64) -> f64 {
        let model = self.node_model.get(n as usize).copied().unwrap_or(u32::MAX);
        let total: u32 = used.iter().map(|&u| MILLI_PER_GPU - u).sum();
        let mut sum = 0.0;
        for &(s, p) in &self.shapes {
            let hosts = (s.model == u32::MAX || s.model == model)
                && cpu >= s.cpu
                && mem >= s.mem
                && used
                    .iter()
                    .filter(|&&u| MILLI_PER_GPU - u >= s.need)
                    .count()
                    >= s.count as usize;
            let unusable = if hosts {
                used.iter()
                    .map(|&u| MILLI_PER_GPU - u)
                    .filter(|&f| f < s.need)
                    .sum()
            } else {
                total
            };
            sum += p * f64::from(unusable);
        }
        sum
    }
}
