//! `qm up`, `qm server` and `qm agent`: the processes of a Quartermaster installation.
//!
//! `qm up` runs everything on this machine: the server with its SQLite file in the data
//! directory, and a local agent as a child process (`qm agent`), so that a crash of the server
//! leaves the agent and its tasks running; a restarted `qm up` finds the live agent by its pid
//! file and does not start a second one. The first start prints an admin token once and saves
//! it, with the API address, in `DATA_DIR/client.json` for the CLI.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use qm_server::{Server, ServerConfig};
use qm_store::SqliteStore;

use crate::client::{write_private, ClientFile};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the database, tokens and task logs live.
    #[arg(long, default_value = ".qm")]
    data_dir: PathBuf,
    /// The API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: String,
    /// Simulated GPUs for the local agent when the machine has no NVIDIA GPU (or to force
    /// simulation).
    #[arg(long)]
    gpus: Option<u32>,
    /// Seconds without a heartbeat before a node is marked down.
    #[arg(long, default_value_t = 30)]
    node_timeout_s: u64,
    #[command(flatten)]
    sched: SchedArgs,
}

/// Scheduler settings a deployment may change.
#[derive(Args, Debug, Clone)]
pub struct SchedArgs {
    /// A job whose GPUs stay below --idle-threshold-pct for this long is idle.
    #[arg(long, default_value_t = 1800)]
    idle_window_s: u64,
    #[arg(long, default_value_t = 5)]
    idle_threshold_pct: u8,
    /// Jobs that have waited longer than this many seconds go before all younger work of
    /// their class and priority, by age alone, instead of by their teams' fair-share
    /// standing. [default: none; see ARCHITECTURE.md, "Fair share, not age, orders waiting
    /// jobs", before setting one]
    #[arg(long, value_name = "SECONDS")]
    starvation_wait_s: Option<u64>,
    /// Events between snapshots of the state (a restart replays only the events after the
    /// last one).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Most output kept per task, in MiB; what a task writes beyond it is dropped, with a
    /// line in its log that says so.
    #[arg(long, default_value_t = 64)]
    max_log_mib: u64,
    /// The largest log chunk an agent may send at once, in KiB (1 to 1024); agents send at
    /// most 256 KiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_log_chunk_kib: u64,
    /// Most jobs one user may have pending; a submission beyond it is refused (429).
    #[arg(long, default_value_t = 10_000)]
    max_pending_per_user: usize,
    /// Most jobs one team may have pending; a submission beyond it is refused (429).
    #[arg(long, default_value_t = 50_000)]
    max_pending_per_team: usize,
    /// Members see only their own teams' jobs (in lists, the dashboard and by id); without
    /// it they see other teams' jobs without command, environment, directory or logs.
    #[arg(long)]
    private_jobs: bool,
    /// How long an ended job stays in memory (90m, 24h, 7d); after it, `qm show` and
    /// `qm jobs --all` read its record from the store.
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = retention)]
    retain_ended: u64,
    /// At most this many ended jobs stay in memory (the most recently ended), however
    /// recent: what bounds the server's memory however many jobs pass through.
    #[arg(long, default_value_t = 10_000)]
    retain_ended_max: usize,
    /// How long task output is kept after its job ended (and left memory); checked hourly.
    #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = retention)]
    retain_logs: u64,
    /// How often each team's use (guaranteed, used, borrowed, lent, idle GPUs) is sampled
    /// into the store, for `qm report` and the dashboard's history.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = positive_duration)]
    usage_every: u64,
    /// How long usage samples are kept (`qm report --since` reaches back this far).
    #[arg(long, default_value = "400d", value_name = "DURATION", value_parser = positive_duration)]
    retain_usage: u64,
}

/// A positive duration in seconds.
fn positive_duration(text: &str) -> Result<u64, String> {
    match retention(text)? {
        0 => Err(format!(
            "{text:?} is zero; give a positive duration such as 5m"
        )),
        s => Ok(s),
    }
}

/// A non-negative duration in seconds.
fn retention(text: &str) -> Result<u64, String> {
    let s = crate::client::duration_s(text)?;
    u64::try_from(s).map_err(|_| format!("{text:?} is negative; give a duration such as 24h"))
}

impl SchedArgs {
    fn config(&self) -> qm_core::SchedulerConfig {
        qm_core::SchedulerConfig {
            idle_window_s: self.idle_window_s,
            idle_threshold_pct: self.idle_threshold_pct,
            starvation_wait_s: self.starvation_wait_s,
            ..qm_core::SchedulerConfig::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the cluster's state lives: `sqlite:PATH`, or `postgres://USER@HOST[:PORT]/DB`
    /// (the password from --db-password-file or PGPASSWORD, never the command line).
    #[arg(long)]
    db: String,
    /// A file holding the PostgreSQL password (its first line), readable by its owner alone.
    #[arg(long, value_name = "PATH")]
    db_password_file: Option<PathBuf>,
    /// The private CA (PEM) that signed the database's certificate, for a URL with
    /// `?sslmode=require` (default: the public web roots).
    #[arg(long, value_name = "FILE")]
    db_ca: Option<PathBuf>,
    /// On PostgreSQL, servers share the database and one leads: its lease lasts this long
    /// unless renewed (every quarter of it). A standby takes over once it lapses.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    lease_s: f64,
    #[arg(long, default_value = "0.0.0.0:8420")]
    listen: String,
    /// How clients and agents reach this server, e.g. http://qm-1.example:8420: a standby
    /// names the leader by it (default: this host's name and the --listen port, https with
    /// --tls-cert).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    #[arg(long, default_value_t = 30)]
    node_timeout_s: u64,
    /// Serve HTTPS with this certificate chain (PEM, the server's first); with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); with --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    sched: SchedArgs,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The server, e.g. http://10.0.0.1:8420.
    #[arg(long)]
    server: String,
    /// A file holding a join token (see `qm admin token create --role join`), readable by
    /// its owner alone (mode 0600), or `-` to read it from standard input. Needed to register
    /// a new node; a node registered before comes back with its own credential, kept in
    /// DATA_DIR/credential. Never an argument or a variable: tasks must not see it.
    #[arg(long, value_name = "PATH")]
    join_token_file: Option<PathBuf>,
    /// Run tasks as root where a job names no existing non-root user (an agent running as
    /// root refuses such tasks otherwise). For single-user machines such as `qm up`'s.
    #[arg(long)]
    allow_root_tasks: bool,
    /// Simulated GPUs (default: this machine's NVIDIA GPUs, else 8 simulated ones).
    #[arg(long)]
    gpus: Option<u32>,
    /// Topology and other labels, e.g. rack=r7,pod=p1 (`pod` and `rack` form the topology).
    #[arg(long, default_value = "")]
    labels: String,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where task logs go.
    #[arg(long, default_value = ".qm-agent")]
    data_dir: PathBuf,
    /// How other nodes reach this one (a gang's MASTER_ADDR when its first task runs here);
    /// default: the address this host uses to reach the server, else its primary
    /// non-loopback address (said at start).
    #[arg(long)]
    address: Option<String>,
    /// The private CA (PEM) that signed an `https://` server's certificate (default: the
    /// public web roots).
    #[arg(long = "server-ca", value_name = "FILE")]
    server_ca: Option<PathBuf>,
}

fn open_server(
    store: Box<dyn qm_store::Store>,
    node_timeout_s: u64,
    sched: &SchedArgs,
) -> Result<Arc<Server>, Box<dyn Error>> {
    let config = ServerConfig {
        node_timeout_s,
        snapshot_every: sched.snapshot_every.max(1),
        max_log_bytes: sched.max_log_mib.max(1) << 20,
        max_log_chunk: (sched.max_log_chunk_kib as usize) << 10,
        max_pending_per_user: sched.max_pending_per_user,
        max_pending_per_team: sched.max_pending_per_team,
        retain_ended_s: sched.retain_ended,
        retain_ended_max: sched.retain_ended_max,
        retain_logs_s: sched.retain_logs,
        private_jobs: sched.private_jobs,
        usage_every_s: sched.usage_every.max(1),
        retain_usage_s: sched.retain_usage,
        log_refusals: true,
        scheduler: sched.config(),
    };
    Server::open(store, config).map_err(|e| format!("cannot open the server: {e:?}").into())
}

/// Connects to PostgreSQL and waits, as a standby, until this server holds the database's
/// lease; then keeps renewing it beside the server, and exits the moment it cannot (a
/// standby has taken over, or the database has been out of reach for the whole lease).
/// Every write of the returned store is fenced by the lease's term.
fn lead(
    args: &ServerArgs,
    access: &qm_store::DbAccess,
    gate: &qm_server::standby::Gate,
) -> Result<Box<dyn qm_store::Store>, Box<dyn Error>> {
    if !(args.lease_s >= 1.0 && args.lease_s <= 3600.0) {
        return Err(format!("--lease-s {}: give 1 to 3600 seconds", args.lease_s).into());
    }
    let target = qm_store::PgTarget {
        url: args.db.clone(),
        password: access.password.clone(),
        ca: access.ca.clone(),
    };
    let store =
        qm_store::PgStore::connect(&target).map_err(|e| format!("--db {}: {e}", args.db))?;
    let holder = format!(
        "{} ({} on {}, pid {})",
        advertised(args),
        args.listen,
        hostname(),
        std::process::id()
    );
    let ttl = args.lease_s;
    let mut said: Option<i64> = None;
    let term = loop {
        match store.lead(&holder, ttl)? {
            Ok(term) => break term,
            Err(leader) => {
                gate.leader_is(Some(qm_server::standby::LeaderSeen {
                    holder: leader.holder.clone(),
                    term: leader.term,
                }));
                if said != Some(leader.term) {
                    println!(
                        "qm server: standby: {} leads (term {}); taking over once its lease lapses",
                        leader.holder, leader.term
                    );
                    said = Some(leader.term);
                }
                std::thread::sleep(Duration::from_secs_f64((ttl / 5.0).min(1.0)));
            }
        }
    };
    println!("qm server: leading (term {term}), lease {ttl} s");
    let renewer = store.handle();
    std::thread::Builder::new()
        .name("qm-lease".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs_f64(ttl / 4.0));
            if let Err(e) = renewer.renew(ttl) {
                eprintln!("qm server: fatal: {e}; exiting, since another server may lead now");
                std::process::exit(75);
            }
        })?;
    Ok(Box::new(store))
}

/// The address other nodes can reach this one at, and how it was found: the local address
/// of a route to the server (the interface the cluster's traffic uses), else of the default
/// route, else loopback. UDP `connect` only chooses the route: nothing is sent.
fn reachable_address(server: &str) -> (String, &'static str) {
    use std::net::{ToSocketAddrs, UdpSocket};
    let local_via = |to: std::net::SocketAddr| -> Option<std::net::IpAddr> {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).ok()?;
        s.connect(to).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    };
    let host_port = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let with_port = if has_port {
        host_port
    } else {
        format!("{host_port}:443")
    };
    if let Some(ip) = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find_map(local_via))
    {
        return (ip.to_string(), "its route to the server");
    }
    let default_route: std::net::SocketAddr = ([192, 0, 2, 1], 9).into();
    if let Some(ip) = local_via(default_route) {
        return (ip.to_string(), "its primary address");
    }
    (
        "127.0.0.1".into(),
        "no other address found: a gang spread over several nodes cannot use it",
    )
}

/// Reads a join token from a file only its owner may read, or from standard input (`-`).
fn read_join_token(path: &Path) -> Result<String, Box<dyn Error>> {
    let text = if path == Path::new("-") {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the join token from standard input: {e}"))?;
        line
    } else {
        return read_secret_file(path, "the join token file");
    };
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err("the join token read from standard input is empty".into());
    }
    Ok(token)
}

/// The first line of a file that holds a secret and may be read by its owner alone.
fn read_secret_file(path: &Path, what: &str) -> Result<String, Box<dyn Error>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} may be read by others (mode {mode:o}); `chmod 600 {}` first",
            path.display(),
            path.display()
        )
        .into());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(format!("{what} {} is empty", path.display()).into());
    }
    Ok(secret)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` is a live `qm agent` (not a zombie, not a reused pid).
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_agent = cmdline.split(|&b| b == 0).any(|arg| arg == b"agent");
    !zombie && is_agent
}

/// Serves `app` on `listener` until `on_stop`, beside `server`'s scheduling loop once there
/// is a server (a standby has none until it leads; `server` says when it does).
async fn serve<L>(
    app: axum::Router,
    server: impl std::future::Future<Output = Arc<Server>>,
    listener: L,
    on_stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use std::future::IntoFuture as _;
    let mut served = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(on_stop)
            .into_future(),
    );
    let server = tokio::select! {
        s = server => s,
        r = &mut served => {
            r??;
            return Ok(());
        }
    };
    let mut looped = tokio::spawn(server.run());
    tokio::select! {
        r = &mut served => {
            looped.abort();
            r??;
        }
        // The loop never returns: it ended in a panic, i.e. a broken invariant, and the
        // state may be half changed (its lock is poisoned). Stop rather than serve it.
        ended = &mut looped => {
            let why = match ended {
                Err(e) if e.is_panic() => "it panicked".to_string(),
                Err(e) => e.to_string(),
                Ok(()) => "it returned".to_string(),
            };
            eprintln!("qm server: fatal: the scheduling loop stopped ({why}); exiting so that a restart reloads the stored state");
            std::process::exit(70);
        }
    }
    Ok(())
}

/// The URL this server is reached at (see `--advertise`).
fn advertised(args: &ServerArgs) -> String {
    if let Some(a) = &args.advertise {
        return a.trim_end_matches('/').to_string();
    }
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let (host, port) = args
        .listen
        .rsplit_once(':')
        .unwrap_or((args.listen.as_str(), "8420"));
    let host = match host {
        "0.0.0.0" | "[::]" | "" => hostname(),
        h => h.to_string(),
    };
    format!("{scheme}://{host}:{port}")
}

pub fn up(args: UpArgs) -> Result<(), Box<dyn Error>> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let store = Box::new(SqliteStore::open(&dir.join("qm.db"))?);
    let server = open_server(store, args.node_timeout_s, &args.sched)?;
    let rt = tokio::runtime::Runtime::new()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let join_file = dir.join("join-token");
    if !server.has_admin() {
        let admin = server
            .create_token("admin", "admin", &[])
            .map_err(|e| format!("{e:?}"))?;
        let join = server
            .create_token("local agent", "join", &[])
            .map_err(|e| format!("{e:?}"))?;
        write_private(&join_file, &join)?;
        ClientFile {
            server: url.clone(),
            token: admin.clone(),
        }
        .save(&dir.join("client.json"))?;
        println!(
            "admin token (shown once; saved in {}): {admin}",
            dir.join("client.json").display()
        );
    } else {
        // The address may have changed since the last start.
        let path = dir.join("client.json");
        if let Ok(mut c) = ClientFile::load(&path) {
            c.server = url.clone();
            c.save(&path)?;
        }
    }
    let (snap, replayed) = server.resumed();
    if snap > 0 || replayed > 0 {
        println!("qm up: resumed from a snapshot at event {snap} and {replayed} events after it");
    }
    println!("qm up: API at {url}, data in {}", dir.display());
    // The local agent: a child process, unless one for this data directory still runs.
    let pid_file = dir.join("agent.pid");
    let running = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| alive(p));
    let mut child = None;
    match running {
        Some(pid) => println!("qm up: the local agent (pid {pid}) is still running; it reconnects"),
        None => {
            let mut cmd = std::process::Command::new(std::env::current_exe()?);
            cmd.arg("agent")
                .arg("--server")
                .arg(&url)
                .arg("--data-dir")
                .arg(dir.join("agent"))
                .arg("--name")
                .arg(hostname())
                // One machine: its tasks reach each other on loopback.
                .arg("--address")
                .arg("127.0.0.1")
                .arg("--join-token-file")
                .arg(&join_file)
                // One person's machine: its jobs run as whoever started `qm up`, root too.
                .arg("--allow-root-tasks");
            if let Some(g) = args.gpus {
                cmd.arg("--gpus").arg(g.to_string());
            }
            // Its own process group: Ctrl-C in the terminal reaches `qm up`, which stops it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let c = cmd
                .spawn()
                .map_err(|e| format!("cannot start the local agent: {e}"))?;
            std::fs::write(&pid_file, c.id().to_string())?;
            println!("qm up: local agent started (pid {})", c.id());
            child = Some(c);
        }
    }
    let stopper = server.clone();
    let agent_pid = child.as_ref().map(|c| c.id() as i32).or(running);
    let app = qm_server::app(server.clone());
    rt.block_on(serve(
        app,
        std::future::ready(server),
        listener,
        async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("qm up: stopping");
            // Running jobs go back to the queue whole; they start again on the next `qm up`.
            let _ = stopper.requeue_all("qm up stopped");
            // The agent ends its tasks and closes its long poll, so the server can stop.
            if let Some(pid) = agent_pid {
                // SAFETY: signalling the agent we started (or found by its pid file).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        },
    ))
    .map_err(|e| -> Box<dyn Error> { e })?;
    if let Some(mut c) = child {
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

pub fn server(args: ServerArgs) -> Result<(), Box<dyn Error>> {
    let password = match &args.db_password_file {
        Some(path) => Some(read_secret_file(path, "the database password file")?),
        None => std::env::var("PGPASSWORD").ok(),
    };
    let access = qm_store::DbAccess {
        password,
        ca: args.db_ca.clone(),
    };
    let shared = args.db.starts_with("postgres://") || args.db.starts_with("postgresql://");
    let rt = tokio::runtime::Runtime::new()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // The port is open from the start: while this server stands by, it answers that it does
    // and who leads (the gate); once it leads, the gate opens onto the API.
    let gate = qm_server::standby::Gate::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Arc<Server>>();
    let ready = async move {
        match ready_rx.await {
            Ok(s) => s,
            // Never ready (the start failed): serve the gate until stopped.
            Err(_) => std::future::pending().await,
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let scheme = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = crate::tls::server_config(cert, key)?;
            let _guard = rt.enter();
            let tls = crate::tls::TlsListener::new(listener, config)?;
            let serving = rt.spawn(serve(gate.router(), ready, tls, stop));
            ("https", serving)
        }
        _ => {
            let serving = rt.spawn(serve(gate.router(), ready, listener, stop));
            ("http", serving)
        }
    };
    let (scheme, serving) = scheme;
    let store = if shared {
        println!("qm server: listening at {scheme}://{addr} (advertised as {}), standing by until it leads", advertised(&args));
        lead(&args, &access, &gate)?
    } else {
        qm_store::open(&args.db, &access).map_err(|e| format!("--db {}: {e}", args.db))?
    };
    let server = open_server(store, args.node_timeout_s, &args.sched)?;
    if !server.has_admin() {
        let admin = server
            .create_token("admin", "admin", &[])
            .map_err(|e| format!("{e:?}"))?;
        println!("admin token (shown once): {admin}");
    }
    gate.open(qm_server::app(server.clone()));
    let _ = ready_tx.send(server);
    println!("qm server: API at {scheme}://{addr}");
    rt.block_on(serving)?.map_err(|e| -> Box<dyn Error> { e })
}

pub fn agent(args: AgentArgs) -> Result<(), Box<dyn Error>> {
    let mut labels = std::collections::BTreeMap::new();
    for kv in args.labels.split(',').filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad label {kv:?}; expected key=value, e.g. rack=r7"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let topology = ["pod", "rack"]
        .iter()
        .filter_map(|k| labels.get(*k).cloned())
        .collect();
    let probe: Box<dyn qm_agent::GpuProbe> = match args.gpus {
        Some(n) => Box::new(qm_agent::Simulated { count: n }),
        None => match qm_agent::NvidiaSmi::detect() {
            Some(p) => Box::new(p),
            None => Box::new(qm_agent::Simulated { count: 8 }),
        },
    };
    let (cpu_milli, mem_mib) = qm_agent::machine_resources();
    // A daemon: it outlives the terminal or parent that started it (tasks get the default
    // SIGHUP back).
    // SAFETY: setting a signal disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // SIGTERM and SIGINT stop the agent (which terminates its tasks).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // The join token first: a node that cannot read it says so before anything else.
    let join_token = args
        .join_token_file
        .as_deref()
        .map(read_join_token)
        .transpose()?;
    let address = match args.address {
        Some(a) => a,
        None => {
            let (a, how) = reachable_address(&args.server);
            eprintln!(
                "qm agent: other nodes reach this one at {a} ({how}; --address to choose another)"
            );
            a
        }
    };
    let cfg = qm_agent::AgentConfig {
        server: args.server,
        join_token,
        allow_root_tasks: args.allow_root_tasks,
        ca: args.server_ca,
        name: args.name.unwrap_or_else(hostname),
        labels,
        topology,
        data_dir: args.data_dir,
        address,
        cpu_milli,
        mem_mib,
    };
    qm_agent::run(cfg, probe, stop)?;
    Ok(())
}
