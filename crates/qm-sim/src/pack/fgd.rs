//! FGD, fragmentation gradient descent (Weng et al., ATC '23): the target workload, a node's
//! expected fragmentation under it, and the policy's score.
//!
//! This is the paper's measure, implemented here from its description for the baseline alone.
//! It is kept apart from `qm-core`'s own fragmentation measure (`plan/frag.rs`, which learns
//! its mix from live jobs and also weighs memory) on purpose: the `fgd` baseline must stay the
//! paper's FGD, so that a change to our planner can never move the baseline it is compared
//! with.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::input::Models;
use super::room::Room;
use super::{Pod, MAX_NODE_GPUS};

/// One pod type of FGD's target workload, with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct PodType {
    pub cpu_milli: u64,
    pub gpu_milli: u32,
    pub num_gpu: u32,
    /// Acceptable models as a bit set over the cluster's models; all bits for any.
    pub(super) models: u32,
    pub p: f64,
}

/// A pod type: CPU, GPU share, GPU count, GPU spec.
pub(super) type TypeKey<'p> = (u64, u32, u32, &'p str);

/// FGD's target workload: the most frequent pod types of the original pod list (by CPU, GPU
/// share, GPU count and GPU spec; memory is ignored) until they cover 95 % of the pods, with
/// their frequencies renormalised.
pub fn target_workload(pods: &[Pod], models: &Models) -> Vec<PodType> {
    let mut counts: HashMap<TypeKey, usize> = HashMap::new();
    for p in pods {
        *counts
            .entry((p.cpu_milli, p.gpu_milli, p.num_gpu, p.gpu_spec.as_str()))
            .or_default() += 1;
    }
    let mut types: Vec<(TypeKey, usize)> = counts.into_iter().collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let need = pods.len() as f64 * 0.95;
    let mut taken = Vec::new();
    let mut covered = 0usize;
    for (key, count) in types {
        if covered as f64 >= need {
            break;
        }
        covered += count;
        taken.push((key, count));
    }
    taken
        .into_iter()
        .map(|((cpu_milli, gpu_milli, num_gpu, spec), count)| PodType {
            cpu_milli,
            gpu_milli,
            num_gpu,
            models: models.mask(spec),
            p: count as f64 / covered as f64,
        })
        .collect()
}

/// A fast hasher for the fragmentation memo (keys are small integers).
#[derive(Default)]
pub(super) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub(super) type FragKey = (u32, u64, [u32; MAX_NODE_GPUS]);

/// FGD's expected fragmentation of a node state, memoised by (model, free CPU, sorted free
/// GPU milli): nodes in the same state share one computation.
pub(super) struct Frag<'a> {
    pub(super) types: &'a [PodType],
    pub(super) memo: HashMap<FragKey, f64, BuildHasherDefault<FxHasher>>,
}

impl Frag<'_> {
    pub(super) fn of(&mut self, model: u32, cpu: u64, free: &[u32]) -> f64 {
        let mut key = [0u32; MAX_NODE_GPUS];
        key[..free.len()].copy_from_slice(free);
        key[..free.len()].sort_unstable();
        let types = self.types;
        *self
            .memo
            .entry((model, cpu, key))
            .or_insert_with(|| node_frag(types, model, cpu, free))
    }
}

/// Σ_m p_m · frag(m): for each target pod type, the free GPU milli it cannot use on this node.
pub(super) fn node_frag(types: &[PodType], model: u32, cpu: u64, free: &[u32]) -> f64 {
    let total: u64 = free.iter().map(|&f| u64::from(f)).sum();
    let mut sum = 0.0;
    for t in types {
        let model_ok = model < 32 && t.models & (1 << model) != 0;
        let frag = if t.num_gpu == 0 || !model_ok || cpu < t.cpu_milli {
            total
        } else {
            let fitting = free.iter().filter(|&&f| f >= t.gpu_milli).count();
            if fitting < t.num_gpu as usize {
                total
            } else {
                free.iter()
                    .filter(|&&f| f < t.gpu_milli)
                    .map(|&f| u64::from(f))
                    .sum()
            }
        };
        sum += t.p * frag as f64;
    }
    sum
}

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// FGD's score of node `n` for the pod, and for a share the GPU that reaches it.
pub(super) fn fgd(room: &Room, n: usize, pod: &Pod, frag: &mut Frag) -> (i64, Option<usize>) {
    let free = room.gpu_free(n);
    let model = room.model[n];
    let before = frag.of(model, room.cpu[n], free);
    let cpu_after = room.cpu[n] - pod.cpu_milli;
    let score = |after: f64| (100.0 * sigmoid((before - after) / 1000.0)).floor() as i64;
    let mut after = [0u32; MAX_NODE_GPUS];
    after[..free.len()].copy_from_slice(free);
    if pod.sharing() {
        let mut best: Option<(i64, usize)> = None;
        for (i, &f) in free.iter().enumerate() {
            if f < pod.gpu_milli {
                continue;
            }
            after[i] = f - pod.gpu_milli;
            let s = score(frag.of(model, cpu_after, &after[..free.len()]));
            after[i] = f;
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        let (s, i) = best.expect("feasible");
        (s, Some(i))
    } else {
        for g in room.lowest_free(n, pod.num_gpu) {
            after[g] = 0;
        }
        (score(frag.of(model, cpu_after, &after[..free.len()])), None)
    }
}
