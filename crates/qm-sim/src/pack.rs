//! `qm sim pack`: the packing protocol of the FGD paper (Weng et al., "Beware of
//! Fragmentation", USENIX ATC '23) on the Alibaba openb trace, with its baselines and
//! Quartermaster's own placement in the same run.
//!
//! # The protocol
//!
//! - **Cluster**: a node list (`sn,cpu_milli,memory_mib,gpu,model`). Each node has CPU, memory
//!   and `gpu` GPUs of 1000 milli-GPUs each.
//! - **Workload**: a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec]`; other
//!   columns are ignored, timestamps too). One seeded random stream per run draws, in this
//!   order: the nodes' tie-break ranks (a permutation of the name-sorted nodes), the arrival
//!   order (pods sorted by name, then shuffled), and the *tuning* to `demand` × the cluster's
//!   GPU milli: pods drawn with replacement are appended until the next draw would pass the
//!   target by its per-GPU milli, or random pods are removed while the total is above it.
//! - **Placement**: each pod is tried once, in order, with no departures and no retries. A pod
//!   that fits no node is dropped; its GPUs still count as arrived.
//! - **Metric**: after every pod, arrived and allocated GPU milli. The curve's column `k` is the
//!   mean allocation % over the records whose arrived demand rounds (half to even) to `k` %
//!   (or to `k`±1 where none does); column 130 is the allocation % at the end of the run.
//!
//! # Policies
//!
//! The paper's six: `random`, `dotprod`, `gpuclustering`, `gpupacking`, `bestfit` and `fgd`
//! (fragmentation gradient descent), each scoring every feasible node with an integer 0..100
//! and breaking ties by the run's node ranks; `quartermaster` is the planner of `qm-core`
//! itself, driven exactly as the server drives it (see [`PackPolicy::Quartermaster`]).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::str::FromStr;

use qm_core::{
    apply, decide, ClusterState, Event, JobId, JobSpec, NodeId, NodeSpec, SchedulerConfig, TeamSpec,
};

use crate::trace::openb::MILLI;
pub use crate::trace::openb::{
    load_nodes, load_pods, parse_nodes, parse_pods, PackNode, Pod, MAX_NODE_GPUS,
};

/// The curve's last column, in % of the cluster's GPUs arrived.
pub const CURVE_END: usize = 130;

/// A placement policy of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PackPolicy {
    /// A uniformly random feasible node; a random fitting GPU for a share.
    Random,
    /// The smallest dot product of the node's free (CPU, GPU) and the pod's ask.
    DotProd,
    /// Nodes whose GPU pods are of the pod's kind first.
    GpuClustering,
    /// Partly used GPUs first, then partly used nodes, then whole free nodes.
    GpuPacking,
    /// The least CPU and GPU left over, half and half.
    BestFit,
    /// Fragmentation gradient descent: the least growth of the expected fragmentation.
    Fgd,
    /// The `qm-core` planner: each pod is submitted and started or dropped by `decide`.
    ///
    /// - One team owns the cluster; pods are jobs of one task, never preempted.
    /// - `qm-core` schedules GPU jobs only and refuses CPU-only ones, so CPU-only pods are
    ///   placed beside it by a fixed rule: the feasible node with the least free GPU milli, then
    ///   the least free CPU, then the lowest rank (they take the CPU of nodes with the least GPU
    ///   left to strand).
    /// - A job names one GPU model, so a pod that accepts several takes the first listed.
    Quartermaster,
}

impl PackPolicy {
    pub const ALL: [PackPolicy; 7] = [
        PackPolicy::Random,
        PackPolicy::DotProd,
        PackPolicy::GpuClustering,
        PackPolicy::GpuPacking,
        PackPolicy::BestFit,
        PackPolicy::Fgd,
        PackPolicy::Quartermaster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PackPolicy::Random => "random",
            PackPolicy::DotProd => "dotprod",
            PackPolicy::GpuClustering => "gpuclustering",
            PackPolicy::GpuPacking => "gpupacking",
            PackPolicy::BestFit => "bestfit",
            PackPolicy::Fgd => "fgd",
            PackPolicy::Quartermaster => "quartermaster",
        }
    }
}

impl fmt::Display for PackPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name; its message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPackPolicy(pub String);

impl fmt::Display for UnknownPackPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = PackPolicy::ALL.iter().map(|p| p.name()).collect();
        write!(
            f,
            "unknown packing policy {:?}; valid policies: {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownPackPolicy {}

impl FromStr for PackPolicy {
    type Err = UnknownPackPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase();
        PackPolicy::ALL
            .into_iter()
            .find(|p| p.name() == key)
            .ok_or_else(|| UnknownPackPolicy(s.to_string()))
    }
}

/// A small, fast, seeded random stream (SplitMix64): the same seed gives the same run on every
/// platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// One pod type of FGD's target workload, with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct PodType {
    pub cpu_milli: u64,
    pub gpu_milli: u32,
    pub num_gpu: u32,
    /// Acceptable models as a bit set over the cluster's models; all bits for any.
    models: u32,
    pub p: f64,
}

/// A pod type: CPU, GPU share, GPU count, GPU spec.
type TypeKey<'p> = (u64, u32, u32, &'p str);

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

/// The cluster's GPU models, for bit sets of acceptable models.
#[derive(Clone, Debug)]
pub struct Models(Vec<String>);

impl Models {
    fn of(nodes: &[PackNode]) -> Result<Models, String> {
        let mut names: Vec<String> = nodes.iter().map(|n| n.model.clone()).collect();
        names.sort();
        names.dedup();
        if names.len() > 32 {
            return Err(format!(
                "the node list has {} GPU models; the packing simulator handles at most 32",
                names.len()
            ));
        }
        Ok(Models(names))
    }

    fn index(&self, model: &str) -> u32 {
        self.0
            .binary_search_by(|m| m.as_str().cmp(model))
            .map_or(u32::MAX, |i| i as u32)
    }

    /// The models a `gpu_spec` accepts; all of them for an empty spec.
    fn mask(&self, spec: &str) -> u32 {
        if spec.trim().is_empty() {
            return u32::MAX;
        }
        spec.split('|')
            .map(str::trim)
            .map(|m| self.index(m))
            .filter(|&i| i < 32)
            .fold(0, |acc, i| acc | (1 << i))
    }
}

/// The free capacity of every node during a run.
#[derive(Clone, Debug)]
struct Room {
    model: Vec<u32>,
    gpus: Vec<usize>,
    cpu: Vec<u64>,
    mem: Vec<u64>,
    /// Free milli of each GPU.
    free: Vec<[u32; MAX_NODE_GPUS]>,
    /// GpuClustering's tags: bit 0 a GPU share, bit `k` a pod of `k` whole GPUs (capped).
    tags: Vec<u32>,
    /// Tie-break rank of each node (lower wins).
    rank: Vec<u32>,
}

impl Room {
    fn new(nodes: &[PackNode], models: &Models) -> Room {
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

    fn gpu_free(&self, n: usize) -> &[u32] {
        &self.free[n][..self.gpus[n]]
    }

    fn total_free(&self, n: usize) -> u64 {
        self.gpu_free(n).iter().map(|&f| u64::from(f)).sum()
    }

    fn model_ok(&self, n: usize, models: u32) -> bool {
        self.model[n] < 32 && models & (1 << self.model[n]) != 0
    }

    /// Whether pod `p` (with acceptable models `models`) fits node `n`.
    fn feasible(&self, n: usize, p: &Pod, models: u32) -> bool {
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
    fn lowest_free(&self, n: usize, k: u32) -> Vec<usize> {
        self.gpu_free(n)
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f == MILLI)
            .take(k as usize)
            .map(|(i, _)| i)
            .collect()
    }

    /// The GPU with the least free milli that still fits `milli`; ties to the lowest index.
    fn tightest(&self, n: usize, milli: u32) -> usize {
        self.gpu_free(n)
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f >= milli)
            .min_by_key(|&(i, &f)| (f, i))
            .map_or(0, |(i, _)| i)
    }

    fn take(&mut self, n: usize, p: &Pod, gpus: &[usize]) {
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
fn kind(p: &Pod) -> (u32, String) {
    match p.num_gpu {
        0 => (0, "cpu".into()),
        _ if p.sharing() => (1, "share".into()),
        k => (k + 1, format!("{k}-gpu")),
    }
}

fn tag(p: &Pod) -> u32 {
    if p.sharing() {
        1
    } else {
        1 << p.num_gpu.min(31)
    }
}

/// A fast hasher for the fragmentation memo (keys are small integers).
#[derive(Default)]
struct FxHasher(u64);

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

type FragKey = (u32, u64, [u32; MAX_NODE_GPUS]);

/// FGD's expected fragmentation of a node state, memoised by (model, free CPU, sorted free
/// GPU milli): nodes in the same state share one computation.
struct Frag<'a> {
    types: &'a [PodType],
    memo: HashMap<FragKey, f64, BuildHasherDefault<FxHasher>>,
}

impl Frag<'_> {
    fn of(&mut self, model: u32, cpu: u64, free: &[u32]) -> f64 {
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
fn node_frag(types: &[PodType], model: u32, cpu: u64, free: &[u32]) -> f64 {
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

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One run's record after each pod: (arrived milli, allocated milli).
#[derive(Clone, Debug, Default)]
struct Records(Vec<(u64, u64)>);

/// What one seed of one policy measured.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedRun {
    pub seed: u64,
    pub pods: usize,
    pub unscheduled: usize,
    /// Unscheduled pods by kind: `cpu`, `share`, `1-gpu`, `2-gpu`, ... (in that order).
    pub unscheduled_by_kind: Vec<(String, usize)>,
    pub arrived_milli: u64,
    pub allocated_milli: u64,
    /// GPU allocation % at the end of the run (column 130).
    pub alloc_pct_at_end: f64,
    /// Columns 0..=130: the mean allocation % where the arrived demand was `k` % of the GPUs.
    pub curve: Vec<Option<f64>>,
}

/// Rounds half to even, as numpy does.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Records {
    fn curve(&self, total_milli: u64) -> Vec<Option<f64>> {
        let unit = total_milli as f64 / 100.0;
        let mut sums = vec![(0.0f64, 0usize); CURVE_END + 2];
        let points: Vec<(i64, f64)> = self
            .0
            .iter()
            .map(|&(arr, alloc)| {
                (
                    round_half_even(arr as f64 / unit) as i64,
                    round2(alloc as f64 / unit),
                )
            })
            .collect();
        for &(k, a) in &points {
            if (0..=CURVE_END as i64 + 1).contains(&k) {
                let s = &mut sums[k as usize];
                s.0 += a;
                s.1 += 1;
            }
        }
        (0..=CURVE_END)
            .map(|k| {
                if sums[k].1 > 0 {
                    return Some(round2(sums[k].0 / sums[k].1 as f64));
                }
                let near: Vec<f64> = points
                    .iter()
                    .filter(|&&(a, _)| (a - k as i64).abs() <= 1)
                    .map(|&(_, v)| v)
                    .collect();
                (!near.is_empty()).then(|| round2(near.iter().sum::<f64>() / near.len() as f64))
            })
            .collect()
    }
}

/// The pods of one run, in arrival order (indices into `pods`), tuned to `demand`.
pub fn arrivals(pods: &[Pod], total_milli: u64, demand: f64, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&a, &b| pods[a].name.cmp(&pods[b].name));
    rng.shuffle(&mut order);
    let target = (demand * total_milli as f64).round() as u64;
    let mut d: u64 = pods.iter().map(Pod::milli_total).sum();
    if d < target {
        loop {
            let i = rng.below(pods.len());
            if d + u64::from(pods[i].gpu_milli) > target {
                break;
            }
            d += pods[i].milli_total();
            order.push(i);
        }
    } else {
        while d > target && !order.is_empty() {
            let k = rng.below(order.len());
            d -= pods[order[k]].milli_total();
            order.remove(k);
        }
    }
    order
}

/// The protocol's inputs, shared by every run.
pub struct PackInput {
    pub nodes: Vec<PackNode>,
    pub pods: Vec<Pod>,
    pub demand: f64,
    models: Models,
    types: Vec<PodType>,
    masks: Vec<u32>,
}

impl PackInput {
    pub fn new(nodes: Vec<PackNode>, pods: Vec<Pod>, demand: f64) -> Result<PackInput, String> {
        if !(demand > 0.0 && demand <= 10.0) {
            return Err(format!(
                "demand {demand} is out of range; give a multiple of the cluster's GPUs in (0, 10], such as 1.3"
            ));
        }
        let models = Models::of(&nodes)?;
        if nodes.iter().all(|n| n.gpus == 0) {
            return Err("the node list has no GPUs".into());
        }
        let types = target_workload(&pods, &models);
        let masks = pods.iter().map(|p| models.mask(&p.gpu_spec)).collect();
        Ok(PackInput {
            nodes,
            pods,
            demand,
            models,
            types,
            masks,
        })
    }

    pub fn total_milli(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| u64::from(n.gpus) * u64::from(MILLI))
            .sum()
    }

    /// FGD's target workload for this pod list.
    pub fn target_workload(&self) -> &[PodType] {
        &self.types
    }
}

/// Runs one seed of one policy.
pub fn run_seed(input: &PackInput, policy: PackPolicy, seed: u64) -> SeedRun {
    let mut rng = Rng::new(seed);
    let mut room = Room::new(&input.nodes, &input.models);
    let mut by_name: Vec<usize> = (0..input.nodes.len()).collect();
    by_name.sort_by(|&a, &b| input.nodes[a].name.cmp(&input.nodes[b].name));
    let mut perm: Vec<u32> = (0..input.nodes.len() as u32).collect();
    rng.shuffle(&mut perm);
    for (&n, &r) in by_name.iter().zip(&perm) {
        room.rank[n] = r;
    }
    let total = input.total_milli();
    let order = arrivals(&input.pods, total, input.demand, &mut rng);
    let mut frag = Frag {
        types: &input.types,
        memo: HashMap::default(),
    };
    let mut qm = (policy == PackPolicy::Quartermaster).then(|| Core::new(input));
    let mut records = Records(Vec::with_capacity(order.len()));
    let (mut arrived, mut allocated, mut unscheduled) = (0u64, 0u64, 0usize);
    let mut by_kind: std::collections::BTreeMap<(u32, String), usize> = Default::default();
    for (step, &i) in order.iter().enumerate() {
        let pod = &input.pods[i];
        let models = input.masks[i];
        let choice = match qm.as_mut() {
            Some(core) if pod.num_gpu > 0 => core.place(input, &room, pod, step as u64),
            Some(_) => beside_core(&room, pod),
            None => choose(policy, &room, pod, models, &mut rng, &mut frag),
        };
        arrived += pod.milli_total();
        match choice {
            Some((n, gpus)) => {
                debug_assert!(
                    room.feasible(n, pod, u32::MAX),
                    "a placement that does not fit"
                );
                room.take(n, pod, &gpus);
                allocated += pod.milli_total();
            }
            None => {
                unscheduled += 1;
                *by_kind.entry(kind(pod)).or_default() += 1;
            }
        }
        records.0.push((arrived, allocated));
    }
    SeedRun {
        seed,
        pods: order.len(),
        unscheduled,
        unscheduled_by_kind: by_kind.into_iter().map(|((_, k), c)| (k, c)).collect(),
        arrived_milli: arrived,
        allocated_milli: allocated,
        alloc_pct_at_end: allocated as f64 * 100.0 / total as f64,
        curve: records.curve(total),
    }
}

/// The node (and GPUs) a baseline policy picks for a pod, or `None` if none is feasible.
fn choose(
    policy: PackPolicy,
    room: &Room,
    pod: &Pod,
    models: u32,
    rng: &mut Rng,
    frag: &mut Frag,
) -> Option<(usize, Vec<usize>)> {
    let n_nodes = room.cpu.len();
    let feasible = (0..n_nodes).filter(|&n| room.feasible(n, pod, models));
    if policy == PackPolicy::Random {
        let all: Vec<usize> = feasible.collect();
        if all.is_empty() {
            return None;
        }
        let n = all[rng.below(all.len())];
        let gpus = if pod.sharing() {
            let fit: Vec<usize> = room
                .gpu_free(n)
                .iter()
                .enumerate()
                .filter(|&(_, &f)| f >= pod.gpu_milli)
                .map(|(i, _)| i)
                .collect();
            vec![fit[rng.below(fit.len())]]
        } else {
            room.lowest_free(n, pod.num_gpu)
        };
        return Some((n, gpus));
    }
    // (score, rank, node, GPU for a share chosen while scoring)
    let mut best: Option<(i64, u32, usize, Option<usize>)> = None;
    for n in feasible {
        let (score, gpu) = match policy {
            PackPolicy::DotProd => (dot_prod(room, n, pod), None),
            PackPolicy::GpuClustering => (gpu_clustering(room, n, pod), None),
            PackPolicy::GpuPacking => (gpu_packing(room, n, pod), None),
            PackPolicy::BestFit => (best_fit(room, n, pod), None),
            PackPolicy::Fgd => {
                let (s, g) = fgd(room, n, pod, frag);
                (s, g)
            }
            PackPolicy::Random | PackPolicy::Quartermaster => unreachable!("handled apart"),
        };
        let better = match best {
            None => true,
            Some((s, r, _, _)) => score > s || (score == s && room.rank[n] < r),
        };
        if better {
            best = Some((score, room.rank[n], n, gpu));
        }
    }
    let (_, _, n, gpu) = best?;
    let gpus = if pod.sharing() {
        vec![gpu.unwrap_or_else(|| room.tightest(n, pod.gpu_milli))]
    } else {
        room.lowest_free(n, pod.num_gpu)
    };
    Some((n, gpus))
}

fn dot_prod(room: &Room, n: usize, pod: &Pod) -> i64 {
    let v = (
        room.cpu[n] as f64 / 128_000.0,
        room.total_free(n) as f64 / 8000.0,
    );
    let u = (
        pod.cpu_milli as f64 / 128_000.0,
        pod.milli_total() as f64 / 8000.0,
    );
    (100.0 * (1.0 - (v.0 * u.0 + v.1 * u.1) / 2.0)).floor() as i64
}

fn gpu_clustering(room: &Room, n: usize, pod: &Pod) -> i64 {
    if pod.num_gpu == 0 {
        return 0;
    }
    let g = room.total_free(n) as i64;
    let b = (25 * (8000 - g)).div_euclid(8000);
    let t = tag(pod);
    let tags = room.tags[n];
    if tags == t {
        75 + b
    } else if tags & t != 0 {
        50 + b
    } else if tags == 0 {
        25 + b
    } else {
        b
    }
}

fn gpu_packing(room: &Room, n: usize, pod: &Pod) -> i64 {
    if pod.num_gpu == 0 {
        return 0;
    }
    let free = room.gpu_free(n);
    let g = free.len() as i64;
    if free.iter().all(|&f| f == MILLI) {
        return (33 - g).max(g);
    }
    let mut fit: Vec<u32> = free
        .iter()
        .copied()
        .filter(|&f| f >= pod.gpu_milli)
        .collect();
    fit.sort(); // stable: ascending free
    let first = &fit[..(pod.num_gpu as usize).min(fit.len())];
    let whole = first.iter().filter(|&&f| f == MILLI).count() as i64;
    if whole > 0 {
        (50 - whole).max(33)
    } else {
        let s: i64 = first.iter().map(|&f| i64::from(f * 100 / 1000)).sum();
        (100 - s / 10).max(50)
    }
}

fn best_fit(room: &Room, n: usize, pod: &Pod) -> i64 {
    let s = 0.5 * (room.cpu[n] - pod.cpu_milli) as f64 / 128_000.0
        + 0.5 * (room.total_free(n) - pod.milli_total()) as f64 / 8000.0;
    (100.0 * (1.0 - s)).floor() as i64
}

/// FGD's score of node `n` for the pod, and for a share the GPU that reaches it.
fn fgd(room: &Room, n: usize, pod: &Pod, frag: &mut Frag) -> (i64, Option<usize>) {
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

/// Where CPU-only pods go in a Quartermaster run (`qm-core` refuses zero-GPU jobs): the feasible
/// node with the least free GPU milli, then the least free CPU, then the lowest rank.
fn beside_core(room: &Room, pod: &Pod) -> Option<(usize, Vec<usize>)> {
    (0..room.cpu.len())
        .filter(|&n| room.feasible(n, pod, u32::MAX))
        .min_by_key(|&n| (room.total_free(n), room.cpu[n], room.rank[n]))
        .map(|n| (n, Vec::new()))
}

/// The `qm-core` planner, fed one pod at a time.
struct Core {
    state: ClusterState,
}

impl Core {
    fn new(input: &PackInput) -> Core {
        let mut state = ClusterState::new(SchedulerConfig::default());
        // Nodes without GPUs take no jobs of the core (CPU-only pods go beside it).
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
    fn place(
        &mut self,
        input: &PackInput,
        room: &Room,
        pod: &Pod,
        step: u64,
    ) -> Option<(usize, Vec<usize>)> {
        let _ = room;
        let id = JobId(step + 1);
        let spec = JobSpec {
            id,
            name: pod.name.clone(),
            team: "openb".into(),
            user: String::new(),
            priority: 0,
            tasks: 1,
            gpu: pod.gpu_ask().expect("a pod with GPUs"),
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
            submit_s: step,
        };
        let _ = input;
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
                apply(
                    &mut self.state,
                    Event::Start {
                        job: id,
                        placement: s.placement,
                        admission: s.admission,
                        at_s: step,
                    },
                )
                .expect("a planned start applies");
                Some((n, gpus))
            }
            None => {
                apply(
                    &mut self.state,
                    Event::Cancel {
                        job: id,
                        at_s: step,
                    },
                )
                .expect("a pending job cancels");
                apply(&mut self.state, Event::Forget { before_s: step + 1 })
                    .expect("forgetting ended jobs");
                None
            }
        }
    }
}

/// A policy's result over all seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRun {
    pub policy: PackPolicy,
    pub seeds: Vec<SeedRun>,
}

impl PolicyRun {
    /// Mean over seeds of the allocation % at the end (column 130).
    pub fn alloc_pct_at_end(&self) -> f64 {
        mean(self.seeds.iter().map(|s| s.alloc_pct_at_end))
    }

    /// Mean over seeds of each column (seeds without the column are left out).
    pub fn curve(&self) -> Vec<Option<f64>> {
        (0..=CURVE_END)
            .map(|k| {
                let vals: Vec<f64> = self.seeds.iter().filter_map(|s| s.curve[k]).collect();
                (!vals.is_empty()).then(|| round2(mean(vals.into_iter())))
            })
            .collect()
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// Runs every policy over every seed, two threads at a time. `progress` gets (runs done, runs).
pub fn run_all(
    input: &PackInput,
    policies: &[PackPolicy],
    seeds: &[u64],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<PolicyRun> {
    let jobs: Vec<(PackPolicy, u64)> = policies
        .iter()
        .flat_map(|&p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(policy, seed)) = jobs.get(i) else {
                    break;
                };
                let run = run_seed(input, policy, seed);
                results.lock().expect("no panics").push((i, run));
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(d, jobs.len());
            });
        }
    });
    let mut results = results.into_inner().expect("no panics");
    results.sort_by_key(|r| r.0);
    policies
        .iter()
        .map(|&policy| PolicyRun {
            policy,
            seeds: results
                .iter()
                .filter(|(i, _)| jobs[*i].0 == policy)
                .map(|(_, r)| r.clone())
                .collect(),
        })
        .collect()
}

/// Parses `42-51` (inclusive) or `1,5,9` (or a mix) into seeds.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let bad =
        || format!("bad seeds {text:?}; expected a range such as 42-51 or a list such as 42,43,50");
    let mut seeds = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a.trim().parse().map_err(|_| bad())?;
                let b: u64 = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a >= 10_000 {
                    return Err(bad());
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(seeds)
}

/// What `report.json` of `qm sim pack` holds besides the policies.
#[derive(Clone, Debug)]
pub struct PackMeta {
    pub nodes_file: String,
    pub pods_file: String,
    pub demand: f64,
    pub seeds: Vec<u64>,
}

fn sd(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values.iter().copied());
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// The report as JSON: `{"policies": [{"policy", "alloc_pct_at_130", "curve", ...}], ...}`.
pub fn report_json(meta: &PackMeta, input: &PackInput, runs: &[PolicyRun]) -> serde_json::Value {
    let gpus = input.total_milli() / u64::from(MILLI);
    let policies: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let ends: Vec<f64> = r.seeds.iter().map(|s| s.alloc_pct_at_end).collect();
            let at_end = r.alloc_pct_at_end();
            serde_json::json!({
                "policy": r.policy.name(),
                "alloc_pct_at_130": round2(at_end),
                "alloc_pct_sd": round2(sd(&ends)),
                "unallocated_gpus": round2(gpus as f64 * (1.0 - at_end / 100.0)),
                "unscheduled_pods_mean": mean(r.seeds.iter().map(|s| s.unscheduled as f64)),
                "curve": r.curve(),
                "seeds": r.seeds.iter().map(|s| serde_json::json!({
                    "seed": s.seed,
                    "pods": s.pods,
                    "unscheduled": s.unscheduled,
                    "unscheduled_by_kind": s.unscheduled_by_kind.iter().cloned().collect::<std::collections::BTreeMap<String, usize>>(),
                    "arrived_milli": s.arrived_milli,
                    "allocated_milli": s.allocated_milli,
                    "alloc_pct_at_130": round2(s.alloc_pct_at_end),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "nodes": meta.nodes_file,
        "pods": meta.pods_file,
        "cluster_nodes": input.nodes.len(),
        "gpus": gpus,
        "trace_pods": input.pods.len(),
        "demand": meta.demand,
        "seeds": meta.seeds,
        "target_workload_types": input.types.len(),
        "policies": policies,
    })
}

/// The comparison table printed at the end of a run (Markdown).
pub fn table(input: &PackInput, runs: &[PolicyRun]) -> String {
    let gpus = (input.total_milli() / u64::from(MILLI)) as f64;
    let mut out = String::from(
        "| policy | GPU allocation % at the end (mean) | SD | unallocated GPUs | unscheduled pods |\n|---|---|---|---|---|\n",
    );
    for r in runs {
        let ends: Vec<f64> = r.seeds.iter().map(|s| s.alloc_pct_at_end).collect();
        let at_end = r.alloc_pct_at_end();
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            r.policy.name(),
            at_end,
            sd(&ends),
            gpus * (1.0 - at_end / 100.0),
            mean(r.seeds.iter().map(|s| s.unscheduled as f64)),
        ));
    }
    out
}

/// Writes `report.json`, `report.md` and `alloc.svg` (allocation against arrived demand).
pub fn write_report(
    dir: &Path,
    meta: &PackMeta,
    input: &PackInput,
    runs: &[PolicyRun],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = report_json(meta, input, runs);
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json).expect("serialisable") + "\n",
    )?;
    let series: Vec<crate::svg::Series> = runs
        .iter()
        .map(|r| crate::svg::Series {
            name: r.policy.name().to_string(),
            points: r
                .curve()
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (k as f64, v)))
                .collect(),
        })
        .collect();
    std::fs::write(
        dir.join("alloc.svg"),
        crate::svg::line_chart(
            "GPU allocation against arrived demand (mean over seeds)",
            "arrived GPU demand (% of the cluster's GPUs)",
            "allocated GPUs (%)",
            &series,
        ),
    )?;
    let seeds: Vec<String> = meta.seeds.iter().map(u64::to_string).collect();
    let md = format!(
        "# Packing: {pods} on {nodes}\n\n\
         {n} nodes, {gpus} GPUs; {trace_pods} pods in the list, tuned to {demand} × the GPUs; \
         seeds {seeds}.\n\n{table}\n![allocation](alloc.svg)\n",
        pods = meta.pods_file,
        nodes = meta.nodes_file,
        n = input.nodes.len(),
        gpus = input.total_milli() / u64::from(MILLI),
        trace_pods = input.pods.len(),
        demand = meta.demand,
        seeds = seeds.join(", "),
        table = table(input, runs),
    );
    std::fs::write(dir.join("report.md"), md)
}
