//! A fuzzed stream of agent messages from one node never changes a job placed on another:
//! whatever heartbeats (running, exited, utilisation) and log chunks a node sends, about
//! whichever tasks, the other node's job keeps running, with no exit, no utilisation sample
//! and an empty log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use qm_proto::{Heartbeat, JobView, LogChunk, RegisterResponse, TaskExit, TaskKey, TaskUtil};
use qm_server::{Server, ServerConfig};
use qm_store::SqliteStore;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    server: &Arc<Server>,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, String) {
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
    let resp = qm_server::app(server.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// One message of the attacking node.
#[derive(Clone, Debug)]
enum Msg {
    Heartbeat {
        running: Vec<TaskKey>,
        exited: Vec<(TaskKey, i32)>,
        util: Vec<(TaskKey, u8)>,
    },
    Log(TaskKey, u64, String),
}

fn key() -> impl Strategy<Value = TaskKey> {
    (1u64..=3, 0u32..=1, 1u32..=2).prop_map(|(job, task, attempt)| TaskKey { job, task, attempt })
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (
            prop::collection::vec(key(), 0..3),
            prop::collection::vec((key(), -1i32..=1), 0..3),
            prop::collection::vec((key(), 0u8..=100), 0..3),
        )
            .prop_map(|(running, exited, util)| Msg::Heartbeat {
                running,
                exited,
                util
            }),
        (key(), 0u64..64, "[a-z]{0,8}").prop_map(|(k, o, d)| Msg::Log(k, o, d)),
    ]
}

/// Two 4-GPU nodes, a job of 4 GPUs on each; (server, victim job, attacker's credential,
/// attacker's own job).
async fn cluster() -> (Arc<Server>, u64, String, u64) {
    let server = Server::open(
        Box::new(SqliteStore::memory().unwrap()),
        ServerConfig::default(),
    )
    .unwrap();
    let admin = server.create_token("admin", "admin", &[]).unwrap();
    let join = server.create_token("agents", "join", &[]).unwrap();
    let mut creds = BTreeMap::new();
    for name in ["n0", "n1"] {
        let req = common::node_request(name);
        let (status, text) = call(
            &server,
            "POST",
            "/agent/v1/register",
            &join,
            serde_json::to_value(req).unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let r: RegisterResponse = serde_json::from_str(&text).unwrap();
        creds.insert(name.to_string(), r.credential);
    }
    let (status, text) = call(
        &server,
        "POST",
        "/api/v1/admin/teams",
        &admin,
        json!({"name": "t", "guaranteed": 8}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for _ in 0..2 {
        let body = json!({"team": "t", "gpus": 4, "command": ["sleep", "300"]});
        let (status, text) = call(&server, "POST", "/api/v1/jobs", &admin, body).await;
        assert_eq!(status, 200, "{text}");
    }
    server.tick().unwrap();
    let view = |id: u64| {
        let server = server.clone();
        let admin = admin.clone();
        async move {
            let (_, text) = call(
                &server,
                "GET",
                &format!("/api/v1/jobs/{id}"),
                &admin,
                Value::Null,
            )
            .await;
            serde_json::from_str::<JobView>(&text).unwrap()
        }
    };
    let on_n1 = view(1).await.placement[0].node == "n1";
    let (victim, own) = if on_n1 { (2, 1) } else { (1, 2) };
    assert_eq!(view(own).await.placement[0].node, "n1");
    (server, victim, creds["n1"].clone(), own)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_node_never_changes_a_job_placed_on_another(msgs in prop::collection::vec(msg(), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (server, victim, cred, _own) = cluster().await;
            let admin = server.create_token("root-check", "admin", &[]).unwrap();
            let before: JobView = {
                let (_, t) = call(&server, "GET", &format!("/api/v1/jobs/{victim}"), &admin, Value::Null).await;
                serde_json::from_str(&t).unwrap()
            };
            for m in msgs {
                let (path, body) = match m {
                    Msg::Heartbeat { running, exited, util } => ("/agent/v1/heartbeat", serde_json::to_value(Heartbeat {
                        running,
                        exited: exited.into_iter().map(|(key, code)| TaskExit { key, code, message: None, fenced: false }).collect(),
                        util: util.into_iter().map(|(key, pct)| TaskUtil { key, pct }).collect(),
                    }).unwrap()),
                    Msg::Log(key, offset, data) => ("/agent/v1/logs", serde_json::to_value(LogChunk { key, offset, data, data_b64: None }).unwrap()),
                };
                let (status, text) = call(&server, "POST", path, &cred, body).await;
                // Accepted, or refused as speaking for another node's task.
                assert!(status == 200 || status == 403 || status == 409, "{status}: {text}");
                server.tick().unwrap();
            }
            let (_, t) = call(&server, "GET", &format!("/api/v1/jobs/{victim}"), &admin, Value::Null).await;
            let after: JobView = serde_json::from_str(&t).unwrap();
            assert_eq!(after.state, qm_proto::JobState::Running, "{after:?}");
            assert_eq!(after.attempt, before.attempt);
            assert_eq!(after.placement, before.placement);
            assert_eq!(after.util_pct, None);
            assert_eq!(after.events, before.events);
            let (_, t) = call(&server, "GET", &format!("/api/v1/jobs/{victim}/logs?attempt=1"), &admin, Value::Null).await;
            let log: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(log["data"], "");
        });
    }
}
