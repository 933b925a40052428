//! `qm server` on PostgreSQL, with real processes: a throwaway database on the server that
//! `scripts/test` starts (`QM_TEST_PG`); the test fails, never skips, without it.
//!
//! `kill -9` of the server loses nothing it answered 2xx for, and the restarted server
//! re-attaches the tasks that ran on through the crash; a cluster moves from SQLite with
//! `qm admin migrate`; a standby takes over from a killed leader, and a paused leader is
//! fenced when it resumes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use std::sync::mpsc::Receiver;

use crate::harness::{
    call, free_port, line_with, node_ready, spawn_server_on, start_agent, start_server_on,
    team_and_join_token, wait_until, Proc,
};

use qm_store::pg::test_database as database;

#[test]
fn on_postgres_kill_9_of_the_server_loses_nothing_and_reattaches_running_tasks() {
    let dir = std::env::temp_dir().join(format!("qm-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = database();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let (server, admin) = start_server_on(&db, &listen, &["--snapshot-every", "5"]);
    let admin = admin.expect("an admin token on first start");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&url, &admin, method, path, body).expect("the server answers")
    };
    team_and_join_token(&url, &admin, &dir, 4);
    let agent = start_agent(&dir, &url, "a", None);
    node_ready(&url, &admin, "a");
    let submit = |gpus: u32, command: &[&str]| {
        let (s, r) = api(
            "POST",
            "/api/v1/jobs",
            Some(json!({"team": "t", "gpus": gpus, "command": command})),
        );
        assert_eq!(s, 200, "{r}");
        r["job"].as_u64().unwrap()
    };
    let long = submit(1, &["sh", "-c", "sleep 4; echo finished"]);
    let queued = submit(4, &["true"]);
    let many: Vec<u64> = (0..20).map(|_| submit(1, &["true"])).collect();
    wait_until("the long job running", 30, || {
        let (_, j) = api("GET", &format!("/api/v1/jobs/{long}"), None);
        (j["state"] == "running").then_some(())
    });
    drop(server); // SIGKILL
    let (server, again) = start_server_on(&db, &listen, &["--snapshot-every", "5"]);
    assert!(again.is_none(), "the admin token was kept: no new one");
    let job = |id: u64| {
        let (s, j) = api("GET", &format!("/api/v1/jobs/{id}"), None);
        assert_eq!(
            s, 200,
            "job {id} answered 2xx before the crash is gone: {j}"
        );
        j
    };
    // Everything answered 2xx is there.
    for &id in many.iter().chain([&long, &queued]) {
        job(id);
    }
    let done = wait_until("the long job to succeed", 60, || {
        let j = job(long);
        (j["state"] == "succeeded").then_some(j)
    });
    assert_eq!(done["attempt"], 1, "re-attached, not restarted: {done}");
    // Its output, uploaded to the new server, is stored in PostgreSQL: once.
    let log = wait_until("the long job's output", 30, || {
        let (s, log) = api("GET", &format!("/api/v1/jobs/{long}/logs?task=0"), None);
        assert_eq!(s, 200, "{log}");
        let data = log["data"].as_str().unwrap_or("").to_string();
        data.contains("finished").then_some(data)
    });
    assert_eq!(log.matches("finished").count(), 1, "{log}");
    for &id in many.iter().chain([&queued]) {
        wait_until("every accepted job to succeed", 60, || {
            (job(id)["state"] == "succeeded").then_some(())
        });
    }
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster that began on SQLite moves to PostgreSQL with `qm admin migrate`, and the
/// server on PostgreSQL has all of it: tokens, teams, nodes, jobs, their histories and logs.
#[test]
fn qm_admin_migrate_moves_a_sqlite_cluster_to_postgres_whole() {
    let dir = std::env::temp_dir().join(format!("qm-pg-mig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = format!("sqlite:{}", dir.join("qm.db").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let (server, admin) = start_server_on(&sqlite, &listen, &[]);
    let admin = admin.expect("an admin token on first start");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&url, &admin, method, path, body).expect("the server answers")
    };
    team_and_join_token(&url, &admin, &dir, 4);
    let agent = start_agent(&dir, &url, "a", None);
    node_ready(&url, &admin, "a");
    let (s, r) = api(
        "POST",
        "/api/v1/jobs",
        Some(json!({"team": "t", "gpus": 1, "command": ["sh", "-c", "echo moved"]})),
    );
    assert_eq!(s, 200, "{r}");
    let id = r["job"].as_u64().unwrap();
    let before = wait_until("the job to succeed with its output", 60, || {
        let (_, j) = api("GET", &format!("/api/v1/jobs/{id}"), None);
        let (_, log) = api("GET", &format!("/api/v1/jobs/{id}/logs?task=0"), None);
        (j["state"] == "succeeded" && log["data"].as_str().unwrap_or("").contains("moved"))
            .then_some(j)
    });
    drop(agent);
    drop(server);
    let pg = database();
    let out = std::process::Command::new(crate::harness::QM)
        .args(["admin", "migrate", "--from", &sqlite, "--to", &pg])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("copied and checked"), "{text}");
    // Again into the same database: refused, named.
    let out = std::process::Command::new(crate::harness::QM)
        .args(["admin", "migrate", "--from", &sqlite, "--to", &pg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (server, again) = start_server_on(&pg, &listen, &[]);
    assert!(again.is_none(), "the admin token came along");
    let (s, after) = api("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(s, 200, "{after}");
    assert_eq!(
        after["events"], before["events"],
        "the job's history came along"
    );
    let (_, log) = api("GET", &format!("/api/v1/jobs/{id}/logs?task=0"), None);
    assert!(log["data"].as_str().unwrap().contains("moved"), "{log}");
    let (_, teams) = api("GET", "/api/v1/teams", None);
    assert!(teams.as_array().unwrap().iter().any(|t| t["name"] == "t"));
    let (_, nodes) = api("GET", "/api/v1/nodes", None);
    assert!(nodes.as_array().unwrap().iter().any(|n| n["name"] == "a"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `qm server` on `db` with a 2 s lease, its standard output's lines as they come.
fn spawn_server(db: &str, listen: &str) -> (Proc, Receiver<String>) {
    spawn_server_on(db, listen, &["--lease-s", "2"])
}

/// The first server on a new database: it leads; its admin token, once it serves.
fn first_server(db: &str, listen: &str) -> (Proc, Receiver<String>, String) {
    let (p, lines) = spawn_server(db, listen);
    let admin = line_with(&lines, "admin token (shown once): ", 30)
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    line_with(&lines, "API at", 30);
    (p, lines, admin)
}

/// Two servers on one database, each on its own address: the standby waits (answering 503
/// with where the leader is),
/// takes over within the lease once the leader is killed, and the agent and the CLI, given
/// both addresses, follow it; the agent's running task goes on (re-attached, not
/// restarted), nothing answered 2xx is lost.
#[test]
fn a_standby_takes_over_from_a_killed_leader_and_its_tasks_run_on() {
    let dir = std::env::temp_dir().join(format!("qm-pg-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = database();
    let (one, two) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (url1, url2) = (format!("http://{one}"), format!("http://{two}"));
    let both = format!("{url1},{url2}");
    let (leader, _lines, admin) = first_server(&db, &one);
    team_and_join_token(&url1, &admin, &dir, 4);
    let agent = start_agent(&dir, &both, "a", None);
    node_ready(&url1, &admin, "a");
    let (standby, standby_lines) = spawn_server(&db, &two);
    let said = line_with(&standby_lines, "standby:", 30);
    assert!(said.contains("term 1"), "{said}");
    // The standby listens, holds no state, and says where the leader is.
    let (status, body) = call(&url2, &admin, "GET", "/api/v1/jobs", None).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "standby", "{body}");
    assert_eq!(body["leader"], url1.as_str(), "{body}");
    // The CLI, given both addresses, as a user would set QM_SERVER.
    let qm = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::QM)
            .args(args)
            .env("QM_SERVER", &both)
            .env("QM_TOKEN", &admin)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let submit = |command: &[&str]| {
        let mut args = vec!["submit", "--team", "t", "--gpus", "1", "--"];
        args.extend_from_slice(command);
        let (ok, out) = qm(&args);
        assert!(ok, "{out}");
        out.split_whitespace()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no job id in {out:?}"))
    };
    // Who leads, and who stands by.
    let cluster = wait_until("the standby listed", 30, || {
        let (ok, out) = qm(&["cluster", "--json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        (!v["standbys"].as_array().unwrap().is_empty()).then_some(v)
    });
    assert_eq!(cluster["store"], "postgres", "{cluster}");
    assert_eq!(cluster["leader"]["term"], 1, "{cluster}");
    assert!(
        cluster["leader"]["holder"]
            .as_str()
            .unwrap()
            .starts_with(&url1),
        "{cluster}"
    );
    assert!(
        cluster["standbys"][0]["holder"]
            .as_str()
            .unwrap()
            .starts_with(&url2),
        "{cluster}"
    );
    // And /metrics says the same.
    let metrics = ureq::get(&format!("{url1}/metrics"))
        .set("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let term = metrics
        .lines()
        .find(|l| l.starts_with("qm_leader_term{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(term.contains(&one) && term.ends_with(" 1"), "{term}");
    assert!(metrics.lines().any(|l| l == "qm_standbys 1"), "{metrics}");
    let long = submit(&["sh", "-c", "sleep 6; echo finished"]);
    let quick: Vec<u64> = (0..10).map(|_| submit(&["true"])).collect();
    let job = |id: u64| {
        let (ok, out) = qm(&["show", &id.to_string(), "--json"]);
        assert!(ok, "job {id}, answered 2xx, is gone: {out}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    wait_until("the long job running", 30, || {
        (job(long)["state"] == "running").then_some(())
    });
    drop(leader); // SIGKILL
    let killed = Instant::now();
    line_with(&standby_lines, "leading (term 2)", 15);
    let accepted = wait_until("a submission accepted by the new leader", 30, || {
        let (s, r) = call(
            &url2,
            &admin,
            "POST",
            "/api/v1/jobs",
            Some(json!({"team": "t", "gpus": 1, "command": ["true"]})),
        )?;
        (s == 200).then(|| r["job"].as_u64().unwrap())
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    wait_until("the new leader to start a job", 30, || {
        (job(accepted)["state"] != "pending").then_some(())
    });
    println!(
        "failover: the new leader accepted a submission {took:?} and started it {:?} after the kill",
        killed.elapsed()
    );
    let (ok, out) = qm(&["cluster"]);
    assert!(
        ok && out.contains("(term 2)") && out.contains(&two),
        "{out}"
    );
    let done = wait_until("the long job to succeed", 60, || {
        let j = job(long);
        (j["state"] == "succeeded").then_some(j)
    });
    assert_eq!(done["attempt"], 1, "re-attached, not restarted: {done}");
    for &id in quick.iter().chain([&accepted]) {
        wait_until("every accepted job to succeed", 60, || {
            (job(id)["state"] == "succeeded").then_some(())
        });
    }
    drop(agent);
    drop(standby);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A leader paused past its lease (SIGSTOP) is taken over; resumed, it cannot write one
/// more row and steps down (exits), while the new leader serves on.
#[test]
fn a_paused_leader_is_fenced_when_it_resumes_and_steps_down() {
    let db = database();
    let (a_listen, b_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (mut a, _a_lines, admin) = first_server(&db, &a_listen);
    let a_url = format!("http://{a_listen}");
    let (s, r) = call(
        &a_url,
        &admin,
        "POST",
        "/api/v1/admin/teams",
        Some(json!({"name": "t", "guaranteed": 0})),
    )
    .unwrap();
    assert_eq!(s, 200, "{r}");
    let (_b, b_lines) = spawn_server(&db, &b_listen);
    line_with(&b_lines, "standby:", 30);
    let pid = a.0.id() as i32;
    // SAFETY: signalling the server process this test started.
    unsafe { crate::harness::libc_kill(pid, 19) }; // SIGSTOP
    line_with(&b_lines, "leading (term 2)", 15);
    line_with(&b_lines, "API at", 15);
    let b_url = format!("http://{b_listen}");
    let (s, r) = call(
        &b_url,
        &admin,
        "POST",
        "/api/v1/admin/teams",
        Some(json!({"name": "u", "guaranteed": 0})),
    )
    .unwrap();
    assert_eq!(s, 200, "the new leader serves: {r}");
    // SAFETY: as above.
    unsafe { crate::harness::libc_kill(pid, 18) }; // SIGCONT
                                                   // Resumed, the old leader tries to write: refused, and it exits.
    let _ = call(
        &a_url,
        &admin,
        "POST",
        "/api/v1/admin/teams",
        Some(json!({"name": "stale", "guaranteed": 0})),
    );
    let status = wait_until("the old leader to step down", 15, || {
        a.0.try_wait().unwrap()
    });
    assert!(!status.success(), "{status}");
    let (_, teams) = call(&b_url, &admin, "GET", "/api/v1/teams", None).unwrap();
    let names: Vec<&str> = teams
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"u") && !names.contains(&"stale"),
        "{names:?}"
    );
}

/// Three servers on one database, four agents given all three addresses, a stream of
/// submissions while jobs run; `kill -9` of the leader in the middle of it. Every submission
/// answered 2xx runs, exactly once; no GPU ever runs two jobs at once (a ledger the tasks
/// write); a new leader takes over within the lease.
#[test]
fn three_servers_four_agents_a_stream_of_submissions_and_the_leader_killed() {
    let dir = std::env::temp_dir().join(format!("qm-pg-three-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = database();
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let all = urls.join(",");
    let (first, _lines, admin) = first_server(&db, &listens[0]);
    let mut standbys = Vec::new();
    for l in &listens[1..] {
        let (p, rx) = spawn_server(&db, l);
        line_with(&rx, "standby:", 30);
        standbys.push((p, rx));
    }
    team_and_join_token(&urls[0], &admin, &dir, 16);
    let agents: Vec<Proc> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| start_agent(&dir, &all, n, None))
        .collect();
    for n in ["a", "b", "c", "d"] {
        node_ready(&urls[0], &admin, n);
    }
    // The server that leads: the first that answers other than as a standby.
    let api = |method: &str, path: &str, body: Option<Value>| {
        urls.iter().find_map(|u| {
            call(u, &admin, method, path, body.clone())
                .filter(|(s, b)| !(*s == 503 && b["error"] == "standby"))
        })
    };
    let ledger = dir.join("ledger");
    let script = format!(
        "echo \"$QM_JOB_ID $QM_NODE $CUDA_VISIBLE_DEVICES start $(date +%s%N)\" >> {l}; sleep 0.4; echo \"$QM_JOB_ID $QM_NODE $CUDA_VISIBLE_DEVICES end $(date +%s%N)\" >> {l}",
        l = ledger.display()
    );
    let mut accepted: Vec<u64> = Vec::new();
    let mut killed: Option<(Instant, Option<Duration>)> = None;
    let mut first = Some(first);
    let stream = Instant::now();
    while stream.elapsed() < Duration::from_secs(8) {
        if killed.is_none() && stream.elapsed() > Duration::from_secs(2) {
            drop(first.take()); // SIGKILL of the leader
            killed = Some((Instant::now(), None));
        }
        let body = json!({"team": "t", "gpus": 1, "command": ["sh", "-c", script]});
        if let Some((200, r)) = api("POST", "/api/v1/jobs", Some(body)) {
            accepted.push(r["job"].as_u64().unwrap());
            if let Some((at, None)) = killed {
                killed = Some((at, Some(at.elapsed())));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, took) = killed.unwrap();
    let took = took.expect("a submission accepted after the kill");
    println!(
        "three servers: {} submissions accepted, the first after the kill {took:?} after it",
        accepted.len()
    );
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    for &id in &accepted {
        wait_until("every accepted job to succeed", 90, || {
            let (_, j) = api("GET", &format!("/api/v1/jobs/{id}"), None)?;
            assert_ne!(j["state"], "failed", "{j}");
            (j["state"] == "succeeded").then_some(())
        });
    }
    let (_, cluster) = api("GET", "/api/v1/cluster", None).unwrap();
    assert_eq!(cluster["leader"]["term"], 2, "{cluster}");
    // The ledger: each accepted job ran once, and no GPU ran two jobs at once.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: std::collections::BTreeMap<(u64, String), (u128, u128, String)> =
        Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{line}");
        let key = (f[0].parse::<u64>().unwrap(), f[1].to_string());
        let at: u128 = f[4].parse().unwrap();
        let run = runs.entry(key).or_insert((0, 0, f[2].to_string()));
        match f[3] {
            "start" => {
                assert_eq!(run.0, 0, "job {} started twice: {line}", f[0]);
                run.0 = at;
            }
            _ => run.1 = at,
        }
    }
    // One run per job (a job on two nodes would be two runs); a submission the killed
    // leader stored but never answered may run too: it was not acknowledged, not lost.
    let jobs: Vec<u64> = runs.keys().map(|k| k.0).collect();
    let mut once = jobs.clone();
    once.dedup();
    assert_eq!(once, jobs, "a job ran on two nodes");
    for id in &accepted {
        assert!(jobs.contains(id), "accepted job {id} never ran");
    }
    assert!(jobs.len() <= accepted.len() + 1, "{jobs:?} {accepted:?}");
    let mut by_gpu: std::collections::BTreeMap<(String, String), Vec<(u128, u128)>> =
        Default::default();
    for ((_, node), (start, end, gpus)) in &runs {
        for g in gpus.split(',') {
            by_gpu
                .entry((node.clone(), g.to_string()))
                .or_default()
                .push((*start, *end));
        }
    }
    for (gpu, mut spans) in by_gpu {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "GPU {gpu:?} ran two jobs at once: {w:?}");
        }
    }
    drop(agents);
    drop(standbys);
    let _ = std::fs::remove_dir_all(&dir);
}
