//! The cluster as every client sees it: nodes, teams, and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qm_proto::{ClusterView, LeaderView, NodeView, Role, ServerSeen, TeamView, WhoAmI};

use super::{Api, Client};
use crate::auth::Principal;
use crate::views::{node_view, team_views};
use crate::{Refusal, Server};

#[utoipa::path(get, path = "/api/v1/nodes", tag = "cluster", responses((status = 200, description = "Every node", body = Vec<NodeView>)))]
pub async fn nodes(State(s): State<Arc<Server>>, Client(_): Client) -> Api<Vec<NodeView>> {
    s.read(|inner| {
        Ok(Json(
            inner.state.nodes().map(|n| node_view(inner, n)).collect(),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/teams", tag = "cluster", responses((status = 200, description = "Every team: guaranteed, max, used, borrowed, idle", body = Vec<TeamView>)))]
pub async fn teams(State(s): State<Arc<Server>>, Client(p): Client) -> Api<Vec<TeamView>> {
    s.read(|inner| {
        let mut teams = team_views(&inner.state, inner.now_s());
        for t in &mut teams {
            t.idle_gpu_hours_7d = s.idle_week(&t.name);
        }
        // With private jobs, other teams' idle jobs are not named.
        if inner.config.private_jobs {
            for t in teams.iter_mut().filter(|t| !p.may_use_team(&t.name)) {
                t.idle_jobs.clear();
            }
        }
        Ok(Json(teams))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "cluster", responses((status = 200, description = "Who this token is: admin or member, its name and its teams", body = WhoAmI)))]
pub async fn whoami(Client(p): Client) -> Json<WhoAmI> {
    Json(match p {
        Principal::Member { name, teams } => WhoAmI {
            role: Role::Member,
            name: Some(name),
            teams,
        },
        _ => WhoAmI {
            role: Role::Admin,
            name: None,
            teams: Vec::new(),
        },
    })
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, description = "The servers: the store, who leads (its term and lease) and the standbys", body = ClusterView)))]
pub async fn cluster(State(s): State<Arc<Server>>, Client(_): Client) -> Api<ClusterView> {
    let servers = s.journal.store().servers()?;
    let view = match servers {
        None => ClusterView {
            store: "sqlite".into(),
            leader: None,
            standbys: Vec::new(),
        },
        Some(servers) => {
            let leader = servers.leader.map(|l| LeaderView {
                holder: l.holder,
                term: l.term,
                since_s: l.since_s,
                expires_s: l.expires_s,
            });
            let lead = leader.as_ref().map(|l| l.holder.clone());
            ClusterView {
                store: "postgres".into(),
                leader,
                standbys: servers
                    .seen
                    .into_iter()
                    .filter(|(h, _)| Some(h) != lead.as_ref())
                    .map(|(holder, seen_s_ago)| ServerSeen { holder, seen_s_ago })
                    .collect(),
            }
        }
    };
    Ok(Json(view))
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "OpenMetrics text: GPUs, jobs, plan and wait histograms, preemptions, heartbeats", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(s): State<Arc<Server>>, Client(_): Client) -> Result<Response, Refusal> {
    let servers = s.journal.store().servers()?;
    let body = s
        .read(|inner| Ok(crate::metrics::render(inner, servers.as_ref())))
        .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response())
}
