//! `shapes`: teams whose jobs have different shapes, in a mid-size cluster.
//!
//! The cluster is `NODESxGPUS` (default 48x8, 384 GPUs). Five teams, each with the shape of
//! work a real team has:
//!
//! - `dense`: 4- and 8-GPU training jobs (half a node, a whole node), guaranteed only
//!   `dense_nodes` whole nodes (default 2): a partition of its own would serve it well. A
//!   guarantee of 16 GPUs is worth something to it only if it comes back as two whole nodes.
//! - `gangs`: occasional multi-node gangs of 2 to 4 whole nodes (16 to 32 GPUs), guaranteed
//!   4 nodes.
//! - `research`, `tuning`, `eval`: 1-GPU jobs with the large guarantees (the rest of the
//!   nodes, 5:3:2): single experiments with Philly's heavy tail, hyperparameter sweeps that
//!   submit dozens of alike jobs at once, and evaluation batches of short jobs.
//!
//! Every team submits as a Poisson process modulated by the hour of day ([`DIURNAL`]), the
//! weekend (Saturday and Sunday at 60 %) and its own bursts and quiet periods (a three-state
//! Markov chain over hours). The whole trace offers `load` of the cluster (default 0.8), each
//! team in proportion to its guarantee times its demand factor: on average every team asks
//! for less than its guarantee, so a partition of its own would serve it, and more in its
//! bursts, when it borrows.

use std::fmt::Write as _;

use super::dist::{Hist, Profile, Weighted, DIURNAL};
use super::readme;
use super::{finish, offered_by_hour, split, warm_start, Draft, GenTeam, Stream, Workload};
use crate::cluster::SpecError;
use crate::rng::Rng;

/// The scenario's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Shapes {
    pub nodes: u32,
    /// Even, so that half a node is a whole number of GPUs.
    pub gpus_per_node: u32,
    pub days: u32,
    /// Offered load over the whole trace, as a fraction of the cluster's GPUs.
    pub load: f64,
    /// The `dense` team's guarantee, whole nodes.
    pub dense_nodes: u32,
}

const MIN: u64 = 60;
const HOUR: u64 = 3_600;

/// The `gangs` team's guarantee, whole nodes.
const GANG_NODES: u32 = 4;

/// Each team's demand as a percentage of its guarantee, before all are scaled together to the
/// load (at the default load, 0.8, the scale is 0.995).
const DEMAND: [(&str, u32); 5] = [
    ("dense", 65),
    ("gangs", 60),
    ("research", 90),
    ("tuning", 80),
    ("eval", 70),
];

/// How the 1-GPU teams split the nodes left after `dense` and `gangs`.
const ONE_GPU_GUARANTEES: [u32; 3] = [5, 3, 2];

/// Bursts and quiet periods: the hourly multiplier of each state and the chance per hour,
/// out of 100, of moving to each state.
const STATES: [(&str, f64, [u32; 3]); 3] = [
    ("quiet", 0.2, [90, 10, 0]),
    ("normal", 1.0, [4, 92, 4]),
    ("burst", 3.0, [0, 25, 75]),
];

/// Saturday and Sunday (days 5 and 6 of each week; day 0 is a Monday) offer this fraction.
const WEEKEND: f64 = 0.6;

impl Shapes {
    pub const DEFAULT: Shapes = Shapes {
        nodes: 48,
        gpus_per_node: 8,
        days: 14,
        load: 0.8,
        dense_nodes: 2,
    };

    fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    fn check(&self) -> Result<(), SpecError> {
        let bad = |what: String| Err(SpecError(format!("shapes: {what}")));
        if self.gpus_per_node < 2
            || self.gpus_per_node > 64
            || !self.gpus_per_node.is_multiple_of(2)
        {
            return bad(format!(
                "expected an even --gpus-per-node from 2 to 64, found {}",
                self.gpus_per_node
            ));
        }
        let fixed = self.dense_nodes + GANG_NODES;
        if self.dense_nodes == 0 || fixed + 3 > self.nodes {
            return bad(format!(
                "expected --dense-nodes of at least 1 and room for it, the gangs' {GANG_NODES} nodes and a node for each 1-GPU team, found {} nodes and --dense-nodes {}",
                self.nodes, self.dense_nodes
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
        Ok(())
    }

    fn teams(&self) -> Vec<GenTeam> {
        let left = self.nodes - self.dense_nodes - GANG_NODES;
        let one_gpu = split(left, &ONE_GPU_GUARANTEES);
        let nodes = [
            self.dense_nodes,
            GANG_NODES,
            one_gpu[0],
            one_gpu[1],
            one_gpu[2],
        ];
        DEMAND
            .iter()
            .zip(nodes)
            .map(|((name, _), n)| GenTeam {
                name: name.to_string(),
                guaranteed: n * self.gpus_per_node,
            })
            .collect()
    }

    fn streams(&self) -> Vec<Stream> {
        let node = self.gpus_per_node;
        let dense = Stream::single(
            "dense",
            &[((1, node), 60), ((1, node / 2), 40)],
            Hist::new(&[
                (20 * MIN, HOUR, 15),
                (HOUR, 2 * HOUR, 20),
                (2 * HOUR, 4 * HOUR, 25),
                (4 * HOUR, 8 * HOUR, 20),
                (8 * HOUR, 16 * HOUR, 12),
                (16 * HOUR, 32 * HOUR, 8),
            ]),
        );
        let gangs = Stream::single(
            "gangs",
            &[((2, node), 50), ((3, node), 20), ((4, node), 30)],
            Hist::new(&[
                (2 * HOUR, 4 * HOUR, 25),
                (4 * HOUR, 8 * HOUR, 35),
                (8 * HOUR, 16 * HOUR, 25),
                (16 * HOUR, 24 * HOUR, 15),
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
        let tuning = Stream {
            team: "tuning".into(),
            shapes: Weighted::new(&[((1, 1), 1)]),
            durations: Hist::new(&[
                (10 * MIN, 30 * MIN, 15),
                (30 * MIN, HOUR, 25),
                (HOUR, 2 * HOUR, 25),
                (2 * HOUR, 4 * HOUR, 20),
                (4 * HOUR, 8 * HOUR, 15),
            ]),
            batch: Weighted::new(&[((1, 1), 20), ((4, 16), 40), ((16, 48), 30), ((48, 96), 10)]),
            batch_spread_s: 10 * MIN,
        };
        let eval = Stream {
            team: "eval".into(),
            shapes: Weighted::new(&[((1, 1), 1)]),
            durations: Hist::new(&[
                (5 * MIN, 30 * MIN, 40),
                (30 * MIN, HOUR, 30),
                (HOUR, 2 * HOUR, 20),
                (2 * HOUR, 4 * HOUR, 10),
            ]),
            batch: Weighted::new(&[((1, 4), 50), ((8, 32), 50)]),
            batch_spread_s: 5 * MIN,
        };
        vec![dense, gangs, research, tuning, eval]
    }

    /// Each hour's intensity for one team (mean 1 over the trace): day, weekend, and the
    /// team's own bursts and quiet periods. Returns the intensities and the hours spent in
    /// each state.
    fn intensity(&self, rng: &mut Rng) -> (Vec<f64>, [usize; 3]) {
        let hours = self.days as usize * 24;
        let moves: Vec<Weighted<usize>> = STATES
            .iter()
            .map(|(_, _, to)| {
                let items: Vec<(usize, u32)> = to.iter().copied().enumerate().collect();
                Weighted::new(&items)
            })
            .collect();
        let mut state = 1;
        let mut spent = [0; 3];
        let mut raw = Vec::with_capacity(hours);
        for h in 0..hours {
            spent[state] += 1;
            let weekend = if (h / 24) % 7 >= 5 { WEEKEND } else { 1.0 };
            raw.push(f64::from(DIURNAL[h % 24]) * weekend * STATES[state].1);
            state = moves[state].pick(rng);
        }
        let mean = raw.iter().sum::<f64>() / hours as f64;
        (raw.iter().map(|x| x / mean).collect(), spent)
    }

    /// Draws the workload.
    pub fn generate(&self, seed: u64) -> Result<Workload, SpecError> {
        self.check()?;
        let mut rng = Rng::new(seed);
        let teams = self.teams();
        let streams = self.streams();
        let shares = shares(&teams);
        let load_gpus = self.load * self.gpus() as f64;
        let mut drafts: Vec<Draft> = warm_start(
            &mut rng,
            &streams,
            &shares,
            load_gpus.min(self.gpus() as f64) as u64,
        );
        let mut states = Vec::new();
        for (stream, share) in streams.iter().zip(&shares) {
            let (intensity, spent) = self.intensity(&mut rng);
            states.push(spent);
            let gpu_s = load_gpus * share * intensity.len() as f64 * 3_600.0;
            stream.fill(&mut rng, gpu_s, &Profile::new(&intensity), &mut drafts);
        }
        let mut workload = Workload {
            scenario: "shapes",
            cluster: format!("{}x{}", self.nodes, self.gpus_per_node),
            policies: "default,static",
            idle_policies: None,
            jobs: finish(drafts),
            teams,
            readme: String::new(),
        };
        workload.readme = self.readme(seed, &workload, &streams, &states);
        Ok(workload)
    }

    /// The command that generates this workload.
    pub fn command(&self, seed: u64) -> String {
        format!(
            "qm sim gen shapes --seed {seed} --nodes {} --gpus-per-node {} --days {} --load {} --dense-nodes {} --out DIR",
            self.nodes, self.gpus_per_node, self.days, self.load, self.dense_nodes
        )
    }

    fn readme(&self, seed: u64, w: &Workload, streams: &[Stream], states: &[[usize; 3]]) -> String {
        let gpus = self.gpus();
        let hours = self.days as usize * 24;
        let mut md = String::new();
        let _ = writeln!(md, "# Generated workload: `shapes`, seed {seed}\n");
        let _ = writeln!(
            md,
            "Five teams with the job shapes real teams have share a {}-GPU cluster: one runs half-node and whole-node jobs on a guarantee of {} whole nodes, one runs occasional multi-node gangs, three run 1-GPU jobs on the large guarantees. The question for the pool: does each team do at least as well as in a partition of its own guarantee, shape included? A guarantee of {} GPUs is worth little to `dense` if it comes back as scattered GPUs. Replay under `default` and `static` (each team confined to whole nodes in proportion to its guarantee) and compare each team's mean wait.\n",
            gpus,
            self.dense_nodes,
            self.dense_nodes * self.gpus_per_node
        );
        let _ = writeln!(md, "## Parameters\n");
        let _ = writeln!(md, "| parameter | value |\n|---|---|");
        let _ = writeln!(md, "| `--seed` | {seed} |");
        let _ = writeln!(
            md,
            "| `--nodes` x `--gpus-per-node` | {} x {} = {} GPUs, racks of 16 nodes (cluster `{}`) |",
            self.nodes, self.gpus_per_node, gpus, w.cluster
        );
        let _ = writeln!(md, "| `--days` | {} (day 0 is a Monday) |", self.days);
        let _ = writeln!(
            md,
            "| `--load` | {} (offered over the whole trace) |",
            self.load
        );
        let _ = writeln!(md, "| `--dense-nodes` | {} |\n", self.dense_nodes);
        let _ = writeln!(md, "## Teams and their jobs\n");
        let _ = writeln!(
            md,
            "Guarantees are whole nodes: `dense` {} and `gangs` {GANG_NODES}, the rest split 5:3:2 among the 1-GPU teams. Every job is preemptible and gets the power-of-two time limit (its duration rounded up to 1, 2, 4, 8, ... hours), written in the trace.\n",
            self.dense_nodes
        );
        let _ = writeln!(
            md,
            "| team | guaranteed GPUs | demand / guarantee (before scaling) | share of the offered load | mean offered GPUs | job shapes | jobs per submission |\n|---|---|---|---|---|---|---|"
        );
        let shares = shares(&w.teams);
        for (((t, s), (_, factor)), share) in w.teams.iter().zip(streams).zip(DEMAND).zip(&shares) {
            let batch: Vec<String> = s
                .batch
                .shares()
                .map(|((lo, hi), p)| {
                    let what = if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    };
                    format!("{what} {:.0} %", 100.0 * p)
                })
                .collect();
            let batch = if batch.len() == 1 {
                "1".to_string()
            } else {
                batch.join(", ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} % | {:.1} % | {:.1} | {} | {} |",
                t.name,
                t.guaranteed,
                factor,
                100.0 * share,
                self.load * gpus as f64 * share,
                readme::shapes(s),
                batch
            );
        }
        let _ = writeln!(
            md,
            "\nWhy these shapes and demands: `dense` is the team a partition serves well and a careless pool serves badly (its jobs need whole nodes and its guarantee is small); `gangs` needs several whole nodes at once, now and then; the 1-GPU teams hold most of the guarantees and, in bursts, borrow everything they can, which fragments nodes. On average every team asks for less than its guarantee (the demand factors, scaled together to `--load`), as guarantees sized for a team's usual work are, so a partition of its own would serve it; in its bursts (three times the rate) a team asks for more and borrows. The jobs of one sweep (`tuning`) or evaluation batch (`eval`) go in within minutes of each other ({} and {} minutes), alike: each runs within ±20 % of one duration drawn for the batch.\n",
            streams[3].batch_spread_s / 60,
            streams[4].batch_spread_s / 60
        );
        for s in streams {
            let _ = writeln!(
                md,
                "**{}** durations:\n\n{}",
                s.team,
                readme::hist_table(&s.durations)
            );
        }
        let _ = writeln!(
            md,
            "`research` has Philly's shape (the Pollux copy of the job table: median 19 min, mean 3.6 h, 40 % of jobs under 10 min, 84 % of GPU time in jobs over a day), cut at 3 days; the others are this scenario's choices for training runs, gangs, sweeps and evaluations.\n"
        );
        let _ = writeln!(md, "## Arrivals and load\n");
        let _ = writeln!(
            md,
            "Each team submits as a Poisson process whose rate changes every hour: the working day below (percent of the daytime plateau), weekends at {:.0} %, and the team's own bursts and quiet periods, a Markov chain over hours:\n",
            100.0 * WEEKEND
        );
        let _ = writeln!(md, "{}", readme::diurnal_table());
        let _ = writeln!(
            md,
            "| state | rate x | next hour: quiet | normal | burst |\n|---|---|---|---|---|"
        );
        for (name, x, to) in STATES {
            let _ = writeln!(
                md,
                "| {name} | {x} | {} % | {} % | {} % |",
                to[0], to[1], to[2]
            );
        }
        let _ = writeln!(
            md,
            "\nBursts last 4 hours on average, quiet periods 10, normal stretches 12.5; in the long run a team spends 64 % of its hours normal, 10 % in bursts and 26 % quiet. Each team draws submissions until their GPU-time (GPUs x duration, summed) is its share of `--load` x {gpus} GPUs over the trace (the last submission kept if that comes closer), then gives them the times of its Poisson process given their number: each independently, an hour with probability proportional to its rate, a second uniform in it. So each team offers what was asked, not what its bursts and heavy tail happened to give.\n"
        );
        let _ = writeln!(
            md,
            "| team | hours quiet | normal | burst | realised offered load (of the cluster) |\n|---|---|---|---|---|"
        );
        let mut total = 0.0;
        for (t, spent) in w.teams.iter().zip(states) {
            let mine: Vec<_> = w
                .jobs
                .iter()
                .filter(|j| j.team == t.name)
                .cloned()
                .collect();
            let load = super::mean_over_hours(&offered_by_hour(&mine, gpus, hours), |_| true);
            total += load;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} |",
                t.name, spent[0], spent[1], spent[2], load
            );
        }
        let _ = writeln!(md, "| all | | | | {total:.3} |\n");
        let _ = writeln!(
            md,
            "**Warm start.** The trace opens with the jobs a steady state at `--load` would be running ({:.0} GPUs), in the teams' shares: user `warm-start`, submitted at 0 s, each with the time left of a job found running at a random instant (its length drawn length-biased, the time left uniform in it) and the time limit its whole length would have left. They start at once and count in the report with a wait of 0 (under `static`, those that do not fit their team's partition wait).\n",
            (self.load * gpus as f64).min(gpus as f64)
        );
        let _ = writeln!(md, "## Realised\n\n{}", readme::realised_teams(w));
        let _ = writeln!(md, "{}", readme::replay(w, &self.command(seed)));
        md
    }
}

/// Each team's share of the offered load: its guarantee times its demand factor, normalised.
fn shares(teams: &[GenTeam]) -> Vec<f64> {
    let weights: Vec<f64> = teams
        .iter()
        .zip(DEMAND)
        .map(|(t, (_, factor))| f64::from(t.guaranteed) * f64::from(factor))
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}
