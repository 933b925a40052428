//! Cluster specs: a TOML file of node groups, a shorthand such as `64x8`, or a node list in
//! the openb format (`*.csv` with `sn,cpu_milli,memory_mib,gpu,model`).
//!
//! Shorthand: comma-separated `COUNTxGPUS[@MODEL]`, e.g. `64x8` (64 nodes of 8 GPUs of model
//! "GPU") or `32x8@A100,16x4@T4`. Nodes get 8 CPU cores and 64 GiB of memory per GPU, 16
//! nodes per rack, 8 racks per pod.
//!
//! TOML:
//!
//! ```toml
//! [[group]]
//! count = 64             # nodes
//! gpus = 8               # GPUs per node
//! model = "V100"         # default "GPU"
//! cpu_milli = 64000      # default 8000 per GPU
//! mem_mib = 524288       # default 65536 per GPU
//! nodes_per_rack = 16    # default 16
//! ```

use std::fmt;
use std::path::Path;

use qm_core::{NodeId, NodeSpec};
use serde::Deserialize;

/// One group of identical nodes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    pub count: u32,
    pub gpus: u32,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub cpu_milli: Option<u64>,
    #[serde(default)]
    pub mem_mib: Option<u64>,
    #[serde(default = "default_per_rack")]
    pub nodes_per_rack: u32,
}

fn default_model() -> String {
    "GPU".to_string()
}

fn default_per_rack() -> u32 {
    16
}

const RACKS_PER_POD: u32 = 8;

/// A whole cluster: node groups, in order.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub group: Vec<NodeGroup>,
}

/// A spec that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

impl ClusterSpec {
    /// Reads `arg` as a shorthand if it looks like one, else as a TOML file.
    pub fn from_arg(arg: &str) -> Result<ClusterSpec, SpecError> {
        if arg.chars().next().is_some_and(|c| c.is_ascii_digit()) && !Path::new(arg).exists() {
            return ClusterSpec::shorthand(arg);
        }
        if arg.ends_with(".csv") {
            return ClusterSpec::node_list(Path::new(arg));
        }
        let text = std::fs::read_to_string(arg).map_err(|e| {
            SpecError(format!(
                "cannot read cluster spec {arg}: {e}; give a file or a shorthand such as 64x8"
            ))
        })?;
        ClusterSpec::from_toml(arg, &text)
    }

    /// An openb-style node list (`sn,cpu_milli,memory_mib,gpu,model`): identical nodes in
    /// one group each, in order of first appearance; nodes without GPUs are left out (the
    /// scheduler places GPU jobs only).
    pub fn node_list(path: &Path) -> Result<ClusterSpec, SpecError> {
        let nodes = crate::trace::openb::load_nodes(path).map_err(|e| SpecError(e.to_string()))?;
        let mut group: Vec<NodeGroup> = Vec::new();
        for n in nodes.iter().filter(|n| n.gpus > 0) {
            let same = group.iter_mut().find(|g| {
                g.gpus == n.gpus
                    && g.model == n.model
                    && g.cpu_milli == Some(n.cpu_milli)
                    && g.mem_mib == Some(n.mem_mib)
            });
            match same {
                Some(g) => g.count += 1,
                None => group.push(NodeGroup {
                    count: 1,
                    gpus: n.gpus,
                    model: n.model.clone(),
                    cpu_milli: Some(n.cpu_milli),
                    mem_mib: Some(n.mem_mib),
                    nodes_per_rack: default_per_rack(),
                }),
            }
        }
        let spec = ClusterSpec { group };
        spec.check()?;
        Ok(spec)
    }

    pub fn shorthand(s: &str) -> Result<ClusterSpec, SpecError> {
        let bad = |part: &str| {
            SpecError(format!(
                "cluster shorthand {part:?} not understood; expected COUNTxGPUS[@MODEL], e.g. 64x8 or 32x8@A100,16x4@T4"
            ))
        };
        let mut group = Vec::new();
        for part in s.split(',') {
            let (shape, model) = match part.split_once('@') {
                Some((shape, model)) if !model.is_empty() => (shape, model.to_string()),
                Some(_) => return Err(bad(part)),
                None => (part, default_model()),
            };
            let (count, gpus) = shape.split_once('x').ok_or_else(|| bad(part))?;
            let count: u32 = count.trim().parse().map_err(|_| bad(part))?;
            let gpus: u32 = gpus.trim().parse().map_err(|_| bad(part))?;
            group.push(NodeGroup {
                count,
                gpus,
                model,
                cpu_milli: None,
                mem_mib: None,
                nodes_per_rack: default_per_rack(),
            });
        }
        let spec = ClusterSpec { group };
        spec.check()?;
        Ok(spec)
    }

    pub fn from_toml(name: &str, text: &str) -> Result<ClusterSpec, SpecError> {
        let spec: ClusterSpec =
            toml::from_str(text).map_err(|e| SpecError(format!("{name}: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), SpecError> {
        if self.group.is_empty() {
            return Err(SpecError("a cluster needs at least one node group".into()));
        }
        for (i, g) in self.group.iter().enumerate() {
            if g.count == 0 || g.gpus == 0 || g.gpus > 64 || g.nodes_per_rack == 0 {
                return Err(SpecError(format!(
                    "node group {}: count and nodes_per_rack must be at least 1 and gpus 1..=64 (got count {}, gpus {}, nodes_per_rack {})",
                    i + 1,
                    g.count,
                    g.gpus,
                    g.nodes_per_rack
                )));
            }
        }
        Ok(())
    }

    /// The GPUs of every node, where all nodes have the same number.
    pub fn node_gpus(&self) -> Option<u32> {
        let first = self.group.first()?.gpus;
        self.group.iter().all(|g| g.gpus == first).then_some(first)
    }

    pub fn gpus(&self) -> u64 {
        self.group
            .iter()
            .map(|g| u64::from(g.count) * u64::from(g.gpus))
            .sum()
    }

    /// The nodes, numbered from 0, racks numbered across groups.
    pub fn nodes(&self) -> Vec<NodeSpec> {
        let mut out = Vec::new();
        let mut rack_base = 0;
        for g in &self.group {
            for i in 0..g.count {
                let rack = rack_base + i / g.nodes_per_rack;
                let id = out.len() as u32;
                out.push(NodeSpec {
                    id: NodeId(id),
                    name: format!("node-{id:05}"),
                    gpus: g.gpus,
                    gpu_model: g.model.clone(),
                    gpu_mem_mib: 81_920,
                    cpu_milli: g.cpu_milli.unwrap_or(8_000 * u64::from(g.gpus)),
                    mem_mib: g.mem_mib.unwrap_or(65_536 * u64::from(g.gpus)),
                    labels: Default::default(),
                    topology: vec![
                        format!("pod-{}", rack / RACKS_PER_POD),
                        format!("rack-{rack}"),
                    ],
                });
            }
            rack_base += g.count.div_ceil(g.nodes_per_rack);
        }
        out
    }

    /// Per-node maxima, for checking that a trace job can fit.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .group
            .iter()
            .map(|g| format!("{}x{}@{}", g.count, g.gpus, g.model))
            .collect();
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_and_toml_describe_the_same_cluster() {
        let a = ClusterSpec::shorthand("64x8").unwrap();
        let b = ClusterSpec::from_toml("c.toml", "[[group]]\ncount = 64\ngpus = 8\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.gpus(), 512);
        let nodes = a.nodes();
        assert_eq!(nodes.len(), 64);
        assert_eq!(nodes[17].topology, vec!["pod-0", "rack-1"]);
    }

    #[test]
    fn mixed_models_and_bad_input() {
        let c = ClusterSpec::shorthand("2x8@A100,3x4@T4").unwrap();
        assert_eq!(c.gpus(), 28);
        assert_eq!(c.nodes()[4].gpu_model, "T4");
        let err = ClusterSpec::shorthand("64by8").unwrap_err().to_string();
        assert!(err.contains("expected COUNTxGPUS"), "{err}");
        let err = ClusterSpec::from_toml("c.toml", "[[group]]\ncount = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml") && err.contains("gpus"), "{err}");
        let err = ClusterSpec::shorthand("0x8").unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
}
