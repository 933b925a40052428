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
//! - Fields are separated by commas and trimmed of surrounding whitespace; a field may be
//!   quoted. Every row has as many fields as the header. Blank lines are skipped. The dialect
//!   is read by [`table`], the one table reader under every format.
//! - Submission times are rebased: the first submission of a job in the trace is at 0 s.
//! - Job ids are the 1-based numbers of the data rows in file order (blank lines are not
//!   counted, skipped rows are), except where a generic CSV has an `id` column. So ids have
//!   gaps where rows were skipped.
//! - Times are whole seconds: durations and time limits round up (a job runs at least 1 s),
//!   submissions round down. A zero duration is skipped, not an error.
//! - CPU and memory are per task, like the GPU ask.
//!
//! # The formats, one module each
//!
//! | format | module | files |
//! |---|---|---|
//! | [`Format::Csv`] | [`csv`] | our own CSV |
//! | [`Format::Philly`] | [`philly`] | the Philly job table of the Pollux (OSDI '21) artifact |
//! | [`Format::Openb`] | [`openb`] | Alibaba's cluster-trace-gpu-v2023 pod lists (and node lists, for `qm sim pack`) |
//! | [`Format::Tiresias`] | [`tiresias`] | the job lists of the Tiresias (NSDI '19) simulator |
//!
//! # Time limits
//!
//! None of the public traces carries time limits, and our CSV may leave them out. The loader
//! keeps `time_limit_s` as `None` then; since the planner never backfills a job without a limit
//! ahead of a reservation, the caller should give each such job [`default_time_limit`]: its
//! duration rounded up to a power-of-two number of hours (1 h, 2 h, 4 h, 8 h, ...), at least
//! 1 h. The rule stands in for users' round, generous requests: every limit holds its job, a job
//! of more than an hour gets less than twice its duration, and there are few distinct limits.

pub mod csv;
pub mod openb;
pub mod philly;
pub mod table;
pub mod tiresias;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use qm_core::{GpuAsk, UnknownName};

pub use table::TraceError;

/// The layout of a trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Our own CSV; see [`csv`].
    Csv,
    /// The Philly job table of the Pollux artifact (`timestamp,duration,num_gpus,...`); see
    /// [`philly`].
    Philly,
    /// The pod lists of Alibaba's cluster-trace-gpu-v2023, `openb_pod_list_*.csv`; see [`openb`].
    Openb,
    /// The job lists of the Tiresias simulator, such as `60_job.csv`; see [`tiresias`].
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

impl FromStr for Format {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|format| format.name() == wanted.as_str())
            .ok_or_else(|| {
                UnknownName::new(("trace format", "formats"), s, &Format::ALL, Format::name)
            })
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
    /// Mean GPU utilisation while the job works, percent (`None`: not recorded; the replay
    /// then sends no samples for it).
    pub util_pct: Option<u8>,
    /// The job stops using its GPUs after this many seconds of work but keeps them until
    /// its `duration_s` is over (`None`: it works to the end).
    pub idle_after_s: Option<u64>,
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

/// Reads a trace file; errors name the file as `path` spells it.
pub fn load(path: &Path, format: Format) -> Result<Trace, TraceError> {
    let (name, text) = table::read_file(path)?;
    parse(&name, &text, format)
}

/// Reads a trace from `text`; `name` stands for the file in error messages.
pub fn parse(name: &str, text: &str, format: Format) -> Result<Trace, TraceError> {
    let table = table::Table::read(name, text)?;
    let mut out = Builder::default();
    match format {
        Format::Csv => csv::parse(name, &table, &mut out)?,
        Format::Philly => philly::parse(name, &table, &mut out)?,
        Format::Openb => openb::parse(name, &table, &mut out)?,
        Format::Tiresias => tiresias::parse(name, &table, &mut out)?,
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
pub(crate) struct Builder {
    jobs: Vec<(i64, TraceJob)>,
    skipped: Vec<Skipped>,
}

impl Builder {
    pub(crate) fn job(&mut self, submit: i64, job: TraceJob) {
        self.jobs.push((submit, job));
    }

    pub(crate) fn skip(&mut self, line: usize, why: impl Into<String>) {
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

// What a field was expected to hold, as error messages say it.
pub(crate) const GPU_COUNT: &str = "a whole number of GPUs";
pub(crate) const CPU_MILLI: &str = "a whole number of milli-CPUs";
pub(crate) const MEM_MIB: &str = "a whole number of MiB";
pub(crate) const GPU_MILLI: &str = "a number of milli-GPUs from 0 to 1000";

/// The generic defaults, per task: 1000 milli-CPUs per GPU (at least 1000).
pub(crate) fn default_cpu_milli(gpu: GpuAsk) -> u64 {
    gpu.milli().max(1000)
}

/// The generic defaults, per task: 4096 MiB per GPU, shares rounded up.
pub(crate) fn default_mem_mib(gpu: GpuAsk) -> u64 {
    (4096 * gpu.milli()).div_ceil(1000)
}

pub(crate) fn team_or_default(team: &str) -> String {
    if team.is_empty() {
        "default".to_string()
    } else {
        team.to_string()
    }
}

pub(crate) fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The ids of a trace's jobs, in its order.
    pub(crate) fn ids(trace: &Trace) -> Vec<u64> {
        trace.jobs.iter().map(|job| job.id).collect()
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
}
