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
//!
//! # Code map
//!
//! - The node and pod lists are read by [`crate::trace::openb`], the same reader as the openb
//!   replay's; `input` holds what every run derives from them ([`PackInput`]) and the seeds.
//! - `room`: the free capacity of every node during a run.
//! - `baselines`: the paper's policies; `fgd`: its fragmentation measure, target workload and
//!   score, kept apart from `qm-core`'s own on purpose.
//! - `quartermaster`: the `quartermaster` policy, a real `ClusterState` fed one pod at a time.
//! - `protocol`: seeded order, tuning to the demand, each pod placed once or dropped
//!   ([`run_seed`], [`run_all`]).
//! - `curve`: the allocation curve per 1 % of arrived demand, and the report.

mod baselines;
mod curve;
mod fgd;
mod input;
mod protocol;
mod quartermaster;
mod room;

use std::fmt;
use std::str::FromStr;

use qm_core::UnknownName;

use crate::rng::Rng;
pub use crate::trace::openb::{
    load_nodes, load_pods, parse_nodes, parse_pods, PackNode, Pod, MAX_NODE_GPUS,
};
pub use curve::{report_json, table, write_report, PackMeta, PolicyRun};
pub use fgd::{target_workload, PodType};
pub use input::{parse_seeds, Models, PackInput};
pub use protocol::{arrivals, run_all, run_seed, SeedRun};

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
    /// - One team owns the cluster; pods are jobs of one task, never preempted. CPU-only pods
    ///   are jobs without GPUs, placed by the core like the rest (where they strand the fewest
    ///   GPUs).
    /// - The core knows nothing of the protocol's random node ranks: its fixed order is the
    ///   node list's.
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

impl FromStr for PackPolicy {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase();
        PackPolicy::ALL
            .into_iter()
            .find(|p| p.name() == key)
            .ok_or_else(|| {
                UnknownName::new(
                    ("packing policy", "policies"),
                    s,
                    &PackPolicy::ALL,
                    PackPolicy::name,
                )
            })
    }
}
