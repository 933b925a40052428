//! `qm bench e2e`: Quartermaster end to end, as users drive it, with real processes.
//!
//! 1. Submissions per second through the HTTP API: a server with its store (a SQLite file,
//!    or with `--db postgres://...` a new database on that PostgreSQL server) and no agents; `--clients` threads submit `--submissions` jobs, each durable before its answer.
//! 2. `--jobs` jobs of `true` on `--agents` agents (real `qm agent` processes) with `--gpus`
//!    simulated GPUs each, submitted one after another by one client (as a script calling
//!    `sbatch` would): from the first submission to the last completion.
//! 3. With `--slurm SCRIPT` (the peer's `bench.sh`), the same jobs on a real Slurm in the same
//!    run, and the two side by side.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use qm_proto::{JobView, SubmitRequest, SubmitResponse};
use qm_server::{Server, ServerConfig};
use qm_store::SqliteStore;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct E2eArgs {
    #[arg(long, default_value_t = 2000)]
    submissions: usize,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    #[arg(long, default_value_t = 4)]
    agents: usize,
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// The Slurm peer's bench.sh (e.g. /tmp/slurm-recipe/bench.sh), run with --jobs.
    #[arg(long)]
    slurm: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// `sqlite` (a file in a temporary directory), or a PostgreSQL server's URL
    /// (`postgres://USER@HOST:PORT/DB`, a user that may create databases): each run uses a
    /// new database there.
    #[arg(long, default_value = "sqlite")]
    db: String,
}

#[derive(Serialize)]
struct Figures {
    submissions: usize,
    clients: usize,
    submissions_per_s: f64,
    /// `sqlite` or `postgres`.
    store: String,
    jobs: usize,
    agents: usize,
    gpus_per_agent: u32,
    submit_all_s: f64,
    all_finished_s: f64,
    slurm_submit_all_s: Option<f64>,
    slurm_all_finished_s: Option<f64>,
}

struct Running {
    _rt: tokio::runtime::Runtime,
    url: String,
    admin: String,
    join: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(name: &str, gpus_total: u32, db: &str) -> Result<Running, Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("qm-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let store: Box<dyn qm_store::Store> = if db == "sqlite" {
        Box::new(SqliteStore::open(&dir.join("qm.db"))?)
    } else {
        let fresh = qm_store::pg::throwaway_database(db)?;
        let target = qm_store::PgTarget {
            url: fresh,
            password: std::env::var("PGPASSWORD").ok(),
            ca: None,
        };
        // As `qm server` writes: under a lease, every write fenced by its term (the lease
        // outlasts the run, so it needs no renewing here).
        let store = qm_store::PgStore::connect(&target)?;
        store
            .lead("qm bench e2e", 3600.0)?
            .map_err(|l| format!("{} leads this new database?", l.holder))?;
        Box::new(store)
    };
    let server = Server::open(store, ServerConfig::default()).map_err(|e| format!("{e:?}"))?;
    let admin = server
        .create_token("bench", "admin", &[])
        .map_err(|e| format!("{e:?}"))?;
    let join = server
        .create_token("agents", "join", &[])
        .map_err(|e| format!("{e:?}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let s2: Arc<Server> = server.clone();
    rt.spawn(s2.run());
    rt.spawn(async move {
        let _ = axum::serve(listener, qm_server::app(server)).await;
    });
    let r = Running {
        _rt: rt,
        url,
        admin,
        join,
        _dir: TempDir(dir),
    };
    let http = ureq::agent();
    http.post(&format!("{}/api/v1/admin/teams", r.url))
        .set("Authorization", &format!("Bearer {}", r.admin))
        .send_json(serde_json::json!({"name": "bench", "guaranteed": gpus_total}))?;
    Ok(r)
}

fn job_request() -> SubmitRequest {
    SubmitRequest {
        team: "bench".into(),
        gpus: Some(1),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    }
}

pub fn run(a: E2eArgs) -> Result<(), Box<dyn Error>> {
    // 1. Submission rate. Nodes are registered (so jobs can run) but no agent runs: the
    //    scheduler places jobs while submissions come in, the launches wait in outboxes.
    let r = start("rate", a.gpus * a.agents as u32, &a.db)?;
    for i in 0..a.agents {
        ureq::post(&format!("{}/agent/v1/register", r.url))
            .set("Authorization", &format!("Bearer {}", r.join))
            .send_json(serde_json::json!({
                "name": format!("node-{i:02}"), "gpus": a.gpus, "gpu_model": "SIM",
                "gpu_mem_mib": 81920, "cpu_milli": 64000, "mem_mib": 262144,
                "labels": {}, "topology": [], "address": "127.0.0.1"
            }))?;
    }
    let per = a.submissions.div_ceil(a.clients.max(1));
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = (0..a.clients.max(1))
            .map(|_| {
                let (url, token) = (r.url.clone(), r.admin.clone());
                s.spawn(move || -> Result<(), String> {
                    let http = ureq::agent();
                    for _ in 0..per {
                        http.post(&format!("{url}/api/v1/jobs"))
                            .set("Authorization", &format!("Bearer {token}"))
                            .send_json(job_request())
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a client panicked".to_string())??;
        }
        Ok(())
    })?;
    let submitted = per * a.clients.max(1);
    let rate = submitted as f64 / t0.elapsed().as_secs_f64();
    drop(r);

    // 2. Jobs of `true` on real agents.
    let r = start("jobs", a.gpus * a.agents as u32, &a.db)?;
    let exe = std::env::current_exe()?;
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let dir = r._dir.0.join(format!("agent-{i}"));
        let join_file = r._dir.0.join("join-token");
        crate::client::write_private(&join_file, &r.join)?;
        agents.push(
            std::process::Command::new(&exe)
                .args(["agent", "--server", &r.url, "--gpus", &a.gpus.to_string()])
                .args(["--name", &format!("node-{i:02}"), "--data-dir"])
                .arg(&dir)
                .arg("--join-token-file")
                .arg(&join_file)
                .arg("--allow-root-tasks")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let http = ureq::agent();
    let get = |path: &str| -> Result<serde_json::Value, Box<dyn Error>> {
        Ok(http
            .get(&format!("{}{path}", r.url))
            .set("Authorization", &format!("Bearer {}", r.admin))
            .call()?
            .into_json()?)
    };
    let until = Instant::now() + Duration::from_secs(30);
    while get("/api/v1/nodes")?.as_array().map_or(0, |n| n.len()) < a.agents {
        if Instant::now() > until {
            return Err("the agents did not register within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let mut last = 0;
    for _ in 0..a.jobs {
        let resp: SubmitResponse = http
            .post(&format!("{}/api/v1/jobs", r.url))
            .set("Authorization", &format!("Bearer {}", r.admin))
            .send_json(job_request())?
            .into_json()?;
        last = resp.job;
    }
    let submit_all_s = t0.elapsed().as_secs_f64();
    loop {
        use qm_proto::JobState;
        let busy = [JobState::Pending, JobState::Running, JobState::Stopping]
            .iter()
            .try_fold(false, |acc, st| {
                get(&format!("/api/v1/jobs?state={st}&limit=1"))
                    .map(|v| acc || v.as_array().is_some_and(|a| !a.is_empty()))
            })?;
        if !busy {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err("the jobs did not finish within 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_finished_s = t0.elapsed().as_secs_f64();
    let last_job: JobView = serde_json::from_value(get(&format!("/api/v1/jobs/{last}"))?)?;
    let failed = get("/api/v1/jobs?state=failed&limit=1")?;
    for mut ag in agents {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(ag.id() as i32, libc::SIGTERM) };
        let _ = ag.wait();
    }
    if last_job.state != qm_proto::JobState::Succeeded
        || failed.as_array().is_some_and(|f| !f.is_empty())
    {
        return Err(format!("jobs failed (the last one is {})", last_job.state).into());
    }
    drop(r);

    // 3. Slurm, same jobs.
    let (mut slurm_submit, mut slurm_all) = (None, None);
    if let Some(script) = &a.slurm {
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(a.jobs.to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // "N=1000 gres= sleep=0: submit 10.20s (98 jobs/s), all finished after 17.50s"
        let num_after = |key: &str| {
            text.split(key)
                .nth(1)
                .and_then(|t| t.trim_start().split('s').next())
                .and_then(|n| n.trim().parse::<f64>().ok())
        };
        slurm_submit = num_after("submit ");
        slurm_all = num_after("finished after ");
        if slurm_all.is_none() {
            return Err(format!(
                "unexpected output from {}: {text}{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    let f = Figures {
        submissions: submitted,
        clients: a.clients.max(1),
        submissions_per_s: rate,
        store: if a.db == "sqlite" {
            "sqlite"
        } else {
            "postgres"
        }
        .into(),
        jobs: a.jobs,
        agents: a.agents,
        gpus_per_agent: a.gpus,
        submit_all_s,
        all_finished_s,
        slurm_submit_all_s: slurm_submit,
        slurm_all_finished_s: slurm_all,
    };
    if a.json {
        println!("{}", serde_json::to_string(&f)?);
    } else {
        println!(
            "submissions: {} over HTTP from {} clients, {:.0} per second (each durable in {} before its answer)",
            f.submissions, f.clients, f.submissions_per_s, f.store
        );
        println!(
            "{} jobs of `true` on {} agents x {} simulated GPUs, submitted one by one:",
            f.jobs, f.agents, f.gpus_per_agent
        );
        println!(
            "  quartermaster  submitted in {:>6.2} s, all finished after {:>6.2} s",
            f.submit_all_s, f.all_finished_s
        );
        if let (Some(s), Some(e)) = (f.slurm_submit_all_s, f.slurm_all_finished_s) {
            println!("  slurm          submitted in {s:>6.2} s, all finished after {e:>6.2} s");
            println!(
                "  quartermaster is {:.1}x faster end to end",
                e / f.all_finished_s
            );
        }
    }
    Ok(())
}
