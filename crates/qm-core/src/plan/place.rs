//! Placement: where the tasks of one job go, given the free capacity of a [`View`].
//!
//! - A single whole-GPU task goes to the node with the fewest whole free GPUs that still fit
//!   it (best fit), keeping whole nodes free for gangs.
//! - A fractional task goes to the partly used GPU with the least room that still fits it,
//!   and only then to a whole free GPU, on the fullest node that has one.
//! - A gang goes to the smallest topology domain that can hold it all (best fit, level by
//!   level); when no domain can, it takes the domains with the most room first and best-fits
//!   the remainder, so it spans as few domains and nodes as possible.
//!
//! `find` is pure; `commit` applies a found placement to the view.

use std::collections::{BTreeMap, HashSet};

use crate::model::{GpuAsk, JobSpec, Secs, MILLI_PER_GPU};
use crate::state::TaskPlacement;

use super::homes::bit;
use super::view::View;

/// One placement question.
pub(crate) struct Ask<'s> {
    pub spec: &'s JobSpec,
    pub group: usize,
    /// When the job will have ended for sure (now + time limit), `Secs::MAX` without a limit.
    pub end_s: Secs,
    /// Ignore reservation guards (to tell "blocked by a reservation" from "no room").
    pub ignore_guards: bool,
    /// Only these nodes (a bit per dense node), such as the team's home, with a key that
    /// names the set for memos; `None`: any node.
    pub within: Option<(usize, &'s [u64])>,
}

impl<'s> Ask<'s> {
    /// An ask that respects reservation guards.
    pub fn new(spec: &'s JobSpec, group: usize, end_s: Secs) -> Ask<'s> {
        Ask {
            spec,
            group,
            end_s,
            ignore_guards: false,
            within: None,
        }
    }

    /// The same ask, on these nodes only.
    pub fn within(self, nodes: Option<(usize, &'s [u64])>) -> Ask<'s> {
        Ask {
            within: nodes,
            ..self
        }
    }
}

/// Whether the ask may use node `n` at all: its node selector and the nodes it is kept to.
fn node_ok(view: &View, ask: &Ask, n: u32) -> bool {
    ask.within.is_none_or(|(_, w)| bit(w, n))
        && (ask.spec.node_selector.is_empty()
            || ask
                .spec
                .node_selector
                .iter()
                .all(|(k, v)| view.nodes[n as usize].spec.labels.get(k) == Some(v)))
}

/// GPUs of node `n` the ask must leave alone (reserved for a job that starts before this
/// one would end).
pub(super) fn forbidden(view: &View, ask: &Ask, n: u32) -> u64 {
    if ask.ignore_guards {
        0
    } else {
        view.guard[n as usize].forbidden(ask.end_s)
    }
}

/// CPU and memory of node `n` the ask may take.
fn cpu_mem(view: &View, ask: &Ask, n: u32) -> (u64, u64) {
    let (cpu, mem) = guard_slack(view, ask, n);
    (
        view.cpu_free[n as usize].min(cpu),
        view.mem_free[n as usize].min(mem),
    )
}

/// The most CPU and memory of node `n` that the ask may take whatever runs there gives
/// back: what the reservations that start before it would end leave over (unbounded where
/// none does).
pub(super) fn guard_slack(view: &View, ask: &Ask, n: u32) -> (u64, u64) {
    let guard = view.guard[n as usize];
    if ask.ignore_guards || ask.end_s <= guard.earliest_s {
        (u64::MAX, u64::MAX)
    } else {
        (guard.cpu_slack, guard.mem_slack)
    }
}

/// How many tasks of the ask node `n` can take now.
fn node_cap(view: &View, ask: &Ask, n: u32) -> u64 {
    let spec = ask.spec;
    if !node_ok(view, ask, n) {
        return 0;
    }
    let mask = forbidden(view, ask, n);
    let by_gpu = match spec.gpu {
        GpuAsk::Whole(0) => u64::MAX,
        GpuAsk::Whole(k) => u64::from(view.whole_free_outside(n, mask) / k),
        GpuAsk::Milli(m) => view
            .used_of(n)
            .iter()
            .enumerate()
            .filter(|&(i, _)| mask & (1 << i) == 0)
            .map(|(_, &u)| u64::from((MILLI_PER_GPU - u) / m))
            .sum(),
    };
    let (cpu, mem) = cpu_mem(view, ask, n);
    let by_cpu = cpu.checked_div(spec.cpu_milli).unwrap_or(u64::MAX);
    let by_mem = mem.checked_div(spec.mem_mib).unwrap_or(u64::MAX);
    by_gpu.min(by_cpu).min(by_mem)
}

/// Where the job's tasks would go, or `None` if they do not fit now.
pub(crate) fn find(view: &View, ask: &Ask) -> Option<Vec<TaskPlacement>> {
    find_scored(view, ask).map(|(p, _)| p)
}

/// [`find`], with how much the placement grows the fragmentation of the view's mix (0 for a
/// gang), so that placements in different groups can be compared.
pub(crate) fn find_scored(view: &View, ask: &Ask) -> Option<(Vec<TaskPlacement>, f64)> {
    let spec = ask.spec;
    let g = ask.group;
    if g >= view.buckets.len() || view.group_free_milli[g] < spec.milli_total() {
        return None;
    }
    if let GpuAsk::Whole(k) = spec.gpu {
        if view.group_whole_free[g] < u64::from(k) * u64::from(spec.tasks) {
            return None;
        }
    }
    if spec.tasks == 1 {
        return single(view, ask).map(|(t, d)| (vec![t], d));
    }
    let items: Vec<(u32, u64)> = view.group_nodes[g]
        .iter()
        .map(|&n| (n, node_cap(view, ask, n)))
        .filter(|&(_, c)| c > 0)
        .collect();
    let total: u64 = items.iter().map(|&(_, c)| c).sum();
    if total < u64::from(spec.tasks) {
        return None;
    }
    let depth = view.depth;
    let mut chosen = Vec::new();
    pick(view, items, 0, depth, u64::from(spec.tasks), &mut chosen);
    Some((assign(view, ask, &chosen), 0.0))
}

/// Candidates a single task's placement is chosen among, from the best level of the best-fit
/// order (the bucket of nodes with the fewest whole free GPUs that fit, or the partly used
/// GPUs with the least room that fit).
const PER_LEVEL: usize = 16;
/// Below this share of whole-node tasks in the mix, placement may leave the best-fit level.
const WHOLE_NODE_SHARE: f64 = 0.05;

/// A single task: up to [`PER_LEVEL`] candidates from the best level of the best-fit order
/// (the nodes with the fewest whole free GPUs that fit; for a share, the partly used GPUs with
/// the least room that fit, else a whole free GPU on the nodes with the fewest), and among them
/// the one that grows the mix's fragmentation least; on ties, the one whose node it keeps busy
/// least past the node's drain time ([`extends`]), then the first.
///
/// Every node is scored ([`least_growth`]) only when fewer than 5 % of the mix's tasks need
/// whole nodes: choosing across levels by fragmentation alone spreads small tasks over
/// emptier nodes to keep mid-sized slots, which delays whole-node gangs (Philly's mean wait
/// grew from 20 h to 27 h that way), while best fit empties nodes for them. Where whole-node
/// tasks are rare (Alibaba's openb), scoring every node packs better (94.18 % of GPUs
/// allocated at 130 % demand at the best level alone, 95.61 % over every node).
fn single(view: &View, ask: &Ask) -> Option<(TaskPlacement, f64)> {
    let spec = ask.spec;
    let g = ask.group;
    let buckets = &view.buckets[g];
    let fits = |n: u32| {
        let (cpu, mem) = cpu_mem(view, ask, n);
        cpu >= spec.cpu_milli && mem >= spec.mem_mib && node_ok(view, ask, n)
    };
    let scoring = view.mix_src.is_some();
    // Across levels only where few tasks need whole nodes: then nothing is lost by not
    // emptying nodes, and fragmentation decides alone (as in FGD).
    let across = scoring && view.mix().whole_node_share(view.group_max_gpus[g]) < WHOLE_NODE_SHARE;
    if across && !view.mix().is_empty() {
        return least_growth(view, ask, &fits);
    }
    let mut cands: Vec<TaskPlacement> = Vec::new();
    let whole_nodes = |k: u32, cands: &mut Vec<TaskPlacement>| {
        for bucket in buckets.iter().skip(k as usize) {
            let mut from_this_level = 0;
            for n in bucket.iter() {
                let mask = forbidden(view, ask, n);
                if view.whole_free_outside(n, mask) >= k && fits(n) {
                    cands.push(assign_one(view.used_of(n), mask, view, n, spec.gpu));
                    from_this_level += 1;
                    if from_this_level == PER_LEVEL || !scoring {
                        break;
                    }
                }
            }
            // The best level is enough.
            if !cands.is_empty() {
                return;
            }
        }
    };
    match spec.gpu {
        GpuAsk::Whole(k) => whole_nodes(k, &mut cands),
        GpuAsk::Milli(m) => {
            let mut shares_taken = 0;
            for &(_, n, gpu) in view.partial[g].range((m, 0, 0)..) {
                if forbidden(view, ask, n) & (1 << gpu) == 0 && fits(n) {
                    cands.push(TaskPlacement {
                        node: view.ids[n as usize],
                        gpus: vec![gpu],
                        gpu_milli: m,
                    });
                    shares_taken += 1;
                    if shares_taken == PER_LEVEL || !scoring {
                        break;
                    }
                }
            }
            if cands.is_empty() {
                whole_nodes(1, &mut cands);
            }
        }
    }
    if !scoring || cands.len() <= 1 || view.mix().is_empty() {
        return cands.into_iter().next().map(|t| (t, 0.0));
    }
    let mut best: Option<(f64, usize, Secs)> = None;
    let mut after = Vec::new();
    for (i, t) in cands.iter().enumerate() {
        let Some(n) = view.dense(t.node) else {
            continue;
        };
        let delta = growth(view, spec, n, t, frag_now(view, n), &mut after);
        let x = extends(view, n, ask.end_s);
        if best.is_none_or(|(d, _, bx)| beats((delta, x), (d, bx))) {
            best = Some((delta, i, x));
        }
    }
    let (delta, i, _) = best?;
    Some((cands.swap_remove(i), delta))
}

/// How long past node `n`'s drain time (when the last of its runs ends by its time limit)
/// a task ending at `end_s` would keep it busy: 0 where the node's runs outlast it.
fn extends(view: &View, n: u32, end_s: Secs) -> Secs {
    view.drain
        .get(n as usize)
        .map_or(0, |&d| end_s.saturating_sub(d))
}

/// Whether a place that grows the fragmentation by `d` and keeps its node busy `x` past its
/// drain time beats the best so far: less growth (beyond rounding), or as much and less time
/// past the drain.
fn beats((d, x): (f64, Secs), (best_d, best_x): (f64, Secs)) -> bool {
    d < best_d - 1e-9 || (d <= best_d + 1e-9 && x < best_x)
}

/// The mix's fragmentation of node `n` as it is.
fn frag_now(view: &View, n: u32) -> f64 {
    let (cpu, mem) = (view.cpu_free[n as usize], view.mem_free[n as usize]);
    view.mix().frag(n, view.used_of(n), cpu, mem)
}

/// How much placing task `t` on node `n` grows the mix's fragmentation there.
/// `before` is the node's fragmentation now ([`frag_now`]).
fn growth(
    view: &View,
    spec: &JobSpec,
    n: u32,
    t: &TaskPlacement,
    before: f64,
    after: &mut Vec<u32>,
) -> f64 {
    let mix = view.mix();
    let used = view.used_of(n);
    let (cpu, mem) = (view.cpu_free[n as usize], view.mem_free[n as usize]);
    after.clear();
    after.extend_from_slice(used);
    for &gpu in &t.gpus {
        after[gpu as usize] += t.gpu_milli;
    }
    mix.frag(n, after, cpu - spec.cpu_milli, mem - spec.mem_mib) - before
}

/// A single task where few of the mix's tasks need whole nodes: every node of the group that
/// fits it (and for a share, every GPU with room) is scored by how much the placement grows
/// the fragmentation, and the least growth wins; ties go to the node the task keeps busy
/// least past its drain time ([`extends`]), then to the first in node order (on that node,
/// the first of its best GPUs), so equally good nodes fill one after another.
///
/// Exact growths rather than FGD's integer scores: with FGD's own measure, exact growths
/// spread tasks and pack worse (94.45 % of openb's GPUs allocated at 130 % demand against
/// 95.37 % with integer scores, whose many ties go to a fixed node order); with the
/// capacity-aware measure of [`super::frag::Mix::frag`] they do not (95.61 %, and no better
/// when growths within 75 or 150 milli-GPUs of the least count as ties).
fn least_growth(
    view: &View,
    ask: &Ask,
    fits: &dyn Fn(u32) -> bool,
) -> Option<(TaskPlacement, f64)> {
    let spec = ask.spec;
    let mut after = Vec::new();
    // The least growth; ties (to within rounding) go to the node the task keeps busy least
    // past its drain time, then to the first in node order.
    let mut best: Option<(f64, TaskPlacement, Secs)> = None;
    let mut offer = |d: f64, x: Secs, t: TaskPlacement| {
        if best.as_ref().is_none_or(|b| beats((d, x), (b.0, b.2))) {
            best = Some((d, t, x));
        }
    };
    // Nodes in the same state (free CPU and memory, GPU usage in any order, no GPU the task
    // must avoid) score the same, and a later one never wins a tie: only the first is scored.
    let mut seen: HashSet<(u64, u64, [u32; 16], Secs)> = HashSet::new();
    for &n in &view.group_nodes[ask.group] {
        if !fits(n) {
            continue;
        }
        let mask = forbidden(view, ask, n);
        let x = extends(view, n, ask.end_s);
        let used = view.used_of(n);
        if used.len() <= 16 {
            let mut key = [u32::MAX; 16];
            key[..used.len()].copy_from_slice(used);
            key[..used.len()].sort_unstable();
            let (cpu, mem) = (view.cpu_free[n as usize], view.mem_free[n as usize]);
            // Sorting the usage loses which GPU is masked: only unmasked nodes are merged.
            if mask == 0 && !seen.insert((cpu, mem, key, x)) {
                continue;
            }
        }
        match spec.gpu {
            GpuAsk::Whole(k) => {
                if view.whole_free_outside(n, mask) >= k {
                    let t = assign_one(view.used_of(n), mask, view, n, spec.gpu);
                    let d = growth(view, spec, n, &t, frag_now(view, n), &mut after);
                    offer(d, x, t);
                }
            }
            GpuAsk::Milli(m) => {
                let mut on_node: Option<(f64, TaskPlacement)> = None;
                let before = frag_now(view, n);
                for (gpu, &u) in view.used_of(n).iter().enumerate() {
                    if mask & (1 << gpu) != 0 || u + m > MILLI_PER_GPU {
                        continue;
                    }
                    let t = TaskPlacement {
                        node: view.ids[n as usize],
                        gpus: vec![gpu as u32],
                        gpu_milli: m,
                    };
                    let d = growth(view, spec, n, &t, before, &mut after);
                    if on_node.as_ref().is_none_or(|b| d < b.0 - 1e-9) {
                        on_node = Some((d, t));
                    }
                }
                if let Some((d, t)) = on_node {
                    offer(d, x, t);
                }
            }
        }
    }
    best.map(|(d, t, _)| (t, d))
}

/// Where one task goes on node `n` if the node's usage were `used`.
pub(crate) fn task_on(used: &[u32], view: &View, n: u32, ask: GpuAsk) -> TaskPlacement {
    assign_one(used, 0, view, n, ask)
}

/// Picks GPUs for one task on node `n` given the node's usage, outside the `forbidden` mask.
fn assign_one(used: &[u32], forbidden: u64, view: &View, n: u32, ask: GpuAsk) -> TaskPlacement {
    let node = view.ids[n as usize];
    let allowed = |i: usize| forbidden & (1 << i) == 0;
    match ask {
        GpuAsk::Whole(k) => TaskPlacement {
            node,
            gpus: used
                .iter()
                .enumerate()
                .filter(|&(i, &u)| u == 0 && allowed(i))
                .take(k as usize)
                .map(|(i, _)| i as u32)
                .collect(),
            gpu_milli: MILLI_PER_GPU,
        },
        GpuAsk::Milli(m) => {
            // Tightest partly used GPU first, then a whole free one.
            let gpu = used
                .iter()
                .enumerate()
                .filter(|&(i, &u)| u > 0 && u + m <= MILLI_PER_GPU && allowed(i))
                .max_by_key(|&(i, &u)| (u, std::cmp::Reverse(i)))
                .or_else(|| {
                    used.iter()
                        .enumerate()
                        .find(|&(i, &u)| u == 0 && allowed(i))
                })
                .map_or(0, |(i, _)| i as u32);
            TaskPlacement {
                node,
                gpus: vec![gpu],
                gpu_milli: m,
            }
        }
    }
}

/// Turns (node, tasks) choices into task placements with GPU indices.
fn assign(view: &View, ask: &Ask, chosen: &[(u32, u64)]) -> Vec<TaskPlacement> {
    let spec = ask.spec;
    let mut out = Vec::with_capacity(spec.tasks as usize);
    for &(n, count) in chosen {
        let mut used = view.used_of(n).to_vec();
        let mask = forbidden(view, ask, n);
        for _ in 0..count {
            let t = assign_one(&used, mask, view, n, spec.gpu);
            for &g in &t.gpus {
                used[g as usize] += t.gpu_milli;
            }
            out.push(t);
        }
    }
    out
}

/// How many tasks go to which node, given each node's capacity: the gang packing of
/// [`find`], for capacities computed elsewhere (such as at a future time).
pub(crate) fn pick_nodes(view: &View, items: Vec<(u32, u64)>, need: u64) -> Vec<(u32, u64)> {
    let mut chosen = Vec::new();
    pick(view, items, 0, view.depth, need, &mut chosen);
    chosen
}

/// A topology domain: id, tasks it can hold, its (node, tasks) items.
type Domain = (u64, u64, Vec<(u32, u64)>);

/// Chooses how many tasks go to which node, packing into as few domains as possible.
fn pick(
    view: &View,
    items: Vec<(u32, u64)>,
    level: usize,
    depth: usize,
    need: u64,
    out: &mut Vec<(u32, u64)>,
) {
    if level == depth {
        let mut items = items;
        items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        take_best_fit(&items, need, |&(n, cap), take| {
            debug_assert!(take <= cap);
            out.push((n, take));
        });
        return;
    }
    let mut domains: BTreeMap<u64, (u64, Vec<(u32, u64)>)> = BTreeMap::new();
    for (n, cap) in items {
        let entry = domains.entry(view.domain(n, level)).or_default();
        entry.0 += cap;
        entry.1.push((n, cap));
    }
    let mut list: Vec<Domain> = domains
        .into_iter()
        .map(|(d, (sum, items))| (d, sum, items))
        .collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let sums: Vec<(usize, u64)> = list.iter().enumerate().map(|(i, d)| (i, d.1)).collect();
    let mut takes: Vec<(usize, u64)> = Vec::new();
    take_best_fit(&sums, need, |&(i, _), take| takes.push((i, take)));
    for (i, take) in takes {
        let items = std::mem::take(&mut list[i].2);
        pick(view, items, level + 1, depth, take, out);
    }
}

/// Over `items` sorted by capacity (descending), takes whole items largest first until the
/// remainder fits one item, then the smallest item that holds the remainder.
fn take_best_fit<T>(items: &[(T, u64)], need: u64, mut take: impl FnMut(&(T, u64), u64)) {
    let mut remaining = need;
    let mut start = 0;
    while remaining > 0 && start < items.len() {
        let rest = &items[start..];
        // Items with capacity >= remaining form a prefix of `rest`.
        let fit = rest.partition_point(|it| it.1 >= remaining);
        if fit > 0 {
            take(&rest[fit - 1], remaining);
            return;
        }
        take(&rest[0], rest[0].1);
        remaining -= rest[0].1;
        start += 1;
    }
}

/// Applies a placement to the view, and charges reservation guards for the CPU and memory
/// that a job outliving them takes.
pub(crate) fn commit(view: &mut View, spec: &JobSpec, placement: &[TaskPlacement], end_s: Secs) {
    for t in placement {
        let Some(n) = view.dense(t.node) else {
            continue;
        };
        view.adjust(
            n,
            &t.gpus,
            i64::from(t.gpu_milli),
            spec.cpu_milli as i64,
            spec.mem_mib as i64,
        );
        if let Some(d) = view.drain.get_mut(n as usize) {
            *d = (*d).max(end_s);
        }
        let guard = &mut view.guard[n as usize];
        if end_s > guard.earliest_s {
            guard.cpu_slack = guard.cpu_slack.saturating_sub(spec.cpu_milli);
            guard.mem_slack = guard.mem_slack.saturating_sub(spec.mem_mib);
        }
    }
}
