//! A crash soak with real processes: a real server and four real agents, a stream of short
//! jobs (single tasks and 2-task gangs) from several clients, the server SIGKILLed at
//! random moments and restarted on its store, and an agent killed and restarted. Every task
//! appends its node, GPUs, job, attempt, task and start and end times to a ledger file; the
//! checks read the ledger, not the server's word: no two tasks overlapped on one GPU of one
//! node; every submission answered 2xx exists and succeeded; every job that ran more than
//! once says why in its events.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{call as http, free_port, start_agent, start_server, Proc};

/// A ledger line: node, GPUs, job, attempt, task, start and end in nanoseconds (end absent
/// for a task killed without its trap running).
#[derive(Debug)]
struct Run {
    node: String,
    gpus: Vec<u32>,
    job: u64,
    attempt: u32,
    start: u128,
    end: Option<u128>,
}

#[test]
fn the_control_plane_survives_kills_with_real_processes() {
    let dir = std::env::temp_dir().join(format!("qm-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = dir.join("ledger");
    std::fs::write(&ledger, "").unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (mut server, admin) = start_server(
        &dir,
        &format!("127.0.0.1:{port}"),
        &["--snapshot-every", "40"],
    );
    let admin = admin.expect("an admin token on first start");
    let (s, r) = http(
        &url,
        &admin,
        "POST",
        "/api/v1/admin/teams",
        Some(serde_json::json!({"name": "t", "guaranteed": 16})),
    )
    .unwrap();
    assert_eq!(s, 200, "{r}");
    let (s, r) = http(
        &url,
        &admin,
        "POST",
        "/api/v1/admin/tokens",
        Some(serde_json::json!({"name": "agents", "role": "join"})),
    )
    .unwrap();
    assert_eq!(s, 200, "{r}");
    qm_agent::write_private(&dir.join("join-token"), r["token"].as_str().unwrap()).unwrap();
    let mut agents: Vec<Proc> = (0..4)
        .map(|i| start_agent(&dir, &url, &format!("a{i}"), None))
        .collect();
    // Each task: a start line, a short sleep, an end line (also when told to stop).
    let script = format!(
        "L={}; S=$(date +%s%N); trap 'echo \"$QM_NODE $CUDA_VISIBLE_DEVICES $QM_JOB_ID $QM_ATTEMPT $QM_TASK_INDEX $S $(date +%s%N)\" >> $L; exit 143' TERM; \
         echo \"start $QM_NODE $CUDA_VISIBLE_DEVICES $QM_JOB_ID $QM_ATTEMPT $QM_TASK_INDEX $S\" >> $L; \
         sleep ${{LONG:-0.$(( $(od -An -N1 -tu1 /dev/urandom) % 8 + 2 ))}} & wait; \
         echo \"$QM_NODE $CUDA_VISIBLE_DEVICES $QM_JOB_ID $QM_ATTEMPT $QM_TASK_INDEX $S $(date +%s%N)\" >> $L",
        ledger.display()
    );
    let accepted: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (url, admin, script, accepted, stop) =
                (url.clone(), admin.clone(), script.clone(), accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let tasks = if (n + c).is_multiple_of(3) { 2 } else { 1 };
                    // One job in four runs for 4 s, so that kills find work running.
                    let long = if n.is_multiple_of(4) { "4" } else { "" };
                    let mut env = serde_json::Map::new();
                    if !long.is_empty() {
                        env.insert("LONG".into(), long.into());
                    }
                    let body = serde_json::json!({"team": "t", "tasks": tasks, "gpus": 1 + (n % 2), "env": env, "command": ["sh", "-c", script]});
                    if let Some((200, r)) = http(&url, &admin, "POST", "/api/v1/jobs", Some(body)) {
                        accepted.lock().unwrap().push(r["job"].as_u64().unwrap());
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        })
        .collect();
    // Kills: the server three times, an agent once.
    let mut kills = 0;
    let mut agent_restarts: Vec<(String, u128)> = Vec::new();
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(2_500 + 700 * round));
        if round == 2 {
            drop(agents.remove(1)); // SIGKILL
            std::thread::sleep(Duration::from_millis(500));
            agent_restarts.push(("a1".into(), now_ns()));
            agents.insert(1, start_agent(&dir, &url, "a1", None));
        } else {
            drop(server);
            kills += 1;
            std::thread::sleep(Duration::from_millis(300));
            server = start_server(
                &dir,
                &format!("127.0.0.1:{port}"),
                &["--snapshot-every", "40"],
            )
            .0;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 20, "only {} jobs accepted", accepted.len());
    // Everything answered 2xx ends, and succeeds.
    let until = Instant::now() + Duration::from_secs(120);
    let mut open: Vec<u64>;
    loop {
        open = accepted
            .iter()
            .copied()
            .filter(|id| {
                let r = http(&url, &admin, "GET", &format!("/api/v1/jobs/{id}"), None);
                !matches!(r, Some((200, ref j)) if j["state"] == "succeeded")
            })
            .collect();
        if open.is_empty() || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        open.is_empty(),
        "accepted jobs that did not succeed: {open:?}"
    );
    // The ledger: no two tasks on one GPU of one node at once.
    let text = std::fs::read_to_string(&ledger).unwrap();
    // One run per (job, attempt, task, start time): a task launched twice shows twice.
    let mut runs: BTreeMap<(u64, u32, u32, u128), Run> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, f) = if f.first() == Some(&"start") {
            (true, &f[1..])
        } else {
            (false, &f[..])
        };
        if f.len() < 6 {
            continue;
        }
        let key = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
        );
        let run = runs.entry(key).or_insert_with(|| Run {
            node: f[0].to_string(),
            gpus: f[1].split(',').filter_map(|g| g.parse().ok()).collect(),
            job: key.0,
            attempt: key.1,
            start: f[5].parse().unwrap(),
            end: None,
        });
        if !start {
            run.end = Some(f[6].parse().unwrap());
        }
    }
    // A task with no end line was killed with its agent: it ended before the restarted agent
    // launched anything (it kills what its earlier life left first).
    let end_of = |r: &Run| {
        r.end.unwrap_or_else(|| {
            agent_restarts
                .iter()
                .filter(|(n, at)| *n == r.node && *at > r.start)
                .map(|(_, at)| *at)
                .min()
                .unwrap_or(u128::MAX)
        })
    };
    let list: Vec<&Run> = runs.values().collect();
    let mut overlaps = Vec::new();
    for (i, a) in list.iter().enumerate() {
        for b in &list[i + 1..] {
            if a.node == b.node
                && a.gpus.iter().any(|g| b.gpus.contains(g))
                && a.start < end_of(b)
                && b.start < end_of(a)
            {
                overlaps.push(format!("{a:?} and {b:?}"));
            }
        }
    }
    assert!(
        overlaps.is_empty(),
        "{} overlaps: {:#?}",
        overlaps.len(),
        overlaps
    );
    // A task runs once per attempt.
    let mut per_task: BTreeMap<(u64, u32, u32), usize> = BTreeMap::new();
    for k in runs.keys() {
        *per_task.entry((k.0, k.1, k.2)).or_default() += 1;
    }
    let twice: Vec<_> = per_task.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks that ran more than once in one attempt: {twice:?}"
    );
    // Jobs that ran more than once say why.
    let mut reruns = 0;
    for &id in &accepted {
        let runs_of = runs
            .values()
            .filter(|r| r.job == id)
            .map(|r| r.attempt)
            .max()
            .unwrap_or(1);
        if runs_of > 1 {
            reruns += 1;
            let (_, j) = http(&url, &admin, "GET", &format!("/api/v1/jobs/{id}"), None).unwrap();
            let events = j["events"].to_string();
            assert!(
                events.contains("requeued") || events.contains("lost"),
                "job {id} ran {runs_of} times without saying why: {events}"
            );
        }
    }
    eprintln!(
        "soak: {} jobs accepted, {} task runs in the ledger, {kills} server kills, 1 agent kill, {reruns} jobs ran again, 0 overlaps",
        accepted.len(),
        runs.len()
    );
    drop(agents);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
