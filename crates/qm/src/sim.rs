//! `qm sim …`: replay traces through the scheduling core and compare policies.

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::{Args, Subcommand};
use qm_core::PolicyKind;
use qm_sim::cluster::ClusterSpec;
use qm_sim::gen::big_gang::BigGang;
use qm_sim::gen::hoarding::Hoarding;
use qm_sim::gen::resample::Resample;
use qm_sim::gen::shapes::Shapes;
use qm_sim::gen::Workload;
use qm_sim::pack::{self, PackInput, PackMeta, PackPolicy};
use qm_sim::report::{self, Report};
use qm_sim::sim::{perturb_seeds, simulate, SimOptions, SimResult};
use qm_sim::teamspec;
use qm_sim::trace::{self, Format, TraceJob};

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Replay a job trace under one or more policies and write a comparison report.
    Run(RunArgs),
    /// Reproduce the FGD packing protocol on a node list and a pod list (such as Alibaba's
    /// openb): GPU allocation against arrived demand, per placement policy, mean over seeds.
    Pack(PackArgs),
    /// Write a seeded synthetic workload for `qm sim run`: trace.csv, teams.toml and a
    /// README.md with the parameters, the distributions and the command that replays it.
    Gen {
        #[command(subcommand)]
        scenario: GenScenario,
    },
    /// The control plane under seeded faults (server and agent crashes; lost, delayed,
    /// reordered and duplicated messages; nodes cut off), invariants checked after every
    /// step: one seed with its trace, or a range of seeds.
    Faults(FaultsArgs),
}

#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// One seed, replayed with its whole trace.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Seeds FROM-TO (inclusive) to sweep on every core, e.g. 0-9999.
    #[arg(long, default_value = "0-999")]
    seeds: String,
    #[arg(long, default_value_t = 3)]
    agents: u32,
    #[arg(long, default_value_t = 4)]
    gpus_per_node: u32,
    /// Jobs submitted during the faults.
    #[arg(long, default_value_t = 12)]
    jobs: u32,
    /// Seconds of faults; every job must end in the 600 s after them.
    #[arg(long, default_value_t = 120)]
    fault_s: u64,
}

/// The workloads `qm sim gen` writes.
#[derive(Subcommand, Debug)]
pub enum GenScenario {
    /// One team guaranteed 2,048 GPUs submits a 2,048-GPU gang every 12 hours; eight teams
    /// keep the rest of a 16,384-GPU cluster (and the gang's share between gangs) busy with
    /// small jobs at a daily rhythm.
    BigGang(BigGangArgs),
    /// Teams of different job shapes on a 384-GPU cluster: half-node and whole-node jobs on a
    /// two-node guarantee, multi-node gangs, and 1-GPU teams in bursts and sweeps.
    Shapes(ShapesArgs),
    /// A trace's own jobs (any format `qm sim run` reads), resampled with replacement onto
    /// another cluster at another load, with arrivals in the trace's weekly pattern.
    PhillyResample(ResampleArgs),
    /// Jobs that hold GPUs idle after their work and a team that keeps placeholders, on a
    /// 512-GPU cluster where work waits: what each idle policy gives back.
    Hoarding(HoardingArgs),
}

#[derive(Args, Debug)]
pub struct HoardingArgs {
    #[command(flatten)]
    common: GenCommon,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = Hoarding::DEFAULT.nodes)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = Hoarding::DEFAULT.gpus_per_node)]
    gpus_per_node: u32,
    /// Days of submissions.
    #[arg(long, default_value_t = Hoarding::DEFAULT.days)]
    days: u32,
    /// Working GPU-time offered over the whole trace, as a fraction of the cluster (idle
    /// holds and placeholders come on top).
    #[arg(long, default_value_t = Hoarding::DEFAULT.load)]
    load: f64,
    /// The share of jobs that keep their GPUs idle for hours after their work is done.
    #[arg(long, default_value_t = Hoarding::DEFAULT.idle_share)]
    idle_share: f64,
    /// Whole nodes of do-nothing placeholder jobs the `hoard` team keeps, renewed daily.
    #[arg(long, default_value_t = Hoarding::DEFAULT.placeholder_nodes)]
    placeholder_nodes: u32,
}

#[derive(Args, Debug)]
pub struct GenCommon {
    /// Directory for trace.csv, teams.toml and README.md (created if absent).
    #[arg(long)]
    out: PathBuf,
    /// The seed: the same seed and parameters write the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct BigGangArgs {
    #[command(flatten)]
    common: GenCommon,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = BigGang::DEFAULT.nodes)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = BigGang::DEFAULT.gpus_per_node)]
    gpus_per_node: u32,
    /// Days of submissions.
    #[arg(long, default_value_t = BigGang::DEFAULT.days)]
    days: u32,
    /// Hours between two gangs (the first at this hour).
    #[arg(long, default_value_t = BigGang::DEFAULT.gang_every_h)]
    gang_every_h: u32,
    /// GPUs of the gang, a multiple of --gpus-per-node; also its team's guarantee.
    #[arg(long, default_value_t = BigGang::DEFAULT.gang_gpus)]
    gang_gpus: u32,
    /// Offered load by day (09:00-21:00), gangs included, as a fraction of the cluster.
    #[arg(long, default_value_t = BigGang::DEFAULT.load)]
    load: f64,
    /// Multiplies the small jobs' durations: below 1, more and shorter jobs, and a replay that
    /// costs about 1 / scale times more.
    #[arg(long, default_value_t = BigGang::DEFAULT.duration_scale)]
    duration_scale: f64,
}

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The node list (`sn,cpu_milli,memory_mib,gpu,model`).
    #[arg(long)]
    nodes: PathBuf,
    /// The pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec]`).
    #[arg(long)]
    pods: PathBuf,
    /// Pods arrive until their GPU demand is this multiple of the cluster's GPUs.
    #[arg(long, default_value_t = 1.3)]
    demand: f64,
    /// Seeds, as a range (42-51) or a list (42,43).
    #[arg(long, default_value = "42-51")]
    seeds: String,
    /// Comma-separated policies: random, dotprod, gpuclustering, gpupacking, bestfit, fgd,
    /// quartermaster.
    #[arg(long, default_value = "random,bestfit,gpupacking,fgd,quartermaster")]
    policy: String,
    /// Directory for report.json, report.md and alloc.svg.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ShapesArgs {
    #[command(flatten)]
    common: GenCommon,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = Shapes::DEFAULT.nodes)]
    nodes: u32,
    /// GPUs per node (even).
    #[arg(long, default_value_t = Shapes::DEFAULT.gpus_per_node)]
    gpus_per_node: u32,
    /// Days of submissions.
    #[arg(long, default_value_t = Shapes::DEFAULT.days)]
    days: u32,
    /// Offered load over the whole trace, as a fraction of the cluster.
    #[arg(long, default_value_t = Shapes::DEFAULT.load)]
    load: f64,
    /// The guarantee of the team of half-node and whole-node jobs, in whole nodes.
    #[arg(long, default_value_t = Shapes::DEFAULT.dense_nodes)]
    dense_nodes: u32,
}

#[derive(Args, Debug)]
pub struct ResampleArgs {
    #[command(flatten)]
    common: GenCommon,
    /// The trace whose jobs are resampled, such as the Philly job table.
    #[arg(long)]
    from: PathBuf,
    /// Its format: csv, philly, openb or tiresias; guessed from the header (then the file
    /// name) when absent.
    #[arg(long)]
    format: Option<String>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = Resample::DEFAULT.nodes)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = Resample::DEFAULT.gpus_per_node)]
    gpus_per_node: u32,
    /// Days of submissions.
    #[arg(long, default_value_t = Resample::DEFAULT.days)]
    days: u32,
    /// Offered load over the whole trace, as a fraction of the cluster.
    #[arg(long, default_value_t = Resample::DEFAULT.load)]
    load: f64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The trace file.
    #[arg(long)]
    trace: PathBuf,
    /// csv, philly, openb or tiresias; guessed from the header (then the file name) when absent.
    #[arg(long)]
    format: Option<String>,
    /// A TOML cluster spec, a shorthand such as 64x8 or 32x8@A100,16x4@T4, or a node list
    /// (`*.csv`: `sn,cpu_milli,memory_mib,gpu,model`, as in Alibaba openb).
    #[arg(long)]
    cluster: String,
    /// A TOML team tree, or `auto` (guarantees proportional to each team's GPU-time demand).
    #[arg(long, default_value = "auto")]
    teams: String,
    /// Comma-separated policies to compare.
    #[arg(long, default_value = "default,fifo,static")]
    policy: String,
    /// Directory for report.json, report.md and the SVG charts.
    #[arg(long)]
    out: PathBuf,
    /// Seeds the perturbed replays' permutations (`--perturb`); recorded in the report. The
    /// replay in the trace's order draws no random numbers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also replay each policy K times with ties broken another way (the trace's job ids dealt
    /// by a seeded permutation, equivalent racks renumbered), and report each figure's mean
    /// and standard deviation over those K replays. 0: none.
    #[arg(long, value_name = "K", default_value_t = 0)]
    perturb: usize,
    /// Replays run at once [default: the machine's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Grace period between SIGTERM and SIGKILL for preempted jobs, seconds.
    #[arg(long, default_value_t = 30)]
    grace_s: u64,
    /// No job is preempted before it has run this long, seconds.
    #[arg(long, default_value_t = 300)]
    min_run_s: u64,
    /// Blocked jobs that get a reservation in each plan [default: the scheduler's, 4].
    #[arg(long)]
    max_reservations: Option<usize>,
    /// What if every job wrote a checkpoint every N seconds of its run: a preempted job then
    /// resumes from its last checkpoint rather than from the beginning, and the scheduler
    /// knows it (it counts only the work since the last checkpoint as lost). Recorded in the
    /// report. [default: none; trace jobs restart from the beginning]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every_s: Option<u64>,
    /// Replay each policy once per idle policy given (comma-separated: warn, yield, release
    /// or release:SECONDS), each set for every team whatever the teams file says; the report
    /// names each replay POLICY/IDLE. [default: the teams' own]
    #[arg(long, value_name = "LIST")]
    idle_policy: Option<String>,
    /// Give every job without a utilisation one (as `qm sim gen hoarding` draws them), and
    /// this share of them an idle hold of half an hour to two days after their work, seeded
    /// by --seed: any trace, as if its jobs held GPUs idle. Recorded in the report.
    #[arg(long, value_name = "SHARE")]
    add_idle: Option<f64>,
    /// Seconds a job's GPUs stay below the idle threshold before it counts as idle (the
    /// server's --idle-window-s).
    #[arg(long, default_value_t = qm_core::SchedulerConfig::default().idle_window_s)]
    idle_window_s: u64,
    /// What if jobs waiting longer than this many seconds went first, by age alone (strict
    /// first come, first served among them) instead of by their teams' fair-share standing?
    /// Recorded in the report. [default: none, as the scheduler]
    #[arg(long, value_name = "SECONDS")]
    starvation_wait_s: Option<u64>,
    /// Tell the story of one job (its id in the trace) in each replay in the trace's order:
    /// why it waited, at every plan where that changed, and when it started, was stopped
    /// and ended. Written to explain-job-ID.md beside the report.
    #[arg(long, value_name = "ID")]
    explain_job: Option<u64>,
}

pub fn run(cmd: SimCommand) -> Result<(), Box<dyn Error>> {
    match cmd {
        SimCommand::Run(args) => run_trace(&args),
        SimCommand::Pack(args) => run_pack(&args),
        SimCommand::Gen { scenario } => run_gen(&scenario),
        SimCommand::Faults(args) => run_faults(&args),
    }
}

fn run_faults(a: &FaultsArgs) -> Result<(), Box<dyn Error>> {
    use qm_server::faults;
    let opts = faults::Options {
        agents: a.agents.max(1),
        gpus_per_node: a.gpus_per_node.max(1),
        jobs: a.jobs,
        fault_ms: a.fault_s * 1000,
        ..faults::Options::default()
    };
    if let Some(seed) = a.seed {
        let o = faults::run(
            seed,
            &faults::Options {
                trace: true,
                ..opts
            },
        );
        for line in &o.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} jobs accepted, {} succeeded; {} server crashes, {} agent crashes, {} nodes cut off",
            o.accepted, o.succeeded, o.server_crashes, o.agent_crashes, o.partitions
        );
        return match o.failure {
            None => {
                println!("every invariant held");
                Ok(())
            }
            Some(f) => Err(format!("seed {seed}: invariant broken {f}").into()),
        };
    }
    let (from, to) = a
        .seeds
        .split_once('-')
        .and_then(|(f, t)| Some((f.trim().parse::<u64>().ok()?, t.trim().parse::<u64>().ok()?)))
        .filter(|(f, t)| f <= t)
        .ok_or_else(|| format!("bad --seeds {:?}; expected FROM-TO, e.g. 0-9999", a.seeds))?;
    let t0 = Instant::now();
    // In chunks, saying how far it got: a long run takes minutes.
    let (mut ran, mut failures) = (0, Vec::new());
    let mut at = from;
    while at <= to {
        let end = (at + 1_000).min(to + 1);
        let (n, mut f) = faults::sweep(at, end, &opts, 20);
        ran += n;
        failures.append(&mut f);
        at = end;
        if at <= to {
            eprintln!(
                "qm sim faults: {ran} seeds in {:.0} s, {} failed so far",
                t0.elapsed().as_secs_f64(),
                failures.len()
            );
        }
    }
    failures.truncate(20);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{ran} seeds in {secs:.1} s ({:.0} seeds/s): {} failed",
        ran as f64 / secs.max(1e-9),
        failures.len()
    );
    for f in &failures {
        println!(
            "  seed {}: {} (replay: qm sim faults --seed {})",
            f.seed,
            f.failure.as_deref().unwrap_or(""),
            f.seed
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} seeds broke an invariant", failures.len()).into())
    }
}

fn run_gen(scenario: &GenScenario) -> Result<(), Box<dyn Error>> {
    let (common, workload): (&GenCommon, Workload) = match scenario {
        GenScenario::BigGang(a) => (
            &a.common,
            BigGang {
                nodes: a.nodes,
                gpus_per_node: a.gpus_per_node,
                days: a.days,
                gang_every_h: a.gang_every_h,
                gang_gpus: a.gang_gpus,
                load: a.load,
                duration_scale: a.duration_scale,
            }
            .generate(a.common.seed)?,
        ),
        GenScenario::Shapes(a) => (
            &a.common,
            Shapes {
                nodes: a.nodes,
                gpus_per_node: a.gpus_per_node,
                days: a.days,
                load: a.load,
                dense_nodes: a.dense_nodes,
            }
            .generate(a.common.seed)?,
        ),
        GenScenario::Hoarding(a) => (
            &a.common,
            Hoarding {
                nodes: a.nodes,
                gpus_per_node: a.gpus_per_node,
                days: a.days,
                load: a.load,
                idle_share: a.idle_share,
                placeholder_nodes: a.placeholder_nodes,
            }
            .generate(a.common.seed)?,
        ),
        GenScenario::PhillyResample(a) => {
            let format = match &a.format {
                Some(f) => f.parse::<Format>()?,
                None => trace::sniff(&a.from),
            };
            let source = trace::load(&a.from, format)?;
            let params = Resample {
                nodes: a.nodes,
                gpus_per_node: a.gpus_per_node,
                days: a.days,
                load: a.load,
            };
            let name = a.from.display().to_string();
            (&a.common, params.generate(&source, &name, a.common.seed)?)
        }
    };
    workload.write(&common.out)?;
    eprintln!(
        "qm sim gen: {} with seed {}: {} jobs of {} teams on {}, written to {} (see README.md there); replay with:",
        workload.scenario,
        common.seed,
        workload.jobs.len(),
        workload.teams.len(),
        workload.cluster,
        common.out.display()
    );
    println!("{}", workload.replay_command(&common.out));
    Ok(())
}

fn run_trace(args: &RunArgs) -> Result<(), Box<dyn Error>> {
    let format = match &args.format {
        Some(f) => f.parse::<Format>()?,
        None => trace::sniff(&args.trace),
    };
    let policies: Vec<PolicyKind> = args
        .policy
        .split(',')
        .map(|p| p.trim().parse::<PolicyKind>())
        .collect::<Result<_, _>>()?;
    let cluster = ClusterSpec::from_arg(&args.cluster)?;
    let t0 = Instant::now();
    let mut trace = trace::load(&args.trace, format)?;
    let teams = teamspec::from_arg(&args.teams, &trace.jobs, &cluster)?;
    if let Some(share) = args.add_idle {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!(
                "--add-idle {share}: give the share of jobs that hold their GPUs idle after their work, from 0 to 1"
            )
            .into());
        }
        // After the teams: `--teams auto` sizes guarantees by the work, not by idle holds.
        qm_sim::gen::hoarding::add_idle(&mut trace.jobs, share, args.seed);
    }
    eprintln!(
        "qm sim: {} jobs from {} ({} rows skipped) in {:.1} s; cluster {} ({} GPUs); {} teams",
        trace.jobs.len(),
        args.trace.display(),
        trace.skipped.len(),
        t0.elapsed().as_secs_f64(),
        cluster.describe(),
        cluster.gpus(),
        teams.len()
    );
    if let Some(x) = args.explain_job {
        if !trace.jobs.iter().any(|j| j.id == x) {
            let (lo, hi) = trace
                .jobs
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), j| (lo.min(j.id), hi.max(j.id)));
            return Err(format!(
                "--explain-job {x}: the trace has no job with that id (its ids run from {lo} to {hi}: the row number in file order, or the generic CSV's `id` column)"
            )
            .into());
        }
    }
    let idle: Vec<Option<qm_core::IdlePolicy>> = match &args.idle_policy {
        None => vec![None],
        Some(list) => list
            .split(',')
            .map(|p| qm_sim::sim::parse_idle_policy(p).map(Some))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--idle-policy: {e}"))?,
    };
    let mut runs = Vec::new();
    let seeds = perturb_seeds(args.seed, args.perturb);
    // Replay 0 (the trace's order) of every policy, then replay 1 of every policy, and so on.
    for (k, seed) in std::iter::once(None)
        .chain(seeds.iter().copied().map(Some))
        .enumerate()
    {
        for &policy in &policies {
            for &idle_policy in &idle {
                let mut o = SimOptions::new(policy);
                o.grace_s = args.grace_s;
                o.min_run_s = args.min_run_s;
                if let Some(n) = args.max_reservations {
                    o.max_reservations = n;
                }
                o.split_to_nodes = matches!(format, Format::Philly | Format::Tiresias);
                o.perturb_seed = seed;
                o.checkpoint_every_s = args.checkpoint_every_s;
                o.idle_policy = idle_policy;
                o.idle_window_s = args.idle_window_s;
                o.starvation_wait_s = args.starvation_wait_s;
                // The story is told of the replays in the trace's order.
                o.explain_job = args.explain_job.filter(|_| k == 0).map(qm_core::JobId);
                let name = match idle_policy {
                    Some(p) => format!("{}/{}", policy.name(), qm_sim::sim::idle_policy_name(p)),
                    None => policy.name().to_string(),
                };
                let label = match k {
                    0 => name,
                    k => format!("{name} #{k}"),
                };
                runs.push((label, o));
            }
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut results = replay_all(&trace.jobs, &cluster, &teams, &runs, threads)?.into_iter();
    let per_replay = policies.len() * idle.len();
    let plain: Vec<SimResult> = results.by_ref().take(per_replay).collect();
    let mut replays: Vec<Vec<SimResult>> = Vec::new();
    while results.len() > 0 {
        replays.push(results.by_ref().take(per_replay).collect());
    }
    let report = Report {
        trace: args.trace.display().to_string(),
        format: format.to_string(),
        cluster: cluster.describe(),
        gpus: cluster.gpus(),
        teams: args.teams.clone(),
        trace_jobs: trace.jobs.len(),
        trace_skipped: trace.skipped.len(),
        seed: args.seed,
        checkpoint_every_s: args.checkpoint_every_s,
        idle_added: args.add_idle,
        starvation_wait_s: args.starvation_wait_s,
        policies: plain.iter().map(report::summarize).collect(),
        team_comparisons: report::team_comparisons(&plain),
        perturbed: (!replays.is_empty()).then(|| report::perturbed(&seeds, &replays)),
    };
    report::write(&args.out, &report, &plain)?;
    if let Some(x) = args.explain_job {
        let path = args.out.join(format!("explain-job-{x}.md"));
        std::fs::write(&path, explain_md(x, &trace.jobs, &plain))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("qm sim: job {x}'s story written to {}", path.display());
    }
    println!("{}", report::table(&report));
    if let Some(p) = &report.perturbed {
        println!(
            "Over {} perturbed replays (mean ± SD):\n\n{}",
            p.replays,
            report::perturbed_table(p)
        );
    }
    eprintln!(
        "qm sim: report written to {}",
        args.out.join("report.md").display()
    );
    Ok(())
}

/// Job `x`'s story in each replay of `plain` (`--explain-job`), as Markdown.
fn explain_md(x: u64, jobs: &[TraceJob], plain: &[SimResult]) -> String {
    use std::fmt::Write as _;
    let job = jobs
        .iter()
        .find(|j| j.id == x)
        .expect("checked at the start");
    let mut out = format!(
        "# Job {x} of the trace\n\nTeam `{}`, {} task(s) of {}, {} milli-CPU and {} MiB each; submitted at {} s, works {} s.\n",
        job.team,
        job.tasks,
        match job.gpu {
            qm_core::GpuAsk::Whole(k) => format!("{k} GPU(s)"),
            qm_core::GpuAsk::Milli(m) => format!("{:.3} of a GPU", f64::from(m) / 1000.0),
        },
        job.cpu_milli,
        job.mem_mib,
        job.submit_s,
        job.duration_s
    );
    for r in plain {
        let _ = write!(
            out,
            "\n## {}\n\n| at (s) | after submission | what |\n|---|---|---|\n",
            r.label()
        );
        for line in &r.explained {
            let after = line.at_s.saturating_sub(job.submit_s) as f64 / 3600.0;
            let _ = writeln!(out, "| {} | {after:.2} h | {} |", line.at_s, line.what);
        }
    }
    out
}

/// Runs one replay per (label, options) of `runs` on up to `threads` threads; the results in
/// the order of `runs`. The first error, in that order, is the answer.
fn replay_all(
    jobs: &[TraceJob],
    cluster: &ClusterSpec,
    teams: &[qm_core::TeamSpec],
    runs: &[(String, SimOptions)],
    threads: usize,
) -> Result<Vec<SimResult>, Box<dyn Error>> {
    let tty = std::io::stderr().is_terminal();
    let threads = threads.clamp(1, runs.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    // Jobs done in each replay, for the progress bar.
    let done = Mutex::new(vec![0usize; runs.len()]);
    let total = jobs.len() * runs.len();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((label, o)) = runs.get(i) else {
                    break;
                };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let mut progress = |d: usize, _: usize| {
                    if tty {
                        let mut done = done.lock().expect("no panics");
                        done[i] = d;
                        let sum: usize = done.iter().sum();
                        let width = 40;
                        let filled = sum * width / total.max(1);
                        eprint!(
                            "\r  [{}{}] {:>3} % ({sum}/{total} jobs in {} replays)",
                            "#".repeat(filled),
                            " ".repeat(width - filled),
                            sum * 100 / total.max(1),
                            runs.len()
                        );
                        let _ = std::io::stderr().flush();
                    }
                };
                let result = simulate(jobs, cluster, teams, o, &mut progress);
                match &result {
                    Ok(r) => eprintln!(
                        "{}  {:<8} simulated in {:.1} s ({} plans)",
                        if tty { "\r\x1b[2K" } else { "" },
                        label,
                        started.elapsed().as_secs_f64(),
                        r.plans
                    ),
                    Err(_) => failed.store(true, Ordering::Relaxed),
                }
                results.lock().expect("no panics").push((i, result));
            });
        }
    });
    let mut results = results.into_inner().expect("no panics");
    results.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(runs.len());
    for (_, r) in results {
        out.push(r?);
    }
    debug_assert_eq!(out.len(), runs.len());
    Ok(out)
}

fn run_pack(args: &PackArgs) -> Result<(), Box<dyn Error>> {
    let policies: Vec<PackPolicy> = args
        .policy
        .split(',')
        .map(|p| p.trim().parse::<PackPolicy>())
        .collect::<Result<_, _>>()?;
    let seeds = pack::parse_seeds(&args.seeds)?;
    let t0 = Instant::now();
    let nodes = pack::load_nodes(&args.nodes)?;
    let pods = pack::load_pods(&args.pods)?;
    let input = PackInput::new(nodes, pods, args.demand)?;
    eprintln!(
        "qm sim pack: {} pods, {} nodes with {} GPUs, loaded in {:.1} s; demand {} x the GPUs; {} seeds; FGD target workload: {} pod types",
        input.pods.len(),
        input.nodes.len(),
        input.total_milli() / 1000,
        t0.elapsed().as_secs_f64(),
        args.demand,
        seeds.len(),
        input.target_workload().len()
    );
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let progress = |done: usize, total: usize| {
        if tty {
            eprint!("\r  {done}/{total} runs");
            let _ = std::io::stderr().flush();
        }
    };
    let runs = pack::run_all(&input, &policies, &seeds, &progress);
    if tty {
        eprintln!();
    }
    eprintln!(
        "  {} runs in {:.1} s",
        policies.len() * seeds.len(),
        started.elapsed().as_secs_f64()
    );
    let meta = PackMeta {
        nodes_file: args.nodes.display().to_string(),
        pods_file: args.pods.display().to_string(),
        demand: args.demand,
        seeds,
    };
    pack::write_report(&args.out, &meta, &input, &runs)?;
    println!("{}", pack::table(&input, &runs));
    eprintln!(
        "qm sim pack: report written to {}",
        args.out.join("report.md").display()
    );
    Ok(())
}
