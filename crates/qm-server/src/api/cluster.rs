//! The cluster as every client sees it: nodes, teams, and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qm_proto::{NodeView, TeamView};

use super::{Api, Client};
use crate::views::{node_view, team_views};
use crate::{Refusal, Server};

pub async fn nodes(State(s): State<Arc<Server>>, Client(_): Client) -> Api<Vec<NodeView>> {
    let inner = s.lock();
    let out = inner.state.nodes().map(|n| node_view(&inner, n)).collect();
    Ok(Json(out))
}

pub async fn teams(State(s): State<Arc<Server>>, Client(_): Client) -> Api<Vec<TeamView>> {
    let inner = s.lock();
    Ok(Json(team_views(&inner.state, inner.now_s())))
}

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
