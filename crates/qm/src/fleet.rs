//! `qm bench fleet`: the control plane under a whole cluster's agents.
//!
//! A real `qm server` process (its own store: a SQLite file, or a new PostgreSQL database)
//! and, in this process, `--nodes` simulated agents that speak the real HTTP agent protocol:
//! each registers with a join token, heartbeats every second with its running tasks and their
//! utilisation, long-polls for commands, runs each launched task for the seconds its command
//! says (`sleep N`) and reports its exit. A submitter sends a mix of jobs at `--rate` per
//! second (1 to 8 GPUs, and one in a hundred a gang of 64 to 512 GPUs), `--queriers` clients
//! list jobs and show one each second as `qm jobs` and `qm show` would, and `--streams`
//! dashboard streams stay open.
//!
//! Job durations are drawn (exponentially) so that the work offered keeps `--load` of the
//! GPUs busy on average: the cluster fills to that load during the warm-up, and the figures
//! measure the control plane, not a queue waiting for capacity.
//!
//! Measured over `--seconds` after `--warmup`: submit-to-launch latency (from sending the
//! submission to its first task's launch reaching its agent), heartbeat round trips, the
//! server's CPU (from /proc) and peak RSS, plans per second and their time, events written per
//! second, and the store's size.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use qm_proto::{
    Command, Commands, Heartbeat, JobView, RegisterRequest, RegisterResponse, SubmitRequest,
    SubmitResponse, TaskExit, TaskKey, TaskUtil, TokenResponse,
};
use qm_sim::rng::Rng;
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Simulated agents, one per node.
    #[arg(long, default_value_t = 2048)]
    nodes: u32,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Submissions per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// The share of the GPUs the offered work keeps busy on average (0 to 1).
    #[arg(long, default_value_t = 0.6)]
    load: f64,
    /// Dashboard streams kept open.
    #[arg(long, default_value_t = 2)]
    streams: usize,
    /// Clients that list jobs (and show one) every second.
    #[arg(long, default_value_t = 2)]
    queriers: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `sqlite` (a file in a temporary directory), or a PostgreSQL server's URL (a user that
    /// may create databases): a new database there.
    #[arg(long, default_value = "sqlite")]
    db: String,
    #[arg(long)]
    json: bool,
}

/// Percentiles of a sample, in milliseconds.
#[derive(Serialize, Debug, Default)]
struct Spread {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Spread {
    fn of(mut ms: Vec<f64>) -> Spread {
        if ms.is_empty() {
            return Spread::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Spread {
            n: ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

#[derive(Serialize, Debug)]
struct FleetFigures {
    nodes: u32,
    gpus: u32,
    store: String,
    rate_asked: f64,
    seconds: u64,
    /// Submissions sent and answered in the window, per second.
    submissions_per_s: f64,
    submit_answer: Spread,
    /// Jobs submitted in the window: submission sent to the first task's launch received.
    submit_to_launch: Spread,
    /// Of those, jobs whose launch had not come by the end (left out of the spread).
    not_launched: usize,
    /// Gangs (64-512 GPUs) among them, on their own.
    gang_submit_to_launch: Spread,
    heartbeat: Spread,
    heartbeats_per_s: f64,
    /// Failed agent or client requests in the window (connection errors, non-200 answers).
    errors: u64,
    query: Spread,
    /// Tasks running on the agents at the end, and the GPUs they hold.
    tasks_running: usize,
    gpus_busy: u64,
    server_cpu_cores: f64,
    server_rss_mib: f64,
    server_peak_rss_mib: f64,
    plans_per_s: f64,
    plan_mean_ms: f64,
    events_per_s: f64,
    store_writes_per_s: f64,
    store_mib: f64,
    dashboard_snapshots: u64,
}

/// One HTTP/1.1 connection to the server, opened again after an error.
struct Http {
    addr: String,
    token: String,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Http {
    fn new(addr: &str, token: &str) -> Http {
        Http {
            addr: addr.to_string(),
            token: token.to_string(),
            sender: None,
        }
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), String> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(e.to_string());
            }
        };
        Ok((status, bytes))
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let sender = self.sender.as_mut().expect("connected above");
        // A request goes only on a connection ready for one (a new connection's task may not
        // have run yet).
        if let Err(e) = sender.ready().await {
            self.sender = None;
            return Err(format!("{path}: {e}"));
        }
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(format!("{path}: {e}"))
            }
        }
    }

    /// A 200 answer's body as `T`.
    async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, String> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        if status != 200 {
            return Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: {e}"))
    }
}

/// What the run shares between its tasks.
struct Shared {
    addr: String,
    /// Measuring: samples are kept only while it is set.
    measuring: AtomicBool,
    stop: AtomicBool,
    /// When each job's submission was sent, and whether it was sent in the window.
    submitted: Mutex<HashMap<u64, (Instant, bool, bool)>>,
    /// When the first launch of each job reached its agent.
    launched: Mutex<HashMap<u64, Instant>>,
    heartbeats: Mutex<Vec<f64>>,
    answers: Mutex<Vec<f64>>,
    queries: Mutex<Vec<f64>>,
    errors: AtomicU64,
    /// Task exits the server acknowledged.
    exits: AtomicU64,
    snapshots: AtomicU64,
    newest: AtomicU64,
}

impl Shared {
    fn new(addr: &str) -> Arc<Shared> {
        Arc::new(Shared {
            addr: addr.to_string(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            submitted: Mutex::new(HashMap::new()),
            launched: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            queries: Mutex::new(Vec::new()),
            errors: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            newest: AtomicU64::new(0),
        })
    }

    fn sample(&self, into: &Mutex<Vec<f64>>, since: Instant) {
        if self.measuring.load(Ordering::Relaxed) {
            into.lock()
                .expect("samples")
                .push(since.elapsed().as_secs_f64() * 1000.0);
        }
    }

    fn error(&self) {
        if self.measuring.load(Ordering::Relaxed) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A simulated node: what it runs, and a wake for its heartbeat (a task that ends at once
/// is reported at once).
#[derive(Default)]
struct Node {
    sim: Mutex<NodeSim>,
    wake: tokio::sync::Notify,
}

/// The tasks a node runs (until when, on how many GPUs) and the exits not yet reported.
#[derive(Default)]
struct NodeSim {
    running: BTreeMap<TaskKey, (Instant, u32)>,
    exited: Vec<TaskExit>,
    /// Every task ever launched here: a launch sent again is not run twice.
    seen: std::collections::BTreeSet<TaskKey>,
}

/// The server process, killed when dropped, with its directory.
struct ServerProc {
    child: std::process::Child,
    dir: PathBuf,
    db: String,
    addr: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ServerProc {
    /// A new store (`sqlite`: a file in a new temporary directory; else a PostgreSQL server's
    /// URL, where a new database is made) and `qm server` on it with `extra` arguments; its
    /// admin token.
    fn start(
        db: &str,
        name: &str,
        extra: &[String],
    ) -> Result<(ServerProc, String), Box<dyn Error>> {
        let dir = std::env::temp_dir().join(format!("qm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let db = if db == "sqlite" {
            format!("sqlite:{}", dir.join("qm.db").display())
        } else {
            qm_store::pg::throwaway_database(db)?
        };
        let (child, addr, admin) = spawn_server(&db, extra)?;
        let proc = ServerProc {
            child,
            dir,
            db,
            addr,
        };
        let admin = admin.ok_or("qm server printed no admin token")?;
        Ok((proc, admin))
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on its store (on a new
    /// port); how long it took from the start of the process to serving the API.
    fn restart(&mut self, extra: &[String]) -> Result<Duration, Box<dyn Error>> {
        self.child.kill()?;
        self.child.wait()?;
        let t = Instant::now();
        let (child, addr, _) = spawn_server(&self.db, extra)?;
        self.child = child;
        self.addr = addr;
        Ok(t.elapsed())
    }
}

/// Starts `qm server` on `db` on a port of its choosing (so that no other process can take
/// it in between) and waits until it serves the API; the address it serves at and the admin
/// token it printed, if it made one.
fn spawn_server(
    db: &str,
    extra: &[String],
) -> Result<(std::process::Child, String, Option<String>), Box<dyn Error>> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["server", "--db", db, "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut admin = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            return Err("qm server did not start within 120 s".into());
        };
        if let Some(t) = line.strip_prefix("admin token (shown once): ") {
            admin = Some(t.trim().to_string());
        }
        if let Some((_, url)) = line.split_once("API at http://") {
            return Ok((child, url.trim().to_string(), admin));
        }
    }
}

/// CPU seconds (user + system) and resident and peak resident MiB of a process.
fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command's closing parenthesis; utime and stime are the
            // 14th and 15th of the line.
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (cpu, kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The values of the unlabelled series of a Prometheus text page.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            (!name.contains('{')).then(|| Some((name.to_string(), value.trim().parse().ok()?)))?
        })
        .collect()
}

/// The server's metrics now.
async fn metrics(http: &mut Http) -> HashMap<String, f64> {
    http.call(Method::GET, "/metrics", None)
        .await
        .map(|(_, b)| scrape(&String::from_utf8_lossy(&b)))
        .unwrap_or_default()
}

/// A job of the mix: (tasks, GPUs per task).
fn shape(rng: &mut Rng) -> (u32, u32) {
    match rng.below(100) {
        0 => (8 << rng.below(4), 8),
        1..=69 => (1, 1),
        70..=79 => (1, 2),
        80..=89 => (1, 4),
        _ => (1, 8),
    }
}

/// The mean GPUs of a job of [`shape`]'s mix.
const MEAN_GPUS: f64 = 0.01 * 8.0 * (8.0 + 16.0 + 32.0 + 64.0) / 4.0
    + 0.69 * 1.0
    + 0.10 * 2.0
    + 0.10 * 4.0
    + 0.10 * 8.0;

fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn run(a: FleetArgs) -> Result<(), Box<dyn Error>> {
    if a.rate.is_nan() || a.rate <= 0.0 || !(0.0..=1.0).contains(&a.load) || a.nodes == 0 {
        return Err("--rate must be positive, --load within 0..1 and --nodes at least 1".into());
    }
    let (server, admin) = ServerProc::start(&a.db, &format!("fleet-{}", a.nodes), &[])?;
    let (pid, addr) = (server.child.id(), server.addr.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = rt.block_on(drive(&a, &addr, &admin, pid))?;
    let figures = FleetFigures {
        store_mib: store_mib(&a.db, &server.dir),
        ..figures
    };
    drop(server);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print(&figures);
    }
    Ok(())
}

fn print(f: &FleetFigures) {
    println!(
        "fleet: {} nodes, {} GPUs, {} store, {:.0} submissions/s asked, {} s measured",
        f.nodes, f.gpus, f.store, f.rate_asked, f.seconds
    );
    let spread = |s: &Spread| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n {})",
            s.p50_ms, s.p99_ms, s.max_ms, s.n
        )
    };
    println!("  submissions answered   {:.1}/s", f.submissions_per_s);
    println!("  submit answer          {}", spread(&f.submit_answer));
    println!(
        "  submit to launch       {}; {} not launched by the end",
        spread(&f.submit_to_launch),
        f.not_launched
    );
    println!(
        "  gangs, submit to launch {}",
        spread(&f.gang_submit_to_launch)
    );
    println!(
        "  heartbeat round trip   {} ({:.0}/s)",
        spread(&f.heartbeat),
        f.heartbeats_per_s
    );
    println!("  job list + show        {}", spread(&f.query));
    println!(
        "  running at the end     {} tasks on {} GPUs",
        f.tasks_running, f.gpus_busy
    );
    println!(
        "  server                 {:.2} cores, RSS {:.0} MiB (peak {:.0} MiB)",
        f.server_cpu_cores, f.server_rss_mib, f.server_peak_rss_mib
    );
    println!(
        "  plans                  {:.1}/s, mean {:.2} ms",
        f.plans_per_s, f.plan_mean_ms
    );
    println!(
        "  store                  {:.0} events/s in {:.1} writes/s; {:.1} MiB",
        f.events_per_s, f.store_writes_per_s, f.store_mib
    );
    println!(
        "  errors                 {}; dashboard snapshots {}",
        f.errors, f.dashboard_snapshots
    );
}

async fn drive(
    a: &FleetArgs,
    addr: &str,
    admin: &str,
    pid: u32,
) -> Result<FleetFigures, Box<dyn Error>> {
    let mut http = Http::new(addr, admin);
    let gpus = a.nodes * a.gpus_per_node;
    let teams = 8u32;
    let join = setup(&mut http, gpus, teams, "fleet").await?;
    let shared = Shared::new(addr);
    let t0 = Instant::now();
    let credentials = register(addr, &join, a.nodes, a.gpus_per_node).await?;
    eprintln!(
        "fleet: {} nodes registered in {:.1} s",
        a.nodes,
        t0.elapsed().as_secs_f64()
    );
    let (nodes, mut tasks) = agents(&shared, &credentials);
    for _ in 0..a.streams {
        tasks.push(tokio::spawn(stream(shared.clone(), admin.to_string())));
    }
    for q in 0..a.queriers {
        tasks.push(tokio::spawn(query(
            shared.clone(),
            admin.to_string(),
            a.seed + q as u64,
        )));
    }
    // The submitters: four clients, each a quarter of the rate.
    let mean_s = a.load * f64::from(gpus) / (a.rate * MEAN_GPUS);
    for c in 0..4u64 {
        tasks.push(tokio::spawn(submit(
            shared.clone(),
            admin.to_string(),
            a.rate / 4.0,
            mean_s,
            a.seed * 16 + c,
            teams,
        )));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    // The window.
    let m0 = metrics(&mut http).await;
    let (cpu0, _, _) = proc_usage(pid);
    let w0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let window = w0.elapsed().as_secs_f64();
    let (cpu1, rss, peak) = proc_usage(pid);
    let m1 = metrics(&mut http).await;
    // Jobs submitted in the window have a few seconds more to launch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let delta = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    let (latencies, gang_latencies, not_launched) = {
        let sub = shared.submitted.lock().expect("submitted");
        let launched = shared.launched.lock().expect("launched");
        let (mut all, mut gangs, mut missing) = (Vec::new(), Vec::new(), 0);
        for (job, &(at, in_window, gang)) in sub.iter() {
            if !in_window {
                continue;
            }
            match launched.get(job) {
                Some(l) => {
                    let ms = l.saturating_duration_since(at).as_secs_f64() * 1000.0;
                    all.push(ms);
                    if gang {
                        gangs.push(ms);
                    }
                }
                None => missing += 1,
            }
        }
        (all, gangs, missing)
    };
    let (tasks_running, gpus_busy) = nodes.iter().fold((0, 0u64), |(t, g), n| {
        let n = n.sim.lock().expect("node");
        (
            t + n.running.len(),
            g + n.running.values().map(|v| u64::from(v.1)).sum::<u64>(),
        )
    });
    for t in tasks {
        t.abort();
    }
    let plans = delta("qm_plan_duration_seconds_count");
    let take = |m: &Mutex<Vec<f64>>| std::mem::take(&mut *m.lock().expect("samples"));
    let answers = take(&shared.answers);
    let heartbeats = take(&shared.heartbeats);
    Ok(FleetFigures {
        nodes: a.nodes,
        gpus,
        store: store_kind(&a.db),
        rate_asked: a.rate,
        seconds: a.seconds,
        submissions_per_s: answers.len() as f64 / window,
        submit_answer: Spread::of(answers),
        submit_to_launch: Spread::of(latencies),
        not_launched,
        gang_submit_to_launch: Spread::of(gang_latencies),
        heartbeats_per_s: heartbeats.len() as f64 / window,
        heartbeat: Spread::of(heartbeats),
        errors: shared.errors.load(Ordering::Relaxed),
        query: Spread::of(take(&shared.queries)),
        tasks_running,
        gpus_busy,
        server_cpu_cores: (cpu1 - cpu0) / window,
        server_rss_mib: rss,
        server_peak_rss_mib: peak,
        plans_per_s: plans / window,
        plan_mean_ms: if plans > 0.0 {
            delta("qm_plan_duration_seconds_sum") / plans * 1000.0
        } else {
            0.0
        },
        events_per_s: delta("qm_store_last_event") / window,
        store_writes_per_s: delta("qm_store_writes_total") / window,
        store_mib: 0.0,
        dashboard_snapshots: shared.snapshots.load(Ordering::Relaxed),
    })
}

/// Creates `teams` teams (`team-0`...) sharing `gpus` equally and a join token named `name`;
/// the token.
async fn setup(http: &mut Http, gpus: u32, teams: u32, name: &str) -> Result<String, String> {
    for t in 0..teams {
        let body = serde_json::json!({"name": format!("team-{t}"), "guaranteed": gpus / teams});
        http.json::<serde_json::Value>(
            Method::POST,
            "/api/v1/admin/teams",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    }
    let body = serde_json::json!({"name": name, "role": "join"});
    let join: TokenResponse = http
        .json(
            Method::POST,
            "/api/v1/admin/tokens",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    Ok(join.token)
}

/// Registers `count` nodes of `gpus` GPUs (32 at a time) with a join token; their
/// credentials.
async fn register(
    addr: &str,
    join: &str,
    count: u32,
    gpus: u32,
) -> Result<Vec<String>, Box<dyn Error>> {
    let mut credentials = Vec::new();
    let names: Vec<String> = (0..count).map(|i| format!("node-{i:04}")).collect();
    for chunk in names.chunks(32) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|name| {
                let (addr, join, name) = (addr.to_string(), join.to_string(), name.clone());
                tokio::spawn(async move {
                    let req = RegisterRequest {
                        name,
                        gpus,
                        gpu_model: "SIM".into(),
                        gpu_mem_mib: 81920,
                        cpu_milli: 64_000,
                        mem_mib: 262_144,
                        labels: BTreeMap::new(),
                        topology: Vec::new(),
                        address: "127.0.0.1".into(),
                        credential: None,
                    };
                    let r: RegisterResponse = Http::new(&addr, &join)
                        .json(
                            Method::POST,
                            "/agent/v1/register",
                            Some(serde_json::to_vec(&req).expect("a request")),
                        )
                        .await?;
                    Ok::<_, String>(r.credential)
                })
            })
            .collect();
        for h in handles {
            credentials.push(h.await??);
        }
    }
    Ok(credentials)
}

/// Starts an agent (heartbeats and command poll) for each credential, heartbeats spread
/// over the second.
fn agents(
    shared: &Arc<Shared>,
    credentials: &[String],
) -> (Vec<Arc<Node>>, Vec<tokio::task::JoinHandle<()>>) {
    let nodes: Vec<Arc<Node>> = credentials.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (i, credential) in credentials.iter().enumerate() {
        let phase = Duration::from_millis((i as u64 * 1000) / credentials.len() as u64);
        tasks.push(tokio::spawn(heartbeats(
            shared.clone(),
            nodes[i].clone(),
            credential.clone(),
            phase,
        )));
        tasks.push(tokio::spawn(commands(
            shared.clone(),
            nodes[i].clone(),
            credential.clone(),
        )));
    }
    (nodes, tasks)
}

/// An agent's heartbeats: every second, its running tasks (those whose time is up exit 0),
/// their utilisation and the exits not yet acknowledged.
async fn heartbeats(shared: Arc<Shared>, node: Arc<Node>, credential: String, phase: Duration) {
    let mut http = Http::new(&shared.addr, &credential);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.wake.notified() => {}
        }
        let hb = {
            let mut n = node.sim.lock().expect("node");
            let now = Instant::now();
            let done: Vec<TaskKey> = n
                .running
                .iter()
                .filter(|(_, (end, _))| *end <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in done {
                n.running.remove(&key);
                n.exited.push(TaskExit {
                    key,
                    code: 0,
                    message: None,
                    fenced: false,
                });
            }
            Heartbeat {
                running: n.running.keys().cloned().collect(),
                exited: n.exited.clone(),
                util: n
                    .running
                    .keys()
                    .map(|k| TaskUtil {
                        key: k.clone(),
                        pct: 80,
                    })
                    .collect(),
            }
        };
        let sent = hb.exited.len();
        let t = Instant::now();
        let body = serde_json::to_vec(&hb).expect("a heartbeat");
        match http
            .call(Method::POST, "/agent/v1/heartbeat", Some(body))
            .await
        {
            Ok((200, _)) => {
                shared.sample(&shared.heartbeats, t);
                node.sim.lock().expect("node").exited.drain(..sent);
                shared.exits.fetch_add(sent as u64, Ordering::Relaxed);
            }
            _ => shared.error(),
        }
    }
}

/// An agent's command long poll: launches run for the seconds of their `sleep N`; kills end
/// a task with 143.
async fn commands(shared: Arc<Shared>, node: Arc<Node>, credential: String) {
    let mut http = Http::new(&shared.addr, &credential);
    while !shared.stop.load(Ordering::Relaxed) {
        let got: Result<Commands, String> = http
            .json(Method::GET, "/agent/v1/commands?wait_s=20", None)
            .await;
        let Ok(got) = got else {
            shared.error();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let now = Instant::now();
        let mut n = node.sim.lock().expect("node");
        for c in got.commands {
            match c {
                Command::Launch(l) => {
                    if !n.seen.insert(l.key.clone()) {
                        continue;
                    }
                    if l.key.task == 0 {
                        shared
                            .launched
                            .lock()
                            .expect("launched")
                            .entry(l.key.job)
                            .or_insert(now);
                    }
                    let secs: f64 = l
                        .command
                        .get(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(60.0);
                    let gpus = l
                        .env
                        .get("CUDA_VISIBLE_DEVICES")
                        .map_or(1, |v| v.split(',').count() as u32);
                    n.running
                        .insert(l.key, (now + Duration::from_secs_f64(secs), gpus));
                    if secs <= 0.0 {
                        node.wake.notify_one();
                    }
                }
                Command::Kill { key, .. } => {
                    if n.running.remove(&key).is_some() {
                        n.exited.push(TaskExit {
                            key,
                            code: 143,
                            message: None,
                            fenced: false,
                        });
                    }
                }
            }
        }
    }
}

/// A dashboard stream, read and counted.
async fn stream(shared: Arc<Shared>, token: String) {
    let mut http = Http::new(&shared.addr, &token);
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(resp) = http.send(Method::GET, "/api/v1/stream", None).await else {
            shared.error();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut body = resp.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                let n = data.windows(2).filter(|w| w == b"\n\n").count() as u64;
                shared.snapshots.fetch_add(n, Ordering::Relaxed);
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        http.sender = None;
    }
}

/// A user's queries, once a second: the job list (as `qm jobs` asks), then one recent job.
async fn query(shared: Arc<Shared>, token: String, seed: u64) {
    let mut http = Http::new(&shared.addr, &token);
    let mut rng = Rng::new(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = Instant::now();
        let list: Result<Vec<JobView>, String> = http
            .json(Method::GET, "/api/v1/jobs?limit=1000", None)
            .await;
        let newest = shared.newest.load(Ordering::Relaxed);
        let id = 1 + rng.below_mod(newest.max(1));
        let one: Result<JobView, String> = http
            .json(Method::GET, &format!("/api/v1/jobs/{id}"), None)
            .await;
        match (list, one) {
            (Ok(_), Ok(_)) => shared.sample(&shared.queries, t),
            _ => shared.error(),
        }
    }
}

/// One submitting client at `rate` per second: shapes from the mix, durations exponential
/// with mean `mean_s`, teams at random.
async fn submit(shared: Arc<Shared>, token: String, rate: f64, mean_s: f64, seed: u64, teams: u32) {
    let mut http = Http::new(&shared.addr, &token);
    let mut rng = Rng::new(seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (tasks, gpus) = shape(&mut rng);
        let secs = (-mean_s * (1.0 - uniform(&mut rng)).ln()).clamp(1.0, 86_400.0);
        let req = SubmitRequest {
            team: format!("team-{}", rng.below_mod(u64::from(teams))),
            tasks: Some(tasks),
            gpus: Some(gpus),
            preemptible: Some(tasks == 1),
            command: vec!["sleep".into(), format!("{secs:.0}")],
            ..SubmitRequest::default()
        };
        let t = Instant::now();
        let in_window = shared.measuring.load(Ordering::Relaxed);
        let r: Result<SubmitResponse, String> = http
            .json(
                Method::POST,
                "/api/v1/jobs",
                Some(serde_json::to_vec(&req).expect("a request")),
            )
            .await;
        match r {
            Ok(r) => {
                shared.sample(&shared.answers, t);
                shared.newest.fetch_max(r.job, Ordering::Relaxed);
                shared
                    .submitted
                    .lock()
                    .expect("submitted")
                    .insert(r.job, (t, in_window, tasks > 1));
            }
            Err(_) => shared.error(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Jobs run through the server, start to end.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: u64,
    /// Simulated agents (their tasks end as soon as they start).
    #[arg(long, default_value_t = 32)]
    nodes: u32,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// The server's RSS is sampled every this many jobs.
    #[arg(long, default_value_t = 50_000)]
    every: u64,
    /// At most this many jobs submitted and not yet ended (the submitters wait above it).
    #[arg(long, default_value_t = 2_000)]
    backlog: u64,
    /// `sqlite` or a PostgreSQL server's URL, as for `qm bench fleet`.
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Arguments for the server (e.g. --retain-ended-max=50000).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct RssSample {
    jobs: u64,
    seconds: f64,
    rss_mib: f64,
}

#[derive(Serialize, Debug)]
struct HistoryFigures {
    jobs: u64,
    seconds: f64,
    jobs_per_s: f64,
    store: String,
    samples: Vec<RssSample>,
    peak_rss_mib: f64,
    events: f64,
    forgotten: f64,
    ended_held: f64,
    store_mib: f64,
    /// From starting the process to serving the API, after a SIGKILL.
    restart_s: f64,
    rss_after_restart_mib: f64,
}

/// `qm bench history`: a million jobs through a real server, its memory as history grows,
/// then a restart.
pub fn run_history(a: HistoryArgs) -> Result<(), Box<dyn Error>> {
    let (mut server, admin) = ServerProc::start(&a.db, "history", &a.server_args)?;
    let (pid, addr) = (server.child.id(), server.addr.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut figures, shared) = rt.block_on(push_history(&a, &addr, &admin, pid))?;
    let m = rt.block_on(metrics(&mut Http::new(&addr, &admin)));
    figures.events = m.get("qm_store_last_event").copied().unwrap_or(0.0);
    figures.forgotten = m.get("qm_jobs_forgotten_total").copied().unwrap_or(0.0);
    figures.ended_held = m.get("qm_jobs_ended_held").copied().unwrap_or(0.0);
    figures.peak_rss_mib = proc_usage(pid).2;
    shared.stop.store(true, Ordering::Relaxed);
    drop(rt);
    figures.store_mib = store_mib(&a.db, &server.dir);
    let restart = server.restart(&a.server_args)?;
    figures.restart_s = restart.as_secs_f64();
    figures.rss_after_restart_mib = proc_usage(server.child.id()).1;
    // The oldest job, long forgotten, still reads from the store.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let first: JobView =
        rt.block_on(Http::new(&server.addr, &admin).json(Method::GET, "/api/v1/jobs/1", None))?;
    if first.state != qm_proto::JobState::Succeeded {
        return Err(format!("job 1 reads back {}, not succeeded", first.state).into());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        println!(
            "history: {} jobs in {:.0} s ({:.0}/s), {} store",
            figures.jobs, figures.seconds, figures.jobs_per_s, figures.store
        );
        for s in &figures.samples {
            println!(
                "  after {:>9} jobs ({:>5.0} s): RSS {:.0} MiB",
                s.jobs, s.seconds, s.rss_mib
            );
        }
        println!(
            "  peak RSS {:.0} MiB; {} events, {} jobs forgotten, {} ended held; store {:.0} MiB",
            figures.peak_rss_mib,
            figures.events,
            figures.forgotten,
            figures.ended_held,
            figures.store_mib
        );
        println!(
            "  restart after SIGKILL: API served in {:.2} s, RSS {:.0} MiB; job 1 read back from the store",
            figures.restart_s, figures.rss_after_restart_mib
        );
    }
    Ok(())
}

/// `sqlite` or `postgres`, for the figures.
fn store_kind(db: &str) -> String {
    if db == "sqlite" { "sqlite" } else { "postgres" }.into()
}

/// The size of a SQLite store's files (0 for PostgreSQL).
fn store_mib(db: &str, dir: &std::path::Path) -> f64 {
    if db != "sqlite" {
        return 0.0;
    }
    ["qm.db", "qm.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len() as f64)
        .sum::<f64>()
        / (1 << 20) as f64
}

async fn push_history(
    a: &HistoryArgs,
    addr: &str,
    admin: &str,
    pid: u32,
) -> Result<(HistoryFigures, Arc<Shared>), Box<dyn Error>> {
    let mut http = Http::new(addr, admin);
    let gpus = a.nodes * a.gpus_per_node;
    let teams = 8u32;
    let join = setup(&mut http, gpus, teams, "history").await?;
    let shared = Shared::new(addr);
    let credentials = register(addr, &join, a.nodes, a.gpus_per_node).await?;
    let (_nodes, _agents) = agents(&shared, &credentials);
    let submitted = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (shared, submitted, token) = (shared.clone(), submitted.clone(), admin.to_string());
        let (jobs, backlog) = (a.jobs, a.backlog);
        clients.push(tokio::spawn(async move {
            let mut http = Http::new(&shared.addr, &token);
            loop {
                let done = shared.exits.load(Ordering::Relaxed);
                let sent = submitted.load(Ordering::Relaxed);
                if sent >= jobs {
                    return;
                }
                if sent.saturating_sub(done) >= backlog {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                submitted.fetch_add(1, Ordering::Relaxed);
                let req = SubmitRequest {
                    team: format!("team-{}", (sent + c) % u64::from(teams)),
                    gpus: Some(1),
                    command: vec!["sleep".into(), "0".into()],
                    ..SubmitRequest::default()
                };
                let body = serde_json::to_vec(&req).expect("a request");
                if http
                    .call(Method::POST, "/api/v1/jobs", Some(body))
                    .await
                    .is_err()
                {
                    shared.error();
                }
            }
        }));
    }
    let mut samples = Vec::new();
    let mut next = a.every.min(a.jobs);
    while shared.exits.load(Ordering::Relaxed) < a.jobs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = shared.exits.load(Ordering::Relaxed);
        // One sample per check that crossed a multiple of `every` (a fast run may cross
        // two between checks), and one at the end.
        if done >= next || done >= a.jobs {
            let s = RssSample {
                jobs: done,
                seconds: t0.elapsed().as_secs_f64(),
                rss_mib: proc_usage(pid).1,
            };
            eprintln!(
                "history: {} jobs ended after {:.0} s, server RSS {:.0} MiB",
                s.jobs, s.seconds, s.rss_mib
            );
            samples.push(s);
            next = (done / a.every.max(1) + 1) * a.every.max(1);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for c in clients {
        c.abort();
    }
    Ok((
        HistoryFigures {
            jobs: a.jobs,
            seconds,
            jobs_per_s: a.jobs as f64 / seconds,
            store: store_kind(&a.db),
            samples,
            peak_rss_mib: 0.0,
            events: 0.0,
            forgotten: 0.0,
            ended_held: 0.0,
            store_mib: 0.0,
            restart_s: 0.0,
            rss_after_restart_mib: 0.0,
        },
        shared,
    ))
}
