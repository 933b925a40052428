//! Alibaba's cluster-trace-gpu-v2023 ("openb"): pod lists and node lists.
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

use qm_core::GpuAsk;

use super::table::{Table, TraceError};
use super::{team_or_default, to_i64, Builder, TraceJob, CPU_MILLI, GPU_COUNT, GPU_MILLI, MEM_MIB};

pub(crate) fn parse(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
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

#[cfg(test)]
mod tests {
    use crate::trace::tests::ids;
    use crate::trace::{parse, Format};
    use qm_core::GpuAsk;

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
}
