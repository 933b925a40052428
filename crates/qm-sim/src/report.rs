//! Metrics of a run and the report files: `report.json`, `report.md` and SVG charts.
//!
//! Definitions (all times in seconds):
//! - `jobs`: trace jobs that completed; `rejected`: refused at submission (they could never
//!   run on this cluster); `unfinished`: accepted but never completed (for example a job
//!   larger than its team's partition under `static`).
//! - JCT = completion - submission; wait = first start - submission (queueing delay);
//!   slowdown = JCT / duration, over completed jobs.
//! - `gpu_allocation`: allocated GPU-time / (cluster GPUs x span), span from the first
//!   submission to the last completion (`makespan_s`).
//! - `gpu_hours_lost`: GPU-hours of runs cut short by preemption (a preempted job restarts).
//! - `idle_gpu_hours_reclaimed`: traces carry no utilisation samples, so this is 0 here.
//! - `fairness_jain`: Jain's index over teams of 1 / (mean slowdown); 1 is perfectly even.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::sim::SimResult;
use crate::svg::{self, BarSeries, Scale, Series};

#[derive(Clone, Debug, Serialize)]
pub struct TeamReport {
    pub team: String,
    pub jobs: usize,
    pub wait_mean_s: f64,
    pub slowdown_mean: f64,
    pub jct_mean_s: f64,
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
    pub idle_gpu_hours_reclaimed: f64,
    pub fairness_jain: f64,
    pub plans: u64,
    pub teams: Vec<TeamReport>,
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
    pub policies: Vec<PolicyReport>,
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
    let mut teams: std::collections::BTreeMap<&str, Samples> = Default::default();
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
        policy: r.policy.name().to_string(),
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
        idle_gpu_hours_reclaimed: 0.0,
        fairness_jain,
        plans: r.plans,
        teams: team_reports,
    }
}

fn hours(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// The comparison table printed on stdout and in report.md.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| policy | jobs | rejected | unfinished | wait mean | wait p99 | JCT mean | JCT p99 | slowdown | GPU alloc | preemptions | GPU-h lost | Jain |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &report.policies {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} % | {} | {:.1} | {:.3} |",
            p.policy,
            p.jobs,
            p.rejected,
            p.unfinished,
            hours(p.wait_mean_s),
            hours(p.wait_p99_s),
            hours(p.jct_mean_s),
            hours(p.jct_p99_s),
            p.slowdown_mean,
            100.0 * p.gpu_allocation,
            p.preemptions,
            p.gpu_hours_lost,
            p.fairness_jain
        );
    }
    out
}

/// Per team: mean wait under each policy, and the change against `static` where both ran.
pub fn team_table(report: &Report) -> String {
    let mut out = String::new();
    let names: Vec<&str> = report.policies.iter().map(|p| p.policy.as_str()).collect();
    let _ = write!(out, "| team | jobs |");
    for n in &names {
        let _ = write!(out, " wait mean ({n}) |");
    }
    let stat = report.policies.iter().position(|p| p.policy == "static");
    let def = report.policies.iter().position(|p| p.policy == "default");
    let compare = stat.zip(def);
    if compare.is_some() {
        let _ = write!(out, " default vs static |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---|---|");
    for _ in &names {
        let _ = write!(out, "---|");
    }
    if compare.is_some() {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    let mut teams: Vec<&str> = report
        .policies
        .iter()
        .flat_map(|p| p.teams.iter().map(|t| t.team.as_str()))
        .collect();
    teams.sort_unstable();
    teams.dedup();
    for team in teams {
        let find = |i: usize| report.policies[i].teams.iter().find(|t| t.team == team);
        let jobs = (0..names.len())
            .filter_map(find)
            .map(|t| t.jobs)
            .max()
            .unwrap_or(0);
        let _ = write!(out, "| {team} | {jobs} |");
        for i in 0..names.len() {
            match find(i) {
                Some(t) => {
                    let _ = write!(out, " {} |", hours(t.wait_mean_s));
                }
                None => {
                    let _ = write!(out, " - |");
                }
            }
        }
        if let Some((s, d)) = compare {
            match (find(s), find(d)) {
                (Some(s), Some(d)) if s.wait_mean_s > 0.0 => {
                    let ratio = d.wait_mean_s / s.wait_mean_s;
                    let verdict = if ratio <= 1.0 {
                        format!("gains: {:.1}x shorter", 1.0 / ratio.max(1e-9))
                    } else {
                        format!("loses: {ratio:.1}x longer")
                    };
                    let _ = write!(out, " {verdict} |");
                }
                (Some(_), Some(d)) => {
                    let _ = write!(out, " static 0 s, default {} |", hours(d.wait_mean_s));
                }
                (None, Some(_)) => {
                    let _ = write!(out, " gains: runs at all (no partition under static) |");
                }
                _ => {
                    let _ = write!(out, " - |");
                }
            }
        }
        let _ = writeln!(out);
    }
    out
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
    let _ = writeln!(md, "{}", table(report));
    let _ = writeln!(md, "## Teams\n\n{}", team_table(report));
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

const DEFINITIONS: &str = "JCT = completion - submission; wait = first start - submission; slowdown = JCT / duration, over completed jobs. GPU allocation = allocated GPU-time / (cluster GPUs x span from first submission to last completion). A preempted job restarts from the beginning; GPU-h lost counts the runs cut short. Jain = Jain's fairness index over teams of 1 / mean slowdown.";

fn allocation_chart(results: &[SimResult]) -> String {
    let series: Vec<Series> = results
        .iter()
        .map(|r| Series {
            name: r.policy.name().to_string(),
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

/// The CDF of queueing delay, on a log axis: waits span seconds to weeks.
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
            let n = waits.len().max(1) as f64;
            Series {
                name: r.policy.name().to_string(),
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
        "fraction of jobs",
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
        .flat_map(|p| p.teams.iter().map(|t| t.team.clone()))
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
                    p.teams
                        .iter()
                        .find(|x| &x.team == t)
                        .map_or(0.0, |x| x.wait_mean_s / 3600.0)
                })
                .collect(),
        })
        .collect();
    svg::bar_chart("Mean wait per team", "hours", &teams, &series)
}
