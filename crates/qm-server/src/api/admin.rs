//! What only an admin may do: create and change teams, create tokens, drain, resume and
//! reset nodes.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use qm_core::{Event, NodeId, NodeState, Quota, TeamSpec, ANY_MODEL};
use qm_proto::{IdlePolicy, NodeView, TeamRequest, TeamView, TokenRequest, TokenResponse};

use super::{Admin, Api, Body, Seg};
use crate::views::{self, node_view, team_views};
use crate::{Refusal, Server};

async fn set_node_state(s: &Server, name: &str, to: NodeState) -> Api<NodeView> {
    s.write(|inner| {
        let id = inner
            .nodes
            .get(name)
            .map(|n| n.id)
            .ok_or_else(|| Refusal::NotFound(format!("no node {name:?}")))?;
        let at_s = inner.now_s();
        inner.commit(
            vec![Event::NodeState {
                node: NodeId(id),
                state: to,
                at_s,
            }],
            &[],
        )
    })
    .await?;
    s.read(|inner| {
        let n = inner
            .state
            .nodes()
            .find(|n| n.spec.name == name)
            .expect("just set");
        Ok(Json(node_view(inner, n)))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/drain", tag = "admin", params(("name" = String, Path, description = "The node's name")), responses((status = 200, description = "The node, draining: it takes no new work", body = NodeView)))]
pub async fn drain(
    State(s): State<Arc<Server>>,
    _: Admin,
    Seg(name): Seg<String>,
) -> Api<NodeView> {
    set_node_state(&s, &name, NodeState::Draining).await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/resume", tag = "admin", params(("name" = String, Path, description = "The node's name")), responses((status = 200, description = "The node, ready again", body = NodeView)))]
pub async fn resume(
    State(s): State<Arc<Server>>,
    _: Admin,
    Seg(name): Seg<String>,
) -> Api<NodeView> {
    set_node_state(&s, &name, NodeState::Ready).await
}

/// Forgets a node's credential: its agent is refused from now on, and the name may be
/// registered again with a join token (a replaced machine, a lost credential file). Its
/// running tasks are untouched; the node times out unless an agent registers in time.
#[utoipa::path(post, path = "/api/v1/nodes/{name}/reset", tag = "admin", params(("name" = String, Path, description = "The node's name")), responses((status = 200, description = "The node, its credential forgotten: a join token may register its name again", body = NodeView)))]
pub async fn reset(
    State(s): State<Arc<Server>>,
    _: Admin,
    Seg(name): Seg<String>,
) -> Api<NodeView> {
    let id = s
        .write(|inner| {
            let mut rec = inner
                .nodes
                .get(&name)
                .cloned()
                .ok_or_else(|| Refusal::NotFound(format!("no node {name:?}")))?;
            rec.credential_hash = String::new();
            inner.journal.node(rec.clone());
            let id = rec.id;
            inner.nodes.insert(rec);
            // Its long poll ends; a new agent starts a new session.
            if let Some(a) = inner.agents.get(&id) {
                a.wake.notify_waiters();
            }
            Ok(id)
        })
        .await?;
    s.read(|inner| {
        let n = inner
            .state
            .node(NodeId(id))
            .ok_or_else(|| Refusal::NotFound(format!("no node {name:?}")))?;
        Ok(Json(node_view(inner, n)))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/admin/teams", tag = "admin", request_body = TeamRequest, responses((status = 200, description = "The team as set", body = TeamView)))]
pub async fn set_team(
    State(s): State<Arc<Server>>,
    _: Admin,
    Body(req): Body<TeamRequest>,
) -> Api<TeamView> {
    if req.weight == Some(0) {
        return Err(Refusal::BadRequest("weight must be at least 1".into()));
    }
    if req.idle_release_after_s == Some(0) {
        return Err(Refusal::BadRequest(
            "idle_release_after_s is 0; give the seconds a job may stay idle beyond the idle window before it is released, at least 1".into(),
        ));
    }
    if req.idle_release_after_s.is_some()
        && req
            .idle_policy
            .is_some_and(|p| !matches!(p, IdlePolicy::Release | IdlePolicy::Requeue))
    {
        return Err(Refusal::BadRequest(format!(
            "idle_release_after_s goes with idle_policy \"release\", not {:?}",
            req.idle_policy.map(|p| p.as_str()).unwrap_or_default()
        )));
    }
    if let Some([lo, hi]) = req.priorities {
        if lo > hi {
            return Err(Refusal::BadRequest(format!(
                "priorities [{lo}, {hi}]: the lowest is above the highest; give [LOW, HIGH]"
            )));
        }
    }
    if req.partitions.as_ref().is_some_and(|p| p.len() > 64) {
        return Err(Refusal::BadRequest(
            "a team may have at most 64 partition names".into(),
        ));
    }
    for p in req.partitions.iter().flatten() {
        crate::limits::node_name(p).map_err(|_| {
            Refusal::BadRequest(format!(
                "partition name {p:?} is not allowed; use 1 to 63 letters, digits, '.', '-' or '_'"
            ))
        })?;
    }
    crate::limits::node_name(&req.name).map_err(|_| {
        Refusal::BadRequest(format!(
            "team name {:?} is not allowed; use 1 to 63 letters, digits, '.', '-' or '_'",
            req.name
        ))
    })?;
    let view = s
        .write(|inner| {
            let old = inner.state.team(&req.name).map(|t| t.spec.clone());
            let mut spec = old.unwrap_or_else(|| TeamSpec::new(&req.name, 0));
            if req.parent.is_some() {
                spec.parent = req.parent.clone();
            }
            let q = spec.quotas.entry(ANY_MODEL.to_string()).or_insert(Quota {
                guaranteed: 0,
                max: None,
            });
            if let Some(g) = req.guaranteed {
                q.guaranteed = g;
            }
            if req.max.is_some() {
                q.max = req.max;
            }
            if let Some(w) = req.weight {
                spec.weight = w;
            }
            match (req.idle_policy, req.idle_release_after_s) {
                (Some(policy), after) => {
                    spec.idle_policy = views::core_idle_policy(policy, after, spec.idle_policy);
                }
                (None, Some(after_s)) => match &mut spec.idle_policy {
                    qm_core::IdlePolicy::Release { after_s: a } => *a = after_s,
                    _ => {
                        return Err(Refusal::BadRequest(format!(
                            "idle_release_after_s is {after_s}, but team {} does not release idle jobs; give idle_policy \"release\" with it",
                            req.name
                        )))
                    }
                },
                (None, None) => {}
            }
            if let Some(range) = req.priorities {
                spec.priorities = range;
            }
            if let Some(cpus) = req.max_cpu {
                spec.max_cpu_milli = (cpus > 0).then(|| u64::from(cpus) * 1000);
            }
            if let Some(parts) = &req.partitions {
                for p in parts {
                    if let Some(other) = inner.state.teams().find(|t| {
                        t.spec.name != req.name && t.spec.partitions.iter().any(|q| q == p)
                    }) {
                        return Err(Refusal::Conflict(format!(
                            "partition {p:?} already means team {:?}; take it from that team first (qm admin team set {} --partition ...)",
                            other.spec.name, other.spec.name
                        )));
                    }
                }
                spec.partitions = parts.clone();
            }
            inner.commit(vec![Event::SetTeam(spec)], &[])?;
            team_views(&inner.state, inner.now_s())
                .into_iter()
                .find(|t| t.name == req.name)
                .ok_or_else(|| Refusal::Internal("team vanished".into()))
        })
        .await?;
    Ok(Json(view))
}

#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", request_body = TokenRequest, responses((status = 200, description = "The new token (shown once; only its hash is kept)", body = TokenResponse)))]
pub async fn create_token(
    State(s): State<Arc<Server>>,
    _: Admin,
    Body(req): Body<TokenRequest>,
) -> Api<TokenResponse> {
    let token = s
        .write(|inner| inner.create_token(&req.name, req.role, &req.teams))
        .await?;
    Ok(Json(TokenResponse { token }))
}
