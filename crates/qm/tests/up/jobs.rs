//! Jobs as users run them: a gang's environment, borrowing and reclaim (with /metrics
//! checked against the API), idle detection.

use std::path::PathBuf;

use serde_json::Value;

use crate::harness::*;

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
    let sets: Vec<std::collections::BTreeSet<u32>> = gpus
        .iter()
        .map(|g| g.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(
        sets[0].is_disjoint(&sets[1]),
        "no GPU given twice: {gpus:?}"
    );
    assert_eq!(sets[0].len() + sets[1].len(), 4, "{gpus:?}");
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
    let mut gpus_of = std::collections::BTreeMap::new();
    for &b in &borrowed {
        let j = up.wait_state(b, "running");
        assert_eq!(j["admission"], "borrowed");
        gpus_of.insert(b, j["placement"][0]["gpus"].clone());
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
    let mut freed: Vec<String> = preempted
        .iter()
        .flat_map(|p| {
            let gpus = gpus_of[&p["id"].as_u64().unwrap()].as_array().unwrap();
            gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>()
        })
        .collect();
    freed.sort();
    let mut got: Vec<String> = owner_gpus.iter().map(|g| g.to_string()).collect();
    got.sort();
    assert_eq!(got, freed, "the owner runs on the GPUs its reclaim freed");
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
fn an_idle_job_yields_its_gpus_to_another_teams_job_and_a_busy_one_keeps_them() {
    let up = Up::start("yield", &["--idle-window-s", "2"]);
    up.ok(&[
        "admin",
        "team",
        "create",
        "lab",
        "--guaranteed",
        "4",
        "--idle-policy",
        "yield",
    ]);
    up.ok(&["admin", "team", "create", "other", "--guaranteed", "0"]);
    let idle = up.submit(&["--team", "lab", "--gpus", "2", "--", "sleep", "300"]);
    let busy = up.submit(&[
        "--team",
        "lab",
        "--gpus",
        "2",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    up.wait_state(idle, "running");
    up.wait_state(busy, "running");
    up.wait_for(|u| u.job(busy)["util_pct"].as_u64().is_some_and(|p| p > 5));
    // Flagged once idle for the window, yielding: nothing happens while nobody needs GPUs.
    up.wait_for(|u| {
        u.job(idle)["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "idle" && e["detail"].as_str().unwrap_or("").contains("yielding"))
    });
    let j = up.job(idle);
    assert_eq!(j["state"], "running");
    assert_eq!(j["idle"]["yielding"], true, "{j}");
    assert_eq!(j["idle"]["policy"], "yield");
    assert!(up.job(busy)["idle"].is_null());
    // `qm show`, `qm teams` and /metrics say so.
    let shown = up.ok(&["show", &idle.to_string()]);
    assert!(
        shown.contains("yielding: any job that needs its GPUs may preempt it"),
        "{shown}"
    );
    let teams = up.ok(&["teams"]);
    assert!(
        teams.contains(&format!("lab: job {idle}: GPUs idle since")),
        "{teams}"
    );
    let metrics = ureq::get(&format!("{}/metrics", up.url()))
        .set("Authorization", &format!("Bearer {}", up.token()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("qm_jobs_idle{team=\"lab\",step=\"yielding\"} 1"),
        "{metrics}"
    );
    // Another team's job that needs two GPUs takes the idle job's, not the busy one's.
    let first = up.submit(&[
        "--team",
        "other",
        "--gpus",
        "2",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    up.wait_state(first, "running");
    let stopped = up.job(idle);
    assert_eq!(stopped["preemptions"], 1, "{stopped}");
    let cause = stopped["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"] == "stopping")
        .expect("the idle job was stopped");
    assert!(
        cause["detail"].as_str().unwrap().contains("idle"),
        "{cause}"
    );
    // A second one finds only busy jobs in its way (both teams yield when idle), and waits:
    // busy work keeps its GPUs, and the idle job, back in the queue, takes back nothing.
    let second = up.submit(&["--team", "other", "--gpus", "2", "--", "sleep", "120"]);
    std::thread::sleep(std::time::Duration::from_secs(6));
    let b = up.job(busy);
    assert_eq!(b["state"], "running", "{b}");
    assert_eq!(b["preemptions"], 0, "{b}");
    assert_eq!(up.job(second)["state"], "pending");
    assert_eq!(up.job(first)["state"], "running");
    assert_eq!(up.job(first)["preemptions"], 0);
    assert_eq!(up.job(idle)["state"], "pending");
    up.ok(&["cancel", &busy.to_string()]);
    up.ok(&["cancel", &first.to_string()]);
}

#[test]
fn a_cpu_only_job_runs_without_gpus_while_every_gpu_is_taken() {
    let up = Up::start("cpu-only", &[]);
    up.ok(&["admin", "team", "create", "ml", "--guaranteed", "4"]);
    let gpu = up.submit(&["--team", "ml", "--gpus", "4", "--", "sleep", "300"]);
    up.wait_state(gpu, "running");
    let cpu = up.submit(&[
        "--team",
        "ml",
        "--gpus",
        "0",
        "--cpu",
        "500m",
        "--mem",
        "64M",
        // Said by the submitter, kept with the job and shown.
        "--checkpoint-every",
        "10m",
        "--",
        "sh",
        "-c",
        "echo gpus=[$CUDA_VISIBLE_DEVICES]",
    ]);
    let job = up.wait_state(cpu, "succeeded");
    assert_eq!(job["checkpoint_every_s"], 600);
    assert_eq!(job["gpus"], 0);
    assert_eq!(job["gpu_milli"], 0);
    assert_eq!(job["cpu_milli"], 500);
    assert_eq!(job["mem_mib"], 64);
    assert_eq!(job["admission"], Value::Null);
    let out = logs(&up, cpu, 0);
    assert!(out.contains("gpus=[]"), "no GPU visible to the task: {out}");
    let shown = up.ok(&["show", &cpu.to_string()]);
    assert!(shown.contains("1 tasks x no GPU"), "{shown}");
    assert!(shown.contains("checkpoints every 10 min"), "{shown}");
    // The GPU job was left alone.
    assert_eq!(up.job(gpu)["state"], "running");
    assert_eq!(up.job(gpu)["preemptions"], 0);
    // Bad CPU and memory flags are refused before anything is sent.
    let bad = up.qm(&[
        "submit", "--team", "ml", "--gpus", "0", "--cpu", "lots", "--", "true",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bad --cpu \"lots\""), "{err}");
}

#[test]
fn a_task_sees_its_own_environment_and_none_of_the_agents() {
    let up = Up::start("task-env", &[]);
    up.ok(&["admin", "team", "create", "ml", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "ml",
        "--gpus",
        "1",
        "--env",
        "STEPS=100",
        "--",
        "sh",
        "-c",
        "env",
    ]);
    up.wait_state(id, "succeeded");
    let out = logs(&up, id, 0);
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
    for want in [
        "STEPS",
        "PATH",
        "HOME",
        "CUDA_VISIBLE_DEVICES",
        "QM_JOB_ID",
        "RANK",
    ] {
        assert!(keys.contains(&want), "{want} missing: {out}");
    }
    // No task may see the join token; the agent reads it from a 0600 file, so it is not in
    // the agent's command line or environment (which other local users may read) either.
    assert!(!out.contains("QM_JOIN_TOKEN"), "{out}");
    let join = std::fs::read_to_string(up.data().join("join-token")).unwrap();
    assert!(!out.contains(join.trim()), "{out}");
    let pid = up.agent_pid().unwrap();
    for what in ["cmdline", "environ"] {
        let text = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains(join.trim()),
            "the join token is in the agent's {what}"
        );
    }
    // Logs are not for every local user: the directory 0700, each log 0600.
    use std::os::unix::fs::PermissionsExt;
    let logs = up.data().join("agent").join("logs");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&logs), 0o700);
    let files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// Logs are bytes end to end: output that is not UTF-8, and a character split across the
/// agent's 256 KiB upload chunks, come back from `qm logs` exactly as the task wrote them
/// (the agent used to advance its offset by the length of the cleaned text).
#[test]
fn a_tasks_output_comes_back_byte_for_byte() {
    let up = Up::start("log-bytes", &[]);
    up.ok(&["admin", "team", "create", "t", "--guaranteed", "4"]);
    let id = up.submit(&[
        "--team",
        "t",
        "--",
        "sh",
        "-c",
        "head -c 262143 /dev/zero | tr '\\0' a; printf '\\303\\251\\377\\376\\n'",
    ]);
    up.wait_state(id, "succeeded");
    let out = up.qm(&["logs", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = vec![b'a'; 262_143];
    want.extend_from_slice(&[0xc3, 0xa9, 0xff, 0xfe, b'\n']);
    assert_eq!(out.stdout.len(), want.len());
    assert!(out.stdout == want, "the bytes differ");
}

/// Past `--retain-ended-max`, ended jobs leave the server's memory and stay readable from
/// the store: `qm jobs` lists what the server holds, `qm jobs --all` every job newest first
/// (paged with `--before`), `qm show` and `qm logs` read a forgotten job back.
#[test]
fn ended_jobs_leave_memory_and_read_back_from_the_store() {
    let up = Up::start("retain", &["--retain-ended-max", "1"]);
    up.ok(&["admin", "team", "create", "ml", "--guaranteed", "4"]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = up.submit(&["--team", "ml", "--", "sh", "-c", &format!("echo out-{i}")]);
        up.wait_state(id, "succeeded");
        ids.push(id);
    }
    // Retention runs with the scheduling loop: two of the three leave memory.
    up.wait_for(|up| {
        up.json(&["jobs", "--json"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    let held = up.json(&["jobs", "--json"]);
    assert_eq!(held[0]["id"], ids[2]);
    let all = up.json(&["jobs", "--all", "--json"]);
    let got: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[1], ids[0]]);
    let page = up.json(&[
        "jobs",
        "--all",
        "--limit",
        "1",
        "--before",
        &ids[2].to_string(),
        "--json",
    ]);
    assert_eq!(page[0]["id"], ids[1]);
    let first = up.job(ids[0]);
    assert_eq!(first["state"], "succeeded");
    assert_eq!(first["command"][0], "sh");
    assert!(logs(&up, ids[0], 0).contains("out-0"));
}
