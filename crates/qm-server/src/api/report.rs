//! `GET /api/v1/report`: each team's use of the cluster over a window. GPU-hours come from the
//! usage samples the scheduling loop writes to the store (`ServerConfig::usage_every_s`), so
//! they survive restarts and failovers; waits and preemptions from the jobs that ended in the
//! window (those in memory and the store's records) and those running that started in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use qm_proto::{JobView, ReportView, TeamReport};
use serde::Deserialize;

use super::{Api, Client, Params};
use crate::auth::Principal;
use crate::views::job_view;
use crate::{Refusal, Server};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// The window, in seconds back from now (default 7 days; at most 10 years).
    window_s: Option<u64>,
    /// Also the usage samples themselves, for a chart over time.
    #[serde(default)]
    series: bool,
}

/// Moments of a series, at most.
const MAX_MOMENTS: usize = 1_000;

/// Ended jobs' records read for one report, at most.
const MAX_RECORDS: usize = 200_000;

/// What the jobs of one team add up to.
#[derive(Default)]
struct JobTally {
    jobs: u64,
    waits: Vec<u64>,
    suffered: u64,
    caused: u64,
}

impl JobTally {
    fn add(&mut self, j: &JobView) {
        self.jobs += 1;
        if let Some(s) = j.first_started_s {
            self.waits.push(s.saturating_sub(j.submit_s));
        }
        self.suffered += u64::from(j.preemptions);
        self.caused += u64::from(j.preempted_others);
    }
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[utoipa::path(get, path = "/api/v1/report", tag = "cluster", params(ReportQuery), responses((status = 200, description = "Each team's GPU-hours guaranteed, used, borrowed, lent and idle over the window, its jobs' waits (p50, p99) and the preemptions its jobs suffered and caused. With private jobs, a member sees only its own teams.", body = ReportView)))]
pub async fn report(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Params(q): Params<ReportQuery>,
) -> Api<ReportView> {
    let window = q.window_s.unwrap_or(7 * 86_400);
    if window == 0 || window > 10 * 365 * 86_400 {
        return Err(Refusal::BadRequest(format!(
            "window_s is {window}; give 1 to {} seconds",
            10 * 365 * 86_400
        )));
    }
    let (now, every, private, live, teams) = s
        .read(|inner| {
            let now = inner.now_s();
            let since = now.saturating_sub(window);
            // In memory: jobs that ended in the window, and those running that started in it.
            let live: Vec<JobView> = inner
                .state
                .jobs()
                .filter(|j| match j.state.ended_s() {
                    Some(end) => end >= since,
                    None => j.first_start_s.is_some_and(|s| s >= since),
                })
                .map(|j| job_view(inner, j))
                .collect();
            let teams: Vec<String> = inner.state.teams().map(|t| t.spec.name.clone()).collect();
            Ok((
                now,
                inner.config.usage_every_s.max(1),
                inner.config.private_jobs,
                live,
                teams,
            ))
        })
        .await?;
    let since = now.saturating_sub(window);
    let visible = |team: &str| !private || p.may_use_team(team);
    let (samples, records) = {
        let mut store = s.journal.store();
        let samples = store.usage(since, now)?;
        let records = store.ended_jobs(&qm_store::EndedQuery {
            teams: match (&p, private) {
                (Principal::Member { teams, .. }, true) => Some(teams.clone()),
                _ => None,
            },
            ended_since: Some(since),
            limit: MAX_RECORDS,
            ..Default::default()
        })?;
        (samples, records)
    };
    // Past the cap, the newest jobs are counted: say from when.
    let jobs_counted_since_s = (records.len() >= MAX_RECORDS)
        .then(|| records.iter().map(|r| r.end_s).min())
        .flatten();
    let mut tally: BTreeMap<String, JobTally> = BTreeMap::new();
    let held: std::collections::BTreeSet<u64> = live.iter().map(|j| j.id).collect();
    for j in &live {
        tally.entry(j.team.clone()).or_default().add(j);
    }
    for rec in records.iter().filter(|r| !held.contains(&r.id)) {
        let view: JobView = serde_json::from_str(&rec.view).map_err(|e| {
            Refusal::Internal(format!(
                "the store's record of job {} does not read: {e}",
                rec.id
            ))
        })?;
        tally.entry(view.team.clone()).or_default().add(&view);
    }
    // A sample stands for the time until the next one (or now), at most one interval: a
    // server that was down for a while has no samples, and that time counts for nothing.
    let times: Vec<u64> = {
        let set: std::collections::BTreeSet<u64> = samples.iter().map(|u| u.at_s).collect();
        set.into_iter().collect()
    };
    let weight = |at: u64| -> u64 {
        let i = times.partition_point(|&t| t <= at);
        let next = times.get(i).copied().unwrap_or(now);
        next.saturating_sub(at).min(every)
    };
    let hours = |milli_s: u64| milli_s as f64 / 1000.0 / 3600.0;
    let mut gpu: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    for u in &samples {
        let w = weight(u.at_s);
        let g = gpu.entry(u.team.as_str()).or_default();
        g[0] += u.guaranteed_milli * w;
        g[1] += u.used_milli * w;
        g[2] += u.borrowed_milli * w;
        g[3] += u.lent_milli * w;
        g[4] += u.idle_milli * w;
    }
    let gpu = gpu
        .into_iter()
        .map(|(t, g)| (t.to_string(), g))
        .collect::<BTreeMap<String, [u64; 5]>>();
    let mut names: std::collections::BTreeSet<String> = teams.into_iter().collect();
    names.extend(gpu.keys().cloned());
    names.extend(tally.keys().cloned());
    let out = names
        .into_iter()
        .filter(|t| visible(t))
        .map(|team| {
            let g = gpu.get(team.as_str()).copied().unwrap_or_default();
            let mut t = tally.remove(&team).unwrap_or_default();
            t.waits.sort_unstable();
            TeamReport {
                guaranteed_gpu_hours: hours(g[0]),
                used_gpu_hours: hours(g[1]),
                borrowed_gpu_hours: hours(g[2]),
                lent_gpu_hours: hours(g[3]),
                idle_gpu_hours: hours(g[4]),
                jobs: t.jobs,
                wait_p50_s: quantile(&t.waits, 0.5),
                wait_p99_s: quantile(&t.waits, 0.99),
                preemptions_suffered: t.suffered,
                preemptions_caused: t.caused,
                team,
            }
        })
        .collect();
    let series = if q.series {
        // Every k-th moment, whole (all teams at once), at most MAX_MOMENTS of them.
        let step = times.len().div_ceil(MAX_MOMENTS).max(1);
        let kept: std::collections::BTreeSet<u64> = times.iter().step_by(step).copied().collect();
        samples
            .into_iter()
            .filter(|u| kept.contains(&u.at_s) && visible(&u.team))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(ReportView {
        since_s: since,
        until_s: now,
        sample_every_s: every,
        samples: times.len() as u64,
        jobs_counted_since_s,
        teams: out,
        series,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(super::quantile(&v, 0.5), Some(50));
        assert_eq!(super::quantile(&v, 0.99), Some(99));
        assert_eq!(super::quantile(&[7], 0.99), Some(7));
        assert_eq!(super::quantile(&[], 0.5), None);
    }
}
