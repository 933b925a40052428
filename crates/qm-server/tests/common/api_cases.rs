//! The API's cases, run on each store by `api.rs` (SQLite) and `api_pg.rs` (PostgreSQL):
//! `super::store()` gives the store a case's server opens.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use qm_proto::{
    DashSnapshot, Heartbeat, JobView, QueuePage, RegisterRequest, RegisterResponse, TaskKey,
    TaskUtil, TeamView, WhoAmI,
};
use qm_server::{Server, ServerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    server: Arc<Server>,
    admin: String,
}

impl Api {
    fn new() -> Api {
        Api::with(ServerConfig::default())
    }

    fn with(config: ServerConfig) -> Api {
        let server = Server::open(super::store(), config).unwrap();
        let admin = server.create_token("admin", "admin", &[]).unwrap();
        Api { server, admin }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, axum::body::Body, Option<String>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let resp = qm_server::app(self.server.clone())
            .oneshot(req)
            .await
            .unwrap();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let status = resp.status();
        (status, resp.into_body(), content_type)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let (status, body, _) = self.raw(method, path, token, body).await;
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn ok<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> T {
        let (status, text) = self.call(method, path, &self.admin, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// A 4-GPU node, registered as its agent would; its credential.
    async fn node(&self) -> (u32, String) {
        let join = self.server.create_token("agent", "join", &[]).unwrap();
        let (status, text) = self.register("n0", &join).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let r: RegisterResponse = serde_json::from_str(&text).unwrap();
        (0, r.credential)
    }

    /// Registers a 4-GPU node named `name` with `token`.
    async fn register(&self, name: &str, token: &str) -> (StatusCode, String) {
        self.register_with(name, token, None).await
    }

    /// Registers a 4-GPU node named `name` with `token`, proposing `credential`.
    async fn register_with(
        &self,
        name: &str,
        token: &str,
        credential: Option<&str>,
    ) -> (StatusCode, String) {
        let req = RegisterRequest {
            credential: credential.map(str::to_string),
            ..super::common::node_request(name)
        };
        self.call(
            "POST",
            "/agent/v1/register",
            token,
            Some(serde_json::to_value(req).unwrap()),
        )
        .await
    }

    /// Creates or updates a team with one guarantee for every model.
    async fn team(&self, name: &str, guaranteed: u32) -> TeamView {
        self.ok(
            "POST",
            "/api/v1/admin/teams",
            Some(json!({"name": name, "guaranteed": guaranteed})),
        )
        .await
    }

    async fn submit(&self, team: &str, gpus: u32) -> u64 {
        let r: Value = self
            .ok(
                "POST",
                "/api/v1/jobs",
                Some(json!({"team": team, "gpus": gpus, "command": ["sleep", "300"]})),
            )
            .await;
        r["job"].as_u64().unwrap()
    }

    /// The node (by its credential) uploads `data` as the output of a one-task job's first run.
    async fn upload_log(&self, credential: &str, job: u64, data: &str) {
        let key = json!({"job": job, "task": 0, "attempt": 1});
        let (status, text) = self
            .call(
                "POST",
                "/agent/v1/logs",
                credential,
                Some(json!({"key": key, "offset": 0, "data": data})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    /// The node reports that a one-task job's first run exited with code 0.
    async fn exit_ok(&self, credential: &str, job: u64) {
        let key = json!({"job": job, "task": 0, "attempt": 1});
        let hb = json!({"running": [], "exited": [{"key": key, "code": 0}], "util": []});
        let (status, text) = self
            .call("POST", "/agent/v1/heartbeat", credential, Some(hb))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    /// The node each task of a job runs on.
    async fn nodes_of(&self, job: u64) -> Vec<String> {
        let j: JobView = self.ok("GET", &format!("/api/v1/jobs/{job}"), None).await;
        j.placement.into_iter().map(|t| t.node).collect()
    }

    async fn metrics(&self) -> String {
        self.call("GET", "/metrics", &self.admin, None).await.1
    }

    /// The first snapshot of the dashboard's stream.
    async fn snapshot(&self) -> DashSnapshot {
        self.snapshot_as(&self.admin).await
    }

    /// The first snapshot of the dashboard's stream, as `token` sees it.
    async fn snapshot_as(&self, token: &str) -> DashSnapshot {
        let (status, body, _) = self.raw("GET", "/api/v1/stream", token, None).await;
        assert_eq!(status, StatusCode::OK);
        let mut stream = body.into_data_stream();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = stream.next().await.expect("a snapshot").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line");
        serde_json::from_str(data).unwrap()
    }
}

#[tokio::test]
async fn an_unknown_role_is_refused_with_the_valid_ones() {
    let api = Api::new();
    let (status, text) = api
        .call(
            "POST",
            "/api/v1/admin/tokens",
            &api.admin,
            Some(json!({"name": "x", "role": "boss"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let err: qm_proto::ApiError = serde_json::from_str(&text).unwrap();
    assert_eq!(err.error, "bad_request");
    for valid in ["admin", "member", "join"] {
        assert!(err.message.contains(valid), "{}", err.message);
    }
    assert!(err.message.contains("boss"), "{}", err.message);
    // Through the library too (as `qm up` creates its first tokens).
    let e = api.server.create_token("x", "boss", &[]).unwrap_err();
    assert!(
        format!("{e:?}").contains("valid: admin, member, join"),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_unknown_state_filter_is_refused_with_the_valid_ones() {
    let api = Api::new();
    let (status, text) = api
        .call("GET", "/api/v1/jobs?state=sleeping", &api.admin, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let err: qm_proto::ApiError = serde_json::from_str(&text).unwrap();
    assert_eq!(err.error, "bad_request");
    for valid in qm_proto::JobState::NAMES {
        assert!(err.message.contains(valid), "{}", err.message);
    }
    // A known state filters.
    let jobs: Vec<JobView> = api.ok("GET", "/api/v1/jobs?state=pending", None).await;
    assert!(jobs.is_empty());
}

#[tokio::test]
async fn roles_are_checked_by_the_extractors() {
    let api = Api::new();
    let (_, credential) = api.node().await;
    let (status, text) = api.call("GET", "/api/v1/jobs", &credential, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("not an agent's"), "{text}");
    let (status, text) = api
        .call("POST", "/api/v1/nodes/n0/drain", &credential, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("needs an admin token"), "{text}");
    let (status, text) = api
        .call(
            "POST",
            "/agent/v1/heartbeat",
            &api.admin,
            Some(json!(Heartbeat::default())),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("needs a node credential"), "{text}");
    let (status, text) = api.call("GET", "/api/v1/teams", "qm_nobody", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("unknown token"), "{text}");
}

/// The API's teams, the dashboard's snapshot and `/metrics` count the same GPUs as
/// allocated, borrowed and idle, team by team.
#[tokio::test]
async fn teams_dashboard_and_metrics_agree_on_borrowed_and_idle_gpus() {
    let api = Api::new();
    let (node, credential) = api.node().await;
    for (team, guaranteed) in [("owner", 2), ("borrower", 0)] {
        api.team(team, guaranteed).await;
    }
    // The owner's guarantee lives on the one node; the borrower has none.
    let teams: Vec<TeamView> = api.ok("GET", "/api/v1/teams", None).await;
    let home = |name: &str| teams.iter().find(|t| t.name == name).unwrap().home.clone();
    assert_eq!(home("owner"), vec!["n0".to_string()]);
    assert!(home("borrower").is_empty());
    let owned = api.submit("owner", 1).await;
    let borrowed: Vec<u64> = vec![
        api.submit("borrower", 1).await,
        api.submit("borrower", 1).await,
    ];
    api.server.tick().unwrap();
    // One borrowed job and the owner's job report idle GPUs, the other borrowed one is busy.
    let mut running = Vec::new();
    let mut util = Vec::new();
    for (id, pct) in [(owned, 0), (borrowed[0], 0), (borrowed[1], 90)] {
        let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{id}"), None).await;
        assert_eq!(j.state, qm_proto::JobState::Running, "{j:?}");
        let key = TaskKey {
            job: id,
            task: 0,
            attempt: j.attempt,
        };
        running.push(key.clone());
        util.push(TaskUtil { key, pct });
    }
    let hb = Heartbeat {
        running,
        exited: Vec::new(),
        util,
    };
    let (status, text) = api
        .call(
            "POST",
            "/agent/v1/heartbeat",
            &credential,
            Some(serde_json::to_value(hb).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let _ = node;

    check_totals(
        &api,
        &[("owner", (1000, 0, 1000)), ("borrower", (2000, 2000, 1000))],
        (3000, 2000, 2000),
    )
    .await;

    // A guarantee raised at run time turns the borrower's oldest job into guaranteed capacity
    // at once, everywhere: it can no longer be reclaimed, so it is no longer borrowed.
    api.team("borrower", 1).await;
    check_totals(
        &api,
        &[("owner", (1000, 0, 1000)), ("borrower", (2000, 1000, 1000))],
        (3000, 1000, 2000),
    )
    .await;
}

/// The team API, the dashboard's snapshot and `/metrics` all show these (allocated,
/// borrowed, idle) milli-GPUs per team, and the overview these in total.
async fn check_totals(api: &Api, expect: &[(&str, (u64, u64, u64))], overview: (u64, u64, u64)) {
    let teams: Vec<TeamView> = api.ok("GET", "/api/v1/teams", None).await;
    let team = |name: &str| teams.iter().find(|t| t.name == name).unwrap().clone();
    for &(name, (allocated, borrowed, idle)) in expect {
        let t = team(name);
        assert_eq!(
            (t.used_milli, t.borrowed_milli, t.idle_milli),
            (allocated, borrowed, idle),
            "{name}: {t:?}"
        );
    }

    let snap = api.snapshot().await;
    for &(name, (allocated, borrowed, idle)) in expect {
        let t = snap.teams.iter().find(|t| t.name == name).unwrap();
        assert_eq!(
            (t.used_milli, t.borrowed_milli, t.idle_milli),
            (allocated, borrowed, idle),
            "dashboard, {name}"
        );
    }
    assert_eq!(
        (
            snap.overview.allocated_milli,
            snap.overview.borrowed_milli,
            snap.overview.idle_milli
        ),
        overview
    );

    let (status, body, content_type) = api.raw("GET", "/metrics", &api.admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let content_type = content_type.unwrap();
    assert!(
        content_type.starts_with(qm_server::METRICS_CONTENT_TYPE),
        "{content_type}"
    );
    let text = String::from_utf8(
        axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads /metrics");
    let metric = |name: &str, team: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("team") == Some(team))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .sum()
    };
    for &(name, (allocated, borrowed, idle)) in expect {
        let gpus = |milli: u64| milli as f64 / 1000.0;
        assert_eq!(
            (
                metric("qm_gpus_allocated", name),
                metric("qm_gpus_borrowed", name),
                metric("qm_gpus_idle", name)
            ),
            (gpus(allocated), gpus(borrowed), gpus(idle)),
            "/metrics, {name}\n{text}"
        );
    }
}

/// Every field `assets/app.js` reads from a snapshot is there, with the JSON type it expects.
#[tokio::test]
async fn the_snapshot_has_every_field_the_dashboard_reads() {
    let api = Api::new();
    let _ = api.node().await;
    api.team("a", 1).await;
    // A 1-GPU job with a time limit runs; the 4-GPU job after it gets a reservation at the
    // limit's end, so the snapshot has one to show.
    let _: Value = api
        .ok(
            "POST",
            "/api/v1/jobs",
            Some(
                json!({"team": "a", "gpus": 1, "time_limit_s": 3600, "command": ["sleep", "300"]}),
            ),
        )
        .await;
    api.submit("a", 4).await;
    api.server.tick().unwrap();
    let snap = serde_json::to_value(api.snapshot().await).unwrap();
    let number = |v: &Value| v.is_number();
    let string = |v: &Value| v.is_string();
    type Check<'a> = &'a dyn Fn(&Value) -> bool;
    // Not covered: the overview's history samples, which only the scheduling loop takes.
    let paths: [(&str, Check); 30] = [
        ("/now", &number),
        ("/overview/gpus_milli", &number),
        ("/overview/allocated_milli", &number),
        ("/overview/borrowed_milli", &number),
        ("/overview/idle_milli", &number),
        ("/overview/free_milli", &number),
        ("/overview/running", &number),
        ("/overview/pending", &number),
        ("/teams/0/name", &string),
        ("/teams/0/guaranteed_milli", &number),
        ("/teams/0/used_milli", &number),
        ("/teams/0/borrowed_milli", &number),
        ("/teams/0/idle_milli", &number),
        ("/teams/0/idle_gpu_hours", &number),
        ("/teams/0/standing/standing", &number),
        ("/queue/total", &number),
        ("/queue/jobs/0/id", &number),
        ("/queue/jobs/0/ask", &string),
        ("/queue/jobs/0/reason", &string),
        ("/queue/jobs/0/wait_s", &number),
        ("/queue/reservations/0/id", &number),
        ("/queue/reservations/0/nodes/0", &string),
        ("/queue/reservations/0/start_s", &number),
        ("/nodes/0/rack", &string),
        ("/nodes/0/state", &|v| v == "ready"),
        ("/nodes/0/gpus/0/0", &number),
        ("/nodes/0/gpus/0/1", &number),
        ("/history", &|v| v.is_array()),
        ("/jobs/0/state", &|v| v == "pending"),
        ("/jobs/1/admission", &|v| v == "guaranteed"),
    ];
    for (path, ok) in paths {
        let v = snap
            .pointer(path)
            .unwrap_or_else(|| panic!("no {path} in {snap}"));
        assert!(ok(v), "{path} is {v}");
    }
    for key in [
        "id",
        "team",
        "state",
        "ask",
        "name",
        "preemptions",
        "admission",
    ] {
        assert!(snap["jobs"][0].get(key).is_some(), "jobs[0].{key}");
    }
    for key in ["id", "team", "eta_s"] {
        assert!(
            snap["queue"]["jobs"][0].get(key).is_some(),
            "queue.jobs[0].{key}"
        );
    }
}

#[tokio::test]
async fn a_member_is_named_as_a_unix_user_and_never_root() {
    let api = Api::new();
    api.team("ml", 1).await;
    for (name, says) in [
        ("root", "may not be named \"root\""),
        ("Alice", "not a Unix user name"),
        ("bob smith", "not a Unix user name"),
        ("../etc", "not a Unix user name"),
        ("", "not a Unix user name"),
    ] {
        let (status, text) = api
            .call(
                "POST",
                "/api/v1/admin/tokens",
                &api.admin,
                Some(json!({"name": name, "role": "member", "teams": ["ml"]})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {text}");
        let err: qm_proto::ApiError = serde_json::from_str(&text).unwrap();
        assert!(err.message.contains(says), "{name:?}: {}", err.message);
    }
    let (status, text) = api
        .call(
            "POST",
            "/api/v1/admin/tokens",
            &api.admin,
            Some(json!({"name": "alice", "role": "member", "teams": ["ml"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn a_tasks_log_stops_at_the_limit_with_a_marker_and_big_chunks_are_refused() {
    let api = Api::with(ServerConfig {
        max_log_bytes: 100,
        ..ServerConfig::default()
    });
    let (_, credential) = api.node().await;
    api.team("ml", 1).await;
    let job = api.submit("ml", 1).await;
    api.server.tick().unwrap();
    let key = json!({"job": job, "task": 0, "attempt": 1});
    let send = |offset: u64, data: String| {
        let body = json!({"key": key.clone(), "offset": offset, "data": data});
        let api = &api;
        let credential = credential.clone();
        async move {
            api.call("POST", "/agent/v1/logs", &credential, Some(body))
                .await
        }
    };
    let ack = |text: &str| serde_json::from_str::<Value>(text).unwrap()["length"].as_u64();
    let (status, text) = send(0, "a".repeat(60)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(ack(&text), Some(60));
    // Crossing the limit: 40 bytes kept, the rest dropped, the agent told to move on.
    let (status, text) = send(60, "b".repeat(60)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(ack(&text), Some(120));
    let (_, text) = send(120, "c".repeat(10)).await;
    assert_eq!(ack(&text), Some(130));
    // One chunk bigger than a node may send at once: refused, nothing stored.
    let (status, text) = send(130, "d".repeat(qm_server::MAX_LOG_CHUNK + 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("send at most"), "{text}");
    let log: Value = api
        .ok("GET", &format!("/api/v1/jobs/{job}/logs?attempt=1"), None)
        .await;
    let data = log["data"].as_str().unwrap();
    assert!(
        data.starts_with(&format!("{}{}", "a".repeat(60), "b".repeat(40))),
        "{data}"
    );
    assert!(data.contains("the limit per task"), "{data}");
    assert!(
        data.ends_with("dropped]\n"),
        "nothing after the marker: {data}"
    );
    assert!(!data.contains("cc") && !data.contains("dd"), "{data}");
}

/// A node's credential speaks for the tasks placed on that node and no others: a heartbeat
/// that reports another node's task as exited, idle or running, and a log chunk for another
/// node's task (or one never placed), are refused whole with 403, logged and counted, and the
/// victim job is untouched.
#[tokio::test]
async fn a_node_speaks_only_for_its_own_tasks() {
    let api = Api::new();
    let join = api.server.create_token("agents", "join", &[]).unwrap();
    let mut creds = BTreeMap::new();
    for name in ["n0", "n1"] {
        let (status, text) = api.register(name, &join).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let r: RegisterResponse = serde_json::from_str(&text).unwrap();
        creds.insert(name.to_string(), r.credential);
    }
    api.team("ml", 8).await;
    let victim = api.submit("ml", 4).await;
    api.server.tick().unwrap();
    let home = api.nodes_of(victim).await[0].clone();
    let other = if home == "n0" { "n1" } else { "n0" };
    let (own, attacker) = (&creds[&home], &creds[other]);
    let key = TaskKey {
        job: victim,
        task: 0,
        attempt: 1,
    };
    let attacks = [
        Heartbeat {
            exited: vec![qm_proto::TaskExit {
                key: key.clone(),
                code: 1,
                message: None,
                fenced: false,
            }],
            ..Heartbeat::default()
        },
        Heartbeat {
            util: vec![TaskUtil {
                key: key.clone(),
                pct: 0,
            }],
            ..Heartbeat::default()
        },
        Heartbeat {
            running: vec![key.clone()],
            ..Heartbeat::default()
        },
    ];
    for hb in attacks {
        let body = serde_json::to_value(&hb).unwrap();
        let (status, text) = api
            .call("POST", "/agent/v1/heartbeat", attacker, Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{hb:?}: {text}");
        assert!(
            text.contains(&format!("which runs on node {home}"))
                && text.contains("a node speaks only for its own tasks"),
            "{text}"
        );
    }
    let chunk = |key: &TaskKey| json!({"key": key, "offset": 0, "data": "forged\n"});
    let (status, text) = api
        .call("POST", "/agent/v1/logs", attacker, Some(chunk(&key)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    // A task the gang does not have: not even the job's own node may report it (a forged
    // exit of "task 1" would otherwise complete this one-task job).
    let beyond = TaskKey {
        job: victim,
        task: 1,
        attempt: 1,
    };
    for token in [own, attacker] {
        let hb = Heartbeat {
            exited: vec![qm_proto::TaskExit {
                key: beyond.clone(),
                code: 0,
                message: None,
                fenced: false,
            }],
            ..Heartbeat::default()
        };
        let body = Some(serde_json::to_value(&hb).unwrap());
        let (status, text) = api.call("POST", "/agent/v1/heartbeat", token, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        assert!(text.contains("never placed on it"), "{text}");
    }
    // A run that never was: no node speaks for it.
    let never = TaskKey {
        job: victim,
        task: 0,
        attempt: 2,
    };
    let (status, text) = api
        .call("POST", "/agent/v1/logs", own, Some(chunk(&never)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("never placed on it"), "{text}");
    // The victim is untouched: running, no exit, its log empty, not idle.
    let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{victim}"), None).await;
    assert_eq!(j.state, qm_proto::JobState::Running, "{j:?}");
    assert!(j.placement.iter().all(|t| t.exit_code.is_none()), "{j:?}");
    let log: Value = api
        .ok(
            "GET",
            &format!("/api/v1/jobs/{victim}/logs?attempt=1"),
            None,
        )
        .await;
    assert_eq!(log["data"].as_str(), Some(""), "{log}");
    // Its own node still speaks for it.
    let hb = Heartbeat {
        running: vec![key.clone()],
        ..Heartbeat::default()
    };
    let (status, text) = api
        .call(
            "POST",
            "/agent/v1/heartbeat",
            own,
            Some(serde_json::to_value(hb).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, text) = api
        .call("POST", "/agent/v1/logs", own, Some(chunk(&key)))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let metrics = api.metrics().await;
    for line in [
        format!("qm_agent_refused_total{{node=\"{other}\",what=\"heartbeat\"}} 4"),
        format!("qm_agent_refused_total{{node=\"{other}\",what=\"log chunk\"}} 1"),
        format!("qm_agent_refused_total{{node=\"{home}\",what=\"heartbeat\"}} 1"),
        format!("qm_agent_refused_total{{node=\"{home}\",what=\"log chunk\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

/// Registering a name that is taken needs that node's credential or an admin's reset: a join
/// token cannot take a node over (and with it the launches of other teams' tasks), nor can
/// one node's credential register another.
#[tokio::test]
async fn a_node_name_is_taken_over_only_with_its_credential_or_after_a_reset() {
    let api = Api::new();
    let join = api.server.create_token("agents", "join", &[]).unwrap();
    api.team("ml", 0).await;
    let member = api
        .server
        .create_token("alice", "member", &["ml".to_string()])
        .unwrap();
    let credential = |text: &str| {
        serde_json::from_str::<RegisterResponse>(text)
            .unwrap()
            .credential
    };
    let (status, text) = api.register("n0", &join).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let first = credential(&text);
    let (status, text) = api.register("n0", &join).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("qm nodes reset n0"), "{text}");
    let (status, text) = api.register("n0", &member).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let (status, text) = api.register("bad name", &join).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("1 to 63 letters"), "{text}");
    // The node itself, coming back with its credential, keeps it: registering again is
    // idempotent (an answer lost on the way never locks a node out).
    let (status, text) = api.register("n0", &first).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let second = credential(&text);
    assert_eq!(second, first);
    assert_eq!(beat(&api, &second).await, StatusCode::OK);
    // An agent that chose its credential proves it beside the join token (its first answer
    // lost): the same node; a wrong one is a takeover, refused.
    let mine = "qmn_0123456789abcdef0123456789abcdef01234567";
    let (status, text) = api.register_with("n2", &join, Some(mine)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(credential(&text), mine);
    let (status, text) = api.register_with("n2", &join, Some(mine)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let wrong = "qmn_ffffffffffffffffffffffffffffffffffffffff";
    let (status, text) = api.register_with("n2", &join, Some(wrong)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    // A credential names one node: n3 may not take n2's, nor an API token's form.
    let (status, text) = api.register_with("n3", &join, Some(mine)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("in use"), "{text}");
    let (status, text) = api.register_with("n3", &join, Some("short")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    // One node's credential does not register another name.
    let (status, text) = api.register("n1", &second).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("registers only that node"), "{text}");
    // Only an admin resets; after that the credential is void and a join token may register
    // the name again (the replaced machine).
    let (status, _) = api
        .call("POST", "/api/v1/nodes/n0/reset", &member, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call("POST", "/api/v1/nodes/n0/reset", &second, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, text) = api
        .call("POST", "/api/v1/nodes/n0/reset", &api.admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(beat(&api, &second).await, StatusCode::UNAUTHORIZED);
    let (status, text) = api.register("n0", &join).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let nodes: Vec<Value> = api.ok("GET", "/api/v1/nodes", None).await;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(api
        .metrics()
        .await
        .contains("qm_agent_refused_total{node=\"(join token)\",what=\"register\"} 2"));
}

/// The status of an empty heartbeat sent with `token`.
async fn beat(api: &Api, token: &str) -> StatusCode {
    let body = Some(serde_json::to_value(Heartbeat::default()).unwrap());
    api.call("POST", "/agent/v1/heartbeat", token, body).await.0
}

/// Who calls, in the authorisation matrix.
#[derive(Clone, Copy, Debug)]
enum Who {
    NoToken,
    WrongToken,
    /// A member of team `a`, which owns job 1.
    Member,
    /// A member of team `b` only.
    OtherMember,
    /// Node n0's credential (job 1 runs there).
    Node,
    Join,
    Admin,
}

/// A fresh cluster for one cell of the matrix: node n0, teams a and b, job 1 of team a
/// running on n0; the token of `who`.
async fn matrix_fixture(who: Who) -> (Api, Option<String>) {
    let api = Api::new();
    let (_, node) = api.node().await;
    api.team("a", 4).await;
    api.team("b", 0).await;
    api.submit("a", 1).await;
    api.server.tick().unwrap();
    let member = |team: &str, name: &str| {
        api.server
            .create_token(name, "member", &[team.to_string()])
            .unwrap()
    };
    let token = match who {
        Who::NoToken => None,
        Who::WrongToken => Some("qm_0000000000000000000000000000000000000000".to_string()),
        Who::Member => Some(member("a", "alice")),
        Who::OtherMember => Some(member("b", "bob")),
        Who::Node => Some(node),
        Who::Join => Some(api.server.create_token("agents", "join", &[]).unwrap()),
        Who::Admin => Some(api.admin.clone()),
    };
    (api, token)
}

/// Every route against every kind of caller, each on a fresh cluster, with the status
/// expected. Every route of the router must be in the OpenAPI document, and every path and
/// method of the document must have a row: a new route without one fails here.
#[tokio::test]
async fn every_route_answers_each_caller_as_its_role_allows() {
    use Who::*;
    const WHO: [Who; 7] = [NoToken, WrongToken, Member, OtherMember, Node, Join, Admin];
    let register = serde_json::to_value(super::common::node_request("n0")).unwrap();
    let key = json!({"job": 1, "task": 0, "attempt": 1});
    // (method, path, body, [no token, wrong token, member, other member, node, join, admin])
    let rows: Vec<(&str, &str, Option<Value>, [u16; 7])> = vec![
        ("GET", "/", None, [200; 7]),
        ("GET", "/assets/app.js", None, [200; 7]),
        ("GET", "/assets/app.css", None, [200; 7]),
        (
            "GET",
            "/api/openapi.json",
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        ("GET", "/metrics", None, [401, 401, 200, 200, 403, 403, 200]),
        (
            "GET",
            "/api/v1/stream",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(json!({"team": "a", "command": ["true"]})),
            [401, 401, 200, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/jobs",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/jobs/{id}",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/jobs/{id}/why",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/jobs/{id}/cancel",
            None,
            [401, 401, 200, 403, 403, 403, 200],
        ),
        // Another team's job is refused in the answer, job by job.
        (
            "POST",
            "/api/v1/jobs/cancel",
            Some(json!({"jobs": [1]})),
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/jobs/{id}/logs",
            None,
            [401, 401, 200, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/nodes",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/cluster",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/nodes/{name}/drain",
            None,
            [401, 401, 403, 403, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/nodes/{name}/resume",
            None,
            [401, 401, 403, 403, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/nodes/{name}/reset",
            None,
            [401, 401, 403, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/teams",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/report",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/queue",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "GET",
            "/api/v1/whoami",
            None,
            [401, 401, 200, 200, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/admin/teams",
            Some(json!({"name": "c", "guaranteed": 1})),
            [401, 401, 403, 403, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/admin/tokens",
            Some(json!({"name": "carol", "role": "member", "teams": ["a"]})),
            [401, 401, 403, 403, 403, 403, 200],
        ),
        // A join token may not take over the registered n0; its own credential may.
        (
            "POST",
            "/agent/v1/register",
            Some(register),
            [401, 401, 403, 403, 200, 403, 200],
        ),
        (
            "POST",
            "/agent/v1/heartbeat",
            Some(json!({"running": [key], "exited": [], "util": []})),
            [401, 401, 403, 403, 200, 403, 403],
        ),
        (
            "GET",
            "/agent/v1/commands?wait_s=0",
            None,
            [401, 401, 403, 403, 200, 403, 403],
        ),
        (
            "POST",
            "/agent/v1/logs",
            Some(json!({"key": key, "offset": 0, "data": "x"})),
            [401, 401, 403, 403, 200, 403, 403],
        ),
    ];
    // The document's routes and the table's are the same.
    let doc = qm_server::openapi_doc();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut tabled: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.0.to_string(), r.1.split('?').next().unwrap().to_string()))
        .collect();
    documented.sort();
    tabled.sort();
    assert_eq!(
        documented, tabled,
        "the OpenAPI document and the matrix differ"
    );
    // Every route the router has is documented.
    let source = include_str!("../../src/api/mod.rs");
    for line in source
        .lines()
        .filter(|l| l.trim_start().starts_with(".route(\""))
    {
        let path = line.split('"').nth(1).unwrap();
        assert!(
            doc["paths"].get(path).is_some(),
            "route {path} is not in the OpenAPI document (nor in this matrix)"
        );
    }
    for (method, path, body, expect) in rows {
        let path = path.replace("{id}", "1").replace("{name}", "n0");
        for (who, want) in WHO.iter().zip(expect) {
            let (api, token) = matrix_fixture(*who).await;
            let mut req = Request::builder().method(method).uri(&path);
            if let Some(t) = &token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let req = req
                .header("content-type", "application/json")
                .body(
                    body.clone()
                        .map_or_else(Body::empty, |b| Body::from(b.to_string())),
                )
                .unwrap();
            let resp = qm_server::app(api.server.clone())
                .oneshot(req)
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = if path == "/api/v1/stream" {
                String::new()
            } else {
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            assert_eq!(status, want, "{method} {path} as {who:?}: {text}");
        }
    }
}

/// Members see other teams' jobs without their commands, and neither their logs nor a way
/// to cancel them; with `private_jobs`, not at all (lists, by id, the dashboard stream).
#[tokio::test]
async fn members_see_other_teams_jobs_without_commands_or_not_at_all() {
    for private in [false, true] {
        let api = Api::with(ServerConfig {
            private_jobs: private,
            ..ServerConfig::default()
        });
        api.node().await;
        api.team("a", 2).await;
        api.team("b", 2).await;
        let theirs = api.submit("a", 1).await;
        // A batch script of team a: its text is as private as its command.
        let (status, text) = api
            .call(
                "POST",
                "/api/v1/jobs",
                &api.admin,
                Some(
                    json!({"team": "a", "command": ["s.sh"], "script": "#!/bin/sh\necho secret\n"}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let scripted: u64 = serde_json::from_str::<serde_json::Value>(&text).unwrap()["job"]
            .as_u64()
            .unwrap();
        api.server.tick().unwrap();
        let bob = api
            .server
            .create_token("bob", "member", &["b".to_string()])
            .unwrap();
        let (status, text) = api
            .call(
                "POST",
                "/api/v1/jobs",
                &bob,
                Some(json!({"team": "b", "command": ["echo", "mine"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let (_, text) = api.call("GET", "/api/v1/jobs", &bob, None).await;
        let list: Vec<JobView> = serde_json::from_str(&text).unwrap();
        let mine = list.iter().find(|j| j.team == "b").unwrap();
        assert_eq!(mine.command, vec!["echo".to_string(), "mine".into()]);
        let other = list.iter().find(|j| j.id == theirs);
        let (show, _) = api
            .call("GET", &format!("/api/v1/jobs/{theirs}"), &bob, None)
            .await;
        let (logs, _) = api
            .call("GET", &format!("/api/v1/jobs/{theirs}/logs"), &bob, None)
            .await;
        let (cancel, _) = api
            .call("POST", &format!("/api/v1/jobs/{theirs}/cancel"), &bob, None)
            .await;
        let snap = api.snapshot_as(&bob).await;
        let in_stream = snap.jobs.iter().any(|j| j.id == theirs);
        // The heat map's tasks name their jobs: another team's only where jobs are shared.
        let on_nodes = snap
            .nodes
            .iter()
            .flat_map(|n| &n.tasks)
            .any(|t| t.job == theirs && t.team == "a");
        assert_eq!(on_nodes, !private, "{:?}", snap.nodes);
        if private {
            assert!(other.is_none(), "{other:?}");
            assert_eq!(show, StatusCode::NOT_FOUND);
            assert_eq!(logs, StatusCode::NOT_FOUND);
            assert_eq!(cancel, StatusCode::NOT_FOUND);
            assert!(!in_stream);
        } else {
            let other = other.unwrap();
            assert!(other.command.is_empty(), "{other:?}");
            let (_, text) = api
                .call("GET", &format!("/api/v1/jobs/{scripted}"), &bob, None)
                .await;
            assert!(
                !text.contains("secret"),
                "another team's script shown: {text}"
            );
            assert_eq!(other.state, qm_proto::JobState::Running);
            assert_eq!(show, StatusCode::OK);
            assert_eq!(logs, StatusCode::FORBIDDEN);
            assert_eq!(cancel, StatusCode::FORBIDDEN);
            assert!(in_stream);
        }
        // The owner's job is untouched either way.
        let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{theirs}"), None).await;
        assert_eq!(j.state, qm_proto::JobState::Running);
        assert_eq!(j.command, vec!["sleep".to_string(), "300".into()]);
    }
}

/// A member's priorities stay in the range its team's admin set (default 0..0); every field
/// of a submission has a limit; a user and a team have a limit on pending jobs. Each refusal
/// names the limit and changes nothing.
#[tokio::test]
async fn submissions_stay_within_their_limits() {
    let api = Api::with(ServerConfig {
        max_pending_per_user: 3,
        max_pending_per_team: 5,
        ..ServerConfig::default()
    });
    // One node, drained: jobs are accepted and stay pending.
    api.node().await;
    let _: Value = api.ok("POST", "/api/v1/nodes/n0/drain", None).await;
    api.team("a", 0).await;
    let alice = api
        .server
        .create_token("alice", "member", &["a".to_string()])
        .unwrap();
    let carol = api
        .server
        .create_token("carol", "member", &["a".to_string()])
        .unwrap();
    let submit = |token: String, extra: Value| {
        let api = &api;
        async move {
            let mut body = json!({"team": "a", "command": ["true"]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            api.call("POST", "/api/v1/jobs", &token, Some(body)).await
        }
    };
    let (status, text) = submit(alice.clone(), json!({"priority": 1})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("outside team a's range 0..0"), "{text}");
    // An admin is not bounded, and may widen a team's range.
    let (status, text) = submit(api.admin.clone(), json!({"priority": 50})).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let t: TeamView = api
        .ok(
            "POST",
            "/api/v1/admin/teams",
            Some(json!({"name": "a", "priorities": [-5, 5]})),
        )
        .await;
    assert_eq!(t.priorities, [-5, 5]);
    let (status, text) = submit(alice.clone(), json!({"priority": 5})).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _) = submit(alice.clone(), json!({"priority": 6})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"command": vec!["x"; 5000]}),
            "at most 4096 are allowed",
        ),
        (
            json!({"command": ["echo", "a".repeat(300 << 10)]}),
            "bytes; at most 262144",
        ),
        (
            json!({"env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}}),
            "set by the scheduler",
        ),
        (json!({"env": {"QM_JOB_ID": "7"}}), "set by the scheduler"),
        (json!({"env": {"A B": "1"}}), "is not allowed"),
        (
            json!({"env": {"BIG": "x".repeat(300 << 10)}}),
            "at most 262144",
        ),
        (json!({"name": "n".repeat(300)}), "name is 300 bytes"),
        (json!({"name": "a\u{1b}[31m"}), "control character"),
        (json!({"workdir": "relative/dir"}), "is relative"),
        (json!({"user": "Robert'); DROP"}), "is not a Unix user name"),
    ];
    for (extra, why) in bad {
        let (status, text) = submit(api.admin.clone(), extra.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {text}");
        assert!(text.contains(why), "{why}: {text}");
    }
    // Pending limits: alice has one pending; two more reach her limit of 3.
    for _ in 0..2 {
        let (status, text) = submit(alice.clone(), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let (status, text) = submit(alice.clone(), json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(text.contains("--max-pending-per-user"), "{text}");
    // The team has 4 pending (alice's 3, the admin's); carol adds the fifth, then the team is full.
    let (status, text) = submit(carol.clone(), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, text) = submit(carol.clone(), json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(text.contains("--max-pending-per-team"), "{text}");
    let list: Vec<JobView> = api.ok("GET", "/api/v1/jobs", None).await;
    assert_eq!(list.len(), 5, "refusals changed nothing");
}

/// An admin caps a team's CPU; the team's view shows the cap, a job that would pass it waits
/// and `why` says which team's cap and by how much; 0 removes the cap.
#[tokio::test]
async fn a_teams_cpu_cap_is_set_shown_and_explained() {
    let api = Api::new();
    api.node().await;
    api.team("a", 1).await;
    let t: TeamView = api
        .ok(
            "POST",
            "/api/v1/admin/teams",
            Some(json!({"name": "a", "max_cpu": 3})),
        )
        .await;
    assert_eq!(t.max_cpu_milli, Some(3000));
    let submit = |cpu: u32| {
        let api = &api;
        async move {
            let r: Value = api
                .ok(
                    "POST",
                    "/api/v1/jobs",
                    Some(json!({"team": "a", "gpus": 0, "cpu_milli": cpu * 1000, "command": ["true"]})),
                )
                .await;
            r["job"].as_u64().unwrap()
        }
    };
    let first = submit(2).await;
    let second = submit(2).await;
    api.server.tick().unwrap();
    let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{first}"), None).await;
    assert_eq!(j.state, qm_proto::JobState::Running, "{j:?}");
    let why: Value = api
        .ok("GET", &format!("/api/v1/jobs/{second}/why"), None)
        .await;
    assert_eq!(why["reason"]["kind"], "over_cpu_max", "{why}");
    assert_eq!(why["reason"]["team"], "a", "{why}");
    assert_eq!(why["reason"]["used_milli"], 2000, "{why}");
    assert_eq!(why["reason"]["max_milli"], 3000, "{why}");
    let t: TeamView = api
        .ok(
            "POST",
            "/api/v1/admin/teams",
            Some(json!({"name": "a", "max_cpu": 0})),
        )
        .await;
    assert_eq!(t.max_cpu_milli, None);
    api.server.tick().unwrap();
    let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{second}"), None).await;
    assert_eq!(j.state, qm_proto::JobState::Running, "{j:?}");
}

/// A list with a limit is the newest jobs that match, newest first.
#[tokio::test]
async fn a_job_list_with_a_limit_is_the_newest_first() {
    let api = Api::new();
    api.node().await;
    let _: Value = api.ok("POST", "/api/v1/nodes/n0/drain", None).await;
    api.team("a", 0).await;
    api.team("b", 0).await;
    let mut ids = Vec::new();
    for team in ["a", "b", "a", "a", "b", "a"] {
        ids.push((team, api.submit(team, 1).await));
    }
    let list: Vec<JobView> = api.ok("GET", "/api/v1/jobs?limit=3", None).await;
    let got: Vec<u64> = list.iter().map(|j| j.id).collect();
    assert_eq!(got, vec![ids[5].1, ids[4].1, ids[3].1]);
    let list: Vec<JobView> = api.ok("GET", "/api/v1/jobs?team=a&limit=2", None).await;
    let got: Vec<u64> = list.iter().map(|j| j.id).collect();
    assert_eq!(got, vec![ids[5].1, ids[3].1]);
    let list: Vec<JobView> = api.ok("GET", "/api/v1/jobs", None).await;
    assert_eq!(list.len(), 6);
    assert!(list.windows(2).all(|w| w[0].id > w[1].id), "newest first");
}

/// The pending queue pages in plan order past the snapshot's first jobs, with a filter over
/// team, id, ask and reason; a bad limit is refused; where jobs are private a member pages
/// through its own teams' jobs only. `whoami` names a member's teams.
#[tokio::test]
async fn the_queue_pages_and_filters_in_plan_order() {
    for private in [false, true] {
        let api = Api::with(ServerConfig {
            private_jobs: private,
            ..ServerConfig::default()
        });
        api.node().await;
        let _: Value = api.ok("POST", "/api/v1/nodes/n0/drain", None).await;
        api.team("alpha", 0).await;
        api.team("bravo", 0).await;
        let mut ids = Vec::new();
        for i in 0..250 {
            let team = if i % 5 == 0 { "bravo" } else { "alpha" };
            ids.push((team, api.submit(team, 1).await));
        }
        api.server.tick().unwrap();
        let all: QueuePage = api.ok("GET", "/api/v1/queue?limit=1000", None).await;
        assert_eq!((all.total, all.matched, all.offset), (250, 250, 0));
        let order: Vec<u64> = all.jobs.iter().map(|j| j.id).collect();
        let mut pages = Vec::new();
        for offset in [0, 100, 200] {
            let page: QueuePage = api
                .ok(
                    "GET",
                    &format!("/api/v1/queue?offset={offset}&limit=100"),
                    None,
                )
                .await;
            assert_eq!(page.offset, offset);
            pages.extend(page.jobs.iter().map(|j| j.id));
        }
        assert_eq!(pages, order, "the pages, end to end, are the queue");
        let b: QueuePage = api
            .ok("GET", "/api/v1/queue?filter=BRAVO%20gpu", None)
            .await;
        assert_eq!(b.matched, 50);
        assert!(b.jobs.iter().all(|j| j.team == "bravo"), "{b:?}");
        let one: QueuePage = api
            .ok("GET", &format!("/api/v1/queue?filter={}", ids[7].1), None)
            .await;
        assert!(one.jobs.iter().any(|j| j.id == ids[7].1), "{one:?}");
        for bad in ["limit=0", "limit=1001"] {
            let (status, text) = api
                .call("GET", &format!("/api/v1/queue?{bad}"), &api.admin, None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert!(text.contains("give 1 to 1000"), "{text}");
        }
        let bob = api
            .server
            .create_token("bob", "member", &["bravo".to_string()])
            .unwrap();
        let (_, text) = api
            .call("GET", "/api/v1/queue?limit=1000", &bob, None)
            .await;
        let seen: QueuePage = serde_json::from_str(&text).unwrap();
        // The member's snapshot: its queue's first page and count are of what it may see.
        let snap = api.snapshot_as(&bob).await;
        if private {
            assert_eq!((seen.total, seen.matched, seen.jobs.len()), (50, 50, 50));
            assert!(seen.jobs.iter().all(|j| j.team == "bravo"));
            assert_eq!((snap.queue.total, snap.queue.jobs.len()), (50, 50));
            assert!(snap.queue.jobs.iter().all(|j| j.team == "bravo"));
        } else {
            assert_eq!((seen.total, seen.jobs.len()), (250, 250));
            assert_eq!((snap.queue.total, snap.queue.jobs.len()), (250, 200));
        }
        // A filtered page past the first.
        let (_, text) = api
            .call(
                "GET",
                "/api/v1/queue?filter=bravo&offset=20&limit=10",
                &bob,
                None,
            )
            .await;
        let page: QueuePage = serde_json::from_str(&text).unwrap();
        let bravo: Vec<u64> = all
            .jobs
            .iter()
            .filter(|j| j.team == "bravo")
            .map(|j| j.id)
            .collect();
        assert_eq!(
            page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
            bravo[20..30].to_vec()
        );
        let (_, text) = api.call("GET", "/api/v1/whoami", &bob, None).await;
        let me: WhoAmI = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (me.role, me.name.as_deref(), me.teams),
            (
                qm_proto::Role::Member,
                Some("bob"),
                vec!["bravo".to_string()]
            )
        );
        let admin: WhoAmI = api.ok("GET", "/api/v1/whoami", None).await;
        assert_eq!(admin.role, qm_proto::Role::Admin);
    }
}

/// Many jobs are cancelled in one request: each is cancelled, found already ended, or
/// refused with why (unknown, another team's); a refused one changes nothing, and an empty or
/// oversized request is refused whole.
#[tokio::test]
async fn many_jobs_are_cancelled_at_once_each_with_its_outcome() {
    let api = Api::new();
    api.node().await;
    api.team("a", 2).await;
    api.team("b", 2).await;
    let running = api.submit("a", 1).await;
    let pending = api.submit("a", 4).await;
    let theirs = api.submit("b", 1).await;
    api.server.tick().unwrap();
    let ended = api.submit("a", 1).await;
    let _: Value = api
        .ok("POST", &format!("/api/v1/jobs/{ended}/cancel"), None)
        .await;
    let alice = api
        .server
        .create_token("alice", "member", &["a".to_string()])
        .unwrap();
    let body = json!({"jobs": [pending, running, ended, theirs, 999_999, pending]});
    let (status, text) = api
        .call("POST", "/api/v1/jobs/cancel", &alice, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let r: qm_proto::CancelReport = serde_json::from_str(&text).unwrap();
    assert_eq!(r.cancelled, vec![running, pending]);
    assert_eq!(r.already_ended, vec![ended]);
    let refused: Vec<u64> = r.refused.iter().map(|x| x.job).collect();
    assert_eq!(refused, vec![theirs, 999_999], "{r:?}");
    assert!(r.refused[0].reason.contains("team"), "{r:?}");
    let state = |id: u64| {
        let api = &api;
        async move {
            let j: JobView = api.ok("GET", &format!("/api/v1/jobs/{id}"), None).await;
            j.state
        }
    };
    assert_eq!(state(pending).await, qm_proto::JobState::Cancelled);
    assert_ne!(state(running).await, qm_proto::JobState::Running);
    assert_eq!(state(theirs).await, qm_proto::JobState::Running);
    for body in [json!({"jobs": []}), json!({"jobs": vec![1; 10_001]})] {
        let (status, text) = api
            .call("POST", "/api/v1/jobs/cancel", &api.admin, Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("give 1 to 10000"), "{text}");
    }
}

/// Dashboard streams are capped: one past the cap is refused with 429 and a reason, and a
/// closed stream makes room (streams being read count); two streams opened together show the
/// same snapshot.
#[tokio::test]
async fn dashboard_streams_are_capped_and_a_closed_one_makes_room() {
    let api = Api::new();
    api.node().await;
    let mut open = Vec::new();
    for _ in 0..qm_server::MAX_DASHBOARD_STREAMS {
        let (status, body, _) = api.raw("GET", "/api/v1/stream", &api.admin, None).await;
        assert_eq!(status, StatusCode::OK);
        open.push(body);
    }
    let (status, body, _) = api.raw("GET", "/api/v1/stream", &api.admin, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let err: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("dashboard streams are open"),
        "{err}"
    );
    // Two open streams' first snapshots: the same text, computed once.
    let mut reading = Vec::new();
    let mut texts = Vec::new();
    for _ in 0..2 {
        let mut stream = open.pop().unwrap().into_data_stream();
        let chunk = stream.next().await.expect("a snapshot").unwrap();
        texts.push(String::from_utf8(chunk.to_vec()).unwrap());
        reading.push(stream);
    }
    assert_eq!(texts[0], texts[1]);
    let (status, _, _) = api.raw("GET", "/api/v1/stream", &api.admin, None).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "streams being read count"
    );
    open.pop();
    let (status, _, _) = api.raw("GET", "/api/v1/stream", &api.admin, None).await;
    assert_eq!(status, StatusCode::OK, "a closed stream makes room");
}

/// Ended jobs past the most to keep leave memory and stay readable from the store's
/// records: by id (show, why, logs; cancel refused as ended), in `all` lists paged with
/// `before`, as other teams' members may see them; ids are never given again.
#[tokio::test]
async fn forgotten_jobs_are_read_from_the_store() {
    let api = Api::with(ServerConfig {
        retain_ended_max: 2,
        ..ServerConfig::default()
    });
    let (_, credential) = api.node().await;
    api.team("ml", 4).await;
    api.team("other", 0).await;
    // A job that runs, writes output and succeeds.
    let ran = api.submit("ml", 1).await;
    api.server.tick().unwrap();
    api.upload_log(&credential, ran, "epoch 1 done\n").await;
    api.exit_ok(&credential, ran).await;
    // Four that never start, cancelled.
    let _: Value = api.ok("POST", "/api/v1/nodes/n0/drain", None).await;
    let mut cancelled = Vec::new();
    for _ in 0..4 {
        let id = api.submit("ml", 1).await;
        let _: JobView = api
            .ok("POST", &format!("/api/v1/jobs/{id}/cancel"), None)
            .await;
        cancelled.push(id);
    }
    api.server.tick().unwrap();
    let ids = |list: &[JobView]| list.iter().map(|j| j.id).collect::<Vec<_>>();
    // Memory holds the two most recently ended; the store has the rest.
    let held: Vec<JobView> = api.ok("GET", "/api/v1/jobs", None).await;
    assert_eq!(ids(&held), vec![cancelled[3], cancelled[2]]);
    let all: Vec<JobView> = api.ok("GET", "/api/v1/jobs?all=true", None).await;
    let mut every = vec![ran];
    every.extend(&cancelled);
    every.reverse();
    assert_eq!(ids(&all), every);
    let page: Vec<JobView> = api
        .ok(
            "GET",
            &format!("/api/v1/jobs?all=true&limit=2&before={}", cancelled[2]),
            None,
        )
        .await;
    assert_eq!(ids(&page), vec![cancelled[1], cancelled[0]]);
    let done: Vec<JobView> = api
        .ok("GET", "/api/v1/jobs?all=true&state=succeeded", None)
        .await;
    assert_eq!(ids(&done), vec![ran]);
    assert!(api.metrics().await.contains("qm_jobs_forgotten_total 3"));
    // The forgotten job in full: state, command, events, output.
    let job: JobView = api.ok("GET", &format!("/api/v1/jobs/{ran}"), None).await;
    assert_eq!(job.state, qm_proto::JobState::Succeeded);
    assert_eq!(job.command, vec!["sleep".to_string(), "300".into()]);
    assert!(job.started_s.is_none() && job.ended_s.is_some());
    assert!(job.events.len() >= 3, "{:?}", job.events);
    let log: Value = api
        .ok("GET", &format!("/api/v1/jobs/{ran}/logs"), None)
        .await;
    assert_eq!(log["data"], "epoch 1 done\n");
    assert_eq!(log["done"], true);
    let why: Value = api
        .ok("GET", &format!("/api/v1/jobs/{ran}/why"), None)
        .await;
    assert!(why["message"].as_str().unwrap().contains("ended"), "{why}");
    let (status, text) = api
        .call(
            "POST",
            &format!("/api/v1/jobs/{ran}/cancel"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("already ended (succeeded)"), "{text}");
    // Another team's member sees it without its command, and not its output.
    let bob = api
        .server
        .create_token("bob", "member", &["other".to_string()])
        .unwrap();
    let (status, text) = api
        .call("GET", &format!("/api/v1/jobs/{ran}"), &bob, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let seen: JobView = serde_json::from_str(&text).unwrap();
    assert!(seen.command.is_empty());
    let (status, _) = api
        .call("GET", &format!("/api/v1/jobs/{ran}/logs"), &bob, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("GET", "/api/v1/jobs/999", &bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A bad page size is refused, saying what would do.
    let (status, text) = api
        .call("GET", "/api/v1/jobs?limit=0", &api.admin, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("give 1 to 10000"), "{text}");
    // New jobs get new ids.
    let next = api.submit("ml", 1).await;
    assert!(next > cancelled[3]);
}

/// Task output outlives its job in memory by `retain_logs_s`, then goes.
#[tokio::test]
async fn old_task_logs_are_pruned_after_their_jobs_leave_memory() {
    let api = Api::with(ServerConfig {
        retain_ended_max: 0,
        retain_logs_s: 0,
        ..ServerConfig::default()
    });
    let (_, credential) = api.node().await;
    api.team("ml", 4).await;
    let job = api.submit("ml", 1).await;
    api.server.tick().unwrap();
    api.upload_log(&credential, job, "done\n").await;
    // Kept while the job is in memory, however old.
    assert_eq!(api.server.prune_logs().unwrap(), 0);
    api.exit_ok(&credential, job).await;
    api.server.tick().unwrap();
    // Ended and forgotten: the next prune takes it (it ended before the next second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(api.server.prune_logs().unwrap(), 1);
    let log: Value = api
        .ok("GET", &format!("/api/v1/jobs/{job}/logs"), None)
        .await;
    assert_eq!(log["data"], "");
    let shown: JobView = api.ok("GET", &format!("/api/v1/jobs/{job}"), None).await;
    assert_eq!(shown.state, qm_proto::JobState::Succeeded);
}
