//! The team tree: validation, and a dense index of it for planning.
//!
//! Quotas are kept per pool: a team's pool for GPU model `M` is its quota keyed `M` if it has
//! one, else its quota keyed [`ANY_MODEL`] (zero guarantee and no limit if it has neither).
//! A parent's pool for `M` covers its children's pools for `M` in the same way.

use std::collections::BTreeMap;

use crate::error::ApplyError;
use crate::model::{Quota, TeamSpec, ANY_MODEL, MILLI_PER_GPU};

/// Checks a whole tree: names, parents, cycles, weights and that children's guarantees fit
/// inside their parent's, pool by pool.
pub fn validate(specs: &BTreeMap<String, TeamSpec>) -> Result<(), ApplyError> {
    let bad = |team: &str, why: String| ApplyError::InvalidTeam {
        team: team.to_string(),
        why,
    };
    for (name, spec) in specs {
        if name.is_empty() || name == ANY_MODEL || name.chars().any(char::is_whitespace) {
            return Err(bad(
                name,
                "a team name must be non-empty, without spaces".into(),
            ));
        }
        if spec.weight == 0 {
            return Err(bad(name, "weight must be at least 1".into()));
        }
        for (key, quota) in &spec.quotas {
            if key.is_empty() {
                return Err(bad(
                    name,
                    format!("quota key must be a GPU model or {ANY_MODEL:?}"),
                ));
            }
            if let Some(max) = quota.max {
                if max < quota.guaranteed {
                    return Err(bad(
                        name,
                        format!(
                            "max {max} is below guaranteed {} for GPU pool {key:?}; max must be at least the guarantee",
                            quota.guaranteed
                        ),
                    ));
                }
            }
        }
        if let Some(parent) = &spec.parent {
            if parent == name {
                return Err(bad(name, "a team cannot be its own parent".into()));
            }
            if !specs.contains_key(parent) {
                return Err(bad(name, format!("parent team {parent:?} does not exist")));
            }
        }
        // Cycle check: walking up must end within the number of teams.
        let mut cursor = spec.parent.as_deref();
        let mut steps = 0;
        while let Some(p) = cursor {
            steps += 1;
            if p == name || steps > specs.len() {
                return Err(bad(name, "the parent chain loops back on itself".into()));
            }
            cursor = specs.get(p).and_then(|s| s.parent.as_deref());
        }
    }
    // For every GPU pool key a parent or child names, the children's effective guarantees
    // (their own key, else their "*") must fit the parent's effective guarantee.
    let effective = |spec: &TeamSpec, key: &str| -> u64 {
        spec.quotas
            .get(key)
            .or_else(|| spec.quotas.get(ANY_MODEL))
            .map_or(0, |q| u64::from(q.guaranteed))
    };
    for parent in specs.values() {
        let children: Vec<&TeamSpec> = specs
            .values()
            .filter(|s| s.parent.as_deref() == Some(parent.name.as_str()))
            .collect();
        if children.is_empty() {
            continue;
        }
        let mut keys: Vec<&str> = vec![ANY_MODEL];
        keys.extend(parent.quotas.keys().map(String::as_str));
        keys.extend(
            children
                .iter()
                .flat_map(|c| c.quotas.keys().map(String::as_str)),
        );
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let sum: u64 = children.iter().map(|c| effective(c, key)).sum();
            let have = effective(parent, key);
            if sum > have {
                let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
                let pool = if key == ANY_MODEL {
                    "any GPU model".to_string()
                } else {
                    format!("GPU model {key}")
                };
                return Err(bad(
                    &parent.name,
                    format!(
                        "its sub-teams ({}) are guaranteed {sum} GPUs of {pool} but it is guaranteed only {have}; raise its guarantee or lower theirs",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// One quota pool of one team, in milli-GPUs.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub guaranteed: u64,
    pub max: Option<u64>,
}

/// The tree in dense form, for the planner: teams by index in name order.
#[derive(Clone, Debug)]
pub(crate) struct TeamIndex {
    pub names: Vec<String>,
    pub by_name: BTreeMap<String, usize>,
    pub is_leaf: Vec<bool>,
    pub weight: Vec<u32>,
    /// Each team followed by its ancestors up to the root.
    pub lineage: Vec<Vec<usize>>,
    pub pools: Vec<Vec<Pool>>,
    /// `[team][model]`: the pool that GPUs of that model count against.
    pub pool_of_model: Vec<Vec<usize>>,
    /// `[team]`: the most milli-CPUs its running jobs may hold, sub-teams' included.
    pub max_cpu: Vec<Option<u64>>,
}

impl TeamIndex {
    pub fn build<'a>(specs: impl Iterator<Item = &'a TeamSpec>, models: &[String]) -> TeamIndex {
        let specs: Vec<&TeamSpec> = specs.collect();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let by_name: BTreeMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let parent: Vec<Option<usize>> = specs
            .iter()
            .map(|s| s.parent.as_ref().and_then(|p| by_name.get(p).copied()))
            .collect();
        let mut is_leaf = vec![true; specs.len()];
        for p in parent.iter().flatten() {
            is_leaf[*p] = false;
        }
        let lineage = (0..specs.len())
            .map(|t| {
                let mut chain = vec![t];
                let mut cursor = parent[t];
                while let Some(p) = cursor {
                    if chain.len() > specs.len() {
                        break;
                    }
                    chain.push(p);
                    cursor = parent[p];
                }
                chain
            })
            .collect();
        let mut pools = Vec::with_capacity(specs.len());
        let mut pool_of_model = Vec::with_capacity(specs.len());
        for spec in &specs {
            let mut keys: Vec<(&str, Quota)> =
                spec.quotas.iter().map(|(k, q)| (k.as_str(), *q)).collect();
            if !spec.quotas.contains_key(ANY_MODEL) {
                keys.push((ANY_MODEL, Quota::default()));
            }
            let any = keys
                .iter()
                .position(|(k, _)| *k == ANY_MODEL)
                .expect("added");
            pool_of_model.push(
                models
                    .iter()
                    .map(|m| keys.iter().position(|(k, _)| k == m).unwrap_or(any))
                    .collect(),
            );
            pools.push(
                keys.iter()
                    .map(|(_, q)| Pool {
                        guaranteed: u64::from(q.guaranteed) * u64::from(MILLI_PER_GPU),
                        max: q.max.map(|m| u64::from(m) * u64::from(MILLI_PER_GPU)),
                    })
                    .collect(),
            );
        }
        TeamIndex {
            names,
            by_name,
            is_leaf,
            weight: specs.iter().map(|s| s.weight.max(1)).collect(),
            lineage,
            pools,
            pool_of_model,
            max_cpu: specs.iter().map(|s| s.max_cpu_milli).collect(),
        }
    }

    /// Guaranteed milli-GPUs of a team for a model.
    pub fn guaranteed(&self, team: usize, model: usize) -> u64 {
        self.pools[team][self.pool_of_model[team][model]].guaranteed
    }
}
