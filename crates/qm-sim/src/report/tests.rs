//! The report's figures on hand-made replays.

use std::collections::BTreeMap;

use qm_core::{JobId, PolicyKind, Secs};

use super::*;
use crate::sim::JobRecord;

/// A replay's outcome, job by job: each job asks one GPU for an hour.
struct Replay {
    policy: PolicyKind,
    jobs: Vec<JobRecord>,
    end_s: Secs,
    denied: BTreeMap<String, u128>,
}

impl Replay {
    fn new(policy: PolicyKind) -> Replay {
        Replay {
            policy,
            jobs: Vec::new(),
            end_s: 0,
            denied: BTreeMap::new(),
        }
    }

    fn record(id: u64, team: &str, submit_s: Secs) -> JobRecord {
        JobRecord {
            id: JobId(id),
            core_id: JobId(id),
            team: team.to_string(),
            submit_s,
            duration_s: 3600,
            gpu_milli: 1000,
            first_start_s: None,
            end_s: None,
            rejected: None,
            timed_out: false,
            preemptions: 0,
            lost_milli_s: 0,
            reclaim_wait: false,
            ended_idle: false,
        }
    }

    /// Started at `start_s` and completed an hour later.
    fn ran(mut self, id: u64, team: &str, submit_s: Secs, start_s: Secs) -> Replay {
        let mut j = Replay::record(id, team, submit_s);
        j.first_start_s = Some(start_s);
        j.end_s = Some(start_s + 3600);
        self.end_s = self.end_s.max(start_s + 3600);
        self.jobs.push(j);
        self
    }

    /// Team `team` was denied `gpu_h` GPU-hours of its guarantee.
    fn denied(mut self, team: &str, gpu_h: u128) -> Replay {
        self.denied.insert(team.to_string(), gpu_h * 1000 * 3600);
        self
    }

    /// Never started: still waiting when the replay ended.
    fn waiting(mut self, id: u64, team: &str, submit_s: Secs) -> Replay {
        self.jobs.push(Replay::record(id, team, submit_s));
        self
    }

    /// Refused at submission.
    fn rejected(mut self, id: u64, team: &str, submit_s: Secs) -> Replay {
        let mut j = Replay::record(id, team, submit_s);
        j.rejected = Some("fits no node".into());
        self.jobs.push(j);
        self
    }

    fn result(self) -> SimResult {
        SimResult {
            policy: self.policy,
            perturb_seed: None,
            jobs: self.jobs,
            total_gpus: 8,
            allocated: vec![(0, 0)],
            plans: 1,
            end_s: self.end_s,
            guarantee_denied: self.denied,
            idle: Default::default(),
            idle_policy: None,
            explained: Vec::new(),
        }
    }
}

/// Team `big`: two small jobs and one that `static` never starts (its partition is too
/// small), and a job refused under both; team `small`: one job.
fn static_and_default() -> (SimResult, SimResult) {
    let stat = Replay::new(PolicyKind::Static)
        .ran(1, "big", 0, 100)
        .ran(2, "big", 0, 100)
        .waiting(3, "big", 1000)
        .rejected(4, "big", 0)
        .ran(5, "small", 0, 600)
        .denied("big", 1)
        .result();
    let shared = Replay::new(PolicyKind::Default)
        .ran(1, "big", 0, 50)
        .ran(2, "big", 0, 50)
        .ran(3, "big", 1000, 6000)
        .rejected(4, "big", 0)
        .ran(5, "small", 0, 0)
        .denied("big", 2)
        .result();
    (stat, shared)
}

#[test]
fn a_job_that_never_starts_counts_with_its_wait_up_to_the_end_and_is_counted_censored() {
    let (stat, _) = static_and_default();
    assert_eq!(stat.end_s, 4200, "job 5 ends last");
    let r = summarize(&stat);
    // Completed jobs alone, as before: the job that never started is left out.
    assert_eq!((r.jobs, r.unfinished, r.rejected), (3, 1, 1));
    assert_eq!(r.wait_mean_s, (100.0 + 100.0 + 600.0) / 3.0);
    assert_eq!(r.replay_end_s, 4200);
    // Every accepted job: job 3 waited from 1000 s to the end at 4200 s, at least.
    assert_eq!(
        r.wait_all,
        Waits {
            jobs: 4,
            censored: 1,
            mean_s: (100.0 + 100.0 + 3200.0 + 600.0) / 4.0,
            p50_s: 100.0,
            p99_s: 3200.0,
            max_s: 3200.0,
        }
    );
    let big = r.team_waits.iter().find(|t| t.team == "big").unwrap();
    assert_eq!(
        (big.waits.jobs, big.waits.censored, big.waits.mean_s),
        (3, 1, 3400.0 / 3.0)
    );
    let small = r.team_waits.iter().find(|t| t.team == "small").unwrap();
    assert_eq!((small.waits.jobs, small.waits.censored), (1, 0));
    let shared = summarize(&static_and_default().1);
    assert_eq!(shared.wait_all.censored, 0);
    assert_eq!(shared.wait_all.jobs, 4, "the rejected job is never a wait");
}

#[test]
fn teams_are_compared_over_the_jobs_that_started_under_both_policies() {
    let (stat, shared) = static_and_default();
    // Per policy, over the jobs that started: `big` waits 100 s under static and
    // (50 + 50 + 5000) / 3 s in the shared pool, as if static served it better.
    let per_policy = |r: &SimResult| {
        summarize(r)
            .teams
            .into_iter()
            .find(|t| t.team == "big")
            .unwrap()
            .wait_mean_s
    };
    assert!(per_policy(&shared) > 10.0 * per_policy(&stat));
    let c = compare(&stat, &shared);
    assert_eq!(
        c[0],
        TeamComparison {
            team: "big".into(),
            policy: "default".into(),
            reference: "static".into(),
            started_both: 2,
            reference_wait_mean_s: 100.0,
            policy_wait_mean_s: 50.0,
            wait_ratio: Some(0.5),
            started_only_reference: 0,
            started_only_policy: 1,
            reference_denied_gpu_h: Some(1.0),
            policy_denied_gpu_h: Some(2.0),
        }
    );
    assert_eq!((c[1].team.as_str(), c[1].started_both), ("small", 1));
    assert_eq!(
        (c[1].reference_denied_gpu_h, c[1].policy_denied_gpu_h),
        (None, None),
        "small has no guarantee"
    );
    assert_eq!(c[1].wait_ratio, Some(0.0), "no wait in the pool");
    // The other way round: the big job started under `default` only.
    let back = compare(&shared, &stat);
    assert_eq!(
        (back[0].started_only_reference, back[0].started_only_policy),
        (1, 0)
    );
    assert_eq!(back[1].wait_ratio, None, "small never waited under default");
}

#[test]
fn the_reference_is_static_when_it_ran_else_the_first_policy() {
    assert_eq!(compare::reference(&["default", "fifo", "static"]), Some(2));
    assert_eq!(compare::reference(&["fifo", "default"]), Some(0));
    assert_eq!(compare::reference(&["default"]), None);
    let (stat, shared) = static_and_default();
    let all = team_comparisons(&[shared.clone(), stat.clone()]);
    assert_eq!(all, compare(&stat, &shared));
    assert!(team_comparisons(&[shared]).is_empty());
}

#[test]
fn report_md_shows_waits_censored_and_the_comparison() {
    let (stat, shared) = static_and_default();
    let results = [shared, stat];
    let report = Report {
        trace: "t.csv".into(),
        format: "csv".into(),
        cluster: "1x8".into(),
        gpus: 8,
        teams: "auto".into(),
        trace_jobs: 5,
        trace_skipped: 0,
        seed: 42,
        checkpoint_every_s: None,
        idle_added: None,
        starvation_wait_s: None,
        policies: results.iter().map(summarize).collect(),
        team_comparisons: team_comparisons(&results),
        perturbed: None,
    };
    let main = table(&report);
    assert!(
        main.contains("| static | 3 | 1 | 1 | 16.7 min | 53.3 min | 1 |"),
        "{main}"
    );
    let teams = team_tables(&report);
    assert!(
        teams.contains("| big | 3 | 28.3 min | 0 | 18.9 min | 1 |"),
        "{teams}"
    );
    assert!(teams.contains("### `default` against `static`, like with like"));
    assert!(
        teams.contains("| big | 2 | 1.7 min | 50 s | 0.50 (2.0x shorter) | 0 | 1 |"),
        "{teams}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["policies"][1]["wait_all"]["censored"], 1);
    assert_eq!(json["policies"][1]["team_waits"][0]["team"], "big");
    assert_eq!(json["policies"][1]["team_waits"][0]["censored"], 1);
    assert_eq!(json["team_comparisons"][0]["started_only_policy"], 1);
}

#[test]
fn stat_is_the_mean_the_sample_sd_and_their_ratio() {
    let s = Stat::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
    assert_eq!(s.mean, 5.0);
    let sd = (32.0_f64 / 7.0).sqrt();
    assert!((s.sd.unwrap() - sd).abs() < 1e-12, "{s:?}");
    assert!((s.cv.unwrap() - sd / 5.0).abs() < 1e-12);
    assert_eq!(
        Stat::of(&[3.0]),
        Stat {
            mean: 3.0,
            sd: None,
            cv: None
        },
        "no spread from one replay"
    );
    assert_eq!(Stat::of(&[0.0, 0.0]).cv, None, "no CV of a mean of 0");
    assert_eq!(Stat::of(&[0.0, 0.0]).sd, Some(0.0));
}

#[test]
fn perturbed_replays_give_the_spread_of_each_figure_and_mean_team_comparisons() {
    let (stat_1, shared_1) = static_and_default();
    // Replay 2: static as in replay 1; the shared pool starts jobs 1 and 2 later, and job 3
    // never.
    let stat_2 = stat_1.clone();
    let shared_2 = Replay::new(PolicyKind::Default)
        .ran(1, "big", 0, 150)
        .ran(2, "big", 0, 150)
        .waiting(3, "big", 1000)
        .rejected(4, "big", 0)
        .ran(5, "small", 0, 0)
        .denied("big", 4)
        .result();
    let replays = [
        vec![shared_1.clone(), stat_1.clone()],
        vec![shared_2.clone(), stat_2],
    ];
    let p = perturbed(&[11, 12], &replays);
    assert_eq!((p.replays, p.seeds.clone()), (2, vec![11, 12]));
    assert_eq!(p.policies[0].policy, "default");
    assert_eq!(p.policies[0].replays.len(), 2);
    let waits = [
        summarize(&shared_1).wait_all.mean_s,
        summarize(&shared_2).wait_all.mean_s,
    ];
    let wait = p.policies[0].figures.get("wait_all_mean_s").unwrap();
    assert_eq!(wait, Stat::of(&waits));
    assert!(wait.sd.unwrap() > 0.0);
    let stat_wait = p.policies[1].figures.get("wait_all_mean_s").unwrap();
    assert_eq!(
        (stat_wait.sd, stat_wait.cv),
        (Some(0.0), Some(0.0)),
        "static alike twice"
    );
    let censored = p.policies[0].figures.get("wait_all_censored").unwrap();
    assert_eq!(censored.mean, 0.5);
    let keys: Vec<&str> = p.policies[0].figures.0.iter().map(|f| f.0).collect();
    assert_eq!(keys.len(), 13, "every column of the main table: {keys:?}");
    // Team big, replay 1: 100 s under static, 50 s shared, ratio 0.5; replay 2: 100 s and
    // 150 s, ratio 1.5; job 3 started under default only in replay 1.
    let big = &p.team_comparisons[0];
    assert_eq!(
        big.mean,
        TeamComparison {
            team: "big".into(),
            policy: "default".into(),
            reference: "static".into(),
            started_both: 2.0,
            reference_wait_mean_s: 100.0,
            policy_wait_mean_s: 100.0,
            wait_ratio: Some(1.0),
            started_only_reference: 0.0,
            started_only_policy: 0.5,
            reference_denied_gpu_h: Some(1.0),
            policy_denied_gpu_h: Some(3.0),
        }
    );
    assert!((big.wait_ratio_sd.unwrap() - 0.5_f64.sqrt()).abs() < 1e-12);
    let team = &p.policies[0].team_waits[0];
    assert_eq!((team.team.as_str(), team.censored), ("big", 0.5));
    let md = perturbed_table(&p);
    assert!(md.contains("| default |") && md.contains(" ± "), "{md}");
    let teams = perturbed_team_tables(&p);
    assert!(
        teams.contains("| big | 2 | 1.7 min | 1.7 min | 1.00 ± 0.71 (1.0x shorter) | 0 | 0.5 |"),
        "{teams}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["policies"][0]["figures"]["wait_all_mean_s"]["mean"],
        wait.mean
    );
    assert_eq!(
        json["team_comparisons"][0]["wait_ratio_sd"],
        big.wait_ratio_sd.unwrap()
    );
    assert_eq!(json["team_comparisons"][0]["started_only_policy"], 0.5);
}
