//! The Tiresias simulator's job lists ([`Format::Tiresias`](super::Format::Tiresias)).
//!
//! The job lists of the Tiresias (NSDI '19) simulator, such as `60_job.csv` with the columns
//! `job_id,num_gpu,submit_time,iterations,model_name,duration,interval`. Only `num_gpu`,
//! `submit_time` and `duration` (seconds) are read; `job_id` is 0-based there, so ids are row
//! numbers as everywhere. `num_gpu` whole GPUs are split into a gang as for Philly. The team
//! comes from a `team` column and the user from a `user` column where the file has them (the
//! published ones do not), else `default` and empty. CPU and memory are the generic CSV's
//! defaults. Zero durations are skipped.

use qm_core::GpuAsk;

use super::philly::whole_gpu_gang;
use super::table::{Table, TraceError};
use super::{
    default_cpu_milli, default_mem_mib, team_or_default, to_i64, Builder, TraceJob, GPU_COUNT,
};

pub(crate) fn parse(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [gpus, submit, duration] = table.require(file, ["num_gpu", "submit_time", "duration"])?;
    let team = table.column("team");
    let user = table.column("user");
    for rec in table.records(file) {
        let submit_s = rec.cell(submit).seconds(false)?;
        let duration_s = rec.cell(duration).seconds(true)?;
        let count: u32 = rec.cell(gpus).number(GPU_COUNT)?;
        let Some((tasks, per_task)) = whole_gpu_gang(out, rec.row.line, count, duration_s) else {
            continue;
        };
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
                util_pct: None,
                idle_after_s: None,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::trace::tests::ids;
    use crate::trace::{parse, Format};
    use qm_core::GpuAsk;

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
}
