//! `/metrics`: Prometheus text format (version 0.0.4). Gauges are computed from the state at
//! scrape time; counters and histograms are kept by the server since it started (Prometheus
//! handles the resets of a restart).

use std::collections::BTreeMap;
use std::fmt::Write;

use qm_core::{plan, NodeState};
use qm_proto as proto;
use qm_proto::PreemptionCause;

use crate::{now_s, views, Inner};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the histogram buckets, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 604800.0,
];
const PLAN_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A cumulative histogram.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// What the server counts as it goes.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub job_wait: Histogram,
    pub plan_duration: Histogram,
    /// Preemptions by team and cause (reclaim, idle).
    pub preemptions: BTreeMap<(String, PreemptionCause), u64>,
    /// Heartbeats by node name.
    pub heartbeats: BTreeMap<String, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            job_wait: Histogram::new(&WAIT_BUCKETS),
            plan_duration: Histogram::new(&PLAN_BUCKETS),
            preemptions: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
        }
    }
}

/// A label value, escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(inner: &Inner) -> String {
    let mut out = String::new();
    let state = &inner.state;
    let gpus = |milli: u64| milli as f64 / 1000.0;

    // Capacity by model and node state.
    let mut capacity: BTreeMap<&str, u64> = BTreeMap::new();
    let mut nodes: BTreeMap<proto::NodeState, u64> =
        proto::NodeState::ALL.iter().map(|s| (*s, 0)).collect();
    for n in state.nodes() {
        *nodes.entry(views::node_state(n.state)).or_default() += 1;
        if n.state != NodeState::Down {
            *capacity.entry(n.spec.gpu_model.as_str()).or_default() += u64::from(n.spec.gpus);
        }
    }
    head(
        &mut out,
        "qm_gpus",
        "gauge",
        "GPUs on nodes that are not down, by model.",
    );
    for (m, g) in &capacity {
        let _ = writeln!(out, "qm_gpus{{model=\"{}\"}} {g}", esc(m));
    }
    head(&mut out, "qm_nodes", "gauge", "Nodes by state.");
    for (s, c) in &nodes {
        let _ = writeln!(out, "qm_nodes{{state=\"{s}\"}} {c}");
    }

    // Allocation by team and model.
    let alloc = views::usage(state);
    let mut by_state: BTreeMap<proto::JobState, u64> = BTreeMap::new();
    for j in state.jobs() {
        *by_state.entry(views::job_state(&j.state)).or_default() += 1;
    }
    type Pick = fn(&views::Usage) -> u64;
    let picks: [(&str, &str, Pick); 3] = [
        (
            "qm_gpus_allocated",
            "GPUs held by running jobs, by team and model.",
            |u| u.allocated_milli,
        ),
        (
            "qm_gpus_borrowed",
            "GPUs held by jobs that started on capacity lent beyond their team's guarantee.",
            |u| u.borrowed_milli,
        ),
        (
            "qm_gpus_idle",
            "GPUs held by jobs whose GPUs are idle now (below the idle threshold).",
            |u| u.idle_milli,
        ),
    ];
    for (name, help, pick) in picks {
        head(&mut out, name, "gauge", help);
        for ((team, model), u) in &alloc {
            let _ = writeln!(
                out,
                "{name}{{team=\"{}\",model=\"{}\"}} {}",
                esc(team),
                esc(model),
                gpus(pick(u))
            );
        }
    }
    head(
        &mut out,
        "qm_jobs",
        "gauge",
        "Jobs known to the server, by state.",
    );
    for s in proto::JobState::ALL {
        let _ = writeln!(
            out,
            "qm_jobs{{state=\"{s}\"}} {}",
            by_state.get(s).copied().unwrap_or(0)
        );
    }

    // Pending jobs by reason, from a full plan.
    let p = plan(state, now_s());
    let mut reasons: BTreeMap<proto::ReasonKind, u64> = BTreeMap::new();
    for pj in &p.pending {
        *reasons.entry(views::reason(&pj.reason).kind()).or_default() += 1;
    }
    head(
        &mut out,
        "qm_jobs_pending",
        "gauge",
        "Pending jobs by the reason they wait.",
    );
    for (r, c) in &reasons {
        let _ = writeln!(out, "qm_jobs_pending{{reason=\"{r}\"}} {c}");
    }

    // Per team: guarantee and idle time charged.
    head(
        &mut out,
        "qm_team_gpus_guaranteed",
        "gauge",
        "GPUs guaranteed to each team, by model (`*`: any).",
    );
    for t in state.teams() {
        for (m, q) in &t.spec.quotas {
            let _ = writeln!(
                out,
                "qm_team_gpus_guaranteed{{team=\"{}\",model=\"{}\"}} {}",
                esc(&t.spec.name),
                esc(m),
                q.guaranteed
            );
        }
    }
    head(
        &mut out,
        "qm_idle_gpu_hours_total",
        "counter",
        "GPU-hours allocated to each team while idle.",
    );
    for t in state.teams() {
        let _ = writeln!(
            out,
            "qm_idle_gpu_hours_total{{team=\"{}\"}} {}",
            esc(&t.spec.name),
            views::idle_gpu_hours(t)
        );
    }

    let m = &inner.metrics;
    head(
        &mut out,
        "qm_preemptions_total",
        "counter",
        "Running jobs stopped to give their GPUs back (reclaim) or because they sat idle.",
    );
    for ((team, cause), c) in &m.preemptions {
        let _ = writeln!(
            out,
            "qm_preemptions_total{{team=\"{}\",cause=\"{}\"}} {c}",
            esc(team),
            cause
        );
    }
    head(
        &mut out,
        "qm_job_wait_seconds",
        "histogram",
        "Time from submission to start, observed at each start.",
    );
    m.job_wait.write(&mut out, "qm_job_wait_seconds");
    head(
        &mut out,
        "qm_plan_duration_seconds",
        "histogram",
        "Time one scheduling decision (decide) took.",
    );
    m.plan_duration.write(&mut out, "qm_plan_duration_seconds");
    head(
        &mut out,
        "qm_agent_heartbeats_total",
        "counter",
        "Heartbeats received from each node's agent.",
    );
    for (node, c) in &m.heartbeats {
        let _ = writeln!(
            out,
            "qm_agent_heartbeats_total{{node=\"{}\"}} {c}",
            esc(node)
        );
    }
    head(
        &mut out,
        "qm_agent_last_heartbeat_age_seconds",
        "gauge",
        "Seconds since each connected node's agent last reported.",
    );
    for (id, a) in &inner.agents {
        let _ = writeln!(
            out,
            "qm_agent_last_heartbeat_age_seconds{{node=\"{}\"}} {}",
            esc(&inner.node_name(*id)),
            a.last_seen.elapsed().as_secs_f64()
        );
    }
    out
}
