//! The free capacity of every node during one run: CPU, memory, the free milli of each GPU,
//! GpuClustering's tags and the run's tie-break ranks.

use super::input::Models;
use super::{PackNode, Pod, MAX_NODE_GPUS};
use crate::trace::openb::MILLI;

/// The free capacity of every node during a run.
#[derive(Clone, Debug)]
pub(super) struct Room {
    pub(super) model: Vec<u32>,
    pub(super) gpus: Vec<usize>,
    pub(super) cpu: Vec<u64>,
    pub(super) mem: Vec<u64>,
    /// Free milli of each GPU.
    pub(super) free: Vec<[u32; MAX_NODE_GPUS]>,
    /// GpuClustering's tags: bit 0 a GPU share, bit `k` a pod of `k` whole GPUs (capped).
    pub(super) tags: Vec<u32>,
    /// Tie-break rank of each node (lower wins).
    pub(super) rank: Vec<u32>,
}

impl Room {
    pub(super) fn new(nodes: &[PackNode], models: &Models) -> Room {
        let mut free = vec![[0; MAX_NODE_GPUS]; nodes.len()];
        for (f, n) in free.iter_mut().zip(nodes) {
            f[..n.gpus as usize].fill(MILLI);
        }
        Room {
            model: nodes.iter().map(|n| models.index(&n.model)).collect(),
            gpus: nodes.iter().map(|n| n.gpus as usize).collect(),
            cpu: nodes.iter().map(|n| n.cpu_milli).collect(),
            mem: nodes.iter().map(|n| n.mem_mib).collect(),
            free,
            tags: vec![0; nodes.len()],
            rank: (0..nodes.len() as u32).collect(),
        }
    }

    pub(super) fn gpu_free(&self, n: usize) -> &[u32] {
        &self.free[n][..self.gpus[n]]
    }

    pub(super) fn total_free(&self, n: usize) -> u64 {
        self.gpu_free(n).iter().map(|&f| u64::from(f)).sum()
    }

    pub(super) fn model_ok(&self, n: usize, models: u32) -> bool {
        self.model[n] < 32 && models & (1 << self.model[n]) != 0
    }

    /// Whether pod `p` (with acceptable models `models`) fits node `n`.
    pub(super) fn feasible(&self, n: usize, p: &Pod, models: u32) -> bool {
        if self.cpu[n] < p.cpu_milli || self.mem[n] < p.mem_mib {
            return false;
        }
        match p.num_gpu {
            0 => true,
            1 => self.model_ok(n, models) && self.gpu_free(n).iter().any(|&f| f >= p.gpu_milli),
            k => {
                self.model_ok(n, models)
                    && self.gpu_free(n).iter().filter(|&&f| f == MILLI).count() >= k as usize
            }
        }
    }

    /// The lowest-indexed fully free GPUs, `k` of them.
    pub(super) fn lowest_free(&self, n: usize, k: u32) -> Vec<usize> {
        self.gpu_free(n)
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f == MILLI)
            .take(k as usize)
            .map(|(i, _)| i)
            .collect()
    }

    /// The GPU with the least free milli that still fits `milli`; ties to the lowest index.
    pub(super) fn tightest(&self, n: usize, milli: u32) -> usize {
        self.gpu_free(n)
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f >= milli)
            .min_by_key(|&(i, &f)| (f, i))
            .map_or(0, |(i, _)| i)
    }

    pub(super) fn take(&mut self, n: usize, p: &Pod, gpus: &[usize]) {
        self.cpu[n] -= p.cpu_milli;
        self.mem[n] -= p.mem_mib;
        for &g in gpus {
            self.free[n][g] -= p.gpu_milli;
        }
        if p.num_gpu > 0 {
            self.tags[n] |= tag(p);
        }
    }
}

/// A pod's kind for reports, with a sort key.
pub(super) fn kind(p: &Pod) -> (u32, String) {
    match p.num_gpu {
        0 => (0, "cpu".into()),
        _ if p.sharing() => (1, "share".into()),
        k => (k + 1, format!("{k}-gpu")),
    }
}

pub(super) fn tag(p: &Pod) -> u32 {
    if p.sharing() {
        1
    } else {
        1 << p.num_gpu.min(31)
    }
}
