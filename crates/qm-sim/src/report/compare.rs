//! Per team, a policy against a reference policy, like with like.
//!
//! A team's mean wait under each policy, each over the jobs that started under it, compares
//! different sets of jobs: where a policy never starts a team's large jobs, the team's mean
//! under it is over its small jobs alone and looks better than it is. So the comparison is
//! over the same jobs (by their trace id): those that started under both policies. The jobs
//! that started under one of them only (and were still waiting at the end of the other's
//! replay) are counted apart, in both directions. Rejected jobs are left out: rejection is
//! decided at submission, the same under every policy.
//!
//! The reference is `static` (the partitions Quartermaster replaces) when it ran, else the
//! first policy.

use std::collections::BTreeMap;

use qm_core::JobId;
use serde::Serialize;

use crate::sim::{JobRecord, SimResult};

/// One team, one policy against the reference. `N` counts jobs: `usize` for one pair of
/// replays, `f64` for a mean over pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamComparison<N = usize> {
    pub team: String,
    pub policy: String,
    pub reference: String,
    /// The team's jobs that started under both.
    pub started_both: N,
    /// The mean wait of those jobs under the reference.
    pub reference_wait_mean_s: f64,
    /// The mean wait of the same jobs under the policy.
    pub policy_wait_mean_s: f64,
    /// Policy / reference; none when no job started under both or the reference's mean is 0.
    pub wait_ratio: Option<f64>,
    /// Started under the reference, still waiting at the end under the policy.
    pub started_only_reference: N,
    /// Started under the policy, still waiting at the end under the reference.
    pub started_only_policy: N,
    /// GPU-hours of the team's guarantee it did not hold while it had a pending job that
    /// would have fitted in them ([`crate::sim::SimResult::guarantee_denied`]), under the
    /// reference and under the policy; none for a team without a guarantee.
    pub reference_denied_gpu_h: Option<f64>,
    pub policy_denied_gpu_h: Option<f64>,
}

/// [`SimResult::guarantee_denied`] of `team` in GPU-hours; none for a team without a
/// guarantee (or with sub-teams).
pub(super) fn denied_gpu_h(result: &SimResult, team: &str) -> Option<f64> {
    result
        .guarantee_denied
        .get(team)
        .map(|&milli_s| milli_s as f64 / 1000.0 / 3600.0)
}

/// The reference among policies named `names`: `static` when present, else the first; none
/// for fewer than two policies.
pub fn reference(names: &[&str]) -> Option<usize> {
    (names.len() >= 2).then(|| names.iter().position(|&n| n == "static").unwrap_or(0))
}

/// Every policy but the reference against it, policy by policy (in the order they ran), team
/// by team (by name). Empty for fewer than two policies.
pub fn team_comparisons(results: &[SimResult]) -> Vec<TeamComparison> {
    let labels: Vec<String> = results.iter().map(SimResult::label).collect();
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let Some(r) = reference(&names) else {
        return Vec::new();
    };
    results
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != r)
        .flat_map(|(_, p)| compare(&results[r], p))
        .collect()
}

/// `policy` against `reference`, per team, over the jobs of both replays with the same trace
/// id. Every team with a job accepted in both appears.
pub fn compare(reference: &SimResult, policy: &SimResult) -> Vec<TeamComparison> {
    #[derive(Default)]
    struct Tally {
        both: usize,
        reference_s: u64,
        policy_s: u64,
        only_reference: usize,
        only_policy: usize,
    }
    let by_id: BTreeMap<JobId, &JobRecord> = reference.jobs.iter().map(|j| (j.id, j)).collect();
    let mut teams: BTreeMap<&str, Tally> = BTreeMap::new();
    for p in &policy.jobs {
        let Some(r) = by_id.get(&p.id) else {
            continue;
        };
        if p.rejected.is_some() || r.rejected.is_some() {
            continue;
        }
        let t = teams.entry(&p.team).or_default();
        match (r.first_start_s, p.first_start_s) {
            (Some(rs), Some(ps)) => {
                t.both += 1;
                t.reference_s += rs - r.submit_s;
                t.policy_s += ps - p.submit_s;
            }
            (Some(_), None) => t.only_reference += 1,
            (None, Some(_)) => t.only_policy += 1,
            (None, None) => {}
        }
    }
    teams
        .into_iter()
        .map(|(team, t)| {
            let n = t.both.max(1) as f64;
            let (reference_wait_mean_s, policy_wait_mean_s) =
                (t.reference_s as f64 / n, t.policy_s as f64 / n);
            TeamComparison {
                team: team.to_string(),
                policy: policy.label(),
                reference: reference.label(),
                started_both: t.both,
                reference_wait_mean_s,
                policy_wait_mean_s,
                wait_ratio: ratio(reference_wait_mean_s, policy_wait_mean_s),
                started_only_reference: t.only_reference,
                started_only_policy: t.only_policy,
                reference_denied_gpu_h: denied_gpu_h(reference, team),
                policy_denied_gpu_h: denied_gpu_h(policy, team),
            }
        })
        .collect()
}

/// `policy_s / reference_s`; none when the reference's mean is 0 (as it is when no job
/// started under both).
pub(super) fn ratio(reference_s: f64, policy_s: f64) -> Option<f64> {
    (reference_s > 0.0).then(|| policy_s / reference_s)
}

impl TeamComparison {
    /// The same figures with the counts as `f64`: the form of a mean over pairs of replays.
    pub fn counts_as_f64(&self) -> TeamComparison<f64> {
        TeamComparison {
            team: self.team.clone(),
            policy: self.policy.clone(),
            reference: self.reference.clone(),
            started_both: self.started_both as f64,
            reference_wait_mean_s: self.reference_wait_mean_s,
            policy_wait_mean_s: self.policy_wait_mean_s,
            wait_ratio: self.wait_ratio,
            started_only_reference: self.started_only_reference as f64,
            started_only_policy: self.started_only_policy as f64,
            reference_denied_gpu_h: self.reference_denied_gpu_h,
            policy_denied_gpu_h: self.policy_denied_gpu_h,
        }
    }
}
