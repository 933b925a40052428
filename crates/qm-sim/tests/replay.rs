//! End-to-end replays of a small fixture trace through every policy.

use std::path::PathBuf;

use qm_core::PolicyKind;
use qm_sim::cluster::ClusterSpec;
use qm_sim::report::{self, Report};
use qm_sim::sim::{perturb_seeds, simulate, SimOptions, SimResult};
use qm_sim::teamspec;
use qm_sim::trace::{self, Format};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.csv")
}

fn run(policy: PolicyKind) -> SimResult {
    run_perturbed(policy, None)
}

fn run_perturbed(policy: PolicyKind, perturb_seed: Option<u64>) -> SimResult {
    let trace = trace::load(&fixture(), Format::Csv).unwrap();
    let cluster = ClusterSpec::shorthand("4x8").unwrap();
    let teams = teamspec::from_arg("auto", &trace.jobs, &cluster).unwrap();
    let mut options = SimOptions::new(policy);
    options.perturb_seed = perturb_seed;
    simulate(&trace.jobs, &cluster, &teams, &options, &mut |_, _| {}).unwrap()
}

#[test]
fn every_policy_completes_every_job_that_fits_and_counts_the_one_that_does_not() {
    for policy in PolicyKind::ALL {
        let result = run(policy);
        let rejected: Vec<_> = result
            .jobs
            .iter()
            .filter(|j| j.rejected.is_some())
            .map(|j| (j.id.0, j.gpu_milli))
            .collect();
        assert_eq!(
            rejected,
            [(42, 16_000)],
            "{policy}: only the 16-GPU job (42) is refused: it fits no 8-GPU node"
        );
        let r = report::summarize(&result);
        assert_eq!(r.rejected, 1, "{policy}");
        assert_eq!(r.jobs + r.unfinished + r.rejected, 42, "{policy}");
        // Under static, team c's 16-GPU gang is bigger than c's partition: it never runs.
        let stuck = usize::from(policy == PolicyKind::Static);
        assert_eq!(r.unfinished, stuck, "{policy}: {r:?}");
        let never_ran: Vec<_> = result
            .jobs
            .iter()
            .filter(|j| j.rejected.is_none() && j.end_s.is_none())
            .map(|j| (j.team.as_str(), j.gpu_milli))
            .collect();
        let expected: &[(&str, u64)] = if policy == PolicyKind::Static {
            &[("c", 16_000)]
        } else {
            &[]
        };
        assert_eq!(never_ran, expected, "{policy}");
        assert!(r.gpu_allocation > 0.0 && r.gpu_allocation <= 1.0);
    }
}

#[test]
fn sharing_the_pool_cuts_waiting_against_static_partitions() {
    let shared = report::summarize(&run(PolicyKind::Default));
    let parts = report::summarize(&run(PolicyKind::Static));
    assert!(
        shared.wait_mean_s < parts.wait_mean_s,
        "default {} s vs static {} s",
        shared.wait_mean_s,
        parts.wait_mean_s
    );
    assert!(shared.makespan_s <= parts.makespan_s);
}

#[test]
fn replays_are_deterministic() {
    let a = run(PolicyKind::Default);
    let b = run(PolicyKind::Default);
    assert_eq!(a.jobs, b.jobs);
    assert_eq!(a.allocated, b.allocated);
}

#[test]
fn reports_are_written_with_every_field_and_chart() {
    let results: Vec<SimResult> = PolicyKind::ALL.iter().map(|&p| run(p)).collect();
    let report = Report {
        trace: "small.csv".into(),
        format: "csv".into(),
        cluster: "4x8".into(),
        gpus: 32,
        teams: "auto".into(),
        trace_jobs: 42,
        trace_skipped: 0,
        seed: 42,
        checkpoint_every_s: None,
        idle_added: None,
        starvation_wait_s: None,
        policies: results.iter().map(report::summarize).collect(),
        team_comparisons: report::team_comparisons(&results),
        perturbed: None,
    };
    let dir = std::env::temp_dir().join(format!("qm-sim-report-{}", std::process::id()));
    report::write(&dir, &report, &results).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let policies = json["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 3);
    for key in [
        "policy",
        "jobs",
        "rejected",
        "jct_mean_s",
        "jct_p50_s",
        "jct_p99_s",
        "wait_mean_s",
        "wait_p99_s",
        "wait_max_s",
        "slowdown_mean",
        "gpu_allocation",
        "makespan_s",
        "preemptions",
        "gpu_hours_lost",
        "idle_gpu_hours_reclaimed",
        "fairness_jain",
        "teams",
        "replay_end_s",
        "wait_all",
        "team_waits",
    ] {
        assert!(policies[0].get(key).is_some(), "report.json lacks {key}");
    }
    let team = &policies[0]["teams"][0];
    for key in ["team", "jobs", "wait_mean_s", "slowdown_mean"] {
        assert!(team.get(key).is_some(), "team entry lacks {key}");
    }
    for chart in ["allocation.svg", "wait_cdf.svg", "team_wait.svg"] {
        let svg = std::fs::read_to_string(dir.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| default |") && md.contains("`default` against `static`"));
    // Team c's 16-GPU gang never starts under static: censored there, started only under
    // the shared pool in the like-with-like comparison.
    let stat = &policies[2];
    assert_eq!(stat["policy"], "static");
    assert_eq!(stat["wait_all"]["censored"], 1);
    let c = json["team_comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["team"] == "c" && c["policy"] == "default")
        .unwrap();
    assert_eq!(c["reference"], "static");
    assert_eq!(c["started_only_policy"], 1);
    assert_eq!(c["started_only_reference"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn perturbed_replays_deal_other_ids_and_keep_the_traces_for_comparisons() {
    for policy in PolicyKind::ALL {
        let plain = run(policy);
        assert!(plain.jobs.iter().all(|j| j.core_id == j.id), "{policy}");
        let mut dealt = Vec::new();
        for seed in perturb_seeds(42, 3) {
            let p = run_perturbed(policy, Some(seed));
            let ids = |r: &SimResult| r.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
            assert_eq!(
                ids(&p),
                ids(&plain),
                "{policy}: the trace's ids, in its order"
            );
            let mut core: Vec<_> = p.jobs.iter().map(|j| j.core_id).collect();
            dealt.push(core.clone());
            core.sort();
            let mut trace_ids = ids(&plain);
            trace_ids.sort();
            assert_eq!(
                core, trace_ids,
                "{policy}: a permutation of the trace's ids"
            );
            let r = report::summarize(&p);
            assert_eq!(r.rejected, 1, "{policy}: the same job is refused");
            assert_eq!(r.jobs + r.unfinished + r.rejected, 42, "{policy}");
            // Job by job against the replay in the trace's order, by trace id: every job that
            // started there starts here too (the fixture runs everything but c's gang under
            // static).
            for c in report::compare(&plain, &p) {
                assert_eq!(
                    (c.started_only_reference, c.started_only_policy),
                    (0, 0),
                    "{policy}: {c:?}"
                );
            }
        }
        assert!(
            dealt.windows(2).all(|w| w[0] != w[1]),
            "{policy}: each seed deals its own ids"
        );
    }
}
