//! Perturbed replays: the same trace, cluster and policies with the ties broken another way,
//! by seed ([`crate::sim::SimOptions::perturb_seed`]), and how much each figure moves over
//! them.
//!
//! For each policy: every figure of the main table as mean, sample standard deviation
//! (n - 1; none for a single replay) and coefficient of variation (SD / mean); each team's
//! waits as the mean over replays; and the like-with-like comparisons of each replay (the
//! policy's replay p against the reference's replay p, dealt by the same seed) averaged.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::compare::{self, TeamComparison};
use super::tables::{FIGURES, IDLE_FIGURES};
use super::{summarize, PolicyReport};
use crate::sim::SimResult;

/// A figure over replays.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    /// Sample standard deviation (n - 1); none for fewer than two values.
    pub sd: Option<f64>,
    /// SD / mean; none without an SD or for a mean of 0.
    pub cv: Option<f64>,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        let n = xs.len() as f64;
        let mean = if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / n
        };
        let sd = (xs.len() >= 2)
            .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        let cv = sd.filter(|_| mean != 0.0).map(|sd| sd / mean.abs());
        Stat { mean, sd, cv }
    }
}

/// The main table's figures over replays, by their names in `report.json`, in the table's
/// order.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures(pub Vec<(&'static str, Stat)>);

impl Figures {
    pub fn get(&self, key: &str) -> Option<Stat> {
        self.0.iter().find(|f| f.0 == key).map(|f| f.1)
    }
}

impl Serialize for Figures {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, stat) in &self.0 {
            map.serialize_entry(key, stat)?;
        }
        map.end()
    }
}

/// One team's waits (censored ones included), mean over replays.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TeamWaitsMean {
    pub team: String,
    pub jobs: f64,
    pub censored: f64,
    pub mean_s: f64,
    /// The sample SD of the team's mean wait over replays.
    pub mean_s_sd: Option<f64>,
}

/// A like-with-like comparison, mean over pairs of replays: counts and the two wait means are
/// means (the wait means over the replays where some job started under both); the ratio is
/// that of the two means.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TeamComparisonMean {
    #[serde(flatten)]
    pub mean: TeamComparison<f64>,
    /// The sample SD of the replays' own ratios.
    pub wait_ratio_sd: Option<f64>,
}

/// One policy over the perturbed replays.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PerturbedPolicy {
    pub policy: String,
    pub figures: Figures,
    pub team_waits: Vec<TeamWaitsMean>,
    /// Each replay's report, replay 1 first.
    pub replays: Vec<PolicyReport>,
}

/// `report.json`'s `perturbed`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perturbed {
    /// K, the number of perturbed replays of each policy.
    pub replays: usize,
    /// Replay p's seed is `seeds[p - 1]` ([`crate::sim::perturb_seeds`]).
    pub seeds: Vec<u64>,
    pub policies: Vec<PerturbedPolicy>,
    pub team_comparisons: Vec<TeamComparisonMean>,
}

/// The perturbed section of a report: `replays[p - 1]` holds every policy's replay p, in the
/// same policy order in each, dealt by `seeds[p - 1]`.
pub fn perturbed(seeds: &[u64], replays: &[Vec<SimResult>]) -> Perturbed {
    let policies = replays.first().map_or(0, Vec::len);
    let reports: Vec<Vec<PolicyReport>> = replays
        .iter()
        .map(|r| r.iter().map(summarize).collect())
        .collect();
    let per_policy = (0..policies)
        .map(|i| {
            let runs: Vec<PolicyReport> = reports.iter().map(|r| r[i].clone()).collect();
            // The idle figures too, where the trace has idle holds.
            let idle = runs.iter().any(|r| r.idle_gpu_hours > 0.0);
            let figures = FIGURES
                .iter()
                .chain(IDLE_FIGURES.iter().filter(|_| idle))
                .map(|f| {
                    let xs: Vec<f64> = runs.iter().map(f.get).collect();
                    (f.key, Stat::of(&xs))
                })
                .collect();
            PerturbedPolicy {
                policy: runs[0].policy.clone(),
                figures: Figures(figures),
                team_waits: team_waits_mean(&runs),
                replays: runs,
            }
        })
        .collect();
    Perturbed {
        replays: replays.len(),
        seeds: seeds.to_vec(),
        policies: per_policy,
        team_comparisons: comparisons_mean(replays),
    }
}

fn team_waits_mean(runs: &[PolicyReport]) -> Vec<TeamWaitsMean> {
    let mut teams: BTreeMap<&str, Vec<&super::Waits>> = BTreeMap::new();
    for run in runs {
        for t in &run.team_waits {
            teams.entry(&t.team).or_default().push(&t.waits);
        }
    }
    teams
        .into_iter()
        .map(|(team, w)| {
            let of =
                |f: fn(&super::Waits) -> f64| Stat::of(&w.iter().map(|w| f(w)).collect::<Vec<_>>());
            let mean_s = of(|w| w.mean_s);
            TeamWaitsMean {
                team: team.to_string(),
                jobs: of(|w| w.jobs as f64).mean,
                censored: of(|w| w.censored as f64).mean,
                mean_s: mean_s.mean,
                mean_s_sd: mean_s.sd,
            }
        })
        .collect()
}

fn comparisons_mean(replays: &[Vec<SimResult>]) -> Vec<TeamComparisonMean> {
    // By (policy, team), in the order of the first replay's comparisons.
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut by_key: BTreeMap<(String, String), Vec<TeamComparison>> = BTreeMap::new();
    for replay in replays {
        for c in compare::team_comparisons(replay) {
            let key = (c.policy.clone(), c.team.clone());
            let list = by_key.entry(key.clone()).or_default();
            if list.is_empty() {
                keys.push(key);
            }
            list.push(c);
        }
    }
    keys.into_iter()
        .map(|key| {
            let cs = &by_key[&key];
            let mean = |f: fn(&TeamComparison) -> f64| {
                Stat::of(&cs.iter().map(f).collect::<Vec<_>>()).mean
            };
            // The wait means of the replays where some job started under both.
            let started: Vec<&TeamComparison> = cs.iter().filter(|c| c.started_both > 0).collect();
            let wait = |f: fn(&TeamComparison) -> f64| {
                Stat::of(&started.iter().map(|c| f(c)).collect::<Vec<_>>()).mean
            };
            let reference_wait_mean_s = wait(|c| c.reference_wait_mean_s);
            let policy_wait_mean_s = wait(|c| c.policy_wait_mean_s);
            let ratios: Vec<f64> = cs.iter().filter_map(|c| c.wait_ratio).collect();
            let denied = |f: fn(&TeamComparison) -> Option<f64>| {
                let xs: Vec<f64> = cs.iter().filter_map(f).collect();
                (!xs.is_empty()).then(|| Stat::of(&xs).mean)
            };
            TeamComparisonMean {
                mean: TeamComparison {
                    team: key.1,
                    policy: key.0,
                    reference: cs[0].reference.clone(),
                    started_both: mean(|c| c.started_both as f64),
                    reference_wait_mean_s,
                    policy_wait_mean_s,
                    wait_ratio: compare::ratio(reference_wait_mean_s, policy_wait_mean_s),
                    started_only_reference: mean(|c| c.started_only_reference as f64),
                    started_only_policy: mean(|c| c.started_only_policy as f64),
                    reference_denied_gpu_h: denied(|c| c.reference_denied_gpu_h),
                    policy_denied_gpu_h: denied(|c| c.policy_denied_gpu_h),
                },
                wait_ratio_sd: Stat::of(&ratios).sd,
            }
        })
        .collect()
}
