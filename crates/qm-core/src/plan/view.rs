//! A dense, mutable copy of the cluster's free capacity that one plan works on.
//!
//! Nodes are numbered densely in `NodeId` order and sorted into *groups* (a GPU model, or in
//! the `static` policy a model within one team's partition). Each group keeps its nodes in
//! buckets by whole free GPUs and its partly used GPUs in a set ordered by free milli-GPUs, so
//! that best-fit placement is a range query rather than a scan.

use std::cell::OnceCell;
use std::collections::BTreeSet;

use crate::model::{NodeId, NodeState, Secs, MILLI_PER_GPU};
use crate::state::{ClusterState, Node, TaskPlacement};

use super::frag::Mix;

/// Guard that reservations put on a node: work that runs past `earliest_s` may not touch
/// the reserved GPUs (`gpus`, a bit per GPU index, whole or in part) and may take only the
/// CPU and memory the reservations leave (`cpu_slack`, `mem_slack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Guard {
    pub earliest_s: Secs,
    pub gpus: u64,
    pub cpu_slack: u64,
    pub mem_slack: u64,
}

pub(crate) const NO_GUARD: Guard = Guard {
    earliest_s: Secs::MAX,
    gpus: 0,
    cpu_slack: u64::MAX,
    mem_slack: u64::MAX,
};

impl Guard {
    /// GPUs a job ending at `end_s` must leave alone.
    pub fn forbidden(&self, end_s: Secs) -> u64 {
        if end_s <= self.earliest_s {
            0
        } else {
            self.gpus
        }
    }
}

/// What a view takes from the nodes' specs alone: their dense numbering (every node, in id
/// order), GPU counts and topology domains. Kept with the state until a node registers
/// (`state::Derived`), so that a plan does not hash every node's topology again.
#[derive(Clone, Default)]
pub(crate) struct Layout {
    ids: Vec<NodeId>,
    gpus: Vec<u32>,
    gpu_off: Vec<usize>,
    domains: Vec<u64>,
    depth: usize,
    gpu_total: usize,
    /// Each node's GPU model, as its index among the state's sorted models
    /// (`ClusterState::team_index`): a plan needs it for every node, and a search among
    /// strings per node per plan showed in profiles.
    model: Vec<u32>,
}

impl Layout {
    fn of(state: &ClusterState) -> &Layout {
        state.derived.layout.get_or_init(|| {
            let n = state.nodes.len();
            let depth = state
                .nodes
                .values()
                .map(|n| n.spec.topology.len())
                .max()
                .unwrap_or(0);
            let models = state.team_index().0;
            let mut l = Layout {
                ids: Vec::with_capacity(n),
                gpus: Vec::with_capacity(n),
                gpu_off: Vec::with_capacity(n),
                domains: Vec::with_capacity(n * depth),
                depth,
                gpu_total: 0,
                model: Vec::with_capacity(n),
            };
            for node in state.nodes.values() {
                l.ids.push(node.spec.id);
                l.gpu_off.push(l.gpu_total);
                l.gpus.push(node.spec.gpus);
                l.gpu_total += node.spec.gpus as usize;
                l.model.push(
                    models
                        .binary_search(&node.spec.gpu_model)
                        .map_or(u32::MAX, |m| m as u32),
                );
                // A domain is named by its path prefix; its id is a hash of that prefix
                // (FNV-1a), so no interning table is built. Only equality matters.
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for level in 0..depth {
                    let part = node.spec.topology.get(level).map_or("", String::as_str);
                    for b in part.bytes().chain(std::iter::once(0xff)) {
                        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                    }
                    l.domains.push(hash);
                }
            }
            l
        })
    }
}

/// The nodes' free capacity, dense in the layout's order, as the latest plan found it,
/// and the position in the state's `NodeLog` up to which it is: a plan brings it up to date
/// by reading again only the nodes changed since, instead of every node's record (reading
/// 2,048 nodes' records was a sixth of a replay of a 16,384-GPU cluster, nearly all of it
/// waiting on memory). Kept with the state's derived data, so a node's registration (which
/// may change the layout) starts it anew.
#[derive(Default)]
pub(crate) struct CapacityCache(std::sync::Mutex<Option<(Capacity, Option<Indices>)>>);

/// A copy of the state starts without it.
impl Clone for CapacityCache {
    fn clone(&self) -> CapacityCache {
        CapacityCache::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Capacity {
    seen: u64,
    ready: Vec<bool>,
    used: Vec<u32>,
    cpu_free: Vec<u64>,
    mem_free: Vec<u64>,
    whole_free: Vec<u32>,
}

impl Capacity {
    /// Every node's capacity, read from its record.
    fn of(state: &ClusterState, layout: &Layout) -> Capacity {
        let n = layout.ids.len();
        let mut c = Capacity {
            seen: state.node_log.end(),
            ready: Vec::with_capacity(n),
            used: Vec::with_capacity(layout.gpu_total),
            cpu_free: Vec::with_capacity(n),
            mem_free: Vec::with_capacity(n),
            whole_free: Vec::with_capacity(n),
        };
        for node in state.nodes.values() {
            c.ready.push(node.state == NodeState::Ready);
            c.used.extend(node.gpu_used_milli.iter().copied());
            c.cpu_free
                .push(node.spec.cpu_milli.saturating_sub(node.cpu_used_milli));
            c.mem_free
                .push(node.spec.mem_mib.saturating_sub(node.mem_used_mib));
            c.whole_free.push(node.whole_gpus_free());
        }
        c
    }

    /// Reads dense node `n`'s record again.
    fn refresh(&mut self, state: &ClusterState, layout: &Layout, n: usize) {
        let Some(node) = state.nodes.get(&layout.ids[n]) else {
            return;
        };
        self.ready[n] = node.state == NodeState::Ready;
        let off = layout.gpu_off[n];
        self.used[off..off + node.gpu_used_milli.len()].copy_from_slice(&node.gpu_used_milli);
        self.cpu_free[n] = node.spec.cpu_milli.saturating_sub(node.cpu_used_milli);
        self.mem_free[n] = node.spec.mem_mib.saturating_sub(node.mem_used_mib);
        self.whole_free[n] = node.whole_gpus_free();
    }

    /// The nodes' capacity now, and the indices of the nodes by group for the groups
    /// `group_of` gives (a ready node's id and model index to its group): the kept ones
    /// brought up to date (only the nodes changed since are read again and indexed again,
    /// where no node changed group), or made anew.
    fn current(
        state: &ClusterState,
        layout: &Layout,
        groups: usize,
        mut group_of: impl FnMut(NodeId, Option<usize>) -> Option<usize>,
    ) -> (Capacity, Indices) {
        let cache = &state.derived.capacity.0;
        let mut kept = cache.lock().unwrap_or_else(|poisoned| {
            cache.clear_poison();
            let mut kept = poisoned.into_inner();
            *kept = None;
            kept
        });
        let end = state.node_log.end();
        let (capacity, indices) = match kept.take() {
            Some((mut c, mut indices)) => match state.node_log.since(c.seen) {
                Some(changed) => {
                    let mut dense: Vec<usize> = changed
                        .filter_map(|id| layout.ids.binary_search(id).ok())
                        .collect();
                    dense.sort_unstable();
                    dense.dedup();
                    for &n in &dense {
                        if let Some(ix) = indices.as_mut() {
                            ix.unindex(n as u32, layout, &c);
                        }
                        c.refresh(state, layout, n);
                    }
                    c.seen = end;
                    (c, indices.map(|ix| (ix, dense)))
                }
                None => (Capacity::of(state, layout), None),
            },
            None => (Capacity::of(state, layout), None),
        };
        debug_assert_eq!(
            capacity,
            Capacity::of(state, layout),
            "capacity kept up to date"
        );
        let group: Vec<Option<usize>> = (0..layout.ids.len())
            .map(|n| {
                if !capacity.ready[n] {
                    return None;
                }
                let model = layout.model[n];
                group_of(layout.ids[n], (model != u32::MAX).then_some(model as usize))
            })
            .collect();
        let indices = match indices {
            Some((mut ix, dense)) if ix.group_nodes.len() == groups && ix.group == group => {
                for n in dense {
                    ix.index(n as u32, layout, &capacity);
                }
                ix
            }
            _ => Indices::of(layout, &capacity, group, groups),
        };
        debug_assert_eq!(
            indices,
            Indices::of(layout, &capacity, indices.group.clone(), groups),
            "indices kept up to date"
        );
        *kept = Some((capacity.clone(), Some(indices.clone())));
        (capacity, indices)
    }
}

/// The view's indices of the nodes by group, for one assignment of nodes to groups, as
/// [`View::index`] fills them node by node: kept with the capacity, so that a plan indexes
/// again only the nodes changed since the last (indexing every GPU of 2,048 nodes was an
/// eighth of a replay of a 16,384-GPU cluster).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Indices {
    group: Vec<Option<usize>>,
    group_nodes: Vec<Vec<u32>>,
    group_max_gpus: Vec<u32>,
    buckets: Vec<Vec<NodeSet>>,
    partial: Vec<BTreeSet<(u32, u32, u32)>>,
    group_whole_free: Vec<u64>,
    group_free_milli: Vec<u64>,
}

impl Indices {
    fn of(layout: &Layout, c: &Capacity, group: Vec<Option<usize>>, groups: usize) -> Indices {
        let nodes = layout.ids.len();
        let mut group_nodes = vec![Vec::new(); groups];
        let mut group_max_gpus = vec![0; groups];
        for (n, g) in group.iter().enumerate() {
            if let &Some(g) = g {
                group_nodes[g].push(n as u32);
                group_max_gpus[g] = group_max_gpus[g].max(layout.gpus[n]);
            }
        }
        let mut ix = Indices {
            buckets: group_max_gpus
                .iter()
                .map(|&max| vec![NodeSet::new(nodes); max as usize + 1])
                .collect(),
            partial: vec![BTreeSet::new(); groups],
            group_whole_free: vec![0; groups],
            group_free_milli: vec![0; groups],
            group,
            group_nodes,
            group_max_gpus,
        };
        // Each set built at once from its sorted contents (far fewer comparisons on
        // thousands of nodes than inserting node by node).
        let mut partial: Vec<Vec<(u32, u32, u32)>> = vec![Vec::new(); groups];
        for n in 0..nodes as u32 {
            let Some(g) = ix.group[n as usize] else {
                continue;
            };
            let wf = c.whole_free[n as usize];
            ix.buckets[g][wf as usize].insert(n);
            ix.group_whole_free[g] += u64::from(wf);
            let used = c.used_of(layout, n);
            ix.group_free_milli[g] += free_milli(used);
            partial[g].extend(partial_keys(used, n));
        }
        ix.partial = partial.into_iter().map(BTreeSet::from_iter).collect();
        ix
    }

    fn index(&mut self, n: u32, layout: &Layout, c: &Capacity) {
        self.file(n, layout, c, true);
    }

    fn unindex(&mut self, n: u32, layout: &Layout, c: &Capacity) {
        self.file(n, layout, c, false);
    }

    fn file(&mut self, n: u32, layout: &Layout, c: &Capacity, add: bool) {
        let Some(g) = self.group[n as usize] else {
            return;
        };
        Filing {
            buckets: &mut self.buckets[g],
            partial: &mut self.partial[g],
            whole_free: &mut self.group_whole_free[g],
            free_milli: &mut self.group_free_milli[g],
        }
        .file(n, c.whole_free[n as usize], c.used_of(layout, n), add);
    }
}

/// One group's indices, borrowed from a view or from the kept [`Indices`], to file a node
/// in or out.
struct Filing<'x> {
    buckets: &'x mut [NodeSet],
    partial: &'x mut BTreeSet<(u32, u32, u32)>,
    whole_free: &'x mut u64,
    free_milli: &'x mut u64,
}

impl Filing<'_> {
    /// Files node `n` (with `wf` whole free GPUs, its GPUs' used milli `used`) in (`add`) or
    /// out.
    fn file(self, n: u32, wf: u32, used: &[u32], add: bool) {
        if add {
            self.buckets[wf as usize].insert(n);
            *self.whole_free += u64::from(wf);
            *self.free_milli += free_milli(used);
            self.partial.extend(partial_keys(used, n));
        } else {
            self.buckets[wf as usize].remove(n);
            *self.whole_free -= u64::from(wf);
            *self.free_milli -= free_milli(used);
            for key in partial_keys(used, n) {
                self.partial.remove(&key);
            }
        }
    }
}

impl Capacity {
    fn used_of(&self, layout: &Layout, n: u32) -> &[u32] {
        let off = layout.gpu_off[n as usize];
        &self.used[off..off + layout.gpus[n as usize] as usize]
    }
}

/// A set of dense node numbers, as a bitset: iterated in node order, built and copied
/// without an allocation per node (a plan builds one per group and whole-free count).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeSet {
    words: Vec<u64>,
    len: usize,
}

impl NodeSet {
    /// An empty set for nodes numbered below `nodes`.
    pub fn new(nodes: usize) -> NodeSet {
        NodeSet {
            words: vec![0; nodes.div_ceil(64)],
            len: 0,
        }
    }

    pub fn insert(&mut self, n: u32) {
        let (w, bit) = (n as usize / 64, 1u64 << (n % 64));
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.len += 1;
        }
    }

    pub fn remove(&mut self, n: u32) {
        let (w, bit) = (n as usize / 64, 1u64 << (n % 64));
        if self.words[w] & bit != 0 {
            self.words[w] &= !bit;
            self.len -= 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The nodes, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            super::planner::mask_bits(word).map(move |b| (w * 64) as u32 + b)
        })
    }
}

#[derive(Clone)]
pub(crate) struct View<'a> {
    pub ids: &'a [NodeId],
    pub nodes: Vec<&'a Node>,
    pub group: Vec<Option<usize>>,
    /// First GPU of node `n` in `used`.
    pub gpu_off: &'a [usize],
    pub gpus: &'a [u32],
    /// `[node]` its GPU model's index (`Layout::model`).
    pub model: &'a [u32],
    pub used: Vec<u32>,
    pub cpu_free: Vec<u64>,
    pub mem_free: Vec<u64>,
    pub whole_free: Vec<u32>,
    /// Topology domain ids, `depth` per node, outermost first.
    pub domains: &'a [u64],
    pub depth: usize,
    pub guard: Vec<Guard>,
    /// `[group][whole free GPUs]` → nodes.
    pub buckets: Vec<Vec<NodeSet>>,
    /// `[group]` → (free milli, node, gpu) of GPUs that are partly used.
    pub partial: Vec<BTreeSet<(u32, u32, u32)>>,
    pub group_nodes: Vec<Vec<u32>>,
    pub group_whole_free: Vec<u64>,
    /// Free milli-GPUs of each group, fragments included.
    pub group_free_milli: Vec<u64>,
    pub group_max_gpus: Vec<u32>,
    /// `[node]` how many times its usage has changed in this view: what a result computed
    /// from a node's capacity is valid for (`Memos::earliest`).
    pub changes: Vec<u32>,
    /// The workload's mix, for fragmentation-aware placement of single tasks: computed on
    /// first use from `mix_src` (the state and its sorted GPU models).
    mix: OnceCell<Mix>,
    pub mix_src: Option<(&'a ClusterState, Vec<String>)>,
    /// `[node]` when the node's last run ends by its time limit (`Secs::MAX` where one has
    /// none; 0 where nothing runs), the jobs this plan starts included: a single task goes,
    /// among equally good places, where it keeps its node busy least past that
    /// (`place::extends`). Empty: no such preference.
    pub drain: Vec<Secs>,
}

impl<'a> View<'a> {
    /// Builds the view. `group_of` maps a ready node (by id) to its group (None: unusable).
    pub fn build(
        state: &'a ClusterState,
        groups: usize,
        group_of: impl FnMut(NodeId, Option<usize>) -> Option<usize>,
    ) -> View<'a> {
        let n = state.nodes.len();
        let layout = Layout::of(state);
        let (capacity, ix) = Capacity::current(state, layout, groups, group_of);
        View {
            ids: &layout.ids,
            nodes: state.nodes.values().collect(),
            group: ix.group,
            gpu_off: &layout.gpu_off,
            gpus: &layout.gpus,
            model: &layout.model,
            used: capacity.used,
            cpu_free: capacity.cpu_free,
            mem_free: capacity.mem_free,
            whole_free: capacity.whole_free,
            domains: &layout.domains,
            depth: layout.depth,
            guard: vec![NO_GUARD; n],
            buckets: ix.buckets,
            partial: ix.partial,
            group_nodes: ix.group_nodes,
            group_whole_free: ix.group_whole_free,
            group_free_milli: ix.group_free_milli,
            group_max_gpus: ix.group_max_gpus,
            changes: vec![0; n],
            mix: OnceCell::new(),
            mix_src: None,
            drain: Vec::new(),
        }
    }

    /// The workload's mix (empty without a source).
    pub fn mix(&self) -> &Mix {
        self.mix.get_or_init(|| match &self.mix_src {
            Some((state, models)) => {
                let index = |m: &str| models.binary_search_by(|x| x.as_str().cmp(m)).ok();
                Mix::of(state.jobs.shapes.iter(), index, self.model.to_vec())
            }
            None => Mix::default(),
        })
    }

    fn gpu_range(&self, n: u32) -> std::ops::Range<usize> {
        let off = self.gpu_off[n as usize];
        off..off + self.gpus[n as usize] as usize
    }

    pub fn domain(&self, n: u32, level: usize) -> u64 {
        self.domains[n as usize * self.depth + level]
    }

    pub fn used_of(&self, n: u32) -> &[u32] {
        &self.used[self.gpu_range(n)]
    }

    /// The free milli-GPUs of group `g`, in aggregate (whole and partly used GPUs alike).
    pub fn free_milli(&self, g: usize) -> u64 {
        self.group_nodes[g]
            .iter()
            .map(|&n| free_milli(self.used_of(n)))
            .sum()
    }

    /// Adds node `n` to its group's indices.
    fn index(&mut self, n: u32) {
        self.file(n, true);
    }

    fn unindex(&mut self, n: u32) {
        self.file(n, false);
    }

    fn file(&mut self, n: u32, add: bool) {
        let Some(g) = self.group[n as usize] else {
            return;
        };
        let range = self.gpu_range(n);
        Filing {
            buckets: &mut self.buckets[g],
            partial: &mut self.partial[g],
            whole_free: &mut self.group_whole_free[g],
            free_milli: &mut self.group_free_milli[g],
        }
        .file(n, self.whole_free[n as usize], &self.used[range], add);
    }

    /// Changes a node's usage by `delta` milli on the listed GPUs and by the CPU and memory
    /// given; positive takes, negative gives back. Saturates instead of overflowing, so
    /// conservative "occupy if not already" updates are safe.
    pub fn adjust(&mut self, n: u32, gpus: &[u32], milli: i64, cpu: i64, mem: i64) {
        self.detach(&[n]);
        self.raw_adjust(n, gpus, milli, cpu, mem);
        self.attach(&[n]);
    }

    /// Takes nodes out of the indices before a batch of [`View::raw_adjust`] calls.
    pub fn detach(&mut self, nodes: &[u32]) {
        for &n in nodes {
            self.unindex(n);
        }
    }

    /// Like [`View::adjust`] on a detached node, without touching the indices.
    pub fn raw_adjust(&mut self, n: u32, gpus: &[u32], milli: i64, cpu: i64, mem: i64) {
        let off = self.gpu_off[n as usize];
        for &g in gpus {
            let u = &mut self.used[off + g as usize];
            *u = (i64::from(*u) + milli).clamp(0, i64::from(MILLI_PER_GPU)) as u32;
        }
        let ni = n as usize;
        self.changes[ni] = self.changes[ni].wrapping_add(1);
        self.cpu_free[ni] = (self.cpu_free[ni] as i64 - cpu).max(0) as u64;
        self.mem_free[ni] = (self.mem_free[ni] as i64 - mem).max(0) as u64;
    }

    /// Puts detached nodes back into the indices.
    pub fn attach(&mut self, nodes: &[u32]) {
        for &n in nodes {
            self.whole_free[n as usize] =
                self.used_of(n).iter().filter(|&&u| u == 0).count() as u32;
            self.index(n);
        }
    }

    pub fn dense(&self, id: NodeId) -> Option<u32> {
        // Node ids are usually dense from 0: then the id is the index.
        let guess = id.0 as usize;
        if self.ids.get(guess) == Some(&id) {
            return Some(guess as u32);
        }
        self.ids.binary_search(&id).ok().map(|i| i as u32)
    }

    /// Gives a placement back to the free capacity.
    pub fn give(&mut self, placement: &[TaskPlacement], cpu: u64, mem: u64) {
        for t in placement {
            if let Some(n) = self.dense(t.node) {
                self.adjust(
                    n,
                    &t.gpus,
                    -i64::from(t.gpu_milli),
                    -(cpu as i64),
                    -(mem as i64),
                );
            }
        }
    }

    /// Takes back what [`View::give`] gave: the exact inverse where the placement was held
    /// when given (no GPU share went below zero).
    pub fn take(&mut self, placement: &[TaskPlacement], cpu: u64, mem: u64) {
        for t in placement.iter().rev() {
            if let Some(n) = self.dense(t.node) {
                self.adjust(n, &t.gpus, i64::from(t.gpu_milli), cpu as i64, mem as i64);
            }
        }
    }

    /// The largest number of whole free GPUs on one node of the group.
    pub fn largest_free_block(&self, g: usize) -> u32 {
        self.buckets[g]
            .iter()
            .rposition(|b| !b.is_empty())
            .unwrap_or(0) as u32
    }

    /// Whole free GPUs of node `n` outside the `forbidden` mask.
    pub fn whole_free_outside(&self, n: u32, forbidden: u64) -> u32 {
        if forbidden == 0 {
            return self.whole_free[n as usize];
        }
        self.used_of(n)
            .iter()
            .enumerate()
            .filter(|&(i, &u)| u == 0 && forbidden & (1 << i) == 0)
            .count() as u32
    }
}

/// Free milli-GPUs of a node's GPUs (their used milli), whole and partly used alike.
fn free_milli(used: &[u32]) -> u64 {
    used.iter().map(|&u| u64::from(MILLI_PER_GPU - u)).sum()
}

/// Node `n`'s partly used GPUs (given their used milli) as a group's set keys them: free
/// milli, node, GPU.
fn partial_keys(used: &[u32], n: u32) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
    used.iter()
        .enumerate()
        .filter(|&(_, &u)| u > 0 && u < MILLI_PER_GPU)
        .map(move |(i, &u)| (MILLI_PER_GPU - u, n, i as u32))
}
