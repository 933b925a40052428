//! Our own CSV format ([`Format::Csv`](super::Format::Csv)), read into [`TraceJob`]s.
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
//! | `util_pct` | mean GPU utilisation while the job works, 0..=100 | not recorded: no samples |
//! | `idle_after_s` | the job stops using its GPUs after this many seconds of work, but keeps them until `duration_s` is over (a notebook left open, a finished run that sleeps; 0: a placeholder that never works) | works to the end |
//!
//! The GPU ask: `gpus_per_task` n ≥ 1 with `gpu_milli` empty or 1000 is n whole GPUs. With
//! `gpus_per_task` 0 or 1, a `gpu_milli` m in 1..=999 is a share of m/1000 of one GPU, and
//! `gpus_per_task` 0 with `gpu_milli` 1000 is one whole GPU. Any other `gpu_milli` is an error.
//! A row that asks for no GPU at all is skipped as CPU-only.

use std::collections::HashMap;

use qm_core::GpuAsk;

use super::table::{Cell, Table, TraceError};
use super::{
    default_cpu_milli, default_mem_mib, to_i64, Builder, TraceJob, CPU_MILLI, GPU_COUNT, GPU_MILLI,
    MEM_MIB,
};

const TASK_COUNT: &str = "a whole number of tasks, at least 1";

const CSV_REQUIRED: [&str; 5] = ["submit_s", "duration_s", "tasks", "gpus_per_task", "team"];

pub(crate) fn parse(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
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
    let util = table.column("util_pct");
    let idle_after = table.column("idle_after_s");
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
        let util_pct = rec
            .optional(util)
            .map(|cell| {
                cell.number::<u8>("a utilisation in percent, 0 to 100")
                    .and_then(|p| {
                        if p <= 100 {
                            Ok(p)
                        } else {
                            Err(cell.error("a utilisation in percent, 0 to 100"))
                        }
                    })
            })
            .transpose()?;
        let idle_after_s = rec
            .optional(idle_after)
            .map(|cell| cell.seconds(false))
            .transpose()?;
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
                util_pct,
                idle_after_s,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::ids;
    use crate::trace::{parse, Format};
    use qm_core::GpuAsk;

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
                util_pct: None,
                idle_after_s: None,
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
}
