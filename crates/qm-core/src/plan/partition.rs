//! `static` partitions: each leaf team gets whole nodes of each GPU model in proportion to
//! its guarantee for that model, contiguous in topology order.

use std::collections::BTreeMap;

use crate::model::NodeId;
use crate::state::ClusterState;
use crate::teams::TeamIndex;

/// `static`: each leaf team gets whole nodes of each GPU model in proportion to its
/// guarantee for that model, contiguous in topology order.
pub(super) fn static_partition(
    state: &ClusterState,
    models: &[String],
    teams: &TeamIndex,
    leaf_rank: &[Option<usize>],
) -> BTreeMap<NodeId, usize> {
    let mut out = BTreeMap::new();
    for (m, model) in models.iter().enumerate() {
        let mut nodes: Vec<_> = state
            .nodes
            .values()
            .filter(|n| &n.spec.gpu_model == model)
            .collect();
        nodes.sort_by(|a, b| {
            a.spec
                .topology
                .cmp(&b.spec.topology)
                .then(a.spec.id.cmp(&b.spec.id))
        });
        let capacity: u64 = nodes.iter().map(|n| u64::from(n.spec.gpus)).sum();
        let shares: Vec<(usize, u64)> = leaf_rank
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.map(|r| (r, teams.guaranteed(t, m))))
            .filter(|&(_, g)| g > 0)
            .collect();
        let total: u64 = shares.iter().map(|s| s.1).sum();
        if total == 0 || capacity == 0 {
            continue;
        }
        // A node goes to the team whose share of the line contains the node's midpoint.
        let mut pos = 0u64;
        let mut idx = 0;
        let mut cum = shares[0].1;
        for node in nodes {
            let mid2 = 2 * pos + u64::from(node.spec.gpus);
            while idx + 1 < shares.len() && mid2 * total >= 2 * cum * capacity {
                idx += 1;
                cum += shares[idx].1;
            }
            out.insert(node.spec.id, shares[idx].0);
            pos += u64::from(node.spec.gpus);
        }
    }
    out
}
