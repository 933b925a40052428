//! The `qm up` harness: a server started in a temporary directory, the CLI run against it,
//! waits on job states, and raw HTTP for the API's own checks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const QM: &str = env!("CARGO_BIN_EXE_qm");

pub struct Up {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Child,
    /// What `qm up` printed before its address.
    pub banner: Vec<String>,
}

/// A port for a server to listen on: one no other test of this run was given, outside the
/// kernel's range of ephemeral ports (32768-60999 on Linux). A port from `bind(0)` comes
/// from that very range, where any outgoing connection (an agent's, the store's) made
/// before the server binds can take it, and the server then fails to start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (std::process::id().wrapping_mul(97).wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Up {
    pub fn start(name: &str, extra: &[&str]) -> Up {
        let dir = std::env::temp_dir().join(format!("qm-up-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Up::start_in(dir, free_port(), extra)
    }

    pub fn start_in(dir: PathBuf, port: u16, extra: &[&str]) -> Up {
        let data = dir.join(".qm");
        let mut child = Command::new(QM)
            .args(["up", "--data-dir", data.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--gpus", "4"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qm up starts");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let mut banner = Vec::new();
        loop {
            let line = lines.next().expect("qm up prints its address").unwrap();
            if line.contains("API at") {
                break;
            }
            banner.push(line);
        }
        std::thread::spawn(move || for _ in lines {});
        let up = Up {
            dir,
            port,
            child,
            banner,
        };
        up.wait_for(|u| {
            u.json(&["nodes", "--json"])
                .as_array()
                .is_some_and(|a| !a.is_empty())
        });
        up
    }

    /// `kill -9` of the server, then `qm up` again on the same data and address.
    pub fn killed_and_restarted(mut self, extra: &[&str]) -> Up {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        let (dir, port) = (self.dir.clone(), self.port);
        std::mem::forget(self);
        Up::start_in(dir, port, extra)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join(".qm")
    }

    pub fn qm(&self, args: &[&str]) -> std::process::Output {
        Command::new(QM)
            .args(args)
            .env("QM_DATA_DIR", self.data())
            .env_remove("QM_SERVER")
            .env_remove("QM_TOKEN")
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.qm(args);
        assert!(
            out.status.success(),
            "qm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap_or(Value::Null)
    }

    pub fn submit(&self, args: &[&str]) -> u64 {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        self.json(&all)["job"].as_u64().unwrap()
    }

    pub fn job(&self, id: u64) -> Value {
        self.json(&["show", &id.to_string(), "--json"])
    }

    pub fn wait_for(&self, mut done: impl FnMut(&Up) -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out");
    }

    pub fn wait_state(&self, id: u64, state: &str) -> Value {
        let mut last = Value::Null;
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            last = self.job(id);
            if last["state"] == state {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("job {id} never became {state}: {last:#}");
    }

    pub fn token(&self) -> String {
        let c: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data().join("client.json")).unwrap(),
        )
        .unwrap();
        c["token"].as_str().unwrap().to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `qm agent` for this server: 4 simulated GPUs, node `name`, its data in `dir` under
    /// the data directory, the join token from `qm up`'s file; quiet.
    pub fn agent_command(&self, name: &str, dir: &str) -> Command {
        let mut cmd = Command::new(QM);
        cmd.args([
            "agent",
            "--server",
            &self.url(),
            "--gpus",
            "4",
            "--name",
            name,
        ])
        .arg("--data-dir")
        .arg(self.data().join(dir))
        .arg("--join-token-file")
        .arg(self.data().join("join-token"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    }

    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("agent.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child and the agent it started.
        unsafe { libc_kill(pid, 2) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(agent) = self.agent_pid() {
            unsafe { libc_kill(agent, 9) };
        }
    }
}

/// A process the test started, killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn logs(up: &Up, id: u64, task: u32) -> String {
    up.ok(&["logs", &id.to_string(), "--task", &task.to_string()])
}

/// method, path, token, body, expected status, a phrase the message must hold.
pub type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

pub fn http(up: &Up, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = ureq::request(method, &format!("{}{path}", up.url()));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = if body.is_empty() {
        req.call()
    } else {
        req.set("Content-Type", "application/json")
            .send_string(body)
    };
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    }
}

/// `qm server` on a SQLite file in `dir`, listening on `listen`; its admin token on first
/// start.
pub fn start_server(dir: &Path, listen: &str, extra: &[&str]) -> (Proc, Option<String>) {
    start_server_on(
        &format!("sqlite:{}", dir.join("qm.db").display()),
        listen,
        extra,
    )
}

/// `qm server` on the database `db` (a `--db` value), listening on `listen`; its admin token
/// on first start.
pub fn start_server_on(db: &str, listen: &str, extra: &[&str]) -> (Proc, Option<String>) {
    let (p, lines) = spawn_server_on(db, listen, extra);
    let mut admin = None;
    loop {
        let line = lines.recv().expect("the server starts");
        if let Some(t) = line.strip_prefix("admin token (shown once): ") {
            admin = Some(t.trim().to_string());
        }
        if line.contains("API at") {
            break;
        }
    }
    (p, admin)
}

/// `qm server` on the database `db`, listening on `listen` (a standby waits before it
/// does): the process, and its standard output's lines as they come.
pub fn spawn_server_on(db: &str, listen: &str, extra: &[&str]) -> (Proc, Receiver<String>) {
    let mut child = Command::new(QM)
        .arg("server")
        .args(["--db", db])
        .args(["--listen", listen])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Both streams, to the end, so the server never blocks on a full pipe, whether or not
    // anyone still listens; its standard error marked, for a failing test to show.
    forward(child.stdout.take().unwrap(), tx.clone(), "");
    forward(child.stderr.take().unwrap(), tx, "(stderr) ");
    (Proc(child), rx)
}

/// Sends each line read from `stream`, after `mark`, until the stream ends.
fn forward(
    stream: impl std::io::Read + Send + 'static,
    tx: std::sync::mpsc::Sender<String>,
    mark: &'static str,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(format!("{mark}{line}"));
        }
    });
}

/// Waits up to `secs` for a line holding `what`; a failure says what the server printed
/// meanwhile and whether it had exited.
pub fn line_with(rx: &Receiver<String>, what: &str, secs: u64) -> String {
    use std::sync::mpsc::RecvTimeoutError;
    let until = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) && !line.starts_with("(stderr) ") => return line,
            Ok(line) => seen.push(line),
            Err(e) => {
                let how = match e {
                    RecvTimeoutError::Timeout => format!("within {secs} s"),
                    RecvTimeoutError::Disconnected => "before the server exited".to_string(),
                };
                panic!(
                    "no line with {what:?} {how}; it printed:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
}

/// Waits until node `name` is ready, as the API at `url` says.
pub fn node_ready(url: &str, admin: &str, name: &str) {
    wait_until("the node ready", 30, || {
        let (_, nodes) = call(url, admin, "GET", "/api/v1/nodes", None)?;
        nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["name"] == name && x["state"] == "ready"))
            .then_some(())
    });
}

/// `qm agent` with 4 simulated GPUs, node `name`, its data in `dir/agent-NAME`, the join
/// token from `dir/join-token`; in the network namespace `netns` where given.
pub fn start_agent(dir: &Path, url: &str, name: &str, netns: Option<&str>) -> Proc {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, QM]);
            c
        }
        None => Command::new(QM),
    };
    cmd.args([
        "agent",
        "--server",
        url,
        "--gpus",
        "4",
        "--allow-root-tasks",
    ])
    .args(["--name", name])
    .arg("--data-dir")
    .arg(dir.join(format!("agent-{name}")))
    .arg("--join-token-file")
    .arg(dir.join("join-token"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Proc(cmd.spawn().unwrap())
}

/// Team `t` guaranteed `gpus`, and a join token for the agents in `dir/join-token`.
pub fn team_and_join_token(url: &str, admin: &str, dir: &Path, gpus: u32) {
    let api = |path: &str, body: Value| {
        let (s, r) = call(url, admin, "POST", path, Some(body)).expect("the server answers");
        assert_eq!(s, 200, "{r}");
        r
    };
    api(
        "/api/v1/admin/teams",
        serde_json::json!({"name": "t", "guaranteed": gpus}),
    );
    let r = api(
        "/api/v1/admin/tokens",
        serde_json::json!({"name": "agents", "role": "join"}),
    );
    qm_agent::write_private(&dir.join("join-token"), r["token"].as_str().unwrap()).unwrap();
}

/// Polls `f` every 50 ms until it gives a value; fails after `secs` seconds.
pub fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One API call with a 5 s timeout: the status and the JSON answer, or None when the
/// server could not be reached.
pub fn call(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let req = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .request(method, &format!("{url}{path}"))
        .set("Authorization", &format!("Bearer {token}"));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => Some((resp.status(), resp.into_json().unwrap_or(Value::Null))),
        Err(ureq::Error::Status(code, resp)) => {
            Some((code, resp.into_json().unwrap_or(Value::Null)))
        }
        Err(_) => None,
    }
}
