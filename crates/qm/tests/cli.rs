//! The `qm` binary as users run it: real processes, real files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn qm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .output()
        .expect("qm runs")
}

/// Runs `qm` with `args`, which must succeed, and parses what it prints as JSON.
fn qm_json(args: &[&str]) -> serde_json::Value {
    let out = qm(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fixture() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../qm-sim/tests/fixtures/small.csv")
        .display()
        .to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version_and_help() {
    let out = qm(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("qm "));
    let out = qm(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("bench") && help.contains("sim"), "{help}");
}

#[test]
fn sim_run_writes_a_report_for_each_policy() {
    let dir = tmp("report");
    let out = qm(&[
        "sim",
        "run",
        "--trace",
        &fixture(),
        "--cluster",
        "4x8",
        "--teams",
        "auto",
        "--policy",
        "default,fifo,static",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for p in ["| default |", "| fifo |", "| static |"] {
        assert!(table.contains(p), "{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["policies"].as_array().unwrap().len(), 3);
    assert_eq!(json["policies"][0]["rejected"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_run_perturb_adds_the_spread_of_perturbed_replays_and_keeps_the_rest() {
    let dir = tmp("perturb");
    let run = |name: &str, extra: &[&str]| {
        let out_dir = dir.join(name);
        let mut args = vec![
            "sim",
            "run",
            "--trace",
            &fixture(),
            "--cluster",
            "4x8",
            "--policy",
            "default,static",
            "--out",
            out_dir.to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = qm(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read_to_string(out_dir.join("report.json")).unwrap();
        let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
        (json, md, String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (plain, _, _) = run("plain", &["--threads", "1"]);
    let (zero, _, _) = run("zero", &["--perturb", "0"]);
    assert_eq!(zero, plain, "--perturb 0 is the plain run, byte for byte");
    let (json, md, stdout) = run("three", &["--perturb", "3", "--threads", "2"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(
        json["policies"], plain["policies"],
        "the replay in the trace's order is unchanged"
    );
    assert_eq!(json["team_comparisons"], plain["team_comparisons"]);
    let p = &json["perturbed"];
    assert_eq!(p["replays"], 3);
    assert_eq!(p["seeds"].as_array().unwrap().len(), 3);
    for policy in p["policies"].as_array().unwrap() {
        assert_eq!(policy["replays"].as_array().unwrap().len(), 3);
        let wait = &policy["figures"]["wait_all_mean_s"];
        assert!(wait["mean"].as_f64().unwrap() > 0.0 && wait["sd"].is_number());
        assert_eq!(policy["figures"]["rejected"]["mean"], 1.0);
        assert_eq!(policy["figures"]["rejected"]["sd"], 0.0);
    }
    assert!(!p["team_comparisons"].as_array().unwrap().is_empty());
    assert!(md.contains("## Perturbed replays") && md.contains("wait mean CV"));
    assert!(stdout.contains("Over 3 perturbed replays"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_says_what_is_valid_and_fails() {
    let dir = tmp("bad");
    let out_dir = dir.join("out");
    let out_arg = out_dir.to_str().unwrap();
    let out = qm(&[
        "sim",
        "run",
        "--trace",
        &fixture(),
        "--cluster",
        "4x8",
        "--policy",
        "default,lottery",
        "--out",
        out_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("valid policies: default, fifo, static"),
        "{err}"
    );

    let out = qm(&[
        "sim",
        "run",
        "--trace",
        &fixture(),
        "--format",
        "xml",
        "--cluster",
        "4x8",
        "--out",
        out_arg,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown format fails");
    assert!(
        err.contains("csv") && err.contains("philly") && err.contains("openb"),
        "{err}"
    );

    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        "submit_s,duration_s,tasks,gpus_per_task,team\n0,60,1,1,a\n5,abc,1,1,a\n",
    )
    .unwrap();
    let out = qm(&[
        "sim",
        "run",
        "--trace",
        bad.to_str().unwrap(),
        "--format",
        "csv",
        "--cluster",
        "4x8",
        "--out",
        out_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv:3") && err.contains("duration_s"),
        "{err}"
    );

    let out = qm(&[
        "sim",
        "run",
        "--trace",
        &fixture(),
        "--cluster",
        "4by8",
        "--out",
        out_arg,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a malformed cluster fails");
    assert!(err.contains("COUNTxGPUS"), "{err}");
    assert!(
        !out_dir.exists(),
        "nothing is written when the input is refused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_plan_prints_its_json_figures() {
    let json = qm_json(&[
        "bench",
        "plan",
        "--nodes",
        "64",
        "--running",
        "50",
        "--pending",
        "300",
        "--runs",
        "3",
        "--json",
    ]);
    for key in [
        "nodes",
        "gpus",
        "running",
        "pending",
        "plan_ms_median",
        "plan_ms_p99",
        "state_mib",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["gpus"], 512);
    assert!(
        json["plan_ms_p99"].is_null(),
        "3 runs give no 99th percentile: {json}"
    );
}

/// `qm bench fleet` starts a real server, drives it with simulated agents over HTTP and
/// reports what it measured.
#[test]
fn bench_fleet_measures_a_real_server_under_simulated_agents() {
    let f = qm_json(&[
        "bench",
        "fleet",
        "--nodes",
        "64",
        "--rate",
        "20",
        "--seconds",
        "3",
        "--warmup",
        "2",
        "--json",
    ]);
    assert_eq!(f["gpus"], 512, "{f}");
    assert_eq!(f["errors"], 0, "{f}");
    for key in [
        "submissions_per_s",
        "heartbeats_per_s",
        "server_cpu_cores",
        "server_peak_rss_mib",
        "plans_per_s",
        "events_per_s",
        "store_mib",
    ] {
        assert!(f[key].as_f64().unwrap() > 0.0, "{key}: {f}");
    }
    for spread in ["submit_answer", "submit_to_launch", "heartbeat", "query"] {
        assert!(f[spread]["n"].as_u64().unwrap() > 0, "{spread}: {f}");
        assert!(f[spread]["p99_ms"].as_f64().unwrap() >= f[spread]["p50_ms"].as_f64().unwrap());
    }
}

/// `qm bench history` runs jobs through a real server past its retention, restarts it after
/// SIGKILL and reads the first job back from its record.
#[test]
fn bench_history_forgets_restarts_and_reads_back() {
    let f = qm_json(&[
        "bench",
        "history",
        "--jobs",
        "300",
        "--every",
        "100",
        "--nodes",
        "4",
        "--server-arg=--retain-ended-max=50",
        "--json",
    ]);
    let samples = f["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{f}");
    assert_eq!(samples.last().unwrap()["jobs"], 300, "{f}");
    assert!(f["forgotten"].as_f64().unwrap() >= 200.0, "{f}");
    assert!(f["ended_held"].as_f64().unwrap() <= 55.0, "{f}");
    assert!(f["events"].as_f64().unwrap() >= 900.0, "{f}");
    assert!(f["restart_s"].as_f64().unwrap() > 0.0, "{f}");
}

#[test]
fn the_format_is_sniffed_from_the_header() {
    let dir = tmp("sniff");
    let trace = dir.join("jobs.txt");
    std::fs::write(
        &trace,
        "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n0,8,0,100,vgg16,120,10\n1,1,10,100,alexnet,60,0\n",
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = qm(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--cluster",
        "2x4",
        "--policy",
        "default",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["format"], "tiresias");
    // The 8-GPU job ran (as a gang of two 4-GPU tasks: no 4-GPU node holds it whole) and
    // took all 8 GPUs of both nodes: the 1-GPU job submitted at 10 s waited for its end at
    // 120 s.
    let run = &json["policies"][0];
    assert_eq!(run["jobs"], 2);
    assert_eq!(run["rejected"], 0);
    assert_eq!(run["unfinished"], 0);
    assert_eq!(run["wait_max_s"], 110.0);
    assert_eq!(run["makespan_s"], 180);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_pack_compares_policies_over_seeds() {
    let dir = tmp("pack");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qm-sim/tests/fixtures");
    let nodes = fixtures.join("pack_nodes.csv").display().to_string();
    let pods = fixtures.join("pack_pods.csv").display().to_string();
    let out = qm(&[
        "sim",
        "pack",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--seeds",
        "1-3",
        "--policy",
        "random,bestfit,fgd,quartermaster",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| fgd |") && table.contains("| quartermaster |"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let policies = json["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 4);
    for p in policies {
        let at = p["alloc_pct_at_130"].as_f64().unwrap();
        assert!(at > 0.0 && at <= 100.0);
        assert_eq!(p["curve"].as_array().unwrap().len(), 131);
        assert_eq!(p["seeds"].as_array().unwrap().len(), 3);
    }
    assert!(dir.join("report.md").exists() && dir.join("alloc.svg").exists());

    let bad = qm(&[
        "sim",
        "pack",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--policy",
        "tetris",
        "--out",
        dir.join("bad").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("valid policies: random, dotprod"), "{err}");
    assert!(!dir.join("bad").exists(), "nothing written when refused");
}

#[test]
fn sim_gen_writes_a_workload_that_sim_run_replays() {
    let dir = tmp("gen");
    let out_dir = dir.join("shapes");
    let gen = |out: &std::path::Path| {
        qm(&[
            "sim",
            "gen",
            "shapes",
            "--nodes",
            "12",
            "--days",
            "1",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let out = gen(&out_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // stdout is the replay command, with the paths as given.
    let command = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let trace = out_dir.join("trace.csv");
    let teams = out_dir.join("teams.toml");
    let report = out_dir.join("report");
    assert_eq!(
        command,
        format!(
            "qm sim run --trace {} --cluster 12x8 --teams {} --policy default,static --out {}",
            trace.display(),
            teams.display(),
            report.display()
        )
    );
    let readme = std::fs::read_to_string(out_dir.join("README.md")).unwrap();
    assert!(
        readme.contains("qm sim run --trace trace.csv --cluster 12x8 --teams teams.toml")
            && readme.contains("qm sim gen shapes --seed 7 --nodes 12"),
        "{readme}"
    );
    // The same seed writes the same bytes.
    let again = dir.join("again");
    assert!(gen(&again).status.success());
    for file in ["trace.csv", "teams.toml", "README.md"] {
        assert_eq!(
            std::fs::read(out_dir.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file}"
        );
    }
    // The printed command replays it.
    let args: Vec<&str> = command.split(' ').skip(1).collect();
    let out = qm(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let policies = json["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        assert_eq!(p["rejected"], 0, "{p}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for team in [
        "| dense |",
        "| gangs |",
        "| research |",
        "| tuning |",
        "| eval |",
    ] {
        assert!(md.contains(team), "{md}");
    }

    let bad = qm(&[
        "sim",
        "gen",
        "big-gang",
        "--gang-gpus",
        "100",
        "--out",
        dir.join("bad").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("multiple of --gpus-per-node 8"), "{err}");
    assert!(!dir.join("bad").exists(), "nothing written when refused");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The agent takes its join token only from a file its owner alone may read (or stdin), and
/// says how to fix one that others may read; nothing on the command line or in a variable.
#[test]
fn the_agent_refuses_a_join_token_file_others_may_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("join-file");
    let file = dir.join("join-token");
    std::fs::write(&file, "qm_secret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.join("agent");
    let args = [
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--data-dir",
        data.to_str().unwrap(),
        "--join-token-file",
        file.to_str().unwrap(),
    ];
    let out = qm(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may be read by others (mode 644)"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // The old ways are gone: no --join-token argument, no QM_JOIN_TOKEN variable.
    let out = qm(&[
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--join-token",
        "qm_x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join-token-file"));
}

#[test]
fn client_flags_appear_only_on_commands_that_talk_to_a_server_and_completions_are_written() {
    let help = |args: &[&str]| {
        let out = qm(args);
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for cmd in [
        &["server", "--help"][..],
        &["agent", "--help"],
        &["sim", "pack", "--help"],
        &["up", "--help"],
    ] {
        let h = help(cmd);
        assert!(!h.contains("--token"), "{cmd:?} offers --token:\n{h}");
    }
    for cmd in [
        &["submit", "--help"][..],
        &["jobs", "--help"],
        &["admin", "team", "create", "--help"],
        &["history", "--help"],
    ] {
        let h = help(cmd);
        assert!(
            h.contains("--server") && h.contains("--token"),
            "{cmd:?}:\n{h}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = help(&["completions", shell]);
        assert!(
            script.contains("submit") && script.contains("array"),
            "{shell}"
        );
    }
    let out = qm(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn an_agent_says_which_address_other_nodes_reach_it_at() {
    use std::io::{BufRead, BufReader};
    let dir = tmp("agent-address");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["agent", "--server", "http://127.0.0.1:9", "--data-dir"])
        .arg(dir.join("agent"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let addr = first
        .strip_prefix("qm agent: other nodes reach this one at ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{first}"));
    let ip: std::net::IpAddr = addr.parse().unwrap();
    // A host with a route out names the address on it; one without says loopback will not do.
    if ip.is_loopback() {
        assert!(first.contains("cannot use it"), "{first}");
    } else {
        assert!(
            first.contains("primary address") || first.contains("route"),
            "{first}"
        );
    }
    // Given, it is used as given, without a word.
    let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args([
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--address",
            "10.1.2.3",
            "--data-dir",
        ])
        .arg(dir.join("agent2"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("reach this one at"));
}

/// `qm bench dashboard --screenshots` replays a day, serves it and photographs every page in
/// Chromium, as a member of two teams, and fails on any console error.
#[test]
fn bench_dashboard_photographs_every_page() {
    let dir = tmp("shots");
    let out = qm(&[
        "bench",
        "dashboard",
        "--nodes",
        "64",
        "--running",
        "150",
        "--pending",
        "300",
        "--screenshots",
        dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("photographed as a member"), "{text}");
    for page in [
        "overview",
        "teams",
        "queue",
        "queue-filtered",
        "nodes",
        "nodes-search",
        "jobs",
        "job",
        "report",
    ] {
        let png = std::fs::read(dir.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{page}.png is not a PNG");
        assert!(png.len() > 10_000, "{page}.png is nearly empty");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Perturbed replays of a trace with idle holds give the idle figures as mean ± SD too.
#[test]
fn sim_run_perturb_gives_the_idle_figures_spread() {
    let dir = tmp("perturb-idle");
    let gen = dir.join("gen");
    let out = qm(&[
        "sim",
        "gen",
        "hoarding",
        "--nodes",
        "16",
        "--placeholder-nodes",
        "2",
        "--days",
        "2",
        "--out",
        gen.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = dir.join("report");
    let out = qm(&[
        "sim",
        "run",
        "--trace",
        gen.join("trace.csv").to_str().unwrap(),
        "--cluster",
        "16x8",
        "--teams",
        gen.join("teams.toml").to_str().unwrap(),
        "--policy",
        "default",
        "--idle-policy",
        "warn,release",
        "--perturb",
        "2",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let policies = json["perturbed"]["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        let f = &p["figures"];
        assert!(f["idle_gpu_hours"]["mean"].as_f64().unwrap() > 0.0, "{f:#}");
        assert!(f["idle_gpu_hours_while_waiting"]["sd"].is_number(), "{f:#}");
        assert_eq!(f["busy_stopped_as_idle"]["mean"], 0.0);
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("## Idle GPUs, mean of the 2 perturbed replays"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_run_tells_the_story_of_one_job_when_asked() {
    let dir = tmp("explain");
    let run = |id: &str| {
        qm(&[
            "sim",
            "run",
            "--trace",
            &fixture(),
            "--cluster",
            "4x8",
            "--policy",
            "default,static",
            "--explain-job",
            id,
            "--out",
            dir.to_str().unwrap(),
        ])
    };
    let out = run("9999");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--explain-job 9999: the trace has no job with that id"),
        "{err}"
    );
    assert!(!dir.join("report.json").exists(), "nothing written");
    let out = run("17");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let story = std::fs::read_to_string(dir.join("explain-job-17.md")).unwrap();
    assert!(story.starts_with("# Job 17 of the trace"), "{story}");
    for section in ["## default", "## static"] {
        let part = story
            .split(section)
            .nth(1)
            .unwrap_or_else(|| panic!("{story}"));
        let part = part.split("\n## ").next().unwrap();
        // Submitted at 7,200 s: its first line is then, and it runs to its end.
        assert!(part.contains("| 7200 | 0.00 h |"), "{story}");
        assert!(part.contains("starts"), "{story}");
        assert!(part.contains("has ended: succeeded"), "{story}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
