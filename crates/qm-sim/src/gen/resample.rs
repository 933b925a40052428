//! `philly-resample`: a real trace's jobs, resampled onto a cluster of any size at any load.
//!
//! The jobs come from a trace that `qm sim run` reads (any format, through [`crate::trace`];
//! the Philly job table by name, because that is what it was made for): each generated job is
//! a copy of a source job drawn uniformly with replacement (its shape, duration, CPU, memory,
//! team, priority, preemptibility and time limit, or the power-of-two rule where the trace has
//! none). Jobs are drawn until their GPU-time is `load` of the cluster over `days` (the last
//! kept if that comes closer), and get submission times from the source's own arrival pattern:
//! its submissions counted by hour of the week (from its first submission), which become the
//! rates of a Poisson process given its number of arrivals. Teams are the source's teams, each
//! guaranteed whole nodes in proportion to its GPU-time in the resampled trace (`teamspec`'s
//! `auto` rule). Source jobs whose tasks do not fit a node of the cluster, or whose gang does not
//! fit the cluster, are left out of the pool, and counted.

use std::fmt::Write as _;

use super::dist::{unit, Profile};
use super::readme::{self, span};
use super::{offered_by_hour, GenTeam, Workload, WARM_USER};
use crate::cluster::SpecError;
use crate::rng::Rng;
use crate::teamspec;
use crate::trace::{default_time_limit, Trace, TraceJob};
use qm_core::ANY_MODEL;

/// The scenario's parameters; the source trace is passed to [`Resample::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Resample {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub days: u32,
    /// Offered load over the whole trace, as a fraction of the cluster's GPUs.
    pub load: f64,
}

const WEEK_H: usize = 7 * 24;

fn gpu_s(job: &TraceJob) -> f64 {
    (job.gpu.milli() * u64::from(job.tasks)) as f64 / 1000.0 * job.duration_s as f64
}

fn milli(job: &TraceJob) -> u64 {
    job.gpu.milli() * u64::from(job.tasks)
}

impl Resample {
    /// The cluster of the Philly replay in BENCHMARKS.md (Philly kept about 374 GPUs busy).
    pub const DEFAULT: Resample = Resample {
        nodes: 64,
        gpus_per_node: 8,
        days: 14,
        load: 0.8,
    };

    fn cluster_gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    /// Draws the workload from `source` (the trace as loaded; `source_name` is how the README
    /// names it).
    pub fn generate(
        &self,
        source: &Trace,
        source_name: &str,
        seed: u64,
    ) -> Result<Workload, SpecError> {
        let bad = |what: String| Err(SpecError(format!("philly-resample: {what}")));
        if self.nodes == 0 || self.gpus_per_node == 0 || self.gpus_per_node > 64 {
            return bad(format!(
                "expected at least one node of 1 to 64 GPUs, found {} nodes of {}",
                self.nodes, self.gpus_per_node
            ));
        }
        if self.days == 0 || !(self.load > 0.0 && self.load <= 10.0) {
            return bad(format!(
                "expected --days of at least 1 and --load above 0 and at most 10, found {} and {}",
                self.days, self.load
            ));
        }
        let node_milli = u64::from(self.gpus_per_node) * 1000;
        let (pool, left_out): (Vec<&TraceJob>, Vec<&TraceJob>) =
            source.jobs.iter().partition(|j| {
                j.gpu.milli() <= node_milli
                    && milli(j) <= self.cluster_gpus() * 1000
                    && j.gpu_model.is_none()
            });
        if pool.is_empty() {
            return bad(format!(
                "{source_name} has no job whose tasks fit a node of {} GPUs",
                self.gpus_per_node
            ));
        }
        // The source's arrivals by hour of the week, from its first submission.
        let mut weekly = [0.0f64; WEEK_H];
        for j in &source.jobs {
            weekly[(j.submit_s / 3_600) as usize % WEEK_H] += 1.0;
        }
        let hours = self.days as usize * 24;
        let rates: Vec<f64> = (0..hours).map(|h| weekly[h % WEEK_H]).collect();
        if rates.iter().all(|&r| r == 0.0) {
            return bad(format!(
                "{source_name}'s submissions fall in no hour of the first {} days of a week",
                self.days
            ));
        }
        let profile = Profile::new(&rates);
        let mut rng = Rng::new(seed);
        let target = self.load * self.cluster_gpus() as f64 * hours as f64 * 3_600.0;
        let mut jobs: Vec<TraceJob> = Vec::new();
        // The warm start: jobs found running at a random instant are drawn in proportion to
        // their duration (length-biased), each with the time left uniform in it, up to the
        // load (at most the cluster).
        let mut by_length = Vec::with_capacity(pool.len());
        let mut sum = 0.0;
        for j in &pool {
            sum += j.duration_s as f64;
            by_length.push(sum);
        }
        let warm_milli = (self.load.min(1.0) * self.cluster_gpus() as f64 * 1000.0) as u64;
        let mut used = 0;
        loop {
            let x = unit(&mut rng) * sum;
            let i = by_length.partition_point(|&c| c <= x).min(pool.len() - 1);
            let j = pool[i];
            if used + milli(j) > warm_milli {
                break;
            }
            used += milli(j);
            let left = 1 + rng.below(j.duration_s as usize) as u64;
            let limit = j
                .time_limit_s
                .unwrap_or_else(|| default_time_limit(j.duration_s));
            jobs.push(TraceJob {
                submit_s: 0,
                duration_s: left,
                time_limit_s: Some(limit.saturating_sub(j.duration_s - left).max(left)),
                user: WARM_USER.to_string(),
                ..(*j).clone()
            });
        }
        let warm = jobs.len();
        let mut total = 0.0;
        while total < target {
            let j = pool[rng.below(pool.len())];
            let g = gpu_s(j);
            if total + g - target > target - total {
                break;
            }
            total += g;
            jobs.push(TraceJob {
                submit_s: profile.time(&mut rng),
                time_limit_s: Some(
                    j.time_limit_s
                        .unwrap_or_else(|| default_time_limit(j.duration_s)),
                ),
                ..(*j).clone()
            });
        }
        jobs.sort_by_key(|j| j.submit_s);
        for (i, j) in jobs.iter_mut().enumerate() {
            j.id = i as u64 + 1;
        }
        let teams: Vec<GenTeam> =
            teamspec::auto(&jobs, self.cluster_gpus(), u64::from(self.gpus_per_node))
                .into_iter()
                .map(|t| GenTeam {
                    guaranteed: t.quotas[ANY_MODEL].guaranteed,
                    name: t.name,
                })
                .collect();
        let mut workload = Workload {
            scenario: "philly-resample",
            cluster: format!("{}x{}", self.nodes, self.gpus_per_node),
            policies: "default,fifo,static",
            idle_policies: None,
            jobs,
            teams,
            readme: String::new(),
        };
        workload.readme = self.readme(
            seed,
            source,
            source_name,
            &workload,
            &weekly,
            [pool.len(), left_out.len(), warm],
        );
        Ok(workload)
    }

    /// The command that generates this workload from `source_name`.
    pub fn command(&self, seed: u64, source_name: &str) -> String {
        format!(
            "qm sim gen philly-resample --from {source_name} --seed {seed} --nodes {} --gpus-per-node {} --days {} --load {} --out DIR",
            self.nodes, self.gpus_per_node, self.days, self.load
        )
    }

    fn readme(
        &self,
        seed: u64,
        source: &Trace,
        source_name: &str,
        w: &Workload,
        weekly: &[f64; WEEK_H],
        [pool, left_out, warm]: [usize; 3],
    ) -> String {
        let gpus = self.cluster_gpus();
        let hours = self.days as usize * 24;
        let source_days = source
            .jobs
            .last()
            .map_or(0, |j| j.submit_s)
            .div_ceil(86_400);
        let source_gpu_s: f64 = source.jobs.iter().map(gpu_s).sum();
        let mut md = String::new();
        let _ = writeln!(md, "# Generated workload: `philly-resample`, seed {seed}\n");
        let _ = writeln!(
            md,
            "The jobs of `{source_name}` ({} jobs over {source_days} days, {:.0} GPU-hours), resampled with replacement onto {} GPUs for {} days at an offered load of {}: the source's own mix of shapes, durations and teams, at a load and on a cluster of our choosing.\n",
            source.jobs.len(),
            source_gpu_s / 3_600.0,
            gpus,
            self.days,
            self.load
        );
        let _ = writeln!(md, "## Parameters\n");
        let _ = writeln!(md, "| parameter | value |\n|---|---|");
        let _ = writeln!(md, "| `--from` | `{source_name}` |");
        let _ = writeln!(md, "| `--seed` | {seed} |");
        let _ = writeln!(
            md,
            "| `--nodes` x `--gpus-per-node` | {} x {} = {gpus} GPUs (cluster `{}`) |",
            self.nodes, self.gpus_per_node, w.cluster
        );
        let _ = writeln!(md, "| `--days` | {} |", self.days);
        let _ = writeln!(
            md,
            "| `--load` | {} (offered over the whole trace) |\n",
            self.load
        );
        let _ = writeln!(md, "## How it was drawn\n");
        let _ = writeln!(
            md,
            "- **Jobs.** Copies of source jobs drawn uniformly with replacement, so the mix of shapes, durations and teams is the source's. The pool is the {pool} source jobs whose tasks fit a node of {} GPUs, whose gang fits the cluster and that name no GPU model ({left_out} left out). A job without a time limit gets its duration rounded up to a power-of-two number of hours, written in the trace.",
            self.gpus_per_node
        );
        let _ = writeln!(
            md,
            "- **Load.** Jobs are drawn until their GPU-time (GPUs x duration, summed) is `--load` x {gpus} GPUs x {} hours (the last kept if that comes closer); realised: {:.3} of the cluster.",
            hours,
            super::mean_over_hours(&offered_by_hour(&w.jobs, gpus, hours), |_| true)
        );
        let peak = weekly.iter().copied().fold(0.0, f64::max);
        let quiet = weekly.iter().copied().fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            md,
            "- **Arrivals.** The source's submissions counted by hour of the week, from its first submission (busiest hour {peak:.0} submissions, quietest {quiet:.0}), are the rates of a Poisson process over the {} hours; the jobs get its arrival times given their number (each independently: an hour with probability proportional to its rate, a second uniform in it).",
            hours
        );
        let _ = writeln!(
            md,
            "- **Warm start.** {warm} jobs (user `warm-start`) open the trace at 0 s, as a steady state at the load would be running them: drawn in proportion to their duration, each with the time left uniform in it, up to {} GPUs.",
            (self.load.min(1.0) * gpus as f64) as u64
        );
        let _ = writeln!(
            md,
            "- **Teams.** The source's teams, each guaranteed whole nodes in proportion to its GPU-time in this trace, summing to the cluster (largest remainder), as `qm sim run --teams auto` would give them.\n"
        );
        let _ = writeln!(md, "## Realised\n\n{}", readme::realised_teams(w));
        let longest = w.jobs.iter().map(|j| j.duration_s).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "The longest job runs {}: the replay goes on until the last job ends.\n",
            span(longest as f64)
        );
        let _ = writeln!(
            md,
            "{}",
            readme::replay(w, &self.command(seed, source_name))
        );
        md
    }
}
