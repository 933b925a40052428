//! The dashboard: one small page with its script and style embedded in the binary (no
//! Node.js, no build step), and the live feed it reads. `GET /api/v1/stream` is a
//! server-sent-event stream of snapshots, pushed when something changed (at most twice a
//! second) and every 10 s regardless; it needs a token like every other call.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use qm_core::{plan, Admission, GpuAsk, JobState, NodeState};
use serde_json::{json, Value};

use crate::{now_s, Inner, Refusal, Server};

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const APP_CSS: &str = include_str!("../assets/app.css");

/// At most this many pending jobs and recent jobs go in a snapshot (with the totals).
const QUEUE_SHOWN: usize = 200;
const RECENT_SHOWN: usize = 100;
/// Overview samples kept: one per 5 s, an hour.
pub const HISTORY: usize = 720;

/// One overview sample: (time, allocated, borrowed, idle) in milli-GPUs.
pub type Sample = (u64, u64, u64, u64);

pub async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

pub async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// Allocated, borrowed and idle milli-GPUs now.
pub fn totals(inner: &Inner) -> (u64, u64, u64) {
    totals_of(&inner.state)
}

fn totals_of(state: &qm_core::ClusterState) -> (u64, u64, u64) {
    let (mut a, mut b, mut i) = (0, 0, 0);
    for j in state.live_jobs() {
        if let Some(r) = j.state.run() {
            let m = j.spec.milli_total();
            a += m;
            if r.admission == Admission::Borrowed {
                b += m;
            }
            if r.idle_since_s.is_some() {
                i += m;
            }
        }
    }
    (a, b, i)
}

/// Records an overview sample (called by the scheduling loop).
pub fn sample(inner: &mut Inner, history: &mut VecDeque<Sample>) {
    let (a, b, i) = totals(inner);
    history.push_back((now_s(), a, b, i));
    while history.len() > HISTORY {
        history.pop_front();
    }
}

/// Everything the dashboard shows, as of now.
pub fn snapshot(inner: &Inner, history: &VecDeque<Sample>) -> Value {
    snapshot_of(&inner.state, history, now_s())
}

/// The dashboard's snapshot of a state at `now` (for benchmarks too).
pub fn snapshot_of(state: &qm_core::ClusterState, history: &VecDeque<Sample>, now: u64) -> Value {
    let node_name = |id: u32| {
        state
            .node(qm_core::NodeId(id))
            .map_or_else(|| format!("node-{id}"), |n| n.spec.name.clone())
    };
    let gpus: u64 = state
        .nodes()
        .filter(|n| n.state != NodeState::Down)
        .map(|n| u64::from(n.spec.gpus) * 1000)
        .sum();
    let (allocated, borrowed, idle) = totals_of(state);
    let p = plan(state, now);
    // Per-GPU utilisation: the latest sample of the job holding the GPU.
    let mut util: BTreeMap<(u32, u32), u8> = BTreeMap::new();
    for j in state.live_jobs() {
        if let Some(r) = j.state.run() {
            for t in &r.placement {
                for &g in &t.gpus {
                    let u = util.entry((t.node.0, g)).or_default();
                    *u = (*u).max(r.last_util_pct.unwrap_or(0));
                }
            }
        }
    }
    let nodes: Vec<Value> = state
        .nodes()
        .map(|n| {
            let rack = n
                .spec
                .labels
                .get("rack")
                .cloned()
                .or_else(|| n.spec.topology.last().cloned())
                .unwrap_or_default();
            let cells: Vec<[u32; 2]> = n
                .gpu_used_milli
                .iter()
                .enumerate()
                .map(|(g, &m)| {
                    [
                        m,
                        u32::from(*util.get(&(n.spec.id.0, g as u32)).unwrap_or(&0)),
                    ]
                })
                .collect();
            json!({
                "name": n.spec.name, "rack": rack, "model": n.spec.gpu_model,
                "state": format!("{:?}", n.state).to_lowercase(), "gpus": cells,
            })
        })
        .collect();
    let standings: BTreeMap<&str, &qm_core::TeamStanding> =
        p.teams.iter().map(|t| (t.team.as_str(), t)).collect();
    let mut idle_now: BTreeMap<&str, u64> = BTreeMap::new();
    for j in state.live_jobs() {
        if j.state.run().is_some_and(|r| r.idle_since_s.is_some()) {
            *idle_now.entry(j.spec.team.as_str()).or_default() += j.spec.milli_total();
        }
    }
    let teams: Vec<Value> = state
        .teams()
        .map(|t| {
            let st = standings.get(t.spec.name.as_str());
            json!({
                "name": t.spec.name, "parent": t.spec.parent,
                "guaranteed_milli": t.spec.quotas.values().map(|q| u64::from(q.guaranteed) * 1000).sum::<u64>(),
                "used_milli": t.alloc_milli,
                "borrowed_milli": st.map_or(0, |s| s.borrowed_milli),
                "idle_milli": idle_now.get(t.spec.name.as_str()).copied().unwrap_or(0),
                "idle_gpu_hours": t.idle_milli_s_total as f64 / 3.6e6,
                "standing": st.map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
            })
        })
        .collect();
    let ask = |spec: &qm_core::JobSpec| match spec.gpu {
        GpuAsk::Whole(k) => format!("{}x{} GPU", spec.tasks, k),
        GpuAsk::Milli(m) => format!("{}x{} mGPU", spec.tasks, m),
    };
    let queue: Vec<Value> = p
        .pending
        .iter()
        .take(QUEUE_SHOWN)
        .filter_map(|pj| {
            let j = state.job(pj.job)?;
            Some(json!({
                "id": pj.job.0, "team": j.spec.team, "ask": ask(&j.spec),
                "reason": pj.reason.to_string(), "eta_s": pj.eta_s,
                "wait_s": now.saturating_sub(j.spec.submit_s),
            }))
        })
        .collect();
    let reservations: Vec<Value> = p
        .reservations
        .iter()
        .map(|r| {
            let nodes: Vec<String> = r.placement.iter().map(|t| node_name(t.node.0)).collect();
            json!({"id": r.job.0, "start_s": r.start_s, "nodes": nodes})
        })
        .collect();
    let mut recent: Vec<&qm_core::Job> = state.jobs().collect();
    recent.sort_by_key(|j| std::cmp::Reverse(j.spec.id));
    let recent: Vec<Value> = recent
        .into_iter()
        .take(RECENT_SHOWN)
        .map(|j| {
            json!({
                "id": j.spec.id.0, "team": j.spec.team, "state": j.state.name(), "ask": ask(&j.spec),
                "name": j.spec.name, "preemptions": j.preemptions,
                "admission": j.state.run().map(|r| format!("{:?}", r.admission).to_lowercase()),
            })
        })
        .collect();
    let counts = |pred: fn(&JobState) -> bool| state.live_jobs().filter(|j| pred(&j.state)).count();
    json!({
        "now": now,
        "overview": {
            "gpus_milli": gpus, "allocated_milli": allocated, "borrowed_milli": borrowed,
            "idle_milli": idle, "free_milli": gpus.saturating_sub(allocated),
            "pending": counts(|s| *s == JobState::Pending),
            "running": counts(|s| matches!(s, JobState::Running(_) | JobState::Stopping(..))),
        },
        "history": history.iter().map(|s| [s.0, s.1, s.2, s.3]).collect::<Vec<_>>(),
        "teams": teams,
        "queue": { "total": p.pending.len(), "jobs": queue, "reservations": reservations },
        "nodes": nodes,
        "jobs": recent,
    })
}

/// `GET /api/v1/stream`: snapshots as server-sent events.
pub async fn stream(State(s): State<Arc<Server>>, headers: HeaderMap) -> Result<Response, Refusal> {
    {
        let inner = s.lock();
        let p = crate::api::principal(&inner, &headers)?;
        crate::api::need_client(&p)?;
    }
    let rx = s.changes.subscribe();
    let body = futures_util::stream::unfold((s, rx, true), |(s, mut rx, first)| async move {
        if !first {
            // Wait for a change (or 10 s), then let a burst settle.
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.changed()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let text = {
            let inner = s.lock();
            let history = s.history.lock().unwrap_or_else(|p| p.into_inner());
            snapshot(&inner, &history).to_string()
        };
        let chunk = format!("event: snapshot\ndata: {text}\n\n");
        Some((Ok::<_, Infallible>(chunk), (s, rx, false)))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
