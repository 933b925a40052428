//! The FGD paper's baseline policies, implemented from their descriptions: `random`,
//! `dotprod`, `gpuclustering`, `gpupacking`, `bestfit`, and `fgd` through [`super::fgd`].
//! Each scores every feasible node with an integer and breaks ties by the run's node ranks.

use super::fgd::{fgd, Frag};
use super::room::{tag, Room};
use super::{PackPolicy, Pod, Rng};
use crate::trace::openb::MILLI;

/// The node (and GPUs) a baseline policy picks for a pod, or `None` if none is feasible.
pub(super) fn choose(
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

pub(super) fn dot_prod(room: &Room, n: usize, pod: &Pod) -> i64 {
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

pub(super) fn gpu_clustering(room: &Room, n: usize, pod: &Pod) -> i64 {
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

pub(super) fn gpu_packing(room: &Room, n: usize, pod: &Pod) -> i64 {
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

pub(super) fn best_fit(room: &Room, n: usize, pod: &Pod) -> i64 {
    let s = 0.5 * (room.cpu[n] - pod.cpu_milli) as f64 / 128_000.0
        + 0.5 * (room.total_free(n) - pod.milli_total()) as f64 / 8000.0;
    (100.0 * (1.0 - s)).floor() as i64
}
