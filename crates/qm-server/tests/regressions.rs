//! Regression tests for the bugs the fault simulation and the API fuzzing found, each a
//! scenario that failed before its fix: the server through its API, agents played by hand,
//! time moved by a `ManualClock`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use qm_proto::{Command, JobView, NodeView, RegisterResponse, TaskKey};
use qm_server::{ManualClock, Server, ServerConfig};
use qm_store::{SqliteStore, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Cluster {
    server: Arc<Server>,
    clock: Arc<ManualClock>,
    admin: String,
    creds: BTreeMap<String, String>,
}

fn config() -> ServerConfig {
    ServerConfig {
        log_refusals: false,
        ..ServerConfig::default()
    }
}

impl Cluster {
    /// Nodes of 4 GPUs named `nodes`, team `t` guaranteed all of them.
    async fn new(nodes: &[&str], store: Box<dyn Store>) -> Cluster {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let server = Server::open_with_clock(store, config(), clock.clone()).unwrap();
        let admin = server.create_token("admin", "admin", &[]).unwrap();
        let mut c = Cluster {
            server,
            clock,
            admin,
            creds: BTreeMap::new(),
        };
        let join = c.server.create_token("agents", "join", &[]).unwrap();
        for name in nodes {
            let req = common::node_request(name);
            let (status, r) = c
                .call(
                    "POST",
                    "/agent/v1/register",
                    &join,
                    serde_json::to_value(req).unwrap(),
                )
                .await;
            assert_eq!(status, 200, "{r}");
            let r: RegisterResponse = serde_json::from_value(r).unwrap();
            c.creds.insert(name.to_string(), r.credential);
        }
        let guaranteed = 4 * nodes.len();
        let admin = c.admin.clone();
        let (status, r) = c
            .call(
                "POST",
                "/api/v1/admin/teams",
                &admin,
                json!({"name": "t", "guaranteed": guaranteed}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        c
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(if body.is_null() {
                Body::empty()
            } else {
                Body::from(body.to_string())
            })
            .unwrap();
        let resp = qm_server::app(self.server.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn submit(&self, tasks: u32, gpus: u32) -> u64 {
        let body = json!({"team": "t", "tasks": tasks, "gpus": gpus, "command": ["sleep", "600"]});
        let (status, r) = self.call("POST", "/api/v1/jobs", &self.admin, body).await;
        assert_eq!(status, 200, "{r}");
        r["job"].as_u64().unwrap()
    }

    async fn job(&self, id: u64) -> JobView {
        let (_, r) = self
            .call(
                "GET",
                &format!("/api/v1/jobs/{id}"),
                &self.admin,
                Value::Null,
            )
            .await;
        serde_json::from_value(r).unwrap()
    }

    async fn node(&self, name: &str) -> NodeView {
        let (_, r) = self
            .call("GET", "/api/v1/nodes", &self.admin, Value::Null)
            .await;
        let nodes: Vec<NodeView> = serde_json::from_value(r).unwrap();
        nodes.into_iter().find(|n| n.name == name).unwrap()
    }

    /// A heartbeat from `node` with these running tasks and (key, code) exits.
    async fn beat(&self, node: &str, running: &[TaskKey], exited: &[(TaskKey, i32)]) {
        let exited: Vec<Value> = exited
            .iter()
            .map(|(k, c)| json!({"key": k, "code": c}))
            .collect();
        let body = json!({"running": running, "exited": exited, "util": []});
        let (status, r) = self
            .call("POST", "/agent/v1/heartbeat", &self.creds[node], body)
            .await;
        assert_eq!(status, 200, "{r}");
    }

    /// What `node`'s agent gets when it asks for its commands.
    async fn poll(&self, node: &str) -> Vec<Command> {
        let (status, r) = self
            .call(
                "GET",
                "/agent/v1/commands?wait_s=0",
                &self.creds[node],
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{r}");
        serde_json::from_value(r["commands"].clone()).unwrap()
    }

    fn tick(&self, ms: u64) {
        self.clock.advance_ms(ms);
        self.server.tick().unwrap();
    }
}

fn key(job: u64, task: u32, attempt: u32) -> TaskKey {
    TaskKey { job, task, attempt }
}

fn launches(cmds: &[Command]) -> Vec<TaskKey> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Launch(l) => Some(l.key.clone()),
            Command::Kill { .. } => None,
        })
        .collect()
}

fn kills(cmds: &[Command]) -> Vec<TaskKey> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Kill { key, .. } => Some(key.clone()),
            Command::Launch(_) => None,
        })
        .collect()
}

fn memory() -> Box<dyn Store> {
    Box::new(SqliteStore::memory().unwrap())
}

/// A node away past the timeout: its job is requeued and restarts elsewhere. When the node
/// is back, (1) it does not get the launch of the old attempt that waited in its outbox, and
/// (2) while it still reports a task of that attempt it stays down, is told to kill it, and
/// takes no new work; once it reports none it is ready.
#[tokio::test]
async fn a_node_back_from_down_gets_no_stale_launch_and_is_ready_only_once_clean() {
    let c = Cluster::new(&["n0", "n1"], memory()).await;
    let job = c.submit(1, 4).await;
    c.tick(0);
    let away = c.job(job).await.placement[0].node.clone();
    let other = if away == "n0" { "n1" } else { "n0" };
    // The other node reports and polls every second; the job's node is silent for 31 s.
    for _ in 0..32 {
        c.beat(other, &[], &[]).await;
        c.poll(other).await;
        c.tick(1_000);
    }
    assert_eq!(c.node(&away).await.state, qm_proto::NodeState::Down);
    let j = c.job(job).await;
    assert_eq!((j.attempt, j.placement[0].node.as_str()), (2, other));
    // Back: its old task still runs (its launch reached it before it went away).
    c.beat(&away, &[key(job, 0, 1)], &[]).await;
    let cmds = c.poll(&away).await;
    assert!(launches(&cmds).is_empty(), "a stale launch: {cmds:?}");
    assert_eq!(kills(&cmds), vec![key(job, 0, 1)]);
    c.tick(1_000);
    assert_eq!(c.node(&away).await.state, qm_proto::NodeState::Down);
    // The task is gone: ready.
    c.beat(&away, &[], &[]).await;
    c.tick(1_000);
    assert_eq!(c.node(&away).await.state, qm_proto::NodeState::Ready);
}

/// Two tasks of a gang failing in the same heartbeat end the job (failed); it stayed
/// stopping for ever.
#[tokio::test]
async fn two_gang_tasks_failing_in_one_heartbeat_end_the_job() {
    let c = Cluster::new(&["n0"], memory()).await;
    let job = c.submit(2, 2).await;
    c.tick(0);
    c.poll("n0").await;
    c.beat("n0", &[], &[(key(job, 0, 1), 1), (key(job, 1, 1), 1)])
        .await;
    c.tick(1_000);
    assert_eq!(c.job(job).await.state, qm_proto::JobState::Failed);
}

/// A job stopping when the server restarts: its kill is sent again, and a task its agent
/// no longer reports counts as gone, so the stop completes (it stayed stopping for ever).
#[tokio::test]
async fn a_restart_completes_the_stops_in_flight() {
    let dir = std::env::temp_dir().join(format!("qm-regress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("qm.db");
    let c = Cluster::new(&["n0"], Box::new(SqliteStore::open(&db).unwrap())).await;
    let job = c.submit(1, 1).await;
    c.tick(0);
    let (status, _) = c
        .call(
            "POST",
            &format!("/api/v1/jobs/{job}/cancel"),
            &c.admin.clone(),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.job(job).await.state, qm_proto::JobState::Stopping);
    // The server crashes before the agent heard anything, and starts again on its store.
    let (clock, admin, creds) = (c.clock.clone(), c.admin.clone(), c.creds.clone());
    drop(c);
    let server = Server::open_with_clock(
        Box::new(SqliteStore::open(&db).unwrap()),
        config(),
        clock.clone(),
    )
    .unwrap();
    let c = Cluster {
        server,
        clock,
        admin,
        creds,
    };
    let cmds = c.poll("n0").await;
    assert_eq!(kills(&cmds), vec![key(job, 0, 1)], "{cmds:?}");
    for _ in 0..12 {
        c.beat("n0", &[], &[]).await;
        c.tick(1_000);
    }
    assert_eq!(c.job(job).await.state, qm_proto::JobState::Cancelled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gang task lost from its node: the run stops, the surviving task's GPUs stay held until
/// it has exited (they were given out at once, under a task still running), then the job
/// goes back to the queue whole.
#[tokio::test]
async fn a_lost_gang_task_holds_its_siblings_gpus_until_they_exit() {
    let c = Cluster::new(&["n0", "n1"], memory()).await;
    let gang = c.submit(2, 4).await;
    c.tick(0);
    let j = c.job(gang).await;
    let node_of = |t: usize| j.placement[t].node.clone();
    let (alive, lost) = (node_of(0), node_of(1));
    c.poll(&alive).await;
    c.poll(&lost).await;
    // The second task's agent restarted without it: it never reports it.
    for _ in 0..12 {
        c.beat(&alive, &[key(gang, 0, 1)], &[]).await;
        c.beat(&lost, &[], &[]).await;
        c.tick(1_000);
    }
    assert_eq!(c.job(gang).await.state, qm_proto::JobState::Stopping);
    assert!(c
        .node(&alive)
        .await
        .gpus_used_milli
        .iter()
        .all(|&m| m == 1000));
    assert_eq!(kills(&c.poll(&alive).await), vec![key(gang, 0, 1)]);
    // A job that needs those GPUs waits.
    let next = c.submit(1, 4).await;
    c.tick(1_000);
    let waiting = c.job(next).await;
    assert!(
        waiting.placement.iter().all(|t| t.node != alive),
        "{waiting:?}"
    );
    // The survivor has exited: the gang is requeued whole.
    c.beat(&alive, &[], &[(key(gang, 0, 1), 143)]).await;
    c.tick(0);
    let j = c.job(gang).await;
    assert!(
        matches!(
            j.state,
            qm_proto::JobState::Pending | qm_proto::JobState::Running
        ),
        "{j:?}"
    );
    assert_eq!(j.preemptions, 1);
}

/// A task of a run stopping past its deadline (its kill lost) is killed again on every
/// heartbeat that shows it; it was never killed again.
#[tokio::test]
async fn an_overdue_stop_is_killed_again() {
    let c = Cluster::new(&["n0"], memory()).await;
    let job = c.submit(1, 1).await;
    c.tick(0);
    c.poll("n0").await;
    let (status, _) = c
        .call(
            "POST",
            &format!("/api/v1/jobs/{job}/cancel"),
            &c.admin.clone(),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let first = c.poll("n0").await;
    assert_eq!(kills(&first), vec![key(job, 0, 1)]);
    // That kill was lost: past the grace the task still runs.
    c.tick(11_000);
    c.beat("n0", &[key(job, 0, 1)], &[]).await;
    assert_eq!(kills(&c.poll("n0").await), vec![key(job, 0, 1)]);
}

/// A wrong method, and a path parameter that does not parse, are refused with an `ApiError`
/// (they had an empty or plain-text body).
#[tokio::test]
async fn every_refusal_carries_an_api_error() {
    let c = Cluster::new(&["n0"], memory()).await;
    let admin = c.admin.clone();
    for (method, path, status) in [
        ("DELETE", "/api/v1/jobs", 405),
        ("PUT", "/agent/v1/heartbeat", 405),
        ("GET", "/api/v1/jobs/not-a-number", 400),
        ("GET", "/api/v1/jobs/99999999999999999999999", 400),
    ] {
        let (got, r) = c.call(method, path, &admin, Value::Null).await;
        assert_eq!(got, status, "{method} {path}: {r}");
        let e: qm_proto::ApiError = serde_json::from_value(r.clone())
            .unwrap_or_else(|_| panic!("{method} {path}: not an ApiError: {r}"));
        assert!(!e.message.is_empty());
    }
}

/// A fenced job: its launches carry the fence (two thirds of the node timeout), and a task
/// its agent fenced (the server still thought the node reachable: a one-way cut) is lost,
/// not failed: the gang stops whole and goes back to the queue.
#[tokio::test]
async fn a_fenced_task_is_lost_not_failed() {
    let c = Cluster::new(&["n0", "n1"], memory()).await;
    let body =
        json!({"team": "t", "tasks": 2, "gpus": 4, "fence": true, "command": ["sleep", "600"]});
    let (status, r) = c.call("POST", "/api/v1/jobs", &c.admin, body).await;
    assert_eq!(status, 200, "{r}");
    let gang = r["job"].as_u64().unwrap();
    c.tick(0);
    let j = c.job(gang).await;
    let (alive, fenced) = (j.placement[0].node.clone(), j.placement[1].node.clone());
    let timeout_ms = config().node_timeout_s * 1000;
    for node in [&alive, &fenced] {
        let cmds = c.poll(node).await;
        assert!(
            cmds.iter().all(
                |c| matches!(c, Command::Launch(l) if l.fence_after_ms == Some(timeout_ms * 2 / 3))
            ),
            "{cmds:?}"
        );
    }
    let body = json!({"running": [], "exited": [{"key": key(gang, 1, 1), "code": 137, "fenced": true}], "util": []});
    let (status, r) = c
        .call("POST", "/agent/v1/heartbeat", &c.creds[&fenced], body)
        .await;
    assert_eq!(status, 200, "{r}");
    c.tick(0);
    let j = c.job(gang).await;
    assert_eq!(j.state, qm_proto::JobState::Stopping, "{j:?}");
    assert!(
        serde_json::to_string(&j.events).unwrap().contains("fenced"),
        "{:?}",
        j.events
    );
    assert_eq!(kills(&c.poll(&alive).await), vec![key(gang, 0, 1)]);
    c.beat(&alive, &[], &[(key(gang, 0, 1), 143)]).await;
    c.tick(0);
    let j = c.job(gang).await;
    assert!(
        matches!(
            j.state,
            qm_proto::JobState::Pending | qm_proto::JobState::Running
        ),
        "{j:?}"
    );
}
