//! The protocol's inputs: the node and pod lists with what every run derives from them (the
//! cluster's GPU models, FGD's target workload, each pod's acceptable models), and the seeds.

use super::fgd::{target_workload, PodType};
use super::{PackNode, Pod};
use crate::trace::openb::MILLI;

/// The protocol's inputs, shared by every run.
pub struct PackInput {
    pub nodes: Vec<PackNode>,
    pub pods: Vec<Pod>,
    pub demand: f64,
    pub(super) models: Models,
    pub(super) types: Vec<PodType>,
    pub(super) masks: Vec<u32>,
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

/// The cluster's GPU models, for bit sets of acceptable models.
#[derive(Clone, Debug)]
pub struct Models(Vec<String>);

impl Models {
    pub(super) fn of(nodes: &[PackNode]) -> Result<Models, String> {
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

    pub(super) fn index(&self, model: &str) -> u32 {
        self.0
            .binary_search_by(|m| m.as_str().cmp(model))
            .map_or(u32::MAX, |i| i as u32)
    }

    /// The models a `gpu_spec` accepts; all of them for an empty spec.
    pub(super) fn mask(&self, spec: &str) -> u32 {
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
