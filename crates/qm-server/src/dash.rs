//! The dashboard: one small page with its script and style embedded in the binary (no
//! Node.js, no build step), and the live feed it reads. `GET /api/v1/stream` is a
//! server-sent-event stream of snapshots, pushed when something changed (at most twice a
//! second) and every 10 s regardless; it needs a token like every other call.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qm_core::{plan, JobState, NodeState};
use qm_proto::{
    DashJob, DashNode, DashOverview, DashPending, DashQueue, DashReservation, DashSnapshot,
    DashTask, DashTeam, QueuePage,
};

use crate::api::{Api, Client, Params};
use crate::auth::Principal;
use crate::views::{self, usage, usage_total};
use crate::{Inner, Refusal, Server};

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

#[utoipa::path(get, path = "/", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard's page (no data: it reads /api/v1/stream with a token)", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

#[utoipa::path(get, path = "/assets/app.js", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard's script", body = String, content_type = "text/javascript; charset=utf-8")))]
pub async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

#[utoipa::path(get, path = "/assets/app.css", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard's style sheet", body = String, content_type = "text/css; charset=utf-8")))]
pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// Records an overview sample (called by the scheduling loop).
pub fn sample(inner: &Inner, history: &mut VecDeque<Sample>) {
    let now = inner.now_s();
    let u = usage_total(&usage(&inner.state, now));
    history.push_back((now, u.allocated_milli, u.borrowed_milli, u.idle_milli));
    while history.len() > HISTORY {
        history.pop_front();
    }
}

/// The most dashboard streams open at once; one more is refused (429).
pub const MAX_STREAMS: usize = 256;

/// A snapshot shared by every stream that asks within this long of the same change.
const SHARED_FOR: Duration = Duration::from_millis(500);

/// The latest snapshot: the change count it was taken at, when, and what it holds.
pub(crate) type SharedSnapshot = Option<(u64, std::time::Instant, Arc<Shared>)>;

/// A snapshot as every stream shares it: the snapshot, its text, and the plan's whole pending
/// queue (the snapshot holds its first jobs; `GET /api/v1/queue` pages through the rest).
pub(crate) struct Shared {
    snap: DashSnapshot,
    text: String,
    pending: Vec<qm_core::PendingJob>,
    /// Every pending job's view and its words in lower case, built at the first filtered
    /// read of this snapshot; filtering then reads them without the state's lock.
    views: std::sync::OnceLock<Vec<(DashPending, String)>>,
}

impl Shared {
    fn views(&self, state: &qm_core::ClusterState) -> &[(DashPending, String)] {
        self.views.get_or_init(|| {
            self.pending
                .iter()
                .filter_map(|pj| pending_view(state, pj, self.snap.now))
                .map(|v| {
                    let words =
                        format!("{} {} {} {}", v.team, v.id, v.reason, v.ask).to_lowercase();
                    (v, words)
                })
                .collect()
        })
    }
}

/// One open stream, counted while it lives.
struct OpenStream(Arc<std::sync::atomic::AtomicUsize>);

impl OpenStream {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Result<OpenStream, Refusal> {
        use std::sync::atomic::Ordering;
        let was = count.fetch_add(1, Ordering::SeqCst);
        let open = OpenStream(count.clone());
        if was >= MAX_STREAMS {
            return Err(Refusal::TooMany(format!(
                "{MAX_STREAMS} dashboard streams are open, the most this server serves; close one (or read GET /api/v1/jobs, /nodes and /teams instead)"
            )));
        }
        Ok(open)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The snapshot as `p` may see it, as text. However many streams are open, one snapshot
/// (with its plan) is computed per change and half second, and the others reuse it; where
/// jobs are private each member's copy is filtered from it.
fn shared_snapshot(s: &Server, p: &Principal) -> String {
    let inner = s.lock();
    let shared = shared(s, &inner);
    if inner.config.private_jobs {
        let mut own = shared.snap.clone();
        private_to(&mut own, &inner.state, p);
        // The queue's first page and count as the member's own: the first of its teams'
        // jobs in plan order, not those among the first of everyone's.
        let team_of = |pj: &&qm_core::PendingJob| {
            inner
                .state
                .job(pj.job)
                .is_some_and(|j| p.may_use_team(&j.spec.team))
        };
        own.queue.total = shared.pending.iter().filter(team_of).count() as u64;
        own.queue.jobs = shared
            .pending
            .iter()
            .filter(team_of)
            .take(QUEUE_SHOWN)
            .filter_map(|pj| pending_view(&inner.state, pj, own.now))
            .collect();
        own.to_string()
    } else {
        shared.text.clone()
    }
}

/// The latest shared snapshot, computed again when something changed or it is older than
/// half a second.
fn shared(s: &Server, inner: &Inner) -> Arc<Shared> {
    let changed = *s.changes.borrow();
    let cached = s
        .dash_cache
        .lock()
        .expect("the dashboard cache lock is poisoned")
        .clone()
        .filter(|(at, when, _)| *at == changed && when.elapsed() < SHARED_FOR)
        .map(|(_, _, shared)| shared);
    cached.unwrap_or_else(|| {
        let (mut snap, pending) = snapshot_with_queue(&inner.state, &s.history(), inner.now_s());
        for t in &mut snap.teams {
            t.idle_gpu_hours_7d = s.idle_week(&t.name);
        }
        let text = snap.to_string();
        let shared = Arc::new(Shared {
            snap,
            text,
            pending,
            views: std::sync::OnceLock::new(),
        });
        *s.dash_cache
            .lock()
            .expect("the dashboard cache lock is poisoned") =
            Some((changed, std::time::Instant::now(), shared.clone()));
        shared
    })
}

/// Where jobs are private (`--private-jobs`), a member's snapshot keeps only its own teams'
/// jobs, queue entries and reservations; teams' totals and nodes' use stay (they name no
/// job; each node's tasks are cut to the member's teams).
fn private_to(snap: &mut DashSnapshot, state: &qm_core::ClusterState, p: &Principal) {
    let team_of = |id: u64| {
        state
            .job(qm_core::JobId(id))
            .map(|j| j.spec.team.clone())
            .unwrap_or_default()
    };
    snap.jobs.retain(|j| p.may_use_team(&j.team));
    snap.queue.jobs.retain(|j| p.may_use_team(&j.team));
    for n in &mut snap.nodes {
        n.tasks.retain(|t| p.may_use_team(&t.team));
    }
    for t in &mut snap.teams {
        if !p.may_use_team(&t.name) {
            t.idle_jobs.clear();
        }
    }
    snap.queue
        .reservations
        .retain(|r| p.may_use_team(&team_of(r.id)));
}

/// The dashboard's snapshot of a state at `now` (for benchmarks too).
pub fn snapshot_of(
    state: &qm_core::ClusterState,
    history: &VecDeque<Sample>,
    now: u64,
) -> DashSnapshot {
    snapshot_with_queue(state, history, now).0
}

/// The snapshot, and the plan's whole pending queue it shows the first of.
fn snapshot_with_queue(
    state: &qm_core::ClusterState,
    history: &VecDeque<Sample>,
    now: u64,
) -> (DashSnapshot, Vec<qm_core::PendingJob>) {
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
    let by_model = usage(state, now);
    let total = usage_total(&by_model);
    let p = plan(state, now);
    // Per-GPU utilisation: the latest sample of the job holding the GPU; per node, its tasks.
    let mut util: BTreeMap<(u32, u32), u8> = BTreeMap::new();
    let mut tasks: BTreeMap<u32, Vec<DashTask>> = BTreeMap::new();
    for j in state.live_jobs() {
        if let Some(r) = j.state.run() {
            for t in &r.placement {
                for &g in &t.gpus {
                    let u = util.entry((t.node.0, g)).or_default();
                    *u = (*u).max(r.last_util_pct.unwrap_or(0));
                }
                tasks.entry(t.node.0).or_default().push(DashTask {
                    job: j.spec.id.0,
                    team: j.spec.team.clone(),
                    gpus: t.gpus.clone(),
                });
            }
        }
    }
    let nodes = state
        .nodes()
        .map(|n| DashNode {
            name: n.spec.name.clone(),
            rack: n
                .spec
                .labels
                .get("rack")
                .cloned()
                .or_else(|| n.spec.topology.last().cloned())
                .unwrap_or_default(),
            model: n.spec.gpu_model.clone(),
            state: views::node_state(n.state),
            gpus: n
                .gpu_used_milli
                .iter()
                .enumerate()
                .map(|(g, &m)| {
                    [
                        m,
                        u32::from(*util.get(&(n.spec.id.0, g as u32)).unwrap_or(&0)),
                    ]
                })
                .collect(),
            tasks: tasks.remove(&n.spec.id.0).unwrap_or_default(),
        })
        .collect();
    let standings: BTreeMap<&str, &qm_core::TeamStanding> =
        p.teams.iter().map(|t| (t.team.as_str(), t)).collect();
    let teams = views::teams_with_usage(state, &by_model)
        .into_iter()
        .map(|(t, u)| DashTeam {
            name: t.spec.name.clone(),
            parent: t.spec.parent.clone(),
            guaranteed_milli: t
                .spec
                .quotas
                .values()
                .map(|q| u64::from(q.guaranteed) * 1000)
                .sum(),
            used_milli: u.allocated_milli,
            borrowed_milli: u.borrowed_milli,
            idle_milli: u.idle_milli,
            idle_gpu_hours: views::idle_gpu_hours(t),
            // Filled in by the server from its usage samples.
            idle_gpu_hours_7d: 0.0,
            standing: standings
                .get(t.spec.name.as_str())
                .map(|s| views::standing(s)),
            idle_jobs: state
                .live_jobs()
                .filter(|j| j.spec.team == t.spec.name)
                .filter_map(|j| views::idle_view(state, j, now))
                .collect(),
        })
        .collect();
    let queue = p
        .pending
        .iter()
        .take(QUEUE_SHOWN)
        .filter_map(|pj| pending_view(state, pj, now))
        .collect();
    let reservations = p
        .reservations
        .iter()
        .map(|r| DashReservation {
            id: r.job.0,
            start_s: r.start_s,
            nodes: r.placement.iter().map(|t| node_name(t.node.0)).collect(),
        })
        .collect();
    let mut recent: Vec<&qm_core::Job> = state.jobs().collect();
    recent.sort_by_key(|j| std::cmp::Reverse(j.spec.id));
    let jobs = recent
        .into_iter()
        .take(RECENT_SHOWN)
        .map(|j| DashJob {
            id: j.spec.id.0,
            team: j.spec.team.clone(),
            state: views::job_state(&j.state),
            ask: views::ask(&j.spec),
            name: j.spec.name.clone(),
            preemptions: j.preemptions,
            admission: j.state.run().map(|r| views::admission(r.admission)),
        })
        .collect();
    let counts =
        |pred: fn(&JobState) -> bool| state.live_jobs().filter(|j| pred(&j.state)).count() as u64;
    let snap = DashSnapshot {
        now,
        overview: DashOverview {
            gpus_milli: gpus,
            allocated_milli: total.allocated_milli,
            borrowed_milli: total.borrowed_milli,
            idle_milli: total.idle_milli,
            free_milli: gpus.saturating_sub(total.allocated_milli),
            pending: counts(|s| *s == JobState::Pending),
            running: counts(|s| matches!(s, JobState::Running(_) | JobState::Stopping(..))),
        },
        history: history.iter().map(|s| [s.0, s.1, s.2, s.3]).collect(),
        teams,
        queue: DashQueue {
            total: p.pending.len() as u64,
            jobs: queue,
            reservations,
        },
        nodes,
        jobs,
    };
    (snap, p.pending)
}

/// A pending job as the dashboard shows it.
fn pending_view(
    state: &qm_core::ClusterState,
    pj: &qm_core::PendingJob,
    now: u64,
) -> Option<DashPending> {
    let j = state.job(pj.job)?;
    Some(DashPending {
        id: pj.job.0,
        team: j.spec.team.clone(),
        ask: views::ask(&j.spec),
        reason: views::reason_text(&pj.reason, now),
        eta_s: pj.eta_s,
        wait_s: now.saturating_sub(j.spec.submit_s),
        array: j.spec.array.map(|a| (a.array.0, a.index)),
    })
}

/// The most pending jobs one page of `GET /api/v1/queue` holds.
pub const QUEUE_PAGE_MAX: u64 = 1_000;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// Skip this many matching jobs (default 0).
    offset: Option<u64>,
    /// At most this many jobs (default 100, at most 1,000).
    limit: Option<u64>,
    /// Words that must all appear in a job's team, id, ask or reason (any case).
    filter: Option<String>,
}

/// `GET /api/v1/queue`: the pending queue in plan order, a page at a time, filtered.
#[utoipa::path(get, path = "/api/v1/queue", tag = "dashboard", params(QueueQuery), responses((status = 200, description = "A page of the pending jobs in plan order, with why each waits and its estimated start. With private jobs, a member sees only its own teams' jobs.", body = QueuePage)))]
pub async fn queue(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Params(q): Params<QueueQuery>,
) -> Api<QueuePage> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > QUEUE_PAGE_MAX {
        return Err(Refusal::BadRequest(format!(
            "limit is {limit}; give 1 to {QUEUE_PAGE_MAX} jobs a page"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let words: Vec<String> = q
        .filter
        .unwrap_or_default()
        .to_lowercase()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // The snapshot's views are built under the lock (once per snapshot); they are
    // filtered and paged without it.
    let (shared, private) = s
        .read(|inner| {
            let shared = shared(&s, inner);
            shared.views(&inner.state);
            Ok((shared, inner.config.private_jobs))
        })
        .await?;
    let views = shared.views.get().map_or(&[][..], Vec::as_slice);
    let visible = views
        .iter()
        .filter(|(v, _)| !private || p.may_use_team(&v.team));
    let total = visible.clone().count() as u64;
    let mut matched = 0;
    let mut jobs = Vec::new();
    for (view, text) in visible {
        if words.iter().all(|w| text.contains(w.as_str())) {
            if matched >= offset && (jobs.len() as u64) < limit {
                jobs.push(view.clone());
            }
            matched += 1;
        }
    }
    Ok(Json(QueuePage {
        total,
        matched,
        offset,
        jobs,
    }))
}

/// `GET /api/v1/stream`: snapshots as server-sent events.
#[utoipa::path(get, path = "/api/v1/stream", tag = "dashboard", responses((status = 200, description = "Server-sent events: a DashSnapshot (JSON) per event, pushed on change", body = String, content_type = "text/event-stream")))]
pub async fn stream(State(s): State<Arc<Server>>, Client(p): Client) -> Result<Response, Refusal> {
    let open = OpenStream::new(&s.streams)?;
    let rx = s.changes.subscribe();
    let body =
        futures_util::stream::unfold((s, rx, true, open), move |(s, mut rx, first, open)| {
            let p = p.clone();
            async move {
                if !first {
                    // Wait for a change (or 10 s), then let a burst settle.
                    let _ = tokio::time::timeout(Duration::from_secs(10), rx.changed()).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let text = shared_snapshot(&s, &p);
                // Shown only once everything it shows is durable.
                s.settled().await;
                let chunk = format!("event: snapshot\ndata: {text}\n\n");
                Some((Ok::<_, Infallible>(chunk), (s, rx, false, open)))
            }
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
