//! `registry show`'s tree and the Graphviz graph of a lineage.

#![allow(clippy::unwrap_used)]

mod lineage_fixture;

use std::collections::BTreeSet;

use ferrotune_govern::render::{dot, tree};
use ferrotune_govern::*;
use lineage_fixture::{bare, lineage};

#[test]
fn tree_mentions_every_part_of_the_lineage() {
    let t = tree(&lineage());
    println!("{t}");
    let first = t.lines().next().unwrap();
    for s in [
        "support@2",
        "adapter",
        "/srv/ferrotune/runs/demo/adapter",
        "2 files",
        "sha256 bfa2c6be…",
        "aliases: champion",
    ] {
        assert!(first.contains(s), "first line lacks {s:?}: {first}");
    }
    for s in [
        "├─ run 3 \"demo\" succeeded  2026-12-07T12:36:20Z → 12:38:13Z (1m 53s)  by alice  cpu  lora  30 steps, 6,450 tokens, 3.7e12 FLOPs",
        "│  ├─ base model smollm2-135m-instruct  (134.5M parameters, sha256 b179c952…)",
        "│  ├─ train data examples/support/train.jsonl  sha256 83e1d750…  480 rows  chat  PII findings 1  duplicates 1",
        "│  └─ eval data examples/support/eval.jsonl  sha256 5686a266…",
        "├─ eval 4  examples/support/eval.jsonl (60 rows)  2026-12-07T12:43:45Z by alice  as \"demo\"",
        "│  ├─ rougeL ↑ 0.383 [0.353, 0.415]  base 0.109  Δ +0.274 [+0.243, +0.310]",
        "│  └─ loss ↓ 0.945 [0.900, 0.990]  base 3.503  Δ -2.558 [-2.694, -2.414]",
        "└─ releases",
        "   └─ 2026-12-07T13:00:00Z alias-set champion ← v2 (was v1) by bob, request 7: \"better rougeL\"",
    ] {
        assert!(t.lines().any(|l| l == s), "tree lacks line {s:?}:\n{t}");
    }
}

#[test]
fn tree_with_nothing_recorded_says_so() {
    let mut l = bare();
    l.artifact.disabled = true;
    l.artifact.disabled_reason = None;
    let t = tree(&l);
    assert!(t.lines().next().unwrap().ends_with("[DISABLED: no reason recorded]"), "{t}");
    for s in ["run: not recorded", "base model: not recorded", "evals: none recorded", "releases: none"] {
        assert!(t.contains(s), "{s}: {t}");
    }
}

#[test]
fn tree_keeps_long_lists_short_and_reasons_on_one_line() {
    let mut l = lineage();
    let event = l.releases[2].clone();
    l.releases = (0..25)
        .map(|i| HistoryEvent { id: i, reason: Some(format!("move {i}\nsecond line")), ..event.clone() })
        .collect();
    l.evals = (0..12).map(|i| EvalRecord { id: 100 + i, ..lineage_fixture::eval() }).collect();
    let t = tree(&l);
    assert!(t.contains("… 15 earlier events"));
    assert!(t.contains("move 24 second line"));
    assert!(!t.contains("move 14 "));
    assert!(t.contains("… 2 earlier evals"));
    assert!(t.contains("eval 111 ") && !t.contains("eval 101 "));
}

#[test]
fn tree_says_when_the_version_is_not_an_evals_system() {
    let mut l = lineage();
    l.evals[0].systems[1].1 = None;
    assert!(tree(&l).contains("this version is not among its systems (base, demo)"));
}

/// Checks a digraph the way Graphviz's grammar needs it for what `dot` writes: quoted strings
/// closed, braces balanced outside them, and every edge's ends declared as nodes. Returns
/// (declared nodes, edges).
fn check_dot(d: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
    assert!(d.starts_with("digraph lineage {\n") && d.ends_with("}\n"), "{d}");
    // Tokenise: quoted strings (with \" and \\ escapes) vs the rest.
    let mut depth = 0i32;
    let mut in_str = false;
    let mut escaped = false;
    for c in d.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                (false, '\n') => panic!("newline inside a quoted string"),
                _ => {}
            }
        } else {
            match c {
                '"' => in_str = true,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    assert!(depth >= 0, "unbalanced braces");
                }
                _ => {}
            }
        }
    }
    assert!(!in_str, "unterminated string");
    assert_eq!(depth, 0, "unbalanced braces");
    let quoted_id = |s: &str| -> String {
        let s = s.trim();
        assert!(s.starts_with('"'), "{s}");
        s[1..].split('"').next().unwrap().to_string()
    };
    let mut nodes = BTreeSet::new();
    let mut edges = Vec::new();
    for line in d.lines().map(str::trim).filter(|l| l.starts_with('"')) {
        assert!(line.ends_with(';'), "{line}");
        let head = line.find(" [").map_or(&line[..line.len() - 1], |i| &line[..i]);
        match head.split_once(" -> ") {
            Some((a, b)) => edges.push((quoted_id(a), quoted_id(b))),
            None => {
                nodes.insert(quoted_id(head));
            }
        }
    }
    for (a, b) in &edges {
        assert!(nodes.contains(a) && nodes.contains(b), "edge {a} -> {b} to an undeclared node");
    }
    (nodes, edges)
}

/// `dot -Tsvg` accepts it, when Graphviz is installed (optional tooling: skipped otherwise).
fn graphviz_accepts(d: &str) {
    let has_dot = std::process::Command::new("sh")
        .args(["-c", "command -v dot"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_dot {
        println!("SKIPPED dot -Tsvg (graphviz not installed)");
        return;
    }
    use std::io::Write;
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(d.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "dot: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
}

#[test]
fn dot_is_a_well_formed_digraph_of_the_lineage() {
    let d = dot(&lineage());
    let (nodes, edges) = check_dot(&d);
    let want: BTreeSet<String> =
        ["artifact_9", "run_3", "model_1", "dataset_5", "dataset_6", "eval_4", "alias_0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(nodes, want);
    for (a, b) in [
        ("model_1", "run_3"),
        ("dataset_5", "run_3"),
        ("run_3", "artifact_9"),
        ("artifact_9", "eval_4"),
        ("dataset_6", "eval_4"),
        ("alias_0", "artifact_9"),
    ] {
        assert!(edges.contains(&(a.into(), b.into())), "no edge {a} -> {b}\n{d}");
    }
    assert!(d.contains("label=\"champion\""));
    graphviz_accepts(&d);
}

#[test]
fn dot_escapes_quotes_and_backslashes_in_labels() {
    let mut l = lineage();
    l.artifact.name = "sup\"port\\x".into();
    l.artifact.aliases = vec!["ch\"amp".into()];
    if let Some(r) = l.run.as_mut() {
        r.name = "de\"mo {x}".into();
    }
    l.datasets[0].path = "data/\"train\"\\.jsonl".into();
    l.evals[0].data_sha256 = "ffff".into(); // an eval data node of its own
    let d = dot(&l);
    check_dot(&d);
    assert!(d.contains(r#"label="sup\"port\\x@2\nadapter"#), "{d}");
    assert!(d.contains(r#"ch\"amp"#));
    assert!(d.contains(r#"data/\"train\"\\.jsonl"#));
    assert!(d.contains("\"evaldata_4\" -> \"eval_4\""));
    graphviz_accepts(&d);
}

#[test]
fn dot_without_a_run_links_inputs_to_the_artifact() {
    let mut l = lineage();
    l.run = None;
    let (_, edges) = check_dot(&dot(&l));
    assert!(edges.contains(&("model_1".into(), "artifact_9".into())));
    let (nodes, edges) = check_dot(&dot(&bare()));
    assert_eq!(nodes.len(), 1);
    assert!(edges.is_empty());
}

#[test]
fn dot_shows_aliases_that_pointed_here_before() {
    let mut l = lineage();
    l.artifact.aliases.clear();
    let d = dot(&l);
    check_dot(&d);
    assert!(d.contains("\"alias_0\" -> \"artifact_9\" [label=\"was\", style=dashed];"), "{d}");
}
