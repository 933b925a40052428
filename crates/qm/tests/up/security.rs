//! Attacks from inside a job, with real processes: a task that tries to run as root, to read
//! the join token or a node's credential, or to read other tasks' logs.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::harness::{http, logs, Proc, Up, QM};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap()
}

fn uid_of(user: &str) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == user)
        .unwrap_or_else(|| panic!("this test needs the user {user} in /etc/passwd"))[2]
        .to_string()
}

/// Submits as the admin, naming `user` (or none), and waits for the job to end.
fn run(up: &Up, user: Option<&str>, script: &str) -> (u64, Value) {
    let mut body = json!({"team": "t", "gpus": 1, "command": ["sh", "-c", script], "workdir": "/"});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    let (status, r) = http(
        up,
        "POST",
        "/api/v1/jobs",
        Some(&up.token()),
        &body.to_string(),
    );
    assert_eq!(status, 200, "{r}");
    let id = r["job"].as_u64().unwrap();
    let mut job = Value::Null;
    up.wait_for(|u| {
        job = u.job(id);
        ["succeeded", "failed"].contains(&job["state"].as_str().unwrap_or(""))
    });
    (id, job)
}

/// A root agent started without `--allow-root-tasks` runs a task only as the existing,
/// non-root user its job names: a job naming no user (an admin's), a user the node lacks,
/// or root fails with the reason in its history. A task run as its user cannot read the
/// join token, the node's credential or other tasks' logs. An agent that is not root runs
/// every task as itself.
#[test]
fn tasks_run_as_their_users_never_as_root_and_cannot_reach_the_nodes_secrets() {
    let up = Up::start("identity", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "8"]);
    let data = up.data();
    let _strict = Proc(up.agent_command("strict", "strict").spawn().unwrap());
    up.wait_for(|u| u.json(&["nodes", "--json"]).as_array().unwrap().len() == 2);
    let nodes = up.json(&["nodes", "--json"]);
    let local = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .find(|n| n != "strict")
        .unwrap();
    // Every job goes to the strict agent.
    up.ok(&["nodes", "drain", &local]);
    if !is_root() {
        let (id, job) = run(&up, None, "id -u");
        assert_eq!(job["state"], "succeeded", "{job:#}");
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = me
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .to_string();
        assert_eq!(logs(&up, id, 0).trim(), uid);
        return;
    }
    let history = |job: &Value| job["events"].to_string();
    for (user, why) in [
        (None, "the job names no user to run as; node strict"),
        (
            Some("no-such-user"),
            "user `no-such-user` does not exist on node strict",
        ),
        (Some("root"), "user `root` is root (uid 0)"),
    ] {
        let (_, job) = run(&up, user, "id -u");
        assert_eq!(job["state"], "failed", "{user:?}: {job:#}");
        assert!(history(&job).contains(why), "{user:?}: {job:#}");
        assert!(history(&job).contains("--allow-root-tasks"), "{job:#}");
    }
    let secrets = [
        data.join("join-token"),
        data.join("strict").join("credential"),
        data.join("agent").join("credential"),
        data.join("client.json"),
    ];
    let mut script = String::from("id -u; ");
    for s in &secrets {
        let s = s.display();
        script.push_str(&format!(
            "cat {s} >/dev/null 2>&1 && echo READ {s} || echo DENIED {s}; "
        ));
    }
    for dir in ["strict", "agent"] {
        let d = data.join(dir).join("logs");
        let d = d.display();
        script.push_str(&format!(
            "ls {d} >/dev/null 2>&1 && echo LISTED {d} || echo DENIED {d}; "
        ));
    }
    // Registering a node of its own, with the join token it cannot read.
    script.push_str(&format!(
        "{QM} agent --server {} --name evil --data-dir /tmp/qm-evil-$$ --join-token-file {} 2>&1 | head -1; ",
        up.url(),
        data.join("join-token").display()
    ));
    let (id, job) = run(&up, Some("nobody"), &script);
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let out = logs(&up, id, 0);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(uid_of("nobody").as_str()), "{out}");
    assert!(!out.contains("READ") && !out.contains("LISTED"), "{out}");
    assert_eq!(out.matches("DENIED").count(), secrets.len() + 2, "{out}");
    assert!(
        out.contains("cannot read the join token file") && out.contains("Permission denied"),
        "{out}"
    );
    let nodes = up.json(&["nodes", "--json"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["name"] != "evil"),
        "{nodes:#}"
    );
}

/// With real processes: a second node's agent credential cannot report the first node's task
/// as exited or idle, nor write into its log; a new agent cannot take the first node's name
/// with the join token. The victim job keeps running, its log untouched.
#[test]
fn a_node_cannot_speak_for_another_nor_take_its_name() {
    let up = Up::start("node-attacks", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "8"]);
    let data = up.data();
    let victim = up.submit(&["--team", "t", "--", "sh", "-c", "echo victim; sleep 300"]);
    let job = up.wait_state(victim, "running");
    let home = job["placement"][0]["node"].as_str().unwrap().to_string();
    up.wait_for(|u| logs(u, victim, 0).contains("victim"));
    let _other = Proc(up.agent_command("intruder", "intruder").spawn().unwrap());
    up.wait_for(|u| u.json(&["nodes", "--json"]).as_array().unwrap().len() == 2);
    let credential = std::fs::read_to_string(data.join("intruder").join("credential")).unwrap();
    let key = json!({"job": victim, "task": 0, "attempt": 1});
    let forged = [
        (
            "/agent/v1/heartbeat",
            json!({"running": [], "exited": [{"key": key, "code": 1}], "util": []}),
        ),
        (
            "/agent/v1/heartbeat",
            json!({"running": [], "exited": [], "util": [{"key": key, "pct": 77}]}),
        ),
        (
            "/agent/v1/logs",
            json!({"key": key, "offset": 0, "data": "forged\n"}),
        ),
    ];
    for (path, body) in forged {
        let (status, r) = http(
            &up,
            "POST",
            path,
            Some(credential.trim()),
            &body.to_string(),
        );
        assert_eq!(status, 403, "{path}: {r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains(&format!("which runs on node {home}")),
            "{r}"
        );
    }
    // Taking the node's name with the join token: refused, and the agent says why.
    let out = up
        .agent_command(&home, "thief")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("node {home} is registered already")),
        "{err}"
    );
    // The victim is untouched.
    let job = up.job(victim);
    assert_eq!(job["state"], "running", "{job:#}");
    assert_eq!(job["placement"][0]["node"], home.as_str());
    // The forged 77 % never counted; the home agent's own sample (the sleeping task's CPU,
    // as simulated GPUs report none) may have arrived by now.
    assert_ne!(job["util_pct"], 77, "{job:#}");
    let log = logs(&up, victim, 0);
    assert!(log.contains("victim") && !log.contains("forged"), "{log}");
    // /metrics is OpenMetrics text, not JSON.
    let text = ureq::get(&format!("{}/metrics", up.url()))
        .set("Authorization", &format!("Bearer {}", up.token()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains("qm_agent_refused_total{node=\"intruder\",what=\"heartbeat\"} 2"),
        "{text}"
    );
    assert!(text.contains("what=\"register\"} 1"), "{text}");
}
