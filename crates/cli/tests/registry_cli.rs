//! The registry as a user meets it, through the binary on a tiny random model: `data validate`,
//! `train` and `eval` record themselves; `registry list/show/history`; promotion to `champion`
//! through a second user's approval with an evaluation gate; the kill switch; a model card;
//! `import` of a run made without the registry; two trainings registering at once; a training
//! killed with SIGKILL shows as abandoned.

mod home;

use std::process::Command;

use anyhow::{Context, ensure};
use home::{Home, text};
use serde_json::Value;

struct Env {
    home: Home,
}

impl std::ops::Deref for Env {
    type Target = Home;
    fn deref(&self) -> &Home {
        &self.home
    }
}

impl Env {
    fn new() -> anyhow::Result<Self> {
        let home = Home::new()?;
        ferrotune_model::testing::write_tiny_model(&home.path("tiny"))?;
        let mut train = String::new();
        let mut eval = String::new();
        for i in 0..16 {
            let q = format!("Spell {i} backwards.");
            let a = format!("[ok] {}", i.to_string().chars().rev().collect::<String>());
            let row = serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string();
            if i < 12 { &mut train } else { &mut eval }.push_str(&(row + "\n"));
        }
        std::fs::write(home.path("train.jsonl"), train)?;
        std::fs::write(home.path("eval.jsonl"), eval)?;
        Ok(Self { home })
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        self.json_as("alice", args)
    }

    fn train_args(&self, out: &str, seed: &str) -> Vec<String> {
        [
            "train",
            "--model",
            &self.s("tiny"),
            "--data",
            &self.s("train.jsonl"),
            "--out",
            &self.s(out),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
            "--seed",
            seed,
            "--quiet",
            "--register-as",
            "support",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn train(&self, out: &str, seed: &str) -> anyhow::Result<String> {
        let args = self.train_args(out, seed);
        self.ok("alice", &args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

fn rougel_of(eval: &Value, system: &str) -> f64 {
    let m =
        eval["metrics"].as_array().and_then(|ms| ms.iter().find(|m| m["name"] == "rougeL")).expect("rougeL");
    m["scores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == system))
        .and_then(|s| s["value"].as_f64())
        .expect("score")
}

#[test]
fn a_run_is_recorded_promoted_by_a_second_user_through_the_gate_disabled_and_carded() -> anyhow::Result<()> {
    let e = Env::new()?;
    // Data, two trainings (support v1 and v2), one evaluation of both.
    let v = e.ok("alice", &["data", "validate", "train.jsonl", "--eval", "eval.jsonl"])?;
    assert!(v.contains("registered: 2 dataset(s)"), "{v}");
    let t = e.train("runs/a", "1")?;
    assert!(t.contains("registered: support@1"), "{t}");
    let t = e.train("runs/b", "2")?;
    assert!(t.contains("registered: support@2"), "{t}");
    let ev = e.ok(
        "alice",
        &[
            "eval",
            "--model",
            &e.s("tiny"),
            "--data",
            "eval.jsonl",
            "--adapter",
            "a=runs/a/adapter",
            "--adapter",
            "b=runs/b/adapter",
            "--max-tokens",
            "6",
            "--metrics",
            "rougeL",
            "--resamples",
            "50",
            "--out",
            "ev",
        ],
    )?;
    assert!(ev.contains("2 of 3 systems matched"), "{ev}");

    let datasets = e.json(&["registry", "list", "datasets"])?;
    let train_ds = datasets
        .as_array()
        .and_then(|d| d.iter().find(|d| d["path"].as_str().is_some_and(|p| p.ends_with("train.jsonl"))))
        .context("train data")?;
    assert_eq!(train_ds["rows"], 12);
    assert_eq!(train_ds["format"], "chat");
    let runs = e.json(&["registry", "list", "runs"])?;
    assert_eq!(runs.as_array().map(Vec::len), Some(2));
    for r in runs.as_array().into_iter().flatten() {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["actor"], "alice");
        assert!(r["tokens"].as_u64().is_some_and(|t| t > 0), "{r}");
        assert!(
            r["flops"]["value"].as_f64().is_some_and(|f| f > 0.0)
                && r["flops"]["formula"].as_str().is_some_and(|f| f.contains("N_lora")),
            "{r}"
        );
    }
    let arts = e.json(&["registry", "list", "artifacts"])?;
    let versions: Vec<u64> =
        arts.as_array().into_iter().flatten().filter_map(|a| a["version"].as_u64()).collect();
    assert_eq!(versions, vec![1, 2]);
    let evals = e.json(&["registry", "list", "evals"])?;
    assert_eq!(evals.as_array().map(Vec::len), Some(1));

    // Lineage: data → run → artifact → eval.
    let show = e.ok("alice", &["registry", "show", "support@2"])?;
    for part in ["support@2", "train.jsonl", "eval"] {
        assert!(show.contains(part), "{part} missing from\n{show}");
    }
    let dot = e.ok("alice", &["registry", "show", "support@2", "--dot"])?;
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");

    // The gate: champion moves only to a version no worse on rougeL than the current holder.
    std::fs::create_dir_all(e.path("home"))?;
    std::fs::write(
        e.path("home/policy.toml"),
        format!(
            "[alias.champion]\napprovers = 1\ngates = [\"rougeL:0.0\"]\ngate_data = \"{}\"\n",
            e.s("eval.jsonl")
        ),
    )?;
    // First champion: compared with the base in the same evaluation.
    let eval_json: Value = serde_json::from_str(&std::fs::read_to_string(e.path("ev/eval.json"))?)?;
    let (base, a, b) =
        (rougel_of(&eval_json, "base"), rougel_of(&eval_json, "a"), rougel_of(&eval_json, "b"));
    let (first, second) = if a >= base { (1, 2) } else { (2, 1) };
    let first_score = if first == 1 { a } else { b };
    let second_score = if second == 1 { a } else { b };
    if first_score < base {
        // Neither beats the base: the gate must refuse, naming the rule.
        let o =
            e.cmd("alice", &["registry", "promote", "support", "1", "--to", "champion", "--reason", "first"]);
        assert!(!o.status.success() && text(&o).contains("rougeL"), "{}", text(&o));
        return Ok(());
    }
    let p = e.ok(
        "alice",
        &[
            "registry",
            "promote",
            "support",
            &first.to_string(),
            "--to",
            "champion",
            "--reason",
            "first release",
        ],
    )?;
    assert!(p.contains("request 1"), "{p}");
    // The requester cannot approve their own request.
    let o = e.cmd("alice", &["registry", "approve", "1"]);
    assert!(!o.status.success(), "{}", text(&o));
    let ok = e.ok("bob", &["registry", "approve", "1"])?;
    assert!(ok.contains(&format!("support@{first}")), "{ok}");
    let aliases = e.json(&["registry", "list", "aliases"])?;
    assert_eq!(aliases[0]["version"], first);

    // The other version against the champion: refused when worse, applied after approval when not.
    let o = e.cmd(
        "alice",
        &["registry", "promote", "support", &second.to_string(), "--to", "champion", "--reason", "second"],
    );
    if second_score < first_score {
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("rougeL"), "{}", text(&o));
    } else {
        assert!(o.status.success(), "{}", text(&o));
        e.ok("bob", &["registry", "approve", "2"])?;
        assert_eq!(e.json(&["registry", "list", "aliases"])?[0]["version"], second);
    }

    // Kill switch: a disabled version cannot be promoted; enable undoes it.
    e.ok("carol", &["registry", "disable", "support@1", "--reason", "leaks a phone number"])?;
    let o = e.cmd("alice", &["registry", "promote", "support", "1", "--to", "canary", "--reason", "try"]);
    assert!(!o.status.success() && text(&o).contains("disabled"), "{}", text(&o));
    e.ok("carol", &["registry", "enable", "support@1"])?;
    e.ok("alice", &["registry", "promote", "support", "1", "--to", "canary", "--reason", "try"])?;

    let history = e.json(&["registry", "history", "support"])?;
    let actions: Vec<&str> =
        history.as_array().into_iter().flatten().filter_map(|h| h["action"].as_str()).collect();
    for a in ["register", "promote-requested", "approved", "alias-set", "disabled", "enabled"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let set = history
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["action"] == "alias-set" && h["alias"] == "champion")
        .context("alias-set")?;
    assert_eq!(set["actor"], "bob");
    assert_eq!(set["to_version"], first);

    // Model card.
    let c = e.ok("alice", &["registry", "card", "support@champion", "--out", "card"])?;
    assert!(c.contains("README.md"), "{c}");
    let card = std::fs::read_to_string(e.path("card/README.md"))?;
    assert!(
        card.starts_with("---\n")
            && card.contains("base_model_relation: \"adapter\"")
            && card.contains("model-index"),
        "{card}"
    );
    Ok(())
}

#[test]
fn a_run_made_without_the_registry_is_imported_once_and_bad_references_are_named() -> anyhow::Result<()> {
    let e = Env::new()?;
    let mut args = e.train_args("runs/old", "3");
    args.push("--no-registry".into());
    e.ok("alice", &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(e.json(&["registry", "list", "runs"])?.as_array().is_some_and(Vec::is_empty));
    let out = e.ok("alice", &["registry", "import", "runs/old", "--register-as", "legacy"])?;
    assert!(out.contains("legacy@1"), "{out}");
    e.ok("alice", &["registry", "import", "runs/old", "--register-as", "legacy"])?;
    let arts = e.json(&["registry", "list", "artifacts"])?;
    assert_eq!(arts.as_array().map(Vec::len), Some(1), "importing twice must not add a version: {arts}");
    for (args, needle) in [
        (vec!["registry", "show", "nosuch"], "nosuch"),
        (vec!["registry", "show", "legacy@7"], "legacy"),
        (vec!["registry", "disable", "legacy", "--reason", "x"], "NAME@VERSION"),
        (vec!["registry", "approve", "99", "--by", "bob"], "99"),
    ] {
        let o = e.cmd("alice", &args);
        assert!(!o.status.success() && text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    Ok(())
}

#[test]
fn two_trainings_registering_at_once_get_two_versions_and_a_killed_one_shows_abandoned() -> anyhow::Result<()>
{
    let e = Env::new()?;
    let spawn = |out: &str, seed: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferrotune"))
            .args(e.train_args(out, seed))
            .current_dir(e.dir.path())
            .env("FERROTUNE_HOME", e.path("home"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let (a, b) = (spawn("runs/x", "1")?, spawn("runs/y", "2")?);
    for c in [a, b] {
        let o = c.wait_with_output()?;
        ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let arts = e.json(&["registry", "list", "artifacts"])?;
    let mut versions: Vec<u64> =
        arts.as_array().into_iter().flatten().filter_map(|a| a["version"].as_u64()).collect();
    versions.sort();
    assert_eq!(versions, vec![1, 2]);

    // A training killed mid-run: recorded as started, then abandoned (its process is gone).
    let mut args = e.train_args("runs/killed", "4");
    let i = args.iter().position(|a| a == "--max-steps").context("flag")?;
    args[i + 1] = "100000".into();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(&args)
        .current_dir(e.dir.path())
        .env("FERROTUNE_HOME", e.path("home"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let running = loop {
        let runs = e.json(&["registry", "list", "runs"])?;
        if let Some(r) = runs
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["run_dir"].as_str().is_some_and(|d| d.ends_with("killed")))
        {
            break r.clone();
        }
        ensure!(std::time::Instant::now() < deadline, "the run was not recorded as started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(running["status"], "running", "{running}");
    child.kill()?;
    child.wait()?;
    let runs = e.json(&["registry", "list", "runs"])?;
    let r = runs.as_array().into_iter().flatten().find(|r| r["id"] == running["id"]).context("run")?;
    assert_eq!(r["status"], "abandoned", "{r}");
    Ok(())
}
