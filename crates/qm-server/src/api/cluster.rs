//! The cluster as every client sees it: nodes, teams, and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qm_proto::{NodeView, TeamView};

use super::{Api, Client};
use crate::views::{node_view, team_views};
use crate::{Refusal, Server};

#[utoipa::path(get, path = "/api/v1/nodes", tag = "cluster", responses((status = 200, description = "Every node", body = Vec<NodeView>)))]
pub async fn nodes(State(s): State<Arc<Server>>, Client(_): Client) -> Api<Vec<NodeView>> {
    let inner = s.lock();
    let out = inner.state.nodes().map(|n| node_view(&inner, n)).collect();
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/teams", tag = "cluster", responses((status = 200, description = "Every team: guaranteed, max, used, borrowed, idle", body = Vec<TeamView>)))]
pub async fn teams(State(s): State<Arc<Server>>, Client(_): Client) -> Api<Vec<TeamView>> {
    let inner = s.lock();
    Ok(Json(team_views(&inner.state, inner.now_s())))
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "OpenMetrics text: GPUs, jobs, plan and wait histograms, preemptions, heartbeats", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(s): State<Arc<Server>>, Client(_): Client) -> Result<Response, Refusal> {
    let body = crate::metrics::render(&s.lock());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response())
}
