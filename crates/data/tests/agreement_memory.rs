//! `validate` on annotations with 100k distinct labels stays under 500 MiB of peak RSS.
//!
//! Regression: Krippendorff's α kept a dense label × label coincidence matrix (8 · 100k² bytes,
//! ~80 GB) and the process aborted. The measurement is the kernel's own: the test runs itself
//! again as a child process doing only the validation, the parent watches the child's `VmHWM`
//! (peak resident set) in `/proc/<pid>/status` while it runs and kills it past the limit (so the
//! old code fails in seconds instead of swapping), and the child reports its final `VmHWM`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrotune_data::ValidateOptions;
use ferrotune_data::validate::validate;

const CHILD: &str = "FERROTUNE_TEST_AGREEMENT_FILE";
const LIMIT_KIB: u64 = 500 * 1024;
const UNITS: usize = 1000;
const LABELS_PER_UNIT: usize = 100;

/// `VmHWM` (peak resident set, KiB) from a `/proc/<pid>/status` text.
fn peak_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn write_rows(path: &Path) -> std::io::Result<()> {
    let mut out = String::new();
    for u in 0..UNITS {
        let labels: Vec<String> = (0..LABELS_PER_UNIT).map(|j| format!("label-{u}-{j}")).collect();
        let row = serde_json::json!({
            "messages": [
                {"role": "user", "content": format!("Question {u}: which depot handles parcel {}?", u * 7)},
                {"role": "assistant", "content": format!("Depot {} handles it, ticket {}.", u * 3, u * 11)}],
            "metadata": {"annotations": labels}});
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// The child: validate, check the result, print the peak RSS.
fn child(path: &Path) {
    let r = validate(&[path.to_path_buf()], &ValidateOptions::default()).expect("validate");
    let a = r.agreement.as_ref().expect("agreement");
    assert_eq!((a.units, a.labels.len()), (UNITS as u64, UNITS * LABELS_PER_UNIT));
    // Every unit's labels all differ: as much disagreement as chance gives, α = 0.
    assert!(a.alpha.is_some_and(|x| x.abs() < 1e-9), "{:?}", a.alpha);
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    println!("child peak {} KiB", peak_kib(&status).expect("VmHWM"));
}

#[test]
fn validate_with_100k_distinct_annotation_labels_peaks_under_500_mib() {
    if let Some(path) = std::env::var_os(CHILD) {
        return child(Path::new(&path));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("labels.jsonl");
    write_rows(&path).expect("write");
    let mut c = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "validate_with_100k_distinct_annotation_labels_peaks_under_500_mib",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let proc_status = format!("/proc/{}/status", c.id());
    let start = Instant::now();
    let mut watched_peak = 0;
    let status = loop {
        if let Some(s) = c.try_wait().expect("wait") {
            break s;
        }
        if let Some(kib) = std::fs::read_to_string(&proc_status).ok().as_deref().and_then(peak_kib) {
            watched_peak = watched_peak.max(kib);
            if kib > LIMIT_KIB || start.elapsed() > Duration::from_secs(300) {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "validate reached {kib} KiB of peak RSS after {:?} (limit {LIMIT_KIB} KiB)",
                    start.elapsed()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    c.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
    c.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    assert!(status.success(), "child failed: {out}{err}");
    let peak: u64 = out
        .lines()
        .find_map(|l| l.split("child peak ").nth(1)?.strip_suffix(" KiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no peak reported: {out}{err}"));
    eprintln!(
        "validate with {} distinct labels: peak RSS {peak} KiB (watched {watched_peak} KiB)",
        UNITS * LABELS_PER_UNIT
    );
    assert!(peak < LIMIT_KIB, "peak RSS {peak} KiB over {LIMIT_KIB} KiB");
}
