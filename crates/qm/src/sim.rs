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
}

pub fn run(cmd: SimCommand) -> Result<(), Box<dyn Error>> {
    match cmd {
        SimCommand::Run(args) => run_trace(&args),
        SimCommand::Pack(args) => run_pack(&args),
    }
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
    let trace = trace::load(&args.trace, format)?;
    let teams = teamspec::from_arg(&args.teams, &trace.jobs, cluster.gpus())?;
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
    let mut runs = Vec::new();
    let seeds = perturb_seeds(args.seed, args.perturb);
    // Replay 0 (the trace's order) of every policy, then replay 1 of every policy, and so on.
    for (k, seed) in std::iter::once(None)
        .chain(seeds.iter().copied().map(Some))
        .enumerate()
    {
        for &policy in &policies {
            let mut o = SimOptions::new(policy);
            o.grace_s = args.grace_s;
            o.min_run_s = args.min_run_s;
            if let Some(n) = args.max_reservations {
                o.max_reservations = n;
            }
            o.split_to_nodes = matches!(format, Format::Philly | Format::Tiresias);
            o.perturb_seed = seed;
            let label = match k {
                0 => policy.name().to_string(),
                k => format!("{} #{k}", policy.name()),
            };
            runs.push((label, o));
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut results = replay_all(&trace.jobs, &cluster, &teams, &runs, threads)?.into_iter();
    let plain: Vec<SimResult> = results.by_ref().take(policies.len()).collect();
    let mut replays: Vec<Vec<SimResult>> = Vec::new();
    while results.len() > 0 {
        replays.push(results.by_ref().take(policies.len()).collect());
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
        policies: plain.iter().map(report::summarize).collect(),
        team_comparisons: report::team_comparisons(&plain),
        perturbed: (!replays.is_empty()).then(|| report::perturbed(&seeds, &replays)),
    };
    report::write(&args.out, &report, &plain)?;
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
