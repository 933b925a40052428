//! A real server (its SQLite store in memory) behind its HTTP router, for the API targets:
//! one team `t` of 16 GPUs, two nodes of 8, an admin token, a join token and the nodes'
//! credentials. (Each target uses what it needs of it.)
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use qm_server::{Server, ServerConfig};
use tower::ServiceExt;

pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub server: Arc<Server>,
    /// The router, made once (making it builds the OpenAPI document too).
    pub app: axum::Router,
    pub admin: String,
    pub join: String,
    pub nodes: [String; 2],
}

pub const CREDENTIALS: [&str; 2] = [
    "qmn_fuzz0000000000000000000000000000000000",
    "qmn_fuzz1111111111111111111111111111111111",
];

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = Server::open(
            Box::new(qm_store::SqliteStore::memory().unwrap()),
            ServerConfig {
                log_refusals: false,
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let admin = server.create_token("admin", "admin", &[]).unwrap();
        let join = server.create_token("agents", "join", &[]).unwrap();
        let f = Fixture {
            rt,
            app: qm_server::app(server.clone()),
            server,
            admin,
            join,
            nodes: CREDENTIALS.map(String::from),
        };
        let team = r#"{"name": "t", "guaranteed": 16}"#;
        assert_eq!(
            f.send("POST", "/api/v1/admin/teams", &f.admin, team.as_bytes()),
            200
        );
        for (i, c) in CREDENTIALS.iter().enumerate() {
            let node = serde_json::json!({
                "name": format!("n{i}"), "gpus": 8, "gpu_model": "SIM", "gpu_mem_mib": 81920,
                "cpu_milli": 64000, "mem_mib": 262144, "labels": {}, "topology": [],
                "address": "127.0.0.1", "credential": c
            });
            let body = node.to_string();
            assert_eq!(
                f.send("POST", "/agent/v1/register", &f.join, body.as_bytes()),
                200
            );
        }
        f
    })
}

impl Fixture {
    /// One request through the router; its status.
    pub fn send(&self, method: &str, path: &str, token: &str, body: &[u8]) -> u16 {
        self.send_read(method, path, token, body).0
    }

    /// One request through the router; its status and JSON answer (null if none).
    pub fn send_read(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .unwrap();
        let app = self.app.clone();
        self.rt.block_on(async {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or_default())
        })
    }
}
