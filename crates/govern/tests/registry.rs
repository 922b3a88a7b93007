//! Recording and reading: versions, idempotence, references and their errors, datasets, runs,
//! evaluations matched to versions, lineage.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferrotune_govern::*;

#[test]
fn versions_count_up_per_name_and_the_same_files_return_the_same_version() {
    let (_d, reg) = registry();
    assert_eq!(artifact(&reg, "support", "a").version, 1);
    assert_eq!(artifact(&reg, "support", "b").version, 2);
    assert_eq!(artifact(&reg, "other", "a").version, 1, "versions are per name");
    let again = artifact(&reg, "support", "a");
    assert_eq!((again.version, again.id), (1, reg.resolve("support@1", "champion").unwrap().id));
    assert_eq!(artifact(&reg, "support", "c").version, 3);
    assert_eq!(reg.artifacts().unwrap().len(), 4);
    let registers = reg.history("support").unwrap().iter().filter(|e| e.action == "register").count();
    assert_eq!(registers, 3, "a repeated registration records no event");
}

#[test]
fn the_same_files_in_another_folder_are_the_same_version() {
    let (_d, reg) = registry();
    let first = artifact(&reg, "support", "a");
    let mut moved = new_artifact("support", "a");
    moved.path = "/elsewhere/copy".into();
    moved.files = adapter_files("/elsewhere/copy", "a");
    assert_eq!(reg.register_artifact(&moved).unwrap().id, first.id);
    let mut renamed = new_artifact("support", "a");
    renamed.files[0].path = "/adapters/a/renamed.json".into();
    assert_eq!(
        reg.register_artifact(&renamed).unwrap().version,
        2,
        "a different file name is different content"
    );
}

#[test]
fn invalid_names_and_empty_artifacts_are_refused() {
    let (_d, reg) = registry();
    for bad in ["", "has space", "slash/name", &"x".repeat(65)] {
        let err = reg.register_artifact(&new_artifact(bad, "a")).unwrap_err();
        assert!(matches!(err, GovernError::Invalid { field: "name", .. }), "{bad:?}: {err}");
    }
    let mut empty = new_artifact("support", "a");
    empty.files.clear();
    assert!(matches!(reg.register_artifact(&empty), Err(GovernError::Invalid { field: "files", .. })));
}

#[test]
fn references_parse_names_versions_and_aliases_and_refuse_bad_ones() {
    let r: Reference = "support".parse().unwrap();
    assert_eq!(r.selector, Selector::Default);
    let r: Reference = "support@3".parse().unwrap();
    assert_eq!((r.name.as_str(), r.selector), ("support", Selector::Version(3)));
    let r: Reference = "my.model_v2-x@canary".parse().unwrap();
    assert_eq!(r.selector, Selector::Alias("canary".into()));
    assert_eq!(r.to_string(), "my.model_v2-x@canary");
    for bad in
        ["", "@3", "support@", "support@0", "a b", "support@can ary", "support@1@2", "support@99999999999"]
    {
        let err = bad.parse::<Reference>().unwrap_err();
        assert!(matches!(err, GovernError::Invalid { field: "reference", .. }), "{bad:?} gave {err}");
    }
}

#[test]
fn resolve_finds_a_version_an_alias_and_the_default_alias() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    artifact(&reg, "support", "b");
    let open = Policy::default();
    reg.promote("support", 2, "canary", "try it", "alice", &open).unwrap();
    reg.promote(
        "support",
        1,
        "stable",
        "known good",
        "alice",
        &policy("[alias.\"*\"]\napprovers = 0\n[alias.champion]\napprovers = 0"),
    )
    .unwrap();
    assert_eq!(reg.resolve("support@1", "champion").unwrap().version, 1);
    assert_eq!(reg.resolve("support@canary", "champion").unwrap().version, 2);
    assert_eq!(reg.resolve("support", "stable").unwrap().version, 1);
    let v2 = reg.resolve("support@2", "x").unwrap();
    assert_eq!(v2.aliases, vec!["canary".to_string()]);
}

#[test]
fn resolve_errors_say_what_does_exist() {
    let (_d, reg) = registry();
    let empty = reg.resolve("support", "champion").unwrap_err().to_string();
    assert!(empty.contains("no artifact named `support`") && empty.contains("no artifacts yet"), "{empty}");
    artifact(&reg, "support", "a");
    artifact(&reg, "support", "b");
    artifact(&reg, "billing", "c");
    let unknown = reg.resolve("suport", "champion").unwrap_err();
    assert!(matches!(unknown, GovernError::NotFound(_)));
    let unknown = unknown.to_string();
    assert!(unknown.contains("billing") && unknown.contains("support"), "lists known names: {unknown}");
    reg.promote("support", 1, "canary", "try", "alice", &Policy::default()).unwrap();
    let alias = reg.resolve("support@stable", "champion").unwrap_err().to_string();
    assert!(alias.contains("no alias `stable`") && alias.contains("canary (→ 1)"), "{alias}");
    let version = reg.resolve("support@7", "champion").unwrap_err().to_string();
    assert!(version.contains("no version 7") && version.contains("support@1 … support@2"), "{version}");
    let default = reg.resolve("support", "champion").unwrap_err().to_string();
    assert!(
        default.contains("no `champion` alias") && default.contains("support@1 … support@2"),
        "{default}"
    );
}

#[test]
fn resolve_lists_at_most_ten_known_names() {
    let (_d, reg) = registry();
    for i in 0..12 {
        artifact(&reg, &format!("name{i:02}"), &format!("t{i}"));
    }
    let msg = reg.resolve("nope", "champion").unwrap_err().to_string();
    assert!(msg.contains("name09") && !msg.contains("name10") && msg.contains("2 more"), "{msg}");
}

#[test]
fn registering_a_dataset_again_fills_what_was_missing_and_keeps_what_was_known() {
    let (_d, reg) = registry();
    let id = dataset(&reg, "train.jsonl");
    let mut d = NewDataset {
        path: "data/train.jsonl".into(),
        sha256: sha("train.jsonl"),
        bytes: 100,
        format: Some("chat".into()),
        rows: Some(500),
        report: Some(serde_json::json!({"errors": 0})),
        pii_findings: Some(2),
        duplicates: None,
    };
    assert_eq!(reg.register_dataset(&d).unwrap(), id);
    d.format = Some("alpaca".into());
    d.duplicates = Some(7);
    assert_eq!(reg.register_dataset(&d).unwrap(), id);
    let all = reg.datasets().unwrap();
    assert_eq!(all.len(), 1);
    let rec = &all[0];
    assert_eq!(rec.format.as_deref(), Some("chat"), "a known field is not overwritten");
    assert_eq!((rec.rows, rec.pii_findings, rec.duplicates), (Some(500), Some(2), Some(7)));
    assert_eq!(rec.report, Some(serde_json::json!({"errors": 0})));
    assert_eq!(rec.path, "train.jsonl", "the first path stays");
}

#[test]
fn the_same_model_files_are_the_same_model() {
    let (_d, reg) = registry();
    let a = model(&reg);
    assert_eq!(model(&reg), a);
    let other = reg
        .register_model(&NewModel {
            name: "tiny-copy".into(),
            path: "/elsewhere".into(),
            files: vec![FileHash {
                path: "/elsewhere/model.safetensors".into(),
                bytes: 1,
                sha256: sha("tiny"),
            }],
            config: serde_json::json!({}),
            parameters: None,
        })
        .unwrap();
    assert_eq!(other, a, "same hashes in another folder");
    assert_eq!(reg.models().unwrap().len(), 1);
}

#[test]
fn a_run_is_running_while_this_process_lives_and_records_its_end() {
    let (_d, reg) = registry();
    let m = model(&reg);
    let (t, e) = (dataset(&reg, "train.jsonl"), dataset(&reg, "eval.jsonl"));
    let id = reg.begin_run(&new_run(m, vec![t, e], "support")).unwrap();
    let run = reg.run(id).unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.pid, std::process::id());
    assert_eq!(run.datasets, vec![t, e]);
    reg.finish_run(
        id,
        &RunEnd {
            status: RunStatus::Failed,
            error: Some("out of memory".into()),
            tokens: Some(1234),
            steps: Some(5),
            metrics: Some(serde_json::json!({"final_loss": 1.5})),
            flops: Some(Flops { value: 1e12, formula: "6·N·T".into() }),
        },
    )
    .unwrap();
    let run = reg.run(id).unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!((run.error.as_deref(), run.tokens, run.steps), (Some("out of memory"), Some(1234), Some(5)));
    assert_eq!(run.flops.unwrap().value, 1e12);
    assert!(run.finished.is_some());
    let actions: Vec<String> = reg.history("support").unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["run-started", "run-finished"]);
    assert!(matches!(reg.run(99), Err(GovernError::NotFound(_))));
    assert!(matches!(reg.begin_run(&new_run(99, vec![], "support")), Err(GovernError::NotFound(_))));
}

#[test]
fn generation_changes_on_every_write_and_not_on_reads() {
    let (dir, reg) = registry();
    let g0 = reg.generation().unwrap();
    artifact(&reg, "support", "a");
    let g1 = reg.generation().unwrap();
    assert_ne!(g0, g1);
    reg.artifacts().unwrap();
    reg.resolve("support@1", "x").unwrap();
    assert_eq!(reg.generation().unwrap(), g1);
    // Another connection (another process) sees the change.
    let other = Registry::open(&dir.path().join("registry.db")).unwrap();
    reg.disable("support", 1, "bad outputs", "alice").unwrap();
    assert_ne!(other.generation().unwrap(), g1);
}

#[test]
fn eval_systems_match_the_version_with_the_same_adapter_files_even_when_recorded_first() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    // An eval of content "b" before "b" is registered, from another folder.
    let b_later = ArtifactRecord {
        path: "/tmp/eval-copy".into(),
        files: adapter_files("/tmp/eval-copy", "b"),
        ..v1.clone()
    };
    let e = eval(
        &reg,
        "e1",
        "rougeL",
        true,
        &[("base", None, 0.1), ("v1", Some(&v1), 0.3), ("b", Some(&b_later), 0.4)],
    );
    assert_eq!(e.systems.iter().map(|(_, m)| *m).collect::<Vec<_>>(), vec![None, Some(v1.id), None]);
    let v2 = artifact(&reg, "support", "b");
    let e = reg.evals().unwrap().remove(0);
    assert_eq!(e.systems[2].1, Some(v2.id), "registered later, matched then");
    let again = eval(&reg, "e1", "rougeL", true, &[("base", None, 0.9)]);
    assert_eq!((again.id, reg.evals().unwrap().len()), (e.id, 1), "the same eval.json hash is the same eval");
}

#[test]
fn lineage_gathers_run_model_data_evals_and_releases() {
    let (_d, reg) = registry();
    let m = model(&reg);
    let t = dataset(&reg, "train.jsonl");
    let run = reg.begin_run(&new_run(m, vec![t], "support")).unwrap();
    let mut a = new_artifact("support", "a");
    a.run = Some(run);
    let v1 = reg.register_artifact(&a).unwrap();
    let v2 = artifact(&reg, "support", "b");
    let e1 = eval(&reg, "e1", "rougeL", true, &[("v1", Some(&v1), 0.3)]);
    let e2 = eval(&reg, "e2", "rougeL", true, &[("v1", Some(&v1), 0.3), ("v2", Some(&v2), 0.4)]);
    let open = policy("[alias.champion]\napprovers = 0");
    reg.promote("support", 1, "champion", "first", "alice", &open).unwrap();
    reg.promote("support", 2, "champion", "better", "alice", &open).unwrap();
    let l = reg.lineage("support@1", "champion").unwrap();
    assert_eq!(l.run.as_ref().map(|r| r.id), Some(run));
    assert_eq!(l.base_model.as_ref().map(|b| b.id), Some(m));
    assert_eq!(l.datasets.iter().map(|d| d.id).collect::<Vec<_>>(), vec![t]);
    assert_eq!(l.evals.iter().map(|e| e.id).collect::<Vec<_>>(), vec![e2.id, e1.id], "newest first");
    let moves: Vec<(Option<u32>, Option<u32>)> = l
        .releases
        .iter()
        .filter(|e| e.action == "alias-set")
        .map(|e| (e.from_version, e.to_version))
        .collect();
    assert_eq!(moves, vec![(None, Some(1)), (Some(1), Some(2))], "v1's releases include being replaced");
    let l2 = reg.lineage("support", "champion").unwrap();
    assert_eq!((l2.artifact.version, l2.run.is_none(), l2.evals.len()), (2, true, 1));
}

#[test]
fn registry_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Registry>();
}

#[test]
fn actor_prefers_the_given_name() {
    assert_eq!(actor(Some("carol")), "carol");
    let os = actor(None);
    assert!(!os.is_empty());
    assert_eq!(actor(Some("  ")), os, "a blank --by falls back to the OS user");
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let (dir, reg) = registry();
    drop(reg);
    let path = dir.path().join("registry.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 2).unwrap();
    drop(c);
    let err = Registry::open(&path).err().expect("refused");
    assert!(err.to_string().contains("newer ferrotune"), "{err}");
}

#[test]
fn check_reports_version_gaps_bad_aliases_and_broken_references() {
    let (dir, reg) = registry();
    artifact(&reg, "support", "a");
    reg.promote("support", 1, "canary", "r", "alice", &Policy::default()).unwrap();
    assert_eq!(reg.check().unwrap(), Vec::<String>::new());
    // What a writer that bypassed the registry could leave behind.
    let c = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         UPDATE artifacts SET version = 3 WHERE name = 'support';
         INSERT INTO artifacts (name, version, kind, path, files, files_key, run, created, actor)
             VALUES ('other', 1, 'adapter', '/x', '[]', 'k', 42, 'now', 'me');",
    )
    .unwrap();
    let problems = reg.check().unwrap();
    assert!(problems.iter().any(|p| p.contains("support: 1 versions numbered 3..3")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("support@canary points at version 1")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("artifacts row") && p.contains("missing runs")),
        "{problems:?}"
    );
}
