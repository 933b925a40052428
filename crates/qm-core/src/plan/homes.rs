//! Homes: where each team's guarantee lives, so that it comes back in the shape the team
//! needs (HiveD's cells, in their simplest form).
//!
//! Each GPU model's nodes are laid on a line in topology order. Teams, largest guarantee
//! first, take whole nodes for the whole-node part of their guarantee, contiguous on that
//! line (a guarantee of 2,048 GPUs on 8-GPU nodes is 256 neighbouring nodes, racks whole
//! where the line allows); then the remainders (a guarantee of 12 GPUs leaves 4) are laid
//! one after another on the nodes left, so that small guarantees share nodes. A node is
//! *home* to the teams laid on it and to their ancestors; a node nobody is laid on (where
//! guarantees add up to less than the cluster) is common ground.
//!
//! What homes are for (ARCHITECTURE.md, "Sharing safety"): work that cannot be preempted
//! borrows only at its team's home or on common ground, so it never sits beyond its team's
//! guarantee where another team's guarantee lives; and a job that cannot be preempted,
//! inside its team's guarantee, where borrowed work alone cannot make room for it, takes its
//! home back whole: other teams' runs there that are away from their own homes are preempted
//! too (`reclaim.rs`). Preemptible work goes anywhere and is reclaimed, cheapest first,
//! wherever it is.
//!
//! Homes are laid over every node, down or drained ones included, so that a node going down
//! does not move every other team's home (and with it which runs count as guaranteed). A
//! team whose home has a down node gets less of its guarantee back in shape until the node
//! returns; its guarantee as an amount is unchanged.

use crate::state::{ClusterState, Node};
use crate::teams::TeamIndex;

/// Homes, and per team where its work that cannot be preempted may run
/// ([`Homes::safe_for`]).
pub(crate) type HomesAndSafe = (Homes, Vec<Option<Vec<u64>>>);

/// The homes of the state's policy, kept with the state until a node registers or a team
/// changes: they depend on the nodes' specs (down ones included) and the team tree alone.
pub(super) fn of_state(state: &ClusterState, default_policy: bool) -> &HomesAndSafe {
    let (models, teams) = state.team_index();
    let with_safe = |homes: Homes| {
        let safe = (0..teams.names.len()).map(|t| homes.safe_for(t)).collect();
        (homes, safe)
    };
    if !default_policy {
        return state
            .derived
            .no_homes
            .get_or_init(|| with_safe(Homes::none(teams.names.len(), models.len())));
    }
    state.derived.homes.get_or_init(|| {
        let nodes: Vec<&Node> = state.nodes().collect();
        let node_model: Vec<usize> = nodes
            .iter()
            .map(|n| models.binary_search(&n.spec.gpu_model).unwrap_or(0))
            .collect();
        with_safe(Homes::build(&nodes, models, &node_model, teams))
    })
}

/// Per team, the dense nodes that are home to it (a bit per node).
#[derive(Clone)]
pub(crate) struct Homes {
    /// `[team]`: a bit per dense node; empty where the team is at home nowhere.
    bits: Vec<Vec<u64>>,
    /// `[team][model]`: whether the team has a home node of that model.
    has: Vec<Vec<bool>>,
    /// A bit per dense node that is home to some team.
    owned: Vec<u64>,
    n_nodes: u32,
}

impl Homes {
    /// No homes: every run is at home (the `fifo` and `static` policies).
    pub(super) fn none(teams: usize, models: usize) -> Homes {
        Homes {
            bits: vec![Vec::new(); teams],
            has: vec![vec![false; models]; teams],
            owned: Vec::new(),
            n_nodes: 0,
        }
    }

    /// Homes over `all` (every node, in id order: the plan's dense numbering).
    pub(super) fn build(
        all: &[&Node],
        models: &[String],
        node_model: &[usize],
        teams: &TeamIndex,
    ) -> Homes {
        let n_teams = teams.names.len();
        let words = all.len().div_ceil(64);
        let mut homes = Homes {
            bits: vec![Vec::new(); n_teams],
            has: vec![vec![false; models.len()]; n_teams],
            owned: vec![0; words],
            n_nodes: 0,
        };
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n_teams];
        for (t, chain) in teams.lineage.iter().enumerate() {
            if let Some(&p) = chain.get(1) {
                children[p].push(t);
            }
        }
        // Capacity of each model, for guarantees that cover several models.
        let mut caps = vec![0u64; models.len()];
        for n in 0..all.len() {
            caps[node_model[n]] +=
                u64::from(all[n].spec.gpus) * u64::from(crate::model::MILLI_PER_GPU);
        }
        for m in 0..models.len() {
            let mut nodes: Vec<u32> = (0..all.len() as u32)
                .filter(|&n| node_model[n as usize] == m)
                .collect();
            nodes.sort_by(|&a, &b| {
                let (a, b) = (&all[a as usize].spec, &all[b as usize].spec);
                a.topology.cmp(&b.topology).then(a.id.cmp(&b.id))
            });
            let cap_m = caps[m];
            if cap_m == 0 {
                continue;
            }
            // A team's guarantee for this model: its pool's, in proportion to this model's
            // part of the pool's capacity.
            let share = |t: usize| -> u64 {
                let pool = teams.pool_of_model[t][m];
                let g = teams.pools[t][pool].guaranteed;
                if g == 0 {
                    return 0;
                }
                let pool_cap: u64 = (0..models.len())
                    .filter(|&k| teams.pool_of_model[t][k] == pool)
                    .map(|k| caps[k])
                    .sum();
                (u128::from(g) * u128::from(cap_m) / u128::from(pool_cap.max(1))) as u64
            };
            let shares: Vec<u64> = (0..n_teams).map(share).collect();
            // A team's own part: its share less its children's.
            let mut own: Vec<(u64, usize)> = (0..n_teams)
                .map(|t| {
                    let kids: u64 = children[t].iter().map(|&c| shares[c]).sum();
                    (shares[t].saturating_sub(kids), t)
                })
                .filter(|&(g, _)| g > 0)
                .collect();
            own.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut next = 0usize;
            // Whole nodes first, largest guarantees first.
            for (left, t) in &mut own {
                while let Some(&n) = nodes.get(next) {
                    let gpus = u64::from(all[n as usize].spec.gpus)
                        * u64::from(crate::model::MILLI_PER_GPU);
                    if gpus == 0 || *left < gpus {
                        break;
                    }
                    homes.mark(teams, *t, m, n);
                    *left -= gpus;
                    next += 1;
                }
            }
            // Remainders, one after another on the nodes left.
            let mut room = nodes.get(next).map_or(0, |&n| {
                u64::from(all[n as usize].spec.gpus) * u64::from(crate::model::MILLI_PER_GPU)
            });
            for (left, t) in &mut own {
                while *left > 0 {
                    let Some(&n) = nodes.get(next) else { break };
                    if room == 0 {
                        next += 1;
                        room = nodes.get(next).map_or(0, |&n| {
                            u64::from(all[n as usize].spec.gpus)
                                * u64::from(crate::model::MILLI_PER_GPU)
                        });
                        continue;
                    }
                    homes.mark(teams, *t, m, n);
                    let take = (*left).min(room);
                    *left -= take;
                    room -= take;
                }
            }
        }
        // Nodes that are nobody's home are common ground: every team is at home there too.
        let n_nodes = all.len() as u32;
        for (t, bits) in homes.bits.iter_mut().enumerate() {
            if bits.is_empty() {
                continue;
            }
            for (w, o) in bits.iter_mut().zip(&homes.owned) {
                *w |= !o;
            }
            for n in (0..n_nodes).filter(|&n| bit(bits, n)) {
                homes.has[t][node_model[n as usize]] = true;
            }
        }
        homes.n_nodes = n_nodes;
        homes
    }

    fn mark(&mut self, teams: &TeamIndex, team: usize, model: usize, n: u32) {
        let words = self.owned.len();
        for &a in &teams.lineage[team] {
            let bits = &mut self.bits[a];
            if bits.is_empty() {
                bits.resize(words, 0);
            }
            set_bit(bits, n);
            self.has[a][model] = true;
        }
        set_bit(&mut self.owned, n);
    }

    /// The team's home as a bit per dense node, where it has one for this model.
    pub(super) fn of(&self, team: usize, model: usize) -> Option<&[u64]> {
        self.has[team][model].then(|| self.bits[team].as_slice())
    }

    /// Whether node `n` is home to the team. A team with no home for the node's model is at
    /// home everywhere of it (its guarantee, if any, is an amount only).
    pub(super) fn at_home(&self, team: usize, model: usize, n: u32) -> bool {
        match self.of(team, model) {
            Some(bits) => bit(bits, n),
            None => true,
        }
    }

    /// The dense nodes that are the team's own home (common ground not included).
    pub(super) fn own(&self, team: usize) -> impl Iterator<Item = u32> + '_ {
        let bits = &self.bits[team];
        (0..self.n_nodes).filter(move |&n| bit(bits, n) && bit(&self.owned, n))
    }

    /// The team's own home (common ground not included), a bit per dense node.
    pub(super) fn own_bits(&self, team: usize) -> Vec<u64> {
        let bits = &self.bits[team];
        self.owned
            .iter()
            .enumerate()
            .map(|(i, &o)| o & bits.get(i).copied().unwrap_or(0))
            .collect()
    }

    /// Whether dense node `n` is nobody's home.
    pub(super) fn common(&self, n: u32) -> bool {
        n < self.n_nodes && !bit(&self.owned, n)
    }

    /// Where a job that cannot be preempted may run: its team's home and nodes that are home
    /// to nobody (a bit per dense node), or `None` where that is everywhere.
    pub(super) fn safe_for(&self, team: usize) -> Option<Vec<u64>> {
        if self.owned.iter().all(|&w| w == 0) {
            return None;
        }
        if !self.bits[team].is_empty() {
            return Some(self.bits[team].clone());
        }
        Some(self.owned.iter().map(|&o| !o).collect())
    }
}

/// Sets node `n`'s bit (the words must reach it).
pub(super) fn set_bit(bits: &mut [u64], n: u32) {
    bits[n as usize / 64] |= 1 << (n % 64);
}

pub(super) fn bit(bits: &[u64], n: u32) -> bool {
    bits.get(n as usize / 64)
        .is_some_and(|w| w & (1 << (n % 64)) != 0)
}
