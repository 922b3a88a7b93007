//! `ferrotune train` as a user runs it, on a tiny model: a run killed with SIGKILL between
//! steps and resumed with `--resume` logs the same losses as an uninterrupted run; bad flags
//! fail with a clear message and a non-zero exit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ferrotune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
}

fn setup(dir: &Path) -> anyhow::Result<()> {
    ferrotune_model::testing::write_tiny_model(&dir.join("tiny"))?;
    let mut rows = String::new();
    for i in 0..64 {
        let q = format!("Please spell the number {i} backwards, with care.");
        let a = format!("[ok] {} -- bye", i.to_string().chars().rev().collect::<String>());
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        rows.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), rows)?;
    Ok(())
}

fn train_args(dir: &Path, out: &str) -> Vec<String> {
    [
        "train",
        "--model",
        &dir.join("tiny").display().to_string(),
        "--data",
        &dir.join("train.jsonl").display().to_string(),
        "--out",
        &dir.join(out).display().to_string(),
        "--max-steps",
        "40",
        "--save-steps",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn losses(run: &Path) -> anyhow::Result<Vec<String>> {
    // Whole lines minus the timing field, which differs between runs.
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_sec");
            }
            Ok(v.to_string())
        })
        .collect()
}

#[test]
fn sigkill_between_steps_then_resume_equals_an_uninterrupted_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let status = ferrotune().args(train_args(dir.path(), "straight")).stdout(Stdio::null()).status()?;
    assert!(status.success());

    let mut child = ferrotune()
        .args(train_args(dir.path(), "killed"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ckpt = dir.path().join("killed/checkpoints/step-3");
    let start = Instant::now();
    while !ckpt.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?; // SIGKILL on Unix
    child.wait()?;
    let finished_before_kill = dir.path().join("killed/adapter").exists();

    let out = ferrotune().args(train_args(dir.path(), "killed")).arg("--resume").output()?;
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&dir.path().join("straight"))?, losses(&dir.path().join("killed"))?);
    assert!(!finished_before_kill, "the kill came after the run ended; the test proved nothing");
    Ok(())
}

#[test]
fn bad_flags_fail_with_a_clear_message_and_nothing_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let mut args = train_args(dir.path(), "bad");
    args.extend(["--lora-r".into(), "0".into()]);
    let out = ferrotune().args(&args).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lora_r") && err.contains("at least 1"), "{err}");
    assert!(!dir.path().join("bad/checkpoints").exists());
    let out = ferrotune().args(["train", "--data", "/nonexistent.jsonl"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.jsonl"));
    Ok(())
}

#[test]
fn training_tunes_malloc_before_any_thread_starts() -> anyhow::Result<()> {
    // Regression: `mallopt` ran after rayon's pool had started, against its safety comment; now
    // the binary checks the thread count first and warns instead of calling it late.
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let mut args = train_args(dir.path(), "m");
    let steps = args.iter().position(|a| a == "--max-steps").expect("--max-steps") + 1;
    args[steps] = "2".into();
    let out = ferrotune().args(&args).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("not tuning malloc"), "{err}");
    Ok(())
}
