//! Job traces: the public GPU-cluster traces and our own CSV, read into [`TraceJob`]s.
//!
//! [`load`] reads a file and [`parse`] a string. Both return a [`Trace`]: the jobs, sorted by
//! submission, and the rows that are valid but cannot become a simulated job ([`Skipped`]), so
//! that no row is dropped without being counted. A malformed row is a [`TraceError`] that names
//! the file, the line (the header is line 1), the column, what was expected and what was found:
//!
//! ```text
//! philly.csv:12: column `duration`: expected a non-negative number of seconds, found "abc"
//! ```
//!
//! # What every format shares
//!
//! - A header line names the columns. Columns are found by name, so their order does not
//!   matter, and columns this module does not know are ignored.
//! - Fields are separated by commas and trimmed of surrounding whitespace. A field may be
//!   enclosed in double quotes, which keeps commas and whitespace inside it; a doubled `""`
//!   inside stands for one quote. A quoted field cannot span lines. Every row has as many
//!   fields as the header. Blank lines are skipped.
//! - Submission times are rebased: the first submission of a job in the trace is at 0 s.
//! - Job ids are the 1-based numbers of the data rows in file order (blank lines are not
//!   counted, skipped rows are), except where a generic CSV has an `id` column. So ids have
//!   gaps where rows were skipped.
//! - Times are whole seconds: durations and time limits round up (a job runs at least 1 s),
//!   submissions round down. A zero duration is skipped, not an error.
//! - CPU and memory are per task, like the GPU ask.
//!
//! # Generic CSV ([`Format::Csv`])
//!
//! Our own format. Only the first five columns of the table are required.
//!
//! | column | meaning | when absent or empty |
//! |---|---|---|
//! | `submit_s` | submission time, seconds from any origin | required |
//! | `duration_s` | run time in seconds; 0 is skipped | required |
//! | `tasks` | gang size, at least 1 | required |
//! | `gpus_per_task` | whole GPUs per task; 0 with `gpu_milli` asks for a share | required |
//! | `team` | the team the job is charged to | required |
//! | `id` | job id, unique in the file; if the column exists, every row needs one | row number |
//! | `gpu_milli` | a share of one GPU, 1..=999 milli-GPUs (with `gpus_per_task` 0 or 1) | whole GPUs |
//! | `cpu_milli` | milli-CPUs per task | 1000 × GPUs, at least 1000 |
//! | `mem_mib` | memory per task, MiB | 4096 × GPUs, rounded up |
//! | `user` | the submitting user | empty |
//! | `priority` | higher runs first within its class (an `i32`) | 0 |
//! | `gpu_model` | the only GPU model the job may run on | any model |
//! | `time_limit_s` | wall-clock limit in seconds, at least 1 | none |
//! | `preemptible` | `true`/`false` (also `yes`/`no`, `1`/`0`) | `true` |
//!
//! The GPU ask: `gpus_per_task` n ≥ 1 with `gpu_milli` empty or 1000 is n whole GPUs. With
//! `gpus_per_task` 0 or 1, a `gpu_milli` m in 1..=999 is a share of m/1000 of one GPU, and
//! `gpus_per_task` 0 with `gpu_milli` 1000 is one whole GPU. Any other `gpu_milli` is an error.
//! A row that asks for no GPU at all is skipped as CPU-only.
//!
//! # Philly ([`Format::Philly`])
//!
//! The flattened Philly job table of the Pollux (OSDI '21) artifact, with the columns
//! `timestamp,duration,num_gpus,gpu_time,cluster`.
//!
//! - `timestamp` (`YYYY-MM-DD HH:MM:SS`, UTC) is the submission; `duration` is in seconds and may
//!   have a fraction; `gpu_time` is ignored.
//! - The team is the `cluster` column (a virtual-cluster hash); the user is empty.
//! - Up to 8 GPUs are one task of `num_gpus` whole GPUs. More than 8 become a gang of tasks of
//!   8 GPUs each when `num_gpus` divides by 8, else of 4 GPUs when it divides by 4, else of 1
//!   GPU. So 16 GPUs are 2 × 8, 12 are 3 × 4 and 24 are 3 × 8.
//! - Each task gets 4000 milli-CPUs and 16384 MiB per GPU. There is no time limit.
//! - Rows with a zero duration are skipped.
//!
//! # Alibaba openb pods ([`Format::Openb`])
//!
//! The pod lists of Alibaba's cluster-trace-gpu-v2023 (`openb_pod_list_*.csv`), with the columns
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,`
//! `deletion_time,scheduled_time`. Each pod is a job of one task.
//!
//! - The submission is `creation_time`. The duration is `deletion_time` − `scheduled_time`.
//!   Pods still running when the trace was taken carry the snapshot's end as their deletion time,
//!   so their durations are cut short.
//! - `num_gpu` 1 with `gpu_milli` below 1000 is a share of `gpu_milli` milli-GPUs; any other pod
//!   asks for `num_gpu` whole GPUs. CPU and memory come from `cpu_milli` and `memory_mib`.
//! - `gpu_spec` is empty for any model, or a `|`-separated list of acceptable models. A job
//!   carries one model only, so the **first** model of the list is taken.
//! - The team is `qos` (`LS`, `BE`, ...), or `default` where it is empty. Priority is 0.
//! - Skipped: CPU-only pods (`num_gpu` 0), pods never scheduled (empty `scheduled_time`), pods
//!   without a `deletion_time`, and pods whose duration is not positive.
//! - The `multigpu` pod lists have no timestamps; they are refused for the missing
//!   `creation_time` column.
//!
//! # Tiresias ([`Format::Tiresias`])
//!
//! The job lists of the Tiresias (NSDI '19) simulator, such as `60_job.csv` with the columns
//! `job_id,num_gpu,submit_time,iterations,model_name,duration,interval`. Only `num_gpu`,
//! `submit_time` and `duration` (seconds) are read; `job_id` is 0-based there, so ids are row
//! numbers as everywhere. `num_gpu` whole GPUs are split into a gang as for Philly. The team
//! comes from a `team` column and the user from a `user` column where the file has them (the
//! published ones do not), else `default` and empty. CPU and memory are the generic CSV's
//! defaults. Zero durations are skipped.
//!
//! # Time limits
//!
//! None of the public traces carries time limits, and our CSV may leave them out. The loader
//! keeps `time_limit_s` as `None` then; since the planner never backfills a job without a limit
//! ahead of a reservation, the caller should give each such job [`default_time_limit`]: its
//! duration rounded up to a power-of-two number of hours (1 h, 2 h, 4 h, 8 h, ...), at least
//! 1 h. The rule stands in for users' round, generous requests: every limit holds its job, a job
//! of more than an hour gets less than twice its duration, and there are few distinct limits.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use qm_core::GpuAsk;

/// The layout of a trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Our own CSV; see the module documentation.
    Csv,
    /// The Philly job table of the Pollux artifact (`timestamp,duration,num_gpus,...`).
    Philly,
    /// The pod lists of Alibaba's cluster-trace-gpu-v2023, `openb_pod_list_*.csv`.
    Openb,
    /// The job lists of the Tiresias simulator, such as `60_job.csv`.
    Tiresias,
}

impl Format {
    /// Every format, in the order their names are listed.
    pub const ALL: [Format; 4] = [Format::Csv, Format::Philly, Format::Openb, Format::Tiresias];

    /// The name that [`FromStr`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Philly => "philly",
            Format::Openb => "openb",
            Format::Tiresias => "tiresias",
        }
    }

    /// Guesses the format from the file name alone (not its directories): a name containing
    /// `philly` is [`Format::Philly`], `openb` or `pod_list` [`Format::Openb`], `tiresias`
    /// [`Format::Tiresias`], anything else [`Format::Csv`]. The Tiresias files are named like
    /// `60_job.csv`, so they need their format named.
    pub fn guess(path: &Path) -> Format {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.contains("philly") {
            Format::Philly
        } else if name.contains("openb") || name.contains("pod_list") {
            Format::Openb
        } else if name.contains("tiresias") {
            Format::Tiresias
        } else {
            Format::Csv
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown format name; its message lists the valid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let valid: Vec<&str> = Format::ALL.iter().map(|format| format.name()).collect();
        write!(
            f,
            "unknown trace format {:?}; valid formats: {}",
            self.0,
            valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownFormat {}

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|format| format.name() == wanted.as_str())
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// One job of a trace. CPU, memory and the GPU ask are per task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceJob {
    /// 1-based row number in file order, or the generic CSV's `id` column.
    pub id: u64,
    /// Seconds after the first submission in the trace.
    pub submit_s: u64,
    /// At least 1.
    pub duration_s: u64,
    /// Gang size.
    pub tasks: u32,
    pub gpu: GpuAsk,
    pub cpu_milli: u64,
    pub mem_mib: u64,
    pub team: String,
    pub user: String,
    pub priority: i32,
    pub gpu_model: Option<String>,
    /// `None` where the trace has none; see [`default_time_limit`].
    pub time_limit_s: Option<u64>,
    pub preemptible: bool,
}

/// A row that is valid but not a job the simulator can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based, the header being line 1.
    pub line: usize,
    pub why: String,
}

/// A loaded trace.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Trace {
    /// Sorted by `(submit_s, id)`.
    pub jobs: Vec<TraceJob>,
    /// In file order.
    pub skipped: Vec<Skipped>,
}

/// Why a trace could not be read. Its message reads
/// ``file:line: column `name`: expected ..., found ...`` (without the column where the fault
/// is not in one field), or `file: cannot read the trace: ...` for an I/O error.
#[derive(Debug)]
pub struct TraceError {
    /// The file name as given to [`load`] or [`parse`].
    pub file: String,
    /// 1-based, the header being line 1; 0 for an I/O error.
    pub line: usize,
    pub column: Option<String>,
    pub expected: String,
    /// What was there, as printed: a field's text is quoted.
    pub found: String,
    /// The I/O error, where the file could not be read at all.
    pub io: Option<std::io::Error>,
}

impl TraceError {
    pub(crate) fn at(
        file: &str,
        line: usize,
        column: Option<&str>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> TraceError {
        TraceError {
            file: file.to_string(),
            line,
            column: column.map(str::to_string),
            expected: expected.into(),
            found: found.into(),
            io: None,
        }
    }

    pub(crate) fn io(file: &str, error: std::io::Error) -> TraceError {
        TraceError {
            file: file.to_string(),
            line: 0,
            column: None,
            expected: "a readable trace file".to_string(),
            found: error.to_string(),
            io: Some(error),
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(error) = &self.io {
            return write!(f, "{}: cannot read the trace: {error}", self.file);
        }
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(column) = &self.column {
            write!(f, "column `{column}`: ")?;
        }
        write!(f, "expected {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io
            .as_ref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

/// Reads a trace file; errors name the file as `path` spells it.
/// Guesses the format from the file's header line, then from its name: a header with
/// `timestamp` and `cluster` is Philly, one with `creation_time` and `gpu_milli` openb pods,
/// one with `num_gpu` and `submit_time` Tiresias, one with `submit_s` our CSV.
pub fn sniff(path: &Path) -> Format {
    let header = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().next().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let has = |col: &str| header.split(',').any(|c| c.trim().trim_matches('"') == col);
    if has("timestamp") && has("cluster") {
        Format::Philly
    } else if has("creation_time") && has("gpu_milli") {
        Format::Openb
    } else if has("num_gpu") && has("submit_time") {
        Format::Tiresias
    } else if has("submit_s") {
        Format::Csv
    } else {
        Format::guess(path)
    }
}

pub fn load(path: &Path, format: Format) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TraceError::io(&name, error))?;
    parse(&name, &text, format)
}

/// Reads a trace from `text`; `name` stands for the file in error messages.
pub fn parse(name: &str, text: &str, format: Format) -> Result<Trace, TraceError> {
    let table = Table::read(name, text)?;
    let mut out = Builder::default();
    match format {
        Format::Csv => parse_csv(name, &table, &mut out)?,
        Format::Philly => parse_philly(name, &table, &mut out)?,
        Format::Openb => parse_openb(name, &table, &mut out)?,
        Format::Tiresias => parse_tiresias(name, &table, &mut out)?,
    }
    Ok(out.finish())
}

/// The time limit for a job whose trace gives none: `duration_s` rounded up to a power-of-two
/// number of hours (1 h, 2 h, 4 h, ...), at least 1 h.
pub fn default_time_limit(duration_s: u64) -> u64 {
    duration_s
        .div_ceil(3600)
        .max(1)
        .checked_next_power_of_two()
        .and_then(|hours| hours.checked_mul(3600))
        .unwrap_or(u64::MAX)
}

/// Collects jobs with their submission times as the trace gives them, then rebases and sorts.
#[derive(Default)]
struct Builder {
    jobs: Vec<(i64, TraceJob)>,
    skipped: Vec<Skipped>,
}

impl Builder {
    fn job(&mut self, submit: i64, job: TraceJob) {
        self.jobs.push((submit, job));
    }

    fn skip(&mut self, line: usize, why: impl Into<String>) {
        self.skipped.push(Skipped {
            line,
            why: why.into(),
        });
    }

    fn finish(self) -> Trace {
        let first = self
            .jobs
            .iter()
            .map(|(submit, _)| *submit)
            .min()
            .unwrap_or(0);
        let mut jobs: Vec<TraceJob> = self
            .jobs
            .into_iter()
            .map(|(submit, mut job)| {
                job.submit_s = submit.abs_diff(first);
                job
            })
            .collect();
        jobs.sort_by_key(|job| (job.submit_s, job.id));
        Trace {
            jobs,
            skipped: self.skipped,
        }
    }
}

const SECONDS: &str = "a non-negative number of seconds";
const POSITIVE_SECONDS: &str = "a positive number of seconds";
pub(crate) const GPU_COUNT: &str = "a whole number of GPUs";
const TASK_COUNT: &str = "a whole number of tasks, at least 1";
pub(crate) const CPU_MILLI: &str = "a whole number of milli-CPUs";
pub(crate) const MEM_MIB: &str = "a whole number of MiB";
pub(crate) const GPU_MILLI: &str = "a number of milli-GPUs from 0 to 1000";
/// Seconds beyond this do not fit the signed arithmetic of the rebase.
const MAX_SECONDS: u64 = i64::MAX as u64;

/// Per GPU of a Philly job.
const PHILLY_CPU_MILLI_PER_GPU: u64 = 4000;
const PHILLY_MEM_MIB_PER_GPU: u64 = 16384;

/// The generic defaults, per task: 1000 milli-CPUs per GPU (at least 1000).
fn default_cpu_milli(gpu: GpuAsk) -> u64 {
    gpu.milli().max(1000)
}

/// The generic defaults, per task: 4096 MiB per GPU, shares rounded up.
fn default_mem_mib(gpu: GpuAsk) -> u64 {
    (4096 * gpu.milli()).div_ceil(1000)
}

/// `(tasks, GPUs per task)` for a job of `gpus` whole GPUs: one task up to 8 GPUs, else a gang
/// of 8-GPU tasks, else of 4-GPU tasks, else of 1-GPU tasks, whichever divides first.
fn split_gang(gpus: u32) -> (u32, u32) {
    if gpus <= 8 {
        return (1, gpus);
    }
    let per_task = match (gpus % 8, gpus % 4) {
        (0, _) => 8,
        (_, 0) => 4,
        _ => 1,
    };
    (gpus / per_task, per_task)
}

fn team_or_default(team: &str) -> String {
    if team.is_empty() {
        "default".to_string()
    } else {
        team.to_string()
    }
}

fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

const CSV_REQUIRED: [&str; 5] = ["submit_s", "duration_s", "tasks", "gpus_per_task", "team"];

fn parse_csv(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [submit, duration, tasks, gpus, team] = table.require(file, CSV_REQUIRED)?;
    let id = table.column("id");
    let milli = table.column("gpu_milli");
    let cpu = table.column("cpu_milli");
    let mem = table.column("mem_mib");
    let user = table.column("user");
    let priority = table.column("priority");
    let model = table.column("gpu_model");
    let limit = table.column("time_limit_s");
    let preemptible = table.column("preemptible");
    let mut ids: HashMap<u64, usize> = HashMap::new();
    for rec in table.records(file) {
        let line = rec.row.line;
        let job_id = match id {
            Some(index) => {
                let cell = rec.cell(index);
                let value: u64 = cell.number("a whole-number job id")?;
                if let Some(first) = ids.insert(value, line) {
                    return Err(
                        cell.error(format!("a job id not already used (line {first} has it)"))
                    );
                }
                value
            }
            None => rec.row.number,
        };
        let submit_s = rec.cell(submit).seconds(false)?;
        let duration_s = rec.cell(duration).seconds(true)?;
        let tasks_cell = rec.cell(tasks);
        let task_count: u32 = tasks_cell.number(TASK_COUNT)?;
        if task_count == 0 {
            return Err(tasks_cell.error(TASK_COUNT));
        }
        let gpu = csv_gpu(rec.cell(gpus), rec.optional(milli))?;
        let team_cell = rec.cell(team);
        if team_cell.text.is_empty() {
            return Err(team_cell.error("a team name"));
        }
        let cpu_milli = rec
            .optional(cpu)
            .map(|cell| cell.number::<u64>(CPU_MILLI))
            .transpose()?;
        let mem_mib = rec
            .optional(mem)
            .map(|cell| cell.number::<u64>(MEM_MIB))
            .transpose()?;
        let priority = rec
            .optional(priority)
            .map(|cell| cell.number::<i32>("a whole number, higher running first"))
            .transpose()?
            .unwrap_or(0);
        let time_limit_s = rec
            .optional(limit)
            .map(|cell| cell.positive_seconds())
            .transpose()?;
        let preemptible = rec
            .optional(preemptible)
            .map(|cell| cell.flag())
            .transpose()?
            .unwrap_or(true);
        let Some(gpu) = gpu else {
            out.skip(line, "CPU-only job: asks for no GPU");
            continue;
        };
        if duration_s == 0 {
            out.skip(line, "zero duration");
            continue;
        }
        out.job(
            to_i64(submit_s),
            TraceJob {
                id: job_id,
                submit_s: 0,
                duration_s,
                tasks: task_count,
                gpu,
                cpu_milli: cpu_milli.unwrap_or_else(|| default_cpu_milli(gpu)),
                mem_mib: mem_mib.unwrap_or_else(|| default_mem_mib(gpu)),
                team: team_cell.text.to_string(),
                user: rec.optional(user).map_or("", |cell| cell.text).to_string(),
                priority,
                gpu_model: rec.optional(model).map(|cell| cell.text.to_string()),
                time_limit_s,
                preemptible,
            },
        );
    }
    Ok(())
}

/// The GPU ask of a generic CSV row; `None` for a CPU-only row.
fn csv_gpu(gpus: Cell<'_>, milli: Option<Cell<'_>>) -> Result<Option<GpuAsk>, TraceError> {
    let count: u32 = gpus.number(GPU_COUNT)?;
    let share: Option<u32> = milli.map(|cell| cell.number(GPU_MILLI)).transpose()?;
    match (count, share) {
        (0, None | Some(0)) => Ok(None),
        (0 | 1, Some(share @ 1..=999)) => Ok(Some(GpuAsk::Milli(share))),
        (0, Some(1000)) => Ok(Some(GpuAsk::Whole(1))),
        (count, None | Some(1000)) => Ok(Some(GpuAsk::Whole(count))),
        _ => Err(milli.map_or_else(
            || gpus.error(GPU_COUNT),
            |cell| {
                cell.error(
                    "a GPU share of 1 to 999 milli-GPUs with gpus_per_task 0 or 1, or 1000 \
                     for whole GPUs",
                )
            },
        )),
    }
}

fn parse_philly(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [timestamp, duration, gpus, cluster] =
        table.require(file, ["timestamp", "duration", "num_gpus", "cluster"])?;
    for rec in table.records(file) {
        let when = rec.cell(timestamp);
        let submit = epoch_seconds(when.text)
            .ok_or_else(|| when.error("a date and time as YYYY-MM-DD HH:MM:SS"))?;
        let duration_s = rec.cell(duration).seconds(true)?;
        let count: u32 = rec.cell(gpus).number(GPU_COUNT)?;
        let team = team_or_default(rec.cell(cluster).text);
        if count == 0 {
            out.skip(rec.row.line, "asks for no GPU");
            continue;
        }
        if duration_s == 0 {
            out.skip(rec.row.line, "zero duration");
            continue;
        }
        let (tasks, per_task) = split_gang(count);
        out.job(
            submit,
            TraceJob {
                id: rec.row.number,
                submit_s: 0,
                duration_s,
                tasks,
                gpu: GpuAsk::Whole(per_task),
                cpu_milli: PHILLY_CPU_MILLI_PER_GPU * u64::from(per_task),
                mem_mib: PHILLY_MEM_MIB_PER_GPU * u64::from(per_task),
                team,
                user: String::new(),
                priority: 0,
                gpu_model: None,
                time_limit_s: None,
                preemptible: true,
            },
        );
    }
    Ok(())
}

fn parse_tiresias(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [gpus, submit, duration] = table.require(file, ["num_gpu", "submit_time", "duration"])?;
    let team = table.column("team");
    let user = table.column("user");
    for rec in table.records(file) {
        let submit_s = rec.cell(submit).seconds(false)?;
        let duration_s = rec.cell(duration).seconds(true)?;
        let count: u32 = rec.cell(gpus).number(GPU_COUNT)?;
        if count == 0 {
            out.skip(rec.row.line, "asks for no GPU");
            continue;
        }
        if duration_s == 0 {
            out.skip(rec.row.line, "zero duration");
            continue;
        }
        let (tasks, per_task) = split_gang(count);
        let gpu = GpuAsk::Whole(per_task);
        out.job(
            to_i64(submit_s),
            TraceJob {
                id: rec.row.number,
                submit_s: 0,
                duration_s,
                tasks,
                gpu,
                cpu_milli: default_cpu_milli(gpu),
                mem_mib: default_mem_mib(gpu),
                team: team_or_default(rec.optional(team).map_or("", |cell| cell.text)),
                user: rec.optional(user).map_or("", |cell| cell.text).to_string(),
                priority: 0,
                gpu_model: None,
                time_limit_s: None,
                preemptible: true,
            },
        );
    }
    Ok(())
}

fn parse_openb(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [cpu, mem, gpus, milli, created, deleted, scheduled] = table.require(
        file,
        [
            "cpu_milli",
            "memory_mib",
            "num_gpu",
            "gpu_milli",
            "creation_time",
            "deletion_time",
            "scheduled_time",
        ],
    )?;
    let spec = table.column("gpu_spec");
    let qos = table.column("qos");
    for rec in table.records(file) {
        let line = rec.row.line;
        let cpu_milli: u64 = rec.cell(cpu).number(CPU_MILLI)?;
        let mem_mib: u64 = rec.cell(mem).number(MEM_MIB)?;
        let count: u32 = rec.cell(gpus).number(GPU_COUNT)?;
        let milli_cell = rec.cell(milli);
        let share: u32 = milli_cell.number(GPU_MILLI)?;
        if share > 1000 {
            return Err(milli_cell.error(GPU_MILLI));
        }
        let submit_s = rec.cell(created).seconds(false)?;
        let end = rec
            .optional(Some(deleted))
            .map(|cell| cell.seconds(false))
            .transpose()?;
        let start = rec
            .optional(Some(scheduled))
            .map(|cell| cell.seconds(false))
            .transpose()?;
        // A pod may accept several models; a job names one, so the first one listed is taken.
        let gpu_model = rec
            .optional(spec)
            .and_then(|cell| cell.text.split('|').map(str::trim).find(|m| !m.is_empty()))
            .map(str::to_string);
        let team = team_or_default(rec.optional(qos).map_or("", |cell| cell.text));
        if count == 0 {
            out.skip(line, "CPU-only pod (num_gpu 0)");
            continue;
        }
        let gpu = if count == 1 && share < 1000 {
            if share == 0 {
                return Err(milli_cell.error("a GPU share of 1 to 1000 milli-GPUs"));
            }
            GpuAsk::Milli(share)
        } else {
            GpuAsk::Whole(count)
        };
        let Some(start) = start else {
            out.skip(line, "never scheduled (scheduled_time is empty)");
            continue;
        };
        let Some(end) = end else {
            out.skip(line, "no deletion_time");
            continue;
        };
        if end <= start {
            out.skip(
                line,
                format!("duration not positive: deletion_time {end} <= scheduled_time {start}"),
            );
            continue;
        }
        out.job(
            to_i64(submit_s),
            TraceJob {
                id: rec.row.number,
                submit_s: 0,
                duration_s: end - start,
                tasks: 1,
                gpu,
                cpu_milli,
                mem_mib,
                team,
                user: String::new(),
                priority: 0,
                gpu_model,
                time_limit_s: None,
                preemptible: true,
            },
        );
    }
    Ok(())
}

/// Seconds since 1970-01-01 00:00:00 UTC of `YYYY-MM-DD HH:MM:SS` (or with a `T` between the
/// date and the time); `None` if it is not such a date and time.
fn epoch_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let mut time_parts = time.trim_start().split(':');
    let hour: u32 = time_parts.next()?.parse().ok()?;
    let minute: u32 = time_parts.next()?.parse().ok()?;
    let second: u32 = time_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() || time_parts.next().is_some() {
        return None;
    }
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds_of_day = i64::from(hour * 3600 + minute * 60 + second);
    Some(days_from_civil(year, month, day) * 86_400 + seconds_of_day)
}

fn is_leap_year(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Years start in March, so that the leap day is the last day of a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A CSV file: its header and its non-blank rows, split into trimmed fields.
pub(crate) struct Table {
    header_line: usize,
    header: Vec<String>,
    rows: Vec<Row>,
}

pub(crate) struct Row {
    /// 1-based line in the file.
    line: usize,
    /// 1-based among the data rows.
    number: u64,
    fields: Vec<String>,
}

impl Table {
    pub(crate) fn read(file: &str, text: &str) -> Result<Table, TraceError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut header: Option<(usize, Vec<String>)> = None;
        let mut rows = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let fields = split_fields(raw).map_err(|expected| {
                TraceError::at(file, line, None, expected, format!("{:?}", raw.trim()))
            })?;
            match header.as_ref().map(|(_, names)| names.len()) {
                None => {
                    for (i, name) in fields.iter().enumerate() {
                        if fields[..i].contains(name) {
                            return Err(TraceError::at(
                                file,
                                line,
                                Some(name.as_str()),
                                "distinct column names in the header",
                                "it twice",
                            ));
                        }
                    }
                    header = Some((line, fields));
                }
                Some(width) => {
                    if fields.len() != width {
                        return Err(TraceError::at(
                            file,
                            line,
                            None,
                            format!("{width} fields, as in the header"),
                            format!("{} fields", fields.len()),
                        ));
                    }
                    let number = rows.len() as u64 + 1;
                    rows.push(Row {
                        line,
                        number,
                        fields,
                    });
                }
            }
        }
        match header {
            Some((header_line, header)) => Ok(Table {
                header_line,
                header,
                rows,
            }),
            None => Err(TraceError::at(
                file,
                1,
                None,
                "a header line naming the columns",
                "an empty file",
            )),
        }
    }

    pub(crate) fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|column| column == name)
    }

    /// The indices of the columns `names`, or an error naming the missing ones.
    pub(crate) fn require<const N: usize>(
        &self,
        file: &str,
        names: [&str; N],
    ) -> Result<[usize; N], TraceError> {
        let mut indices = [0; N];
        let mut missing = Vec::new();
        for (slot, name) in indices.iter_mut().zip(names) {
            match self.column(name) {
                Some(index) => *slot = index,
                None => missing.push(name),
            }
        }
        match missing.first() {
            None => Ok(indices),
            Some(&first) => Err(TraceError::at(
                file,
                self.header_line,
                Some(first),
                format!("a header with the required columns {}", names.join(", ")),
                format!("no column `{}`", missing.join("`, `")),
            )),
        }
    }

    pub(crate) fn records<'a>(&'a self, file: &'a str) -> impl Iterator<Item = Rec<'a>> + 'a {
        self.rows.iter().map(move |row| Rec {
            file,
            header: &self.header,
            row,
        })
    }
}

/// One data row, with what it takes to name its fields in errors.
pub(crate) struct Rec<'a> {
    file: &'a str,
    header: &'a [String],
    row: &'a Row,
}

impl<'a> Rec<'a> {
    pub(crate) fn cell(&self, index: usize) -> Cell<'a> {
        let header: &'a [String] = self.header;
        let row: &'a Row = self.row;
        Cell {
            file: self.file,
            line: row.line,
            column: &header[index],
            text: &row.fields[index],
        }
    }

    /// The field of an optional column: `None` where the column is absent or the field empty.
    pub(crate) fn optional(&self, index: Option<usize>) -> Option<Cell<'a>> {
        index
            .map(|index| self.cell(index))
            .filter(|cell| !cell.text.is_empty())
    }
}

/// One field, with its place for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Cell<'a> {
    pub(crate) file: &'a str,
    pub(crate) line: usize,
    pub(crate) column: &'a str,
    pub(crate) text: &'a str,
}

impl Cell<'_> {
    pub(crate) fn error(&self, expected: impl Into<String>) -> TraceError {
        TraceError::at(
            self.file,
            self.line,
            Some(self.column),
            expected,
            format!("{:?}", self.text),
        )
    }

    pub(crate) fn number<T: FromStr>(&self, expected: &str) -> Result<T, TraceError> {
        self.text.parse().map_err(|_| self.error(expected))
    }

    /// Whole seconds, from an integer or a decimal number, rounded up or down.
    fn seconds(&self, round_up: bool) -> Result<u64, TraceError> {
        if let Ok(whole) = self.text.parse::<u64>() {
            return if whole <= MAX_SECONDS {
                Ok(whole)
            } else {
                Err(self.error(SECONDS))
            };
        }
        match self.text.parse::<f64>() {
            Ok(value) if value.is_finite() && (0.0..=9.0e18).contains(&value) => {
                let rounded = if round_up {
                    value.ceil()
                } else {
                    value.floor()
                };
                Ok(rounded as u64)
            }
            _ => Err(self.error(SECONDS)),
        }
    }

    fn positive_seconds(&self) -> Result<u64, TraceError> {
        match self.seconds(true) {
            Ok(0) | Err(_) => Err(self.error(POSITIVE_SECONDS)),
            Ok(seconds) => Ok(seconds),
        }
    }

    fn flag(&self) -> Result<bool, TraceError> {
        match self.text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(self.error("true or false")),
        }
    }
}

/// Splits one CSV line into trimmed fields; the error says what was expected.
fn split_fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err("a closing double quote"),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("a comma after a closing double quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field.trim_end().to_string());
                        break;
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ids(trace: &Trace) -> Vec<u64> {
        trace.jobs.iter().map(|job| job.id).collect()
    }

    #[test]
    fn generic_csv_with_defaults_and_columns_in_any_order() {
        let text = "\
team, submit_s ,duration_s,tasks,gpus_per_task,gpu_milli,user,name
research,100,3600,2,4,,alice,\"train, big\"
prod,40,59.5,1,0,250,,\"say \"\"hi\"\"\"

prod,40,10,1,1,500,bob,x
";
        let trace = parse("jobs.csv", text, Format::Csv).unwrap();
        assert!(trace.skipped.is_empty());
        assert_eq!(ids(&trace), vec![2, 3, 1]);
        let big = &trace.jobs[2];
        assert_eq!(
            big,
            &TraceJob {
                id: 1,
                submit_s: 60,
                duration_s: 3600,
                tasks: 2,
                gpu: GpuAsk::Whole(4),
                cpu_milli: 4000,
                mem_mib: 16384,
                team: "research".to_string(),
                user: "alice".to_string(),
                priority: 0,
                gpu_model: None,
                time_limit_s: None,
                preemptible: true,
            }
        );
        let share = &trace.jobs[0];
        assert_eq!(share.submit_s, 0);
        assert_eq!(share.duration_s, 60);
        assert_eq!(share.gpu, GpuAsk::Milli(250));
        assert_eq!(share.cpu_milli, 1000);
        assert_eq!(share.mem_mib, 1024);
        assert_eq!(share.user, "");
        let half = &trace.jobs[1];
        assert_eq!(half.gpu, GpuAsk::Milli(500));
        assert_eq!(half.mem_mib, 2048);
        assert_eq!(half.user, "bob");
    }

    #[test]
    fn generic_csv_with_every_column_and_skips() {
        let text = "\
id,submit_s,duration_s,tasks,gpus_per_task,gpu_milli,cpu_milli,mem_mib,team,user,priority,gpu_model,time_limit_s,preemptible
7,10,100,1,8,1000,32000,65536,a,u,5,H100,7200,false
9,15,0,1,1,,,,a,,,,,
3,16,10,1,0,,,,a,,,,,
4,17,10,1,0,1000,,,a,,-2,,,no
";
        let trace = parse("jobs.csv", text, Format::Csv).unwrap();
        assert_eq!(ids(&trace), vec![7, 4]);
        let job = &trace.jobs[0];
        assert_eq!(job.submit_s, 0);
        assert_eq!(job.gpu, GpuAsk::Whole(8));
        assert_eq!((job.cpu_milli, job.mem_mib), (32000, 65536));
        assert_eq!((job.user.as_str(), job.priority), ("u", 5));
        assert_eq!(job.gpu_model.as_deref(), Some("H100"));
        assert_eq!(job.time_limit_s, Some(7200));
        assert!(!job.preemptible);
        let one = &trace.jobs[1];
        assert_eq!(
            (one.submit_s, one.gpu, one.priority),
            (7, GpuAsk::Whole(1), -2)
        );
        assert!(!one.preemptible);
        let skipped: Vec<usize> = trace.skipped.iter().map(|s| s.line).collect();
        assert_eq!(skipped, vec![3, 4]);
        assert_eq!(trace.skipped[0].why, "zero duration");
        assert!(trace.skipped[1].why.contains("CPU-only"));
    }

    #[test]
    fn a_bad_number_names_file_line_and_column() {
        let mut text = String::from("timestamp,duration,num_gpus,gpu_time,cluster\n");
        for _ in 0..10 {
            text.push_str("2017-10-09 07:01:55,66.0,1,66.0,11cb48\n");
        }
        text.push_str("2017-10-09 07:01:56,abc,1,66.0,11cb48\n");
        let err = parse("philly.csv", &text, Format::Philly).unwrap_err();
        assert_eq!(
            err.to_string(),
            "philly.csv:12: column `duration`: expected a non-negative number of seconds, \
             found \"abc\""
        );
        assert_eq!(err.line, 12);
        assert_eq!(err.column.as_deref(), Some("duration"));

        let err = parse(
            "jobs.csv",
            "submit_s,duration_s,tasks,gpus_per_task,team\n0,-5,1,1,a\n",
            Format::Csv,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs.csv:2: column `duration_s`: expected a non-negative number of seconds, \
             found \"-5\""
        );
    }

    #[test]
    fn a_missing_required_column_is_named() {
        let text = "submit_s,duration_s,tasks,gpus_per_task\n0,1,1,1\n";
        let err = parse("jobs.csv", text, Format::Csv).unwrap_err();
        assert_eq!(err.line, 1);
        assert_eq!(err.column.as_deref(), Some("team"));
        assert_eq!(
            err.to_string(),
            "jobs.csv:1: column `team`: expected a header with the required columns submit_s, \
             duration_s, tasks, gpus_per_task, team, found no column `team`"
        );

        let err = parse(
            "pods.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n",
            Format::Openb,
        )
        .unwrap_err();
        assert_eq!(err.column.as_deref(), Some("creation_time"));
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let text = "\
id,submit_s,duration_s,tasks,gpus_per_task,team
1,0,10,1,1,a
2,0,10,1,1,a
1,5,10,1,1,a
";
        let err = parse("jobs.csv", text, Format::Csv).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs.csv:4: column `id`: expected a job id not already used (line 2 has it), \
             found \"1\""
        );
    }

    #[test]
    fn bad_rows_are_errors() {
        let header = "submit_s,duration_s,tasks,gpus_per_task,team,gpu_milli";
        let cases = [
            ("0,1,0,1,a,", "column `tasks`"),
            ("0,1,1,1,,", "column `team`"),
            ("0,1,1,2,a,500", "column `gpu_milli`"),
            ("0,1,1,1,a,1001", "column `gpu_milli`"),
            (
                "0,1,1,1,a",
                "expected 6 fields, as in the header, found 5 fields",
            ),
            ("0,1,1,1,\"a", "expected a closing double quote"),
        ];
        for (row, wanted) in cases {
            let err = parse("jobs.csv", &format!("{header}\n{row}\n"), Format::Csv).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("jobs.csv:2: "), "{message}");
            assert!(message.contains(wanted), "{message} lacks {wanted}");
        }
        let err = parse("jobs.csv", "\n\n", Format::Csv).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs.csv:1: expected a header line naming the columns, found an empty file"
        );
    }

    #[test]
    fn philly_rows_become_gangs() {
        let text = "\
timestamp,duration,num_gpus,gpu_time,cluster
2017-09-04 10:30:41,66.2,1,66.2,vc1
2017-09-04 10:31:41,100,16,1600,vc2
2017-09-04 10:30:51,0.0,1,0.0,vc1
2017-09-04 10:30:45,10,12,120,vc1
2017-09-04 10:30:45,10,24,240,vc1
2017-09-04 10:30:41,10,3,30,vc1
2017-09-04 10:30:41,10,9,90,vc1
";
        let trace = parse("philly.csv", text, Format::Philly).unwrap();
        assert_eq!(ids(&trace), vec![1, 6, 7, 4, 5, 2]);
        assert_eq!(
            trace.skipped,
            vec![Skipped {
                line: 4,
                why: "zero duration".to_string()
            }]
        );
        let by_id = |id: u64| trace.jobs.iter().find(|job| job.id == id).unwrap();
        assert_eq!(by_id(1).duration_s, 67);
        assert_eq!((by_id(1).tasks, by_id(1).gpu), (1, GpuAsk::Whole(1)));
        assert_eq!((by_id(1).cpu_milli, by_id(1).mem_mib), (4000, 16384));
        assert_eq!(by_id(1).team, "vc1");
        let big = by_id(2);
        assert_eq!(
            (big.submit_s, big.tasks, big.gpu),
            (60, 2, GpuAsk::Whole(8))
        );
        assert_eq!((big.cpu_milli, big.mem_mib), (32000, 131072));
        assert_eq!(big.team, "vc2");
        assert_eq!(
            (by_id(4).submit_s, by_id(4).tasks, by_id(4).gpu),
            (4, 3, GpuAsk::Whole(4))
        );
        assert_eq!((by_id(5).tasks, by_id(5).gpu), (3, GpuAsk::Whole(8)));
        assert_eq!((by_id(6).tasks, by_id(6).gpu), (1, GpuAsk::Whole(3)));
        assert_eq!((by_id(7).tasks, by_id(7).gpu), (9, GpuAsk::Whole(1)));
        assert!(trace
            .jobs
            .iter()
            .all(|job| job.time_limit_s.is_none() && job.user.is_empty()));

        let bad = "timestamp,duration,num_gpus,gpu_time,cluster\n2017-02-29 00:00:00,1,1,1,a\n";
        let err = parse("philly.csv", bad, Format::Philly).unwrap_err();
        assert_eq!(err.column.as_deref(), Some("timestamp"));
    }

    #[test]
    fn openb_pods_map_to_jobs_and_skips() {
        let text = "\
name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0000,12000,16384,1,1000,,LS,Running,100,1100,100
openb-pod-0001,6000,12288,1,460,V100M16|V100M32,BE,Running,150,400,200
openb-pod-0002,20000,65536,0,0,,LS,Running,160,1000,160
openb-pod-0003,11908,47104,1,1000,,BE,Pending,170,200,
openb-pod-0004,8000,32768,8,1000,G2,,Failed,180,180,180
openb-pod-0005,8000,32768,8,1000,T4,,Running,190,290,195
";
        let trace = parse("openb_pod_list_default.csv", text, Format::Openb).unwrap();
        assert_eq!(ids(&trace), vec![1, 2, 6]);
        let whole = &trace.jobs[0];
        assert_eq!((whole.submit_s, whole.duration_s), (0, 1000));
        assert_eq!(
            (whole.gpu, whole.cpu_milli, whole.mem_mib),
            (GpuAsk::Whole(1), 12000, 16384)
        );
        assert_eq!(
            (whole.team.as_str(), whole.gpu_model.as_deref()),
            ("LS", None)
        );
        let share = &trace.jobs[1];
        assert_eq!((share.submit_s, share.duration_s), (50, 200));
        assert_eq!(share.gpu, GpuAsk::Milli(460));
        assert_eq!(share.gpu_model.as_deref(), Some("V100M16"));
        assert_eq!(share.team, "BE");
        let eight = &trace.jobs[2];
        assert_eq!((eight.submit_s, eight.duration_s, eight.tasks), (90, 95, 1));
        assert_eq!(eight.gpu, GpuAsk::Whole(8));
        assert_eq!(eight.team, "default");
        assert_eq!(eight.gpu_model.as_deref(), Some("T4"));
        let skipped: Vec<usize> = trace.skipped.iter().map(|s| s.line).collect();
        assert_eq!(skipped, vec![4, 5, 6]);
        assert!(trace.skipped[0].why.contains("CPU-only"));
        assert!(trace.skipped[1].why.contains("never scheduled"));
        assert!(trace.skipped[2].why.contains("not positive"));
    }

    #[test]
    fn tiresias_jobs() {
        let text = "\
job_id,num_gpu,submit_time,iterations,model_name,duration,interval
0,1,0,606,vgg19,164,30
1,8,30,133,vgg11,147,23
2,2,53,157,inception4,127,26
";
        let trace = parse("60_job.csv", text, Format::Tiresias).unwrap();
        assert_eq!(ids(&trace), vec![1, 2, 3]);
        let job = &trace.jobs[1];
        assert_eq!((job.submit_s, job.duration_s, job.tasks), (30, 147, 1));
        assert_eq!(
            (job.gpu, job.cpu_milli, job.mem_mib),
            (GpuAsk::Whole(8), 8000, 32768)
        );
        assert!(trace.jobs.iter().all(|job| job.team == "default"));
    }

    #[test]
    fn csv_fields_split_with_quotes_and_whitespace() {
        assert_eq!(
            split_fields(r#" a , "b, ""c""" ,,"  d  " "#).unwrap(),
            vec!["a", "b, \"c\"", "", "  d  "]
        );
        assert_eq!(split_fields("x,").unwrap(), vec!["x", ""]);
        assert!(split_fields("a,\"b").is_err());
        assert!(split_fields("\"a\"b").is_err());
    }

    #[test]
    fn civil_dates_convert_to_epoch_seconds() {
        assert_eq!(epoch_seconds("1970-01-01 00:00:00"), Some(0));
        assert_eq!(epoch_seconds("2017-09-04 10:30:41"), Some(1_504_521_041));
        assert_eq!(epoch_seconds("2000-03-01 00:00:00"), Some(951_868_800));
        assert_eq!(epoch_seconds("1969-12-31 23:59:59"), Some(-1));
        assert_eq!(epoch_seconds("2016-02-29T12:00:00"), Some(1_456_747_200));
        assert_eq!(epoch_seconds("2017-02-29 00:00:00"), None);
        assert_eq!(epoch_seconds("2017-09-04"), None);
        assert_eq!(epoch_seconds("2017-09-04 24:00:00"), None);
    }

    #[test]
    fn default_time_limits_are_power_of_two_hours() {
        assert_eq!(default_time_limit(0), 3600);
        assert_eq!(default_time_limit(1), 3600);
        assert_eq!(default_time_limit(3600), 3600);
        assert_eq!(default_time_limit(3601), 7200);
        assert_eq!(default_time_limit(3 * 3600), 4 * 3600);
        assert_eq!(default_time_limit(86_400 * 3), 128 * 3600);
        assert_eq!(default_time_limit(u64::MAX), u64::MAX);
    }

    #[test]
    fn formats_parse_and_guess() {
        assert_eq!("philly".parse::<Format>(), Ok(Format::Philly));
        assert_eq!("CSV".parse::<Format>(), Ok(Format::Csv));
        assert_eq!(
            "parquet".parse::<Format>().unwrap_err().to_string(),
            "unknown trace format \"parquet\"; valid formats: csv, philly, openb, tiresias"
        );
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        }
        let guess = |name: &str| Format::guess(Path::new(name));
        assert_eq!(guess("/traces/pollux/philly.csv"), Format::Philly);
        assert_eq!(guess("csv/openb_pod_list_default.csv"), Format::Openb);
        assert_eq!(guess("my_pod_list.csv"), Format::Openb);
        assert_eq!(guess("tiresias-60.csv"), Format::Tiresias);
        assert_eq!(guess("/traces/philly/jobs.csv"), Format::Csv);
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let path = Path::new("/nonexistent/qm-sim/trace.csv");
        let err = load(path, Format::Csv).unwrap_err();
        assert!(err.io.is_some());
        assert!(
            err.to_string()
                .starts_with("/nonexistent/qm-sim/trace.csv: cannot read the trace: "),
            "{err}"
        );
    }

    /// The Pollux copy of the Philly job table, when the shared traces are present.
    #[test]
    fn loads_the_pollux_philly_trace_when_present() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/traces/pollux-osdi21/simulator/traces/philly.csv");
        if !path.exists() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        assert_eq!(Format::guess(&path), Format::Philly);
        let trace = load(&path, Format::Philly).unwrap();
        assert_eq!(trace.jobs.len() + trace.skipped.len(), 82_247);
        let teams: BTreeSet<&str> = trace.jobs.iter().map(|job| job.team.as_str()).collect();
        assert_eq!(teams.len(), 15);
        assert_eq!(trace.jobs[0].submit_s, 0);
        // 2017-09-04 10:30:41 to 2017-12-22 08:02:11.
        assert_eq!(trace.jobs.last().map(|job| job.submit_s), Some(9_408_690));
        assert!(trace
            .jobs
            .windows(2)
            .all(|pair| (pair[0].submit_s, pair[0].id) < (pair[1].submit_s, pair[1].id)));
    }
}
