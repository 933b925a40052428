//! Fragmentation-aware placement: which free GPU capacity the coming work cannot use.
//!
//! The planner learns the workload's *mix* from the live jobs (pending and running; the state
//! counts their tasks by shape as they come and go): the most
//! common task shapes (GPU ask, CPU, memory, GPU model) and their frequencies. A node's
//! *fragmentation* is the free GPU milli the mix cannot use there, in expectation: for each
//! shape, the free GPU milli its tasks would not take were only it to come, counting how many
//! of them the node's GPUs, CPU and memory still hold (all of it where none fits: wrong
//! model, too little CPU or memory, too few GPUs with room). A single task goes where its
//! placement grows the fragmentation least (the idea of fragmentation gradient descent, Weng
//! et al., ATC '23), which keeps room for the tasks that are likely to come instead of
//! stranding it.

use crate::model::MILLI_PER_GPU;
use crate::state::MixKey;

/// The most shapes the mix keeps.
pub(crate) const MIX_SHAPES: usize = 64;

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
    /// The mix of the live jobs, from the state's task counts by shape (`MixKey`).
    /// `model_index` maps a model name to the planner's index; shapes of other models are
    /// left out.
    pub fn of<'j>(
        counted: impl Iterator<Item = (&'j MixKey, &'j u64)>,
        model_index: impl Fn(&str) -> Option<usize>,
        node_model: Vec<u32>,
    ) -> Mix {
        let mut counts: Vec<(ShapeKey, u64)> = Vec::new();
        for ((need, count, cpu, mem, model), &tasks) in counted {
            let model = match model {
                Some(m) => match model_index(m) {
                    Some(i) => i as u32,
                    None => continue,
                },
                None => u32::MAX,
            };
            let key = ShapeKey {
                need: *need,
                count: *count,
                cpu: *cpu,
                mem: *mem,
                model,
            };
            counts.push((key, tasks));
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
    ///
    /// For each shape: how many of its tasks the node could still take, counting GPUs, CPU
    /// and memory alike; none, and all the node's free GPU milli is unusable to it; else the
    /// free milli of the GPUs those tasks would not take (the fullest GPUs that fit the shape
    /// are left over first). A node whose CPU or memory runs out before its GPUs thereby
    /// counts the GPUs it strands, which FGD's measure (can one task still fit?) does not.
    pub fn frag(&self, n: u32, used: &[u32], cpu: u64, mem: u64) -> f64 {
        let model = self.node_model.get(n as usize).copied().unwrap_or(u32::MAX);
        // Largest free first: the GPUs a shape's tasks take first.
        let mut buf = [0u32; 16];
        let mut heap = Vec::new();
        let free: &mut [u32] = if used.len() <= buf.len() {
            &mut buf[..used.len()]
        } else {
            heap.resize(used.len(), 0);
            &mut heap
        };
        for (f, &u) in free.iter_mut().zip(used) {
            *f = MILLI_PER_GPU - u;
        }
        free.sort_unstable_by(|a, b| b.cmp(a));
        let free: &[u32] = free;
        let total: u32 = free.iter().sum();
        let mut sum = 0.0;
        for &(s, p) in &self.shapes {
            let tasks = if s.model == u32::MAX || s.model == model {
                let by_gpu: u64 = if s.count == 1 {
                    free.iter().map(|&f| u64::from(f / s.need)).sum()
                } else {
                    free.iter().filter(|&&f| f >= s.need).count() as u64 / u64::from(s.count)
                };
                let by_cpu = cpu.checked_div(s.cpu).unwrap_or(u64::MAX);
                let by_mem = mem.checked_div(s.mem).unwrap_or(u64::MAX);
                by_gpu.min(by_cpu).min(by_mem)
            } else {
                0
            };
            let usable: u32 = if tasks == 0 {
                0
            } else if s.count == 1 {
                // Largest GPUs first, each holding as many tasks as fit, until `tasks` are
                // placed.
                let mut left = tasks;
                let mut taken = 0;
                for &f in free.iter().take_while(|&&f| f >= s.need) {
                    if left == 0 {
                        break;
                    }
                    taken += f;
                    left = left.saturating_sub(u64::from(f / s.need));
                }
                taken
            } else {
                free.iter()
                    .take((tasks * u64::from(s.count)) as usize)
                    .sum()
            };
            sum += p * f64::from(total - usable);
        }
        sum
    }
}
