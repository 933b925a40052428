//! Fuzzing the API: random requests to every route the OpenAPI document names (and some it
//! does not), with random path parameters, query strings, bodies (valid JSON of odd shapes,
//! huge and negative numbers, long and odd strings, and bytes that are not JSON) and tokens
//! of every kind; most bodies are a valid request with one field replaced, so the requests
//! reach past the first check (about one in five is accepted). No request may make the
//! server fail (5xx) or panic; every refusal is an `ApiError` with a message; and after the
//! sequence the server still plans and serves.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use qm_proto::{ApiError, RegisterResponse};
use qm_server::{Server, ServerConfig};
use qm_store::SqliteStore;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A JSON value of any shape, with the API's field names among the keys.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            any::<i64>()
        ]
        .prop_map(|n| json!(n)),
        prop_oneof![Just(u64::MAX), Just(1u64 << 53), any::<u64>()].prop_map(|n| json!(n)),
        prop_oneof![Just(1e300f64), Just(-0.5), Just(f64::MIN_POSITIVE)].prop_map(|f| json!(f)),
        prop_oneof![
            Just(String::new()),
            Just("a".repeat(70_000)),
            Just("\u{0}\u{7}\u{202e}é".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("t".to_string()),
            Just("n0".to_string()),
            "[a-z]{1,8}",
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("team".to_string()),
        Just("name".to_string()),
        Just("tasks".to_string()),
        Just("gpus".to_string()),
        Just("gpu_milli".to_string()),
        Just("cpu_milli".to_string()),
        Just("mem_mib".to_string()),
        Just("priority".to_string()),
        Just("time_limit_s".to_string()),
        Just("preemptible".to_string()),
        Just("env".to_string()),
        Just("workdir".to_string()),
        Just("command".to_string()),
        Just("user".to_string()),
        Just("guaranteed".to_string()),
        Just("max".to_string()),
        Just("weight".to_string()),
        Just("priorities".to_string()),
        Just("idle_policy".to_string()),
        Just("role".to_string()),
        Just("teams".to_string()),
        Just("key".to_string()),
        Just("offset".to_string()),
        Just("data".to_string()),
        Just("running".to_string()),
        Just("exited".to_string()),
        Just("util".to_string()),
        Just("job".to_string()),
        Just("task".to_string()),
        Just("attempt".to_string()),
        Just("address".to_string()),
        Just("credential".to_string()),
        "[a-z_]{1,6}",
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Valid bodies of the API's requests, one field of which a case replaces.
fn templates() -> Vec<Value> {
    let key = json!({"job": 1, "task": 0, "attempt": 1});
    vec![
        json!({"team": "t", "gpus": 1, "tasks": 1, "command": ["sleep", "1"], "env": {"A": "b"}, "workdir": "/tmp", "priority": 0, "time_limit_s": 60, "preemptible": true, "gpu_milli": null, "cpu_milli": 1000, "mem_mib": 64, "name": "x", "user": "alice"}),
        json!({"name": "t", "guaranteed": 2, "max": 4, "weight": 1, "priorities": [0, 1], "idle_policy": "warn"}),
        json!({"name": "bob", "role": "member", "teams": ["t"]}),
        json!({"running": [key], "exited": [{"key": key, "code": 0}], "util": [{"key": key, "pct": 50}]}),
        json!({"key": key, "offset": 0, "data": "hello"}),
        json!({"name": "n1", "gpus": 4, "gpu_model": "SIM", "gpu_mem_mib": 0, "cpu_milli": 8000, "mem_mib": 8192, "labels": {}, "topology": [], "address": "127.0.0.1"}),
    ]
}

/// Bytes for a body: a valid request with one field replaced, any JSON, or not JSON.
fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let mutated =
        (0usize..6, 0usize..16, value(), prop::bool::weighted(0.3)).prop_map(|(t, k, v, keep)| {
            let mut body = templates()[t].clone();
            if !keep {
                let obj = body.as_object_mut().unwrap();
                let keys: Vec<String> = obj.keys().cloned().collect();
                let key = keys[k % keys.len()].clone();
                obj.insert(key, v);
            }
            Some(body.to_string().into_bytes())
        });
    prop_oneof![
        3 => mutated,
        1 => Just(None),
        1 => value().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => Just(Some(b"{\"team\": ".to_vec())),
        1 => Just(Some(vec![0xff, 0xfe, 0x00])),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("n0".to_string()),
        Just("%00".to_string()),
        Just("..".to_string()),
        Just("x".repeat(300)),
        "[a-z0-9]{1,6}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let kv = (
        prop_oneof![
            Just("team"),
            Just("state"),
            Just("limit"),
            Just("task"),
            Just("attempt"),
            Just("offset"),
            Just("tail"),
            Just("x"),
        ],
        prop_oneof![
            Just("-1".to_string()),
            Just("18446744073709551616".to_string()),
            Just("running".to_string()),
            Just("%ZZ".to_string()),
            Just(String::new()),
            "[a-z0-9]{1,5}",
        ],
    );
    prop::collection::vec(kv, 0..3).prop_map(|kvs| {
        if kvs.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = kvs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", parts.join("&"))
        }
    })
}

#[derive(Clone, Debug)]
struct Call {
    route: usize,
    method_other: bool,
    seg: String,
    query: String,
    body: Option<Vec<u8>>,
    who: usize,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0usize..64,
        prop::bool::weighted(0.1),
        segment(),
        query(),
        body(),
        0usize..6,
    )
        .prop_map(|(route, method_other, seg, query, body, who)| Call {
            route,
            method_other,
            seg,
            query,
            body,
            who,
        })
}

async fn send(
    server: &Arc<Server>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap();
    let resp = qm_server::app(server.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

/// A small cluster to fuzz: node n0 with a running job of team t, tokens of every kind.
async fn cluster() -> (Arc<Server>, Vec<Option<String>>) {
    let server = Server::open(
        Box::new(SqliteStore::memory().unwrap()),
        ServerConfig {
            log_refusals: false,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let admin = server.create_token("admin", "admin", &[]).unwrap();
    let join = server.create_token("agents", "join", &[]).unwrap();
    let req = common::node_request("n0");
    let body = serde_json::to_vec(&req).unwrap();
    let (status, text) = send(
        &server,
        "POST",
        "/agent/v1/register",
        Some(&join),
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    let node = serde_json::from_slice::<RegisterResponse>(&text)
        .unwrap()
        .credential;
    let team = json!({"name": "t", "guaranteed": 4})
        .to_string()
        .into_bytes();
    let (status, _) = send(
        &server,
        "POST",
        "/api/v1/admin/teams",
        Some(&admin),
        Some(team),
    )
    .await;
    assert_eq!(status, 200);
    let member = server
        .create_token("alice", "member", &["t".to_string()])
        .unwrap();
    let job = json!({"team": "t", "command": ["sleep", "1"]})
        .to_string()
        .into_bytes();
    let (status, _) = send(&server, "POST", "/api/v1/jobs", Some(&admin), Some(job)).await;
    assert_eq!(status, 200);
    server.tick().unwrap();
    let tokens = vec![
        Some(admin),
        Some(member),
        Some(node),
        Some(join),
        Some("qm_garbage".to_string()),
        None,
    ];
    (server, tokens)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_request_makes_the_server_fail(calls in prop::collection::vec(call(), 1..24)) {
        let routes: Vec<(String, String)> = {
            let doc = qm_server::openapi_doc();
            let mut r = Vec::new();
            for (path, ops) in doc["paths"].as_object().unwrap() {
                // The dashboard's stream never ends; it is left out.
                if path == "/api/v1/stream" {
                    continue;
                }
                for method in ops.as_object().unwrap().keys() {
                    r.push((method.to_uppercase(), path.clone()));
                }
            }
            r.push(("GET".into(), "/api/v1/nowhere".into()));
            r
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (server, tokens) = cluster().await;
            for c in calls {
                let (method, path) = &routes[c.route % routes.len()];
                let method = if c.method_other { "DELETE" } else { method.as_str() };
                let mut uri = path.replace("{id}", &c.seg).replace("{name}", &c.seg);
                // The agents' long poll waits when it has nothing: never here.
                if path == "/agent/v1/commands" {
                    uri.push_str("?wait_s=0");
                } else {
                    uri.push_str(&c.query);
                }
                let token = tokens[c.who % tokens.len()].as_deref();
                let (status, bytes) = send(&server, method, &uri, token, c.body.clone()).await;
                assert!(status < 500, "{method} {uri} -> {status}: {}", String::from_utf8_lossy(&bytes));
                if status >= 400 && !uri.starts_with("/assets") {
                    let e: Result<ApiError, _> = serde_json::from_slice(&bytes);
                    assert!(
                        e.as_ref().is_ok_and(|e| !e.message.is_empty()),
                        "{method} {uri} -> {status} without an ApiError: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                server.tick().unwrap();
            }
            // Still serving and planning.
            let admin = tokens[0].as_deref();
            let (status, _) = send(&server, "GET", "/api/v1/jobs", admin, None).await;
            assert_eq!(status, 200);
        });
    }
}
