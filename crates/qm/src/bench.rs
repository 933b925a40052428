//! `qm bench …`: benchmarks as code, one command each, figures recorded in BENCHMARKS.md.

use std::error::Error;
use std::time::Instant;

use clap::{Args, Subcommand};
use qm_core::{
    apply, plan, ClusterState, Event, GpuAsk, JobId, JobSpec, NodeId, NodeSpec, SchedulerConfig,
    TeamSpec,
};
use qm_sim::rng::Rng;
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time `plan` on a large synthetic cluster (2,048 nodes x 8 GPUs by default).
    Plan(PlanArgs),
    /// End to end with real processes: API submissions per second, and 1,000 jobs on four
    /// agents (optionally beside a real Slurm).
    E2e(crate::e2e::E2eArgs),
    /// Build the dashboard's live snapshot of the `bench plan` cluster (2,048 nodes, 12,000
    /// jobs): time and size.
    Dashboard(DashArgs),
    /// A real server under a whole cluster of simulated agents over HTTP (2,048 nodes by
    /// default), with submissions, queries and dashboard streams: latencies, the server's
    /// CPU and memory, plans and store writes.
    Fleet(crate::fleet::FleetArgs),
    /// A million jobs through a real server (on a few simulated agents whose tasks end at
    /// once): its memory as history grows, then its restart after SIGKILL.
    History(crate::fleet::HistoryArgs),
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Nodes of 8 GPUs, 32 per rack, 8 racks per pod.
    #[arg(long, default_value_t = 2048)]
    nodes: u32,
    /// Teams, with guarantees that add up to the cluster.
    #[arg(long, default_value_t = 20)]
    teams: u32,
    /// Jobs submitted first and placed by the planner, started over the last two hours.
    #[arg(long, default_value_t = 2000)]
    running: u32,
    /// Jobs queued after them (mostly 1 GPU, some 8, some gangs of 16 to 2,048 GPUs).
    #[arg(long, default_value_t = 10_000)]
    pending: u32,
    /// Timed runs of `plan` (after two warm-up runs). The 99th percentile is reported only
    /// from 100 runs up; below that it would be the maximum under another name.
    #[arg(long, default_value_t = 200)]
    runs: u32,
    /// Seed of the generator: the same seed builds the same cluster and queue.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the timed plan as JSON to this file, to compare two builds' decisions.
    #[arg(long, value_name = "FILE")]
    plan_out: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct DashArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Also serve that cluster and render the dashboard in a headless Chromium: time to the
    /// first view, and each page's render time.
    #[arg(long)]
    browser: bool,
    /// Instead of timing: replay a day of that cluster through the scheduling core (its
    /// usage sampled as the server samples it), serve it, and save a screenshot of every
    /// dashboard page into this directory (docs/dashboard in the repository).
    #[arg(long, value_name = "DIR")]
    screenshots: Option<std::path::PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<(), Box<dyn Error>> {
    match cmd {
        BenchCommand::Plan(args) => bench_plan(&args),
        BenchCommand::E2e(args) => crate::e2e::run(args),
        BenchCommand::Dashboard(args) => bench_dashboard(&args),
        BenchCommand::Fleet(args) => crate::fleet::run(args),
        BenchCommand::History(args) => crate::fleet::run_history(args),
    }
}

const GPUS_PER_NODE: u32 = 8;
const NODES_PER_RACK: u32 = 32;
const RACKS_PER_POD: u32 = 8;
const NOW_S: u64 = 7200;

fn job(rng: &mut Rng, id: u64, team: String, tasks: u32, gpus: u32, submit_s: u64) -> JobSpec {
    let limits = [3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600];
    JobSpec {
        id: JobId(id),
        name: format!("job-{id}"),
        team,
        user: format!("user-{}", rng.below_mod(200)),
        priority: if rng.below_mod(20) == 0 { 10 } else { 0 },
        tasks,
        gpu: GpuAsk::Whole(gpus),
        cpu_milli: 4000 * u64::from(gpus),
        mem_mib: 32 * 1024 * u64::from(gpus),
        gpu_model: None,
        node_selector: Default::default(),
        time_limit_s: Some(limits[rng.below_mod(limits.len() as u64) as usize]),
        runtime_estimate_s: None,
        preemptible: rng.below_mod(10) != 0,
        grace_s: 30,
        min_run_s: if rng.below_mod(4) == 0 { 600 } else { 0 },
        checkpoint_every_s: if rng.below_mod(3) == 0 {
            Some(1800)
        } else {
            None
        },
        depends_on: Vec::new(),
        array: None,
        submit_s,
    }
}

/// (tasks, GPUs per task) of a mostly-small mix with some gangs: 85 % 1 GPU, 9 % 8 GPUs,
/// the rest gangs of 16-256 GPUs (16-128 for running jobs), and in the queue one in a
/// thousand a 1,024-2,048-GPU gang.
fn shape(rng: &mut Rng, queued: bool) -> (u32, u32) {
    let roll = rng.below_mod(1000);
    if queued && roll == 0 {
        let tasks = [128, 192, 256][rng.below_mod(3) as usize];
        return (tasks, 8);
    }
    let gang_sizes = if queued { 5 } else { 4 };
    match roll {
        0..=849 => (1, 1),
        850..=939 => (1, 8),
        _ => (2u32 << rng.below_mod(gang_sizes), 8),
    }
}

pub struct Scenario {
    pub state: ClusterState,
    pub running: usize,
    pub pending: usize,
    pub gpus_allocated: u64,
}

/// The benchmark cluster: nodes in racks and pods, teams with guarantees that sum to the
/// cluster, jobs running since various times, and a deep queue.
pub fn scenario(args: &PlanArgs) -> Result<Scenario, Box<dyn Error>> {
    scenario_at(args, 0)
}

/// [`scenario`] with its clock starting at `origin` (Unix seconds) instead of 0: the jobs
/// started over the two hours after it.
fn scenario_at(args: &PlanArgs, origin: u64) -> Result<Scenario, Box<dyn Error>> {
    let mut rng = Rng::new(args.seed);
    let mut state = ClusterState::new(SchedulerConfig::default());
    for i in 0..args.nodes {
        let rack = i / NODES_PER_RACK;
        apply(
            &mut state,
            Event::NodeUp(NodeSpec {
                id: NodeId(i),
                name: format!("node-{i:05}"),
                gpus: GPUS_PER_NODE,
                gpu_model: "H100".into(),
                gpu_mem_mib: 81_920,
                cpu_milli: 128_000,
                mem_mib: 2 * 1024 * 1024,
                labels: Default::default(),
                topology: vec![
                    format!("pod-{}", rack / RACKS_PER_POD),
                    format!("rack-{rack}"),
                ],
            }),
        )?;
    }
    let total = u64::from(args.nodes * GPUS_PER_NODE);
    let weights: Vec<u64> = (0..args.teams).map(|_| 1 + rng.below_mod(10)).collect();
    let wsum: u64 = weights.iter().sum();
    let mut given = 0;
    for (t, w) in weights.iter().enumerate() {
        let g = if t + 1 == weights.len() {
            total - given
        } else {
            total * w / wsum
        };
        given += g;
        apply(
            &mut state,
            Event::SetTeam(TeamSpec::new(&format!("team-{t:02}"), g as u32)),
        )?;
    }
    let team = |rng: &mut Rng| format!("team-{:02}", rng.below_mod(u64::from(args.teams)));
    // Running jobs: submitted at 0, started over the last two hours, placed by the planner.
    // Gangs never ask for more nodes than the cluster has (for small `--nodes`).
    let fit = |(tasks, gpus): (u32, u32)| (tasks.min(args.nodes), gpus);
    for id in 1..=u64::from(args.running) {
        let (tasks, gpus) = fit(shape(&mut rng, false));
        let t = team(&mut rng);
        let spec = job(&mut rng, id, t, tasks, gpus, origin);
        apply(&mut state, Event::Submit(spec))?;
    }
    let initial = plan(&state, origin);
    // Nothing runs yet, so the plan stops nothing: its events are its starts, each given its
    // own start time in the last two hours.
    for mut event in initial.events(origin) {
        if let Event::Start { at_s, .. } = &mut event {
            *at_s = origin + rng.below_mod(NOW_S);
        }
        apply(&mut state, event)?;
    }
    let running = state
        .live_jobs()
        .filter(|j| j.state.run().is_some())
        .count();
    let gpus_allocated = state
        .live_jobs()
        .filter(|j| j.state.run().is_some())
        .map(|j| j.spec.milli_total() / 1000)
        .sum();
    // Pending jobs: the rest of the first batch, then the queue, a few huge gangs in it.
    let first = u64::from(args.running) + 1;
    for id in first..first + u64::from(args.pending) {
        let (tasks, gpus) = fit(shape(&mut rng, true));
        let t = team(&mut rng);
        let submit_s = origin + rng.below_mod(NOW_S);
        let spec = job(&mut rng, id, t, tasks, gpus, submit_s);
        apply(&mut state, Event::Submit(spec))?;
    }
    let pending = state
        .live_jobs()
        .filter(|j| j.state.run().is_none())
        .count();
    Ok(Scenario {
        state,
        running,
        pending,
        gpus_allocated,
    })
}

#[derive(Serialize)]
struct PlanReport {
    nodes: u32,
    gpus: u32,
    racks: u32,
    teams: u32,
    running: usize,
    pending: usize,
    gpus_allocated: u64,
    runs: u32,
    plan_ms_median: f64,
    /// `None` below 100 runs, where a 99th percentile cannot be told from the maximum.
    plan_ms_p99: Option<f64>,
    plan_ms_min: f64,
    plan_ms_max: f64,
    state_mib: f64,
    plan_starts: usize,
    plan_stops: usize,
    plan_reservations: usize,
    plan_pending: usize,
}

fn bench_plan(args: &PlanArgs) -> Result<(), Box<dyn Error>> {
    if args.runs == 0 || args.nodes == 0 || args.teams == 0 {
        return Err("--runs, --nodes and --teams must each be at least 1".into());
    }
    let before = crate::alloc::live_bytes();
    let sc = scenario(args)?;
    let state_bytes = crate::alloc::live_bytes().saturating_sub(before);
    let mut last = plan(&sc.state, NOW_S);
    let _ = plan(&sc.state, NOW_S);
    let mut ms = Vec::with_capacity(args.runs as usize);
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let p = plan(&sc.state, NOW_S);
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if p != last {
            return Err("plan is not deterministic: two runs on one state differ".into());
        }
        last = p;
    }
    if let Some(path) = &args.plan_out {
        std::fs::write(path, serde_json::to_vec_pretty(&last)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let report = PlanReport {
        nodes: args.nodes,
        gpus: args.nodes * GPUS_PER_NODE,
        racks: args.nodes.div_ceil(NODES_PER_RACK),
        teams: args.teams,
        running: sc.running,
        pending: sc.pending,
        gpus_allocated: sc.gpus_allocated,
        runs: args.runs,
        plan_ms_median: pct(0.5),
        plan_ms_p99: (args.runs >= 100).then(|| pct(0.99)),
        plan_ms_min: ms[0],
        plan_ms_max: ms[ms.len() - 1],
        state_mib: state_bytes as f64 / (1024.0 * 1024.0),
        plan_starts: last.starts.len(),
        plan_stops: last.stops.len(),
        plan_reservations: last.reservations.len(),
        plan_pending: last.pending.len(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("qm bench plan (one thread)");
    println!(
        "  cluster   {} nodes, {} GPUs, {} racks, {} teams",
        report.nodes, report.gpus, report.racks, report.teams
    );
    println!(
        "  jobs      {} running on {} GPUs, {} pending",
        report.running, report.gpus_allocated, report.pending
    );
    println!(
        "  plan      {} starts, {} stops, {} reservations, {} left pending",
        report.plan_starts, report.plan_stops, report.plan_reservations, report.plan_pending
    );
    println!("  state     {:.1} MiB", report.state_mib);
    println!();
    println!("  {:<10} {:>10}", "runs", report.runs);
    println!("  {:<10} {:>10.2} ms", "median", report.plan_ms_median);
    if let Some(p99) = report.plan_ms_p99 {
        println!("  {:<10} {:>10.2} ms", "p99", p99);
    }
    println!("  {:<10} {:>10.2} ms", "min", report.plan_ms_min);
    println!("  {:<10} {:>10.2} ms", "max", report.plan_ms_max);
    Ok(())
}

fn bench_dashboard(d: &DashArgs) -> Result<(), Box<dyn Error>> {
    let args = &d.plan;
    if let Some(dir) = &d.screenshots {
        return screenshots(args, dir);
    }
    let sc = scenario(args)?;
    let now = 2 * 3600;
    let history: std::collections::VecDeque<(u64, u64, u64, u64)> = (0..720)
        .map(|i| (i * 5, 1000 * i, 100 * i, 10 * i))
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0;
    for i in 0..args.runs.max(1) + 2 {
        let t0 = Instant::now();
        let text = qm_server::dashboard_snapshot(&sc.state, &history, now).to_string();
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        bytes = text.len();
        if i >= 2 {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    let browser = if d.browser {
        Some(browser_figures(sc.state)?)
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"nodes": args.nodes, "running": sc.running, "pending": sc.pending,
                "snapshot_ms_median": median, "snapshot_ms_max": max, "snapshot_bytes": bytes,
                "browser": browser})
        );
    } else {
        println!(
            "dashboard snapshot of {} nodes, {} running and {} pending jobs:",
            args.nodes, sc.running, sc.pending
        );
        println!(
            "  built and serialised in {median:.1} ms (median of {}, max {max:.1} ms), {} KiB",
            times.len(),
            bytes / 1024
        );
        if let Some(b) = browser {
            println!("in headless Chromium:");
            println!(
                "  sign-in to the first overview: {:.0} ms",
                b["first_view_ms"].as_f64().unwrap_or(0.0)
            );
            for (page, v) in b["pages"].as_object().into_iter().flatten() {
                println!(
                    "  {page:<9} render median {:>6.1} ms, max {:>6.1} ms ({} renders)",
                    v["median_ms"].as_f64().unwrap_or(0.0),
                    v["max_ms"].as_f64().unwrap_or(0.0),
                    v["renders"]
                );
            }
        }
    }
    Ok(())
}

/// A server of the bench's own (its own code, a temporary SQLite file holding `state` and
/// `usage`, no agents: nodes are not timed out for an hour), served on a free port.
struct Served {
    /// Runs the server while it lives.
    _rt: tokio::runtime::Runtime,
    server: std::sync::Arc<qm_server::Server>,
    url: String,
    token: String,
    dir: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(
    state: &ClusterState,
    usage: &[qm_store::UsageRow],
    usage_every_s: u64,
) -> Result<Served, Box<dyn Error>> {
    use qm_store::Store;
    let dir = std::env::temp_dir().join(format!("qm-bench-dash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut store = qm_store::SqliteStore::open(&dir.join("qm.db"))?;
    store.snapshot(0, state, "{}")?;
    if !usage.is_empty() {
        store.append(qm_store::Batch {
            events: &[],
            payloads: &[],
            exits: &[],
            tokens: &[],
            nodes: &[],
            ended: &[],
            usage,
        })?;
    }
    let config = qm_server::ServerConfig {
        node_timeout_s: 3600,
        usage_every_s,
        ..qm_server::ServerConfig::default()
    };
    let server = qm_server::Server::open(Box::new(store), config).map_err(|e| format!("{e:?}"))?;
    let token = server
        .create_token("bench", "admin", &[])
        .map_err(|e| format!("{e:?}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    rt.spawn(server.clone().run());
    let app = qm_server::app(server.clone());
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Served {
        _rt: rt,
        server,
        url,
        token,
        dir,
    })
}

/// Serves `state` and renders each dashboard page in a headless Chromium, reading the page's
/// own render timings.
fn browser_figures(state: ClusterState) -> Result<serde_json::Value, Box<dyn Error>> {
    let served = serve(
        &state,
        &[],
        qm_server::ServerConfig::default().usage_every_s,
    )?;
    let (url, token) = (served.url.clone(), served.token.clone());
    let mut b = qm::cdp::Browser::launch();
    b.goto(&format!("{url}/"));
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    let t0 = Instant::now();
    b.eval(&format!(
        "document.querySelector('#token').value = '{token}'; document.querySelector('#signin-button').click(); true"
    ));
    b.wait_for("document.querySelector('#c-gpus')", "the overview");
    let first_view_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut pages = serde_json::Map::new();
    for page in ["overview", "teams", "queue", "nodes", "jobs"] {
        b.eval(&format!(
            "window.qmRenders = []; location.hash = '#/{page}'; true"
        ));
        // Several snapshots arrive meanwhile: the planner keeps starting jobs.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let mut r: Vec<f64> = serde_json::from_value(b.eval("window.qmRenders"))?;
        r.sort_by(f64::total_cmp);
        if r.is_empty() {
            return Err(format!("the {page} page never rendered").into());
        }
        pages.insert(
            page.into(),
            serde_json::json!({"renders": r.len(), "median_ms": r[r.len() / 2], "max_ms": r[r.len() - 1]}),
        );
    }
    drop(b);
    drop(served);
    Ok(serde_json::json!({"first_view_ms": first_view_ms, "pages": pages}))
}

/// `qm bench dashboard --screenshots DIR`: the bench's cluster through the last day, then
/// every page of the dashboard as a member of two teams sees it.
///
/// The day is replayed through the scheduling core in five-minute steps: each run lasts a
/// random share of its time limit (nine in ten succeed), 30 jobs of the bench's mix
/// arrive per step, one job in seven holds its GPUs idle, a plan is applied at every step
/// and each team's use is sampled as the server samples it (`usage_rows`), so the report
/// page has a day of history. The day ends now, so times read as they would on a live
/// cluster.
fn screenshots(args: &PlanArgs, dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    use qm_core::JobState;
    const DAY: u64 = 86_400;
    const STEP: u64 = 300;
    const ARRIVALS: u32 = 30;
    if args.nodes == 0 || args.teams < 12 {
        return Err(
            "--screenshots needs nodes and at least 12 teams (it signs in as a member of team-03 and team-11)"
                .into(),
        );
    }
    let end = qm_server::now_s() / STEP * STEP;
    let origin = end - DAY - NOW_S;
    let mut sc = scenario_at(args, origin)?;
    let state = &mut sc.state;
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    let mut next_id = state.jobs().map(|j| j.spec.id.0).max().unwrap_or(0) + 1;
    let mut ends: std::collections::BTreeMap<JobId, u64> = Default::default();
    let mut usage = Vec::new();
    let mut t = origin + NOW_S;
    while t <= end {
        let mut events = Vec::new();
        for j in state.live_jobs() {
            match &j.state {
                JobState::Running(r) => {
                    let limit = j.spec.time_limit_s.unwrap_or(3600);
                    let over = *ends.entry(j.spec.id).or_insert_with(|| {
                        r.started_s + 600 + rng.below_mod(limit.saturating_sub(600).max(1))
                    });
                    if over <= t {
                        events.push(Event::Exited {
                            job: j.spec.id,
                            success: rng.below_mod(10) != 0,
                            attempt: None,
                            at_s: t,
                        });
                    } else {
                        let idle = j.spec.id.0 % 7 == 0;
                        let pct = if idle {
                            0
                        } else {
                            45 + (j.spec.id.0 * 37 % 55) as u8
                        };
                        events.push(Event::Utilisation {
                            job: j.spec.id,
                            pct,
                            attempt: None,
                            at_s: t,
                        });
                    }
                }
                JobState::Stopping(..) => events.push(Event::Exited {
                    job: j.spec.id,
                    success: false,
                    attempt: None,
                    at_s: t,
                }),
                _ => {}
            }
        }
        for e in events {
            if let Event::Exited { job, .. } = &e {
                ends.remove(job);
            }
            apply(state, e)?;
        }
        for _ in 0..ARRIVALS {
            let (tasks, gpus) = shape(&mut rng, true);
            let team = format!("team-{:02}", rng.below_mod(u64::from(args.teams)));
            let spec = job(&mut rng, next_id, team, tasks.min(args.nodes), gpus, t);
            next_id += 1;
            apply(state, Event::Submit(spec))?;
        }
        for e in plan(state, t).events(t) {
            apply(state, e)?;
        }
        usage.extend(qm_server::usage_rows(state, t, t));
        t += STEP;
    }
    let served = serve(state, &usage, STEP)?;
    let member = served
        .server
        .create_token(
            "alice",
            "member",
            &["team-03".to_string(), "team-11".to_string()],
        )
        .map_err(|e| format!("{e:?}"))?;
    let url = served.url.clone();
    // A running job of the member's, for its page and the heat map's hover.
    let (job, node, gpu) = state
        .live_jobs()
        .filter(|j| j.spec.team == "team-03")
        .find_map(|j| {
            let r = j.state.run()?;
            let t = r.placement.first()?;
            let node = state.node(t.node)?.spec.name.clone();
            Some((j.spec.id.0, node, *t.gpus.first()?))
        })
        .ok_or("no job of team-03 runs")?;
    let mut b = qm::cdp::Browser::launch();
    b.goto(&format!("{url}/"));
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    b.eval(&format!(
        "document.querySelector('#token').value = '{member}'; document.querySelector('#signin-button').click(); true"
    ));
    b.wait_for("document.querySelector('#c-gpus')", "the overview");
    // A few of the overview's 5-second samples, for its chart.
    std::thread::sleep(std::time::Duration::from_secs(16));
    std::fs::create_dir_all(dir)?;
    let mut shots = Vec::new();
    let shot = |b: &mut qm::cdp::Browser, hash: &str, ready: &str, name: &str, full: bool| {
        b.goto(&format!("{url}/{hash}"));
        b.wait_for(ready, name);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let path = dir.join(format!("{name}.png"));
        if full {
            b.screenshot_full(&path);
        } else {
            b.screenshot(&path);
        }
        path
    };
    shots.push(shot(
        &mut b,
        "#/overview",
        "document.querySelector('#c-gpus') && document.querySelector('#view svg')",
        "overview",
        false,
    ));
    shots.push(shot(
        &mut b,
        "#/teams",
        "document.querySelector('#teams tr.mine')",
        "teams",
        true,
    ));
    shots.push(shot(
        &mut b,
        "#/queue",
        "document.querySelector('#pager')",
        "queue",
        false,
    ));
    shots.push(shot(&mut b, "#/queue?q=team-11%20x8", "document.querySelector('#queue-filter') && document.querySelector('#queue-filter').value === 'team-11 x8' && !document.querySelector('#queue').innerText.includes('reading')", "queue-filtered", false));
    shots.push(shot(
        &mut b,
        "#/nodes?q=team-03",
        "document.querySelector('#node-hits')",
        "nodes-search",
        false,
    ));
    b.goto(&format!("{url}/#/nodes"));
    b.wait_for(
        &format!("window.qmHeatCell && window.qmHeatCell('{node}', {gpu})"),
        "the heat map",
    );
    let at = b.eval(&format!("window.qmHeatCell('{node}', {gpu})"));
    let (x, y) = (
        at["x"].as_f64().unwrap_or(0.0),
        at["y"].as_f64().unwrap_or(0.0),
    );
    if y > 800.0 {
        b.eval(&format!("window.scrollTo(0, {}); true", y - 300.0));
    }
    let at = b.eval(&format!("window.qmHeatCell('{node}', {gpu})"));
    b.mouse_move(at["x"].as_f64().unwrap_or(x), at["y"].as_f64().unwrap_or(y));
    b.wait_for(
        "!document.querySelector('#heat-tip').hidden",
        "the hover details",
    );
    let path = dir.join("nodes.png");
    b.screenshot(&path);
    shots.push(path);
    shots.push(shot(
        &mut b,
        "#/jobs",
        "document.querySelector('#jobs')",
        "jobs",
        false,
    ));
    shots.push(shot(
        &mut b,
        &format!("#/jobs/{job}"),
        "document.querySelector('#events')",
        "job",
        false,
    ));
    shots.push(shot(
        &mut b,
        "#/report/1d",
        "document.querySelector('#report-charts .team-chart')",
        "report",
        true,
    ));
    let errors = b.take_errors();
    drop(b);
    drop(served);
    if !errors.is_empty() {
        return Err(format!("the dashboard logged errors: {errors:?}").into());
    }
    println!(
        "a day of {} nodes ({} usage samples), photographed as a member of team-03 and team-11:",
        args.nodes,
        usage.len()
    );
    for p in shots {
        println!("  {}", p.display());
    }
    Ok(())
}
