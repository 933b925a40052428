//! What the API, the dashboard and `/metrics` show of the state, built in one place: the
//! core's values turned into the wire's (`qm_proto`), the job, node and team views, and the
//! GPUs each team holds ([`usage`]), so the three never disagree.

use std::collections::BTreeMap;

use qm_core::{ClusterState, GpuAsk, Job, JobState, Node, Team};
use qm_proto as proto;
use qm_proto::{JobView, NodeView, TaskView, TeamView};

use crate::Inner;

/// Milli-GPUs held by running (or stopping) jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All GPUs the jobs hold.
    pub allocated_milli: u64,
    /// Held by jobs on capacity lent beyond their team's guarantee under the quotas in force
    /// now (`qm_core::admissions`: what a reclaim may take back).
    pub borrowed_milli: u64,
    /// Held by jobs whose GPUs are idle now (below the idle threshold).
    pub idle_milli: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.allocated_milli += other.allocated_milli;
        self.borrowed_milli += other.borrowed_milli;
        self.idle_milli += other.idle_milli;
    }

    /// What one job holds (nothing unless it has a run), `mode` being its admission now.
    fn of(job: &Job, mode: Option<qm_core::Admission>) -> Usage {
        let Some(run) = job.state.run() else {
            return Usage::default();
        };
        let milli = job.spec.milli_total();
        Usage {
            allocated_milli: milli,
            borrowed_milli: if mode.unwrap_or(run.admission) == qm_core::Admission::Borrowed {
                milli
            } else {
                0
            },
            idle_milli: if run.idle_since_s.is_some() { milli } else { 0 },
        }
    }
}

/// The GPUs held at `now`, by (team, GPU model of the job's nodes): the only place these
/// totals are computed.
pub fn usage(state: &ClusterState, now: qm_core::Secs) -> BTreeMap<(String, String), Usage> {
    let modes = qm_core::admissions(state, now);
    let mut out: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for j in state.live_jobs() {
        let Some(run) = j.state.run() else { continue };
        let model = run
            .placement
            .first()
            .and_then(|t| state.node(t.node))
            .map_or("unknown", |n| n.spec.gpu_model.as_str());
        out.entry((j.spec.team.clone(), model.to_string()))
            .or_default()
            .add(Usage::of(j, modes.get(&j.spec.id).copied()));
    }
    out
}

/// [`usage`] summed over GPU models.
pub fn usage_by_team(by_model: &BTreeMap<(String, String), Usage>) -> BTreeMap<&str, Usage> {
    let mut out: BTreeMap<&str, Usage> = BTreeMap::new();
    for ((team, _), u) in by_model {
        out.entry(team.as_str()).or_default().add(*u);
    }
    out
}

/// [`usage`] summed over everything.
pub fn usage_total(by_model: &BTreeMap<(String, String), Usage>) -> Usage {
    let mut out = Usage::default();
    for u in by_model.values() {
        out.add(*u);
    }
    out
}

/// Each team's usage sample at `at_s` (the state as of `now`): its guarantee, and what its
/// jobs and its sub-teams' hold, borrowed and idle; lent is the part of its guarantee it
/// leaves unused while other teams borrow (at most what they borrow).
pub fn usage_rows(
    state: &ClusterState,
    at_s: qm_core::Secs,
    now: qm_core::Secs,
) -> Vec<qm_store::UsageRow> {
    let by_model = usage(state, now);
    let own = usage_by_team(&by_model);
    let teams: Vec<&Team> = state.teams().collect();
    // Each team's use counts toward every ancestor's.
    let mut subtree: BTreeMap<&str, Usage> = BTreeMap::new();
    for t in &teams {
        let u = own.get(t.spec.name.as_str()).copied().unwrap_or_default();
        let mut name = Some(t.spec.name.as_str());
        let mut hops = 0;
        while let Some(n) = name {
            subtree.entry(n).or_default().add(u);
            name = state.team(n).and_then(|t| t.spec.parent.as_deref());
            hops += 1;
            if hops > 64 {
                break;
            }
        }
    }
    let total_borrowed = usage_total(&by_model).borrowed_milli;
    teams
        .iter()
        .map(|t| {
            let u = subtree
                .get(t.spec.name.as_str())
                .copied()
                .unwrap_or_default();
            let guaranteed: u64 = t
                .spec
                .quotas
                .values()
                .map(|q| u64::from(q.guaranteed))
                .sum::<u64>()
                * 1000;
            let others_borrow = total_borrowed.saturating_sub(u.borrowed_milli);
            qm_store::UsageRow {
                at_s,
                team: t.spec.name.clone(),
                guaranteed_milli: guaranteed,
                used_milli: u.allocated_milli,
                borrowed_milli: u.borrowed_milli,
                lent_milli: guaranteed
                    .saturating_sub(u.allocated_milli)
                    .min(others_borrow),
                idle_milli: u.idle_milli,
            }
        })
        .collect()
}

/// GPU-hours charged to a team while its GPUs sat idle.
pub fn idle_gpu_hours(t: &Team) -> f64 {
    t.idle_milli_s_total as f64 / 1000.0 / 3600.0
}

pub fn job_state(s: &JobState) -> proto::JobState {
    match s {
        JobState::Pending => proto::JobState::Pending,
        JobState::Running(_) => proto::JobState::Running,
        JobState::Stopping(..) => proto::JobState::Stopping,
        JobState::Succeeded { .. } => proto::JobState::Succeeded,
        JobState::Failed { .. } => proto::JobState::Failed,
        JobState::Cancelled { .. } => proto::JobState::Cancelled,
    }
}

pub fn node_state(s: qm_core::NodeState) -> proto::NodeState {
    match s {
        qm_core::NodeState::Ready => proto::NodeState::Ready,
        qm_core::NodeState::Draining => proto::NodeState::Draining,
        qm_core::NodeState::Down => proto::NodeState::Down,
    }
}

pub fn admission(a: qm_core::Admission) -> proto::Admission {
    match a {
        qm_core::Admission::Guaranteed => proto::Admission::Guaranteed,
        qm_core::Admission::Borrowed => proto::Admission::Borrowed,
    }
}

pub fn idle_policy(p: qm_core::IdlePolicy) -> proto::IdlePolicy {
    match p {
        qm_core::IdlePolicy::Warn => proto::IdlePolicy::Warn,
        qm_core::IdlePolicy::Yield => proto::IdlePolicy::Yield,
        qm_core::IdlePolicy::Release { .. } => proto::IdlePolicy::Release,
    }
}

/// The core's policy for an API policy; `release_after_s` (with `release`), else what the
/// team had, else [`qm_core::IdlePolicy::RELEASE_AFTER_S`].
pub fn core_idle_policy(
    p: proto::IdlePolicy,
    release_after_s: Option<u64>,
    had: qm_core::IdlePolicy,
) -> qm_core::IdlePolicy {
    match p {
        proto::IdlePolicy::Warn => qm_core::IdlePolicy::Warn,
        proto::IdlePolicy::Yield | proto::IdlePolicy::Reclaim => qm_core::IdlePolicy::Yield,
        proto::IdlePolicy::Release | proto::IdlePolicy::Requeue => {
            let after_s = release_after_s.unwrap_or(match had {
                qm_core::IdlePolicy::Release { after_s } => after_s,
                _ => qm_core::IdlePolicy::RELEASE_AFTER_S,
            });
            qm_core::IdlePolicy::Release { after_s }
        }
    }
}

/// A stop's cause in job histories and explanations.
pub fn stop_cause_text(c: qm_core::StopCause) -> &'static str {
    match c {
        qm_core::StopCause::Reclaim => "reclaim",
        qm_core::StopCause::Priority => "priority",
        qm_core::StopCause::Idle => "idle",
        qm_core::StopCause::TimeLimit => "timelimit",
        qm_core::StopCause::Cancel => "cancel",
        qm_core::StopCause::Lost => "lost",
    }
}

fn gpu_ask(g: GpuAsk) -> proto::GpuAsk {
    match g {
        GpuAsk::Whole(n) => proto::GpuAsk::Whole(n),
        GpuAsk::Milli(m) => proto::GpuAsk::Milli(m),
    }
}

pub fn after(a: qm_core::After) -> proto::After {
    match a {
        qm_core::After::Ok => proto::After::Ok,
        qm_core::After::Any => proto::After::Any,
        qm_core::After::Failed => proto::After::Failed,
    }
}

pub fn after_core(a: proto::After) -> qm_core::After {
    match a {
        proto::After::Ok => qm_core::After::Ok,
        proto::After::Any => qm_core::After::Any,
        proto::After::Failed => qm_core::After::Failed,
    }
}

pub fn reason(r: &qm_core::Reason) -> proto::Reason {
    use qm_core::Reason as R;
    match r {
        R::Dependency { on, when } => proto::Reason::Dependency {
            on: on.0,
            when: after(*when),
        },
        R::DependencyFailed { on, when } => proto::Reason::DependencyFailed {
            on: on.0,
            when: after(*when),
        },
        R::ArrayLimit { array, max_running } => proto::Reason::ArrayLimit {
            array: array.0,
            max_running: *max_running,
        },
        R::OverMax {
            team,
            model,
            used_milli,
            ask_milli,
            max_milli,
        } => proto::Reason::OverMax {
            team: team.clone(),
            model: model.clone(),
            used_milli: *used_milli,
            ask_milli: *ask_milli,
            max_milli: *max_milli,
        },
        R::OverCpuMax {
            team,
            used_milli,
            ask_milli,
            max_milli,
        } => proto::Reason::OverCpuMax {
            team: team.clone(),
            used_milli: *used_milli,
            ask_milli: *ask_milli,
            max_milli: *max_milli,
        },
        R::WaitingForReclaim {
            victims,
            ready_by_s,
            lower_priority,
        } => proto::Reason::WaitingForReclaim {
            victims: victims.iter().map(|v| v.0).collect(),
            ready_by_s: *ready_by_s,
            lower_priority: *lower_priority,
        },
        R::Reserved { start_s } => proto::Reason::Reserved { start_s: *start_s },
        R::BehindReservation { reserved, start_s } => proto::Reason::BehindReservation {
            reserved: reserved.0,
            start_s: *start_s,
        },
        R::NoPlacement {
            tasks,
            gpu,
            model,
            free_gpus,
            largest_free_block,
        } => proto::Reason::NoPlacement {
            tasks: *tasks,
            gpu: gpu_ask(*gpu),
            model: model.clone(),
            free_gpus: *free_gpus,
            largest_free_block: *largest_free_block,
        },
        R::BlockedByHead { head } => proto::Reason::BlockedByHead { head: head.0 },
        R::NoPartition { team } => proto::Reason::NoPartition { team: team.clone() },
        R::NotPreemptible { team } => proto::Reason::NotPreemptible { team: team.clone() },
        R::NeedsTimeLimit { team } => proto::Reason::NeedsTimeLimit { team: team.clone() },
    }
}

pub fn standing(s: &qm_core::TeamStanding) -> proto::Standing {
    proto::Standing {
        team: s.team.clone(),
        guaranteed_gpus: s.guaranteed_gpus,
        alloc_milli: s.alloc_milli,
        borrowed_milli: s.borrowed_milli,
        idle_milli: s.idle_milli,
        standing: s.standing,
        idle_gpu_hours: s.idle_gpu_hours,
    }
}

/// What a job asks, short: `2x8 GPU` or `1x250 mGPU`.
/// Why a job waits, for people: the core writes moments as `t=SECONDSs` (it has no clock and
/// no time zone); here they read as a UTC time of day and how far from now, or a date when
/// further than a day.
pub fn reason_text(r: &qm_core::Reason, now: qm_core::Secs) -> String {
    let text = r.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("t=") {
        let after = &rest[i + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<u64>() {
            Ok(at) if after[digits..].starts_with('s') => {
                out.push_str(&rest[..i]);
                out.push_str(&moment(at, now));
                rest = &after[digits + 1..];
            }
            _ => {
                out.push_str(&rest[..i + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `14:05 UTC (in 17 min)`, `14:05 UTC (3 min ago)`, `2026-12-03 14:05 UTC`.
fn moment(at: qm_core::Secs, now: qm_core::Secs) -> String {
    let stamp = proto::rfc3339(at);
    let (date, time) = (&stamp[..10], &stamp[11..16]);
    let d = at.abs_diff(now);
    if d > 86_400 {
        return format!("{date} {time} UTC");
    }
    let span = if d < 120 {
        format!("{d} s")
    } else if d < 7200 {
        format!("{} min", d / 60)
    } else {
        format!("{:.1} h", d as f64 / 3600.0)
    };
    if at >= now {
        format!("{time} UTC (in {span})")
    } else {
        format!("{time} UTC ({span} ago)")
    }
}

pub fn ask(spec: &qm_core::JobSpec) -> String {
    match spec.gpu {
        GpuAsk::Whole(k) => format!("{}x{} GPU", spec.tasks, k),
        GpuAsk::Milli(m) => format!("{}x{} mGPU", spec.tasks, m),
    }
}

/// What the job's team's idle policy does about its idle GPUs, and when; none while it is
/// busy or not running.
pub fn idle_view(state: &ClusterState, j: &Job, now: qm_core::Secs) -> Option<proto::IdleView> {
    let since = j.state.run()?.idle_since_s?;
    let policy = state
        .team(&j.spec.team)
        .map_or_else(qm_core::IdlePolicy::default, |t| t.spec.idle_policy);
    let window = state.config.idle_window_s;
    let flagged_at_s = since.saturating_add(window);
    // Only the default scheduling policy acts on idle jobs (the baselines do not).
    let acts = state.config.policy == qm_core::PolicyKind::Default;
    Some(proto::IdleView {
        job: j.spec.id.0,
        since_s: since,
        policy: idle_policy(policy),
        flagged_at_s,
        flagged: acts && now >= flagged_at_s,
        yielding: acts && policy.yields(since, now, window),
        release_at_s: policy.release_at(since, window).filter(|_| acts),
    })
}

pub fn job_view(inner: &Inner, j: &Job) -> JobView {
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
    let ended_s = j.state.ended_s();
    let current_s = run.map_or(0, |r| inner.now_s().saturating_sub(r.started_s));
    let (gpus, gpu_milli) = match j.spec.gpu {
        GpuAsk::Whole(0) => (0, 0),
        GpuAsk::Whole(k) => (k, 1000),
        GpuAsk::Milli(m) => (0, m),
    };
    JobView {
        id: j.spec.id.0,
        name: j.spec.name.clone(),
        team: j.spec.team.clone(),
        user: j.spec.user.clone(),
        state: job_state(&j.state),
        tasks: j.spec.tasks,
        gpus,
        gpu_milli,
        cpu_milli: j.spec.cpu_milli,
        mem_mib: j.spec.mem_mib,
        gpu_model: j.spec.gpu_model.clone(),
        priority: j.spec.priority,
        time_limit_s: j.spec.time_limit_s,
        checkpoint_every_s: j.spec.checkpoint_every_s,
        preemptible: j.spec.preemptible,
        submit_s: j.spec.submit_s,
        started_s: run.map(|r| r.started_s),
        ended_s,
        first_started_s: j.first_start_s,
        ran_s: j.ran_s + current_s,
        gpu_s: (j.gpu_milli_s + current_s * j.spec.milli_total()) / 1000,
        idle_gpu_s: j.idle_milli_s / 1000,
        preempted_others: j.preempted_others,
        exit_codes: codes
            .map(|c| c.values().copied().collect())
            .unwrap_or_default(),
        submitted_at: proto::rfc3339(j.spec.submit_s),
        started_at: run.map(|r| proto::rfc3339(r.started_s)),
        ended_at: ended_s.map(proto::rfc3339),
        attempt,
        preemptions: j.preemptions,
        admission: run.map(|r| admission(r.admission)),
        placement,
        util_pct: run.and_then(|r| r.last_util_pct),
        idle_since_s: run.and_then(|r| r.idle_since_s),
        idle: idle_view(&inner.state, j, inner.now_s()),
        command: inner
            .payloads
            .get(&j.spec.id.0)
            .map(|p| p.command.clone())
            .unwrap_or_default(),
        script: inner
            .payloads
            .get(&j.spec.id.0)
            .and_then(|p| p.script.clone()),
        array: j.spec.array.map(|a| proto::ArrayView {
            array: a.array.0,
            index: a.index,
            max_running: a.max_running,
        }),
        after: j
            .spec
            .depends_on
            .iter()
            .map(|d| proto::DependencyView {
                job: d.job.0,
                when: after(d.when),
                array: false,
            })
            .collect(),
        events: inner
            .history
            .get(&j.spec.id.0)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| proto::JobEvent {
                at: proto::rfc3339(e.at_s),
                ..e
            })
            .collect(),
    }
}

pub fn node_view(inner: &Inner, n: &Node) -> NodeView {
    let now = inner.now_s();
    let mono = inner.mono_ms();
    NodeView {
        name: n.spec.name.clone(),
        state: node_state(n.state),
        gpus: n.spec.gpus,
        gpu_model: n.spec.gpu_model.clone(),
        gpus_used_milli: n.gpu_used_milli.clone(),
        cpu_milli: n.spec.cpu_milli,
        mem_mib: n.spec.mem_mib,
        labels: n.spec.labels.clone(),
        last_seen_s: inner
            .agents
            .get(&n.spec.id.0)
            .map(|a| now.saturating_sub(mono.saturating_sub(a.last_seen) / 1000)),
    }
}

/// Every team with the GPUs it holds ([`usage`] summed over models).
pub fn teams_with_usage<'s>(
    state: &'s ClusterState,
    by_model: &BTreeMap<(String, String), Usage>,
) -> Vec<(&'s Team, Usage)> {
    let by_team = usage_by_team(by_model);
    state
        .teams()
        .map(|t| {
            let u = by_team.get(t.spec.name.as_str()).copied();
            (t, u.unwrap_or_default())
        })
        .collect()
}

/// Every team, with the GPUs it holds now.
pub fn team_views(state: &ClusterState, now: qm_core::Secs) -> Vec<TeamView> {
    let homes = qm_core::homes(state);
    let home = |team: &str| -> Vec<String> {
        homes.teams.get(team).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .filter_map(|&n| state.node(n).map(|n| n.spec.name.clone()))
                .collect()
        })
    };
    teams_with_usage(state, &usage(state, now))
        .into_iter()
        .map(|(t, u)| TeamView {
            home: home(&t.spec.name),
            priorities: t.spec.priorities,
            max_cpu_milli: t.spec.max_cpu_milli,
            partitions: t.spec.partitions.clone(),
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
            idle_policy: idle_policy(t.spec.idle_policy),
            idle_release_after_s: match t.spec.idle_policy {
                qm_core::IdlePolicy::Release { after_s } => Some(after_s),
                _ => None,
            },
            used_milli: u.allocated_milli,
            borrowed_milli: u.borrowed_milli,
            idle_milli: u.idle_milli,
            idle_gpu_hours: idle_gpu_hours(t),
            idle_gpu_hours_7d: 0.0,
            idle_jobs: state
                .live_jobs()
                .filter(|j| j.spec.team == t.spec.name)
                .filter_map(|j| idle_view(state, j, now))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use qm_core::{JobId, StopCause};

    use super::*;

    /// Moments in reasons read as times of day and spans from now, never raw seconds.
    #[test]
    fn reasons_say_when_in_words() {
        let now = 1_796_083_200; // 2026-12-01T00:00:00Z
        let r = qm_core::Reason::Reserved {
            start_s: now + 17 * 60,
        };
        let text = reason_text(&r, now);
        assert_eq!(
            text,
            "GPUs reserved; starts by 00:17 UTC (in 17 min) if running jobs keep their time limits and no job that goes before it takes them first"
        );
        let r = qm_core::Reason::BehindReservation {
            reserved: JobId(7),
            start_s: now + 3 * 86_400,
        };
        let text = reason_text(&r, now);
        assert!(text.contains("from 2026-12-04 00:00 UTC;"), "{text}");
        assert!(!text.contains("t="), "{text}");
        let r = qm_core::Reason::Reserved { start_s: now - 90 };
        assert!(reason_text(&r, now).contains("23:58 UTC (90 s ago)"));
    }

    /// The wire's reasons and states are the core's, as the API sent them before they were
    /// typed: field for field, name for name.
    #[test]
    fn wire_values_match_the_cores_serialization() {
        use qm_core::Reason as R;
        let reasons = [
            R::Dependency {
                on: JobId(1),
                when: qm_core::After::Any,
            },
            R::DependencyFailed {
                on: JobId(2),
                when: qm_core::After::Ok,
            },
            R::ArrayLimit {
                array: JobId(3),
                max_running: 4,
            },
            R::OverMax {
                team: "a".into(),
                model: "*".into(),
                used_milli: 1,
                ask_milli: 2,
                max_milli: 3,
            },
            R::OverCpuMax {
                team: "a".into(),
                used_milli: 1,
                ask_milli: 2,
                max_milli: 3,
            },
            R::WaitingForReclaim {
                victims: vec![JobId(3)],
                ready_by_s: 4,
                lower_priority: false,
            },
            R::WaitingForReclaim {
                victims: vec![JobId(3)],
                ready_by_s: 4,
                lower_priority: true,
            },
            R::Reserved { start_s: 5 },
            R::BehindReservation {
                reserved: JobId(6),
                start_s: 7,
            },
            R::NoPlacement {
                tasks: 2,
                gpu: GpuAsk::Milli(250),
                model: Some("H100".into()),
                free_gpus: 1,
                largest_free_block: 1,
            },
            R::BlockedByHead { head: JobId(8) },
            R::NoPartition { team: "b".into() },
            R::NotPreemptible { team: "b".into() },
            R::NeedsTimeLimit { team: "b".into() },
        ];
        // Every kind, and both kinds of reclaim.
        assert_eq!(reasons.len(), proto::ReasonKind::ALL.len() + 1);
        for r in &reasons {
            assert_eq!(
                serde_json::to_value(reason(r)).unwrap(),
                serde_json::to_value(r).unwrap()
            );
        }
        for a in [qm_core::Admission::Guaranteed, qm_core::Admission::Borrowed] {
            assert_eq!(
                serde_json::to_value(admission(a)).unwrap(),
                serde_json::to_value(a).unwrap()
            );
        }
        for s in [
            qm_core::NodeState::Ready,
            qm_core::NodeState::Draining,
            qm_core::NodeState::Down,
        ] {
            assert_eq!(
                serde_json::to_value(node_state(s)).unwrap(),
                serde_json::to_value(s).unwrap()
            );
        }
        for s in [
            JobState::Pending,
            JobState::Succeeded { at_s: 0 },
            JobState::Failed {
                at_s: 0,
                timed_out: false,
            },
            JobState::Cancelled { at_s: 0 },
        ] {
            assert_eq!(job_state(&s).as_str(), s.name());
        }
        for p in proto::IdlePolicy::ALL {
            let back = idle_policy(core_idle_policy(*p, None, qm_core::IdlePolicy::Warn));
            let expected = match p {
                proto::IdlePolicy::Reclaim => proto::IdlePolicy::Yield,
                proto::IdlePolicy::Requeue => proto::IdlePolicy::Release,
                other => *other,
            };
            assert_eq!(back, expected, "the older names read as the ladder's steps");
        }
        for c in [
            StopCause::Reclaim,
            StopCause::Priority,
            StopCause::Idle,
            StopCause::TimeLimit,
            StopCause::Cancel,
            StopCause::Lost,
        ] {
            assert_eq!(
                stop_cause_text(c),
                format!("{c:?}").to_lowercase(),
                "the text histories have always shown"
            );
        }
    }
}
