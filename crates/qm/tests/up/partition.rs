//! A network partition with real processes: an agent in its own network namespace (a veth
//! pair to the host, as a second machine would be) runs one task of a 2-task gang; the link
//! is cut for longer than the node timeout. The job must be requeued whole and run elsewhere;
//! when the link heals, the cut-off agent must learn that its task was replaced and kill it.
//! Every task appends a tick to a ledger every 50 ms, so the ledger shows how long the old
//! and the new attempt ran at once: the window that fencing (`--fence`) closes.
//!
//! Needs root and `ip` (iproute2): it fails, never skips, without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    call, free_port, node_ready, start_agent, start_server, team_and_join_token, wait_until,
};

/// A network namespace joined to the host by a veth pair: host side `10.213.N.1/30`, the
/// namespace's side `10.213.N.2/30`. Removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
    host_ip: String,
    inner_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("this test needs `ip` (Debian's iproute2) and root, to make a network namespace");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and iproute2, to make a network namespace)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    /// The `k`th of this test process.
    fn new(k: u32) -> Netns {
        let pid = std::process::id();
        let n = (pid * 2 + k) % 250 + 1;
        let ns = Netns {
            name: format!("qmpart{pid}-{k}"),
            host_if: format!("qmh{}-{k}", pid % 100_000),
            inner_if: format!("qmi{}-{k}", pid % 100_000),
            host_ip: format!("10.213.{n}.1"),
            inner_ip: format!("10.213.{n}.2"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ]);
        ip(&["link", "set", &ns.inner_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns.inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner_ip),
            "dev",
            &ns.inner_if,
        ]);
        ns.inside(&["link", "set", &ns.inner_if, "up"]);
        ns.inside(&["link", "set", "lo", "up"]);
        ns
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Cuts the link: the namespace's side goes down, nothing crosses either way.
    fn cut(&self) {
        self.inside(&["link", "set", &self.inner_if, "down"]);
    }

    fn heal(&self) {
        self.inside(&["link", "set", &self.inner_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// First and last ledger time (ns) of each (node, job, attempt, task).
fn ledger(path: &Path) -> BTreeMap<(String, u64, u32, u32), (u128, u128)> {
    let mut spans: BTreeMap<(String, u64, u32, u32), (u128, u128)> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            continue;
        }
        let (Ok(job), Ok(attempt), Ok(task), Ok(at)) =
            (f[1].parse(), f[2].parse(), f[3].parse(), f[4].parse())
        else {
            continue;
        };
        let span = spans
            .entry((f[0].to_string(), job, attempt, task))
            .or_insert((at, at));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }
    spans
}

struct Partition {
    /// Last tick of the cut-off task minus the first tick of the new attempt (ms; negative:
    /// no overlap).
    overlap_ms: i64,
    /// From the cut to the first tick of the new attempt.
    cut_to_restart_ms: u128,
    /// From the heal to the cut-off task's last tick.
    heal_to_kill_ms: i64,
    /// The cut-off task's last tick after the cut.
    cut_to_old_end_ms: i64,
}

/// Runs the partition scenario; `fence` submits the job with `--fence`.
fn partition(fence: bool) -> Partition {
    let tag = if fence { "fenced" } else { "plain" };
    let dir = std::env::temp_dir().join(format!("qm-part-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ns = Netns::new(fence as u32);
    let port = free_port();
    // Clients and the host's agents use loopback; the namespace's agent the veth address.
    let url = format!("http://127.0.0.1:{port}");
    let (_server, admin) =
        start_server(&dir, &format!("0.0.0.0:{port}"), &["--node-timeout-s", "5"]);
    let admin = admin.expect("an admin token on first start");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&url, &admin, method, path, body).expect("the server answers")
    };
    team_and_join_token(&url, &admin, &dir, 12);
    let ready = |names: &[&str]| {
        let (_, nodes) = api("GET", "/api/v1/nodes", None);
        names.iter().all(|n| {
            nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == *n && x["state"] == "ready")
        })
    };
    let _a = start_agent(
        &dir,
        &format!("http://{}:{port}", ns.host_ip),
        "cut",
        Some(&ns.name),
    );
    let _b = start_agent(&dir, &url, "b", None);
    wait_until("nodes cut and b", 30, || ready(&["cut", "b"]).then_some(()));
    let ledger_file = dir.join("ledger");
    let script = format!(
        "while :; do echo \"$QM_NODE $QM_JOB_ID $QM_ATTEMPT $QM_TASK_INDEX $(date +%s%N)\" >> {}; sleep 0.05; done",
        ledger_file.display()
    );
    let mut body = json!({"team": "t", "tasks": 2, "gpus": 4, "command": ["sh", "-c", script]});
    if fence {
        body["fence"] = json!(true);
    }
    let (s, r) = api("POST", "/api/v1/jobs", Some(body));
    assert_eq!(s, 200, "{r}");
    let job = r["job"].as_u64().unwrap();
    wait_until("the gang running on both nodes", 30, || {
        let spans = ledger(&ledger_file);
        (spans.keys().any(|k| k.0 == "cut") && spans.keys().any(|k| k.0 == "b")).then_some(())
    });
    let _c = start_agent(&dir, &url, "c", None);
    wait_until("node c", 30, || ready(&["c"]).then_some(()));
    std::thread::sleep(Duration::from_millis(500));

    let cut = now_ns();
    ns.cut();
    // The job goes back to the queue whole and runs on b and c.
    wait_until("the job's second attempt on b and c", 60, || {
        let spans = ledger(&ledger_file);
        let second: Vec<_> = spans.keys().filter(|k| k.2 == 2).collect();
        (second.len() == 2 && second.iter().all(|k| k.0 != "cut")).then_some(())
    });
    let (_, nodes) = api("GET", "/api/v1/nodes", None);
    let cut_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "cut")
        .unwrap()
        .clone();
    assert_eq!(cut_node["state"], "down", "{cut_node}");
    // Let the new attempt run a while with the old one cut off, then heal.
    std::thread::sleep(Duration::from_secs(3));
    let heal = now_ns();
    ns.heal();
    // The cut-off agent hears that its task was replaced and kills it; its node comes back.
    wait_until("the cut-off node back, its stale task gone", 60, || {
        ready(&["cut"]).then_some(())
    });
    // The old task's ticks have stopped (50 ms apart; allow a few).
    std::thread::sleep(Duration::from_millis(500));
    let spans = ledger(&ledger_file);
    let first = |spans: &BTreeMap<(String, u64, u32, u32), (u128, u128)>, node: &str| {
        spans
            .iter()
            .find(|(k, _)| k.0 == node && k.1 == job && k.2 == 1)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no first-attempt task on {node} in the ledger"))
    };
    let old = first(&spans, "cut");
    let old_b = first(&spans, "b");
    let new_start = spans
        .iter()
        .filter(|(k, _)| k.1 == job && k.2 == 2)
        .map(|(_, s)| s.0)
        .min()
        .unwrap();
    let later = ledger(&ledger_file);
    assert_eq!(
        first(&later, "cut").1,
        old.1,
        "the cut-off task still runs after its node came back"
    );
    // Where the server can reach, the gang stops whole before it starts again: the first
    // attempt's task on b ended before the second attempt began.
    assert!(
        old_b.1 < new_start,
        "the first attempt's task on b ran on after the second attempt started"
    );
    let (_, j) = api("GET", &format!("/api/v1/jobs/{job}"), None);
    assert_eq!(j["state"], "running", "{j:#}");
    let events = j["events"].to_string();
    assert!(
        events.contains("down") || events.contains("lost"),
        "the job does not say why it ran again: {events}"
    );
    let (s, r) = api("POST", &format!("/api/v1/jobs/{job}/cancel"), None);
    assert_eq!(s, 200, "{r}");
    // Its tasks are gone before the agents are: a task outlives a killed agent.
    wait_until("the job cancelled, its tasks gone", 60, || {
        let (_, j) = api("GET", &format!("/api/v1/jobs/{job}"), None);
        (j["state"] == "cancelled").then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let ms = |a: u128, b: u128| (a as i128 - b as i128) as i64 / 1_000_000;
    Partition {
        overlap_ms: ms(old.1, new_start),
        cut_to_restart_ms: (new_start - cut) / 1_000_000,
        heal_to_kill_ms: ms(old.1, heal),
        cut_to_old_end_ms: ms(old.1, cut),
    }
}

#[test]
fn a_cut_off_node_is_replaced_and_its_task_killed_when_the_link_heals() {
    let p = partition(false);
    eprintln!(
        "partition (node timeout 5 s, cut 3 s past the restart): restarted elsewhere {} ms after the cut; the old task ran {} ms after the cut and ended {} ms after the heal; old and new attempts overlapped {} ms",
        p.cut_to_restart_ms, p.cut_to_old_end_ms, p.heal_to_kill_ms, p.overlap_ms
    );
    // Without fencing the old task runs on through the partition: it ends only after the
    // heal, and the attempts overlap.
    assert!(p.heal_to_kill_ms >= 0, "the old task ended before the heal");
    assert!(p.overlap_ms > 0);
}

#[test]
fn a_fenced_job_never_runs_two_attempts_at_once() {
    let p = partition(true);
    eprintln!(
        "partition, fenced (node timeout 5 s, fence 3.3 s): restarted elsewhere {} ms after the cut; the old task ran {} ms after the cut and ended {} ms after the heal; old and new attempts overlapped {} ms",
        p.cut_to_restart_ms, p.cut_to_old_end_ms, p.heal_to_kill_ms, p.overlap_ms
    );
    // The cut-off agent killed its task while still cut off, before the new attempt began.
    assert!(p.heal_to_kill_ms < 0, "the fenced task ran until the heal");
    assert!(
        p.overlap_ms < 0,
        "the attempts overlapped by {} ms",
        p.overlap_ms
    );
}

/// An agent that dies leaves its tasks running (its next life ends them), but a fenced
/// job's task dies with it: its guard gets the agent's death as a signal and kills its
/// process group, so no attempt runs on where no fence can reach it.
#[test]
fn a_fenced_task_dies_with_its_agent_and_a_plain_one_runs_on() {
    let dir = std::env::temp_dir().join(format!("qm-part-{}-death", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (_server, admin) = start_server(&dir, &format!("127.0.0.1:{port}"), &[]);
    let admin = admin.expect("an admin token on first start");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&url, &admin, method, path, body).expect("the server answers")
    };
    team_and_join_token(&url, &admin, &dir, 4);
    let agent = start_agent(&dir, &url, "a", None);
    node_ready(&url, &admin, "a");
    let ledger_file = dir.join("ledger");
    let script = format!(
        "while :; do echo \"$QM_NODE $QM_JOB_ID $QM_ATTEMPT $QM_TASK_INDEX $(date +%s%N)\" >> {}; sleep 0.05; done",
        ledger_file.display()
    );
    let mut jobs = Vec::new();
    for fence in [true, false] {
        let body = json!({"team": "t", "gpus": 1, "fence": fence, "command": ["sh", "-c", script]});
        let (s, r) = api("POST", "/api/v1/jobs", Some(body));
        assert_eq!(s, 200, "{r}");
        jobs.push(r["job"].as_u64().unwrap());
    }
    let (fenced, plain) = (jobs[0], jobs[1]);
    let last = |job: u64| {
        ledger(&ledger_file)
            .iter()
            .filter(|(k, _)| k.1 == job)
            .map(|(_, s)| s.1)
            .max()
    };
    wait_until("both jobs ticking", 30, || {
        (last(fenced).is_some() && last(plain).is_some()).then_some(())
    });
    drop(agent); // SIGKILL
    let died = now_ns();
    std::thread::sleep(Duration::from_millis(1_500));
    let (f, p) = (last(fenced).unwrap(), last(plain).unwrap());
    assert!(
        f < died + 200_000_000,
        "the fenced task ticked {} ms after its agent died",
        (f - died) / 1_000_000
    );
    assert!(
        p > died + 1_000_000_000,
        "the plain task stopped with its agent; it should run on until the agent's next life"
    );
    // The agent's next life ends the plain task (its ledger), and the server requeues both.
    let _again = start_agent(&dir, &url, "a", None);
    wait_until("the plain task ended by the agent's next life", 30, || {
        let p = last(plain).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        (last(plain).unwrap() == p).then_some(())
    });
    // Both jobs may have started again on the agent's next life: cancelled, and their tasks
    // gone, before the agent is (a task outlives a killed agent).
    for job in [fenced, plain] {
        let (s, r) = api("POST", &format!("/api/v1/jobs/{job}/cancel"), None);
        assert_eq!(s, 200, "{r}");
    }
    wait_until("both jobs cancelled, their tasks gone", 60, || {
        [fenced, plain]
            .iter()
            .all(|job| api("GET", &format!("/api/v1/jobs/{job}"), None).1["state"] == "cancelled")
            .then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}
