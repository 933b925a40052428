//! `big-gang`: one team's 2,048-GPU run every 12 hours in a pool full of borrowers.
//!
//! The cluster is `NODESxGPUS` (default 2048x8: 16,384 GPUs, racks of 16 nodes). The team
//! `frontier` is guaranteed exactly one gang's GPUs (default 2,048) and submits nothing but
//! that gang: 256 tasks of 8 GPUs, not preemptible, every `gang_every_h` hours from the first
//! period on, each running 3 to 6 hours under the power-of-two time-limit rule (4 h or 8 h).
//! Eight other teams share the rest of the cluster with unequal guarantees (whole nodes, in
//! the ratios 16:12:8:6:5:4:3:2) and submit small preemptible jobs (1, 2, 4 or 8 GPUs, two
//! in three of them 1 or 2 GPUs) as Poisson arrivals whose rate follows a working day
//! ([`DIURNAL`]), with heavy-tailed durations from ten minutes to five days (median about
//! 3 h). Their offered load by day (09:00-21:00) plus the gangs' average makes `load` of the
//! cluster (default 1.05): the cluster is oversubscribed by day, so frontier's idle guarantee
//! is always lent out, and has some room at night. Some teams ask for more than their
//! guarantee, some for less.
//!
//! The sizes and durations of the small jobs set how many there are, and a replay costs about
//! two plans per job, each walking every running job: see [`BigGang::DEFAULT`].

use std::fmt::Write as _;

use super::dist::{self, Hist, Profile, DAY_HOURS, DIURNAL};
use super::readme;
use super::{finish, offered_by_hour, split, warm_start, Draft, GenTeam, Stream, Workload};
use crate::cluster::SpecError;
use crate::rng::Rng;
use crate::trace::default_time_limit;

/// The scenario's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct BigGang {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub days: u32,
    /// Hours between two of frontier's gangs; the first comes at this hour.
    pub gang_every_h: u32,
    /// The gang's GPUs, a multiple of `gpus_per_node`: also frontier's guarantee.
    pub gang_gpus: u32,
    /// Offered load by day (09:00-21:00), the gangs' average included, as a fraction of the
    /// cluster's GPUs.
    pub load: f64,
    /// Multiplies every bound of the small jobs' duration histogram: below 1, more and
    /// shorter jobs (and a replay that costs about `1 / duration_scale` times more).
    pub duration_scale: f64,
}

/// The small teams: name, guarantee weight, demand as a percentage of the guarantee.
const TEAMS: [(&str, u32, u32); 8] = [
    ("nlp", 16, 125),
    ("vision", 12, 80),
    ("speech", 8, 110),
    ("multimodal", 6, 90),
    ("rl", 5, 130),
    ("eval", 4, 75),
    ("safety", 3, 100),
    ("infra", 2, 100),
];

/// The small jobs' GPUs: two in three ask for 1 or 2 GPUs.
const SMALL_SHAPES: [((u32, u32), u32); 4] =
    [((1, 1), 40), ((1, 2), 25), ((1, 4), 15), ((1, 8), 20)];

const MIN: u64 = 60;
const HOUR: u64 = 3_600;

/// The small jobs' durations at `duration_scale` 1: from ten minutes to five days, heavy-tailed
/// (median about 3 h, mean 15.4 h, three quarters of the GPU time in jobs of over a day).
fn base_durations() -> Hist {
    Hist::new(&[
        (10 * MIN, 30 * MIN, 14),
        (30 * MIN, HOUR, 15),
        (HOUR, 2 * HOUR, 15),
        (2 * HOUR, 4 * HOUR, 10),
        (4 * HOUR, 8 * HOUR, 10),
        (8 * HOUR, 16 * HOUR, 10),
        (16 * HOUR, 32 * HOUR, 10),
        (32 * HOUR, 64 * HOUR, 10),
        (64 * HOUR, 128 * HOUR, 6),
    ])
}

/// The gang's duration: 3 to 6 hours.
fn gang_durations() -> Hist {
    Hist::new(&[(3 * HOUR, 6 * HOUR, 1)])
}

impl BigGang {
    /// The defaults. `duration_scale` 1 is what keeps a `default` replay of the default
    /// scenario affordable: seed 42 gives 56,283 jobs, and `qm sim run --policy default` took
    /// 3 min 16 s (2 min 38 s of CPU, 103,109 plans, about 5,000 jobs running at once) on the
    /// project's 2-core development VM while other work shared it; `fifo` 3 min 22 s. At
    /// `duration_scale` 0.25 (Philly's mean job length) expect about four times that.
    pub const DEFAULT: BigGang = BigGang {
        nodes: 2048,
        gpus_per_node: 8,
        days: 7,
        gang_every_h: 12,
        gang_gpus: 2048,
        load: 1.05,
        duration_scale: 1.0,
    };

    fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    fn check(&self) -> Result<(), SpecError> {
        let bad = |what: String| Err(SpecError(format!("big-gang: {what}")));
        if self.nodes == 0 || self.gpus_per_node == 0 || self.gpus_per_node > 64 {
            return bad(format!(
                "expected at least one node of 1 to 64 GPUs, found {} nodes of {}",
                self.nodes, self.gpus_per_node
            ));
        }
        if self.gang_gpus == 0 || !self.gang_gpus.is_multiple_of(self.gpus_per_node) {
            return bad(format!(
                "expected --gang-gpus a positive multiple of --gpus-per-node {}, found {}",
                self.gpus_per_node, self.gang_gpus
            ));
        }
        let gang_nodes = self.gang_gpus / self.gpus_per_node;
        if gang_nodes + TEAMS.len() as u32 > self.nodes {
            return bad(format!(
                "expected room for the gang's {gang_nodes} nodes and a node for each of the {} other teams, found {} nodes",
                TEAMS.len(),
                self.nodes
            ));
        }
        if self.days == 0 || self.gang_every_h == 0 {
            return bad(format!(
                "expected --days and --gang-every-h of at least 1, found {} and {}",
                self.days, self.gang_every_h
            ));
        }
        if !(self.duration_scale >= 0.01 && self.duration_scale <= 100.0) {
            return bad(format!(
                "expected --duration-scale from 0.01 to 100, found {}",
                self.duration_scale
            ));
        }
        if !(self.load > 0.0 && self.load <= 10.0) || self.small_day_gpus() <= 0.0 {
            return bad(format!(
                "expected --load above the gangs' own average ({:.3}) and at most 10, found {}",
                self.gang_mean_gpus() / self.gpus() as f64,
                self.load
            ));
        }
        Ok(())
    }

    /// The gangs' GPUs averaged over time.
    fn gang_mean_gpus(&self) -> f64 {
        f64::from(self.gang_gpus) * gang_durations().mean_s()
            / (f64::from(self.gang_every_h) * 3_600.0)
    }

    /// The small teams' offered GPUs by day.
    fn small_day_gpus(&self) -> f64 {
        self.load * self.gpus() as f64 - self.gang_mean_gpus()
    }

    /// The warm start's GPUs: the small teams' offered GPUs averaged over the day, at most
    /// the cluster.
    fn warm_gpus(&self) -> f64 {
        let all_day = DIURNAL.iter().map(|&w| f64::from(w)).sum::<f64>() / 24.0;
        (self.small_day_gpus() * all_day / dist::diurnal_day_mean()).min(self.gpus() as f64)
    }

    fn durations(&self) -> Hist {
        base_durations().scaled(self.duration_scale)
    }

    /// The small teams' streams and their shares of the small teams' offered load.
    fn streams(&self) -> (Vec<GenTeam>, Vec<Stream>, Vec<f64>) {
        let gang_nodes = self.gang_gpus / self.gpus_per_node;
        let weights: Vec<u32> = TEAMS.iter().map(|t| t.1).collect();
        let nodes = split(self.nodes - gang_nodes, &weights);
        let mut teams = vec![GenTeam {
            name: "frontier".into(),
            guaranteed: self.gang_gpus,
        }];
        let mut streams = Vec::new();
        let mut demand = Vec::new();
        let durations = self.durations();
        for ((name, _, factor), n) in TEAMS.iter().zip(nodes) {
            let guaranteed = n * self.gpus_per_node;
            teams.push(GenTeam {
                name: name.to_string(),
                guaranteed,
            });
            let shapes: Vec<((u32, u32), u32)> = SMALL_SHAPES
                .iter()
                .filter(|((_, g), _)| *g <= self.gpus_per_node)
                .copied()
                .collect();
            streams.push(Stream::single(name, &shapes, durations.clone()));
            demand.push(f64::from(guaranteed) * f64::from(*factor));
        }
        let total: f64 = demand.iter().sum();
        let shares = demand.iter().map(|d| d / total).collect();
        (teams, streams, shares)
    }

    /// The gangs' submission times.
    pub fn gang_times_s(&self) -> Vec<u64> {
        let every = u64::from(self.gang_every_h) * 3_600;
        let end = u64::from(self.days) * 86_400;
        (1..).map(|k| k * every).take_while(|&t| t < end).collect()
    }

    /// Draws the workload.
    pub fn generate(&self, seed: u64) -> Result<Workload, SpecError> {
        self.check()?;
        let mut rng = Rng::new(seed);
        let (teams, streams, shares) = self.streams();
        let day_mean = dist::diurnal_day_mean();
        let mut drafts: Vec<Draft> =
            warm_start(&mut rng, &streams, &shares, self.warm_gpus() as u64);
        let hours = self.days as usize * 24;
        // Offered GPUs in each hour, for all the small teams.
        let offered: Vec<f64> = (0..hours)
            .map(|h| self.small_day_gpus() * f64::from(DIURNAL[h % 24]) / day_mean)
            .collect();
        let profile = Profile::new(&offered);
        let gpu_s = offered.iter().sum::<f64>() * 3_600.0;
        for (stream, share) in streams.iter().zip(&shares) {
            stream.fill(&mut rng, gpu_s * share, &profile, &mut drafts);
        }
        let gang = gang_durations();
        for at_s in self.gang_times_s() {
            let duration_s = gang.sample(&mut rng);
            drafts.push(Draft {
                submit_s: at_s,
                duration_s,
                time_limit_s: default_time_limit(duration_s),
                tasks: self.gang_gpus / self.gpus_per_node,
                gpus: self.gpus_per_node,
                team: "frontier".into(),
                user: "",
                preemptible: false,
                util_pct: None,
                idle_after_s: None,
            });
        }
        let mut workload = Workload {
            scenario: "big-gang",
            cluster: format!("{}x{}", self.nodes, self.gpus_per_node),
            policies: "default,fifo",
            idle_policies: None,
            jobs: finish(drafts),
            teams,
            readme: String::new(),
        };
        workload.readme = self.readme(seed, &workload, &streams, &shares);
        Ok(workload)
    }

    /// The command that generates this workload.
    pub fn command(&self, seed: u64) -> String {
        format!(
            "qm sim gen big-gang --seed {seed} --nodes {} --gpus-per-node {} --days {} --gang-every-h {} --gang-gpus {} --load {} --duration-scale {} --out DIR",
            self.nodes, self.gpus_per_node, self.days, self.gang_every_h, self.gang_gpus, self.load, self.duration_scale
        )
    }

    fn readme(&self, seed: u64, w: &Workload, streams: &[Stream], shares: &[f64]) -> String {
        let gpus = self.gpus();
        let hours = self.days as usize * 24;
        let offered = offered_by_hour(&w.jobs, gpus, hours);
        let small: Vec<_> = w
            .jobs
            .iter()
            .filter(|j| j.team != "frontier")
            .cloned()
            .collect();
        let small_offered = offered_by_hour(&small, gpus, hours);
        let is_day = |h: usize| DAY_HOURS.contains(&h);
        let day = super::mean_over_hours(&small_offered, is_day);
        let night = super::mean_over_hours(&small_offered, |h| !is_day(h));
        let overall = super::mean_over_hours(&offered, |_| true);
        let gang_share = self.gang_mean_gpus() / gpus as f64;
        let mut md = String::new();
        let _ = writeln!(md, "# Generated workload: `big-gang`, seed {seed}\n");
        let _ = writeln!(
            md,
            "One team, `frontier`, is guaranteed exactly {} GPUs and submits one {}-GPU gang ({} tasks x {} GPUs, not preemptible) every {} hours. Eight other teams share the rest of the {}-GPU cluster and submit small preemptible jobs at a rate that follows a working day, enough to oversubscribe the cluster by day. Between gangs, frontier's guarantee is lent to them; when a gang arrives, the scheduler must give frontier {} whole nodes back. The replay measures how long that takes (frontier's mean wait) under each policy.\n",
            self.gang_gpus,
            self.gang_gpus,
            self.gang_gpus / self.gpus_per_node,
            self.gpus_per_node,
            self.gang_every_h,
            gpus,
            self.gang_gpus / self.gpus_per_node
        );
        let _ = writeln!(md, "## Parameters\n");
        let _ = writeln!(md, "| parameter | value |\n|---|---|");
        let _ = writeln!(md, "| `--seed` | {seed} |");
        let _ = writeln!(
            md,
            "| `--nodes` x `--gpus-per-node` | {} x {} = {} GPUs, racks of 16 nodes, pods of 8 racks (cluster `{}`) |",
            self.nodes, self.gpus_per_node, gpus, w.cluster
        );
        let _ = writeln!(md, "| `--days` | {} |", self.days);
        let _ = writeln!(
            md,
            "| `--gang-every-h` | {} (gangs at {}) |",
            self.gang_every_h,
            gang_list(&self.gang_times_s())
        );
        let _ = writeln!(md, "| `--gang-gpus` | {} |", self.gang_gpus);
        let _ = writeln!(
            md,
            "| `--load` | {} (offered by day, 09:00-21:00, the gangs' average included) |",
            self.load
        );
        let _ = writeln!(
            md,
            "| `--duration-scale` | {} (multiplies the small jobs' durations) |\n",
            self.duration_scale
        );
        let _ = writeln!(md, "## Teams\n");
        let _ = writeln!(
            md,
            "Guarantees are whole nodes: frontier exactly its gang, the others the rest in the ratios 16:12:8:6:5:4:3:2, as organisations grow unequal teams. Demand is not proportional to guarantee: each small team asks for a fixed percentage of its guarantee (below), then all are scaled together to the load, so some teams borrow and some lend even on average.\n"
        );
        let _ = writeln!(
            md,
            "| team | guaranteed GPUs | demand / guarantee (before scaling) | share of the small jobs' load |\n|---|---|---|---|"
        );
        let _ = writeln!(md, "| frontier | {} | - | - |", self.gang_gpus);
        for ((t, (_, _, factor)), share) in w.teams[1..].iter().zip(TEAMS).zip(shares) {
            let _ = writeln!(
                md,
                "| {} | {} | {} % | {:.1} % |",
                t.name,
                t.guaranteed,
                factor,
                100.0 * share
            );
        }
        let _ = writeln!(md, "\n## Jobs\n");
        let _ = writeln!(
            md,
            "**Frontier's gang.** {} tasks x {} GPUs, `preemptible=false`, submitted at every multiple of {} h from {} h on (none at 0 h: the first finds the warm cluster). Duration uniform in 3-6 h, time limit by the power-of-two rule (4 h or 8 h): a big run's wall time is requested generously and rounded. Averaged over time the gangs use {:.0} GPUs ({:.1} % of the cluster).\n",
            self.gang_gpus / self.gpus_per_node,
            self.gpus_per_node,
            self.gang_every_h,
            self.gang_every_h,
            self.gang_mean_gpus(),
            100.0 * gang_share
        );
        let _ = writeln!(
            md,
            "**Small jobs.** One task each, preemptible: {}. Most jobs in shared clusters ask for one or two GPUs (Philly: 93 % ask for one); a training lab's mix has more whole-node jobs, and two in three here ask for one or two. Durations are heavy-tailed, drawn from this histogram, uniform within a bin:\n",
            readme::shapes(&streams[0])
        );
        let _ = writeln!(md, "{}", readme::hist_table(&streams[0].durations));
        let _ = writeln!(
            md,
            "Shaped like Philly's durations (the Pollux copy of the job table: median 19 min, mean 3.6 h, 84 % of GPU time in jobs of over a day), but with fewer short jobs and a longer tail, times `--duration-scale` {}: median about {}, mean {}. Why fewer, longer jobs than Philly's: a replay costs the number of scheduling instants (about two per job) times the running jobs each plan walks, and 16,384 GPUs kept busy by Philly-sized jobs would be over a million jobs a week. The time limit of each small job is its duration rounded up to a power-of-two number of hours (the simulator's rule for traces without limits), written out in the trace.\n",
            self.duration_scale,
            readme::span(3.2 * 3_600.0 * self.duration_scale),
            readme::span(streams[0].durations.mean_s())
        );
        let _ = writeln!(md, "## Arrivals and load\n");
        let _ = writeln!(
            md,
            "The small jobs arrive as a Poisson process whose rate changes every hour with the working day below (percent of the daytime plateau). Offered load is GPU-time submitted (GPUs x duration) over the cluster's GPU-time; the small teams are asked for {:.3} of the cluster by day (`--load` {} less the gangs' {:.3}) and the working day's share of it at night, each team its share. Each team draws jobs until their GPU-time is its share of the whole trace's (the last job kept if that comes closer), then gives them the times of its Poisson process given their number: each independently, an hour with probability proportional to its rate, a second uniform in it. So the offered load is what was asked, not what the heavy tail happened to give (drawn freely, a week's daytime load varied by ±5 % between seeds).\n",
            self.small_day_gpus() / gpus as f64,
            self.load,
            gang_share
        );
        let _ = writeln!(md, "{}", readme::diurnal_table());
        let _ = writeln!(
            md,
            "Realised offered load of the small jobs: {:.3} of the cluster by day (09:00-21:00), {:.3} by night; with the gangs, {:.3} over the whole trace.\n",
            day, night, overall
        );
        let _ = writeln!(
            md,
            "**Warm start.** The trace opens with the jobs a steady state at the small teams' average load would be running ({:.0} GPUs): user `warm-start`, submitted at 0 s, each with the time left of a job found running at a random instant (its length drawn length-biased, the time left uniform in it) and the time limit its whole length would have left. They start at once and count in the report with a wait of 0.\n",
            self.warm_gpus()
        );
        let _ = writeln!(md, "## Realised\n\n{}", readme::realised_teams(w));
        let _ = writeln!(md, "{}", readme::replay(w, &self.command(seed)));
        md
    }
}

/// `12 h, 24 h, ..., 156 h` (all of them up to six, else the first three and the last).
fn gang_list(times: &[u64]) -> String {
    let h = |t: &u64| format!("{} h", t / 3_600);
    if times.len() <= 6 {
        times.iter().map(h).collect::<Vec<_>>().join(", ")
    } else {
        format!(
            "{}, ..., {}: {} gangs",
            times[..3].iter().map(h).collect::<Vec<_>>().join(", "),
            h(times.last().expect("more than six")),
            times.len()
        )
    }
}
