//! `hoarding`: teams that hold GPUs they do not use, in a busy cluster.
//!
//! The cluster is `NODESxGPUS` (default 64x8, 512 GPUs). Five teams share it:
//!
//! - `train`: 1- to 8-GPU training runs; `nlp`: whole-node runs and 2- to 4-node gangs;
//! - `notebooks`: 1- and 2-GPU interactive sessions;
//! - `research`: 1-GPU experiments with Philly's heavy tail, which ask for more than their
//!   guarantee and so always have work waiting;
//! - `hoard`: its own training work, plus *placeholders*: every morning it submits
//!   `placeholder_nodes` whole-node jobs that do nothing for a day (utilisation 0), so as to
//!   keep "its" GPUs, and marks them not preemptible.
//!
//! Every job works at a utilisation drawn from [`UTIL`] (all above the idle threshold), and a
//! share `idle_share` of the jobs (default 20 %) keep their GPUs idle for hours after their
//! work is done ([`HOLD`]: a notebook left open, a finished run that sleeps until someone
//! looks, a weekend). `--load` is the working GPU-time offered; idle holds and placeholders
//! come on top. The trace writes `util_pct` and `idle_after_s` for every job, so a replay
//! feeds the core utilisation as the server's agents would.

use std::fmt::Write as _;

use super::dist::{Hist, Profile, Weighted, DIURNAL};
use super::readme;
use super::{finish, split, warm_start, Draft, GenTeam, Stream, Workload};
use crate::cluster::SpecError;
use crate::rng::Rng;
use crate::trace::default_time_limit;

/// The scenario's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Hoarding {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub days: u32,
    /// Working GPU-time offered over the whole trace, as a fraction of the cluster's GPUs.
    pub load: f64,
    /// The share of jobs that hold their GPUs idle after their work is done.
    pub idle_share: f64,
    /// Whole nodes of placeholders `hoard` keeps every day.
    pub placeholder_nodes: u32,
}

const MIN: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// Each team's guarantee (out of 32 parts of the cluster's nodes) and demand as a
/// percentage of its guarantee, before all are scaled together to the load.
const TEAMS: [(&str, u32, u32); 5] = [
    ("train", 10, 90),
    ("nlp", 8, 80),
    ("notebooks", 3, 60),
    ("research", 5, 140),
    ("hoard", 6, 50),
];

/// Utilisation while a job works, percent: bins by weight, uniform within. Training jobs
/// rarely keep a GPU busy all the time (input pipelines, communication, evaluation), and
/// reports of production clusters put typical job utilisation well below 100 %; none is
/// below the idle threshold (5 %) while it works.
const UTIL: [((u8, u8), u32); 4] = [
    ((10, 30), 15),
    ((30, 60), 35),
    ((60, 90), 35),
    ((90, 100), 15),
];

/// Hours a job holds its GPUs idle after its work, for the jobs that do: bins by weight.
const HOLD: [(u64, u64, u32); 4] = [
    (30 * MIN, HOUR, 20),
    (HOUR, 4 * HOUR, 35),
    (4 * HOUR, 12 * HOUR, 30),
    (12 * HOUR, 48 * HOUR, 15),
];

/// Placeholders are submitted at this hour every day and last a day.
const PLACEHOLDER_HOUR: u64 = 8;

/// The user of the placeholders.
pub const PLACEHOLDER_USER: &str = "placeholder";

/// Saturday and Sunday offer this fraction.
const WEEKEND: f64 = 0.6;

impl Hoarding {
    pub const DEFAULT: Hoarding = Hoarding {
        nodes: 64,
        gpus_per_node: 8,
        days: 14,
        load: 0.85,
        idle_share: 0.2,
        placeholder_nodes: 6,
    };

    fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    fn check(&self) -> Result<(), SpecError> {
        let bad = |what: String| Err(SpecError(format!("hoarding: {what}")));
        if self.gpus_per_node < 2 || self.gpus_per_node > 64 {
            return bad(format!(
                "expected --gpus-per-node from 2 to 64, found {}",
                self.gpus_per_node
            ));
        }
        if self.nodes < 16 {
            return bad(format!(
                "expected at least 16 --nodes (each team gets whole nodes), found {}",
                self.nodes
            ));
        }
        if self.days == 0 {
            return bad("expected --days of at least 1, found 0".into());
        }
        if !(self.load > 0.0 && self.load <= 10.0) {
            return bad(format!(
                "expected --load above 0 and at most 10, found {}",
                self.load
            ));
        }
        if !(0.0..=1.0).contains(&self.idle_share) {
            return bad(format!(
                "expected --idle-share from 0 to 1, found {}",
                self.idle_share
            ));
        }
        let hoard = self.teams()[4].guaranteed / self.gpus_per_node;
        if self.placeholder_nodes > hoard {
            return bad(format!(
                "expected --placeholder-nodes of at most hoard's guarantee, {hoard} nodes, found {}",
                self.placeholder_nodes
            ));
        }
        Ok(())
    }

    fn teams(&self) -> Vec<GenTeam> {
        let parts: Vec<u32> = TEAMS.iter().map(|t| t.1).collect();
        split(self.nodes, &parts)
            .into_iter()
            .zip(TEAMS)
            .map(|(n, (name, _, _))| GenTeam {
                name: name.to_string(),
                guaranteed: n * self.gpus_per_node,
            })
            .collect()
    }

    fn streams(&self) -> Vec<Stream> {
        let node = self.gpus_per_node;
        let half = (node / 2).max(1);
        let train = Stream::single(
            "train",
            &[((1, 1), 30), ((1, 2), 20), ((1, half), 25), ((1, node), 25)],
            Hist::new(&[
                (20 * MIN, HOUR, 20),
                (HOUR, 4 * HOUR, 35),
                (4 * HOUR, 12 * HOUR, 30),
                (12 * HOUR, 24 * HOUR, 15),
            ]),
        );
        let nlp = Stream::single(
            "nlp",
            &[((1, node), 50), ((2, node), 30), ((4, node), 20)],
            Hist::new(&[
                (2 * HOUR, 6 * HOUR, 40),
                (6 * HOUR, 12 * HOUR, 35),
                (12 * HOUR, 24 * HOUR, 25),
            ]),
        );
        let notebooks = Stream::single(
            "notebooks",
            &[((1, 1), 80), ((1, 2), 20)],
            Hist::new(&[
                (10 * MIN, 30 * MIN, 30),
                (30 * MIN, HOUR, 30),
                (HOUR, 2 * HOUR, 25),
                (2 * HOUR, 4 * HOUR, 15),
            ]),
        );
        let research = Stream::single(
            "research",
            &[((1, 1), 1)],
            Hist::new(&[
                (MIN, 10 * MIN, 25),
                (10 * MIN, 30 * MIN, 15),
                (30 * MIN, HOUR, 15),
                (HOUR, 2 * HOUR, 12),
                (2 * HOUR, 4 * HOUR, 10),
                (4 * HOUR, 8 * HOUR, 9),
                (8 * HOUR, 16 * HOUR, 7),
                (16 * HOUR, 32 * HOUR, 4),
                (32 * HOUR, 72 * HOUR, 3),
            ]),
        );
        let hoard = Stream::single(
            "hoard",
            &[((1, 1), 30), ((1, half), 30), ((1, node), 40)],
            Hist::new(&[
                (HOUR, 4 * HOUR, 40),
                (4 * HOUR, 8 * HOUR, 35),
                (8 * HOUR, 16 * HOUR, 25),
            ]),
        );
        vec![train, nlp, notebooks, research, hoard]
    }

    /// The hourly arrival rate: the working day, weekends lower.
    fn profile(&self) -> Profile {
        let rates: Vec<f64> = (0..self.days as usize * 24)
            .map(|h| {
                let weekend = if (h / 24) % 7 >= 5 { WEEKEND } else { 1.0 };
                f64::from(DIURNAL[h % 24]) * weekend
            })
            .collect();
        Profile::new(&rates)
    }

    /// Draws the workload.
    pub fn generate(&self, seed: u64) -> Result<Workload, SpecError> {
        self.check()?;
        let mut rng = Rng::new(seed);
        let teams = self.teams();
        let streams = self.streams();
        let shares = shares(&teams);
        let load_gpus = self.load * self.gpus() as f64;
        // The warm start leaves room for the first day's placeholders.
        let placeholders = u64::from(self.placeholder_nodes * self.gpus_per_node);
        let warm_gpus = (load_gpus as u64).min(self.gpus().saturating_sub(placeholders));
        let mut drafts: Vec<Draft> = warm_start(&mut rng, &streams, &shares, warm_gpus);
        let profile = self.profile();
        for (stream, share) in streams.iter().zip(&shares) {
            let gpu_s = load_gpus * share * f64::from(self.days) * DAY as f64;
            stream.fill(&mut rng, gpu_s, &profile, &mut drafts);
        }
        let util = Weighted::new(&UTIL);
        let hold = Hist::new(&HOLD);
        let idle_per_million = (self.idle_share * 1e6).round() as usize;
        for d in &mut drafts {
            let (lo, hi) = util.pick(&mut rng);
            d.util_pct = Some(lo + rng.below(usize::from(hi - lo) + 1) as u8);
            if rng.below(1_000_000) < idle_per_million {
                let work = d.duration_s;
                d.idle_after_s = Some(work);
                d.duration_s = work + hold.sample(&mut rng);
                d.time_limit_s = d.time_limit_s.max(default_time_limit(d.duration_s));
            }
        }
        for day in 0..u64::from(self.days) {
            let at = if day == 0 {
                0
            } else {
                day * DAY + PLACEHOLDER_HOUR * HOUR
            };
            for _ in 0..self.placeholder_nodes {
                drafts.push(Draft {
                    submit_s: at,
                    duration_s: DAY,
                    time_limit_s: default_time_limit(DAY),
                    tasks: 1,
                    gpus: self.gpus_per_node,
                    team: "hoard".into(),
                    user: PLACEHOLDER_USER,
                    preemptible: false,
                    util_pct: Some(0),
                    idle_after_s: Some(0),
                });
            }
        }
        let mut workload = Workload {
            scenario: "hoarding",
            cluster: format!("{}x{}", self.nodes, self.gpus_per_node),
            policies: "default",
            idle_policies: Some("warn,yield,release"),
            jobs: finish(drafts),
            teams,
            readme: String::new(),
        };
        workload.readme = self.readme(seed, &workload, &streams);
        Ok(workload)
    }

    /// The command that generates this workload.
    pub fn command(&self, seed: u64) -> String {
        format!(
            "qm sim gen hoarding --seed {seed} --nodes {} --gpus-per-node {} --days {} --load {} --idle-share {} --placeholder-nodes {} --out DIR",
            self.nodes, self.gpus_per_node, self.days, self.load, self.idle_share, self.placeholder_nodes
        )
    }

    fn readme(&self, seed: u64, w: &Workload, streams: &[Stream]) -> String {
        let gpus = self.gpus();
        let mut md = String::new();
        let _ = writeln!(md, "# Generated workload: `hoarding`, seed {seed}\n");
        let _ = writeln!(
            md,
            "Five teams share a {gpus}-GPU cluster, and some of their jobs hold GPUs they do not use: {:.0} % of jobs keep their GPUs idle for hours after their work is done, and team `hoard` keeps {} whole nodes of placeholders (jobs that do nothing, renewed every morning, not preemptible) so as to keep \"its\" GPUs. Team `research` asks for more than its guarantee, so some work is nearly always waiting. The question: how many GPU-hours sit idle while work waits, under each idle policy (`warn`, `yield`, `release`), and is any busy job ever stopped as idle? Replay with `--idle-policy warn,yield,release` and compare `idle_gpu_hours_while_waiting` in the report.\n",
            100.0 * self.idle_share,
            self.placeholder_nodes
        );
        let _ = writeln!(md, "## Parameters\n");
        let _ = writeln!(md, "| parameter | value |\n|---|---|");
        let _ = writeln!(md, "| `--seed` | {seed} |");
        let _ = writeln!(
            md,
            "| `--nodes` x `--gpus-per-node` | {} x {} = {} GPUs (cluster `{}`) |",
            self.nodes, self.gpus_per_node, gpus, w.cluster
        );
        let _ = writeln!(md, "| `--days` | {} (day 0 is a Monday) |", self.days);
        let _ = writeln!(
            md,
            "| `--load` | {} (working GPU-time offered over the whole trace; idle holds and placeholders come on top) |",
            self.load
        );
        let _ = writeln!(
            md,
            "| `--idle-share` | {} (the share of jobs that hold their GPUs idle after their work) |",
            self.idle_share
        );
        let _ = writeln!(
            md,
            "| `--placeholder-nodes` | {} (whole-node placeholders `hoard` keeps, submitted at {PLACEHOLDER_HOUR}:00 every day, at 0 s on day 0, each for a day) |\n",
            self.placeholder_nodes
        );
        let _ = writeln!(md, "## Teams and their jobs\n");
        let _ = writeln!(
            md,
            "| team | guaranteed GPUs | demand / guarantee (before scaling) | job shapes |\n|---|---|---|---|"
        );
        for ((t, s), (_, _, factor)) in w.teams.iter().zip(streams).zip(TEAMS) {
            let _ = writeln!(
                md,
                "| {} | {} | {} % | {} |",
                t.name,
                t.guaranteed,
                factor,
                readme::shapes(s)
            );
        }
        let _ = writeln!(
            md,
            "\nEvery job but the placeholders is preemptible and gets the power-of-two time limit of its whole length, idle hold included (what a person asking for a session of a day asks). Submissions follow the working day (below) with weekends at {:.0} %, each team a Poisson process conditioned on its share of the working GPU-time.\n",
            100.0 * WEEKEND
        );
        let _ = writeln!(md, "{}", readme::diurnal_table());
        for s in streams {
            let _ = writeln!(
                md,
                "**{}** working durations:\n\n{}",
                s.team,
                readme::hist_table(&s.durations)
            );
        }
        let _ = writeln!(md, "## Utilisation and idle holds\n");
        let _ = writeln!(
            md,
            "While it works, a job keeps its GPUs busy at a utilisation drawn uniformly within a bin (all above the default idle threshold, 5 %):\n\n| utilisation | share of jobs |\n|---|---|"
        );
        let total: u32 = UTIL.iter().map(|u| u.1).sum();
        for ((lo, hi), w) in UTIL {
            let _ = writeln!(
                md,
                "| {lo} to {hi} % | {:.0} % |",
                100.0 * f64::from(w) / f64::from(total)
            );
        }
        let _ = writeln!(
            md,
            "\nThe jobs that hold their GPUs idle after their work (`idle_after_s` is their working time; `duration_s` adds the hold) hold them this long:\n\n{}",
            readme::hist_table(&Hist::new(&HOLD))
        );
        let _ = writeln!(
            md,
            "Why: GPUs allocated but idle are common in shared clusters. An analysis of the Philly telemetry (per-minute utilisation of every GPU of Microsoft's Philly cluster, published with Jeon et al., \"Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads\", USENIX ATC '19) finds GPUs assigned to jobs at 0 % for a quarter to a half of their allocated time; a 20 % share of jobs holding idle for hours is a conservative stand-in for notebooks left open overnight and finished runs nobody has looked at. The holds are this scenario's choice: half an hour to two days, most of them an evening or a night.\n"
        );
        let _ = writeln!(md, "## Realised\n\n{}", readme::realised_teams(w));
        let idle: Vec<_> = w
            .jobs
            .iter()
            .filter(|j| j.user != PLACEHOLDER_USER && j.idle_after_s.is_some())
            .collect();
        let held_h: f64 = idle
            .iter()
            .map(|j| {
                let g = (j.gpu.milli() * u64::from(j.tasks)) as f64 / 1000.0;
                g * (j.duration_s - j.idle_after_s.unwrap_or(0)) as f64 / 3_600.0
            })
            .sum();
        let placeholder_h: f64 = w
            .jobs
            .iter()
            .filter(|j| j.user == PLACEHOLDER_USER)
            .map(|j| {
                f64::from(j.tasks) * (j.gpu.milli() as f64 / 1000.0) * j.duration_s as f64 / 3_600.0
            })
            .sum();
        let _ = writeln!(
            md,
            "{} jobs hold their GPUs idle after their work: {:.0} GPU-hours of idle holds if nothing stops them; the placeholders ask for {:.0} GPU-hours more.\n",
            idle.len(),
            held_h,
            placeholder_h
        );
        let _ = writeln!(md, "{}", readme::replay(w, &self.command(seed)));
        md
    }
}

/// Gives every job of a trace without utilisation a working utilisation drawn from [`UTIL`],
/// and a share `share` of them an idle hold after their work drawn from [`HOLD`] (their
/// duration grows by it; a time limit grows to the power-of-two limit of the new duration
/// where it was shorter): any trace, as if its jobs held GPUs idle like this scenario's
/// (`qm sim run --add-idle SHARE`). Seeded; the same seed gives the same jobs.
pub fn add_idle(jobs: &mut [crate::trace::TraceJob], share: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    let util = Weighted::new(&UTIL);
    let hold = Hist::new(&HOLD);
    let per_million = (share.clamp(0.0, 1.0) * 1e6).round() as usize;
    for j in jobs.iter_mut().filter(|j| j.util_pct.is_none()) {
        let (lo, hi) = util.pick(&mut rng);
        j.util_pct = Some(lo + rng.below(usize::from(hi - lo) + 1) as u8);
        if rng.below(1_000_000) < per_million {
            let work = j.duration_s;
            j.idle_after_s = Some(work);
            j.duration_s = work + hold.sample(&mut rng);
            if let Some(limit) = &mut j.time_limit_s {
                *limit = (*limit).max(default_time_limit(j.duration_s));
            }
        }
    }
}

/// Each team's share of the offered working load: its guarantee times its demand factor,
/// normalised.
fn shares(teams: &[GenTeam]) -> Vec<f64> {
    let weights: Vec<f64> = teams
        .iter()
        .zip(TEAMS)
        .map(|(t, (_, _, factor))| f64::from(t.guaranteed) * f64::from(factor))
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}
