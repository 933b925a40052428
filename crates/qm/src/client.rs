//! The client subcommands: `submit`, `jobs`, `show`, `why`, `cancel`, `logs`, `nodes`,
//! `teams`, `admin`. The server and token come from `--server`/`--token`, else `QM_SERVER`/
//! `QM_TOKEN`, else the `client.json` that `qm up` wrote in `./.qm` (or `QM_DATA_DIR`).
//!
//! Exit codes: 0 success; 1 the server refused (its message is printed); 3 the server could
//! not be reached or no credentials were found; 4 `submit --wait` saw the job end unsuccessful.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use qm_proto::{
    ApiError, IdlePolicy, JobState, JobView, LogView, NodeView, Role, SubmitRequest,
    SubmitResponse, TeamRequest, TeamView, TokenRequest, TokenResponse, WhyView,
};
use serde::{Deserialize, Serialize};

/// What `qm up` writes for the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientFile {
    pub server: String,
    pub token: String,
}

impl ClientFile {
    pub fn load(path: &Path) -> Result<ClientFile, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, &serde_json::to_string_pretty(self).expect("JSON"))
    }
}

/// Writes a secret readable by its owner alone (0600 from creation, replaced atomically).
pub use qm_agent::write_private;

/// A failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

fn fail(code: u8, message: impl Into<String>) -> Box<dyn Error> {
    Box::new(CliError {
        code,
        message: message.into(),
    })
}

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The server's URL (default: $QM_SERVER, else the client.json of `qm up`); several,
    /// comma-separated, where servers share a database: the first that answers is asked.
    #[arg(long, global = true)]
    server: Option<String>,
    /// An API token (default: $QM_TOKEN, else the client.json of `qm up`).
    #[arg(long, global = true)]
    token: Option<String>,
    /// The private CA (PEM) that signed an `https://` server's certificate (default: $QM_CA,
    /// else the public web roots).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
}

pub struct Client {
    /// The servers to try, in order: a standby does not listen, so the first that accepts
    /// the connection leads.
    bases: Vec<String>,
    token: String,
    http: ureq::Agent,
}

impl Client {
    pub fn new(conn: &Conn) -> Result<Client, Box<dyn Error>> {
        let file = || {
            let dir = std::env::var("QM_DATA_DIR").unwrap_or_else(|_| ".qm".into());
            ClientFile::load(&PathBuf::from(dir).join("client.json")).ok()
        };
        let server = conn
            .server
            .clone()
            .or_else(|| std::env::var("QM_SERVER").ok())
            .or_else(|| file().map(|f| f.server));
        let token = conn
            .token
            .clone()
            .or_else(|| std::env::var("QM_TOKEN").ok())
            .or_else(|| file().map(|f| f.token));
        let ca = conn
            .ca
            .clone()
            .or_else(|| std::env::var_os("QM_CA").map(PathBuf::from));
        let server = server.filter(|s| s.split(',').any(|b| !b.trim().is_empty()));
        match (server, token) {
            (Some(list), Some(token)) => Ok(Client {
                bases: list
                    .split(',')
                    .map(|b| b.trim().trim_end_matches('/').to_string())
                    .filter(|b| !b.is_empty())
                    .collect(),
                token,
                http: qm_agent::http_agent(
                    ca.as_deref(),
                    Duration::from_secs(3),
                    Duration::from_secs(60),
                )
                .map_err(|e| fail(3, e))?,
            }),
            _ => Err(fail(
                3,
                "no server or token: run `qm up` here, or give --server and --token (or QM_SERVER and QM_TOKEN)",
            )),
        }
    }

    fn answer<R: serde::de::DeserializeOwned>(
        r: Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<R, Box<dyn Error>> {
        match r.map_err(|e| *e) {
            Ok(resp) => Ok(resp.into_json()?),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<ApiError>(&text)
                    .map(|e| e.message)
                    .unwrap_or(text);
                Err(fail(1, format!("the server refused ({code}): {msg}")))
            }
            Err(e) => Err(fail(3, format!("cannot reach the server: {e}"))),
        }
    }

    /// Sends to each server in turn until one that leads answers: a request that never
    /// connected was never received, and a standby does nothing with one, so trying the next
    /// is safe even for a submission.
    fn each(
        &self,
        send: impl Fn(&str) -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response, Box<ureq::Error>> {
        let mut last = None;
        for base in &self.bases {
            match send(base) {
                Err(e) if matches!(&*e, ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::ConnectionFailed) =>
                {
                    last = Some(e);
                }
                Err(e) if matches!(&*e, ureq::Error::Status(503, r) if r.header(qm_server::standby::STANDBY_HEADER).is_some()) =>
                {
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.expect("at least one server"))
    }

    pub fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> Result<R, Box<dyn Error>> {
        Self::answer(self.each(|base| {
            self.http
                .get(&format!("{base}{path}"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .call()
                .map_err(Box::new)
        }))
    }

    pub fn post<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, Box<dyn Error>> {
        Self::answer(self.each(|base| {
            self.http
                .post(&format!("{base}{path}"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .send_json(body)
                .map_err(Box::new)
        }))
    }
}

/// `2d`, `1h`, `30m`, `90s` or plain seconds.
pub(crate) fn duration_s(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('d') => (&t[..t.len() - 1], 86_400),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('s') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad duration {text:?}; expected seconds or 90s, 30m, 2h, 7d"))
}

/// CPU per task: cores (`4`, `0.5`) or milli-cores (`500m`), as milli-cores.
fn cpu_milli(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("bad --cpu {text:?}; expected cores (4, 0.5) or milli-cores (500m)");
    let milli = match t.strip_suffix('m') {
        Some(m) => m.parse::<u64>().map_err(|_| bad())?,
        None => {
            let cores: f64 = t.parse().map_err(|_| bad())?;
            if !(0.0..=1e9).contains(&cores) {
                return Err(bad());
            }
            (cores * 1000.0).round() as u64
        }
    };
    Ok(milli)
}

/// Memory per task: `16G`, `512M` or MiB, as MiB.
pub(crate) fn mem_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("bad --mem {text:?}; expected MiB or 512M, 16G, 1T");
    let (num, mult) = match t.chars().last() {
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// What a job asks for: `qm submit`'s flags, which a batch script's `#QM` lines may give
/// too (the command line wins). No defaults here: a flag not given anywhere takes its
/// default when the request is built.
#[derive(Args, Debug, Default, Clone)]
pub struct JobFlags {
    /// The team to run as (default: default).
    #[arg(long)]
    team: Option<String>,
    /// A Slurm partition: the team an admin mapped it to (`qm admin team set TEAM
    /// --partition NAME`), else the team of that name.
    #[arg(long, short = 'p')]
    partition: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Whole GPUs per task; 0 for a task that needs only CPU (then give --cpu).
    #[arg(long)]
    gpus: Option<u32>,
    /// CPU per task, reserved on its node: cores (4, 0.5) or milli-cores (500m).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory per task, reserved on its node: 16G, 512M or MiB.
    #[arg(long)]
    mem: Option<String>,
    /// A share of one GPU per task, in milli-GPUs (1..=1000), instead of whole GPUs.
    #[arg(long)]
    gpu_milli: Option<u32>,
    /// Tasks of the gang, started together or not at all (default 1).
    #[arg(long)]
    tasks: Option<u32>,
    #[arg(long)]
    gpu_model: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// 30m, 2h, 90s or seconds.
    #[arg(long, allow_hyphen_values = true)]
    time_limit: Option<String>,
    /// The job must not be preempted.
    #[arg(long)]
    no_preempt: bool,
    /// The job writes a checkpoint it resumes from this often (30m, 2h, 90s or seconds): if
    /// preempted it loses only the work since the last one, and the scheduler counts it so.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    checkpoint_every: Option<String>,
    /// Fence the job: a node that loses the server kills its tasks before the job may run
    /// elsewhere, so two attempts never run at once (for jobs that write shared storage).
    /// A server away for two thirds of the node timeout stops the job too.
    #[arg(long)]
    fence: bool,
    /// KEY=VALUE, repeatable.
    #[arg(long)]
    env: Vec<String>,
    #[arg(long)]
    workdir: Option<String>,
    /// Submit an array: one job per index, e.g. 0-99, 0-99:2, 1,5,9; %N runs at most N at
    /// once (0-99%8). Each job gets QM_ARRAY_JOB_ID and QM_ARRAY_INDEX.
    #[arg(long, value_name = "INDICES")]
    array: Option<String>,
    /// Start only after JOB ended: JOB or JOB:ok (succeeded), JOB:any (ended), JOB:failed
    /// (failed or cancelled); repeatable. A dependency that can no longer be met ends the job.
    #[arg(long, value_name = "JOB[:ok|any|failed]")]
    after: Vec<String>,
}

impl JobFlags {
    /// These flags, with `script`'s where these give none.
    fn or(self, script: JobFlags) -> JobFlags {
        let mut env = script.env;
        env.extend(self.env);
        let mut after = script.after;
        after.extend(self.after);
        // Team and partition both say where the job goes: the command line's, if it gives
        // either, wins whole.
        let (team, partition) = if self.team.is_some() || self.partition.is_some() {
            (self.team, self.partition)
        } else {
            (script.team, script.partition)
        };
        JobFlags {
            team,
            partition,
            name: self.name.or(script.name),
            gpus: self.gpus.or(script.gpus),
            cpu: self.cpu.or(script.cpu),
            mem: self.mem.or(script.mem),
            gpu_milli: self.gpu_milli.or(script.gpu_milli),
            tasks: self.tasks.or(script.tasks),
            gpu_model: self.gpu_model.or(script.gpu_model),
            priority: self.priority.or(script.priority),
            time_limit: self.time_limit.or(script.time_limit),
            no_preempt: self.no_preempt || script.no_preempt,
            checkpoint_every: self.checkpoint_every.or(script.checkpoint_every),
            fence: self.fence || script.fence,
            env,
            workdir: self.workdir.or(script.workdir),
            array: self.array.or(script.array),
            after,
        }
    }
}

/// A script's directives parsed as `qm submit` flags.
#[derive(clap::Parser, Debug)]
#[command(name = "#QM", no_binary_name = true, disable_help_flag = true)]
struct ScriptFlags {
    #[command(flatten)]
    job: JobFlags,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    job: JobFlags,
    /// Wait until the job ends, showing its progress on a terminal; the exit code says how
    /// it ended (4: failed or cancelled).
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    json: bool,
    /// A batch script and its arguments (`qm submit train.sh --lr 0.1`: its `#QM` and
    /// `#SBATCH` lines give flags, the command line wins), or, after `--`, a program and its
    /// arguments (`qm submit --gpus 2 -- python train.py`).
    #[arg(
        value_name = "SCRIPT [ARGS] | -- COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

impl SubmitArgs {
    /// Whether `args` came after a `--` (a program) rather than as a script and its
    /// arguments: they are then exactly what follows the first `--` of the command line.
    fn is_command(&self, raw: &[String]) -> bool {
        raw.iter()
            .position(|a| a == "--")
            .is_some_and(|i| raw[i + 1..] == self.args[..])
    }
}

#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// Take no new tasks on the node (what runs there keeps running).
    Drain { node: String },
    /// Take new tasks again.
    Resume { node: String },
    /// Forget the node's credential (a replaced machine, a lost credential file): its agent
    /// is refused from now on, and a join token may register the name again.
    Reset { node: String },
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Teams: create or change.
    Team {
        #[command(subcommand)]
        what: TeamCmd,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        what: TokenCmd,
    },
    /// Copies a cluster's whole history (events, snapshot, job payloads, tokens, nodes, exit
    /// codes, task logs) into a new, empty database and checks the copy row for row, e.g.
    /// from `qm up`'s SQLite file to PostgreSQL. Run it with the servers stopped.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The database to copy: sqlite:PATH or postgres://USER@HOST[:PORT]/DB.
    #[arg(long)]
    from: String,
    /// The new, empty database to copy into (the same forms).
    #[arg(long)]
    to: String,
    /// The private CA (PEM) that signed a PostgreSQL server's certificate, for a URL with
    /// `?sslmode=require`.
    #[arg(long, value_name = "FILE")]
    db_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TeamCmd {
    Create(TeamArgs),
    Set(TeamArgs),
}

#[derive(Args, Debug)]
pub struct TeamArgs {
    name: String,
    #[arg(long)]
    parent: Option<String>,
    /// Whole GPUs guaranteed.
    #[arg(long)]
    guaranteed: Option<u32>,
    #[arg(long)]
    max: Option<u32>,
    #[arg(long)]
    weight: Option<u32>,
    /// What happens to a job whose GPUs stay idle past the idle window: warn (flag it),
    /// yield (flag it; any job that needs its GPUs may preempt it) or release (yield, and
    /// stop and requeue it after --idle-release-after more; the default).
    #[arg(long)]
    idle_policy: Option<IdlePolicy>,
    /// With release: how long a job may stay idle beyond the idle window before it is
    /// stopped (e.g. 90m; default 1h).
    #[arg(long, value_name = "DURATION")]
    idle_release_after: Option<String>,
    /// The priorities members may give their jobs, LOW..HIGH (e.g. `-10..10`; default 0..0).
    #[arg(long, value_name = "LOW..HIGH", allow_hyphen_values = true, value_parser = parse_range)]
    priorities: Option<[i32; 2]>,
    /// The most CPUs the team's running jobs may hold at once, with GPUs or without
    /// (sub-teams' included); 0 removes the cap.
    #[arg(long, value_name = "CPUS")]
    max_cpu: Option<u32>,
    /// A Slurm partition name that means this team in `#SBATCH -p` (repeatable; replaces
    /// the team's list; `--partition ''` clears it).
    #[arg(long, value_name = "NAME")]
    partition: Vec<String>,
}

/// `LOW..HIGH`, both integers, LOW at most HIGH.
fn parse_range(s: &str) -> Result<[i32; 2], String> {
    let bad = || format!("bad range {s:?}; expected LOW..HIGH, e.g. 0..10 or -5..5");
    let (lo, hi) = s.split_once("..").ok_or_else(bad)?;
    let lo: i32 = lo.trim().parse().map_err(|_| bad())?;
    let hi: i32 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!("bad range {s:?}: {lo} is above {hi}"));
    }
    Ok([lo, hi])
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    Create {
        #[arg(long)]
        name: String,
        /// admin, member or join.
        #[arg(long)]
        role: Role,
        /// Teams a member token covers (repeatable).
        #[arg(long)]
        team: Vec<String>,
    },
}

/// A batch script's text and flags: its directives parsed, what was ignored said once on
/// standard error.
fn read_script(path: &Path) -> Result<(String, JobFlags), Box<dyn Error>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(1, format!("cannot read the script {}: {e}", path.display())))?;
    let d = crate::script::directives(&text)
        .map_err(|e| fail(1, format!("{}: {e}", path.display())))?;
    for line in &d.ignored {
        eprintln!("qm: {}: {line}", path.display());
    }
    let flags = <ScriptFlags as clap::Parser>::try_parse_from(&d.flags).map_err(|e| {
        fail(
            1,
            format!(
                "{}: a #QM or #SBATCH line gives {:?}, which qm submit does not take: {}",
                path.display(),
                d.flags.join(" "),
                e.render().to_string().lines().next().unwrap_or_default()
            ),
        )
    })?;
    Ok((text, flags.job))
}

/// Builds the request from the flags (and a script's).
fn submit_request(
    c: &Client,
    a: &SubmitArgs,
) -> Result<(SubmitRequest, Option<String>), Box<dyn Error>> {
    let raw: Vec<String> = std::env::args().collect();
    let (script, flags, command) = match a.args.split_first() {
        Some(_) if a.is_command(&raw) => (None, a.job.clone(), a.args.clone()),
        Some((path, args)) => {
            let path = Path::new(path);
            let (text, from_script) = read_script(path)?;
            let name = path
                .file_name()
                .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
            let mut command = vec![name];
            command.extend(args.iter().cloned());
            (Some(text), a.job.clone().or(from_script), command)
        }
        None => {
            return Err(fail(
                1,
                "nothing to run: give a batch script (qm submit train.sh) or a program after -- (qm submit --gpus 1 -- python train.py)",
            ))
        }
    };
    let mut env = BTreeMap::new();
    for kv in &flags.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| fail(1, format!("bad --env {kv:?}; expected KEY=VALUE")))?;
        env.insert(k.to_string(), v.to_string());
    }
    let team = match (&flags.team, &flags.partition) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => partition_team(c, p)?,
        (None, None) => "default".to_string(),
    };
    let array = flags
        .array
        .as_deref()
        .map(crate::script::array_spec)
        .transpose()
        .map_err(|e| fail(1, e))?
        .map(|(indices, max_running)| qm_proto::ArrayRequest {
            indices,
            max_running,
        });
    let after = flags
        .after
        .iter()
        .map(|v| crate::script::after_spec(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(1, e))?
        .into_iter()
        .map(|(job, when)| dependency(c, &job, when))
        .collect::<Result<Vec<_>, _>>()?;
    let req = SubmitRequest {
        team,
        name: flags.name.clone().unwrap_or_default(),
        tasks: Some(flags.tasks.unwrap_or(1)),
        gpus: flags.gpus,
        gpu_milli: flags.gpu_milli,
        gpu_model: flags.gpu_model.clone(),
        cpu_milli: flags
            .cpu
            .as_deref()
            .map(cpu_milli)
            .transpose()
            .map_err(|e| fail(1, e))?,
        mem_mib: flags
            .mem
            .as_deref()
            .map(mem_mib)
            .transpose()
            .map_err(|e| fail(1, e))?,
        priority: flags.priority,
        time_limit_s: flags
            .time_limit
            .as_deref()
            .map(duration_s)
            .transpose()
            .map_err(|e| fail(1, e))?,
        preemptible: Some(!flags.no_preempt),
        checkpoint_every_s: flags
            .checkpoint_every
            .as_deref()
            .map(duration_s)
            .transpose()
            .map_err(|e| fail(1, e))?,
        env,
        workdir: flags.workdir.clone().or_else(|| {
            std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string())
        }),
        command,
        user: None,
        fence: flags.fence,
        after,
        array,
        script: script.clone(),
    };
    Ok((req, script))
}

/// The team a Slurm partition names: the one an admin mapped it to, else the team of that
/// name.
fn partition_team(c: &Client, partition: &str) -> Result<String, Box<dyn Error>> {
    let teams: Vec<TeamView> = c.get("/api/v1/teams")?;
    if let Some(t) = teams
        .iter()
        .find(|t| t.partitions.iter().any(|p| p == partition))
    {
        return Ok(t.name.clone());
    }
    if teams.iter().any(|t| t.name == partition) {
        return Ok(partition.to_string());
    }
    Err(fail(
        1,
        format!(
            "partition {partition:?} is not mapped to a team; give --team, or ask an admin to map it (qm admin team set TEAM --partition {partition})"
        ),
    ))
}

pub fn submit(conn: &Conn, a: SubmitArgs) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let (req, _) = submit_request(&c, &a)?;
    let r: SubmitResponse = c.post("/api/v1/jobs", &req)?;
    if a.json {
        if r.jobs.is_empty() {
            println!("{}", serde_json::json!({ "job": r.job }));
        } else {
            println!("{}", serde_json::json!({ "job": r.job, "jobs": r.jobs }));
        }
    } else if r.jobs.is_empty() {
        println!("submitted job {}", r.job);
    } else {
        println!(
            "submitted array {} ({} jobs: {} to {})",
            r.job,
            r.jobs.len(),
            r.jobs[0],
            r.jobs[r.jobs.len() - 1]
        );
    }
    if a.wait {
        let ids = if r.jobs.is_empty() {
            vec![r.job]
        } else {
            r.jobs
        };
        return wait_for(&c, &ids);
    }
    Ok(())
}

/// Waits until every job of `ids` has ended. On a terminal it says what happens as it
/// happens (queued and why, started where, ended how); piped, it stays quiet. The exit code
/// is 4 if any ended unsuccessfully.
fn wait_for(c: &Client, ids: &[u64]) -> Result<(), Box<dyn Error>> {
    use std::io::IsTerminal;
    let tell = std::io::stderr().is_terminal();
    let mut said: BTreeMap<u64, String> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut left: Vec<u64> = ids.to_vec();
    while !left.is_empty() {
        let mut still = Vec::new();
        for &id in &left {
            let j: JobView = c.get(&format!("/api/v1/jobs/{id}"))?;
            let line = match j.state {
                JobState::Pending => {
                    let w: WhyView = c.get(&format!("/api/v1/jobs/{id}/why"))?;
                    format!("queued: {}", w.message)
                }
                JobState::Running => format!(
                    "running on {}",
                    j.placement
                        .iter()
                        .map(|t| format!("{} GPUs {:?}", t.node, t.gpus))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                JobState::Stopping => "stopping".to_string(),
                s => {
                    let codes: Vec<String> = j
                        .placement
                        .iter()
                        .filter_map(|t| t.exit_code.map(|c| c.to_string()))
                        .collect();
                    let detail = j
                        .events
                        .last()
                        .map(|e| e.detail.clone())
                        .unwrap_or_default();
                    let mut l = format!("{s}");
                    if !codes.is_empty() {
                        l += &format!(" (exit {})", codes.join(", "));
                    }
                    if !detail.is_empty() {
                        l += &format!(": {detail}");
                    }
                    l
                }
            };
            if tell && said.get(&id) != Some(&line) {
                eprintln!("job {id}: {line}");
                said.insert(id, line);
            }
            match j.state {
                JobState::Succeeded => {}
                JobState::Failed | JobState::Cancelled => {
                    bad.push(format!("job {id} ended {}", j.state))
                }
                _ => still.push(id),
            }
        }
        left = still;
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(if tell { 500 } else { 200 }));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(fail(4, bad.join("; ")))
    }
}

/// A query-string value, percent-encoded.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long ago, short, for a table column: `45s`, `12m`, `5h`, `3d`.
fn age(s: u64, now: u64) -> String {
    let d = now.saturating_sub(s);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

fn gpus_text(j: &JobView) -> String {
    if j.gpus > 0 {
        format!("{}x{}", j.tasks, j.gpus)
    } else if j.gpu_milli == 0 {
        format!("{}xcpu", j.tasks)
    } else {
        format!("{}x{}m", j.tasks, j.gpu_milli)
    }
}

/// Which jobs `qm jobs` lists.
#[derive(clap::Args, Debug)]
pub struct JobQuery {
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    /// pending, running, stopping, succeeded, failed or cancelled.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Also ended jobs the server no longer holds in memory (read from the store).
    #[arg(long)]
    pub all: bool,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Only jobs with a lower id (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    pub before: Option<u64>,
    /// Only the jobs of this array.
    #[arg(long, value_name = "ID")]
    pub array: Option<u64>,
    /// Only jobs of this name.
    #[arg(long)]
    pub name: Option<String>,
    /// One row per job of an array, instead of one row per array.
    #[arg(long)]
    pub expand: bool,
}

pub fn jobs(conn: &Conn, f: &JobQuery, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let jobs = list_jobs(
        &c,
        &[
            ("limit", Some(f.limit.to_string())),
            ("team", f.team.clone()),
            ("user", f.user.clone()),
            ("state", f.state.map(|s| s.to_string())),
            ("before", f.before.map(|b| b.to_string())),
            ("all", f.all.then(|| "true".into())),
            ("array", f.array.map(|a| a.to_string())),
            ("name", f.name.clone()),
        ],
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<12} {:<10} {:<8} {:<10} {:<8} NAME",
        "ID", "TEAM", "STATE", "GPUS", "ADMIT", "AGE"
    );
    let full = jobs.len() == f.limit;
    let last = jobs.last().map(|j| j.id);
    let now = unix_now();
    let mut arrays: BTreeMap<u64, Vec<&JobView>> = BTreeMap::new();
    if !f.expand && f.array.is_none() {
        for j in &jobs {
            if let Some(a) = j.array {
                arrays.entry(a.array).or_default().push(j);
            }
        }
    }
    let name_of = |j: &JobView| {
        if j.name.is_empty() {
            j.command.join(" ")
        } else {
            j.name.clone()
        }
    };
    for j in &jobs {
        if let Some(members) = j.array.and_then(|a| arrays.get(&a.array)) {
            // One row per array, where its newest job would be, with counts by state.
            if members[0].id != j.id {
                continue;
            }
            let lo = members
                .iter()
                .filter_map(|m| m.array)
                .map(|a| a.index)
                .min();
            let hi = members
                .iter()
                .filter_map(|m| m.array)
                .map(|a| a.index)
                .max();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for m in members {
                *counts.entry(m.state.to_string()).or_default() += 1;
            }
            let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let oldest = members
                .iter()
                .map(|m| m.submit_s)
                .min()
                .unwrap_or(j.submit_s);
            println!(
                "{:<12} {:<12} {:<10} {:<8} {:<10} {:<8} {} ({})",
                format!(
                    "{}_[{}-{}]",
                    j.array.map_or(j.id, |a| a.array),
                    lo.unwrap_or(0),
                    hi.unwrap_or(0)
                ),
                j.team,
                "array",
                gpus_text(j),
                "",
                age(oldest, now),
                name_of(j),
                counts.join(", ")
            );
            continue;
        }
        println!(
            "{:<12} {:<12} {:<10} {:<8} {:<10} {:<8} {}",
            job_name(j),
            j.team,
            j.state,
            gpus_text(j),
            j.admission.map_or("", |a| a.as_str()),
            age(j.submit_s, now),
            name_of(j)
        );
    }
    // A full page may have more behind it: say how to get the next one (on standard error,
    // so the table stays a table for scripts).
    if let (true, Some(last)) = (full, last) {
        eprintln!(
            "({} shown; older ones: the same command with --before {last}{})",
            f.limit,
            if f.all {
                ""
            } else {
                ", and --all for jobs no longer held in memory"
            }
        );
    }
    Ok(())
}

/// `qm history`: ended jobs, from the server's memory and the store's records.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// succeeded, failed or cancelled.
    #[arg(long)]
    state: Option<JobState>,
    /// Only jobs that ended in the last DURATION (7d, 12h, 30m).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only jobs that ended at least DURATION ago.
    #[arg(long, value_name = "DURATION")]
    until: Option<String>,
    /// At most this many, the newest (up to 10,000).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// table (for people), csv or json (RFC 3339 times and seconds, for programs).
    #[arg(long, default_value = "table")]
    format: HistoryFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HistoryFormat {
    Table,
    Csv,
    Json,
}

/// One ended job's accounting row.
#[derive(Serialize)]
struct HistoryRow {
    id: u64,
    job: String,
    name: String,
    team: String,
    user: String,
    state: String,
    submitted_at: String,
    submit_s: u64,
    started_at: Option<String>,
    started_s: Option<u64>,
    ended_at: String,
    ended_s: u64,
    wait_s: Option<u64>,
    run_s: u64,
    tasks: u32,
    gpus_per_task: f64,
    gpu_hours: f64,
    idle_gpu_hours: f64,
    exit_codes: Vec<i32>,
    preemptions: u32,
}

pub fn history(conn: &Conn, a: HistoryArgs) -> Result<(), Box<dyn Error>> {
    if let Some(s) = a.state.filter(|s| {
        matches!(
            s,
            JobState::Pending | JobState::Running | JobState::Stopping
        )
    }) {
        return Err(fail(
            1,
            format!("--state {s}: history lists ended jobs; give succeeded, failed or cancelled (qm jobs lists the others)"),
        ));
    }
    let now = unix_now();
    let ago = |d: &Option<String>| -> Result<Option<u64>, Box<dyn Error>> {
        d.as_deref()
            .map(|d| {
                duration_s(d)
                    .map_err(|e| fail(1, e))
                    .map(|s| now.saturating_sub(s.max(0) as u64))
            })
            .transpose()
    };
    let (since, until) = (ago(&a.since)?, ago(&a.until)?);
    let c = Client::new(conn)?;
    let jobs = list_jobs(
        &c,
        &[
            ("limit", Some(a.limit.to_string())),
            ("all", Some("true".into())),
            ("team", a.team.clone()),
            ("user", a.user.clone()),
            ("state", a.state.map(|s| s.to_string())),
            // Ended jobs only, in the window, so that `--limit` counts what is listed.
            ("ended_since", Some(since.unwrap_or(0).to_string())),
            ("ended_until", until.map(|u| u.to_string())),
        ],
    )?;
    let rows: Vec<HistoryRow> = jobs
        .iter()
        .filter_map(|j| {
            let end = j.ended_s?;
            if since.is_some_and(|s| end < s) || until.is_some_and(|u| end > u) {
                return None;
            }
            Some(HistoryRow {
                id: j.id,
                job: job_name(j),
                name: j.name.clone(),
                team: j.team.clone(),
                user: j.user.clone(),
                state: j.state.to_string(),
                submitted_at: qm_proto::rfc3339(j.submit_s),
                submit_s: j.submit_s,
                started_at: j.first_started_s.map(qm_proto::rfc3339),
                started_s: j.first_started_s,
                ended_at: qm_proto::rfc3339(end),
                ended_s: end,
                wait_s: j.first_started_s.map(|s| s.saturating_sub(j.submit_s)),
                run_s: j.ran_s,
                tasks: j.tasks,
                gpus_per_task: f64::from(j.gpu_milli) / 1000.0 * f64::from(j.gpus.max(1)),
                gpu_hours: j.gpu_s as f64 / 3600.0,
                idle_gpu_hours: j.idle_gpu_s as f64 / 3600.0,
                exit_codes: j.exit_codes.clone(),
                preemptions: j.preemptions,
            })
        })
        .collect();
    match a.format {
        HistoryFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        HistoryFormat::Csv => {
            println!("id,job,name,team,user,state,submitted_at,started_at,ended_at,wait_s,run_s,tasks,gpus_per_task,gpu_hours,idle_gpu_hours,exit_codes,preemptions");
            let field = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            for r in &rows {
                let codes: Vec<String> = r.exit_codes.iter().map(i32::to_string).collect();
                println!(
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{},{}",
                    r.id,
                    r.job,
                    field(&r.name),
                    field(&r.team),
                    field(&r.user),
                    r.state,
                    r.submitted_at,
                    r.started_at.clone().unwrap_or_default(),
                    r.ended_at,
                    r.wait_s.map_or(String::new(), |w| w.to_string()),
                    r.run_s,
                    r.tasks,
                    r.gpus_per_task,
                    r.gpu_hours,
                    r.idle_gpu_hours,
                    field(&codes.join(" ")),
                    r.preemptions
                );
            }
        }
        HistoryFormat::Table => {
            println!(
                "{:<10} {:<10} {:<10} {:<10} {:<16} {:>9} {:>9} {:>6} {:>8} {:>8} {:>5} {:>7}  NAME",
                "ID", "TEAM", "USER", "STATE", "SUBMITTED", "WAIT", "RUN", "GPUS", "GPU-H", "IDLE-H", "EXIT", "PREEMPT"
            );
            for r in &rows {
                println!(
                    "{:<10} {:<10} {:<10} {:<10} {:<16} {:>9} {:>9} {:>6} {:>8.2} {:>8.2} {:>5} {:>7}  {}",
                    r.job,
                    r.team,
                    r.user,
                    r.state,
                    when(r.submit_s, now),
                    r.wait_s.map_or("-".into(), span),
                    span(r.run_s),
                    format!("{}", r.gpus_per_task * f64::from(r.tasks)),
                    r.gpu_hours,
                    r.idle_gpu_hours,
                    r.exit_codes
                        .iter()
                        .max_by_key(|c| c.abs())
                        .map_or("-".into(), |c| c.to_string()),
                    r.preemptions,
                    r.name
                );
            }
            let gpu_h: f64 = rows.iter().map(|r| r.gpu_hours).sum();
            println!("{} jobs, {gpu_h:.2} GPU-hours", rows.len());
        }
    }
    Ok(())
}

/// `qm report`: each team's use over a window.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The window, back from now: 7d, 24h, 90m.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    since: String,
    #[arg(long)]
    json: bool,
}

pub fn report(conn: &Conn, a: ReportArgs) -> Result<(), Box<dyn Error>> {
    let window = duration_s(&a.since).map_err(|e| fail(1, e))?;
    if window <= 0 {
        return Err(fail(
            1,
            format!("--since {}: give a positive duration such as 7d", a.since),
        ));
    }
    let c = Client::new(conn)?;
    let r: qm_proto::ReportView = c.get(&format!("/api/v1/report?window_s={window}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let now = unix_now();
    println!(
        "from {} to {} ({} usage samples, one every {})",
        when(r.since_s, now),
        when(r.until_s, now),
        r.samples,
        span(r.sample_every_s)
    );
    if let Some(s) = r.jobs_counted_since_s {
        println!(
            "(more jobs ended in the window than one report reads: jobs, waits and preemptions count those that ended since {})",
            when(s, now)
        );
    }
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>7}",
        "TEAM",
        "GUARANTEED",
        "USED",
        "BORROWED",
        "LENT",
        "IDLE",
        "JOBS",
        "WAIT P50",
        "WAIT P99",
        "PREEMPTED",
        "CAUSED"
    );
    for t in &r.teams {
        println!(
            "{:<16} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>9} {:>9} {:>9} {:>7}",
            t.team,
            t.guaranteed_gpu_hours,
            t.used_gpu_hours,
            t.borrowed_gpu_hours,
            t.lent_gpu_hours,
            t.idle_gpu_hours,
            t.jobs,
            t.wait_p50_s.map_or("-".into(), span),
            t.wait_p99_s.map_or("-".into(), span),
            t.preemptions_suffered,
            t.preemptions_caused
        );
    }
    println!("(GPU-hours; waits from submission to first start)");
    Ok(())
}

/// Sorted ids as ranges: `12-17, 20`.
fn id_ranges(ids: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let lo = ids[i];
        while i + 1 < ids.len() && ids[i + 1] == ids[i] + 1 {
            i += 1;
        }
        out.push(if ids[i] == lo {
            lo.to_string()
        } else {
            format!("{lo}-{}", ids[i])
        });
        i += 1;
    }
    out.join(", ")
}

/// A dependency as people write it, as Slurm reads it: `12_7` is one job of array 12; `12`
/// is the whole array where 12 is an array's id (each of its jobs must succeed, or end), and
/// the job 12 otherwise.
fn dependency(
    c: &Client,
    job: &str,
    when: qm_proto::After,
) -> Result<qm_proto::DependencyView, Box<dyn Error>> {
    let id = resolve(c, job)?;
    // One that cannot be read is sent as it is, for the server to say why it is refused.
    let array = !job.contains('_')
        && c.get::<JobView>(&format!("/api/v1/jobs/{id}"))
            .is_ok_and(|j| j.array.is_some_and(|a| a.array == id));
    Ok(qm_proto::DependencyView {
        job: id,
        when,
        array,
    })
}

/// A job's id as people write it: `12`, or `12_7` for index 7 of array 12.
pub fn resolve(c: &Client, text: &str) -> Result<u64, Box<dyn Error>> {
    let bad = || {
        fail(
            1,
            format!("bad job id {text:?}; expected a number (12) or an array's job (12_7)"),
        )
    };
    match text.split_once('_') {
        None => text.trim().parse().map_err(|_| bad()),
        Some((array, index)) => {
            let array: u64 = array.parse().map_err(|_| bad())?;
            let index: u32 = index.parse().map_err(|_| bad())?;
            array_jobs(c, array)?
                .into_iter()
                .find(|j| j.array.is_some_and(|a| a.index == index))
                .map(|j| j.id)
                .ok_or_else(|| fail(1, format!("array {array} has no job of index {index}")))
        }
    }
}

/// The jobs of an array, those ended long ago included.
fn array_jobs(c: &Client, array: u64) -> Result<Vec<JobView>, Box<dyn Error>> {
    list_jobs(
        c,
        &[
            ("array", Some(array.to_string())),
            ("all", Some("true".into())),
            ("limit", Some("10000".into())),
        ],
    )
}

/// `GET /api/v1/jobs` with the filters that are given, their values encoded.
fn list_jobs(
    c: &Client,
    filters: &[(&str, Option<String>)],
) -> Result<Vec<JobView>, Box<dyn Error>> {
    let q: Vec<String> = filters
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    c.get(&format!("/api/v1/jobs?{}", q.join("&")))
}

/// A job as people name it: `12`, or `12_7` for an array's job.
fn job_name(j: &JobView) -> String {
    match j.array {
        Some(a) => format!("{}_{}", a.array, a.index),
        None => j.id.to_string(),
    }
}

pub fn show(conn: &Conn, job: &str, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let job = resolve(&c, job)?;
    let j: JobView = c.get(&format!("/api/v1/jobs/{job}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let now = unix_now();
    println!(
        "job {}  {}  team {}  user {}{}",
        job_name(&j),
        j.state,
        j.team,
        j.user,
        if j.array.is_some() {
            format!("  (job id {})", j.id)
        } else {
            String::new()
        }
    );
    if !j.name.is_empty() {
        println!("  name: {}", j.name);
    }
    match &j.script {
        Some(_) => println!("  script: {}", j.command.join(" ")),
        None => println!("  command: {}", j.command.join(" ")),
    }
    println!(
        "  asks: {} tasks x {}  priority {}  preemptible {}  time limit {}",
        j.tasks,
        if j.gpus > 0 {
            format!("{} GPUs", j.gpus)
        } else if j.gpu_milli == 0 {
            "no GPU".to_string()
        } else {
            format!("{} milli-GPUs", j.gpu_milli)
        },
        j.priority,
        j.preemptible,
        j.time_limit_s.map_or("none".into(), span)
    );
    if let Some(a) = j.array {
        println!(
            "  array {}, index {}{}",
            a.array,
            a.index,
            a.max_running.map_or(String::new(), |m| format!(
                ", at most {m} of its jobs at once"
            ))
        );
    }
    // Runs of consecutive ids with one condition (an array's jobs) on one line.
    let mut deps: Vec<(qm_proto::After, u64)> = j.after.iter().map(|d| (d.when, d.job)).collect();
    deps.sort_unstable_by_key(|&(w, id)| (w as u8, id));
    let mut i = 0;
    while i < deps.len() {
        let (when, lo) = deps[i];
        let mut hi = lo;
        while i + 1 < deps.len() && deps[i + 1] == (when, hi + 1) {
            i += 1;
            hi += 1;
        }
        if hi == lo {
            println!("  after job {lo} {}", after_text(when));
        } else {
            println!(
                "  after jobs {lo}-{hi} ({} jobs) {}",
                hi - lo + 1,
                after_text(when)
            );
        }
        i += 1;
    }
    if let Some(every) = j.checkpoint_every_s {
        println!("  checkpoints every {}", span(every));
    }
    println!("  submitted {}", when(j.submit_s, now));
    if let Some(s) = j.started_s {
        println!("  started {}", when(s, now));
    }
    if let Some(e) = j.ended_s {
        println!("  ended {}", when(e, now));
    }
    if let Some(a) = &j.admission {
        println!(
            "  running ({a}), attempt {}, utilisation {}",
            j.attempt,
            j.util_pct.map_or("-".into(), |u| format!("{u} %"))
        );
    }
    if let Some(idle) = &j.idle {
        println!("  {}", idle_text(idle, now));
    }
    for t in &j.placement {
        println!(
            "  task {}: {} GPUs {:?}{}",
            t.index,
            t.node,
            t.gpus,
            t.exit_code
                .map_or(String::new(), |c| format!(" exited {c}"))
        );
    }
    println!("  events:");
    for e in &j.events {
        println!("    {:<16} {:<10} {}", when(e.at_s, now), e.what, e.detail);
    }
    if let Some(script) = &j.script {
        println!("  the script:");
        for line in script.lines() {
            println!("    | {line}");
        }
    }
    Ok(())
}

fn after_text(w: qm_proto::After) -> &'static str {
    match w {
        qm_proto::After::Ok => "succeeded",
        qm_proto::After::Any => "ended",
        qm_proto::After::Failed => "failed",
    }
}

/// A duration for people: `90 s`, `45 min`, `12 h`, `2 d 3 h`.
pub(crate) fn span(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => {
            let (h, m) = (s / 3600, s % 3600 / 60);
            if m == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {m} min")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, s % 86_400 / 3600);
            if h == 0 {
                format!("{d} d")
            } else {
                format!("{d} d {h} h")
            }
        }
    }
}

/// A moment for people: within the hour, how long ago (or from now); older, the local date
/// and time.
pub(crate) fn when(at: u64, now: u64) -> String {
    if at.abs_diff(now) < 3600 {
        return from_now(at, now);
    }
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(at as i64, 0) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M").to_string()
        }
        chrono::LocalResult::None => qm_proto::rfc3339(at),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `s` seconds from now, or ago, in minutes (seconds under a minute; "just now" within a
/// few seconds, whichever side: the server's clock and this one may differ that much).
fn from_now(at: u64, now: u64) -> String {
    let d = at.abs_diff(now);
    if d < 5 {
        return "just now".into();
    }
    let span = if d < 60 {
        format!("{d} s")
    } else {
        format!("{} min", d.div_ceil(60))
    };
    if at >= now {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// One line on an idle job: since when, and what its team's idle policy does next.
fn idle_text(i: &qm_proto::IdleView, now: u64) -> String {
    let mut out = format!(
        "GPUs idle since {} (policy {})",
        from_now(i.since_s, now),
        i.policy
    );
    if !i.flagged {
        out += &format!(
            "; flagged {} unless busy again",
            from_now(i.flagged_at_s, now)
        );
        if i.policy != IdlePolicy::Warn {
            out += ", and from then any job that needs its GPUs may preempt it";
        }
    } else if i.yielding {
        out += "; flagged, yielding: any job that needs its GPUs may preempt it";
    } else {
        out += "; flagged";
    }
    if let Some(at) = i.release_at_s {
        out += &format!(
            "; released (stopped and requeued) {} unless busy again",
            from_now(at, now)
        );
    }
    out
}

pub fn why(conn: &Conn, job: &str, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let job = resolve(&c, job)?;
    let w: WhyView = c.get(&format!("/api/v1/jobs/{job}/why"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(());
    }
    println!("job {} is {}: {}", w.job, w.state, w.message);
    if let Some(eta) = w.eta_s {
        let now = unix_now();
        println!("estimated start: {}", when(eta.max(now), now));
    }
    Ok(())
}

/// Which jobs `qm cancel` cancels: the ids given, and those its filters match.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// Job ids: 12, an array's id (all its jobs) or one job of an array (12_7).
    #[arg(value_name = "JOB")]
    jobs: Vec<String>,
    /// Every job of this team that matches the other filters.
    #[arg(long)]
    team: Option<String>,
    /// Every job of this user that matches the other filters.
    #[arg(long)]
    user: Option<String>,
    /// Only jobs in this state: pending, running or stopping (default: any of them).
    #[arg(long)]
    state: Option<JobState>,
    /// Every job of this name that matches the other filters.
    #[arg(long)]
    name: Option<String>,
}

pub fn cancel(conn: &Conn, a: CancelArgs) -> Result<(), Box<dyn Error>> {
    let filtered = a.team.is_some() || a.user.is_some() || a.state.is_some() || a.name.is_some();
    if a.jobs.is_empty() && !filtered {
        return Err(fail(
            1,
            "nothing to cancel: give job ids (12, 12_7), or filters (--team, --user, --state, --name)",
        ));
    }
    if let Some(s) = a.state.filter(|s| {
        matches!(
            s,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }) {
        return Err(fail(
            1,
            format!("--state {s}: a job that has ended cannot be cancelled; give pending, running or stopping"),
        ));
    }
    let c = Client::new(conn)?;
    let mut ids: Vec<u64> = Vec::new();
    for text in &a.jobs {
        let id = resolve(&c, text)?;
        if !text.contains('_') {
            // An array's id stands for the whole array.
            let j: JobView = c.get(&format!("/api/v1/jobs/{id}"))?;
            if j.array.is_some_and(|m| m.array == id) {
                ids.extend(array_jobs(&c, id)?.into_iter().map(|j| j.id));
                continue;
            }
        }
        ids.push(id);
    }
    if filtered {
        let listed = list_jobs(
            &c,
            &[
                ("limit", Some("10000".into())),
                ("team", a.team.clone()),
                ("user", a.user.clone()),
                ("name", a.name.clone()),
                ("state", a.state.map(|s| s.to_string())),
            ],
        )?;
        let live = listed.into_iter().filter(|j| {
            matches!(
                j.state,
                JobState::Pending | JobState::Running | JobState::Stopping
            )
        });
        if a.jobs.is_empty() {
            ids.extend(live.map(|j| j.id));
        } else {
            // Ids and filters together: the ids that the filters match.
            let keep: std::collections::BTreeSet<u64> = live.map(|j| j.id).collect();
            ids.retain(|id| keep.contains(id));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let (mut done, mut already, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    // One request per 10,000 jobs, each cancelled in one commit.
    for chunk in ids.chunks(10_000) {
        let r: qm_proto::CancelReport = c.post(
            "/api/v1/jobs/cancel",
            &qm_proto::CancelRequest {
                jobs: chunk.to_vec(),
            },
        )?;
        done.extend(r.cancelled);
        already.extend(r.already_ended);
        refused.extend(
            r.refused
                .into_iter()
                .map(|x| format!("job {}: {}", x.job, x.reason)),
        );
    }
    if !done.is_empty() {
        println!("cancelled: {}", id_ranges(&done));
    }
    if !already.is_empty() {
        println!("already ended: {}", id_ranges(&already));
    }
    let (done, already) = (done.len(), already.len());
    println!(
        "{done} cancelled{}",
        if already > 0 {
            format!(", {already} had already ended")
        } else {
            String::new()
        }
    );
    if refused.is_empty() {
        Ok(())
    } else {
        Err(fail(1, refused.join("; ")))
    }
}

pub fn logs(conn: &Conn, job: &str, task: u32, follow: bool) -> Result<(), Box<dyn Error>> {
    use std::io::Write;
    let c = Client::new(conn)?;
    let job = resolve(&c, job)?;
    let mut offset = 0;
    loop {
        let l: LogView = c.get(&format!(
            "/api/v1/jobs/{job}/logs?task={task}&offset={offset}"
        ))?;
        // The bytes the task wrote, exactly (text or not).
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &l.data_b64)
            .map_err(|e| fail(1, format!("the server sent a log that is not base64: {e}")))?;
        std::io::stdout().write_all(&bytes)?;
        std::io::stdout().flush()?;
        offset = l.next;
        if !follow || (l.done && bytes.is_empty()) {
            return Ok(());
        }
        if bytes.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

pub fn nodes(conn: &Conn, cmd: Option<NodesCmd>, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    match cmd {
        Some(NodesCmd::Drain { node }) => {
            let n: NodeView = c.post(
                &format!("/api/v1/nodes/{node}/drain"),
                &serde_json::json!({}),
            )?;
            println!("node {} is {}", n.name, n.state);
            Ok(())
        }
        Some(NodesCmd::Reset { node }) => {
            let n: NodeView = c.post(
                &format!("/api/v1/nodes/{node}/reset"),
                &serde_json::json!({}),
            )?;
            println!(
                "node {}: credential forgotten; register it again with a join token (qm agent --join-token-file)",
                n.name
            );
            Ok(())
        }
        Some(NodesCmd::Resume { node }) => {
            let n: NodeView = c.post(
                &format!("/api/v1/nodes/{node}/resume"),
                &serde_json::json!({}),
            )?;
            println!("node {} is {}", n.name, n.state);
            Ok(())
        }
        None => {
            let nodes: Vec<NodeView> = c.get("/api/v1/nodes")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<9} {:<10} {:<5} USED",
                "NODE", "STATE", "MODEL", "GPUS"
            );
            for n in nodes {
                let used: f64 =
                    n.gpus_used_milli.iter().map(|&m| f64::from(m)).sum::<f64>() / 1000.0;
                println!(
                    "{:<20} {:<9} {:<10} {:<5} {used:.1}",
                    n.name, n.state, n.gpu_model, n.gpus
                );
            }
            Ok(())
        }
    }
}

pub fn teams(conn: &Conn, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let teams: Vec<TeamView> = c.get("/api/v1/teams")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&teams)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>6} {:>7} {:>9} {:>6} {:>10} {:>10} {:>10} {:>7}",
        "TEAM",
        "GUARANTEED",
        "MAX",
        "USED",
        "BORROWED",
        "IDLE",
        "IDLE GPU-H",
        "(LAST 7D)",
        "HOME NODES",
        "MAX CPU"
    );
    fn walk(teams: &[TeamView], parent: Option<&str>, depth: usize) {
        for t in teams.iter().filter(|t| t.parent.as_deref() == parent) {
            let g: u32 = t.guaranteed.values().sum();
            let max = t
                .max
                .values()
                .flatten()
                .max()
                .map_or("-".into(), |m| m.to_string());
            let max_cpu = t
                .max_cpu_milli
                .map_or("-".into(), |m| format!("{}", m as f64 / 1000.0));
            println!(
                "{:<20} {:>10} {:>6} {:>7.1} {:>9.1} {:>6.1} {:>10.2} {:>10.2} {:>10} {:>7}",
                format!("{}{}", "  ".repeat(depth), t.name),
                g,
                max,
                t.used_milli as f64 / 1000.0,
                t.borrowed_milli as f64 / 1000.0,
                t.idle_milli as f64 / 1000.0,
                t.idle_gpu_hours,
                t.idle_gpu_hours_7d,
                t.home.len(),
                max_cpu
            );
            walk(teams, Some(&t.name), depth + 1);
        }
    }
    walk(&teams, None, 0);
    let now = unix_now();
    for t in &teams {
        for i in &t.idle_jobs {
            println!("{}: job {}: {}", t.name, i.job, idle_text(i, now));
        }
    }
    Ok(())
}

/// `qm admin migrate`: works on the databases, not through a server.
pub fn migrate(m: MigrateArgs) -> Result<(), Box<dyn Error>> {
    // A PostgreSQL password comes from PGPASSWORD, never the command line.
    let access = qm_store::DbAccess {
        password: std::env::var("PGPASSWORD").ok(),
        ca: m.db_ca.clone(),
    };
    let mut from =
        qm_store::open(&m.from, &access).map_err(|e| format!("--from {}: {e}", m.from))?;
    let mut to = qm_store::open(&m.to, &access).map_err(|e| format!("--to {}: {e}", m.to))?;
    let copied =
        qm_store::migrate(from.as_mut(), to.as_mut()).map_err(|e| format!("--to {}: {e}", m.to))?;
    println!("copied and checked: {}", copied.summary());
    Ok(())
}

pub fn cluster(conn: &Conn, json: bool) -> Result<(), Box<dyn Error>> {
    let c = Client::new(conn)?;
    let v: qm_proto::ClusterView = c.get("/api/v1/cluster")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("store: {}", v.store);
    match &v.leader {
        None => println!("one server (no lease: SQLite)"),
        Some(l) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            println!(
                "leader: {} (term {}), leading for {:.0} s, lease renewed to {:.1} s from now",
                l.holder,
                l.term,
                (now - l.since_s).max(0.0),
                l.expires_s - now
            );
        }
    }
    for s in &v.standbys {
        println!("standby: {} (seen {:.1} s ago)", s.holder, s.seen_s_ago);
    }
    Ok(())
}

pub fn admin(conn: &Conn, cmd: AdminCmd) -> Result<(), Box<dyn Error>> {
    let cmd = match cmd {
        AdminCmd::Migrate(m) => return migrate(m),
        cmd => cmd,
    };
    let c = Client::new(conn)?;
    match cmd {
        AdminCmd::Team { what } => {
            let (a, create) = match what {
                TeamCmd::Create(a) => (a, true),
                TeamCmd::Set(a) => (a, false),
            };
            if !create {
                let teams: Vec<TeamView> = c.get("/api/v1/teams")?;
                if !teams.iter().any(|t| t.name == a.name) {
                    return Err(fail(
                        1,
                        format!(
                            "no team {:?}; create it with `qm admin team create`",
                            a.name
                        ),
                    ));
                }
            }
            let t: TeamView = c.post(
                "/api/v1/admin/teams",
                &TeamRequest {
                    name: a.name,
                    parent: a.parent,
                    guaranteed: a.guaranteed,
                    max: a.max,
                    weight: a.weight,
                    idle_policy: a.idle_policy,
                    idle_release_after_s: a
                        .idle_release_after
                        .as_deref()
                        .map(|d| {
                            duration_s(d).and_then(|v| {
                                u64::try_from(v).map_err(|_| {
                                    format!("--idle-release-after {d}: give a positive duration such as 90m")
                                })
                            })
                        })
                        .transpose()
                        .map_err(|e| fail(1, e))?,
                    priorities: a.priorities,
                    max_cpu: a.max_cpu,
                    partitions: (!a.partition.is_empty()).then(|| {
                        a.partition
                            .iter()
                            .filter(|p| !p.is_empty())
                            .cloned()
                            .collect()
                    }),
                },
            )?;
            println!("team {}: guaranteed {:?}", t.name, t.guaranteed);
        }
        AdminCmd::Migrate(_) => unreachable!("migrate needs no server: handled above"),
        AdminCmd::Token {
            what: TokenCmd::Create { name, role, team },
        } => {
            let r: TokenResponse = c.post(
                "/api/v1/admin/tokens",
                &TokenRequest {
                    name,
                    role,
                    teams: team,
                },
            )?;
            println!("{}", r.token);
        }
    }
    Ok(())
}
