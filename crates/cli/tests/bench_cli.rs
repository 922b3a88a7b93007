//! `ferrotune bench` through the CLI: the flags reach the benchmark crate (`ferrotune-bench`), and
//! the report and the results file come out as the command printed them before the move. The
//! audit benchmark runs here (small, no model needed).

use std::process::{Command, Output};

fn bench(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_ferrotune")).arg("bench").args(args).output()?)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn bench_audit_prints_its_report_and_writes_the_results() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("audit.json");
    let out_arg = out.to_string_lossy().into_owned();
    let o = bench(&["audit", "--entries", "40", "--batch", "8", "--out", &out_arg])?;
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8(o.stdout)?;
    assert!(stdout.starts_with("bench audit: 40 entries in batches of 8 ("), "{stdout}");
    for want in
        ["\nappend: ", "| target >= 50000: ", "\nverify: ", " s for 40 entries and ", "\nprove entry 20: "]
    {
        assert!(stdout.contains(want), "`{want}` missing:\n{stdout}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!((v["entries"].as_u64(), v["batch"].as_u64()), (Some(40), Some(8)));
    assert_eq!(v["targets"]["append_per_sec"], 50000);
    assert!(v["append_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{v}");

    let o = bench(&["audit", "--entries", "0"])?;
    assert!(!o.status.success());
    assert!(text(&o).contains("error: --entries and --batch must be positive"), "{}", text(&o));
    Ok(())
}

#[test]
fn bench_refuses_an_unknown_training_shape_by_name() -> anyhow::Result<()> {
    let o = bench(&["train", "--shape", "gpt-9"])?;
    assert!(!o.status.success());
    assert!(text(&o).contains("error: unknown --shape `gpt-9` (smollm2-135m, llama-1b)"), "{}", text(&o));
    Ok(())
}
