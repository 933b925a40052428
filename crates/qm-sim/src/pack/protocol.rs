//! The packing protocol: one seeded stream per run draws the node ranks, the arrival order and
//! the tuning to the demand; each pod is placed once, in order, or dropped; after every pod the
//! arrived and allocated GPU milli are recorded.

use std::collections::HashMap;

use super::baselines::choose;
use super::curve::{PolicyRun, Records};
use super::fgd::Frag;
use super::quartermaster::Core;
use super::room::{kind, Room};
use super::{PackInput, PackPolicy, Pod, Rng};

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
            Some(core) => core.place(pod, step as u64),
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

/// Runs every policy over every seed, one thread per core. `progress` gets (runs done, runs).
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
