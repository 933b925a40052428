//! The Philly job table ([`Format::Philly`](super::Format::Philly)).
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

use qm_core::GpuAsk;

use super::table::{Table, TraceError};
use super::{team_or_default, Builder, TraceJob, GPU_COUNT};

/// Per GPU of a Philly job.
const PHILLY_CPU_MILLI_PER_GPU: u64 = 4000;
const PHILLY_MEM_MIB_PER_GPU: u64 = 16384;

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

/// The gang of a job of `gpus` whole GPUs lasting `duration_s` ([`split_gang`]), or `None`
/// once the row is counted as skipped: it asks for no GPU, or lasts no time.
pub(crate) fn whole_gpu_gang(
    out: &mut Builder,
    line: usize,
    gpus: u32,
    duration_s: u64,
) -> Option<(u32, u32)> {
    if gpus == 0 {
        out.skip(line, "asks for no GPU");
        return None;
    }
    if duration_s == 0 {
        out.skip(line, "zero duration");
        return None;
    }
    Some(split_gang(gpus))
}

pub(crate) fn parse(file: &str, table: &Table, out: &mut Builder) -> Result<(), TraceError> {
    let [timestamp, duration, gpus, cluster] =
        table.require(file, ["timestamp", "duration", "num_gpus", "cluster"])?;
    for rec in table.records(file) {
        let when = rec.cell(timestamp);
        let submit = epoch_seconds(when.text)
            .ok_or_else(|| when.error("a date and time as YYYY-MM-DD HH:MM:SS"))?;
        let duration_s = rec.cell(duration).seconds(true)?;
        let count: u32 = rec.cell(gpus).number(GPU_COUNT)?;
        let team = team_or_default(rec.cell(cluster).text);
        let Some((tasks, per_task)) = whole_gpu_gang(out, rec.row.line, count, duration_s) else {
            continue;
        };
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
                util_pct: None,
                idle_after_s: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::load;
    use crate::trace::tests::ids;
    use crate::trace::{parse, Format, Skipped};
    use qm_core::GpuAsk;
    use std::collections::BTreeSet;
    use std::path::Path;

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

    /// The Pollux copy of the Philly job table from the shared traces, which the repository
    /// does not ship: run with `cargo test -p qm-sim -- --ignored` where they are. The
    /// fixtures above cover the format everywhere.
    #[test]
    #[ignore = "needs ../shared/traces/pollux-osdi21/simulator/traces/philly.csv"]
    fn loads_the_pollux_philly_trace() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/traces/pollux-osdi21/simulator/traces/philly.csv");
        assert!(path.exists(), "{} is absent", path.display());
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
