//! The Markdown tables of `report.md`; the main one is printed on stdout too.

use std::fmt::Write as _;

use super::{Perturbed, PolicyReport, Report, Stat, TeamComparison};

pub(super) fn hours(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// A count, or a mean of counts.
fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// How a figure is shown.
#[derive(Clone, Copy, Debug)]
pub(super) enum Unit {
    Count,
    Time,
    Slowdown,
    Share,
    GpuHours,
    Index,
}

impl Unit {
    pub(super) fn show(self, v: f64) -> String {
        match self {
            Unit::Count => count(v),
            Unit::Time => hours(v),
            Unit::Slowdown => format!("{v:.2}"),
            Unit::Share => format!("{:.1} %", 100.0 * v),
            Unit::GpuHours => format!("{v:.1}"),
            Unit::Index => format!("{v:.3}"),
        }
    }
}

/// A column of the main table: its name in `report.json`'s spreads, its heading, how it is
/// shown, and where it comes from.
pub(super) struct Figure {
    pub key: &'static str,
    pub header: &'static str,
    pub unit: Unit,
    pub get: fn(&PolicyReport) -> f64,
}

/// The main table's columns, in order.
pub(super) const FIGURES: [Figure; 13] = [
    Figure {
        key: "jobs",
        header: "jobs",
        unit: Unit::Count,
        get: |p| p.jobs as f64,
    },
    Figure {
        key: "rejected",
        header: "rejected",
        unit: Unit::Count,
        get: |p| p.rejected as f64,
    },
    Figure {
        key: "unfinished",
        header: "unfinished",
        unit: Unit::Count,
        get: |p| p.unfinished as f64,
    },
    Figure {
        key: "wait_all_mean_s",
        header: "wait mean",
        unit: Unit::Time,
        get: |p| p.wait_all.mean_s,
    },
    Figure {
        key: "wait_all_p99_s",
        header: "wait p99",
        unit: Unit::Time,
        get: |p| p.wait_all.p99_s,
    },
    Figure {
        key: "wait_all_censored",
        header: "censored",
        unit: Unit::Count,
        get: |p| p.wait_all.censored as f64,
    },
    Figure {
        key: "jct_mean_s",
        header: "JCT mean",
        unit: Unit::Time,
        get: |p| p.jct_mean_s,
    },
    Figure {
        key: "jct_p99_s",
        header: "JCT p99",
        unit: Unit::Time,
        get: |p| p.jct_p99_s,
    },
    Figure {
        key: "slowdown_mean",
        header: "slowdown",
        unit: Unit::Slowdown,
        get: |p| p.slowdown_mean,
    },
    Figure {
        key: "gpu_allocation",
        header: "GPU alloc",
        unit: Unit::Share,
        get: |p| p.gpu_allocation,
    },
    Figure {
        key: "preemptions",
        header: "preemptions",
        unit: Unit::Count,
        get: |p| p.preemptions as f64,
    },
    Figure {
        key: "gpu_hours_lost",
        header: "GPU-h lost",
        unit: Unit::GpuHours,
        get: |p| p.gpu_hours_lost,
    },
    Figure {
        key: "fairness_jain",
        header: "Jain",
        unit: Unit::Index,
        get: |p| p.fairness_jain,
    },
];

/// The idle figures, over perturbed replays (where the trace has idle holds).
pub(super) const IDLE_FIGURES: [Figure; 4] = [
    Figure {
        key: "idle_gpu_hours",
        header: "idle GPU-h",
        unit: Unit::GpuHours,
        get: |p| p.idle_gpu_hours,
    },
    Figure {
        key: "idle_gpu_hours_while_waiting",
        header: "idle while jobs waited",
        unit: Unit::GpuHours,
        get: |p| p.idle_gpu_hours_while_waiting,
    },
    Figure {
        key: "idle_gpu_hours_reclaimed",
        header: "reclaimed",
        unit: Unit::GpuHours,
        get: |p| p.idle_gpu_hours_reclaimed,
    },
    Figure {
        key: "busy_stopped_as_idle",
        header: "busy stopped as idle",
        unit: Unit::Count,
        get: |p| p.busy_stopped_as_idle as f64,
    },
];

/// Over perturbed replays whose trace has idle holds: the idle figures as mean ± sample SD.
pub fn perturbed_idle_table(perturbed: &Perturbed) -> String {
    let mut out = String::new();
    if perturbed
        .policies
        .iter()
        .all(|p| p.figures.get("idle_gpu_hours").is_none())
    {
        return out;
    }
    header(&mut out, "policy", &IDLE_FIGURES, &[]);
    for p in &perturbed.policies {
        let _ = write!(out, "| {} |", p.policy);
        for f in &IDLE_FIGURES {
            stat_cell(&mut out, f, p.figures.get(f.key));
        }
        let _ = writeln!(out);
    }
    out
}

fn header(out: &mut String, first: &str, figures: &[Figure], extra: &[&str]) {
    let _ = write!(out, "| {first} |");
    for f in figures {
        let _ = write!(out, " {} |", f.header);
    }
    for e in extra {
        let _ = write!(out, " {e} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---|".repeat(figures.len() + extra.len()));
}

/// One figure over perturbed replays: mean ± sample SD, the mean alone with one replay, `-`
/// where the replays do not have it.
fn stat_cell(out: &mut String, f: &Figure, stat: Option<Stat>) {
    let _ = match stat {
        Some(Stat {
            mean, sd: Some(sd), ..
        }) => write!(out, " {} ± {} |", f.unit.show(mean), f.unit.show(sd)),
        Some(stat) => write!(out, " {} |", f.unit.show(stat.mean)),
        None => write!(out, " - |"),
    };
}

/// The comparison table printed on stdout and in report.md: one row per policy.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, "policy", &FIGURES, &[]);
    for p in &report.policies {
        let _ = write!(out, "| {} |", p.policy);
        for f in &FIGURES {
            let _ = write!(out, " {} |", f.unit.show((f.get)(p)));
        }
        let _ = writeln!(out);
    }
    out
}

/// Over perturbed replays, per policy: each figure of the main table as mean ± sample SD, and
/// the coefficient of variation of the mean wait.
pub fn perturbed_table(perturbed: &Perturbed) -> String {
    let mut out = String::new();
    header(&mut out, "policy", &FIGURES, &["wait mean CV"]);
    for p in &perturbed.policies {
        let _ = write!(out, "| {} |", p.policy);
        for f in &FIGURES {
            stat_cell(
                &mut out,
                f,
                Some(p.figures.get(f.key).expect("every figure")),
            );
        }
        let cv = p.figures.get("wait_all_mean_s").and_then(|s| s.cv);
        let _ = writeln!(
            out,
            " {} |",
            cv.map_or("-".to_string(), |cv| format!("{:.1} %", 100.0 * cv))
        );
    }
    out
}

/// One team's waits under one policy, or their mean over replays.
pub(super) struct TeamWaitCell {
    pub jobs: f64,
    pub censored: f64,
    pub mean_s: f64,
}

/// Per team (rows) and policy (columns): the mean wait, censored waits included, and how many
/// were censored.
pub(super) fn team_wait_table(names: &[&str], cells: &[Vec<(String, TeamWaitCell)>]) -> String {
    let mut teams: Vec<&str> = cells
        .iter()
        .flat_map(|c| c.iter().map(|(t, _)| t.as_str()))
        .collect();
    teams.sort_unstable();
    teams.dedup();
    let mut out = String::new();
    let _ = write!(out, "| team | jobs |");
    for n in names {
        let _ = write!(out, " wait mean ({n}) | censored ({n}) |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|---|{}", "---|---|".repeat(names.len()));
    for team in teams {
        let find = |i: usize| cells[i].iter().find(|(t, _)| t == team).map(|c| &c.1);
        let jobs = (0..cells.len())
            .filter_map(find)
            .map(|c| c.jobs)
            .fold(0.0, f64::max);
        let _ = write!(out, "| {team} | {} |", count(jobs));
        for i in 0..names.len() {
            match find(i) {
                Some(c) => {
                    let _ = write!(out, " {} | {} |", hours(c.mean_s), count(c.censored));
                }
                None => {
                    let _ = write!(out, " - | - |");
                }
            }
        }
        let _ = writeln!(out);
    }
    out
}

fn verdict(c: &TeamComparison<f64>, sd: Option<f64>) -> String {
    let Some(r) = c.wait_ratio else {
        return if c.started_both > 0.0 {
            format!("- (no wait under {})", c.reference)
        } else {
            "-".to_string()
        };
    };
    let sd = sd.map_or(String::new(), |sd| format!(" ± {sd:.2}"));
    if r == 0.0 {
        format!("0{sd} (no wait)")
    } else if r <= 1.0 {
        format!("{r:.2}{sd} ({:.1}x shorter)", 1.0 / r)
    } else {
        format!("{r:.2}{sd} ({r:.1}x longer)")
    }
}

/// Per policy, its team comparisons against the reference, like with like; each with the SD
/// of the ratio where it is a mean over replays.
pub(super) fn comparison_tables(rows: &[(TeamComparison<f64>, Option<f64>)]) -> String {
    let mut out = String::new();
    let mut policy: Option<&str> = None;
    for (c, sd) in rows {
        if policy != Some(c.policy.as_str()) {
            policy = Some(&c.policy);
            let (p, r) = (&c.policy, &c.reference);
            let _ = writeln!(
                out,
                "\n### `{p}` against `{r}`, like with like\n\n\
                 Mean waits over the team's jobs that started under both; the jobs that \
                 started under one only are counted apart. Guarantee denied: GPU-hours of the \
                 team's guarantee it did not hold while it had a pending job that would have \
                 fitted in them.\n"
            );
            let _ = writeln!(
                out,
                "| team | started under both | wait mean ({r}) | wait mean ({p}) | {p} / {r} | started only under {r} | started only under {p} | guarantee denied ({r}) | guarantee denied ({p}) |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        }
        // No job started under both: no wait to show.
        let wait = |s: f64| {
            if c.started_both > 0.0 {
                hours(s)
            } else {
                "-".to_string()
            }
        };
        let denied = |h: Option<f64>| h.map_or("-".to_string(), |h| format!("{h:.0} GPU-h"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.team,
            count(c.started_both),
            wait(c.reference_wait_mean_s),
            wait(c.policy_wait_mean_s),
            verdict(c, *sd),
            count(c.started_only_reference),
            count(c.started_only_policy),
            denied(c.reference_denied_gpu_h),
            denied(c.policy_denied_gpu_h)
        );
    }
    out
}

/// The per-team tables of the means over perturbed replays: waits, then the comparisons.
pub fn perturbed_team_tables(perturbed: &Perturbed) -> String {
    let names: Vec<&str> = perturbed
        .policies
        .iter()
        .map(|p| p.policy.as_str())
        .collect();
    let cells: Vec<Vec<(String, TeamWaitCell)>> = perturbed
        .policies
        .iter()
        .map(|p| {
            p.team_waits
                .iter()
                .map(|t| {
                    let cell = TeamWaitCell {
                        jobs: t.jobs,
                        censored: t.censored,
                        mean_s: t.mean_s,
                    };
                    (t.team.clone(), cell)
                })
                .collect()
        })
        .collect();
    let rows: Vec<(TeamComparison<f64>, Option<f64>)> = perturbed
        .team_comparisons
        .iter()
        .map(|c| (c.mean.clone(), c.wait_ratio_sd))
        .collect();
    team_wait_table(&names, &cells) + &comparison_tables(&rows)
}

/// The per-team tables of one replay per policy: waits, then the comparisons.
pub fn team_tables(report: &Report) -> String {
    let names: Vec<&str> = report.policies.iter().map(|p| p.policy.as_str()).collect();
    let cells: Vec<Vec<(String, TeamWaitCell)>> = report
        .policies
        .iter()
        .map(|p| {
            p.team_waits
                .iter()
                .map(|t| {
                    let cell = TeamWaitCell {
                        jobs: t.waits.jobs as f64,
                        censored: t.waits.censored as f64,
                        mean_s: t.waits.mean_s,
                    };
                    (t.team.clone(), cell)
                })
                .collect()
        })
        .collect();
    let rows: Vec<(TeamComparison<f64>, Option<f64>)> = report
        .team_comparisons
        .iter()
        .map(|c| (c.counts_as_f64(), None))
        .collect();
    team_wait_table(&names, &cells) + &comparison_tables(&rows)
}

/// Idle GPUs per policy, and per team what was held idle and how fast a guarantee lent out
/// came back; empty where no job of the trace was ever idle.
pub fn idle_tables(report: &Report) -> String {
    let mut out = String::new();
    if report.policies.iter().all(|p| p.idle_gpu_hours == 0.0) {
        return out;
    }
    let _ = writeln!(
        out,
        "## Idle GPUs\n\n| policy | idle GPU-h | idle while jobs waited | reclaimed | busy stopped as idle | ended while idle | preemptions | GPU-h lost |\n|---|---|---|---|---|---|---|---|"
    );
    for p in &report.policies {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.1} |",
            p.policy,
            p.idle_gpu_hours,
            p.idle_gpu_hours_while_waiting,
            p.idle_gpu_hours_reclaimed,
            p.busy_stopped_as_idle,
            p.ended_idle,
            p.preemptions,
            p.gpu_hours_lost
        );
    }
    for p in &report.policies {
        let _ = writeln!(
            out,
            "\n`{}` per team: idle GPU-hours, and the jobs submitted while the team's guarantee was lent out, with their wait to start.\n\n| team | idle GPU-h | jobs waiting for the guarantee | mean wait | p99 wait |\n|---|---|---|---|---|",
            p.policy
        );
        for t in &p.team_idle {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {} |",
                t.team,
                t.idle_gpu_hours,
                t.reclaim_waits,
                Unit::Time.show(t.reclaim_wait_mean_s),
                Unit::Time.show(t.reclaim_wait_p99_s)
            );
        }
    }
    out
}
