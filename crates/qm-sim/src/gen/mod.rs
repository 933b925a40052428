//! `qm sim gen`: seeded synthetic workloads for `qm sim run`.
//!
//! A scenario is a cluster, a team tree and a job stream that a cluster operator would
//! recognise; each module documents its choices and writes them into the `README.md` it
//! generates:
//!
//! | scenario | module | what it checks |
//! |---|---|---|
//! | `big-gang` | [`big_gang`] | a team guaranteed 2,048 GPUs gets them back, as whole nodes, when its one big run arrives into a pool full of borrowers |
//! | `shapes` | [`shapes`] | teams of different job shapes: a guarantee of whole nodes comes back as whole nodes |
//! | `philly-resample` | [`resample`] | a real trace's jobs (any format `qm sim run` reads) at another load, on another cluster |
//! | `hoarding` | [`hoarding`] | jobs that hold GPUs idle and a team that keeps placeholders: what each idle policy gives back while work waits |
//!
//! [`Workload::write`] puts three files in a directory: `trace.csv` in our CSV format
//! ([`crate::trace::csv`]), `teams.toml` ([`crate::teamspec`]) and `README.md` (the parameters,
//! the distributions and why, what was realised, and the `qm sim run` command that replays
//! it). Randomness comes only from [`Rng`] and only through [`dist`], in integer arithmetic
//! or exact IEEE operations: the same scenario, parameters and seed give the same bytes.
//!
//! Every scenario starts warm: the trace opens with the jobs that a steady state would have
//! running at 0 s (user `warm-start`, submitted at 0 s, each with the time left of a job
//! found running at a random instant), so the first hours do not replay an empty cluster.
//! They start at once and count in the report like every job, with a wait of 0.

pub mod big_gang;
pub mod dist;
pub mod hoarding;
pub mod resample;
pub mod shapes;

use std::fmt::Write as _;
use std::path::Path;

use qm_core::GpuAsk;

use crate::rng::Rng;
use crate::trace::{default_cpu_milli, default_mem_mib, default_time_limit, TraceJob};
use dist::{Hist, Profile, Weighted};

/// The user of the jobs running when the trace starts.
pub const WARM_USER: &str = "warm-start";

/// A generated workload: what [`Workload::write`] puts in a directory.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The scenario's command-line name.
    pub scenario: &'static str,
    /// The cluster, as `qm sim run --cluster` takes it (a shorthand).
    pub cluster: String,
    /// The policies the replay command compares.
    pub policies: &'static str,
    /// The idle policies it compares (`qm sim run --idle-policy`), if any.
    pub idle_policies: Option<&'static str>,
    /// Sorted by `(submit_s, id)`, ids from 1 in that order, the first submission at 0 s:
    /// exactly what the CSV loader reads back from `trace.csv`.
    pub jobs: Vec<TraceJob>,
    pub teams: Vec<GenTeam>,
    /// The text of `README.md`.
    pub readme: String,
}

/// One team of `teams.toml`: a leaf with a guarantee of GPUs of any model, weight 1, no max.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenTeam {
    pub name: String,
    pub guaranteed: u32,
}

impl Workload {
    /// `trace.csv`: our CSV with every column the generators set, so the loader reads back
    /// exactly [`Workload::jobs`].
    pub fn trace_csv(&self) -> String {
        let util = self.jobs.iter().any(|j| j.util_pct.is_some());
        let mut out = String::from(
            "submit_s,duration_s,tasks,gpus_per_task,gpu_milli,cpu_milli,mem_mib,team,id,user,preemptible,time_limit_s,priority",
        );
        out.push_str(if util {
            ",util_pct,idle_after_s\n"
        } else {
            "\n"
        });
        for j in &self.jobs {
            let (gpus, milli) = match j.gpu {
                GpuAsk::Whole(n) => (n, String::new()),
                GpuAsk::Milli(m) => (0, m.to_string()),
            };
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                j.submit_s,
                j.duration_s,
                j.tasks,
                gpus,
                milli,
                j.cpu_milli,
                j.mem_mib,
                field(&j.team),
                j.id,
                field(&j.user),
                j.preemptible,
                j.time_limit_s.expect("the generators set every time limit"),
                j.priority
            );
            if util {
                let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
                let _ = write!(
                    out,
                    ",{},{}",
                    opt(j.util_pct.map(u64::from)),
                    opt(j.idle_after_s)
                );
            }
            out.push('\n');
        }
        out
    }

    /// `teams.toml`, as [`crate::teamspec::from_toml`] reads it.
    pub fn teams_toml(&self) -> String {
        let mut out = format!(
            "# Teams of the `{}` scenario: guarantees of GPUs of any model, weight 1, no max.\n",
            self.scenario
        );
        for t in &self.teams {
            let _ = write!(
                out,
                "\n[[team]]\nname = \"{}\"\nguaranteed = {}\n",
                t.name, t.guaranteed
            );
        }
        out
    }

    /// The command that replays the workload written to `dir`, reporting into `dir/report`.
    pub fn replay_command(&self, dir: &Path) -> String {
        let path = |file: &str| dir.join(file).display().to_string();
        let idle = self
            .idle_policies
            .map_or(String::new(), |p| format!(" --idle-policy {p}"));
        format!(
            "qm sim run --trace {} --cluster {} --teams {} --policy {}{idle} --out {}",
            path("trace.csv"),
            self.cluster,
            path("teams.toml"),
            self.policies,
            path("report")
        )
    }

    /// Writes `trace.csv`, `teams.toml` and `README.md` into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("trace.csv"), self.trace_csv())?;
        std::fs::write(dir.join("teams.toml"), self.teams_toml())?;
        std::fs::write(dir.join("README.md"), &self.readme)?;
        Ok(())
    }
}

/// A CSV field: quoted (with quotes doubled) when it holds a comma, a quote or surrounding
/// space.
fn field(text: &str) -> String {
    if text.contains([',', '"']) || text.trim() != text {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// What one team submits: job shapes, durations, and how many jobs one submission brings.
#[derive(Clone, Debug)]
pub(crate) struct Stream {
    pub team: String,
    /// `(tasks, gpus_per_task)`.
    pub shapes: Weighted<(u32, u32)>,
    pub durations: Hist,
    /// Jobs per submission, as an inclusive range `(lo, hi)`, uniform in it: a sweep.
    pub batch: Weighted<(u32, u32)>,
    /// The jobs of one submission go in within this many seconds of it, each with a
    /// duration within ±20 % of one drawn for the whole submission (a sweep's runs are alike).
    pub batch_spread_s: u64,
}

/// A job before ids: sorted and numbered by [`finish`].
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub submit_s: u64,
    pub duration_s: u64,
    pub time_limit_s: u64,
    pub tasks: u32,
    pub gpus: u32,
    pub team: String,
    pub user: &'static str,
    pub preemptible: bool,
    /// [`TraceJob::util_pct`].
    pub util_pct: Option<u8>,
    /// [`TraceJob::idle_after_s`].
    pub idle_after_s: Option<u64>,
}

impl Stream {
    /// A stream of single submissions (no sweeps).
    pub fn single(team: &str, shapes: &[((u32, u32), u32)], durations: Hist) -> Stream {
        Stream {
            team: team.to_string(),
            shapes: Weighted::new(shapes),
            durations,
            batch: Weighted::new(&[((1, 1), 1)]),
            batch_spread_s: 0,
        }
    }

    /// The mean GPUs of one job.
    pub fn gpus_mean(&self) -> f64 {
        self.shapes.mean(|(tasks, gpus)| f64::from(tasks * gpus))
    }

    /// The jobs of one submission at `at_s`.
    pub fn submit(&self, rng: &mut Rng, at_s: u64, out: &mut Vec<Draft>) {
        let (lo, hi) = self.batch.pick(rng);
        let count = lo + rng.below((hi - lo + 1) as usize) as u32;
        let (tasks, gpus) = self.shapes.pick(rng);
        let base = self.durations.sample(rng);
        for _ in 0..count {
            let (submit_s, duration_s) = if count == 1 {
                (at_s, base)
            } else {
                let spread = rng.below(self.batch_spread_s as usize + 1) as u64;
                let jitter = rng.below((base * 2 / 5) as usize + 1) as u64;
                (at_s + spread, (base * 4 / 5 + jitter).max(1))
            };
            out.push(Draft {
                submit_s,
                duration_s,
                time_limit_s: default_time_limit(duration_s),
                tasks,
                gpus,
                team: self.team.clone(),
                user: "",
                preemptible: true,
                util_pct: None,
                idle_after_s: None,
            });
        }
    }

    /// Submissions at times drawn from `profile`, until their GPU-time reaches `gpu_s` (the
    /// last submission is kept if that brings the total closer to it). Returns the GPU-time
    /// submitted.
    pub fn fill(&self, rng: &mut Rng, gpu_s: f64, profile: &Profile, out: &mut Vec<Draft>) -> f64 {
        let mut total = 0.0;
        while total < gpu_s {
            let at_s = profile.time(rng);
            let first = out.len();
            self.submit(rng, at_s, out);
            let added: f64 = out[first..]
                .iter()
                .map(|d| f64::from(d.tasks * d.gpus) * d.duration_s as f64)
                .sum();
            if total + added - gpu_s > gpu_s - total {
                out.truncate(first);
                break;
            }
            total += added;
        }
        total
    }

    /// One job found running at 0 s: its time left as the duration, and as its limit what
    /// its whole length's limit leaves.
    pub fn warm(&self, rng: &mut Rng) -> Draft {
        let (tasks, gpus) = self.shapes.pick(rng);
        let (length, left) = self.durations.residual(rng);
        Draft {
            submit_s: 0,
            duration_s: left,
            time_limit_s: default_time_limit(length) - (length - left),
            tasks,
            gpus,
            team: self.team.clone(),
            user: WARM_USER,
            preemptible: true,
            util_pct: None,
            idle_after_s: None,
        }
    }
}

/// The jobs that a steady state would run at 0 s: about `gpus` GPUs of the `streams`, each
/// team's share of them its share of the offered load (`load_shares`, any scale). Teams are
/// drawn in proportion to their share over their mean GPUs per job; the fill stops at the
/// first job that would pass `gpus`.
pub(crate) fn warm_start(
    rng: &mut Rng,
    streams: &[Stream],
    load_shares: &[f64],
    gpus: u64,
) -> Vec<Draft> {
    let weights: Vec<f64> = streams
        .iter()
        .zip(load_shares)
        .map(|(s, share)| share / s.gpus_mean())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::new();
    let mut used = 0u64;
    loop {
        let mut x = dist::unit(rng) * total;
        let mut chosen = streams.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                chosen = i;
                break;
            }
            x -= w;
        }
        let job = streams[chosen].warm(rng);
        let size = u64::from(job.tasks * job.gpus);
        if used + size > gpus {
            break;
        }
        used += size;
        out.push(job);
    }
    out
}

/// Sorts drafts by submission (stable: ties keep the order they were drawn in), numbers
/// them from 1 and makes them trace jobs.
pub(crate) fn finish(mut drafts: Vec<Draft>) -> Vec<TraceJob> {
    drafts.sort_by_key(|d| d.submit_s);
    drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let gpu = GpuAsk::Whole(d.gpus);
            TraceJob {
                id: i as u64 + 1,
                submit_s: d.submit_s,
                duration_s: d.duration_s,
                tasks: d.tasks,
                gpu,
                cpu_milli: default_cpu_milli(gpu),
                mem_mib: default_mem_mib(gpu),
                team: d.team,
                user: d.user.to_string(),
                priority: 0,
                gpu_model: None,
                time_limit_s: Some(d.time_limit_s),
                preemptible: d.preemptible,
                util_pct: d.util_pct,
                idle_after_s: d.idle_after_s,
            }
        })
        .collect()
}

/// `total` split in proportion to `weights` (largest remainder, ties to the earlier).
pub(crate) fn split(total: u32, weights: &[u32]) -> Vec<u32> {
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let exact: Vec<u64> = weights
        .iter()
        .map(|&w| u64::from(total) * u64::from(w))
        .collect();
    let mut out: Vec<u32> = exact.iter().map(|&e| (e / sum) as u32).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(exact[i] % sum));
    let left = total - out.iter().sum::<u32>();
    for &i in order.iter().take(left as usize) {
        out[i] += 1;
    }
    out
}

/// Offered load: the GPU-seconds of the jobs submitted in each hour (`submit_s / 3600`),
/// over `gpus` x 3600, for `hours` hours; the warm start is not offered, it was running.
pub fn offered_by_hour(jobs: &[TraceJob], gpus: u64, hours: usize) -> Vec<f64> {
    let mut out = vec![0.0; hours];
    for j in jobs.iter().filter(|j| j.user != WARM_USER) {
        let hour = (j.submit_s / 3600) as usize;
        if let Some(h) = out.get_mut(hour) {
            *h += (j.gpu.milli() * u64::from(j.tasks)) as f64 / 1000.0 * j.duration_s as f64;
        }
    }
    let cap = gpus as f64 * 3600.0;
    out.iter().map(|gpu_s| gpu_s / cap).collect()
}

/// The mean of `hourly` over the hours of day in `hours_of_day` (0..24).
pub fn mean_over_hours(hourly: &[f64], hours_of_day: impl Fn(usize) -> bool) -> f64 {
    let chosen: Vec<f64> = hourly
        .iter()
        .enumerate()
        .filter(|(h, _)| hours_of_day(h % 24))
        .map(|(_, &x)| x)
        .collect();
    if chosen.is_empty() {
        0.0
    } else {
        chosen.iter().sum::<f64>() / chosen.len() as f64
    }
}

/// README helpers shared by the scenarios.
pub(crate) mod readme {
    use std::fmt::Write as _;

    use super::dist::Hist;
    use super::{Stream, Workload, WARM_USER};

    /// A duration in the unit that reads best.
    pub fn span(s: f64) -> String {
        if s < 3_600.0 {
            format!("{:.0} min", s / 60.0)
        } else if s < 2.0 * 86_400.0 {
            format!("{:.1} h", s / 3_600.0)
        } else {
            format!("{:.1} d", s / 86_400.0)
        }
    }

    /// The working day's hourly weights as a Markdown table.
    pub fn diurnal_table() -> String {
        let hours: Vec<String> = (0..24).map(|h| format!("{h:02}")).collect();
        let weights: Vec<String> = super::dist::DIURNAL.map(|w| w.to_string()).to_vec();
        format!(
            "| hour | {} |\n|---|{}\n| weight | {} |\n",
            hours.join(" | "),
            "---|".repeat(24),
            weights.join(" | ")
        )
    }

    /// The bins of a histogram as a Markdown table.
    pub fn hist_table(hist: &Hist) -> String {
        let mut out = String::from("| duration | share of jobs |\n|---|---|\n");
        for (b, p) in hist.bins().iter().zip(hist.shares()) {
            let _ = writeln!(
                out,
                "| {} to {} | {:.1} % |",
                span(b.lo_s as f64),
                span(b.hi_s as f64),
                100.0 * p
            );
        }
        let _ = writeln!(out, "\nMean {}.", span(hist.mean_s()));
        out
    }

    /// The shapes of a stream, as `8 GPUs 60 %, 4 GPUs 40 %` (`1 GPU` alone if one).
    pub fn shapes(stream: &Stream) -> String {
        let parts: Vec<String> = stream
            .shapes
            .shares()
            .map(|((tasks, gpus), p)| {
                let what = if tasks == 1 {
                    format!("{gpus} GPU{}", if gpus == 1 { "" } else { "s" })
                } else {
                    format!("{tasks} x {gpus} GPUs")
                };
                if p < 1.0 {
                    format!("{what} {:.0} %", 100.0 * p)
                } else {
                    what
                }
            })
            .collect();
        parts.join(", ")
    }

    /// What was realised, per team: jobs, GPU-hours, mean shape and duration.
    pub fn realised_teams(w: &Workload) -> String {
        let mut out = String::from(
            "| team | guaranteed GPUs | jobs | of them warm start | GPU-hours | mean GPUs per job | mean duration |\n|---|---|---|---|---|---|---|\n",
        );
        for t in &w.teams {
            let jobs: Vec<_> = w.jobs.iter().filter(|j| j.team == t.name).collect();
            let warm = jobs.iter().filter(|j| j.user == WARM_USER).count();
            let gpus: Vec<f64> = jobs
                .iter()
                .map(|j| (j.gpu.milli() * u64::from(j.tasks)) as f64 / 1000.0)
                .collect();
            let gpu_h: f64 = jobs
                .iter()
                .zip(&gpus)
                .map(|(j, g)| g * j.duration_s as f64 / 3_600.0)
                .sum();
            let n = jobs.len().max(1) as f64;
            let dur: f64 = jobs.iter().map(|j| j.duration_s as f64).sum::<f64>() / n;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {} |",
                t.name,
                t.guaranteed,
                jobs.len(),
                warm,
                gpu_h,
                gpus.iter().sum::<f64>() / n,
                span(dur)
            );
        }
        let warm = w.jobs.iter().filter(|j| j.user == WARM_USER).count();
        let _ = writeln!(
            out,
            "\n{} jobs in all, {} of them the warm start.",
            w.jobs.len(),
            warm
        );
        out
    }

    /// How to replay, from the directory the files are in.
    pub fn replay(w: &Workload, regenerate: &str) -> String {
        format!(
            "## Replay\n\nFrom this directory:\n\n```sh\n{}\n```\n\nThe per-team table of `report/report.md` gives each team's mean wait under each policy.\n\nTo write these files again (same seed, same bytes):\n\n```sh\n{regenerate}\n```\n",
            w.replay_command(std::path::Path::new(""))
        )
    }
}

#[cfg(test)]
mod tests;
