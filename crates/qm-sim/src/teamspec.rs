//! Team trees for a simulation: a TOML file, or `auto`.
//!
//! `auto` gives every team in the trace a guarantee proportional to its GPU-time demand
//! (GPUs x duration over the whole trace), summing to the cluster's GPUs (largest remainder),
//! weight 1, no max.
//!
//! TOML:
//!
//! ```toml
//! [[team]]
//! name = "research"
//! guaranteed = 64         # GPUs of any model
//!
//! [[team]]
//! name = "vision"
//! parent = "research"
//! guaranteed = 32
//! max = 96                # optional borrowing limit
//! weight = 2              # optional, default 1
//! max_cpu = 512           # optional: the most CPUs its running jobs may hold
//! quotas = { A100 = { guaranteed = 8, max = 16 } }   # optional, per GPU model
//! ```

use std::collections::BTreeMap;

use qm_core::{IdlePolicy, Quota, TeamSpec, ANY_MODEL};
use serde::Deserialize;

use crate::cluster::SpecError;
use crate::trace::TraceJob;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamsFile {
    team: Vec<TeamEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamEntry {
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    guaranteed: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    quotas: BTreeMap<String, Quota>,
    #[serde(default)]
    idle_policy: IdlePolicy,
    /// The most CPUs the team's running jobs may hold at once.
    #[serde(default)]
    max_cpu: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Parses a TOML team tree. Validation of the tree itself (parents, guarantees) happens when
/// the teams are applied to the core, which names the offending team.
pub fn from_toml(name: &str, text: &str) -> Result<Vec<TeamSpec>, SpecError> {
    let file: TeamsFile = toml::from_str(text).map_err(|e| SpecError(format!("{name}: {e}")))?;
    let mut out = Vec::new();
    for t in file.team {
        let mut quotas = t.quotas;
        if t.guaranteed.is_some() || t.max.is_some() {
            quotas.insert(
                ANY_MODEL.to_string(),
                Quota {
                    guaranteed: t.guaranteed.unwrap_or(0),
                    max: t.max,
                },
            );
        }
        out.push(TeamSpec {
            name: t.name,
            parent: t.parent,
            quotas,
            weight: t.weight,
            idle_policy: t.idle_policy,
            priorities: [0, 0],
            max_cpu_milli: t.max_cpu.map(|c| c.saturating_mul(1000)),
            partitions: Vec::new(),
        });
    }
    Ok(out)
}

/// Reads `arg`: `auto` (see [`auto`]; in whole nodes where the cluster's nodes are alike) or
/// a TOML file.
pub fn from_arg(
    arg: &str,
    jobs: &[TraceJob],
    cluster: &crate::cluster::ClusterSpec,
) -> Result<Vec<TeamSpec>, SpecError> {
    if arg == "auto" {
        let unit = cluster.node_gpus().map_or(1, u64::from);
        return Ok(auto(jobs, cluster.gpus(), unit));
    }
    let text = std::fs::read_to_string(arg).map_err(|e| {
        SpecError(format!(
            "cannot read team tree {arg}: {e}; give a TOML file or \"auto\""
        ))
    })?;
    from_toml(arg, &text)
}

/// Guarantees proportional to each team's GPU-time demand, summing to `gpus`, in multiples
/// of `unit` GPUs (largest remainder in units; `gpus` a multiple of `unit`).
///
/// `qm sim run --teams auto` gives guarantees in whole nodes where the cluster's nodes are
/// alike: `static` partitions are whole nodes, so a guarantee that is not would be compared
/// with a partition larger or smaller than itself. On Philly on 48 x 8, a team guaranteed
/// 5 GPUs was partitioned a whole node under `static` (60 % more than its guarantee) and
/// seemed to lose in the pool; like with like needs the partition to be the guarantee.
pub fn auto(jobs: &[TraceJob], gpus: u64, unit: u64) -> Vec<TeamSpec> {
    let unit = unit.max(1);
    let units = gpus / unit;
    let mut demand: BTreeMap<&str, u128> = BTreeMap::new();
    for j in jobs {
        *demand.entry(j.team.as_str()).or_default() +=
            u128::from(j.gpu.milli()) * u128::from(j.tasks) * u128::from(j.duration_s);
    }
    let total: u128 = demand.values().sum();
    if total == 0 {
        return demand.keys().map(|t| TeamSpec::new(t, 0)).collect();
    }
    // Largest remainder: floor shares, then one more GPU to the largest remainders.
    let mut shares: Vec<(&str, u64, u128)> = demand
        .iter()
        .map(|(t, d)| {
            let exact = d * u128::from(units);
            (*t, (exact / total) as u64, exact % total)
        })
        .collect();
    let given: u64 = shares.iter().map(|s| s.1).sum();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        shares[b]
            .2
            .cmp(&shares[a].2)
            .then(shares[a].0.cmp(shares[b].0))
    });
    for &i in order.iter().take((units - given) as usize) {
        shares[i].1 += 1;
    }
    shares
        .into_iter()
        .map(|(t, g, _)| TeamSpec::new(t, (g * unit) as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_core::GpuAsk;

    fn job(team: &str, gpus: u32, duration_s: u64) -> TraceJob {
        TraceJob {
            id: 1,
            submit_s: 0,
            duration_s,
            tasks: 1,
            gpu: GpuAsk::Whole(gpus),
            cpu_milli: 1000,
            mem_mib: 1024,
            team: team.to_string(),
            user: String::new(),
            priority: 0,
            gpu_model: None,
            time_limit_s: None,
            preemptible: true,
            util_pct: None,
            idle_after_s: None,
        }
    }

    #[test]
    fn auto_guarantees_follow_demand_and_sum_to_the_cluster() {
        let jobs = vec![job("a", 1, 300), job("b", 2, 100), job("c", 1, 100)];
        let teams = auto(&jobs, 10, 1);
        let g: Vec<u32> = teams
            .iter()
            .map(|t| t.quotas[ANY_MODEL].guaranteed)
            .collect();
        assert_eq!(g.iter().sum::<u32>(), 10);
        assert_eq!(g, vec![5, 3, 2]);
        // In whole 4-GPU nodes: 2, 1.33 and 0.67 nodes of demand become 2, 1 and 1 nodes
        // (the last node to the largest remainder), 16 GPUs.
        let nodes: Vec<u32> = auto(&jobs, 16, 4)
            .iter()
            .map(|t| t.quotas[ANY_MODEL].guaranteed)
            .collect();
        assert_eq!(nodes, vec![8, 4, 4]);
    }

    #[test]
    fn toml_trees_parse_and_bad_keys_are_named() {
        let teams = from_toml(
            "t.toml",
            "[[team]]\nname = \"org\"\nguaranteed = 8\n[[team]]\nname = \"a\"\nparent = \"org\"\nguaranteed = 4\nmax = 6\nweight = 2\nmax_cpu = 12\n",
        )
        .unwrap();
        assert_eq!(teams[1].max_cpu_milli, Some(12_000));
        assert_eq!(teams[0].max_cpu_milli, None);
        assert_eq!(teams[1].parent.as_deref(), Some("org"));
        assert_eq!(teams[1].quotas[ANY_MODEL].max, Some(6));
        assert_eq!(teams[1].weight, 2);
        let err = from_toml("t.toml", "[[team]]\nname = \"x\"\nguarantee = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml") && err.contains("guarantee"), "{err}");
    }
}
