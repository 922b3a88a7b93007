//! Crash safety of `ferrotune train`, for real: the binary is stopped at an exact place inside a
//! write by `FERROTUNE_TEST_CRASH_AT` (the trainer's test-only fault injection, which then waits),
//! killed there with SIGKILL, and the run folder must come back usable: `--resume` repairs it
//! and finishes, the metrics equal an uninterrupted run's, every checkpoint, `best/` and
//! `adapter/` are complete (byte-equal to the uninterrupted run's) and load, nothing half-written
//! is left. Also: a second trainer on a locked run folder is refused, a dead one's lock is not.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};
use ferrotune_train::crash::{ENV, REACHED};

fn ferrotune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrotune"));
    c.env_remove(ENV);
    c
}

fn setup(dir: &Path) -> anyhow::Result<()> {
    ferrotune_model::testing::write_tiny_model(&dir.join("tiny"))?;
    let mut rows = String::new();
    for i in 0..24 {
        let q = format!("Please spell the number {i} backwards, with care.");
        let a = format!("[ok] {} -- bye", i.to_string().chars().rev().collect::<String>());
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        rows.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), rows)?;
    Ok(())
}

/// Six steps, a checkpoint and an eval (so a new `best/` while it improves) every two.
fn train_args(dir: &Path, out: &str, extra: &[&str]) -> Vec<String> {
    let data = dir.join("train.jsonl").display().to_string();
    let mut v: Vec<String> = [
        "train",
        "--model",
        &dir.join("tiny").display().to_string(),
        "--data",
        &data,
        "--eval-data",
        &data,
        "--out",
        &dir.join(out).display().to_string(),
        "--max-steps",
        "6",
        "--save-steps",
        "2",
        "--eval-steps",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_ok(args: &[String]) -> anyhow::Result<String> {
    let out = ferrotune().args(args).output()?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "`ferrotune {}` failed: {err}", args.join(" "));
    Ok(err)
}

/// Start `ferrotune ARGS` with the crash point set and return it once it waits there (still
/// alive, holding the run lock). Fails if it ends without reaching the point.
fn stop_at(args: &[String], point: &str) -> anyhow::Result<Child> {
    let mut child =
        ferrotune().args(args).env(ENV, point).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains(REACHED) {
            return Ok(child);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait()?;
    bail!("crash point `{point}` was never reached (exit {status}); stderr:\n{seen}")
}

fn kill9(mut child: Child) -> anyhow::Result<()> {
    child.kill()?; // SIGKILL on Unix
    child.wait()?;
    Ok(())
}

/// Run with `point` set, kill it there with SIGKILL.
fn crash_at(args: &[String], point: &str) -> anyhow::Result<()> {
    kill9(stop_at(args, point)?)
}

fn files(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.insert(p.strip_prefix(root)?.to_path_buf(), std::fs::read(&p)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn metrics(run: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))?
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_sec"); // timing differs between runs
            }
            Ok(v)
        })
        .collect()
}

/// `run` is what `straight` (never interrupted) is: same files, no temp or aside copies left,
/// weights, optimizer state and trainer state byte-equal, same metrics; and its adapters load.
fn assert_complete(dir: &Path, run: &Path, straight: &Path) -> anyhow::Result<()> {
    let (got, want) = (files(run)?, files(straight)?);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "the run folder's files differ from an uninterrupted run's");
    for (p, bytes) in &want {
        let top =
            p.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        if !["adapter", "model", "best", "checkpoints"].contains(&top.as_str()) {
            continue;
        }
        let same = match got.get(p) {
            // JSON by value: an exported tokenizer_config.json lists its added tokens in hash
            // order, which differs between processes.
            Some(g) if p.extension().is_some_and(|e| e == "json") => {
                serde_json::from_slice::<serde_json::Value>(g)?
                    == serde_json::from_slice::<serde_json::Value>(bytes)?
            }
            g => g == Some(bytes),
        };
        assert!(same, "{} differs from the uninterrupted run's", p.display());
    }
    assert_eq!(metrics(run)?, metrics(straight)?);
    let lineage: serde_json::Value = serde_json::from_slice(&got[Path::new("lineage.json")])?;
    let want_lineage: serde_json::Value = serde_json::from_slice(&want[Path::new("lineage.json")])?;
    // The weights' hashes (JSON files are compared by value above).
    let shas = |v: &serde_json::Value| {
        v["output"]["files"].as_array().map(|f| {
            f.iter()
                .filter(|x| x["path"].as_str().is_some_and(|p| !p.ends_with(".json")))
                .map(|x| x["sha256"].clone())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(shas(&lineage), shas(&want_lineage));
    let mut m = ferrotune_model::load_path(
        &dir.join("tiny"),
        ferrotune_model::WeightMode::F32,
        &candle_core::Device::Cpu,
    )?;
    for name in ["adapter", "best", "model"] {
        let folder = run.join(name);
        if folder.join("adapter_config.json").exists() {
            let a = ferrotune_model::Adapter::load(&folder, &mut m.model)
                .with_context(|| format!("loading {name}/"))?;
            ensure!(!a.layers.is_empty(), "{name}/ has no layers");
        } else if folder.exists() {
            // Full fine-tuning: an HF model folder.
            ferrotune_model::load_path(&folder, ferrotune_model::WeightMode::F32, &candle_core::Device::Cpu)
                .with_context(|| format!("loading {name}/"))?;
        }
    }
    Ok(())
}

/// Killed between the renames of `name/`: `--resume` first puts the aside copy back (a
/// resumed run would write a new one anyway; this is what makes the folder usable before that),
/// seen here by stopping the resume at its first write after the repair.
fn assert_restored_before_training(dir: &Path, run: &Path, name: &str) -> anyhow::Result<()> {
    let old = std::fs::read(run.join(format!(".{name}.old/adapter_model.safetensors")))?;
    let resume = stop_at(&train_args(dir, "killed", &["--resume"]), "metrics-rewrite")?;
    let restored = std::fs::read(run.join(name).join("adapter_model.safetensors"));
    let aside_left = run.join(format!(".{name}.old")).exists();
    kill9(resume)?;
    assert!(restored.ok().as_ref() == Some(&old), "{name}/ was not restored from its aside copy");
    assert!(!aside_left, ".{name}.old left after the repair");
    Ok(())
}

fn straight_run(dir: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    run_ok(&train_args(dir, "straight", extra))?;
    Ok(dir.join("straight"))
}

/// Fresh run killed at `point`, then `--resume` until done.
fn kill_then_resume(point: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let straight = straight_run(d, &[])?;
    crash_at(&train_args(d, "killed", &[]), point)?;
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &d.join("killed"), &straight)
}

#[test]
fn killed_with_a_new_checkpoint_written_but_not_renamed_resumes_from_the_one_before() -> anyhow::Result<()> {
    kill_then_resume("checkpoint-fill:2")
}

#[test]
fn killed_halfway_through_a_checkpoint_resumes_from_the_one_before() -> anyhow::Result<()> {
    // trainer_state.json is the checkpoint's last file.
    kill_then_resume("trainer_state:2")
}

#[test]
fn killed_with_a_new_best_written_but_not_renamed_resumes() -> anyhow::Result<()> {
    kill_then_resume("best-fill:2")
}

#[test]
fn killed_with_the_final_adapter_written_but_not_renamed_resumes() -> anyhow::Result<()> {
    kill_then_resume("adapter-fill")
}

#[test]
fn killed_while_writing_the_lineage_resumes() -> anyhow::Result<()> {
    kill_then_resume("lineage")
}

/// The bug: `best/` was deleted before the new one was renamed in, so a kill between left no
/// `best/` at all. Now the old one waits aside and comes back.
#[test]
fn killed_between_moving_best_aside_and_renaming_the_new_one_in_keeps_a_best() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let straight = straight_run(d, &[])?;
    let run = d.join("killed");
    // The first swap: step 4's best replacing step 2's.
    crash_at(&train_args(d, "killed", &[]), "best-swap")?;
    assert!(
        !run.join("best").exists() && run.join(".best.old/adapter_model.safetensors").is_file(),
        "not killed inside the swap"
    );
    assert_restored_before_training(d, &run, "best")?;
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &run, &straight)?;
    // And `ferrotune eval` takes the repaired run's adapters.
    let eval_out = d.join("eval");
    let adapters =
        [format!("best={}", run.join("best").display()), format!("final={}", run.join("adapter").display())];
    let data = d.join("train.jsonl").display().to_string();
    let mut args: Vec<String> = [
        "eval",
        "--model",
        &d.join("tiny").display().to_string(),
        "--data",
        &data,
        "--max-tokens",
        "4",
        "--limit",
        "4",
        "--resamples",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for a in &adapters {
        args.extend(["--adapter".to_string(), a.clone()]);
    }
    args.extend(["--out".to_string(), eval_out.display().to_string()]);
    run_ok(&args)?;
    assert!(eval_out.join("eval.json").is_file());
    Ok(())
}

/// The final adapter is only swapped (an old one aside) when a finished run is resumed again.
#[test]
fn killed_inside_the_final_adapter_swap_of_a_rerun_keeps_an_adapter() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let straight = straight_run(d, &[])?;
    let run = d.join("killed");
    run_ok(&train_args(d, "killed", &[]))?;
    crash_at(&train_args(d, "killed", &["--resume"]), "adapter-swap")?;
    assert!(!run.join("adapter").exists() && run.join(".adapter.old").is_dir(), "not killed inside the swap");
    assert_restored_before_training(d, &run, "adapter")?;
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &run, &straight)
}

/// `--resume` rewrites metrics.jsonl without the lines after its checkpoint; killed there, the
/// old file must still be whole.
#[test]
fn killed_while_resume_rewrites_the_metrics_keeps_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let straight = straight_run(d, &[])?;
    let run = d.join("killed");
    crash_at(&train_args(d, "killed", &[]), "checkpoint-fill:2")?;
    let before = std::fs::read(run.join("metrics.jsonl"))?;
    crash_at(&train_args(d, "killed", &["--resume"]), "metrics-rewrite")?;
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl"))?,
        before,
        "metrics.jsonl changed before its rewrite was renamed in"
    );
    assert!(run.join(".metrics.jsonl.tmp").is_file(), "not killed inside the rewrite");
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &run, &straight)
}

/// A run that early stopping ended, killed while writing its adapter, is done when resumed:
/// it used to train on to max_steps.
#[test]
fn an_early_stopped_run_killed_at_its_adapter_resumes_without_training_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    // No eval can improve by 100 nats: stopped at the first eval after step 0 (step 2).
    let stop = ["--early-stopping-patience", "1", "--early-stopping-threshold", "100"];
    let straight = straight_run(d, &stop)?;
    ensure!(
        metrics(&straight)?.last().and_then(|m| m["step"].as_u64()) == Some(2),
        "the reference run did not stop early at step 2"
    );
    crash_at(&train_args(d, "killed", &stop), "adapter-fill")?;
    let mut resume = stop.to_vec();
    resume.push("--resume");
    run_ok(&train_args(d, "killed", &resume))?;
    assert_complete(d, &d.join("killed"), &straight)
}

#[test]
fn a_second_trainer_on_a_run_folder_is_refused_and_a_dead_ones_lock_is_not() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let straight = straight_run(d, &[])?;
    let run = d.join("killed");
    let first = stop_at(&train_args(d, "killed", &[]), "checkpoint-fill:2")?;
    let pid = first.id();
    for extra in [&[][..], &["--resume"][..]] {
        let out = ferrotune().args(train_args(d, "killed", extra)).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a second trainer ran beside the first ({extra:?})");
        assert!(err.contains(&run.display().to_string()) && err.contains(&format!("pid {pid}")), "{err}");
    }
    // The refused ones touched nothing: the first's temp checkpoint is still there.
    assert!(run.join("checkpoints/.step-4.tmp").is_dir());
    kill9(first)?;
    // Its lock file (naming the dead pid) stays; the kernel dropped the lock itself.
    assert_eq!(std::fs::read_to_string(run.join("train.lock"))?.trim(), pid.to_string());
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &run, &straight)
}

/// Pruning renames a checkpoint to `.step-N.del` before deleting it: a kill midway must not
/// leave a half-deleted `step-N/` that `--resume` would take for a complete one.
#[test]
fn killed_while_pruning_a_checkpoint_leaves_none_half_deleted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let limit = ["--save-total-limit", "1"];
    let straight = straight_run(d, &limit)?;
    let run = d.join("killed");
    crash_at(&train_args(d, "killed", &limit), "remove")?;
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(left.iter().any(|n| n.ends_with(".del")), "not killed inside a prune: {left:?}");
    let mut resume = limit.to_vec();
    resume.push("--resume");
    run_ok(&train_args(d, "killed", &resume))?;
    assert_complete(d, &run, &straight)
}

/// Full fine-tuning writes `model/` (and `best/`) as HF folders through the same swaps.
#[test]
fn a_full_fine_tuning_run_killed_at_its_model_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    setup(d)?;
    let full = ["--method", "full"];
    let straight = straight_run(d, &full)?;
    let run = d.join("killed");
    run_ok(&train_args(d, "killed", &full))?;
    crash_at(&train_args(d, "killed", &["--resume"]), "model-swap")?;
    assert!(
        !run.join("model").exists() && run.join(".model.old/model.safetensors").is_file(),
        "not killed inside the swap"
    );
    run_ok(&train_args(d, "killed", &["--resume"]))?;
    assert_complete(d, &run, &straight)
}
