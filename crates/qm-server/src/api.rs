//! The HTTP API: `fn app(server) -> Router`, so handlers can be tested without a socket.
//! Client calls under `/api/v1`, agent calls under `/agent/v1`, the OpenAPI document at
//! `/api/openapi.json`. Every call needs a bearer token; every refusal is an `ApiError` body
//! with a 4xx status and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qm_core::{
    plan, Event, GpuAsk, IdlePolicy, JobId, JobSpec, JobState, NodeId, NodeSpec, NodeState, Quota,
    TeamSpec, ANY_MODEL,
};
use qm_proto::{
    ApiError, Commands, Heartbeat, JobView, LogChunk, LogView, NodeView, RegisterRequest,
    RegisterResponse, SubmitRequest, SubmitResponse, TaskView, TeamRequest, TeamView, TokenRequest,
    TokenResponse, WhyView,
};
use qm_store::{JobPayload, NodeRecord};
use serde::Deserialize;

use crate::auth::{hash_token, new_token, Principal};
use crate::{now_s, Agent, Inner, Refusal, Server};

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Refusal::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Refusal::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            Refusal::Internal(m) => {
                eprintln!("qm server: internal error: {m}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server's log".to_string(),
                )
            }
        };
        (
            status,
            Json(ApiError {
                error: code.into(),
                message,
            }),
        )
            .into_response()
    }
}

type Api<T> = Result<Json<T>, Refusal>;

/// A JSON body, with a clear message when it does not parse.
pub struct Body<T>(T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Refusal::BadRequest(format!("cannot read the body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| Refusal::BadRequest(format!("malformed JSON body: {e}")))
    }
}

/// The router of the whole API.
pub fn app(server: Arc<Server>) -> Router {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/", get(crate::dash::index))
        .route("/assets/app.js", get(crate::dash::app_js))
        .route("/assets/app.css", get(crate::dash::app_css))
        .route("/api/v1/stream", get(crate::dash::stream))
        .route("/api/v1/jobs", post(submit).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(show_job))
        .route("/api/v1/jobs/{id}/why", get(why))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/logs", get(logs))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}/drain", post(drain))
        .route("/api/v1/nodes/{name}/resume", post(resume))
        .route("/api/v1/teams", get(list_teams))
        .route("/api/v1/admin/teams", post(set_team))
        .route("/api/v1/admin/tokens", post(create_token))
        .route("/agent/v1/register", post(register))
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/commands", get(commands))
        .route("/agent/v1/logs", post(agent_logs))
        .fallback(|| async { Refusal::NotFound("no such endpoint; see /api/openapi.json".into()) })
        .with_state(server)
}

pub(crate) fn principal(inner: &Inner, headers: &HeaderMap) -> Result<Principal, Refusal> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Refusal::Unauthorized("no token; send `Authorization: Bearer TOKEN`".into())
        })?;
    let token = header.strip_prefix("Bearer ").ok_or_else(|| {
        Refusal::Unauthorized("malformed Authorization header; expected `Bearer TOKEN`".into())
    })?;
    let hash = hash_token(token.trim());
    if let Some(t) = inner.tokens.get(&hash) {
        return Ok(match t.role.as_str() {
            "admin" => Principal::Admin,
            "join" => Principal::Join,
            _ => Principal::Member {
                name: t.name.clone(),
                teams: t.teams.clone(),
            },
        });
    }
    if let Some(n) = inner.nodes.values().find(|n| n.credential_hash == hash) {
        return Ok(Principal::Node(n.id));
    }
    Err(Refusal::Unauthorized("unknown token".into()))
}

fn need_admin(p: &Principal) -> Result<(), Refusal> {
    match p {
        Principal::Admin => Ok(()),
        _ => Err(Refusal::Forbidden("this needs an admin token".into())),
    }
}

pub(crate) fn need_client(p: &Principal) -> Result<(), Refusal> {
    match p {
        Principal::Admin | Principal::Member { .. } => Ok(()),
        _ => Err(Refusal::Forbidden(
            "this needs an admin or member token, not an agent's".into(),
        )),
    }
}

fn need_node(p: &Principal) -> Result<u32, Refusal> {
    match p {
        Principal::Node(n) => Ok(*n),
        _ => Err(Refusal::Forbidden("this needs a node credential".into())),
    }
}

async fn metrics(State(s): State<Arc<Server>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let body = crate::metrics::render(&inner);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

async fn openapi(State(s): State<Arc<Server>>, headers: HeaderMap) -> Api<serde_json::Value> {
    let inner = s.lock();
    principal(&inner, &headers)?;
    Ok(Json(crate::api::openapi_doc()))
}

fn submitter(p: &Principal) -> String {
    match p {
        Principal::Admin => "admin".into(),
        Principal::Member { name, .. } => name.clone(),
        _ => String::new(),
    }
}

async fn submit(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(req): Body<SubmitRequest>,
) -> Api<SubmitResponse> {
    let id = {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        need_client(&p)?;
        if !p.may_use_team(&req.team) {
            return Err(Refusal::Forbidden(format!(
                "your token may not submit to team {:?}",
                req.team
            )));
        }
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(Refusal::BadRequest(
                "command is empty; give the program and its arguments".into(),
            ));
        }
        let gpu = match (req.gpus, req.gpu_milli) {
            (Some(_), Some(_)) => {
                return Err(Refusal::BadRequest(
                    "give gpus (whole GPUs per task) or gpu_milli (a share of one), not both"
                        .into(),
                ))
            }
            (None, Some(m)) => GpuAsk::Milli(m),
            (Some(g), None) => GpuAsk::Whole(g),
            (None, None) => GpuAsk::Whole(1),
        };
        let time_limit_s = match req.time_limit_s {
            Some(t) if t <= 0 => {
                return Err(Refusal::BadRequest(format!(
                    "time_limit_s is {t}; give a positive number of seconds or leave it out for no limit"
                )))
            }
            Some(t) => Some(t as u64),
            None => None,
        };
        let tasks = req.tasks.unwrap_or(1);
        // Tasks run as the submitter: a member's token name; only an admin may name a user.
        let run_as = match &p {
            Principal::Member { name, .. } => Some(name.clone()),
            _ => req.user.clone(),
        };
        let id = JobId(inner.next_job);
        let now = now_s();
        let spec = JobSpec {
            id,
            name: req.name.clone(),
            team: req.team.clone(),
            user: run_as.clone().unwrap_or_else(|| submitter(&p)),
            priority: req.priority.unwrap_or(0),
            tasks,
            gpu,
            // CPU and memory are reserved only when asked for: GPUs are what is scheduled.
            cpu_milli: req.cpu_milli.unwrap_or(0),
            mem_mib: req.mem_mib.unwrap_or(0),
            gpu_model: req.gpu_model.clone(),
            node_selector: Default::default(),
            time_limit_s,
            runtime_estimate_s: None,
            preemptible: req.preemptible.unwrap_or(true),
            grace_s: 10,
            min_run_s: 0,
            checkpoint_every_s: None,
            depends_on: Vec::new(),
            submit_s: now,
        };
        let payload = JobPayload {
            command: req.command.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            user: run_as.clone(),
        };
        inner.commit(vec![Event::Submit(spec)], &[(id.0, payload)])?;
        inner.next_job += 1;
        id
    };
    s.wake.notify_one();
    Ok(Json(SubmitResponse { job: id.0 }))
}

#[derive(Deserialize)]
struct JobFilter {
    team: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Query(f): Query<JobFilter>,
) -> Api<Vec<JobView>> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let mut out: Vec<JobView> = inner
        .state
        .jobs()
        .filter(|j| f.team.as_ref().is_none_or(|t| &j.spec.team == t))
        .filter(|j| f.state.as_ref().is_none_or(|st| j.state.name() == st))
        .map(|j| job_view(&inner, j))
        .collect();
    out.sort_by_key(|j| std::cmp::Reverse(j.id));
    out.truncate(f.limit.unwrap_or(1000));
    Ok(Json(out))
}

fn job_view(inner: &Inner, j: &qm_core::Job) -> JobView {
    let run = j.state.run();
    let attempt = run.map_or(j.runs, |r| r.attempt);
    let codes = inner.exits.get(&(j.spec.id.0, attempt));
    let placement = run
        .map(|r| {
            r.placement
                .iter()
                .enumerate()
                .map(|(i, t)| TaskView {
                    index: i as u32,
                    node: inner.node_name(t.node.0),
                    gpus: t.gpus.clone(),
                    gpu_milli: t.gpu_milli,
                    exit_code: codes.and_then(|c| c.get(&(i as u32)).copied()),
                })
                .collect()
        })
        .unwrap_or_default();
    let ended_s = match j.state {
        JobState::Succeeded { at_s }
        | JobState::Failed { at_s, .. }
        | JobState::Cancelled { at_s } => Some(at_s),
        _ => None,
    };
    let (gpus, gpu_milli) = match j.spec.gpu {
        GpuAsk::Whole(k) => (k, 1000),
        GpuAsk::Milli(m) => (0, m),
    };
    JobView {
        id: j.spec.id.0,
        name: j.spec.name.clone(),
        team: j.spec.team.clone(),
        user: j.spec.user.clone(),
        state: j.state.name().into(),
        tasks: j.spec.tasks,
        gpus,
        gpu_milli,
        gpu_model: j.spec.gpu_model.clone(),
        priority: j.spec.priority,
        time_limit_s: j.spec.time_limit_s,
        preemptible: j.spec.preemptible,
        submit_s: j.spec.submit_s,
        started_s: run.map(|r| r.started_s),
        ended_s,
        attempt,
        preemptions: j.preemptions,
        admission: run.map(|r| format!("{:?}", r.admission).to_lowercase()),
        placement,
        util_pct: run.and_then(|r| r.last_util_pct),
        idle_since_s: run.and_then(|r| r.idle_since_s),
        command: inner
            .payloads
            .get(&j.spec.id.0)
            .map(|p| p.command.clone())
            .unwrap_or_default(),
        events: inner.history.get(&j.spec.id.0).cloned().unwrap_or_default(),
    }
}

fn find_job<'a>(inner: &'a Inner, id: u64, p: &Principal) -> Result<&'a qm_core::Job, Refusal> {
    let job = inner
        .state
        .job(JobId(id))
        .ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
    if !p.may_use_team(&job.spec.team) {
        return Err(Refusal::Forbidden(format!(
            "job {id} belongs to team {:?}, which your token does not cover",
            job.spec.team
        )));
    }
    Ok(job)
}

async fn show_job(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Api<JobView> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let job = find_job(&inner, id, &p)?;
    Ok(Json(job_view(&inner, job)))
}

async fn why(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Api<WhyView> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let job = find_job(&inner, id, &p)?;
    let state = job.state.name().to_string();
    if job.state != JobState::Pending {
        let message = match &job.state {
            JobState::Running(r) => format!("running since {} ({:?})", r.started_s, r.admission),
            JobState::Stopping(_, st) => format!("stopping ({:?})", st.cause),
            other => format!("{} (it has ended)", other.name()),
        };
        return Ok(Json(WhyView {
            job: id,
            state,
            reason: None,
            message: message.to_lowercase(),
            eta_s: None,
        }));
    }
    let p = plan(&inner.state, now_s());
    if let Some(r) = p
        .reservations
        .iter()
        .chain(&p.reclaims)
        .find(|r| r.job.0 == id)
    {
        // It starts in this very plan's reservation or reclaim.
        let _ = r;
    }
    match p.pending_job(JobId(id)) {
        Some(pj) => Ok(Json(WhyView {
            job: id,
            state,
            reason: serde_json::to_value(&pj.reason).ok(),
            message: pj.reason.to_string(),
            eta_s: pj.eta_s,
        })),
        None => Ok(Json(WhyView {
            job: id,
            state,
            reason: None,
            message: "starting now".into(),
            eta_s: Some(now_s()),
        })),
    }
}

async fn cancel(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Api<JobView> {
    let view = {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        need_client(&p)?;
        let job = find_job(&inner, id, &p)?;
        if job.state.is_terminal() {
            return Err(Refusal::Conflict(format!(
                "job {id} has already ended ({})",
                job.state.name()
            )));
        }
        inner.commit(
            vec![Event::Cancel {
                job: JobId(id),
                at_s: now_s(),
            }],
            &[],
        )?;
        // A running job is now stopping: its agents are told.
        let job = inner.state.job(JobId(id)).expect("known");
        if let Some(run) = job.state.run() {
            let grace_s = job.spec.grace_s;
            let tasks: Vec<(u32, u32, u32)> = run
                .placement
                .iter()
                .enumerate()
                .map(|(i, t)| (i as u32, t.node.0, run.attempt))
                .collect();
            for (task, node, attempt) in tasks {
                inner.push(
                    node,
                    qm_proto::Command::Kill {
                        key: qm_proto::TaskKey {
                            job: id,
                            task,
                            attempt,
                        },
                        grace_s,
                    },
                );
            }
        }
        let job = inner.state.job(JobId(id)).expect("known");
        job_view(&inner, job)
    };
    s.wake.notify_one();
    Ok(Json(view))
}

#[derive(Deserialize)]
struct LogQuery {
    task: Option<u32>,
    attempt: Option<u32>,
    offset: Option<u64>,
    /// Only the last this many bytes (instead of `offset`).
    tail: Option<u64>,
}

async fn logs(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<LogQuery>,
) -> Api<LogView> {
    let mut inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let job = find_job(&inner, id, &p)?;
    let task = q.task.unwrap_or(0);
    if task >= job.spec.tasks {
        return Err(Refusal::BadRequest(format!(
            "job {id} has {} tasks; task must be 0..{}",
            job.spec.tasks, job.spec.tasks
        )));
    }
    let current = job.state.run().map(|r| r.attempt);
    let attempt = q.attempt.or(current).unwrap_or(job.runs.max(1));
    let exited = inner
        .exits
        .get(&(id, attempt))
        .is_some_and(|c| c.contains_key(&task));
    let done = current != Some(attempt) || exited;
    let mut offset = q.offset.unwrap_or(0);
    if let Some(tail) = q.tail {
        let (_, len) = inner.store.read_log((id, task, attempt), u64::MAX, 0)?;
        offset = len.saturating_sub(tail);
    }
    let (data, next) = inner.store.read_log((id, task, attempt), offset, 1 << 20)?;
    Ok(Json(LogView {
        job: id,
        task,
        attempt,
        offset,
        next,
        data: String::from_utf8_lossy(&data).into_owned(),
        done,
    }))
}

async fn list_nodes(State(s): State<Arc<Server>>, headers: HeaderMap) -> Api<Vec<NodeView>> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let out = inner.state.nodes().map(|n| node_view(&inner, n)).collect();
    Ok(Json(out))
}

fn node_view(inner: &Inner, n: &qm_core::Node) -> NodeView {
    let now = now_s();
    NodeView {
        name: n.spec.name.clone(),
        state: format!("{:?}", n.state).to_lowercase(),
        gpus: n.spec.gpus,
        gpu_model: n.spec.gpu_model.clone(),
        gpus_used_milli: n.gpu_used_milli.clone(),
        cpu_milli: n.spec.cpu_milli,
        mem_mib: n.spec.mem_mib,
        labels: n.spec.labels.clone(),
        last_seen_s: inner
            .agents
            .get(&n.spec.id.0)
            .map(|a| now.saturating_sub(a.last_seen.elapsed().as_secs())),
    }
}

fn set_node_state(s: &Server, headers: &HeaderMap, name: &str, to: NodeState) -> Api<NodeView> {
    {
        let mut inner = s.lock();
        let p = principal(&inner, headers)?;
        need_admin(&p)?;
        let id = inner
            .nodes
            .get(name)
            .map(|n| n.id)
            .ok_or_else(|| Refusal::NotFound(format!("no node {name:?}")))?;
        inner.commit(
            vec![Event::NodeState {
                node: NodeId(id),
                state: to,
                at_s: now_s(),
            }],
            &[],
        )?;
    }
    s.wake.notify_one();
    let inner = s.lock();
    let n = inner
        .state
        .nodes()
        .find(|n| n.spec.name == name)
        .expect("just set");
    Ok(Json(node_view(&inner, n)))
}

async fn drain(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Api<NodeView> {
    set_node_state(&s, &headers, &name, NodeState::Draining)
}

async fn resume(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Api<NodeView> {
    set_node_state(&s, &headers, &name, NodeState::Ready)
}

async fn list_teams(State(s): State<Arc<Server>>, headers: HeaderMap) -> Api<Vec<TeamView>> {
    let inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_client(&p)?;
    let standings = plan(&inner.state, now_s()).teams;
    let mut idle_now: BTreeMap<&str, u64> = BTreeMap::new();
    for j in inner.state.live_jobs() {
        if let Some(r) = j.state.run() {
            if r.idle_since_s.is_some() {
                *idle_now.entry(j.spec.team.as_str()).or_default() += j.spec.milli_total();
            }
        }
    }
    let out = inner
        .state
        .teams()
        .map(|t| {
            let st = standings.iter().find(|s| s.team == t.spec.name);
            TeamView {
                name: t.spec.name.clone(),
                parent: t.spec.parent.clone(),
                guaranteed: t
                    .spec
                    .quotas
                    .iter()
                    .map(|(m, q)| (m.clone(), q.guaranteed))
                    .collect(),
                max: t
                    .spec
                    .quotas
                    .iter()
                    .map(|(m, q)| (m.clone(), q.max))
                    .collect(),
                weight: t.spec.weight,
                idle_policy: format!("{:?}", t.spec.idle_policy).to_lowercase(),
                used_milli: t.alloc_milli,
                borrowed_milli: st.map_or(0, |s| s.borrowed_milli),
                idle_milli: idle_now.get(t.spec.name.as_str()).copied().unwrap_or(0),
                idle_gpu_hours: t.idle_milli_s_total as f64 / 1000.0 / 3600.0,
            }
        })
        .collect();
    Ok(Json(out))
}

async fn set_team(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(req): Body<TeamRequest>,
) -> Api<TeamView> {
    {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        need_admin(&p)?;
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
            if w == 0 {
                return Err(Refusal::BadRequest("weight must be at least 1".into()));
            }
            spec.weight = w;
        }
        if let Some(policy) = &req.idle_policy {
            spec.idle_policy = match policy.as_str() {
                "warn" => IdlePolicy::Warn,
                "reclaim" => IdlePolicy::ReclaimBorrowed,
                "requeue" => IdlePolicy::Requeue { grace_s: 300 },
                other => {
                    return Err(Refusal::BadRequest(format!(
                        "unknown idle policy {other:?}; valid: warn, reclaim, requeue"
                    )))
                }
            };
        }
        inner.commit(vec![Event::SetTeam(spec)], &[])?;
    }
    s.wake.notify_one();
    let teams = list_teams(State(s.clone()), headers).await?;
    teams
        .0
        .into_iter()
        .find(|t| t.name == req.name)
        .map(Json)
        .ok_or_else(|| Refusal::Internal("team vanished".into()))
}

async fn create_token(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(req): Body<TokenRequest>,
) -> Api<TokenResponse> {
    {
        let inner = s.lock();
        let p = principal(&inner, &headers)?;
        need_admin(&p)?;
    }
    let token = s.create_token(&req.name, &req.role, &req.teams)?;
    Ok(Json(TokenResponse { token }))
}

async fn register(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(req): Body<RegisterRequest>,
) -> Api<RegisterResponse> {
    let credential = {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        if !matches!(p, Principal::Join | Principal::Admin) {
            return Err(Refusal::Forbidden(
                "registering a node needs a join token".into(),
            ));
        }
        if req.name.is_empty() {
            return Err(Refusal::BadRequest("a node needs a name".into()));
        }
        let id = match inner.nodes.get(&req.name) {
            Some(n) => n.id,
            None => inner.nodes.values().map(|n| n.id + 1).max().unwrap_or(0),
        };
        let spec = NodeSpec {
            id: NodeId(id),
            name: req.name.clone(),
            gpus: req.gpus,
            gpu_model: req.gpu_model.clone(),
            gpu_mem_mib: req.gpu_mem_mib,
            cpu_milli: req.cpu_milli,
            mem_mib: req.mem_mib,
            labels: req.labels.clone(),
            topology: req.topology.clone(),
        };
        let credential = new_token();
        let rec = NodeRecord {
            name: req.name.clone(),
            id,
            credential_hash: hash_token(&credential),
            address: req.address.clone(),
        };
        // A node already running jobs keeps them: re-registering only renews its credential.
        let known = inner
            .state
            .node(NodeId(id))
            .is_some_and(|n| n.spec.gpus == spec.gpus && n.spec.gpu_model == spec.gpu_model);
        if !known {
            inner.commit(vec![Event::NodeUp(spec)], &[])?;
        }
        inner.store.put_node(&rec)?;
        inner.nodes.insert(rec.name.clone(), rec);
        let wake = Arc::new(tokio::sync::Notify::new());
        inner.agents.entry(id).or_insert(Agent {
            last_seen: Instant::now(),
            outbox: Vec::new(),
            wake,
        });
        inner.agents.get_mut(&id).expect("just set").last_seen = Instant::now();
        credential
    };
    s.wake.notify_one();
    Ok(Json(RegisterResponse { credential }))
}

async fn heartbeat(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(hb): Body<Heartbeat>,
) -> Api<serde_json::Value> {
    {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        let node = need_node(&p)?;
        inner.agents.entry(node).or_insert_with(|| Agent {
            last_seen: Instant::now(),
            outbox: Vec::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        inner.heartbeat(node, hb)?;
    }
    s.wake.notify_one();
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct Wait {
    wait_s: Option<u64>,
}

async fn commands(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Query(w): Query<Wait>,
) -> Api<Commands> {
    let (node, wake) = {
        let mut inner = s.lock();
        let p = principal(&inner, &headers)?;
        let node = need_node(&p)?;
        let agent = inner.agents.entry(node).or_insert_with(|| Agent {
            last_seen: Instant::now(),
            outbox: Vec::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        agent.last_seen = Instant::now();
        (node, agent.wake.clone())
    };
    let deadline = Duration::from_secs(w.wait_s.unwrap_or(25).min(60));
    let take = |s: &Server| {
        let mut inner = s.lock();
        let out = inner
            .agents
            .get_mut(&node)
            .map(|a| std::mem::take(&mut a.outbox))
            .unwrap_or_default();
        for c in &out {
            if let qm_proto::Command::Launch(l) = c {
                if let Some(sent) = inner.sent.get_mut(&l.key) {
                    sent.at = Instant::now();
                }
            }
        }
        out
    };
    let mut out = take(&s);
    if out.is_empty() {
        let _ = tokio::time::timeout(deadline, wake.notified()).await;
        out = take(&s);
    }
    Ok(Json(Commands { commands: out }))
}

async fn agent_logs(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Body(chunk): Body<LogChunk>,
) -> Api<serde_json::Value> {
    let mut inner = s.lock();
    let p = principal(&inner, &headers)?;
    need_node(&p)?;
    let k = &chunk.key;
    let len = inner.store.append_log(
        (k.job, k.task, k.attempt),
        chunk.offset,
        chunk.data.as_bytes(),
    )?;
    Ok(Json(serde_json::json!({ "length": len })))
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
            "/api/v1/teams": { "get": op("Teams with guaranteed, max, used, borrowed, idle") },
            "/api/v1/admin/teams": { "post": op("Create or change a team (admin)") },
            "/api/v1/admin/tokens": { "post": op("Create a token: admin, member of teams, or join (admin)") },
            "/agent/v1/register": { "post": op("An agent registers its node with a join token; returns its credential") },
            "/agent/v1/heartbeat": { "post": op("An agent reports running tasks, exits and utilisation") },
            "/agent/v1/commands": { "get": op("Long poll for launches and kills; query wait_s") },
            "/agent/v1/logs": { "post": op("An agent uploads task output") },
            "/api/v1/stream": { "get": op("Server-sent events: dashboard snapshots, pushed on change") },
            "/metrics": { "get": op("Prometheus text format: GPUs, jobs, plan and wait histograms, preemptions, heartbeats") }
        }
    })
}
