//! The allocation curve and the report: each run's records become the mean allocation % per
//! 1 % of arrived demand, the policies' means over seeds, `report.json`, `report.md` and
//! `alloc.svg`.

use std::path::Path;

use super::{PackInput, PackPolicy, SeedRun, CURVE_END};
use crate::trace::openb::MILLI;

/// One run's record after each pod: (arrived milli, allocated milli).
#[derive(Clone, Debug, Default)]
pub(super) struct Records(pub(super) Vec<(u64, u64)>);

/// Rounds half to even, as numpy does.
pub(super) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Records {
    pub(super) fn curve(&self, total_milli: u64) -> Vec<Option<f64>> {
        let unit = total_milli as f64 / 100.0;
        let mut sums = vec![(0.0f64, 0usize); CURVE_END + 2];
        let points: Vec<(i64, f64)> = self
            .0
            .iter()
            .map(|&(arr, alloc)| {
                (
                    round_half_even(arr as f64 / unit) as i64,
                    round2(alloc as f64 / unit),
                )
            })
            .collect();
        for &(k, a) in &points {
            if (0..=CURVE_END as i64 + 1).contains(&k) {
                let s = &mut sums[k as usize];
                s.0 += a;
                s.1 += 1;
            }
        }
        (0..=CURVE_END)
            .map(|k| {
                if sums[k].1 > 0 {
                    return Some(round2(sums[k].0 / sums[k].1 as f64));
                }
                let near: Vec<f64> = points
                    .iter()
                    .filter(|&&(a, _)| (a - k as i64).abs() <= 1)
                    .map(|&(_, v)| v)
                    .collect();
                (!near.is_empty()).then(|| round2(near.iter().sum::<f64>() / near.len() as f64))
            })
            .collect()
    }
}

/// A policy's result over all seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRun {
    pub policy: PackPolicy,
    pub seeds: Vec<SeedRun>,
}

impl PolicyRun {
    /// Mean over seeds of the allocation % at the end (column 130).
    pub fn alloc_pct_at_end(&self) -> f64 {
        mean(self.seeds.iter().map(|s| s.alloc_pct_at_end))
    }

    /// Mean over seeds of each column (seeds without the column are left out).
    pub fn curve(&self) -> Vec<Option<f64>> {
        (0..=CURVE_END)
            .map(|k| {
                let vals: Vec<f64> = self.seeds.iter().filter_map(|s| s.curve[k]).collect();
                (!vals.is_empty()).then(|| round2(mean(vals.into_iter())))
            })
            .collect()
    }
}

pub(super) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// What `report.json` of `qm sim pack` holds besides the policies.
#[derive(Clone, Debug)]
pub struct PackMeta {
    pub nodes_file: String,
    pub pods_file: String,
    pub demand: f64,
    pub seeds: Vec<u64>,
}

pub(super) fn sd(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values.iter().copied());
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// The report as JSON: `{"policies": [{"policy", "alloc_pct_at_130", "curve", ...}], ...}`.
pub fn report_json(meta: &PackMeta, input: &PackInput, runs: &[PolicyRun]) -> serde_json::Value {
    let gpus = input.total_milli() / u64::from(MILLI);
    let policies: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let ends: Vec<f64> = r.seeds.iter().map(|s| s.alloc_pct_at_end).collect();
            let at_end = r.alloc_pct_at_end();
            serde_json::json!({
                "policy": r.policy.name(),
                "alloc_pct_at_130": round2(at_end),
                "alloc_pct_sd": round2(sd(&ends)),
                "unallocated_gpus": round2(gpus as f64 * (1.0 - at_end / 100.0)),
                "unscheduled_pods_mean": mean(r.seeds.iter().map(|s| s.unscheduled as f64)),
                "curve": r.curve(),
                "seeds": r.seeds.iter().map(|s| serde_json::json!({
                    "seed": s.seed,
                    "pods": s.pods,
                    "unscheduled": s.unscheduled,
                    "unscheduled_by_kind": s.unscheduled_by_kind.iter().cloned().collect::<std::collections::BTreeMap<String, usize>>(),
                    "arrived_milli": s.arrived_milli,
                    "allocated_milli": s.allocated_milli,
                    "alloc_pct_at_130": round2(s.alloc_pct_at_end),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "nodes": meta.nodes_file,
        "pods": meta.pods_file,
        "cluster_nodes": input.nodes.len(),
        "gpus": gpus,
        "trace_pods": input.pods.len(),
        "demand": meta.demand,
        "seeds": meta.seeds,
        "target_workload_types": input.types.len(),
        "policies": policies,
    })
}

/// The comparison table printed at the end of a run (Markdown).
pub fn table(input: &PackInput, runs: &[PolicyRun]) -> String {
    let gpus = (input.total_milli() / u64::from(MILLI)) as f64;
    let mut out = String::from(
        "| policy | GPU allocation % at the end (mean) | SD | unallocated GPUs | unscheduled pods |\n|---|---|---|---|---|\n",
    );
    for r in runs {
        let ends: Vec<f64> = r.seeds.iter().map(|s| s.alloc_pct_at_end).collect();
        let at_end = r.alloc_pct_at_end();
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            r.policy.name(),
            at_end,
            sd(&ends),
            gpus * (1.0 - at_end / 100.0),
            mean(r.seeds.iter().map(|s| s.unscheduled as f64)),
        ));
    }
    out
}

/// Writes `report.json`, `report.md` and `alloc.svg` (allocation against arrived demand).
pub fn write_report(
    dir: &Path,
    meta: &PackMeta,
    input: &PackInput,
    runs: &[PolicyRun],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = report_json(meta, input, runs);
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json).expect("serialisable") + "\n",
    )?;
    let series: Vec<crate::svg::Series> = runs
        .iter()
        .map(|r| crate::svg::Series {
            name: r.policy.name().to_string(),
            points: r
                .curve()
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (k as f64, v)))
                .collect(),
        })
        .collect();
    std::fs::write(
        dir.join("alloc.svg"),
        crate::svg::line_chart(
            "GPU allocation against arrived demand (mean over seeds)",
            "arrived GPU demand (% of the cluster's GPUs)",
            "allocated GPUs (%)",
            &series,
        ),
    )?;
    let seeds: Vec<String> = meta.seeds.iter().map(u64::to_string).collect();
    let md = format!(
        "# Packing: {pods} on {nodes}\n\n\
         {n} nodes, {gpus} GPUs; {trace_pods} pods in the list, tuned to {demand} × the GPUs; \
         seeds {seeds}.\n\n{table}\n![allocation](alloc.svg)\n",
        pods = meta.pods_file,
        nodes = meta.nodes_file,
        n = input.nodes.len(),
        gpus = input.total_milli() / u64::from(MILLI),
        trace_pods = input.pods.len(),
        demand = meta.demand,
        seeds = seeds.join(", "),
        table = table(input, runs),
    );
    std::fs::write(dir.join("report.md"), md)
}
