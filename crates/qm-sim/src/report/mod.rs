//! Metrics of a run and the report files: `report.json`, `report.md` and SVG charts.
//!
//! Definitions (all times in seconds):
//! - `jobs`: trace jobs that completed; `rejected`: refused at submission (they could never
//!   run on this cluster: a gang no node set holds, or above a team's `max`; the same under
//!   every policy); `unfinished`: accepted but never completed (for example a job larger than
//!   its team's partition under `static`, which never starts).
//! - JCT = completion - submission; wait = first start - submission (queueing delay);
//!   slowdown = JCT / duration. `jct_*`, `wait_mean_s` to `wait_max_s`, `slowdown_mean` and
//!   `teams` are over completed jobs.
//! - `wait_all` and `team_waits` are over every accepted job: a job that started has its
//!   wait; a job still waiting when the replay ended (never started, not rejected) counts
//!   with its wait so far, `replay_end_s` - submission, a *censored* wait (its real wait is
//!   longer), and `censored` counts these. The tables' waits are these: over started or
//!   completed jobs alone, a policy that never runs a team's large jobs would look better for
//!   it.
//! - `team_comparisons` ([`compare`]): per team, each policy against the reference (`static`
//!   when it ran, else the first policy), like with like: the mean wait of the same jobs,
//!   those that started under both, and apart, how many started under one only.
//! - `perturbed` (only with `qm sim run --perturb K`; [`perturbed`]): the K perturbed replays
//!   of each policy, whose ties the core breaks another way, and each figure of the main
//!   table over them as mean, sample SD and coefficient of variation. Everything else in the
//!   report is the replay in the trace's order, as without the flag.
//! - `gpu_allocation`: allocated GPU-time / (cluster GPUs x span), span from the first
//!   submission to the last completion (`makespan_s`).
//! - `gpu_hours_lost`: GPU-hours of runs cut short by preemption (a preempted job restarts).
//! - `idle_gpu_hours_reclaimed`: traces carry no utilisation samples, so this is 0 here.
//! - `fairness_jain`: Jain's index over teams of 1 / (mean slowdown); 1 is perfectly even.

mod compare;
mod perturbed;
mod tables;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::sim::SimResult;
use crate::svg::{self, BarSeries, Scale, Series};

pub use compare::{compare, team_comparisons, TeamComparison};
pub use perturbed::{
    perturbed, Figures, Perturbed, PerturbedPolicy, Stat, TeamComparisonMean, TeamWaitsMean,
};
pub use tables::{
    idle_tables, perturbed_idle_table, perturbed_table, perturbed_team_tables, table, team_tables,
};

#[derive(Clone, Debug, Serialize)]
pub struct TeamReport {
    pub team: String,
    pub jobs: usize,
    pub wait_mean_s: f64,
    pub slowdown_mean: f64,
    pub jct_mean_s: f64,
}

/// Waits of every accepted job, censored at the replay's end for those that never started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Waits {
    /// Accepted jobs: those that started and those still waiting at the end.
    pub jobs: usize,
    /// Jobs still waiting at the end, counted with their wait so far.
    pub censored: usize,
    pub mean_s: f64,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

impl Waits {
    fn of(mut waits: Vec<f64>, censored: usize) -> Waits {
        waits.sort_by(f64::total_cmp);
        Waits {
            jobs: waits.len(),
            censored,
            mean_s: mean(&waits),
            p50_s: pct(&waits, 0.5),
            p99_s: pct(&waits, 0.99),
            max_s: waits.last().copied().unwrap_or(0.0),
        }
    }
}

/// One team's [`Waits`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamWaits {
    pub team: String,
    #[serde(flatten)]
    pub waits: Waits,
}

/// One team's idle GPU time and how fast its guarantee came back when it was lent out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamIdle {
    pub team: String,
    /// GPU-hours the team's jobs held idle.
    pub idle_gpu_hours: f64,
    /// Jobs submitted while the team's guarantee was lent out (what it held and had pending
    /// left room in its guarantee for the job, and the free GPUs were too few for it).
    pub reclaim_waits: usize,
    /// Over those jobs (censored waits included): the mean and p99 of submission to start.
    pub reclaim_wait_mean_s: f64,
    pub reclaim_wait_p99_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    pub jobs: usize,
    pub rejected: usize,
    pub unfinished: usize,
    pub jct_mean_s: f64,
    pub jct_p50_s: f64,
    pub jct_p99_s: f64,
    pub wait_mean_s: f64,
    pub wait_p50_s: f64,
    pub wait_p99_s: f64,
    pub wait_max_s: f64,
    pub slowdown_mean: f64,
    pub gpu_allocation: f64,
    pub makespan_s: u64,
    pub preemptions: u64,
    pub gpu_hours_lost: f64,
    /// GPU-hours allocated to jobs while their GPUs were idle.
    pub idle_gpu_hours: f64,
    /// The part of `idle_gpu_hours` held while some job that asks for GPUs was pending.
    pub idle_gpu_hours_while_waiting: f64,
    /// GPU-hours idle jobs would still have held when a stop (an idle policy, or a preemption
    /// they yielded to) gave their GPUs back.
    pub idle_gpu_hours_reclaimed: f64,
    /// Jobs stopped as idle while they worked above the idle threshold: must be 0.
    pub busy_stopped_as_idle: u64,
    /// Jobs ended by a stop while they held their GPUs idle after their work was done.
    pub ended_idle: u64,
    /// Per team with idle time or jobs that waited for its guarantee to come back.
    pub team_idle: Vec<TeamIdle>,
    pub fairness_jain: f64,
    pub plans: u64,
    /// Teams with completed jobs, over those.
    pub teams: Vec<TeamReport>,
    /// When the replay ended: the last event. Censored waits run to it.
    pub replay_end_s: u64,
    /// Every accepted job's wait, censored waits included.
    pub wait_all: Waits,
    /// [`PolicyReport::wait_all`] per team, every team with an accepted job.
    pub team_waits: Vec<TeamWaits>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub trace: String,
    pub format: String,
    pub cluster: String,
    pub gpus: u64,
    pub teams: String,
    pub trace_jobs: usize,
    pub trace_skipped: usize,
    pub seed: u64,
    /// `qm sim run --checkpoint-every-s`: every job checkpointed this often; none: preempted
    /// jobs restarted from the beginning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_s: Option<u64>,
    /// `qm sim run --add-idle`: this share of the trace's jobs was given an idle hold after
    /// its work (and every job a utilisation), seeded by `seed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_added: Option<f64>,
    /// `qm sim run --starvation-wait-s`: jobs that waited this long went first, by age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starvation_wait_s: Option<u64>,
    pub policies: Vec<PolicyReport>,
    /// Per team, each policy against the reference, like with like ([`team_comparisons`]).
    pub team_comparisons: Vec<TeamComparison>,
    /// With `qm sim run --perturb K`: the K perturbed replays of each policy ([`perturbed`]).
    /// The figures above are the replay in the trace's order, as without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturbed: Option<Perturbed>,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(r: &SimResult) -> PolicyReport {
    let mut jct = Vec::new();
    let mut wait = Vec::new();
    let mut slow = Vec::new();
    // Per team: waits, slowdowns, JCTs.
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut teams: BTreeMap<&str, Samples> = Default::default();
    // Every accepted job's wait, censored at the end for those that never started; per team
    // the waits and the censored count.
    let (mut waits_all, mut censored_all) = (Vec::new(), 0);
    let mut team_waits: BTreeMap<&str, (Vec<f64>, usize)> = Default::default();
    // Per team: waits of the jobs submitted while its guarantee was lent out.
    let mut reclaim_waits: BTreeMap<&str, Vec<f64>> = Default::default();
    let (mut rejected, mut unfinished, mut preemptions, mut lost) = (0, 0, 0u64, 0u64);
    let first_submit = r.jobs.iter().map(|j| j.submit_s).min().unwrap_or(0);
    let mut last_end = first_submit;
    for j in &r.jobs {
        preemptions += u64::from(j.preemptions);
        lost += j.lost_milli_s;
        if j.rejected.is_some() {
            rejected += 1;
            continue;
        }
        let waited = match j.first_start_s {
            Some(start) => start - j.submit_s,
            None => r.end_s.saturating_sub(j.submit_s),
        } as f64;
        let censored = usize::from(j.first_start_s.is_none());
        waits_all.push(waited);
        censored_all += censored;
        let t = team_waits.entry(&j.team).or_default();
        t.0.push(waited);
        t.1 += censored;
        if j.reclaim_wait {
            reclaim_waits.entry(&j.team).or_default().push(waited);
        }
        let (Some(start), Some(end)) = (j.first_start_s, j.end_s) else {
            unfinished += 1;
            continue;
        };
        if j.timed_out {
            unfinished += 1;
            continue;
        }
        last_end = last_end.max(end);
        let c = (end - j.submit_s) as f64;
        let w = (start - j.submit_s) as f64;
        let s = c / j.duration_s.max(1) as f64;
        jct.push(c);
        wait.push(w);
        slow.push(s);
        let t = teams.entry(&j.team).or_default();
        t.0.push(w);
        t.1.push(s);
        t.2.push(c);
    }
    let span = last_end.saturating_sub(first_submit).max(1);
    // Integrate the allocation step function over [first_submit, last_end].
    let mut area = 0u128;
    for w in r.allocated.windows(2) {
        let (t0, a) = w[0];
        let t1 = w[1].0;
        let (lo, hi) = (t0.max(first_submit), t1.min(last_end));
        if hi > lo {
            area += u128::from(a) * u128::from(hi - lo);
        }
    }
    if let Some(&(t0, a)) = r.allocated.last() {
        if last_end > t0 {
            area += u128::from(a) * u128::from(last_end - t0);
        }
    }
    let gpu_allocation = area as f64 / 1000.0 / (r.total_gpus.max(1) as f64 * span as f64);
    let team_reports: Vec<TeamReport> = teams
        .iter()
        .map(|(team, (w, s, c))| TeamReport {
            team: team.to_string(),
            jobs: w.len(),
            wait_mean_s: mean(w),
            slowdown_mean: mean(s),
            jct_mean_s: mean(c),
        })
        .collect();
    let inv: Vec<f64> = team_reports
        .iter()
        .map(|t| 1.0 / t.slowdown_mean.max(1e-9))
        .collect();
    let sum: f64 = inv.iter().sum();
    let sq: f64 = inv.iter().map(|x| x * x).sum();
    let fairness_jain = if sq > 0.0 {
        sum * sum / (inv.len() as f64 * sq)
    } else {
        1.0
    };
    let mut sorted_jct = jct.clone();
    sorted_jct.sort_by(f64::total_cmp);
    let mut sorted_wait = wait.clone();
    sorted_wait.sort_by(f64::total_cmp);
    PolicyReport {
        policy: r.label(),
        jobs: jct.len(),
        rejected,
        unfinished,
        jct_mean_s: mean(&jct),
        jct_p50_s: pct(&sorted_jct, 0.5),
        jct_p99_s: pct(&sorted_jct, 0.99),
        wait_mean_s: mean(&wait),
        wait_p50_s: pct(&sorted_wait, 0.5),
        wait_p99_s: pct(&sorted_wait, 0.99),
        wait_max_s: sorted_wait.last().copied().unwrap_or(0.0),
        slowdown_mean: mean(&slow),
        gpu_allocation,
        makespan_s: span,
        preemptions,
        gpu_hours_lost: lost as f64 / 1000.0 / 3600.0,
        idle_gpu_hours: gpu_hours(r.idle.milli_s),
        idle_gpu_hours_while_waiting: gpu_hours(r.idle.while_waiting_milli_s),
        idle_gpu_hours_reclaimed: gpu_hours(r.idle.reclaimed_milli_s),
        busy_stopped_as_idle: r.idle.busy_stopped,
        ended_idle: r.idle.ended_idle,
        team_idle: team_idle(r, reclaim_waits),
        fairness_jain,
        plans: r.plans,
        teams: team_reports,
        replay_end_s: r.end_s,
        wait_all: Waits::of(waits_all, censored_all),
        team_waits: team_waits
            .into_iter()
            .map(|(team, (w, c))| TeamWaits {
                team: team.to_string(),
                waits: Waits::of(w, c),
            })
            .collect(),
    }
}

fn gpu_hours(milli_s: u128) -> f64 {
    milli_s as f64 / 1000.0 / 3600.0
}

fn team_idle(r: &SimResult, mut reclaim_waits: BTreeMap<&str, Vec<f64>>) -> Vec<TeamIdle> {
    let mut teams: Vec<&str> = r.idle.team_milli_s.keys().map(String::as_str).collect();
    teams.extend(reclaim_waits.keys());
    teams.sort();
    teams.dedup();
    teams
        .into_iter()
        .map(|team| {
            let mut waits = reclaim_waits.remove(team).unwrap_or_default();
            waits.sort_by(f64::total_cmp);
            TeamIdle {
                team: team.to_string(),
                idle_gpu_hours: gpu_hours(r.idle.team_milli_s.get(team).copied().unwrap_or(0)),
                reclaim_waits: waits.len(),
                reclaim_wait_mean_s: mean(&waits),
                reclaim_wait_p99_s: pct(&waits, 0.99),
            }
        })
        .collect()
}

/// Writes report.json, report.md and the charts into `dir`.
pub fn write(dir: &Path, report: &Report, results: &[SimResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    let mut md = String::new();
    let _ = writeln!(md, "# Simulation report\n");
    let _ = writeln!(
        md,
        "Trace `{}` ({}, {} jobs, {} rows skipped), cluster `{}` ({} GPUs), teams `{}`.\n",
        report.trace,
        report.format,
        report.trace_jobs,
        report.trace_skipped,
        report.cluster,
        report.gpus,
        report.teams
    );
    if let Some(share) = report.idle_added {
        let _ = writeln!(
            md,
            "Every job given a utilisation while it works, and {:.0} % of them an idle hold of half an hour to two days after their work (`--add-idle {share}`, seed {}).\n",
            100.0 * share,
            report.seed
        );
    }
    if let Some(every) = report.checkpoint_every_s {
        let _ = writeln!(
            md,
            "Every job checkpoints every {every} s: a preempted job resumes from its last checkpoint.\n"
        );
    }
    if let Some(wait) = report.starvation_wait_s {
        let _ = writeln!(
            md,
            "Jobs that waited longer than {wait} s went first, by age alone (`--starvation-wait-s`).\n"
        );
    }
    if report.perturbed.is_some() {
        let _ = writeln!(md, "The replay in the trace's order:\n");
    }
    let _ = writeln!(md, "{}", table(report));
    if let Some(p) = &report.perturbed {
        let _ = writeln!(
            md,
            "## Perturbed replays\n\n{} replays of each policy with ties broken another way \
             (job ids dealt by a seeded permutation, equivalent racks renumbered; seeds {}): \
             mean ± sample standard deviation over them, and the coefficient of variation \
             (SD / mean) of the mean wait.\n\n{}",
            p.replays,
            p.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            perturbed_table(p)
        );
    }
    let _ = writeln!(md, "## Teams\n\n{}", team_tables(report));
    let idle = idle_tables(report);
    if !idle.is_empty() {
        let _ = writeln!(md, "{idle}");
    }
    if let Some(p) = &report.perturbed {
        let idle = perturbed_idle_table(p);
        if !idle.is_empty() {
            let _ = writeln!(
                md,
                "## Idle GPUs, mean of the {} perturbed replays

{idle}",
                p.replays
            );
        }
    }
    if let Some(p) = &report.perturbed {
        let _ = writeln!(
            md,
            "## Teams, mean of the {} perturbed replays\n\nPolicy p's replay k is compared \
             with the reference's replay k (the same seed); the comparisons' figures are \
             means over k, the ratio that of the mean waits, ± the SD of the replays' own \
             ratios.\n\n{}",
            p.replays,
            perturbed_team_tables(p)
        );
    }
    let _ = writeln!(
        md,
        "## Charts\n\n![allocated GPUs](allocation.svg)\n\n![queueing delay](wait_cdf.svg)\n\n![mean wait per team](team_wait.svg)\n"
    );
    let _ = writeln!(md, "## Definitions\n\n{}", DEFINITIONS);
    std::fs::write(dir.join("report.md"), md)?;
    std::fs::write(dir.join("allocation.svg"), allocation_chart(results))?;
    std::fs::write(dir.join("wait_cdf.svg"), wait_cdf_chart(results))?;
    std::fs::write(dir.join("team_wait.svg"), team_chart(report))?;
    Ok(())
}

const DEFINITIONS: &str = "JCT = completion - submission and slowdown = JCT / duration, over completed jobs. Wait = first start - submission, over every accepted job: a job still waiting when the replay ended (it never started) counts with its wait so far, up to the replay's end, and is counted as censored (its real wait is longer). Rejected jobs (refused at submission: no part of this cluster could ever hold them, under any policy) are left out and counted apart. Like with like: a team's mean wait under a policy and under the reference over the same jobs, those that started under both; the jobs that started under one of them only are counted apart. Guarantee denied = the GPU-hours of a team's guarantee it did not hold while it had a pending job that would have fitted in them (at each plan, the guarantee less what the team holds, where its smallest pending GPU ask fits in that; teams with a guarantee and no sub-teams): under static what packing inside the partition leaves, in the shared pool also what did not come back in the shape the team needed. GPU allocation = allocated GPU-time / (cluster GPUs x span from first submission to last completion). A preempted job restarts from the beginning (from its last checkpoint where the run says every job checkpoints); GPU-h lost counts the work cut short. Jain = Jain's fairness index over teams of 1 / mean slowdown. Idle GPU-h = GPU time allocated to jobs while their GPUs were idle (traces with util_pct / idle_after_s); idle while jobs waited = the part of it while some job asking for GPUs was pending; reclaimed = what idle jobs would still have held when a stop (their team's idle policy, or a preemption they yielded to) gave their GPUs back, from the end of the grace period to the end they would have reached; busy stopped as idle = jobs stopped as idle while they worked above the idle threshold (must be 0); ended while idle = jobs stopped while idle after their work was done, which the replay ends there. Jobs waiting for the guarantee = jobs submitted while what their team held and had pending left room in its guarantee for the job and the free GPUs were too few for it: the guarantee was lent out; their wait is submission to start.";

fn allocation_chart(results: &[SimResult]) -> String {
    let series: Vec<Series> = results
        .iter()
        .map(|r| Series {
            name: r.label(),
            points: r
                .allocated
                .iter()
                .map(|&(t, a)| (t as f64 / 86_400.0, a as f64 / 1000.0))
                .collect(),
        })
        .collect();
    svg::step_chart(
        "Allocated GPUs over time",
        "days",
        "GPUs allocated",
        Scale::Linear,
        &series,
    )
}

/// Waits below this many hours (36 s; immediate starts among them) are drawn at it on the
/// log axis of the wait CDF.
const WAIT_FLOOR_H: f64 = 0.01;

/// The CDF of queueing delay, on a log axis: waits span seconds to weeks. The fraction is of
/// every accepted job, so jobs that never started keep a curve below 1.
fn wait_cdf_chart(results: &[SimResult]) -> String {
    let series: Vec<Series> = results
        .iter()
        .map(|r| {
            let mut waits: Vec<f64> = r
                .jobs
                .iter()
                .filter_map(|j| j.first_start_s.map(|s| (s - j.submit_s) as f64 / 3600.0))
                .collect();
            waits.sort_by(f64::total_cmp);
            // Out of every accepted job: where some never started, the curve stays below 1.
            let accepted = r.jobs.iter().filter(|j| j.rejected.is_none()).count();
            let n = accepted.max(1) as f64;
            Series {
                name: r.label(),
                points: waits
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| (w, (i + 1) as f64 / n))
                    .collect(),
            }
        })
        .collect();
    svg::step_chart(
        "Queueing delay (CDF)",
        "wait (hours, log scale; waits under 0.01 h drawn at 0.01)",
        "fraction of accepted jobs started",
        Scale::Log {
            floor: WAIT_FLOOR_H,
        },
        &series,
    )
}

fn team_chart(report: &Report) -> String {
    let mut teams: Vec<String> = report
        .policies
        .iter()
        .flat_map(|p| p.team_waits.iter().map(|t| t.team.clone()))
        .collect();
    teams.sort();
    teams.dedup();
    let series: Vec<BarSeries> = report
        .policies
        .iter()
        .map(|p| BarSeries {
            name: p.policy.clone(),
            values: teams
                .iter()
                .map(|t| {
                    p.team_waits
                        .iter()
                        .find(|x| &x.team == t)
                        .map_or(0.0, |x| x.waits.mean_s / 3600.0)
                })
                .collect(),
        })
        .collect();
    svg::bar_chart(
        "Mean wait per team (censored waits included)",
        "hours",
        &teams,
        &series,
    )
}

#[cfg(test)]
mod tests;
