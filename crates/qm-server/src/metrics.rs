//! `/metrics`, written by the Prometheus project's Rust client (`prometheus-client`) in the
//! OpenMetrics text format. Gauges are computed from the state at scrape time; counters and
//! histograms are kept by the server since it started (Prometheus handles the resets of a
//! restart).
//!
//! Each scrape builds a fresh [`Registry`]: the gauges are a function of the state now (teams,
//! models and nodes come and go, and a kept registry would go on exporting the series of a
//! team that no longer holds anything), so they are created and set under the state's lock
//! and dropped after encoding. The kept metrics ([`Metrics`]) are registered into it by
//! clone: a clone shares its atomics with the original, so nothing is copied or reset.
//!
//! Counters are registered without `_total`; the encoder appends it to their samples, so
//! the exposed names are `qm_preemptions_total` and so on. A family without series (no
//! preemption yet) is left out altogether, `# HELP` and `# TYPE` included.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use qm_core::{plan, NodeState};
use qm_proto as proto;
use qm_proto::PreemptionCause;

use crate::{views, Inner};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the histogram buckets, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 604800.0,
];
const PLAN_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PreemptionLabels {
    pub team: String,
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamModelLabels {
    team: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct IdleStepLabels {
    team: String,
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabels {
    team: String,
}

/// A gauge of fractional values (GPUs, seconds).
type GaugeF64 = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What the server counts as it goes.
#[derive(Debug)]
pub struct Metrics {
    job_wait: Histogram,
    plan_duration: Histogram,
    /// Preemptions by team and cause.
    preemptions: Family<PreemptionLabels, Counter>,
    /// Heartbeats by node name.
    heartbeats: Family<NodeLabels, Counter>,
    /// Agent requests refused because they spoke for another node's task, by node and what.
    agent_refusals: Family<RefusalLabels, Counter>,
    /// Ended jobs forgotten by retention (their records stay in the store).
    pub forgotten: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub node: String,
    pub what: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            job_wait: Histogram::new(WAIT_BUCKETS),
            plan_duration: Histogram::new(PLAN_BUCKETS),
            preemptions: Family::default(),
            heartbeats: Family::default(),
            agent_refusals: Family::default(),
            forgotten: 0,
        }
    }
}

impl Metrics {
    /// A job started after waiting this long since its submission.
    pub fn job_waited(&self, wait_s: u64) {
        self.job_wait.observe(wait_s as f64);
    }

    /// One `decide` took this long.
    pub fn planned(&self, seconds: f64) {
        self.plan_duration.observe(seconds);
    }

    pub fn preempted(&self, team: String, cause: PreemptionCause) {
        self.preemptions
            .get_or_create(&PreemptionLabels {
                team,
                cause: cause.as_str(),
            })
            .inc();
    }

    pub fn heartbeat(&self, node: String) {
        self.heartbeats.get_or_create(&NodeLabels { node }).inc();
    }

    /// A node's request refused for speaking about a task that is not its own.
    pub fn agent_refused(&self, node: String, what: &'static str) {
        self.agent_refusals
            .get_or_create(&RefusalLabels { node, what })
            .inc();
    }
}

/// Sets a labelled gauge of each entry, in the map's order.
fn gauges<L, V>(values: impl IntoIterator<Item = (L, V)>) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq,
    V: TryInto<i64>,
{
    let family: Family<L, Gauge> = Family::default();
    for (labels, v) in values {
        family
            .get_or_create(&labels)
            .set(v.try_into().unwrap_or(i64::MAX));
    }
    family
}

fn gauges_f64<L>(values: impl IntoIterator<Item = (L, f64)>) -> Family<L, GaugeF64>
where
    L: Clone + std::hash::Hash + Eq,
{
    let family: Family<L, GaugeF64> = Family::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    family
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    holder: String,
}

/// The whole exposition; `servers`: the servers sharing the store, where it is shared.
pub fn render(inner: &Inner, servers: Option<&qm_store::pg::Servers>) -> String {
    let state = &inner.state;
    let gpus = |milli: u64| milli as f64 / 1000.0;
    let mut r = Registry::default();

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
    r.register(
        "qm_gpus",
        "GPUs on nodes that are not down, by model.",
        gauges(capacity.iter().map(|(m, g)| {
            (
                ModelLabels {
                    model: m.to_string(),
                },
                *g,
            )
        })),
    );
    r.register(
        "qm_nodes",
        "Nodes by state.",
        gauges(
            nodes
                .iter()
                .map(|(s, c)| (StateLabels { state: s.as_str() }, *c)),
        ),
    );

    // Allocation by team and model.
    let usage = views::usage(state, inner.now_s());
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
        r.register(
            name,
            help,
            gauges_f64(usage.iter().map(|((team, model), u)| {
                (
                    TeamModelLabels {
                        team: team.clone(),
                        model: model.clone(),
                    },
                    gpus(pick(u)),
                )
            })),
        );
    }
    let mut by_state: BTreeMap<proto::JobState, u64> =
        proto::JobState::ALL.iter().map(|s| (*s, 0)).collect();
    for j in state.jobs() {
        *by_state.entry(views::job_state(&j.state)).or_default() += 1;
    }
    r.register(
        "qm_jobs",
        "Jobs known to the server, by state.",
        gauges(
            by_state
                .iter()
                .map(|(s, c)| (StateLabels { state: s.as_str() }, *c)),
        ),
    );

    // Pending jobs by reason, from a full plan.
    let p = plan(state, inner.now_s());
    // Every reason, 0 included (as for states), so the family is always described: the
    // encoder leaves out a family without series.
    let mut reasons: BTreeMap<proto::ReasonKind, u64> =
        proto::ReasonKind::ALL.iter().map(|k| (*k, 0)).collect();
    for pj in &p.pending {
        *reasons.entry(views::reason(&pj.reason).kind()).or_default() += 1;
    }
    r.register(
        "qm_jobs_pending",
        "Pending jobs by the reason they wait.",
        gauges(
            reasons
                .iter()
                .map(|(k, c)| (ReasonLabels { reason: k.as_str() }, *c)),
        ),
    );

    // Per team: guarantee and idle time charged.
    r.register(
        "qm_team_gpus_guaranteed",
        "GPUs guaranteed to each team, by model (`*`: any).",
        gauges(state.teams().flat_map(|t| {
            t.spec.quotas.iter().map(|(m, q)| {
                (
                    TeamModelLabels {
                        team: t.spec.name.clone(),
                        model: m.clone(),
                    },
                    q.guaranteed,
                )
            })
        })),
    );
    let idle_hours: Family<TeamLabels, Counter<f64, std::sync::atomic::AtomicU64>> =
        Family::default();
    for t in state.teams() {
        idle_hours
            .get_or_create(&TeamLabels {
                team: t.spec.name.clone(),
            })
            .inc_by(views::idle_gpu_hours(t));
    }
    // Idle jobs by team and by where they are on the team's idle ladder.
    let now = inner.now_s();
    let mut steps: BTreeMap<IdleStepLabels, u64> = BTreeMap::new();
    for j in state.live_jobs() {
        if let Some(i) = views::idle_view(state, j, now) {
            let step = if i.yielding {
                "yielding"
            } else if i.flagged {
                "flagged"
            } else {
                "idle"
            };
            let labels = IdleStepLabels {
                team: j.spec.team.clone(),
                step,
            };
            *steps.entry(labels).or_default() += 1;
        }
    }
    r.register(
        "qm_jobs_idle",
        "Running jobs whose GPUs are idle now, by team and step of its idle policy: idle (not yet for the idle window), flagged (warn), yielding (any job that needs the GPUs may preempt it; released later under release).",
        gauges(steps),
    );
    // Counters are named without `_total`: the encoder appends it to the samples.
    r.register(
        "qm_idle_gpu_hours",
        "GPU-hours allocated to each team while idle.",
        idle_hours,
    );

    let m = &inner.metrics;
    r.register(
        "qm_preemptions",
        "Running jobs stopped to give their GPUs back (reclaim), to make room for a higher-priority job of their team (priority) or because they sat idle.",
        m.preemptions.clone(),
    );
    r.register(
        "qm_job_wait_seconds",
        "Time from submission to start, observed at each start.",
        m.job_wait.clone(),
    );
    r.register(
        "qm_plan_duration_seconds",
        "Time one scheduling decision (decide) took.",
        m.plan_duration.clone(),
    );
    r.register(
        "qm_agent_heartbeats",
        "Heartbeats received from each node's agent.",
        m.heartbeats.clone(),
    );
    r.register(
        "qm_agent_refused",
        "Agent requests refused (403) because they spoke for a task not placed on the calling node (heartbeat, log) or took over another node's name (register).",
        m.agent_refusals.clone(),
    );
    r.register(
        "qm_agent_last_heartbeat_age_seconds",
        "Seconds since each connected node's agent last reported.",
        gauges_f64(inner.agents.iter().map(|(id, a)| {
            (
                NodeLabels {
                    node: inner.node_name(*id),
                },
                inner.mono_ms().saturating_sub(a.last_seen) as f64 / 1000.0,
            )
        })),
    );

    // Group commit: how many store writes carried how many changes.
    let f = inner.journal.flushes();
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    r.register(
        "qm_store_writes",
        "Transactions written to the store (each one sync, carrying every change queued while the previous one was written).",
        counter(f.writes),
    );
    r.register(
        "qm_store_changes",
        "Changes (submissions, events, exits, records) written to the store; divided by qm_store_writes_total, the mean group-commit batch.",
        counter(f.tickets),
    );
    let most: Gauge = Gauge::default();
    most.set(f.most as i64);
    r.register(
        "qm_store_write_changes_max",
        "The most changes one store write has carried since the server started.",
        most,
    );

    let last: Gauge = Gauge::default();
    last.set(inner.seq as i64);
    r.register(
        "qm_store_last_event",
        "The sequence number of the last event (queued for the store): its rate is events written per second.",
        last,
    );
    r.register(
        "qm_jobs_forgotten",
        "Ended jobs that left the server's memory by retention (qm server --retain-ended, --retain-ended-max); their records stay in the store.",
        counter(inner.metrics.forgotten),
    );
    let held: Gauge = Gauge::default();
    held.set(inner.state.ended_count() as i64);
    r.register(
        "qm_jobs_ended_held",
        "Ended jobs still held in memory.",
        held,
    );

    // Servers sharing a PostgreSQL database: who leads, by which term, and the standbys.
    if let Some(s) = servers {
        let lead = s.leader.as_ref().map(|l| l.holder.clone());
        r.register(
            "qm_leader_term",
            "The term of the database's lease: one more at every takeover.",
            gauges(s.leader.iter().map(|l| {
                (
                    HolderLabels {
                        holder: l.holder.clone(),
                    },
                    l.term,
                )
            })),
        );
        let standbys: Gauge = Gauge::default();
        standbys.set(
            s.seen
                .iter()
                .filter(|(h, _)| Some(h) != lead.as_ref())
                .count() as i64,
        );
        r.register(
            "qm_standbys",
            "Servers seen on the database in the last minute that do not lead.",
            standbys,
        );
    }

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)
        .expect("writing to a String cannot fail");
    out
}
