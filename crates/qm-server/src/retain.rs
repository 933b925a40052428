//! Retention: ended jobs leave memory, their records stay in the store.
//!
//! A server that runs for months sees millions of jobs; the state in memory holds the live
//! ones and, of the ended ones, only those that ended within `--retain-ended` and at most
//! `--retain-ended-max` of them (the most recently ended). The rest are forgotten through the
//! core's `Forget` event, written in one transaction with each forgotten job's record (its
//! view as the API shows it: spec, times, events, command) and the deletion of its payload
//! and task exits, so that a restart loads only what the state holds and a crash can never
//! leave a job in neither place. `qm show` and `qm jobs --all` read the records back.

use std::collections::BTreeMap;

use qm_core::{Event, Job, JobId, Secs};
use qm_store::EndedJob;

use crate::{views, Inner, Refusal};

/// How often retention looks for jobs to forget, unless the count of ended jobs runs over its
/// limit by a tenth first.
pub(crate) const RETAIN_EVERY_MS: u64 = 10_000;

impl Inner {
    /// Forgets ended jobs past the retention window or beyond the most to keep. Cheap when
    /// there is nothing to do: it looks at most every [`RETAIN_EVERY_MS`], or when the ended
    /// jobs outnumber their limit by a tenth.
    pub(crate) fn retain(&mut self) -> Result<(), Refusal> {
        let max = self.config.retain_ended_max;
        let count = self.state.ended_count();
        let now_ms = self.mono_ms();
        if count <= max.saturating_add(max / 10) && now_ms < self.next_retain_ms {
            return Ok(());
        }
        self.next_retain_ms = now_ms + RETAIN_EVERY_MS;
        let cutoff = self.now_s().saturating_sub(self.config.retain_ended_s);
        let mut ended: Vec<(Secs, JobId)> = self
            .state
            .ended_jobs()
            .filter_map(|j| j.state.ended_s().map(|at| (at, j.spec.id)))
            .collect();
        let mut gone: Vec<JobId> = ended
            .iter()
            .filter(|(at, _)| *at < cutoff)
            .map(|&(_, id)| id)
            .collect();
        if ended.len() > max {
            // The most recently ended stay (the higher id first among equal times).
            ended.sort_unstable_by(|a, b| b.cmp(a));
            gone.extend(ended[max..].iter().map(|&(_, id)| id));
        }
        gone.sort_unstable();
        gone.dedup();
        self.forget(&gone)
    }

    /// Forgets these ended jobs (those a live job depends on stay): their records go to the
    /// store with the event, and what the server derived about them leaves memory.
    pub(crate) fn forget(&mut self, jobs: &[JobId]) -> Result<(), Refusal> {
        let gone = self.state.forgettable(0, jobs);
        if gone.is_empty() {
            return Ok(());
        }
        let records = gone
            .iter()
            .filter_map(|&id| self.state.job(id).map(|j| self.ended_record(j)))
            .collect::<Result<Vec<_>, _>>()?;
        self.commit_with(
            vec![Event::Forget {
                before_s: 0,
                jobs: gone.clone(),
            }],
            &[],
            records,
        )?;
        self.metrics.forgotten += gone.len() as u64;
        for id in gone {
            self.payloads.remove(&id.0);
            self.history.remove(&id.0);
            remove_runs(&mut self.exits, id.0);
            remove_runs(&mut self.placed, id.0);
            remove_runs(&mut self.util, id.0);
            self.idle_noted.retain(|&(job, _)| job != id.0);
        }
        Ok(())
    }

    /// An ended job's record for the store: its view in full, and the columns lists filter on.
    fn ended_record(&self, job: &Job) -> Result<EndedJob, Refusal> {
        let view = views::job_view(self, job);
        Ok(EndedJob {
            id: job.spec.id.0,
            team: job.spec.team.clone(),
            user: job.spec.user.clone(),
            state: view.state.to_string(),
            submit_s: job.spec.submit_s,
            end_s: job.state.ended_s().unwrap_or(job.spec.submit_s),
            view: serde_json::to_string(&view)
                .map_err(|e| Refusal::Internal(format!("job {}: {e}", job.spec.id.0)))?,
        })
    }
}

/// Removes every run of `job` from a map keyed by (job, attempt).
pub(crate) fn remove_runs<V>(map: &mut BTreeMap<(u64, u32), V>, job: u64) {
    let keys: Vec<(u64, u32)> = map
        .range((job, 0)..=(job, u32::MAX))
        .map(|(k, _)| *k)
        .collect();
    for k in keys {
        map.remove(&k);
    }
}
