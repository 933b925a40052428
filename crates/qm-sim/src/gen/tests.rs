//! The generators: seeded, read back by the loaders, at the asked load, with the documented
//! shapes and cadence.

use qm_core::{GpuAsk, PolicyKind, ANY_MODEL};

use super::big_gang::BigGang;
use super::shapes::Shapes;
use super::{mean_over_hours, offered_by_hour, split, Workload, WARM_USER};
use crate::cluster::ClusterSpec;
use crate::sim::{initial_state, simulate, SimOptions};
use crate::teamspec;
use crate::trace::{self, Format, TraceJob};

/// A small `big-gang`: 64 nodes, a 16-node gang every 12 hours, two days.
fn small_big_gang() -> BigGang {
    BigGang {
        nodes: 64,
        gang_gpus: 128,
        days: 2,
        ..BigGang::DEFAULT
    }
}

fn small_shapes() -> Shapes {
    Shapes {
        nodes: 16,
        days: 3,
        ..Shapes::DEFAULT
    }
}

fn gpus(job: &TraceJob) -> u64 {
    job.gpu.milli() * u64::from(job.tasks) / 1000
}

/// The three files of a workload.
fn files(w: &Workload) -> [String; 3] {
    [w.trace_csv(), w.teams_toml(), w.readme.clone()]
}

#[test]
fn the_same_seed_writes_the_same_bytes_and_another_seed_differs() {
    let a = small_big_gang().generate(7).unwrap();
    assert_eq!(files(&a), files(&small_big_gang().generate(7).unwrap()));
    let b = small_big_gang().generate(8).unwrap();
    assert_ne!(a.trace_csv(), b.trace_csv());
    assert_eq!(
        a.teams_toml(),
        b.teams_toml(),
        "teams do not depend on the seed"
    );

    let a = small_shapes().generate(7).unwrap();
    assert_eq!(files(&a), files(&small_shapes().generate(7).unwrap()));
    assert_ne!(
        a.trace_csv(),
        small_shapes().generate(8).unwrap().trace_csv()
    );
}

/// The trace reads back as exactly the generated jobs, the teams as the generated teams, and
/// both make a valid starting state on the cluster the replay command names.
fn reads_back(w: &Workload) {
    let csv = w.trace_csv();
    let read = trace::parse("trace.csv", &csv, Format::Csv).unwrap();
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(read.jobs, w.jobs);
    assert_eq!(w.jobs.first().map(|j| j.submit_s), Some(0), "no rebasing");
    let teams = teamspec::from_toml("teams.toml", &w.teams_toml()).unwrap();
    let guarantees: Vec<(String, u32)> = teams
        .iter()
        .map(|t| (t.name.clone(), t.quotas[ANY_MODEL].guaranteed))
        .collect();
    let wanted: Vec<(String, u32)> = w
        .teams
        .iter()
        .map(|t| (t.name.clone(), t.guaranteed))
        .collect();
    assert_eq!(guarantees, wanted);
    let cluster = ClusterSpec::from_arg(&w.cluster).unwrap();
    let total: u64 = w.teams.iter().map(|t| u64::from(t.guaranteed)).sum();
    assert_eq!(
        total,
        cluster.gpus(),
        "the guarantees share the whole cluster"
    );
    initial_state(
        cluster.nodes(),
        &teams,
        &SimOptions::new(PolicyKind::Default),
    )
    .unwrap();
    for j in &w.jobs {
        assert!(w.teams.iter().any(|t| t.name == j.team), "{j:?}");
        assert!(j.time_limit_s.unwrap() >= j.duration_s, "{j:?}");
        assert!(j.duration_s >= 1);
    }
    let command = w.replay_command(std::path::Path::new("out"));
    assert!(
        command.starts_with("qm sim run --trace out/trace.csv --cluster ")
            && command.contains(" --teams out/teams.toml --policy "),
        "{command}"
    );
    assert!(w
        .readme
        .contains(&w.replay_command(std::path::Path::new(""))));
}

#[test]
fn the_files_read_back_with_the_simulators_own_loaders() {
    reads_back(&small_big_gang().generate(1).unwrap());
    reads_back(&small_shapes().generate(1).unwrap());
}

#[test]
fn the_gang_comes_every_period_whole_and_not_preemptible() {
    let params = BigGang {
        days: 3,
        gang_every_h: 10,
        ..small_big_gang()
    };
    let w = params.generate(3).unwrap();
    let gangs: Vec<&TraceJob> = w.jobs.iter().filter(|j| j.team == "frontier").collect();
    let times: Vec<u64> = gangs.iter().map(|j| j.submit_s).collect();
    assert_eq!(times, [10, 20, 30, 40, 50, 60, 70].map(|h| h * 3600));
    for g in &gangs {
        assert_eq!((g.tasks, g.gpu), (16, GpuAsk::Whole(8)));
        assert!(!g.preemptible);
        assert!((3 * 3600..6 * 3600).contains(&g.duration_s), "{g:?}");
        assert!([4 * 3600, 8 * 3600].contains(&g.time_limit_s.unwrap()));
    }
    assert_eq!(w.teams[0].name, "frontier");
    assert_eq!(w.teams[0].guaranteed, 128);
    let others = w.jobs.iter().filter(|j| j.team != "frontier");
    for j in others {
        assert!(j.preemptible && j.tasks == 1, "{j:?}");
        assert!([1, 2, 4, 8].contains(&gpus(j)), "{j:?}");
    }
    // Guarantees: whole nodes, unequal, the biggest first.
    let rest: Vec<u32> = w.teams[1..].iter().map(|t| t.guaranteed).collect();
    assert!(rest.iter().all(|g| g % 8 == 0) && rest.windows(2).all(|p| p[0] >= p[1]));
    assert!(rest[0] > rest[7]);
}

#[test]
fn big_gang_defaults_offer_the_asked_load() {
    let params = BigGang::DEFAULT;
    let w = params.generate(42).unwrap();
    let cluster_gpus = 2048 * 8;
    assert_eq!(w.cluster, "2048x8");
    assert_eq!(w.teams[0].guaranteed, 2048);
    let hours = 7 * 24;
    let small: Vec<TraceJob> = w
        .jobs
        .iter()
        .filter(|j| j.team != "frontier")
        .cloned()
        .collect();
    let hourly = offered_by_hour(&small, cluster_gpus, hours);
    let day = mean_over_hours(&hourly, |h| (9..21).contains(&h));
    let night = mean_over_hours(&hourly, |h| !(9..21).contains(&h));
    // The gangs average 2048 GPUs x 4.5 h every 12 h: 768 GPUs.
    let asked_day = 1.05 - 768.0 / cluster_gpus as f64;
    assert!((day / asked_day - 1.0).abs() < 0.05, "{day} vs {asked_day}");
    assert!(night < 0.9 * day, "nights are quieter: {night} vs {day}");
    // Over the whole trace the rate is 87.7 / 98.25 of the daytime rate.
    let overall = mean_over_hours(&hourly, |_| true);
    let asked = asked_day * 87.708 / 98.25;
    assert!(
        (overall / asked - 1.0).abs() < 0.005,
        "{overall} vs {asked}"
    );
    // The warm start is about the small teams' average load, at 0 s.
    let warm: u64 = w
        .jobs
        .iter()
        .filter(|j| j.user == WARM_USER)
        .inspect(|j| assert_eq!(j.submit_s, 0))
        .map(gpus)
        .sum();
    let want = asked * cluster_gpus as f64;
    assert!((warm as f64 / want - 1.0).abs() < 0.01, "{warm} vs {want}");
}

#[test]
fn shapes_offer_the_asked_load_in_the_documented_shapes() {
    let w = Shapes::DEFAULT.generate(42).unwrap();
    assert_eq!(w.cluster, "48x8");
    let hours = 14 * 24;
    let all = mean_over_hours(&offered_by_hour(&w.jobs, 384, hours), |_| true);
    assert!((all / 0.8 - 1.0).abs() < 0.01, "{all}");
    let guaranteed: Vec<(&str, u32)> = w
        .teams
        .iter()
        .map(|t| (t.name.as_str(), t.guaranteed))
        .collect();
    assert_eq!(
        guaranteed,
        [
            ("dense", 16),
            ("gangs", 32),
            ("research", 168),
            ("tuning", 104),
            ("eval", 64)
        ]
    );
    for j in &w.jobs {
        let shape = (j.tasks, gpus(j) / u64::from(j.tasks));
        match j.team.as_str() {
            "dense" => assert!([(1, 4), (1, 8)].contains(&shape), "{j:?}"),
            "gangs" => assert!([(2, 8), (3, 8), (4, 8)].contains(&shape), "{j:?}"),
            _ => assert_eq!(shape, (1, 1), "{j:?}"),
        }
    }
    // Sweeps: many tuning jobs share their submission minute.
    let tuning: Vec<u64> = w
        .jobs
        .iter()
        .filter(|j| j.team == "tuning" && j.user != WARM_USER)
        .map(|j| j.submit_s / 600)
        .collect();
    let mut per_window = std::collections::BTreeMap::new();
    for t in &tuning {
        *per_window.entry(t).or_insert(0) += 1;
    }
    assert!(per_window.values().any(|&n| n >= 30), "a sweep of dozens");
    // Each team offers its guarantee times its demand factor, all scaled to the load, within
    // one submission's GPU-time.
    let weights = [16 * 65, 32 * 60, 168 * 90, 104 * 80, 64 * 70];
    let total: u32 = weights.iter().sum();
    for (team, weight) in ["dense", "gangs", "research", "tuning", "eval"]
        .into_iter()
        .zip(weights)
    {
        let share = f64::from(weight) / f64::from(total);
        let mine: Vec<TraceJob> = w.jobs.iter().filter(|j| j.team == team).cloned().collect();
        let load = mean_over_hours(&offered_by_hour(&mine, 384, hours), |_| true);
        assert!((load / (0.8 * share) - 1.0).abs() < 0.03, "{team}: {load}");
    }
}

#[test]
fn bad_parameters_are_refused_with_what_would_be_right() {
    let err = |r: Result<Workload, crate::cluster::SpecError>| r.unwrap_err().to_string();
    let e = err(BigGang {
        gang_gpus: 100,
        ..small_big_gang()
    }
    .generate(1));
    assert!(e.contains("multiple of --gpus-per-node 8"), "{e}");
    let e = err(BigGang {
        gang_gpus: 64 * 8,
        ..small_big_gang()
    }
    .generate(1));
    assert!(e.contains("room for the gang"), "{e}");
    let e = err(BigGang {
        load: 0.01,
        ..small_big_gang()
    }
    .generate(1));
    assert!(e.contains("--load above the gangs' own average"), "{e}");
    let e = err(Shapes {
        gpus_per_node: 3,
        ..small_shapes()
    }
    .generate(1));
    assert!(e.contains("even --gpus-per-node"), "{e}");
    let e = err(Shapes {
        nodes: 8,
        ..small_shapes()
    }
    .generate(1));
    assert!(e.contains("--dense-nodes"), "{e}");
}

/// A small big-gang replays under `default`: every job runs, the gangs included.
#[test]
fn a_small_big_gang_replays() {
    let params = BigGang {
        nodes: 32,
        gang_gpus: 64,
        days: 1,
        duration_scale: 0.25,
        ..BigGang::DEFAULT
    };
    let w = params.generate(5).unwrap();
    let cluster = ClusterSpec::from_arg(&w.cluster).unwrap();
    let teams = teamspec::from_toml("teams.toml", &w.teams_toml()).unwrap();
    let result = simulate(
        &w.jobs,
        &cluster,
        &teams,
        &SimOptions::new(PolicyKind::Default),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(result.jobs.iter().all(|j| j.rejected.is_none()));
    let gang = result
        .jobs
        .iter()
        .find(|j| j.team == "frontier")
        .expect("one gang at 12 h");
    assert!(gang.end_s.is_some(), "{gang:?}");
}

#[test]
fn split_is_proportional_and_exact() {
    assert_eq!(split(10, &[1, 1, 1]), vec![4, 3, 3]);
    assert_eq!(split(6, &[5, 3, 2]), vec![3, 2, 1]);
    assert_eq!(
        split(1792, &[16, 12, 8, 6, 5, 4, 3, 2]),
        vec![512, 384, 256, 192, 160, 128, 96, 64]
    );
}

/// A small source trace: two teams, a 16-GPU gang, a share of a GPU, a job too big for a
/// 4-GPU node, a job naming a GPU model.
fn source() -> crate::trace::Trace {
    let text = "\
submit_s,duration_s,tasks,gpus_per_task,gpu_milli,team,gpu_model,user
0,600,1,1,,a,,alice
30,7200,2,8,,b,,\"bob, jr\"
3700,60,1,0,250,a,,
4000,86400,1,8,,b,,
90000,3600,1,2,,a,V100,
";
    trace::parse("source.csv", text, Format::Csv).unwrap()
}

#[test]
fn a_resampled_trace_keeps_the_sources_jobs_at_the_asked_load() {
    use super::resample::Resample;
    let params = Resample {
        nodes: 8,
        gpus_per_node: 8,
        days: 3,
        load: 0.5,
    };
    let w = params.generate(&source(), "source.csv", 11).unwrap();
    assert_eq!(
        files(&w),
        files(&params.generate(&source(), "source.csv", 11).unwrap())
    );
    assert_ne!(
        w.trace_csv(),
        params
            .generate(&source(), "source.csv", 12)
            .unwrap()
            .trace_csv()
    );
    reads_back(&w);
    let all = mean_over_hours(&offered_by_hour(&w.jobs, 64, 72), |_| true);
    assert!((all / 0.5 - 1.0).abs() < 0.1, "{all}");
    let src = source();
    for j in &w.jobs {
        assert!(j.gpu_model.is_none(), "the V100 job is left out");
        let copy = src.jobs.iter().any(|s| {
            (
                s.tasks,
                s.gpu,
                s.team.as_str(),
                s.user.as_str(),
                s.cpu_milli,
            ) == (
                j.tasks,
                j.gpu,
                j.team.as_str(),
                j.user.as_str(),
                j.cpu_milli,
            ) && (s.duration_s == j.duration_s || j.user == WARM_USER)
        });
        assert!(copy || j.user == WARM_USER, "{j:?}");
    }
    assert!(w.jobs.iter().any(|j| j.gpu == GpuAsk::Milli(250)));
    assert!(w.jobs.iter().any(|j| j.user == "bob, jr"), "quoted back");
    // Arrivals keep the source's hours of the week: hours 0, 1 and 25 only.
    for j in w.jobs.iter().filter(|j| j.user != WARM_USER) {
        let hour = (j.submit_s / 3600) % (7 * 24);
        assert!([0, 1, 25].contains(&hour), "{j:?}");
    }
    let names: Vec<&str> = w.teams.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    let err = Resample {
        gpus_per_node: 1,
        ..params
    }
    .generate(
        &trace::parse(
            "big.csv",
            "submit_s,duration_s,tasks,gpus_per_task,team\n0,60,1,2,a\n",
            Format::Csv,
        )
        .unwrap(),
        "big.csv",
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no job whose tasks fit"), "{err}");
}

fn small_hoarding() -> super::hoarding::Hoarding {
    super::hoarding::Hoarding {
        nodes: 16,
        days: 2,
        placeholder_nodes: 2,
        ..super::hoarding::Hoarding::DEFAULT
    }
}

#[test]
fn hoarding_holds_idle_gpus_as_documented_and_reads_back() {
    use super::hoarding::PLACEHOLDER_USER;
    let w = small_hoarding().generate(3).unwrap();
    assert_eq!(
        files(&w),
        files(&small_hoarding().generate(3).unwrap()),
        "the same seed, the same bytes"
    );
    reads_back(&w);
    assert!(w
        .replay_command(std::path::Path::new(""))
        .contains("--idle-policy warn,yield,release"));
    // Every job has a utilisation; working jobs are above the idle threshold.
    assert!(w.jobs.iter().all(|j| j.util_pct.is_some()));
    let (placeholders, work): (Vec<&TraceJob>, Vec<&TraceJob>) =
        w.jobs.iter().partition(|j| j.user == PLACEHOLDER_USER);
    // Two whole-node placeholders a day, doing nothing, not preemptible, for a day.
    assert_eq!(placeholders.len(), 2 * 2);
    for p in &placeholders {
        assert_eq!((p.util_pct, p.idle_after_s), (Some(0), Some(0)));
        assert!(!p.preemptible && p.team == "hoard" && gpus(p) == 8 && p.duration_s == 86_400);
    }
    assert!(work.iter().all(|j| j.util_pct.is_some_and(|u| u >= 10)));
    // About a fifth of the others hold their GPUs idle after their work, for 30 min to 2 days.
    let idle: Vec<&&TraceJob> = work.iter().filter(|j| j.idle_after_s.is_some()).collect();
    let share = idle.len() as f64 / work.len() as f64;
    assert!((0.15..0.25).contains(&share), "{share}");
    for j in idle {
        let hold = j.duration_s - j.idle_after_s.unwrap();
        assert!((1_800..172_800).contains(&hold), "{j:?}");
        assert!(j.time_limit_s.unwrap() >= j.duration_s);
    }
    let e = super::hoarding::Hoarding {
        placeholder_nodes: 40,
        ..small_hoarding()
    }
    .generate(1)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--placeholder-nodes of at most hoard's guarantee"),
        "{e}"
    );
}

#[test]
fn idle_holds_can_be_added_to_any_trace() {
    let plain = small_shapes().generate(2).unwrap().jobs;
    let mut a = plain.clone();
    super::hoarding::add_idle(&mut a, 0.2, 9);
    let mut b = plain.clone();
    super::hoarding::add_idle(&mut b, 0.2, 9);
    assert_eq!(a, b, "the same seed, the same jobs");
    let mut held = 0;
    for (was, now) in plain.iter().zip(&a) {
        assert!(now.util_pct.is_some_and(|u| (10..=100).contains(&u)));
        match now.idle_after_s {
            None => assert_eq!(now.duration_s, was.duration_s),
            Some(work) => {
                held += 1;
                assert_eq!(work, was.duration_s, "the work is the job's own");
                assert!((1_800..172_800).contains(&(now.duration_s - work)));
                assert!(now.time_limit_s.unwrap() >= now.duration_s);
            }
        }
    }
    let share = f64::from(held) / plain.len() as f64;
    assert!((0.15..0.25).contains(&share), "{share}");
    // Jobs that already say how busy they are keep it.
    let mut again = a.clone();
    super::hoarding::add_idle(&mut again, 1.0, 1);
    assert_eq!(again, a);
}
