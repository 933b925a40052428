//! `qm up` as users run it: a real server process with its SQLite file, a real agent process
//! with simulated GPUs, real task processes, and the `qm` CLI against them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use qm::cdp;

const QM: &str = env!("CARGO_BIN_EXE_qm");

struct Up {
    dir: PathBuf,
    port: u16,
    child: Child,
    /// What `qm up` printed before its address.
    banner: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Up {
    fn start(name: &str, extra: &[&str]) -> Up {
        let dir = std::env::temp_dir().join(format!("qm-up-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Up::start_in(dir, free_port(), extra)
    }

    fn start_in(dir: PathBuf, port: u16, extra: &[&str]) -> Up {
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

    fn data(&self) -> PathBuf {
        self.dir.join(".qm")
    }

    fn qm(&self, args: &[&str]) -> std::process::Output {
        Command::new(QM)
            .args(args)
            .env("QM_DATA_DIR", self.data())
            .env_remove("QM_SERVER")
            .env_remove("QM_TOKEN")
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.qm(args);
        assert!(
            out.status.success(),
            "qm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap_or(Value::Null)
    }

    fn submit(&self, args: &[&str]) -> u64 {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        self.json(&all)["job"].as_u64().unwrap()
    }

    fn job(&self, id: u64) -> Value {
        self.json(&["show", &id.to_string(), "--json"])
    }

    fn wait_for(&self, mut done: impl FnMut(&Up) -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out");
    }

    fn wait_state(&self, id: u64, state: &str) -> Value {
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

    fn token(&self) -> String {
        let c: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data().join("client.json")).unwrap(),
        )
        .unwrap();
        c["token"].as_str().unwrap().to_string()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn agent_pid(&self) -> Option<i32> {
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

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn logs(up: &Up, id: u64, task: u32) -> String {
    up.ok(&["logs", &id.to_string(), "--task", &task.to_string()])
}

#[test]
fn a_gang_runs_with_the_distributed_environment_in_each_task() {
    let up = Up::start("gang", &[]);
    up.ok(&["admin", "team", "create", "ml", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team", "ml", "--gpus", "2", "--tasks", "2", "--", "sh", "-c",
        "echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE gpus=$CUDA_VISIBLE_DEVICES master=$MASTER_ADDR:$MASTER_PORT job=$QM_JOB_ID task=$QM_TASK_INDEX",
    ]);
    let job = up.wait_state(id, "succeeded");
    assert_eq!(job["tasks"], 2);
    let mut gpus = Vec::new();
    for task in 0..2u32 {
        let out = logs(&up, id, task);
        let port = 20_000 + id % 20_000;
        assert!(
            out.contains(&format!("rank={task} world=2 local={task}/2 ")),
            "{out}"
        );
        assert!(
            out.contains(&format!("master=127.0.0.1:{port} job={id} task={task}")),
            "{out}"
        );
        let g = out
            .split("gpus=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(g.split(',').count(), 2, "two GPUs per task: {out}");
        gpus.push(g);
    }
    assert_ne!(gpus[0], gpus[1], "no GPU given twice");
    let events: Vec<&str> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["queued", "started", "succeeded"]);
}

#[test]
fn a_borrowing_team_is_preempted_when_the_owner_submits() {
    let up = Up::start("reclaim", &[]);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "0"]);
    let borrowed: Vec<u64> = (0..4)
        .map(|_| up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]))
        .collect();
    for &b in &borrowed {
        let j = up.wait_state(b, "running");
        assert_eq!(j["admission"], "borrowed");
    }
    let owner = up.submit(&[
        "--team",
        "owner",
        "--gpus",
        "2",
        "--",
        "sh",
        "-c",
        "echo $CUDA_VISIBLE_DEVICES; sleep 1",
    ]);
    let j = up.wait_state(owner, "succeeded");
    assert_eq!(j["admission"], Value::Null);
    let out = logs(&up, owner, 0);
    let owner_gpus: Vec<&str> = out.trim().split(',').collect();
    assert_eq!(owner_gpus.len(), 2, "{out}");
    // Exactly two borrowed jobs were preempted, and the owner got their GPUs.
    let preempted: Vec<Value> = borrowed
        .iter()
        .map(|&b| up.job(b))
        .filter(|j| j["preemptions"].as_u64() == Some(1))
        .collect();
    assert_eq!(preempted.len(), 2, "two borrowed jobs preempted");
    for p in &preempted {
        let events: Vec<&str> = p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["what"].as_str().unwrap())
            .collect();
        assert!(events.contains(&"stopping"), "{events:?}");
        let detail = p["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["what"] == "stopping")
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(detail.contains(&format!("job {owner}")), "{detail}");
    }
    let why = up.json(&["why", &preempted[0]["id"].to_string(), "--json"]);
    assert!(
        why["state"] == "pending" || why["state"] == "running",
        "{why}"
    );

    // /metrics agrees with the API.
    let (code, _) = http(&up, "GET", "/metrics", None, "");
    assert_eq!(code, 401, "no token, no metrics");
    let resp = ureq::get(&format!("{}/metrics", up.url()))
        .set("Authorization", &format!("Bearer {}", up.token()))
        .call()
        .unwrap();
    assert_eq!(
        resp.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = resp.into_string().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    // A parser independent of the encoder (the `prometheus-parse` crate) reads every line.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads /metrics");
    let g = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|t| t.metric == name && labels.iter().all(|(k, v)| t.labels.get(k) == Some(*v)))
            .map(|t| match &t.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
    };
    let waits = scrape
        .samples
        .iter()
        .find(|t| t.metric == "qm_job_wait_seconds")
        .expect("the wait histogram");
    assert!(matches!(&waits.value, prometheus_parse::Value::Histogram(b) if !b.is_empty()));
    let jobs = up.json(&["jobs", "--json"]);
    let jobs = jobs.as_array().unwrap();
    let running: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "running").collect();
    let gpus_of = |team: &str| -> f64 {
        running
            .iter()
            .filter(|j| j["team"] == team)
            .map(|j| j["gpus"].as_f64().unwrap() * j["tasks"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(g("qm_nodes", &[("state", "ready")]), Some(1.0));
    assert_eq!(g("qm_gpus", &[("model", "SIM")]), Some(4.0));
    assert_eq!(
        g("qm_jobs", &[("state", "running")]),
        Some(running.len() as f64)
    );
    assert_eq!(
        g(
            "qm_gpus_allocated",
            &[("team", "borrower"), ("model", "SIM")]
        )
        .unwrap_or(0.0),
        gpus_of("borrower")
    );
    assert_eq!(
        g(
            "qm_preemptions_total",
            &[("team", "borrower"), ("cause", "reclaim")]
        ),
        Some(2.0)
    );
    let pending = jobs.iter().filter(|j| j["state"] == "pending").count() as f64;
    let by_reason: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "qm_jobs_pending")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(
        by_reason, pending,
        "every pending job counted under one reason"
    );
    assert!(g("qm_job_wait_seconds_count", &[]).unwrap() >= 5.0);
    assert!(g("qm_plan_duration_seconds_count", &[]).unwrap() >= 1.0);
    let node = up.json(&["nodes", "--json"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(g("qm_agent_heartbeats_total", &[("node", &node)]).unwrap() >= 1.0);

    // Every metric the shipped Grafana dashboard queries is exported.
    let grafana = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/quartermaster.json"),
    )
    .unwrap();
    let dash: Value = serde_json::from_str(&grafana).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 10);
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("qm_") {
                // OpenMetrics names a counter's family without the `_total` of its samples.
                let base = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    text.contains(&format!("# TYPE qm_{base} ")),
                    "the Grafana dashboard queries qm_{base}, which /metrics does not export"
                );
            }
        }
    }
}

#[test]
fn a_sleeping_task_is_reported_idle() {
    let up = Up::start("idle", &["--idle-window-s", "2"]);
    up.ok(&["admin", "team", "create", "lab", "--guaranteed", "4"]);
    let id = up.submit(&["--team", "lab", "--gpus", "1", "--", "sleep", "120"]);
    up.wait_state(id, "running");
    up.wait_for(|u| {
        let j = u.job(id);
        j["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "idle")
    });
    let j = up.job(id);
    assert_eq!(j["util_pct"], 0);
    assert!(j["idle_since_s"].is_u64());
    let busy = up.submit(&[
        "--team",
        "lab",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    up.wait_state(busy, "running");
    // Busy means above the idle threshold (5 %); a loaded machine may give the loop far less
    // than a whole core.
    up.wait_for(|u| u.job(busy)["util_pct"].as_u64().is_some_and(|p| p > 5));
    assert!(
        up.job(busy)["idle_since_s"].is_null(),
        "a busy task is not idle"
    );
    up.ok(&["cancel", &busy.to_string()]);
}

#[test]
fn kill_9_of_the_server_loses_nothing_and_reattaches_running_tasks() {
    let up = Up::start("crash", &["--snapshot-every", "3"]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let long = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "sleep 4; echo finished",
    ]);
    let queued = up.submit(&["--team", "t", "--gpus", "4", "--", "true"]);
    up.wait_state(long, "running");
    let (dir, port) = (up.dir.clone(), up.port);
    let agent = up.agent_pid().unwrap();
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL
    up.child.wait().unwrap();
    std::mem::forget(up);
    let up = Up::start_in(dir, port, &["--snapshot-every", "3"]);
    assert_eq!(
        up.agent_pid(),
        Some(agent),
        "the agent kept running; no second one"
    );
    // The restart began from a snapshot (one every 3 events) and kept the job's history.
    assert!(
        up.banner
            .iter()
            .any(|l| l.contains("resumed from a snapshot at event")
                && !l.contains("snapshot at event 0 ")),
        "{:?}",
        up.banner
    );
    let whats: Vec<String> = up.job(long)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(whats[..2], ["queued", "started"], "{whats:?}");
    let j = up.wait_state(long, "succeeded");
    assert_eq!(j["attempt"], 1, "re-attached, not restarted");
    assert_eq!(logs(&up, long, 0).matches("finished").count(), 1);
    // Everything accepted is still there: the job that waited for the GPUs runs after it.
    up.wait_state(queued, "succeeded");
    let teams = up.json(&["teams", "--json"]);
    assert!(teams.as_array().unwrap().iter().any(|t| t["name"] == "t"));
}

/// method, path, token, body, expected status, a phrase the message must hold.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

fn http(up: &Up, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
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

#[test]
fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let up = Up::start("bad", &[]);
    up.ok(&["admin", "team", "create", "a", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "b", "--guaranteed", "2"]);
    let admin = up.token();
    let a_job = up.submit(&["--team", "a", "--gpus", "1", "--", "sleep", "300"]);
    let member_b = up.ok(&[
        "admin", "token", "create", "--name", "bob", "--role", "member", "--team", "b",
    ]);
    let member_b = member_b.trim();
    let before = up.json(&["jobs", "--json"]);
    let cancel_a = format!("/api/v1/jobs/{a_job}/cancel");
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            "{not json".into(),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"nobody","command":["true"]}"#.into(),
            400,
            "nobody",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","gpus":0,"command":["true"]}"#.into(),
            400,
            "0 GPUs",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            r#"{"team":"a","time_limit_s":-5,"command":["true"]}"#.into(),
            400,
            "time_limit_s is -5",
        ),
        (
            "POST",
            "/api/v1/jobs",
            None,
            r#"{"team":"a","command":["true"]}"#.into(),
            401,
            "no token",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("qm_wrong"),
            r#"{"team":"a","command":["true"]}"#.into(),
            401,
            "unknown token",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(member_b),
            r#"{"team":"a","command":["true"]}"#.into(),
            403,
            "team \"a\"",
        ),
        (
            "POST",
            &cancel_a,
            Some(member_b),
            "{}".into(),
            403,
            "team \"a\"",
        ),
        (
            "GET",
            "/api/v1/jobs/999999",
            Some(&admin),
            String::new(),
            404,
            "no job 999999",
        ),
    ];
    for (method, path, token, body, status, says) in &cases {
        let (code, err) = http(&up, method, path, *token, body);
        assert_eq!(code, *status, "{method} {path} {body}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path} {body}: {message}");
    }
    let after = up.json(&["jobs", "--json"]);
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len(),
        "nothing submitted"
    );
    assert_eq!(up.job(a_job)["state"], "running", "nothing cancelled");
    // The CLI exits 1 with the server's message.
    let out = up.qm(&["submit", "--team", "nobody", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    // A member's tasks run as the member, whatever user the request names.
    let (code, r) = http(
        &up,
        "POST",
        "/api/v1/jobs",
        Some(member_b),
        r#"{"team":"b","user":"root","command":["true"]}"#,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(up.job(r["job"].as_u64().unwrap())["user"], "bob");
    let (code, _) = http(&up, "GET", "/api/openapi.json", None, "");
    assert_eq!(code, 401, "the API document needs a token too");
    let (code, doc) = http(&up, "GET", "/api/openapi.json", Some(&admin), "");
    assert_eq!(code, 200);
    assert!(doc["paths"]["/api/v1/jobs"].is_object());
}

#[test]
fn a_silent_node_is_marked_down_and_its_jobs_requeued_whole() {
    let up = Up::start("down", &["--node-timeout-s", "2"]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team", "t", "--gpus", "2", "--tasks", "2", "--", "sleep", "300",
    ]);
    up.wait_state(id, "running");
    let agent = up.agent_pid().unwrap();
    unsafe { libc_kill(agent, 19) }; // SIGSTOP: the agent stops reporting
    let j = up.wait_state(id, "pending");
    let events: Vec<&str> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"requeued"), "{events:?}");
    let nodes = up.json(&["nodes", "--json"]);
    assert_eq!(nodes[0]["state"], "down");
    unsafe { libc_kill(agent, 18) }; // SIGCONT: it reports again
    let j = up.wait_state(id, "running");
    assert_eq!(j["attempt"], 2, "the whole gang started again");
    assert_eq!(up.json(&["nodes", "--json"])[0]["state"], "ready");
    up.ok(&["cancel", &id.to_string()]);
    up.wait_state(id, "cancelled");
}

#[test]
fn a_restarted_agent_ends_the_tasks_it_lost_and_their_jobs_run_again() {
    let up = Up::start("agent-restart", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo attempt $QM_ATTEMPT; sleep 317",
    ]);
    up.wait_state(id, "running");
    let node = up.json(&["nodes", "--json"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let old = up.agent_pid().unwrap();
    unsafe { libc_kill(old, 9) };
    // The task of the dead agent still runs, orphaned; a new agent on the node ends it.
    let join = std::fs::read_to_string(up.data().join("join-token")).unwrap();
    let mut agent = Command::new(QM)
        .args([
            "agent",
            "--server",
            &up.url(),
            "--gpus",
            "4",
            "--name",
            &node,
            "--data-dir",
        ])
        .arg(up.data().join("agent"))
        .env("QM_JOIN_TOKEN", join.trim())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    up.wait_for(|u| u.job(id)["attempt"] == 2 && u.job(id)["state"] == "running");
    let j = up.job(id);
    let events: Vec<&str> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"lost"), "{events:?}");
    up.wait_for(|u| logs(u, id, 0).contains("attempt 2"));
    // Only the new run's task is alive.
    let ps = Command::new("sh")
        .args(["-c", "ps -eo args | grep -c '^sleep 317$'"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "1");
    up.ok(&["cancel", &id.to_string()]);
    up.wait_state(id, "cancelled");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn the_dashboard_shows_jobs_live_and_a_preemption_behind_a_sign_in() {
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let up = Up::start("dash", &[]);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "0"]);
    let mut b = cdp::Browser::launch();
    b.goto(&format!("{}/", up.url()));
    // No token: the sign-in form and no data.
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form",
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    assert_eq!(b.eval("document.querySelector('#nav').hidden"), true);
    let (code, _) = http(&up, "GET", "/api/v1/stream", None, "");
    assert_eq!(code, 401, "the stream needs a token");
    b.screenshot(&shots.join("1-sign-in.png"));
    b.eval("document.querySelector('#token').value = 'qm_wrong'; document.querySelector('#signin-button').click(); true");
    b.wait_for(
        "document.querySelector('#signin-error').textContent.includes('refused')",
        "a refusal",
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    // Sign in.
    let token = up.token();
    b.eval(&format!("document.querySelector('#token').value = '{token}'; document.querySelector('#signin-button').click(); true"));
    b.wait_for(
        "document.querySelector('#live').textContent === 'live'",
        "the live stream",
    );
    b.wait_for("document.querySelector('#c-gpus') && document.querySelector('#c-gpus b').textContent === '4'", "the overview");
    // A job appears pending, then running.
    let busy: Vec<u64> = (0..4)
        .map(|_| up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]))
        .collect();
    let waiting = up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "300"]);
    b.goto(&format!("{}/#/jobs", up.url()));
    let cell = |id: u64| format!("document.querySelector('#job-{id} td:nth-child(3)')");
    b.wait_for(
        &format!("{c} && {c}.textContent === 'pending'", c = cell(waiting)),
        "the job pending",
    );
    b.screenshot(&shots.join("2-pending.png"));
    up.ok(&["cancel", &busy[0].to_string()]);
    b.wait_for(
        &format!("{c} && {c}.textContent === 'running'", c = cell(waiting)),
        "the job running",
    );
    b.screenshot(&shots.join("3-running.png"));
    // A preemption, on the victim's job page.
    let owner = up.submit(&["--team", "owner", "--gpus", "2", "--", "sleep", "300"]);
    up.wait_state(owner, "running");
    let victim = busy[1..]
        .iter()
        .chain([&waiting])
        .copied()
        .find(|&j| up.job(j)["preemptions"] == 1)
        .expect("a borrowed job was preempted");
    b.goto(&format!("{}/#/jobs/{victim}", up.url()));
    b.wait_for(
        &format!("document.querySelector('#events') && document.querySelector('#events').innerText.includes('preempted: GPUs reclaimed for job {owner}')"),
        "the preemption on the job page",
    );
    b.screenshot(&shots.join("4-preempted.png"));
    for page in ["overview", "teams", "queue", "nodes"] {
        b.goto(&format!("{}/#/{page}", up.url()));
        b.wait_for("document.querySelector('#view h1')", page);
        b.screenshot(&shots.join(format!("5-{page}.png")));
    }
    b.goto(&format!("{}/#/teams", up.url()));
    b.wait_for("document.querySelector('#teams') && document.querySelector('#teams').innerText.includes('owner')", "the teams table");
    // Signing out leaves no data on the page.
    b.eval("document.querySelector('#signout').click(); true");
    b.wait_for(
        "!document.querySelector('#signin').hidden",
        "the sign-in form again",
    );
    assert_eq!(
        b.eval("document.querySelector('#view').innerText.trim()"),
        ""
    );
    eprintln!("dashboard screenshots: {}", shots.display());
}

#[test]
fn a_gang_whose_first_task_ended_before_a_server_crash_still_completes() {
    let up = Up::start("gang-crash", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--tasks",
        "2",
        "--",
        "sh",
        "-c",
        "if [ \"$QM_TASK_INDEX\" = 1 ]; then sleep 4; echo done; fi",
    ]);
    up.wait_for(|u| u.job(id)["placement"][0]["exit_code"] == 0);
    let (dir, port) = (up.dir.clone(), up.port);
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL, while task 1 still runs
    up.child.wait().unwrap();
    std::mem::forget(up);
    let up = Up::start_in(dir, port, &[]);
    let j = up.wait_state(id, "succeeded");
    assert_eq!(j["attempt"], 1, "re-attached, not restarted");
    assert!(logs(&up, id, 1).contains("done"));
}

#[test]
fn a_launch_lost_in_a_server_crash_is_sent_again() {
    let up = Up::start("lost-launch", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    // The agent dies: the node stays ready until its timeout, so the job starts and its
    // launch waits in the server's outbox.
    let agent = up.agent_pid().unwrap();
    unsafe { libc_kill(agent, 9) };
    let id = up.submit(&[
        "--team",
        "t",
        "--gpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo ran once",
    ]);
    up.wait_state(id, "running");
    let (dir, port) = (up.dir.clone(), up.port);
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL before any agent heard of the start
    up.child.wait().unwrap();
    std::mem::forget(up);
    // The restart starts a new agent; the launch is sent again.
    let up = Up::start_in(dir, port, &[]);
    assert_ne!(up.agent_pid(), Some(agent));
    let j = up.wait_state(id, "succeeded");
    assert_eq!(j["attempt"], 1);
    assert_eq!(logs(&up, id, 0).matches("ran once").count(), 1);
}
