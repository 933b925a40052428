//! GPU discovery behind one trait: `nvidia-smi` where NVIDIA's driver is installed, simulated
//! GPUs elsewhere (a laptop, CI). Simulated GPUs take their utilisation from the CPU use of the
//! task's processes, so a task that sleeps looks idle and one that computes looks busy.

use std::process::Command;

/// One GPU as discovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub model: String,
    pub mem_mib: u64,
}

/// Where GPUs and their utilisation come from.
pub trait GpuProbe: Send {
    fn gpus(&self) -> Vec<Gpu>;
    /// Utilisation of these GPUs now, percent (None: the probe cannot tell; use CPU use).
    fn utilisation(&self, indices: &[u32]) -> Option<u8>;
}

/// `count` simulated GPUs of model `SIM`.
pub struct Simulated {
    pub count: u32,
}

impl GpuProbe for Simulated {
    fn gpus(&self) -> Vec<Gpu> {
        (0..self.count)
            .map(|index| Gpu {
                index,
                model: "SIM".into(),
                mem_mib: 81_920,
            })
            .collect()
    }

    fn utilisation(&self, _: &[u32]) -> Option<u8> {
        None
    }
}

/// The real GPUs, through NVIDIA's `nvidia-smi` (which queries NVML).
pub struct NvidiaSmi;

impl NvidiaSmi {
    /// The probe, if `nvidia-smi` answers with at least one GPU.
    pub fn detect() -> Option<NvidiaSmi> {
        (!NvidiaSmi.gpus().is_empty()).then_some(NvidiaSmi)
    }

    fn query(fields: &str) -> Vec<Vec<String>> {
        let Ok(out) = Command::new("nvidia-smi")
            .args([
                &format!("--query-gpu={fields}"),
                "--format=csv,noheader,nounits",
            ])
            .output()
        else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
            .collect()
    }
}

impl GpuProbe for NvidiaSmi {
    fn gpus(&self) -> Vec<Gpu> {
        NvidiaSmi::query("index,name,memory.total")
            .into_iter()
            .filter_map(|f| {
                Some(Gpu {
                    index: f.first()?.parse().ok()?,
                    model: f.get(1)?.replace(' ', "-"),
                    mem_mib: f.get(2)?.parse().ok()?,
                })
            })
            .collect()
    }

    fn utilisation(&self, indices: &[u32]) -> Option<u8> {
        let rows = NvidiaSmi::query("index,utilization.gpu");
        let pcts: Vec<u8> = rows
            .into_iter()
            .filter_map(|f| {
                let i: u32 = f.first()?.parse().ok()?;
                let u: u8 = f.get(1)?.parse().ok()?;
                indices.contains(&i).then_some(u)
            })
            .collect();
        pcts.into_iter().max()
    }
}
