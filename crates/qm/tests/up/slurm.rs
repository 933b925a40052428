//! Slurm habits with real processes: a batch script with `#SBATCH` lines submitted as an
//! array after a dependency, dependencies that can never be met, cancelling many jobs at
//! once, and the accounting history across a restart.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{logs, Up};

fn jobs(up: &Up, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["jobs", "--json"];
    all.extend_from_slice(args);
    up.json(&all).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_batch_script_runs_as_an_array_after_its_dependency_never_more_at_once_than_it_allows() {
    let up = Up::start("slurm-array", &[]);
    up.ok(&["admin", "team", "create", "default", "--guaranteed", "4"]);
    let script = up.dir.join("sweep.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         #SBATCH --job-name=sweep\n\
         #SBATCH --gres=gpu:1\n\
         #SBATCH --array=0-5%2\n\
         #SBATCH --time=10\n\
         #SBATCH --mail-user=someone@example.com\n\
         #QM --env MODE=fast\n\
         echo \"index $QM_ARRAY_INDEX of $QM_ARRAY_JOB_ID arg $1 mode $MODE\"\n\
         sleep 1\n",
    )
    .unwrap();
    let prep = up.submit(&["--", "sh", "-c", "sleep 1"]);
    let out = up.qm(&[
        "submit",
        "--json",
        "--after",
        &prep.to_string(),
        script.to_str().unwrap(),
        "lr=0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mail-user=someone@example.com ignored"),
        "each ignored line is said once: {stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let array = r["job"].as_u64().unwrap();
    let members: Vec<u64> = r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_u64().unwrap())
        .collect();
    assert_eq!(members.len(), 6);
    assert_eq!(members[0], array);
    // Waiting for its dependency, and saying so.
    let why = up.ok(&["why", &format!("{array}_0")]);
    assert!(
        why.contains(&format!("job#{prep} to succeed")) || why.contains("running"),
        "{why}"
    );
    // Never more than two at once, though four GPUs are free; all six succeed.
    let until = Instant::now() + Duration::from_secs(90);
    let mut most = 0;
    loop {
        let js = jobs(&up, &["--array", &array.to_string()]);
        let running = js.iter().filter(|j| j["state"] == "running").count();
        most = most.max(running);
        if js.iter().all(|j| j["state"] == "succeeded") && js.len() == 6 {
            break;
        }
        assert!(Instant::now() < until, "the array did not finish: {js:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most <= 2, "{most} jobs of the array ran at once");
    assert!(most >= 1);
    // Each task's copy of the script was its own, and is gone with it; others may not list
    // the folder.
    let scripts = up.data().join("agent").join("scripts");
    let left: Vec<_> = std::fs::read_dir(&scripts).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&scripts).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711);
    let prep_end = up.job(prep)["ended_s"].as_u64().unwrap();
    for &m in &members {
        let j = up.job(m);
        assert!(j["first_started_s"].as_u64().unwrap() >= prep_end);
    }
    // Each job knows its place, its arguments and the script's #QM environment.
    let log = logs(&up, members[3], 0);
    assert!(
        log.contains(&format!("index 3 of {array} arg lr=0.1 mode fast")),
        "{log}"
    );
    assert!(up
        .ok(&["logs", &format!("{array}_3")])
        .contains("index 3 of"));
    // Shown as Slurm users expect: folded into one row, the script kept with the job.
    let table = up.ok(&["jobs"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{array}_[0-5]")))
        .unwrap_or_else(|| panic!("no folded row:\n{table}"));
    assert!(
        row.contains("6 succeeded") && row.contains("sweep"),
        "{row}"
    );
    let expanded = up.ok(&["jobs", "--expand"]);
    assert!(expanded.contains(&format!("{array}_5 ")), "{expanded}");
    let show = up.ok(&["show", &format!("{array}_2")]);
    assert!(
        show.contains(&format!("after job {prep} succeeded")),
        "{show}"
    );
    assert!(show.contains("| #SBATCH --array=0-5%2"), "{show}");
    assert!(
        show.contains("array") && show.contains("at most 2"),
        "{show}"
    );
    assert!(
        !show.contains("17952") && !show.contains("17960"),
        "raw seconds: {show}"
    );
}

#[test]
fn a_dependency_that_can_never_be_met_ends_its_job_and_cancel_takes_arrays_and_filters() {
    let up = Up::start("slurm-deps", &[]);
    up.ok(&["admin", "team", "create", "default", "--guaranteed", "4"]);
    let failed = up.submit(&["--", "sh", "-c", "sleep 2; exit 1"]);
    let on_ok = up.submit(&["--after", &failed.to_string(), "--", "true"]);
    let on_fail = up.submit(&["--after", &format!("{failed}:failed"), "--", "true"]);
    let on_any = up.submit(&["--after", &format!("{failed}:any"), "--", "true"]);
    let chained = up.submit(&["--after", &on_ok.to_string(), "--", "true"]);
    up.wait_state(failed, "failed");
    let j = up.wait_state(on_ok, "cancelled");
    let why = j["events"].as_array().unwrap().last().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("never will"), "{why}");
    up.wait_state(chained, "cancelled");
    up.wait_state(on_fail, "succeeded");
    up.wait_state(on_any, "succeeded");
    // Refused at once where it is already certain.
    let out = up.qm(&[
        "submit",
        "--after",
        &format!("{on_fail}:failed"),
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("can never run"));
    // Cancel: a whole array by its id, one job of another, then a filter.
    let a = up.submit(&["--array", "0-5", "--", "sleep", "300"]);
    let b = up.submit(&["--array", "0-2", "--name", "keep", "--", "sleep", "300"]);
    let out = up.ok(&["cancel", &a.to_string(), &format!("{b}_1")]);
    assert!(out.contains("7 cancelled"), "{out}");
    for j in jobs(&up, &["--array", &a.to_string()]) {
        assert!(
            j["state"] == "cancelled" || j["state"] == "stopping",
            "{j:#}"
        );
    }
    let kept: Vec<Value> = jobs(&up, &["--array", &b.to_string()]);
    assert_eq!(
        kept.iter()
            .filter(|j| j["state"] == "cancelled" || j["state"] == "stopping")
            .count(),
        1
    );
    // The filter takes what is pending when it runs (a job of `b` may have started since).
    let out = up.ok(&["cancel", "--name", "keep", "--state", "pending"]);
    assert!(out.contains(" cancelled"), "{out}");
    assert!(
        jobs(&up, &["--array", &b.to_string()])
            .iter()
            .all(|j| j["state"] != "pending"),
        "{out}"
    );
    let out = up.qm(&["cancel"]);
    assert!(
        !out.status.success(),
        "cancel without ids or filters is refused"
    );
}

#[test]
fn history_lists_ended_jobs_from_the_store_across_a_restart() {
    let up = Up::start("slurm-history", &["--retain-ended-max", "1"]);
    up.ok(&["admin", "team", "create", "default", "--guaranteed", "4"]);
    let ok = up.submit(&["--name", "first", "--", "sh", "-c", "sleep 1"]);
    let bad = up.submit(&["--name", "second", "--", "sh", "-c", "exit 3"]);
    up.wait_state(ok, "succeeded");
    up.wait_state(bad, "failed");
    let up = up.killed_and_restarted(&["--retain-ended-max", "1"]);
    let rows = up.json(&["history", "--format", "json"]);
    let rows = rows.as_array().unwrap();
    let row = |id: u64| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("job {id} is not in the history: {rows:#?}"))
    };
    assert_eq!(row(ok)["state"], "succeeded");
    assert!(row(ok)["run_s"].as_u64().unwrap() >= 1);
    assert!(row(ok)["gpu_hours"].as_f64().unwrap() > 0.0);
    assert!(row(ok)["ended_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(row(bad)["state"], "failed");
    assert_eq!(row(bad)["exit_codes"], serde_json::json!([3]));
    let table = up.ok(&["history", "--state", "failed"]);
    assert!(
        table.contains("second") && !table.contains("first"),
        "{table}"
    );
    let csv = up.ok(&["history", "--format", "csv", "--since", "1h"]);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("id,job,name,team"));
}

#[test]
fn report_gives_each_teams_use_from_samples_that_survive_a_restart() {
    // Sleeping jobs are idle after a second: their idle GPU-hours are counted too.
    let flags = ["--usage-every", "1s", "--idle-window-s", "1"];
    let up = Up::start("slurm-report", &flags);
    up.ok(&["admin", "team", "create", "owner", "--guaranteed", "2"]);
    up.ok(&["admin", "team", "create", "borrower", "--guaranteed", "2"]);
    // The borrower runs on all four GPUs (two of them the owner's, lent), for a few seconds.
    let ids: Vec<u64> = (0..4)
        .map(|_| up.submit(&["--team", "borrower", "--gpus", "1", "--", "sleep", "4"]))
        .collect();
    for &id in &ids {
        up.wait_state(id, "succeeded");
    }
    let up = up.killed_and_restarted(&flags);
    // `qm teams` sums the last 7 days' samples, those before the restart included.
    up.wait_for(|u| {
        u.json(&["teams", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .any(|t| {
                t["name"] == "borrower" && t["idle_gpu_hours_7d"].as_f64().unwrap_or(0.0) > 0.0
            })
    });
    let r = up.json(&["report", "--since", "1h", "--json"]);
    assert!(r["samples"].as_u64().unwrap() >= 3, "{r:#}");
    let team = |name: &str| {
        r["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["team"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {r:#}"))
    };
    let (b, o) = (team("borrower"), team("owner"));
    let h = |v: &Value, k: &str| v[k].as_f64().unwrap();
    // Four GPUs for about four seconds: 16 GPU-seconds, half of them borrowed and lent.
    assert!(h(&b, "used_gpu_hours") * 3600.0 >= 8.0, "{b:#}");
    assert!(h(&b, "borrowed_gpu_hours") > 0.0, "{b:#}");
    assert!(h(&o, "lent_gpu_hours") > 0.0, "{o:#}");
    assert_eq!(h(&o, "used_gpu_hours"), 0.0);
    assert!(h(&b, "borrowed_gpu_hours") <= h(&b, "used_gpu_hours"));
    assert_eq!(b["jobs"], 4);
    assert!(h(&b, "idle_gpu_hours") > 0.0, "{b:#}");
    let teams = up.json(&["teams", "--json"]);
    let week = teams
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "borrower")
        .unwrap()["idle_gpu_hours_7d"]
        .as_f64()
        .unwrap();
    assert!(
        (week - h(&b, "idle_gpu_hours")).abs() < 1e-6,
        "the week's idle GPU-hours in qm teams ({week}) and the report's agree: {b:#}"
    );
    assert!(b["wait_p50_s"].as_u64().is_some());
    let table = up.ok(&["report", "--since", "1h"]);
    assert!(
        table.contains("borrower") && table.contains("BORROWED"),
        "{table}"
    );
    let out = up.qm(&["report", "--since", "0"]);
    assert!(!out.status.success());
}

#[test]
fn a_dependency_on_a_whole_array_waits_for_all_its_jobs_even_once_they_are_forgotten() {
    let up = Up::start("slurm-array-deps", &["--retain-ended-max", "1"]);
    up.ok(&["admin", "team", "create", "default", "--guaranteed", "4"]);
    // Three jobs of an array, ending one second apart.
    let a = up.submit(&[
        "--array",
        "0-2",
        "--",
        "sh",
        "-c",
        "sleep $((QM_ARRAY_INDEX + 1))",
    ]);
    let after_all = up.submit(&["--after", &a.to_string(), "--", "true"]);
    let after_one = up.submit(&["--after", &format!("{a}_0"), "--", "true"]);
    let show = up.ok(&["show", &after_all.to_string()]);
    assert!(
        show.contains(&format!("after jobs {a}-{} (3 jobs) succeeded", a + 2)),
        "{show}"
    );
    let show = up.ok(&["show", &after_one.to_string()]);
    assert!(show.contains(&format!("after job {a} succeeded")), "{show}");
    // A whole array cannot be waited on to fail: one of its jobs can.
    let out = up.qm(&["submit", "--after", &format!("{a}:failed"), "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not failed") && err.contains("_INDEX"),
        "{err}"
    );
    let one = up.wait_state(after_one, "succeeded");
    let all = up.wait_state(after_all, "succeeded");
    let ended: Vec<u64> = (a..a + 3)
        .map(|m| up.wait_state(m, "succeeded")["ended_s"].as_u64().unwrap())
        .collect();
    assert!(one["first_started_s"].as_u64().unwrap() >= ended[0]);
    assert!(
        all["first_started_s"].as_u64().unwrap() >= *ended.iter().max().unwrap(),
        "{all:#}"
    );
    // Once the array's jobs have left memory (one ended job kept), the store still has them:
    // listed by array, and a new dependency on the array is met from their records.
    up.wait_for(|u| jobs(u, &["--array", &a.to_string()]).len() < 3);
    let stored = jobs(&up, &["--array", &a.to_string(), "--all"]);
    assert_eq!(stored.len(), 3, "{stored:#?}");
    let late = up.submit(&["--after", &a.to_string(), "--", "true"]);
    up.wait_state(late, "succeeded");
    // History's --limit counts ended jobs only, however many run.
    let running = up.submit(&["--", "sleep", "300"]);
    up.wait_state(running, "running");
    let rows = up.json(&["history", "--limit", "2", "--format", "json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r["id"] != running), "{rows:#?}");
    up.ok(&["cancel", &running.to_string()]);
}
