//! Jobs: submit, list, show, why, cancel, logs.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use qm_core::{plan, Event, GpuAsk, JobId, JobSpec, JobState};
use qm_proto as proto;
use qm_proto::{JobView, LogView, SubmitRequest, SubmitResponse, WhyView};
use qm_store::JobPayload;
use serde::Deserialize;

use super::{Api, Body, Client, Params, Seg};
use crate::auth::Principal;
use crate::views::{self, job_view};
use crate::{Inner, Refusal, Server};

fn submitter(p: &Principal) -> String {
    match p {
        Principal::Admin => "admin".into(),
        Principal::Member { name, .. } => name.clone(),
        _ => String::new(),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitRequest, responses((status = 200, description = "Accepted: durable in the store before this answer", body = SubmitResponse, links(
    ("show" = (operation_id = "show", parameters(("id" = "$response.body#/job")))),
    ("why" = (operation_id = "why", parameters(("id" = "$response.body#/job")))),
    ("cancel" = (operation_id = "cancel", parameters(("id" = "$response.body#/job")))),
    ("logs" = (operation_id = "job_logs", parameters(("id" = "$response.body#/job"))))
))))]
pub async fn submit(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Body(req): Body<SubmitRequest>,
) -> Api<SubmitResponse> {
    let ids = s.write(|inner| inner.submit(&p, &req)).await?;
    Ok(Json(SubmitResponse {
        job: ids[0].0,
        jobs: if req.array.is_some() {
            ids.iter().map(|j| j.0).collect()
        } else {
            Vec::new()
        },
    }))
}

impl Inner {
    /// Accepts a submission from `p`: every check first (team, fields and their limits,
    /// priority range, pending limits), then durable before it returns the job's id (an
    /// array's jobs' ids, in index order, all accepted or none).
    pub(crate) fn submit(
        &mut self,
        p: &Principal,
        req: &SubmitRequest,
    ) -> Result<Vec<JobId>, Refusal> {
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
        crate::limits::submission(req).map_err(Refusal::BadRequest)?;
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
        let time_limit_s = positive_s("time_limit_s", req.time_limit_s, "for no limit")?;
        let checkpoint_every_s = positive_s(
            "checkpoint_every_s",
            req.checkpoint_every_s,
            "for a job that does not checkpoint",
        )?;
        // Tasks run as the submitter: a member's token name; only an admin may name a user.
        let run_as = match p {
            Principal::Member { name, .. } => Some(name.clone()),
            _ => req.user.clone(),
        };
        let priority = req.priority.unwrap_or(0);
        let user = run_as.clone().unwrap_or_else(|| submitter(p));
        if let Principal::Member { .. } = p {
            if let Some(team) = self.state.team(&req.team) {
                let [lo, hi] = team.spec.priorities;
                if priority < lo || priority > hi {
                    return Err(Refusal::Forbidden(format!(
                        "priority {priority} is outside team {}'s range {lo}..{hi}, which an admin sets (qm admin team set {} --priorities LOW..HIGH)",
                        req.team, req.team
                    )));
                }
            }
        }
        let indices = match &req.array {
            None => Vec::new(),
            Some(a) => crate::limits::array(a).map_err(Refusal::BadRequest)?,
        };
        let count = indices.len().max(1);
        self.pending_room(&req.team, &user, count)?;
        let first = JobId(self.next_job);
        let depends_on = self.dependencies(p, &req.after)?;
        let spec = JobSpec {
            id: first,
            name: req.name.clone(),
            team: req.team.clone(),
            user,
            priority,
            tasks: req.tasks.unwrap_or(1),
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
            checkpoint_every_s,
            depends_on,
            array: None,
            submit_s: self.now_s(),
        };
        let payload = JobPayload {
            command: req.command.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            user: run_as,
            fence: req.fence,
            script: req.script.clone(),
        };
        let ids: Vec<JobId> = (0..count as u64).map(|i| JobId(first.0 + i)).collect();
        let events = if indices.is_empty() {
            vec![Event::Submit(spec)]
        } else {
            let max_running = req.array.as_ref().and_then(|a| a.max_running);
            ids.iter()
                .zip(&indices)
                .map(|(&id, &index)| {
                    Event::Submit(JobSpec {
                        id,
                        array: Some(qm_core::ArrayMember {
                            array: first,
                            index,
                            max_running,
                        }),
                        ..spec.clone()
                    })
                })
                .collect()
        };
        // Each job of an array keeps its own copy of what it runs: bound the whole.
        let bytes = payload.command.iter().map(String::len).sum::<usize>()
            + payload
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + payload.script.as_ref().map_or(0, String::len);
        if count > 1 && bytes.saturating_mul(count) > crate::limits::MAX_ARRAY_BYTES {
            return Err(Refusal::BadRequest(format!(
                "an array of {count} jobs, each with {bytes} bytes of command, environment and script, is more than {} MiB in all; submit fewer jobs at once, or keep the script and long arguments in a file the jobs read",
                crate::limits::MAX_ARRAY_BYTES >> 20
            )));
        }
        let payloads: Vec<(u64, JobPayload)> =
            ids.iter().map(|id| (id.0, payload.clone())).collect();
        self.commit(events, &payloads)?;
        self.next_job += count as u64;
        Ok(ids)
    }
}

/// A request's optional number of seconds, which must be positive when given; `absent` says
/// what leaving it out means.
fn positive_s(field: &str, value: Option<i64>, absent: &str) -> Result<Option<u64>, Refusal> {
    match value {
        Some(t) if t <= 0 => Err(Refusal::BadRequest(format!(
            "{field} is {t}; give a positive number of seconds or leave it out {absent}"
        ))),
        Some(t) => Ok(Some(t as u64)),
        None => Ok(None),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only this team's jobs.
    team: Option<String>,
    /// Only jobs in this state.
    state: Option<proto::JobState>,
    /// Only this user's jobs.
    user: Option<String>,
    /// Only the jobs of this array (its id: its first job's).
    array: Option<u64>,
    /// Only jobs of this name.
    name: Option<String>,
    /// At most this many, the newest (default 1000, at most 10000).
    limit: Option<usize>,
    /// Only jobs with a lower id: the last id of the previous page, to page back in time.
    before: Option<u64>,
    /// Only ended jobs, that ended at or after this (Unix seconds; 0 for every ended job).
    ended_since: Option<u64>,
    /// Only ended jobs, that ended at or before this (Unix seconds).
    ended_until: Option<u64>,
    /// Also the ended jobs the server no longer holds in memory (read from the store's
    /// records; see `qm server --retain-ended`).
    #[serde(default)]
    all: bool,
}

/// The most jobs one list answers with.
const MAX_LIST: usize = 10_000;

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobFilter), responses((status = 200, description = "The jobs that match and that the caller may see, newest first: those the server holds (live, and recently ended), and with `all` the older ended ones from the store. Page with `before` set to the last id of a page.", body = Vec<JobView>)))]
pub async fn list(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Params(f): Params<JobFilter>,
) -> Api<Vec<JobView>> {
    let limit = f.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_LIST {
        return Err(Refusal::BadRequest(format!(
            "limit is {limit}; give 1 to {MAX_LIST}, and page with before=ID for more"
        )));
    }
    let before = f.before.unwrap_or(u64::MAX);
    let (mut out, private) = s
        .read(|inner| {
            let private = inner.config.private_jobs;
            // The newest `limit` that match, and only they are turned into views (a view
            // clones the job's history and command).
            let mut matching: Vec<&qm_core::Job> = inner
                .state
                .jobs()
                .filter(|j| j.spec.id.0 < before)
                .filter(|j| f.team.as_ref().is_none_or(|t| &j.spec.team == t))
                .filter(|j| f.user.as_ref().is_none_or(|u| &j.spec.user == u))
                .filter(|j| f.state.is_none_or(|st| views::job_state(&j.state) == st))
                .filter(|j| {
                    f.array
                        .is_none_or(|a| j.spec.array.is_some_and(|m| m.array.0 == a))
                })
                .filter(|j| f.name.as_ref().is_none_or(|n| &j.spec.name == n))
                .filter(|j| !private || p.may_use_team(&j.spec.team))
                .filter(|j| {
                    let ended_filter = f.ended_since.is_some() || f.ended_until.is_some();
                    !ended_filter
                        || j.state.ended_s().is_some_and(|e| {
                            f.ended_since.is_none_or(|s| e >= s)
                                && f.ended_until.is_none_or(|u| e <= u)
                        })
                })
                .collect();
            if matching.len() > limit {
                matching.select_nth_unstable_by_key(limit, |j| std::cmp::Reverse(j.spec.id));
                matching.truncate(limit);
            }
            let out: Vec<JobView> = matching
                .into_iter()
                .map(|j| seen_by(inner, j, &p))
                .collect();
            Ok((out, private))
        })
        .await?;
    if f.all {
        // Every change the memory part saw is durable now, the records of jobs it no longer
        // held among them; a job forgotten since may be in both, and is shown once.
        let teams = match (&p, private) {
            (Principal::Member { teams, .. }, true) => Some(teams.clone()),
            _ => None,
        };
        // The store is queried by team, user, state and end; array and name are checked on
        // the records it returns, page after page until `limit` match (an array's jobs have
        // ids from the array's up: no page below it is read).
        let checked_here = f.array.is_some() || f.name.is_some();
        let page = if checked_here { limit.max(1000) } else { limit };
        let held: std::collections::BTreeSet<u64> = out.iter().map(|j| j.id).collect();
        let mut cursor = f.before;
        let mut found = 0;
        loop {
            let query = qm_store::EndedQuery {
                teams: teams.clone(),
                team: f.team.clone(),
                user: f.user.clone(),
                state: f.state.map(|st| st.as_str().to_string()),
                before: cursor,
                ended_since: f.ended_since,
                ended_until: f.ended_until,
                limit: page,
            };
            let records = s.journal.store().ended_jobs(&query)?;
            let read = records.len();
            cursor = records.last().map(|r| r.id);
            for rec in records {
                if held.contains(&rec.id) {
                    continue;
                }
                let view = record_view(&rec, &p)?;
                let array_ok = f
                    .array
                    .is_none_or(|a| view.array.is_some_and(|m| m.array == a));
                if array_ok && f.name.as_ref().is_none_or(|n| &view.name == n) {
                    out.push(view);
                    found += 1;
                }
            }
            let below_array = f.array.zip(cursor).is_some_and(|(a, c)| c <= a);
            if !checked_here || read < page || found >= limit || below_array {
                break;
            }
        }
    }
    out.sort_by_key(|j| std::cmp::Reverse(j.id));
    out.truncate(limit);
    Ok(Json(out))
}

/// An ended job's record as `p` may see it (without its command outside `p`'s teams).
fn record_view(rec: &qm_store::EndedJob, p: &Principal) -> Result<JobView, Refusal> {
    let mut view: JobView = serde_json::from_str(&rec.view).map_err(|e| {
        Refusal::Internal(format!(
            "the store's record of job {} does not read: {e}",
            rec.id
        ))
    })?;
    if !p.may_use_team(&rec.team) {
        view.command.clear();
        view.script = None;
    }
    Ok(view)
}

/// A job the server no longer holds, from its record in the store, if `p` may have `access`
/// to it; `NotFound` where there is no such job (or, with private jobs, not one `p` may see).
fn ended_job(s: &Server, id: u64, p: &Principal, access: Access) -> Result<JobView, Refusal> {
    let rec = s
        .journal
        .store()
        .ended_job(id)?
        .ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
    if !p.may_use_team(&rec.team) {
        if s.lock().config.private_jobs {
            return Err(Refusal::NotFound(format!("no job {id}")));
        }
        if access == Access::Own {
            return Err(Refusal::Forbidden(format!(
                "job {id} belongs to team {:?}, which your token does not cover",
                rec.team
            )));
        }
    }
    record_view(&rec, p)
}

impl Inner {
    /// A submission's dependencies for the core. A job the server no longer holds (ended
    /// and forgotten into the store's records) is checked against its record here: one that
    /// ended as asked is met already and dropped, any other can never be met.
    fn dependencies(
        &self,
        p: &Principal,
        after: &[proto::DependencyView],
    ) -> Result<Vec<qm_core::Dependency>, Refusal> {
        let mut out = Vec::new();
        let mut members = Vec::new();
        for d in after.iter().filter(|d| d.array) {
            members.extend(self.array_members(p, d)?);
        }
        for d in after.iter().filter(|d| !d.array).chain(&members) {
            let job = JobId(d.job);
            let when = views::after_core(d.when);
            // With private jobs, another team's job is not there for this caller.
            let hidden = |team: &str| self.config.private_jobs && !p.may_use_team(team);
            if self.state.job(job).is_some_and(|j| hidden(&j.spec.team)) {
                return Err(Refusal::BadRequest(format!(
                    "the job depends on job {}, which does not exist",
                    d.job
                )));
            }
            if self.state.job(job).is_some() || d.job >= self.next_job {
                out.push(qm_core::Dependency { job, when });
                continue;
            }
            // Its record is written with the event that forgot it, perhaps still queued:
            // make it durable before looking (rare: only for jobs no longer in memory).
            self.journal.flush_to(self.journal.queued());
            match self.journal.store().ended_job(d.job)? {
                None => {
                    return Err(Refusal::BadRequest(format!(
                        "the job depends on job {}, which does not exist",
                        d.job
                    )))
                }
                Some(rec) if hidden(&rec.team) => {
                    return Err(Refusal::BadRequest(format!(
                        "the job depends on job {}, which does not exist",
                        d.job
                    )))
                }
                Some(rec) if when.met_by(rec.state == "succeeded") => {}
                Some(rec) => {
                    return Err(Refusal::BadRequest(format!(
                        "the job can never run: it waits for job {} to {}, and it ended {}",
                        d.job,
                        match d.when {
                            proto::After::Ok => "succeed",
                            proto::After::Any => "end",
                            proto::After::Failed => "fail",
                        },
                        rec.state
                    )))
                }
            }
        }
        Ok(out)
    }

    /// A dependency on a whole array as one on each of its jobs, those in memory and those
    /// forgotten into the store (an array's jobs have consecutive ids from the array's).
    fn array_members(
        &self,
        p: &Principal,
        d: &proto::DependencyView,
    ) -> Result<Vec<proto::DependencyView>, Refusal> {
        if d.when == proto::After::Failed {
            return Err(Refusal::BadRequest(format!(
                "a dependency on a whole array is ok (all its jobs succeed) or any (all end), not failed; to wait for one of its jobs to fail, name it ({}_INDEX)",
                d.job
            )));
        }
        let hidden = |team: &str| self.config.private_jobs && !p.may_use_team(team);
        let of_array = |a: Option<qm_core::ArrayMember>| a.is_some_and(|a| a.array.0 == d.job);
        let mut ids: std::collections::BTreeSet<u64> = self
            .state
            .jobs()
            .filter(|j| of_array(j.spec.array) && !hidden(&j.spec.team))
            .map(|j| j.spec.id.0)
            .collect();
        self.journal.flush_to(self.journal.queued());
        let query = qm_store::EndedQuery {
            teams: None,
            team: None,
            user: None,
            state: None,
            before: Some(d.job.saturating_add(crate::limits::MAX_ARRAY as u64)),
            ended_since: None,
            ended_until: None,
            limit: crate::limits::MAX_ARRAY,
        };
        for rec in self.journal.store().ended_jobs(&query)? {
            if rec.id < d.job || hidden(&rec.team) || ids.contains(&rec.id) {
                continue;
            }
            let view: JobView = serde_json::from_str(&rec.view)
                .map_err(|e| Refusal::Internal(format!("job {}'s record: {e}", rec.id)))?;
            if view.array.is_some_and(|a| a.array == d.job) {
                ids.insert(rec.id);
            }
        }
        if ids.is_empty() {
            return Err(Refusal::BadRequest(format!(
                "the job depends on array {}, which does not exist (a single job is named without --after's array form)",
                d.job
            )));
        }
        Ok(ids
            .into_iter()
            .map(|job| proto::DependencyView {
                job,
                when: d.when,
                array: false,
            })
            .collect())
    }

    /// Refuses a submission of `more` jobs that would take a user or a team past its limit
    /// of pending jobs.
    fn pending_room(&self, team: &str, user: &str, more: usize) -> Result<(), Refusal> {
        // Counts the core keeps as jobs enter, start, stop and end: no scan per submission.
        let (by_user, by_team) = self.state.pending_counts(team, user);
        let (max_user, max_team) = (
            self.config.max_pending_per_user,
            self.config.max_pending_per_team,
        );
        let these = if more > 1 {
            format!(" and this array adds {more}")
        } else {
            String::new()
        };
        if by_user + more > max_user {
            return Err(Refusal::TooMany(format!(
                "user {user} has {by_user} jobs pending{these}, and one user may have at most {max_user} (qm server --max-pending-per-user); submit more as these start"
            )));
        }
        if by_team + more > max_team {
            return Err(Refusal::TooMany(format!(
                "team {team} has {by_team} jobs pending{these}, and one team may have at most {max_team} (qm server --max-pending-per-team); submit more as these start"
            )));
        }
        Ok(())
    }
}

/// A job as `p` may see it: in full if `p` may use its team; otherwise without its command
/// (members see what other teams run, not how).
fn seen_by(inner: &Inner, j: &qm_core::Job, p: &Principal) -> JobView {
    let mut view = job_view(inner, j);
    if !p.may_use_team(&j.spec.team) {
        view.command.clear();
        view.script = None;
    }
    view
}

/// What a caller wants of a job: to look at it (every member, unless jobs are private), or
/// to act on it or read its output (its own teams' only).
#[derive(PartialEq)]
enum Access {
    Look,
    Own,
}

fn find_job<'a>(
    inner: &'a Inner,
    id: u64,
    p: &Principal,
    access: Access,
) -> Result<&'a qm_core::Job, Refusal> {
    let job = inner
        .state
        .job(JobId(id))
        .ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
    if !p.may_use_team(&job.spec.team) {
        // Where jobs are private, another team's job is not there at all.
        if inner.config.private_jobs {
            return Err(Refusal::NotFound(format!("no job {id}")));
        }
        if access == Access::Own {
            return Err(Refusal::Forbidden(format!(
                "job {id} belongs to team {:?}, which your token does not cover",
                job.spec.team
            )));
        }
    }
    Ok(job)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = u64, Path, description = "The job's id")), responses((status = 200, description = "The job: state, placement, events", body = JobView)))]
pub async fn show(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Seg(id): Seg<u64>,
) -> Api<JobView> {
    let held = s
        .read(|inner| match inner.state.job(JobId(id)) {
            Some(_) => find_job(inner, id, &p, Access::Look).map(|j| Some(seen_by(inner, j, &p))),
            None => Ok(None),
        })
        .await?;
    match held {
        Some(view) => Ok(Json(view)),
        None => Ok(Json(ended_job(&s, id, &p, Access::Look)?)),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/why", tag = "jobs", params(("id" = u64, Path, description = "The job's id")), responses((status = 200, description = "Why it waits (a structured reason) and its estimated start", body = WhyView)))]
pub async fn why(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Seg(id): Seg<u64>,
) -> Api<WhyView> {
    let held = s
        .read(|inner| match inner.state.job(JobId(id)) {
            Some(_) => why_of(inner, id, &p).map(Some),
            None => Ok(None),
        })
        .await?;
    match held {
        Some(why) => Ok(why),
        None => {
            let view = ended_job(&s, id, &p, Access::Look)?;
            Ok(Json(WhyView {
                job: id,
                state: view.state,
                reason: None,
                message: format!("{} (it has ended)", view.state),
                eta_s: None,
            }))
        }
    }
}

/// Why job `id` waits, as `p` may see it.
fn why_of(inner: &Inner, id: u64, p: &Principal) -> Api<WhyView> {
    let job = find_job(inner, id, p, Access::Look)?;
    let state = views::job_state(&job.state);
    if job.state != JobState::Pending {
        let message = match &job.state {
            JobState::Running(r) => format!(
                "running since {} ({})",
                r.started_s,
                views::admission(r.admission)
            ),
            JobState::Stopping(_, st) => match st.beneficiary {
                Some(b) => format!(
                    "stopping ({}): its GPUs go to job {}, and it goes back to the queue",
                    views::stop_cause_text(st.cause),
                    b.0
                ),
                None => format!("stopping ({})", views::stop_cause_text(st.cause)),
            },
            _ => format!("{state} (it has ended)"),
        };
        return Ok(Json(WhyView {
            job: id,
            state,
            reason: None,
            message,
            eta_s: None,
        }));
    }
    let p = plan(&inner.state, inner.now_s());
    match p.pending_job(JobId(id)) {
        Some(pj) => Ok(Json(WhyView {
            job: id,
            state,
            reason: Some(views::reason(&pj.reason)),
            message: views::reason_text(&pj.reason, inner.now_s()),
            eta_s: pj.eta_s,
        })),
        None => Ok(Json(WhyView {
            job: id,
            state,
            reason: None,
            message: "starting now".into(),
            eta_s: Some(inner.now_s()),
        })),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = u64, Path, description = "The job's id")), responses((status = 200, description = "The job, cancelled (stopping while its tasks exit)", body = JobView)))]
pub async fn cancel(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Seg(id): Seg<u64>,
) -> Api<JobView> {
    let view = s
        .write(|inner| {
            if inner.state.job(JobId(id)).is_none() && id < inner.next_job {
                // Not held: ended long ago (if the store has it; the check is outside the lock).
                return Ok(None);
            }
            let job = find_job(inner, id, &p, Access::Own)?;
            if job.state.is_terminal() {
                return Err(Refusal::Conflict(format!(
                    "job {id} has already ended ({})",
                    job.state.name()
                )));
            }
            let at_s = inner.now_s();
            inner.commit(
                vec![Event::Cancel {
                    job: JobId(id),
                    at_s,
                    unmet: None,
                }],
                &[],
            )?;
            // A running job is now stopping: its agents are told.
            inner.kill_run(JobId(id));
            let job = inner.state.job(JobId(id)).expect("known");
            Ok(Some(job_view(inner, job)))
        })
        .await?;
    match view {
        Some(view) => Ok(Json(view)),
        None => {
            let view = ended_job(&s, id, &p, Access::Own)?;
            Err(Refusal::Conflict(format!(
                "job {id} has already ended ({})",
                view.state
            )))
        }
    }
}

/// The most jobs one `POST /api/v1/jobs/cancel` names.
const MAX_CANCEL: usize = 10_000;

#[utoipa::path(post, path = "/api/v1/jobs/cancel", tag = "jobs", request_body = proto::CancelRequest, responses((status = 200, description = "Each job cancelled (in one commit), already ended, or refused with why: one that is unknown or of a team the token does not cover changes nothing", body = proto::CancelReport)))]
pub async fn cancel_many(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Body(req): Body<proto::CancelRequest>,
) -> Api<proto::CancelReport> {
    if req.jobs.is_empty() || req.jobs.len() > MAX_CANCEL {
        return Err(Refusal::BadRequest(format!(
            "{} jobs named; give 1 to {MAX_CANCEL} (send more in several requests)",
            req.jobs.len()
        )));
    }
    let mut ids = req.jobs.clone();
    ids.sort_unstable();
    ids.dedup();
    let (mut report, gone) = s
        .write(|inner| {
            let mut report = proto::CancelReport::default();
            let mut gone = Vec::new();
            let mut events = Vec::new();
            let at_s = inner.now_s();
            for &id in &ids {
                if inner.state.job(JobId(id)).is_none() && id < inner.next_job {
                    // Not held: ended long ago, if the store has it (read outside the lock).
                    gone.push(id);
                    continue;
                }
                match find_job(inner, id, &p, Access::Own) {
                    Err(e) => report.refused.push(proto::CancelRefused {
                        job: id,
                        reason: e.message(),
                    }),
                    Ok(job) if job.state.is_terminal() => report.already_ended.push(id),
                    Ok(_) => {
                        events.push(Event::Cancel {
                            job: JobId(id),
                            at_s,
                            unmet: None,
                        });
                        report.cancelled.push(id);
                    }
                }
            }
            if !events.is_empty() {
                inner.commit(events, &[])?;
                // Running jobs are now stopping: their agents are told.
                for &id in &report.cancelled {
                    inner.kill_run(JobId(id));
                }
            }
            Ok((report, gone))
        })
        .await?;
    for id in gone {
        match ended_job(&s, id, &p, Access::Own) {
            Ok(_) => report.already_ended.push(id),
            Err(e) => report.refused.push(proto::CancelRefused {
                job: id,
                reason: e.message(),
            }),
        }
    }
    report.already_ended.sort_unstable();
    Ok(Json(report))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The task's index in the gang (default 0).
    task: Option<u32>,
    /// The attempt (default the latest).
    attempt: Option<u32>,
    /// The byte offset to read from (default 0).
    offset: Option<u64>,
    /// Only the last this many bytes (instead of `offset`).
    tail: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs", operation_id = "job_logs", params(("id" = u64, Path, description = "The job's id"), LogQuery), responses((status = 200, description = "A task's output from an offset", body = LogView)))]
pub async fn logs(
    State(s): State<Arc<Server>>,
    Client(p): Client,
    Seg(id): Seg<u64>,
    Params(q): Params<LogQuery>,
) -> Api<LogView> {
    let held = {
        let inner = s.lock();
        match inner.state.job(JobId(id)) {
            None => None,
            Some(_) => {
                let job = find_job(&inner, id, &p, Access::Own)?;
                let current = job.state.run().map(|r| r.attempt);
                let attempt = q.attempt.or(current).unwrap_or(job.runs.max(1));
                let exited = |task| {
                    inner
                        .exits
                        .get(&(id, attempt))
                        .is_some_and(|c| c.contains_key(&task))
                };
                let task = q.task.unwrap_or(0);
                Some((
                    job.spec.tasks,
                    attempt,
                    current != Some(attempt) || exited(task),
                ))
            }
        }
    };
    // A job no longer held has ended: its record says how many tasks and runs it had.
    let (tasks, attempt, done) = match held {
        Some(h) => h,
        None => {
            s.settled().await;
            let view = ended_job(&s, id, &p, Access::Own)?;
            (view.tasks, q.attempt.unwrap_or(view.attempt.max(1)), true)
        }
    };
    let task = q.task.unwrap_or(0);
    if task >= tasks {
        return Err(Refusal::BadRequest(format!(
            "job {id} has {tasks} tasks; task must be 0..{tasks}"
        )));
    }
    // The store is read without the server's lock.
    let mut store = s.journal.store();
    let mut offset = q.offset.unwrap_or(0);
    if let Some(tail) = q.tail {
        let (_, len) = store.read_log((id, task, attempt), u64::MAX, 0)?;
        offset = len.saturating_sub(tail);
    }
    let (data, next) = store.read_log((id, task, attempt), offset, 1 << 20)?;
    Ok(Json(LogView {
        job: id,
        task,
        attempt,
        offset,
        next,
        data: String::from_utf8_lossy(&data).into_owned(),
        data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
        done,
    }))
}
