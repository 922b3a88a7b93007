//! Releases: approvals, gates, the kill switch, rejection, and policy.toml.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferrotune_govern::*;

fn gated(tol: &str) -> Policy {
    policy(&format!(
        "[alias.champion]\napprovers = 0\ngates = [\"rougeL{tol}\"]\ngate_data = \"{EVAL_DATA}\"\n"
    ))
}

#[test]
fn the_default_policy_needs_a_second_user_to_move_champion() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    artifact(&reg, "support", "b");
    let p = Policy::default();
    let Promotion::Pending { request, needed } =
        reg.promote("support", 1, "champion", "first release", "alice", &p).unwrap()
    else {
        panic!("champion needs an approval")
    };
    assert_eq!(needed, 1);
    assert!(reg.aliases().unwrap().is_empty(), "nothing moves before approval");
    let own = reg.approve(request, "alice", &p).unwrap_err();
    assert!(
        matches!(&own, GovernError::Refused(m) if m.contains("rule champion") && m.contains("cannot approve")),
        "{own}"
    );
    let applied = reg.approve(request, "bob", &p).unwrap();
    assert_eq!(
        applied,
        Promotion::Applied { request, alias: "champion".into(), from_version: None, to_version: 1 }
    );
    assert_eq!(reg.aliases().unwrap(), vec![("support".into(), "champion".into(), 1)]);
    assert!(
        matches!(reg.approve(request, "carol", &p), Err(GovernError::Refused(m)) if m.contains("not open"))
    );

    let Promotion::Pending { request: r2, .. } =
        reg.promote("support", 2, "champion", "better rougeL", "bob", &p).unwrap()
    else {
        panic!()
    };
    assert_eq!(reg.requests(true).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2]);
    reg.approve(r2, "alice", &p).unwrap();
    assert_eq!(reg.resolve("support", "champion").unwrap().version, 2);
    let moves: Vec<(String, Option<u32>, Option<u32>, String)> = reg
        .history("support")
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "alias-set")
        .map(|e| (e.alias.unwrap_or_default(), e.from_version, e.to_version, e.actor))
        .collect();
    assert_eq!(
        moves,
        vec![
            ("champion".into(), None, Some(1), "bob".into()),
            ("champion".into(), Some(1), Some(2), "alice".into())
        ]
    );
    let req = reg.request(r2).unwrap();
    assert_eq!((req.status, req.approvals.len(), req.requester.as_str()), (RequestStatus::Applied, 1, "bob"));
    let actions: Vec<String> = reg.history("support").unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "register",
            "register",
            "promote-requested",
            "approved",
            "alias-set",
            "promote-requested",
            "approved",
            "alias-set"
        ]
    );
}

#[test]
fn aliases_other_than_champion_move_at_once_under_the_default_policy() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    let p = Policy::default();
    let out = reg.promote("support", 1, "canary", "try", "alice", &p).unwrap();
    assert!(matches!(out, Promotion::Applied { from_version: None, to_version: 1, .. }));
    assert_eq!(reg.requests(false).unwrap()[0].status, RequestStatus::Applied);
}

#[test]
fn promote_refuses_a_bad_request_before_recording_anything() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    let p = Policy::default();
    assert!(matches!(
        reg.promote("support", 1, "canary", " ", "alice", &p),
        Err(GovernError::Invalid { field: "reason", .. })
    ));
    assert!(matches!(
        reg.promote("support", 1, "123", "r", "alice", &p),
        Err(GovernError::Invalid { field: "alias", .. })
    ));
    assert!(matches!(
        reg.promote("support", 1, "a b", "r", "alice", &p),
        Err(GovernError::Invalid { field: "alias", .. })
    ));
    assert!(
        matches!(reg.promote("support", 2, "canary", "r", "alice", &p), Err(GovernError::NotFound(m)) if m.contains("no version 2"))
    );
    assert!(matches!(reg.promote("nope", 1, "canary", "r", "alice", &p), Err(GovernError::NotFound(_))));
    reg.promote("support", 1, "canary", "r", "alice", &p).unwrap();
    assert!(
        matches!(reg.promote("support", 1, "canary", "r", "alice", &p), Err(GovernError::Refused(m)) if m.contains("already points"))
    );
    assert_eq!(reg.requests(false).unwrap().len(), 1);
}

#[test]
fn one_approval_counts_once_per_user() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    let p = policy("[alias.champion]\napprovers = 2");
    let Promotion::Pending { request, needed: 2 } =
        reg.promote("support", 1, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    assert_eq!(reg.approve(request, "bob", &p).unwrap(), Promotion::Pending { request, needed: 1 });
    assert!(
        matches!(reg.approve(request, "bob", &p), Err(GovernError::Refused(m)) if m.contains("already approved"))
    );
    assert!(matches!(reg.approve(request, "carol", &p).unwrap(), Promotion::Applied { .. }));
    let approvers: Vec<String> =
        reg.request(request).unwrap().approvals.into_iter().map(|(who, _)| who).collect();
    assert_eq!(approvers, ["bob", "carol"]);
}

#[test]
fn a_rejected_request_cannot_be_approved_or_rejected_again() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    let p = Policy::default();
    let Promotion::Pending { request, .. } = reg.promote("support", 1, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    let rejected = reg.reject(request, "bob", "not yet: eval pending").unwrap();
    assert_eq!(
        (rejected.status, rejected.decision_reason.as_deref()),
        (RequestStatus::Rejected, Some("not yet: eval pending"))
    );
    assert!(
        matches!(reg.approve(request, "bob", &p), Err(GovernError::Refused(m)) if m.contains("rejected"))
    );
    assert!(matches!(reg.reject(request, "bob", "again"), Err(GovernError::Refused(_))));
    assert!(matches!(reg.reject(999, "bob", "x"), Err(GovernError::NotFound(_))));
    assert!(reg.aliases().unwrap().is_empty());
    assert!(reg.history("support").unwrap().iter().any(|e| e.action == "rejected" && e.actor == "bob"));
}

#[test]
fn a_disabled_version_cannot_be_promoted_and_enabling_it_allows_it_again() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    let p = Policy::default();
    assert!(matches!(
        reg.disable("support", 1, "", "alice"),
        Err(GovernError::Invalid { field: "reason", .. })
    ));
    let a = reg.disable("support", 1, "leaks PII", "alice").unwrap();
    assert!(a.disabled && a.disabled_reason.as_deref() == Some("leaks PII"));
    let err = reg.promote("support", 1, "canary", "r", "alice", &p).unwrap_err();
    assert!(
        matches!(&err, GovernError::Refused(m) if m.contains("disabled") && m.contains("leaks PII")),
        "{err}"
    );
    let a = reg.enable("support", 1, "fixed upstream", "bob").unwrap();
    assert!(!a.disabled && a.disabled_reason.is_none());
    assert!(matches!(
        reg.promote("support", 1, "canary", "r", "alice", &p).unwrap(),
        Promotion::Applied { .. }
    ));
    let actions: Vec<String> = reg.history("support").unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["register", "disabled", "enabled", "alias-set"]);
}

#[test]
fn disabling_before_the_last_approval_refuses_the_promotion_and_leaves_the_alias() {
    let (_d, reg) = registry();
    artifact(&reg, "support", "a");
    artifact(&reg, "support", "b");
    let p = Policy::default();
    let Promotion::Pending { request, .. } = reg.promote("support", 1, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    reg.approve(request, "bob", &p).unwrap();
    let Promotion::Pending { request, .. } = reg.promote("support", 2, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    reg.disable("support", 2, "toxic outputs", "carol").unwrap();
    let err = reg.approve(request, "bob", &p).unwrap_err();
    assert!(matches!(&err, GovernError::Refused(m) if m.contains("disabled")), "{err}");
    assert_eq!(reg.resolve("support", "champion").unwrap().version, 1);
    let req = reg.request(request).unwrap();
    assert_eq!(req.status, RequestStatus::Refused);
    assert!(req.decision_reason.unwrap().contains("toxic outputs"));
    assert_eq!(reg.history("support").unwrap().last().unwrap().action, "alias-refused");
    // Disabling the holder keeps the alias where it is: serving refuses it, history explains it.
    reg.disable("support", 1, "regression", "carol").unwrap();
    assert_eq!(reg.aliases().unwrap(), vec![("support".into(), "champion".into(), 1)]);
    assert!(
        reg.resolve("support", "champion").unwrap().disabled,
        "resolve returns disabled versions; callers decide"
    );
}

#[test]
fn a_gate_passes_a_candidate_no_worse_than_the_holder_within_tolerance() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let v2 = artifact(&reg, "support", "b");
    eval(&reg, "e1", "rougeL", true, &[("base", None, 0.1), ("v1", Some(&v1), 0.40)]);
    reg.promote("support", 1, "champion", "first", "alice", &gated(":0.01")).unwrap();
    eval(&reg, "e2", "rougeL", true, &[("v1", Some(&v1), 0.40), ("v2", Some(&v2), 0.395)]);
    let out = reg.promote("support", 2, "champion", "cheaper", "alice", &gated(":0.01")).unwrap();
    assert!(matches!(out, Promotion::Applied { from_version: Some(1), to_version: 2, .. }));
}

#[test]
fn a_gate_refuses_a_worse_candidate_with_the_numbers_and_records_the_refusal() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let v2 = artifact(&reg, "support", "b");
    eval(&reg, "e1", "rougeL", true, &[("base", None, 0.1), ("v1", Some(&v1), 0.4012)]);
    reg.promote("support", 1, "champion", "first", "alice", &gated(":0.01")).unwrap();
    // v2 scored in a separate eval on the same data: the holder's score comes from its own eval.
    eval(&reg, "e2", "rougeL", true, &[("base", None, 0.1), ("v2", Some(&v2), 0.3834)]);
    let err = reg.promote("support", 2, "champion", "new data", "alice", &gated(":0.01")).unwrap_err();
    let GovernError::Refused(msg) = err else { panic!("{err}") };
    assert_eq!(
        msg,
        format!(
            "gate rougeL:0.01 for champion: support@2 = 0.3834 vs support@1 (current champion) = 0.4012 on {EVAL_DATA} → worse by 0.0178 (tolerance 0.01)"
        )
    );
    assert_eq!(reg.resolve("support", "champion").unwrap().version, 1);
    let req = reg.requests(false).unwrap().pop().unwrap();
    assert_eq!((req.status, req.decision_reason.as_deref()), (RequestStatus::Refused, Some(msg.as_str())));
    let last = reg.history("support").unwrap().pop().unwrap();
    assert_eq!((last.action.as_str(), last.version, last.request), ("alias-refused", Some(2), Some(req.id)));
}

#[test]
fn a_gate_on_a_lower_is_better_metric_refuses_a_higher_score() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let v2 = artifact(&reg, "support", "b");
    let p = policy(&format!(
        "[alias.champion]\napprovers = 1\ngates = [\"perplexity:0.5\"]\ngate_data = \"{EVAL_DATA}\"\n"
    ));
    eval(
        &reg,
        "e1",
        "perplexity",
        false,
        &[("base", None, 9.0), ("v1", Some(&v1), 4.0), ("v2", Some(&v2), 4.4)],
    );
    let first = reg.promote("support", 1, "champion", "r", "alice", &p).unwrap();
    let Promotion::Pending { request, .. } = first else { panic!() };
    reg.approve(request, "bob", &p).unwrap();
    let Promotion::Pending { request, .. } = reg.promote("support", 2, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    assert!(matches!(reg.approve(request, "bob", &p).unwrap(), Promotion::Applied { .. }), "4.4 ≤ 4.0 + 0.5");
    let v3 = artifact(&reg, "support", "c");
    eval(&reg, "e2", "perplexity", false, &[("v2", Some(&v2), 4.4), ("v3", Some(&v3), 5.0)]);
    assert!(
        matches!(reg.promote("support", 3, "champion", "r", "alice", &p), Err(GovernError::Refused(m)) if m.contains("worse by 0.6000"))
    );
}

#[test]
fn with_no_holder_a_gate_compares_with_the_base_model_of_the_same_eval() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let v2 = artifact(&reg, "support", "b");
    eval(
        &reg,
        "e1",
        "rougeL",
        true,
        &[("base", None, 0.30), ("v1", Some(&v1), 0.10), ("v2", Some(&v2), 0.35)],
    );
    let err = reg.promote("support", 1, "champion", "r", "alice", &gated("")).unwrap_err().to_string();
    assert!(
        err.contains("base (base model; no version holds champion) = 0.3000")
            && err.contains("support@1 = 0.1000"),
        "{err}"
    );
    assert!(matches!(
        reg.promote("support", 2, "champion", "r", "alice", &gated("")).unwrap(),
        Promotion::Applied { .. }
    ));
}

#[test]
fn a_gate_without_a_recorded_evaluation_refuses_and_says_how_to_run_one() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let err = reg.promote("support", 1, "champion", "r", "alice", &gated("")).unwrap_err().to_string();
    assert!(err.contains(&format!("no evaluation of support@1 on {EVAL_DATA} is recorded")), "{err}");
    assert!(err.contains(&format!("ferrotune eval --data {EVAL_DATA} --adapter {}", v1.path)), "{err}");
    // An eval on other data does not count.
    let other = policy("[alias.champion]\ngates = [\"rougeL\"]\ngate_data = \"other.jsonl\"\n");
    eval(&reg, "e1", "rougeL", true, &[("base", None, 0.1), ("v1", Some(&v1), 0.5)]);
    assert!(
        matches!(reg.promote("support", 1, "champion", "r", "alice", &other), Err(GovernError::Refused(m)) if m.contains("no evaluation"))
    );
    // The data's SHA-256 works as well as its path.
    let by_hash = policy(&format!(
        "[alias.champion]\napprovers = 0\ngates = [\"rougeL\"]\ngate_data = \"{}\"\n",
        sha(EVAL_DATA)
    ));
    assert!(matches!(
        reg.promote("support", 1, "champion", "r", "alice", &by_hash).unwrap(),
        Promotion::Applied { .. }
    ));
    // A missing metric fails the gate.
    let f1 = policy(&format!("[alias.\"*\"]\ngates = [\"f1\"]\ngate_data = \"{EVAL_DATA}\"\n"));
    let err = reg.promote("support", 1, "canary", "r", "alice", &f1).unwrap_err().to_string();
    assert!(err.contains("no metric `f1`") && err.contains("rougeL"), "{err}");
}

#[test]
fn the_approval_that_completes_a_request_checks_gates_against_the_current_holder() {
    let (_d, reg) = registry();
    let v1 = artifact(&reg, "support", "a");
    let v2 = artifact(&reg, "support", "b");
    let v3 = artifact(&reg, "support", "c");
    let p = policy(&format!(
        "[alias.champion]\napprovers = 1\ngates = [\"rougeL\"]\ngate_data = \"{EVAL_DATA}\"\n"
    ));
    eval(
        &reg,
        "e1",
        "rougeL",
        true,
        &[("base", None, 0.1), ("v1", Some(&v1), 0.3), ("v2", Some(&v2), 0.4), ("v3", Some(&v3), 0.5)],
    );
    let Promotion::Pending { request: r2, .. } =
        reg.promote("support", 2, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    let Promotion::Pending { request: r3, .. } =
        reg.promote("support", 3, "champion", "r", "alice", &p).unwrap()
    else {
        panic!()
    };
    reg.approve(r3, "bob", &p).unwrap();
    // v2 passed against the base when asked, but v3 (0.5) holds champion now.
    let err = reg.approve(r2, "bob", &p).unwrap_err().to_string();
    assert!(err.contains("support@3 (current champion) = 0.5000"), "{err}");
    assert_eq!(reg.resolve("support", "champion").unwrap().version, 3);
    assert_eq!(reg.request(r2).unwrap().status, RequestStatus::Refused);
}

#[test]
fn policy_rules_fall_back_to_star_then_to_the_built_in_rule() {
    let p = Policy::default();
    assert_eq!(p.rule("champion").approvers, 1);
    assert_eq!(p.rule("canary").approvers, 0);
    let p = policy("[alias.canary]\napprovers = 3");
    assert_eq!((p.rule("canary").approvers, p.rule("champion").approvers, p.rule("x").approvers), (3, 1, 0));
    let p = policy("[alias.\"*\"]\napprovers = 2\n[alias.canary]\napprovers = 0");
    assert_eq!((p.rule("canary").approvers, p.rule("champion").approvers, p.rule("x").approvers), (0, 2, 2));
    // A table that leaves approvers out keeps the built-in count, it does not drop to zero.
    let p = policy(&format!(
        "[alias.champion]\ngates = [\"rougeL\"]\ngate_data = \"{EVAL_DATA}\"\n[alias.dev]\ngates = []"
    ));
    assert_eq!((p.rule("champion").approvers, p.rule("dev").approvers), (1, 0));
    let g: Gate = "rougeL:0.01".parse().unwrap();
    assert_eq!((g.metric.as_str(), g.tolerance), ("rougeL", 0.01));
    assert_eq!("bleu".parse::<Gate>().unwrap().tolerance, 0.0);
}

#[test]
fn policy_toml_errors_name_the_file_and_the_field() {
    let cases = [
        ("[alias.champion]\napprovers = -1", "alias.champion.approvers"),
        ("[alias.champion]\napprovers = \"one\"", "alias.champion.approvers"),
        ("[alias.champion]\napprover = 1", "alias.champion.approver"),
        ("[alias.champion]\ngates = [\"rougeL:-1\"]\ngate_data = \"d\"", "alias.champion.gates[0]"),
        ("[alias.champion]\ngates = [\"rougeL\", \"bleu:x\"]\ngate_data = \"d\"", "alias.champion.gates[1]"),
        ("[alias.champion]\ngates = [\":0.1\"]\ngate_data = \"d\"", "alias.champion.gates[0]"),
        ("[alias.champion]\ngates = [\"rougeL\"]", "alias.champion.gate_data"),
        ("[alias.\"12\"]\napprovers = 0", "alias.12"),
        ("[aliases.champion]\napprovers = 0", "aliases"),
        ("[alias.champion]\napprovers = ", "line 2, column 13"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("policy{i}.toml"));
        std::fs::write(&path, text).unwrap();
        match Policy::load(Some(&path)) {
            Err(GovernError::BadFile { path: p, field: f, reason }) => {
                assert_eq!((&p, f.as_str()), (&path, *field), "{text:?}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let missing = Policy::load(Some(&dir.path().join("none.toml")));
    assert!(matches!(missing, Err(GovernError::Io { .. })), "a named file must exist");
    let ok = dir.path().join("ok.toml");
    std::fs::write(
        &ok,
        "[alias.champion]\napprovers = 2\ngates = [\"rougeL:0.01\"]\ngate_data = \"eval.jsonl\"\n",
    )
    .unwrap();
    let p = Policy::load(Some(&ok)).unwrap();
    assert_eq!(p.rule("champion").gates, ["rougeL:0.01"]);
}

#[test]
fn a_gate_reads_the_eval_of_the_same_files_registered_under_another_name() {
    let (_d, reg) = registry();
    let support = artifact(&reg, "support", "a");
    let demo = artifact(&reg, "demo", "a");
    let e = eval(&reg, "e1", "rougeL", true, &[("base", None, 0.1), ("adapter", Some(&support), 0.5)]);
    assert_eq!(e.systems[1].1, Some(demo.id), "recorded against one of the two (the newest)");
    assert!(matches!(
        reg.promote("support", 1, "champion", "r", "alice", &gated("")).unwrap(),
        Promotion::Applied { .. }
    ));
    assert_eq!(reg.lineage("support@1", "x").unwrap().evals.len(), 1);
}
