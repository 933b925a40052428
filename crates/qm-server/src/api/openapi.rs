//! The OpenAPI document of the API (`GET /api/openapi.json`, any token).

use axum::Json;

use super::{Api, Caller};

pub async fn openapi(_: Caller) -> Api<serde_json::Value> {
    Ok(Json(openapi_doc()))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi_doc() -> serde_json::Value {
    let op = |summary: &str| serde_json::json!({ "summary": summary, "security": [{"bearer": []}], "responses": {"200": {"description": "OK"}, "4XX": {"description": "An ApiError: {error, message}"}} });
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "Quartermaster", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": {
            "/api/v1/jobs": { "post": op("Submit a job (SubmitRequest); durable before the answer"), "get": op("List jobs; filters team, state, limit") },
            "/api/v1/jobs/{id}": { "get": op("Show a job: state, placement, events") },
            "/api/v1/jobs/{id}/why": { "get": op("Why a job waits (structured reason) and its estimated start") },
            "/api/v1/jobs/{id}/cancel": { "post": op("Cancel a job") },
            "/api/v1/jobs/{id}/logs": { "get": op("A task's output from an offset; query task, attempt, offset") },
            "/api/v1/nodes": { "get": op("List nodes") },
            "/api/v1/nodes/{name}/drain": { "post": op("Drain a node (admin)") },
            "/api/v1/nodes/{name}/resume": { "post": op("Resume a drained node (admin)") },
            "/api/v1/nodes/{name}/reset": { "post": op("Forget a node's credential, so that a join token may register its name again (admin)") },
            "/": { "get": op("The dashboard's page (no data; it reads /api/v1/stream with a token)") },
            "/assets/app.js": { "get": op("The dashboard's script") },
            "/assets/app.css": { "get": op("The dashboard's style sheet") },
            "/api/openapi.json": { "get": op("This document") },
            "/api/v1/teams": { "get": op("Teams with guaranteed, max, used, borrowed, idle") },
            "/api/v1/admin/teams": { "post": op("Create or change a team (admin)") },
            "/api/v1/admin/tokens": { "post": op("Create a token: admin, member of teams, or join (admin)") },
            "/agent/v1/register": { "post": op("An agent registers its node: a new name with a join token, a known one with the node's own credential (or after an admin's reset); returns its new credential") },
            "/agent/v1/heartbeat": { "post": op("An agent reports running tasks, exits and utilisation, of tasks placed on its node only (403 otherwise)") },
            "/agent/v1/commands": { "get": op("Long poll for launches and kills; query wait_s") },
            "/agent/v1/logs": { "post": op("An agent uploads output of a task placed on its node (403 otherwise); at most 1 MiB a chunk") },
            "/api/v1/stream": { "get": op("Server-sent events: dashboard snapshots, pushed on change") },
            "/metrics": { "get": op("OpenMetrics text format: GPUs, jobs, plan and wait histograms, preemptions, heartbeats") }
        }
    })
}
