//! `ferrotune bench audit`: appends/s in batches (the server's way) and the time to verify the
//! whole log (every leaf rehashed, every checkpoint's signature and root checked), against the
//! targets (>= 50,000 appends/s; 1M entries verified in < 10 s).

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_govern::audit::{AuditConfig, AuditLog, Event};

use crate::error::{BenchError, Result};

#[derive(Debug, Clone)]
pub struct AuditBench {
    /// Entries appended (then verified).
    pub entries: u64,
    /// Entries per append (one lock, one write, one fsync each).
    pub batch: u64,
    /// Also write the results as JSON here.
    pub out: Option<PathBuf>,
}

/// A fresh log in a temporary folder, filled with inference-shaped events.
pub fn run(b: &AuditBench) -> Result<()> {
    if b.entries == 0 || b.batch == 0 {
        return Err(BenchError::InvalidSetting("--entries and --batch must be positive".into()));
    }
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temporary folder", e))?;
    let cfg = AuditConfig { origin: Some("bench.ferrotune/audit".into()), ..AuditConfig::default() };
    let log = AuditLog::open(dir.path(), &cfg)?;
    let event = |i: u64| {
        Event::new(
            "bench-key",
            "inference",
            serde_json::json!({"request": format!("req-{i:012}"), "model": "support@3"}),
            "ok",
            serde_json::json!({"status": 200, "prompt_tokens": 100 + i % 400, "completion_tokens": 64, "latency_ms": 800 + i % 300,
                "cache_hit": i.is_multiple_of(5), "stream": true, "finish_reason": "stop"}),
        )
    };
    println!("bench audit: {} entries in batches of {} ({})", b.entries, b.batch, dir.path().display());
    let t0 = Instant::now();
    let mut done = 0;
    while done < b.entries {
        let n = b.batch.min(b.entries - done);
        let batch: Vec<Event> = (done..done + n).map(event).collect();
        log.append(&batch)?;
        done += n;
    }
    let append_s = t0.elapsed().as_secs_f64();
    let per_sec = b.entries as f64 / append_s;
    let t1 = Instant::now();
    let report = log.verify(None)?;
    let verify_s = t1.elapsed().as_secs_f64();
    if !report.ok {
        return Err(BenchError::Failed(format!(
            "the benchmark's log does not verify: {:?}",
            report.problems
        )));
    }
    let t2 = Instant::now();
    log.prove(b.entries / 2)?;
    let prove_ms = t2.elapsed().as_secs_f64() * 1e3;
    let bytes: u64 = std::fs::read_dir(dir.path())
        .map_err(|e| BenchError::io(dir.path().display().to_string(), e))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "append: {per_sec:.0} entries/s ({append_s:.1} s) | target >= 50000: {:.2}x",
        per_sec / 50_000.0
    );
    println!(
        "verify: {verify_s:.2} s for {} entries and {} checkpoints ({:.2} s per million) | target < 10 s per million: {:.2}x headroom",
        report.entries,
        report.checkpoints,
        verify_s * 1e6 / b.entries as f64,
        10.0 / (verify_s * 1e6 / b.entries as f64)
    );
    println!("prove entry {}: {prove_ms:.1} ms | log files {:.1} MB", b.entries / 2, bytes as f64 / 1e6);
    if let Some(out) = &b.out {
        let v = serde_json::json!({
            "entries": b.entries, "batch": b.batch, "append_per_sec": per_sec, "append_secs": append_s,
            "verify_secs": verify_s, "checkpoints": report.checkpoints, "prove_ms": prove_ms, "bytes": bytes,
            "targets": {"append_per_sec": 50000, "verify_secs_per_million": 10},
        });
        std::fs::write(out, serde_json::to_string_pretty(&v)? + "\n")
            .map_err(|e| BenchError::io(out.display().to_string(), e))?;
    }
    Ok(())
}
