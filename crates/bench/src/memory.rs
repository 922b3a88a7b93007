//! Peak memory of a benchmark run: this process's peak RSS on the CPU, the device's peak use
//! (nvidia-smi) on a GPU — the same measures for ferrotune and its peer.

use std::process::Command;

/// This process's peak resident set (`VmHWM`), GiB; NaN where /proc is not there.
pub fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN)
}

/// The largest `memory.used` nvidia-smi reports for one GPU while it runs (sampled every 20 ms):
/// the whole device's use, CUDA context included — the same measure for both engines.
pub struct GpuMemSampler {
    child: std::process::Child,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GpuMemSampler {
    /// Starts sampling GPU `gpu`; `None` without nvidia-smi.
    pub fn start(gpu: usize) -> Option<Self> {
        use std::io::BufRead;
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                &gpu.to_string(),
                "-lms",
                "20",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let out = child.stdout.take()?;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mib) = line.trim().parse::<u64>() {
                    p.fetch_max(mib, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        Some(Self { child, peak, reader: Some(reader) })
    }

    /// Stops sampling; the peak seen, GiB.
    pub fn stop(mut self) -> f64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}
