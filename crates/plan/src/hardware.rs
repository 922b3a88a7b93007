//! Devices the plan knows: memory, peak dense bf16 TFLOP/s and memory bandwidth (the vendors'
//! data-sheet figures), and the backend ferrotune runs on them. `cpu` is this machine, read from
//! `/proc/meminfo` and the thread count.

use serde::Serialize;

use crate::error::{PlanError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// f32 weights and activations, candle's CPU kernels.
    Cpu,
    /// bf16 weights and activations (LoRA variables and optimizer state f32), CUDA.
    Cuda,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    pub name: String,
    pub backend: Backend,
    /// Memory a run can use: the GPU's, or the machine's RAM for `cpu`.
    pub memory_gib: f64,
    /// Dense bf16 (GPU) or f32 (CPU, estimated from cores) peak, TFLOP/s.
    pub peak_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// Where the figures come from.
    pub source: String,
}

/// (name, memory GiB, dense bf16 TFLOP/s, bandwidth GB/s, source). Data-sheet figures, SXM parts.
const GPUS: &[(&str, f64, f64, f64, &str)] = &[
    (
        "h200",
        141.0 * 1e9 / (1u64 << 30) as f64,
        989.0,
        4800.0,
        "NVIDIA H200 SXM data sheet (141 GB HBM3e, 989 TFLOP/s dense bf16, 4.8 TB/s)",
    ),
    (
        "h100",
        80.0 * 1e9 / (1u64 << 30) as f64,
        989.0,
        3350.0,
        "NVIDIA H100 SXM data sheet (80 GB HBM3, 989 TFLOP/s dense bf16, 3.35 TB/s)",
    ),
    (
        "a100",
        80.0 * 1e9 / (1u64 << 30) as f64,
        312.0,
        2039.0,
        "NVIDIA A100 80GB SXM data sheet (312 TFLOP/s dense bf16, 2.0 TB/s)",
    ),
    (
        "l40s",
        48.0 * 1e9 / (1u64 << 30) as f64,
        362.0,
        864.0,
        "NVIDIA L40S data sheet (48 GB GDDR6, 362 TFLOP/s dense bf16, 864 GB/s)",
    ),
    (
        "l4",
        24.0 * 1e9 / (1u64 << 30) as f64,
        121.0,
        300.0,
        "NVIDIA L4 data sheet (24 GB GDDR6, 121 TFLOP/s dense bf16, 300 GB/s)",
    ),
    (
        "a10g",
        24.0 * 1e9 / (1u64 << 30) as f64,
        70.0,
        600.0,
        "NVIDIA A10G (24 GB GDDR6, ~70 TFLOP/s dense bf16, 600 GB/s)",
    ),
];

/// The names `--hardware` accepts.
pub fn names() -> Vec<&'static str> {
    std::iter::once("cpu").chain(GPUS.iter().map(|g| g.0)).collect()
}

/// A device by name (`cpu`, `h100`, `h200`, `a100`, `l40s`, `l4`, `a10g`; case-insensitive).
pub fn lookup(name: &str) -> Result<Hardware> {
    let n = name.to_ascii_lowercase();
    if n == "cpu" {
        return Ok(this_cpu());
    }
    GPUS.iter()
        .find(|g| g.0 == n)
        .map(|&(name, mem, tflops, bw, source)| Hardware {
            name: name.into(),
            backend: Backend::Cuda,
            memory_gib: mem,
            peak_tflops: tflops,
            bandwidth_gbs: bw,
            source: source.into(),
        })
        .ok_or_else(|| PlanError::Unknown { what: "hardware", name: name.into(), known: names().join(", ") })
}

/// This machine: RAM from `/proc/meminfo`, threads from the OS. Peak f32 FLOP/s is not read
/// from the CPU (the plan's CPU times come from measured records, never from a peak).
pub fn this_cpu() -> Hardware {
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    });
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Hardware {
        name: "cpu".into(),
        backend: Backend::Cpu,
        memory_gib: mem_kib.map_or(f64::NAN, |k| k / (1024.0 * 1024.0)),
        peak_tflops: f64::NAN,
        bandwidth_gbs: f64::NAN,
        source: format!("this machine: {threads} threads, MemTotal from /proc/meminfo"),
    }
}
