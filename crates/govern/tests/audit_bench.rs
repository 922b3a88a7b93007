//! Throughput, not correctness (ignored in normal runs):
//! `cargo test --release -p ferrotune-govern --test audit_bench -- --ignored --nocapture`
//! (AUDIT_BENCH_ENTRIES=N for another log size, default 1M; AUDIT_BENCH_BATCH=B, default 1000).
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use serde_json::json;

/// An inference event of the size the server writes (~230 bytes canonical).
fn ev(i: u64) -> Event {
    Event::new(
        "key-prod-7",
        "inference",
        json!({"model": "support@3", "request": format!("req-{i:012}")}),
        "ok",
        json!({"prompt_tokens": 100 + i % 900, "completion_tokens": i % 300, "latency_ms": 12.5, "status": 200, "stream": false}),
    )
}

#[test]
#[ignore]
fn bench_appends_and_verify() {
    let n: u64 = std::env::var("AUDIT_BENCH_ENTRIES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let cfg = AuditConfig { origin: Some("ferrotune.bench/audit".into()), ..AuditConfig::default() };
    let log = AuditLog::open(dir.path(), &cfg).unwrap();
    let batch: u64 = std::env::var("AUDIT_BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let t = Instant::now();
    let mut in_append = 0.0;
    for b in 0..n / batch {
        let events: Vec<Event> = (0..batch).map(|i| ev(b * batch + i)).collect();
        let t0 = Instant::now();
        log.append(&events).unwrap();
        in_append += t0.elapsed().as_secs_f64();
    }
    let total = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.path().join("entries.log")).unwrap().len();
    println!(
        "append: {n} entries in batches of {batch}: {:.0} appends/s ({:.2} s in append, {:.2} s total with building the events); \
         entries.log {:.0} MB, {} checkpoints",
        n as f64 / in_append,
        in_append,
        total,
        bytes as f64 / 1e6,
        std::fs::read_dir(dir.path().join("checkpoints")).unwrap().count()
    );
    let t = Instant::now();
    let fresh = AuditLog::open(dir.path(), &cfg).unwrap();
    println!("open: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    fresh.append(&[ev(n)]).unwrap();
    println!(
        "first append of a fresh handle (frontier rebuilt from leaves.bin): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let r = fresh.verify(None).unwrap();
    println!(
        "verify: {} entries, {} checkpoints in {:.2} s (ok: {})",
        r.entries,
        r.checkpoints,
        t.elapsed().as_secs_f64(),
        r.ok
    );
    assert!(r.ok, "{r:?}");
    let t = Instant::now();
    fresh.prove(n / 2).unwrap();
    println!("prove: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    // The 1000 requests from n/2 on (their ids share all but the last three digits).
    let id = format!("req-{:012}", n / 2 / 1000 * 1000);
    let f = Filter { subject: Some(id[..id.len() - 3].into()), ..Filter::default() };
    let k = fresh.export(&f, &dir.path().join("export")).unwrap();
    println!("export of {k} entries: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let hits = fresh
        .entries(&Filter { action: Some("inference".into()), limit: Some(20), ..Filter::default() }, true)
        .unwrap();
    println!("tail 20: {:.2} s ({} rows)", t.elapsed().as_secs_f64(), hits.len());
}
