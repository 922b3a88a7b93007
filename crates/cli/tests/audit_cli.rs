//! The audit log as an operator and an auditor meet it, through the binary: the commands that
//! change something leave entries (keys, data, training, registry decisions, refusals
//! included); `audit verify` passes, then names the damage after one byte of an entry changes;
//! `prove`, `consistency`, `export`, `pubkey`, `tail`/`search` with --json; the exported bundle
//! passes the independent Python verifier (with FERROTUNE_CHECK_AUDIT_PY=1, which CI sets).

mod home;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use home::{Home, text};
use serde_json::Value;

/// The file of the audit folder that holds the entry lines (whatever the log calls it).
fn entries_file(audit: &Path) -> anyhow::Result<PathBuf> {
    for e in std::fs::read_dir(audit)? {
        let p = e?.path();
        if p.is_file() && std::fs::read(&p).is_ok_and(|b| b.windows(11).any(|w| w == b"keys.create")) {
            return Ok(p);
        }
    }
    anyhow::bail!("no file in {} holds the entries", audit.display())
}

#[test]
fn commands_leave_verifiable_entries_and_one_changed_byte_is_named() -> anyhow::Result<()> {
    let h = Home::new()?;
    ferrotune_model::testing::write_tiny_model(&h.path("tiny"))?;
    let mut rows = String::new();
    for i in 0..12 {
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": format!("Say {i}.")}, {"role": "assistant", "content": format!("{i}!")}]}).to_string());
        rows.push('\n');
    }
    std::fs::write(h.path("train.jsonl"), rows)?;

    h.ok("alice", &["keys", "create", "--name", "app"])?;
    h.ok("alice", &["data", "validate", "train.jsonl"])?;
    let tiny = h.path("tiny").display().to_string();
    h.ok(
        "alice",
        &[
            "train",
            "--model",
            &tiny,
            "--data",
            "train.jsonl",
            "--out",
            "runs/a",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--quiet",
            "--register-as",
            "support",
        ],
    )?;
    h.ok("alice", &["registry", "promote", "support", "1", "--to", "champion", "--reason", "first"])?;
    let o = h.cmd("alice", &["registry", "approve", "1"]);
    ensure!(!o.status.success(), "self-approval must be refused: {}", text(&o));
    h.ok("bob", &["registry", "approve", "1"])?;
    h.ok("carol", &["registry", "disable", "support@1", "--reason", "incident 42"])?;

    let tail = h.json_as("auditor", &["audit", "tail", "-n", "100", "--json"])?;
    let entries: Vec<&Value> = tail.as_array().context("array")?.iter().map(|r| &r["entry"]).collect();
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "keys.create",
        "data.validate",
        "train.start",
        "train.end",
        "registry.promote",
        "registry.approve",
        "registry.disable",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let refused = entries
        .iter()
        .find(|e| e["action"] == "registry.approve" && e["outcome"] == "refused")
        .context("the refused self-approval")?;
    assert_eq!(refused["actor"], "alice");
    let approved = entries
        .iter()
        .find(|e| e["action"] == "registry.approve" && e["outcome"] == "ok")
        .context("approval")?;
    assert_eq!(approved["actor"], "bob");
    let end = entries.iter().find(|e| e["action"] == "train.end").context("train.end")?;
    assert_eq!(end["outcome"], "ok");
    assert!(end["fields"]["output"].as_array().is_some_and(|f| !f.is_empty()), "{end}");
    let search = h.json_as("auditor", &["audit", "search", "--action", "registry.*", "--json"])?;
    assert!(search.as_array().is_some_and(|s| {
        s.iter().all(|r| r["entry"]["action"].as_str().is_some_and(|a| a.starts_with("registry.")))
    }));
    assert!(search.as_array().is_some_and(|s| s.len() >= 4), "{search}");

    let v = h.ok("auditor", &["audit", "verify"])?;
    assert!(v.starts_with("ok:"), "{v}");
    let n = entries.len() as u64;
    let proof = h.json_as("auditor", &["audit", "prove", "2"])?;
    assert_eq!(proof["index"], 2);
    assert!(
        proof["inclusion"].is_array() && proof["checkpoint"].as_str().is_some_and(|c| c.contains("\n\n— ")),
        "{proof}"
    );
    let cons = h.json_as("auditor", &["audit", "consistency", "1", &n.to_string()])?;
    assert_eq!(cons["old_size"], 1);
    let key = h.ok("auditor", &["audit", "pubkey"])?;
    let parts: Vec<&str> = key.trim().splitn(3, '+').collect();
    assert!(parts.len() == 3 && parts[1].len() == 8, "verifier key {key}");
    std::fs::write(h.path("verifier.key"), &key)?;
    h.ok("auditor", &["audit", "export", "--out", "bundle"])?;
    for f in ["entries.log", "range.json", "checkpoint.note", "inclusion.jsonl", "verifier.key"] {
        assert!(h.path("bundle").join(f).exists(), "export lacks {f}");
    }
    let python = std::env::var("FERROTUNE_CHECK_AUDIT_PY").is_ok_and(|v| v == "1");
    let verify_py = |dir: &str| {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/audit/verify.sh"))
            .args([
                "bundle",
                &h.path(dir).display().to_string(),
                "--key-file",
                &h.path("verifier.key").display().to_string(),
            ])
            .output()
    };
    if python {
        let o = verify_py("bundle")?;
        ensure!(o.status.success(), "the Python verifier refused our export:\n{}", text(&o));
    } else {
        eprintln!("SKIPPED the Python verifier (set FERROTUNE_CHECK_AUDIT_PY=1)");
    }

    // One changed byte in one entry: verify fails and says where.
    let file = entries_file(&h.path("home/audit"))?;
    let before = std::fs::read_to_string(&file)?;
    let after = before.replacen("\"actor\":\"carol\"", "\"actor\":\"carox\"", 1);
    ensure!(after != before, "carol's entry not found in {}", file.display());
    std::fs::write(&file, after)?;
    let o = h.cmd("auditor", &["audit", "verify"]);
    assert!(!o.status.success(), "a changed entry must fail verification:\n{}", text(&o));
    let t = text(&o);
    assert!(t.contains("entry") || t.contains("checkpoint"), "{t}");
    if python {
        // The exported copy, changed the same way, fails the outside verifier too.
        let f = h.path("bundle/entries.log");
        let b = std::fs::read_to_string(&f)?;
        std::fs::write(&f, b.replacen("\"actor\":\"carol\"", "\"actor\":\"carox\"", 1))?;
        let o = verify_py("bundle")?;
        assert!(!o.status.success(), "the Python verifier accepted a changed entry:\n{}", text(&o));
    }
    Ok(())
}
