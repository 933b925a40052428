//! The node agent. It registers its node with a join token, long-polls the server for
//! launches and kills, runs each task as its own process group with the environment the
//! server gives it (`CUDA_VISIBLE_DEVICES`, the distributed-training variables), writes the
//! task's stdout and stderr to a log file and uploads it, samples utilisation, and reports
//! running tasks and exits in a heartbeat every second (at once after an exit). If the server
//! goes away it keeps its tasks running and reports everything when it is back.

pub mod gpus;
mod proc;

pub use proc::{fence_guard, FENCE_GUARD};

use std::collections::BTreeMap;

use base64::Engine as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_proto::{
    Command, Commands, Heartbeat, Launch, LogChunk, RegisterRequest, RegisterResponse, TaskExit,
    TaskKey, TaskUtil,
};

pub use gpus::{GpuProbe, NvidiaSmi, Simulated};
use proc::Task;

/// How many ended tasks an agent remembers, to ignore launches sent again.
const FINISHED_KEPT: usize = 100_000;

/// What an agent needs to know.
pub struct AgentConfig {
    /// `http://host:port` of the server.
    /// The server's URL; several, comma-separated, where servers share a database (the
    /// agent follows the one that answers).
    pub server: String,
    /// A join token, needed to register a new node (or one an admin reset); the node's own
    /// credential, kept in `data_dir/credential`, registers it again after a restart.
    pub join_token: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub topology: Vec<String>,
    /// Where task logs go.
    pub data_dir: PathBuf,
    /// Where other nodes reach this one (MASTER_ADDR).
    pub address: String,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    /// Run tasks as root where their job names no existing non-root user.
    pub allow_root_tasks: bool,
    /// The private CA that signed the server's certificate (PEM), for an `https://` server.
    pub ca: Option<PathBuf>,
}

/// An HTTP client for the server. `https://` servers are verified against `ca` (a PEM file
/// of the private CA that signed the server's certificate) where given, else against the
/// public web roots; the server's name must match its certificate either way.
pub fn http_agent(
    ca: Option<&std::path::Path>,
    connect: Duration,
    read: Duration,
) -> Result<ureq::Agent, String> {
    let builder = ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read);
    let Some(ca) = ca else {
        return Ok(builder.build());
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |e: String| format!("cannot use the CA file {}: {e}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(
            "it holds no certificate (expected PEM, -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(builder.tls_config(Arc::new(config)).build())
}

/// An error that stops the agent.
#[derive(Debug)]
pub struct AgentError(pub String);

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AgentError {}

/// This machine's CPU (milli-cores) and memory (MiB).
pub fn machine_resources() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(8 << 20);
    (cpus * 1000, mem_kib / 1024)
}

/// The longest an agent's POST (register, heartbeat, log upload) may take, answer included.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Fencing of the tasks of fenced jobs (`Launch::fence_after_ms`), kept by a watchdog thread
/// of its own so that no network call of the main loop can hold a kill back.
#[derive(Default)]
struct Fence {
    /// When the last heartbeat the server answered was sent (or the registration).
    last_ok: Option<Instant>,
    /// Fenced tasks not yet reaped: their process group and how long they may go without
    /// word from the server. The main loop reaps under this lock, so a group here is still
    /// the task's own (its leader, not yet waited for, keeps its id).
    tasks: BTreeMap<TaskKey, (i32, Duration)>,
    /// Tasks the watchdog killed, to report as fenced.
    killed: std::collections::BTreeSet<TaskKey>,
}

impl Fence {
    /// Kills every fenced task whose time without word has run out.
    fn check(&mut self) {
        let Some(ok) = self.last_ok else {
            return;
        };
        let silent = ok.elapsed();
        for (key, &(pgid, after)) in &self.tasks {
            if silent > after && pgid > 0 && self.killed.insert(key.clone()) {
                // SAFETY: signalling the process group of a task this agent started and has
                // not reaped yet.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                eprintln!(
                    "qm agent: fenced task {} of job {} (attempt {}): no word from the server for {:.1} s",
                    key.task,
                    key.job,
                    key.attempt,
                    silent.as_secs_f64()
                );
            }
        }
    }
}

/// The server's addresses (several where servers share a PostgreSQL database and one
/// leads), and the one in use: on a failure to connect, or an answer that it is not the
/// leader (a standby's 503), the next one is tried at the next call.
pub struct Servers {
    urls: Vec<String>,
    at: std::sync::atomic::AtomicUsize,
}

impl Servers {
    /// From a comma-separated list of URLs.
    pub fn new(list: &str) -> Servers {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Servers {
            urls,
            at: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The address in use, and its index for [`Self::failed`].
    fn base(&self) -> (usize, &str) {
        let i = self.at.load(Ordering::SeqCst) % self.urls.len().max(1);
        (i, self.urls.get(i).map_or("", String::as_str))
    }

    /// The address at `i` failed: move on to the next, unless another call already did.
    fn failed(&self, i: usize) {
        if self.urls.len() > 1 {
            let next = (i + 1) % self.urls.len();
            let _ = self
                .at
                .compare_exchange(i, next, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Whether an answer means that this address is not the one to talk to now.
    fn move_on(e: &ureq::Error) -> bool {
        matches!(e, ureq::Error::Transport(_) | ureq::Error::Status(503, _))
    }
}

struct Client {
    servers: Arc<Servers>,
    agent: ureq::Agent,
}

impl Client {
    fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> Result<R, String> {
        // A whole call, answer included, within POST_TIMEOUT: a heartbeat stuck on a cut
        // link must not hold up reaping, kills and the next beat for the long poll's 70 s.
        let (i, base) = self.servers.base();
        self.agent
            .post(&format!("{base}{path}"))
            .timeout(POST_TIMEOUT)
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(body)
            .map_err(|e| {
                if Servers::move_on(&e) {
                    self.servers.failed(i);
                }
                describe(e)
            })?
            .into_json()
            .map_err(|e| e.to_string())
    }
}

/// Says at start whom tasks will run as: an agent that is not root cannot run a task as the
/// user its job names.
fn say_who_tasks_run_as(allow_root: bool) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        let name = std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}"));
        eprintln!(
            "qm agent: running as {name} (uid {uid}), not root: every task runs as {name}, whatever user its job names"
        );
    } else if allow_root {
        eprintln!("qm agent: running as root with --allow-root-tasks: a task whose job names no existing non-root user runs as root");
    } else {
        eprintln!("qm agent: running as root: each task runs as the existing non-root user its job names, and fails otherwise");
    }
}

/// Registers the node with the credential the agent chose for it: the one in its credential
/// file, or a new random one, saved (readable by the agent's user alone) before it is first
/// sent. It goes as the bearer token (the same node coming back) and, where the server does
/// not know it yet, as the proposal beside the join token. Registering again with the same
/// credential changes nothing, so an answer lost on the way never locks the node out.
fn register_node(
    client: &Client,
    cfg: &AgentConfig,
    req: &RegisterRequest,
    cred_file: &std::path::Path,
) -> Result<String, String> {
    let saved = std::fs::read_to_string(cred_file)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mine = match saved {
        Some(c) => c,
        None => {
            let c =
                new_credential().map_err(|e| format!("qm agent: cannot make a credential: {e}"))?;
            write_private(cred_file, &c)
                .map_err(|e| format!("qm agent: cannot save {}: {e}", cred_file.display()))?;
            c
        }
    };
    let req = RegisterRequest {
        credential: Some(mine.clone()),
        ..req.clone()
    };
    let r = match client.post::<_, RegisterResponse>("/agent/v1/register", &mine, &req) {
        Err(e) if e.starts_with("HTTP 401") => {
            let join = cfg.join_token.as_deref().ok_or_else(|| {
                format!(
                    "qm agent: node {} has no credential the server knows and no join token; pass --join-token-file",
                    cfg.name
                )
            })?;
            client.post::<_, RegisterResponse>("/agent/v1/register", join, &req)?
        }
        other => other?,
    };
    if r.credential != mine {
        write_private(cred_file, &r.credential)
            .map_err(|e| format!("qm agent: cannot save {}: {e}", cred_file.display()))?;
    }
    Ok(r.credential)
}

/// A new credential: `qmn_` and 40 hex digits (160 random bits from the kernel).
fn new_credential() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("qmn_{hex}"))
}

/// Writes a secret to a file only its owner may read or write (0600 from its creation).
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => {
            format!("HTTP {code}: {}", r.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// Runs the agent until `stop` is set, then kills its tasks (SIGTERM, then SIGKILL after
/// their grace) and returns.
pub fn run(
    cfg: AgentConfig,
    probe: Box<dyn GpuProbe>,
    stop: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    let logs = cfg.data_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| AgentError(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    // Task logs are for their owners and the agent alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError(format!("cannot restrict {}: {e}", logs.display())))?;
    }
    // Batch scripts, each its task's own file: the folder may be passed through (a task's
    // user opens its own script by name) but not listed. Those of an earlier life go: their
    // tasks are ended below, and a running interpreter keeps its open file.
    let scripts = cfg.data_dir.join("scripts");
    let _ = std::fs::remove_dir_all(&scripts);
    std::fs::create_dir_all(&scripts)
        .map_err(|e| AgentError(format!("cannot create {}: {e}", scripts.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&scripts, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| AgentError(format!("cannot restrict {}: {e}", scripts.display())))?;
    }
    say_who_tasks_run_as(cfg.allow_root_tasks);
    let http = http_agent(
        cfg.ca.as_deref(),
        Duration::from_secs(2),
        Duration::from_secs(70),
    )
    .map_err(AgentError)?;
    let servers = Arc::new(Servers::new(&cfg.server));
    if servers.urls.is_empty() {
        return Err(AgentError(
            "no server address: give --server URL (several, comma-separated, for servers that share a database)".into(),
        ));
    }
    let client = Client {
        servers: servers.clone(),
        agent: http.clone(),
    };
    let gpus = probe.gpus();
    let model = gpus
        .first()
        .map_or_else(|| "SIM".to_string(), |g| g.model.clone());
    let register = RegisterRequest {
        name: cfg.name.clone(),
        gpus: gpus.len() as u32,
        gpu_model: model,
        gpu_mem_mib: gpus.first().map_or(0, |g| g.mem_mib),
        cpu_milli: cfg.cpu_milli,
        mem_mib: cfg.mem_mib,
        labels: cfg.labels.clone(),
        topology: cfg.topology.clone(),
        address: cfg.address.clone(),
        credential: None,
    };
    // Register, retrying until the server answers (it may still be starting).
    let cred_file = cfg.data_dir.join("credential");
    let fence: Arc<std::sync::Mutex<Fence>> = Arc::default();
    let credential = loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let sent = Instant::now();
        match register_node(&client, &cfg, &register, &cred_file) {
            Ok(c) => {
                fence.lock().expect("fence").last_ok = Some(sent);
                break c;
            }
            Err(e) if e.starts_with("HTTP 4") || e.starts_with("qm agent") => {
                return Err(AgentError(format!(
                    "the server refused to register this node: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let credential = Arc::new(std::sync::Mutex::new(credential));
    {
        let (fence, stop) = (fence.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                fence.lock().expect("fence").check();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    // Commands arrive on a long-polling thread.
    let (tx, rx) = mpsc::channel::<Command>();
    let (poll_servers, poll_cred, poll_stop) = (servers.clone(), credential.clone(), stop.clone());
    let reregister = Arc::new(AtomicBool::new(false));
    let poll_rereg = reregister.clone();
    std::thread::spawn(move || {
        let agent = http;
        while !poll_stop.load(Ordering::SeqCst) {
            let token = poll_cred.lock().expect("credential").clone();
            let (i, base) = poll_servers.base();
            let r = agent
                .get(&format!("{base}/agent/v1/commands?wait_s=20"))
                .set("Authorization", &format!("Bearer {token}"))
                .call();
            if let Err(e) = &r {
                if Servers::move_on(e) {
                    poll_servers.failed(i);
                }
            }
            match r {
                Ok(resp) => match resp.into_json::<Commands>() {
                    Ok(c) => {
                        for cmd in c.commands {
                            if tx.send(cmd).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                },
                Err(ureq::Error::Status(401, _)) => {
                    poll_rereg.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    });
    // Tasks of an earlier life of this agent cannot be supervised (they are not its
    // children): end them; the server requeues their jobs. Only groups whose leader is still
    // the very process it started (same boot, same start time): after a reboot or a reused
    // process id, a stranger is left alone.
    let ledger = cfg.data_dir.join("tasks.json");
    if let Ok(text) = std::fs::read_to_string(&ledger) {
        let old: Vec<proc::ProcId> = serde_json::from_str(&text).unwrap_or_default();
        for left in old.into_iter().filter(|p| p.pid > 0) {
            if proc::proc_id(left.pid).as_ref() == Some(&left) {
                // SAFETY: signalling a process group this agent created in an earlier
                // life, its leader checked to be that very process.
                unsafe { libc::kill(-left.pid, libc::SIGKILL) };
            } else {
                eprintln!(
                    "qm agent: process {} of an earlier life is gone or is another process now; left alone",
                    left.pid
                );
            }
        }
    }
    let save_ledger = |tasks: &BTreeMap<TaskKey, Task>| {
        let ids: Vec<proc::ProcId> = tasks.values().filter_map(Task::ident).collect();
        let _ = std::fs::write(&ledger, serde_json::to_string(&ids).unwrap_or_default());
    };
    let mut tasks: BTreeMap<TaskKey, Task> = BTreeMap::new();
    // Tasks this node has launched, in this life and the earlier ones (the file `launched`,
    // one `job task attempt` per line, appended at each launch): a launch sent again (after a
    // server restart) of a task already run, or killed with an earlier life, is not run a
    // second time; the server counts a task that vanished as lost, and says so. The lowest
    // keys are dropped past FINISHED_KEPT.
    let launched_file = cfg.data_dir.join("launched");
    let mut finished = launched_before(&launched_file);
    save_ledger(&tasks);
    let mut exited: Vec<TaskExit> = Vec::new();
    let mut last_beat = Instant::now() - Duration::from_secs(10);
    let clk = proc::clock_ticks();
    loop {
        if stop.load(Ordering::SeqCst) {
            fence.lock().expect("fence").tasks.clear();
            for t in tasks.values_mut() {
                t.terminate(Duration::from_secs(5));
            }
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until && tasks.values_mut().any(|t| t.poll().is_none()) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
        if reregister.swap(false, Ordering::SeqCst) {
            match register_node(&client, &cfg, &register, &cred_file) {
                Ok(c) => *credential.lock().expect("credential") = c,
                Err(e) if e.starts_with("HTTP 4") || e.starts_with("qm agent") => {
                    eprintln!("qm agent: cannot register again: {e}");
                }
                Err(_) => {}
            }
        }
        let mut urgent = false;
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Launch(l) => {
                    // A launch sent again (after a server restart) of a task this agent runs
                    // or has run changes nothing.
                    if tasks.contains_key(&l.key) || finished.contains(&l.key) {
                        continue;
                    }
                    note_launched(&launched_file, &l.key);
                    match launch(&cfg, &l) {
                        Ok(t) => {
                            if let Some(ms) = l.fence_after_ms {
                                fence
                                    .lock()
                                    .expect("fence")
                                    .tasks
                                    .insert(l.key.clone(), (t.pgid(), Duration::from_millis(ms)));
                            }
                            tasks.insert(l.key.clone(), t);
                        }
                        Err(e) => {
                            let log = cfg.data_dir.join("logs").join(log_name(&l.key));
                            let _ = std::fs::write(
                                &log,
                                format!("qm agent: cannot start the task: {e}\n"),
                            );
                            tasks.insert(l.key.clone(), Task::failed(log, e));
                        }
                    }
                    save_ledger(&tasks);
                    urgent = true;
                }
                Command::Kill { key, grace_s } => {
                    if let Some(t) = tasks.get_mut(&key) {
                        t.terminate(Duration::from_secs(grace_s));
                    }
                }
            }
        }
        let token = credential.lock().expect("credential").clone();
        // Escalate kills and reap, under the fence's lock (a fenced group is signalled only
        // before its leader is reaped); then upload output, without it.
        let mut codes = BTreeMap::new();
        {
            let mut fence = fence.lock().expect("fence");
            for (key, t) in tasks.iter_mut() {
                t.escalate();
                if let Some(code) = t.poll() {
                    fence.tasks.remove(key);
                    codes.insert(key.clone(), code);
                }
            }
        }
        let mut done = Vec::new();
        for (key, t) in tasks.iter_mut() {
            upload(&client, &token, key, t);
            if let Some(&code) = codes.get(key) {
                if t.fully_uploaded() {
                    done.push((key.clone(), code));
                }
            }
        }
        for (key, code) in done {
            let fenced = fence.lock().expect("fence").killed.remove(&key);
            let message = tasks.remove(&key).and_then(|t| t.why());
            finished.insert(key.clone());
            if finished.len() > FINISHED_KEPT {
                let oldest = finished.iter().next().cloned();
                if let Some(k) = oldest {
                    finished.remove(&k);
                }
            }
            exited.push(TaskExit {
                key,
                code,
                message,
                fenced,
            });
            urgent = true;
            save_ledger(&tasks);
        }
        if urgent || last_beat.elapsed() >= Duration::from_secs(1) {
            let util = tasks
                .iter_mut()
                .filter_map(|(k, t)| {
                    let pct = probe.utilisation(&t.gpus).or_else(|| t.cpu_pct(clk))?;
                    Some(TaskUtil {
                        key: k.clone(),
                        pct,
                    })
                })
                .collect();
            let hb = Heartbeat {
                running: tasks.keys().cloned().collect(),
                exited: exited.clone(),
                util,
            };
            let sent = Instant::now();
            match client.post::<_, qm_proto::HeartbeatAck>("/agent/v1/heartbeat", &token, &hb) {
                Ok(_) => {
                    exited.clear();
                    fence.lock().expect("fence").last_ok = Some(sent);
                }
                Err(e) if e.starts_with("HTTP 401") => reregister.store(true, Ordering::SeqCst),
                Err(_) => {} // The server is away: keep the exits for the next beat.
            }
            last_beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tasks launched in earlier lives (the last FINISHED_KEPT), the file rewritten with just
/// those.
fn launched_before(path: &std::path::Path) -> std::collections::BTreeSet<TaskKey> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut keys: Vec<TaskKey> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some(TaskKey {
                job: f.next()??,
                task: u32::try_from(f.next()??).ok()?,
                attempt: u32::try_from(f.next()??).ok()?,
            })
        })
        .collect();
    if keys.len() > FINISHED_KEPT {
        keys.drain(..keys.len() - FINISHED_KEPT);
        let kept: String = keys
            .iter()
            .map(|k| format!("{} {} {}\n", k.job, k.task, k.attempt))
            .collect();
        let _ = std::fs::write(path, kept);
    }
    keys.into_iter().collect()
}

/// Appends a launched task to the file of launched tasks.
fn note_launched(path: &std::path::Path, key: &TaskKey) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{} {} {}", key.job, key.task, key.attempt);
    }
}

fn log_name(key: &TaskKey) -> String {
    format!("{}-{}-{}.log", key.job, key.task, key.attempt)
}

fn launch(cfg: &AgentConfig, l: &Launch) -> Result<Task, String> {
    let log = cfg.data_dir.join("logs").join(log_name(&l.key));
    let gpus = l
        .env
        .get("CUDA_VISIBLE_DEVICES")
        .map(|v| v.split(',').filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let who = proc::identity(
        root,
        l.user.as_deref(),
        proc::user,
        cfg.allow_root_tasks,
        &cfg.name,
    )?;
    Task::spawn(l, &log, &cfg.data_dir.join("scripts"), gpus, &who)
}

fn upload(client: &Client, token: &str, key: &TaskKey, t: &mut Task) {
    let Some((offset, bytes)) = t.unsent() else {
        return;
    };
    // The bytes as they are: the offset moves by exactly what was read.
    let n = bytes.len() as u64;
    let chunk = LogChunk {
        key: key.clone(),
        offset,
        data: String::new(),
        data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
    };
    if client
        .post::<_, qm_proto::LogAck>("/agent/v1/logs", token, &chunk)
        .is_ok()
    {
        t.sent(offset + n);
    }
}
