//! Model cards from a hand-built lineage: front matter, TODOs exactly for what card.toml lacks,
//! numbers from the record, the GPAI comparison, bad card.toml files, and (with
//! FERROTUNE_CHECK_CARDS=1) huggingface_hub reading the card.

#![allow(clippy::unwrap_used)]

mod lineage_fixture;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferrotune_govern::card::{self, CardToml, FIELDS};
use ferrotune_govern::{ArtifactKind, GovernError};
use lineage_fixture::{FULL_CARD, bare, lineage};

fn card_from(toml_text: &str) -> anyhow::Result<CardToml> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("card.toml");
    std::fs::write(&path, toml_text)?;
    Ok(CardToml::load(Some(&path))?)
}

fn full_card() -> CardToml {
    card_from(FULL_CARD).expect("FULL_CARD loads")
}

/// The keys named by `TODO (owner): … (card.toml `KEY`)` markers.
fn todo_keys(text: &str) -> BTreeSet<String> {
    text.match_indices("TODO (owner)")
        .filter_map(|(i, _)| {
            let rest = &text[i..];
            let start = rest.find("(card.toml `")? + "(card.toml `".len();
            let end = rest[start..].find('`')?;
            Some(rest[start..start + end].to_string())
        })
        .collect()
}

fn front_matter(text: &str) -> &str {
    let body = text.strip_prefix("---\n").expect("starts with ---");
    &body[..body.find("\n---\n").expect("closing ---")]
}

#[test]
fn front_matter_has_the_hub_fields() {
    let text = card::render(&lineage(), &full_card()).unwrap();
    let fm = front_matter(&text);
    for line in [
        "base_model: \"HuggingFaceTB/SmolLM2-135M-Instruct\"",
        "base_model_relation: \"adapter\"",
        "library_name: \"peft\"",
        "license: \"apache-2.0\"",
        "- \"en\"",
        "- \"brightwave/support-chats\"",
        "- \"ferrotune\"",
        "- \"lora\"",
        "- \"customer-support\"",
        "model-index:",
        "- name: \"support\"",
        "      type: \"text-generation\"",
        "      name: \"eval.jsonl\"",
        "      type: \"custom\"",
        "    - type: \"rougeL\"",
        "      value: 0.38338",
    ] {
        assert!(fm.lines().any(|l| l == line), "front matter lacks {line:?}:\n{fm}");
    }
    // One result per metric this version has a score for.
    assert_eq!(fm.matches("  - task:").count(), 4);
}

#[test]
fn full_model_is_a_transformers_finetune_without_the_lora_tag() {
    let mut l = lineage();
    l.artifact.kind = ArtifactKind::Model;
    let text = card::render(&l, &full_card()).unwrap();
    let fm = front_matter(&text);
    assert!(fm.contains("base_model_relation: \"finetune\""));
    assert!(fm.contains("library_name: \"transformers\""));
    assert!(!fm.contains("\"lora\""));
    assert!(text.contains("AutoModelForCausalLM.from_pretrained(\"/srv/ferrotune/runs/demo/adapter\")"));
}

#[test]
fn unfilled_license_is_left_out_of_the_front_matter_not_invented() {
    let text = card::render(&lineage(), &CardToml::default()).unwrap();
    assert!(!front_matter(&text).contains("license:"));
    assert!(text.contains("- **License:** TODO (owner)"));
}

#[test]
fn empty_card_marks_every_statement_todo_and_lists_it() {
    let l = lineage();
    let text = card::render(&l, &CardToml::default()).unwrap();
    // The base is known: its repo and training compute come from the built-in table.
    let expected: BTreeSet<String> = FIELDS
        .iter()
        .map(|f| f.key.to_string())
        .filter(|k| k != "base_model_repo" && k != "base_training_flops")
        .collect();
    assert_eq!(todo_keys(&text), expected);
    let missing = text.split("## Missing information").nth(1).unwrap().split("\n## ").next().unwrap();
    for key in &expected {
        assert!(missing.contains(&format!("- `{key}`")), "missing list lacks {key}");
    }
    assert_eq!(card::missing(&l, &CardToml::default()).len(), expected.len());
}

#[test]
fn filled_card_has_no_todo() {
    let text = card::render(&lineage(), &full_card()).unwrap();
    assert!(
        !text.contains("TODO"),
        "{}",
        text.lines().filter(|l| l.contains("TODO")).collect::<Vec<_>>().join("\n")
    );
    assert!(text.contains("None: card.toml answers every item"));
    assert!(text.contains("Every draft is reviewed by an agent before sending."));
}

#[test]
fn todos_appear_exactly_for_the_fields_left_out() {
    for field in FIELDS.iter().filter(|f| f.key != "base_model_repo" && f.key != "base_training_flops") {
        let without: String = FULL_CARD
            .lines()
            .filter(|l| !l.starts_with(&format!("{} =", field.key)))
            .collect::<Vec<_>>()
            .join("\n");
        let text = card::render(&lineage(), &card_from(&without).unwrap()).unwrap();
        assert_eq!(todo_keys(&text), BTreeSet::from([field.key.to_string()]), "without {}", field.key);
    }
    // A blank value is not an answer.
    let blank = FULL_CARD.replace("contact = \"ml-team@example.com\"", "contact = \"  \"");
    let text = card::render(&lineage(), &card_from(&blank).unwrap()).unwrap();
    assert_eq!(todo_keys(&text), BTreeSet::from(["contact".to_string()]));
}

#[test]
fn eval_table_numbers_come_from_the_lineage() {
    let mut l = lineage();
    let text = card::render(&l, &full_card()).unwrap();
    assert!(
        text.contains("| rougeL ↑ | 0.383 [0.353, 0.415] | 0.109 [0.095, 0.123] | +0.274 [+0.243, +0.310] |"),
        "{text}"
    );
    assert!(
        text.contains("| loss ↓ | 0.945 [0.900, 0.990] | 3.503 [3.410, 3.600] | -2.558 [-2.694, -2.414] |")
    );
    assert!(text.contains("`examples/support/eval.jsonl`, sha256 `5686a266f0a2a35c719baa9be0ed55bffc4c1926b5d74bbf0658e2083908290f`, 60 rows"));

    // Change the recorded score: the table and the model-index follow.
    l.evals[0].metrics[2]["scores"][1]["value"] = serde_json::json!(0.5123);
    l.evals[0].rows = 61;
    let changed = card::render(&l, &full_card()).unwrap();
    assert!(changed.contains("| rougeL ↑ | 0.512 [0.353, 0.415] |"));
    assert!(changed.contains("      value: 0.5123"));
    assert!(changed.contains(", 61 rows"));
    assert!(!changed.contains("0.383 [0.353"));
}

#[test]
fn eval_where_this_version_is_not_a_system_gives_no_score() {
    let mut l = lineage();
    l.evals[0].systems[1].1 = Some(99);
    let text = card::render(&l, &full_card()).unwrap();
    assert!(text.contains("This version is not among the systems of this evaluation."));
    assert!(!front_matter(&text).contains("model-index"));
}

#[test]
fn training_details_come_from_the_run() {
    let text = card::render(&lineage(), &full_card()).unwrap();
    for s in [
        "| lora_r | 16 |",
        "| lora_alpha | 32.0 |",
        "| target_modules | q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj |",
        "| max_seq_len | null (default) |",
        "| seed | 42 |",
        "2026-12-07T12:36:20Z → 2026-12-07T12:38:13Z (1m 53s)",
        "- **Tokens seen by the optimizer:** 6,450",
        "3.7e12 FLOPs = `(4·N + 6·N_lora)·T, N = 134515008 base parameters, N_lora = 4884480, T = 6450 tokens`",
        "PII findings: 1; duplicates: 1",
        "counts.pii_email: 1",
        "0.0314 device-hours",
        "energy use",
        "ferrotune serve --model smollm2-135m-instruct   # \"model\": \"support\" = its champion, \"support@2\" = this version",
        "PeftModel.from_pretrained(base, \"/srv/ferrotune/runs/demo/adapter\")",
        "`bfa2c6beef52102ecdac2d68e98461ff11a45f143fda0eef71162fe8dc5f4d46`",
    ] {
        assert!(text.contains(s), "card lacks {s:?}");
    }
}

#[test]
fn sections_follow_the_hugging_face_template_then_the_compliance_maps() {
    let text = card::render(&lineage(), &full_card()).unwrap();
    let order = [
        "## Missing information",
        "## Model Details",
        "## Uses",
        "## Bias, Risks, and Limitations",
        "## How to Get Started with the Model",
        "## Training Details",
        "## Evaluation",
        "## Environmental Impact",
        "## EU AI Act Annex IV documentation map",
        "## GPAI threshold",
        "## NIST AI RMF map",
        "## Audit trail",
    ];
    let at: Vec<usize> = order.iter().map(|h| text.find(h).unwrap_or_else(|| panic!("no {h}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    for n in 1..=9 {
        assert!(text.contains(&format!("**{n}. ")), "Annex IV point {n}");
    }
    for sub in
        ["GOVERN 1.6", "MAP 2.2", "MEASURE 2.1", "MEASURE 2.3", "MEASURE 2.5", "MANAGE 1.1", "MANAGE 2.4"]
    {
        assert!(text.contains(&format!("**{sub}**")), "{sub}");
    }
    assert!(text.contains("alias-set champion ← v2 (was v1) by bob, request 7: \"better rougeL\""));
    assert!(
        text.contains("ferrotune audit search --subject support@2"),
        "the card points to the audit trail"
    );
}

#[test]
fn gpai_known_base_compares_with_one_third_of_its_compute() {
    let text = card::render(&lineage(), &full_card()).unwrap();
    let gpai = text.split("## GPAI threshold").nth(1).unwrap().split("\n## ").next().unwrap();
    assert!(gpai.contains("1.6e21 FLOPs for HuggingFaceTB/SmolLM2-135M-Instruct"));
    assert!(gpai.contains("arXiv:2502.02737"));
    assert!(gpai.contains("**One third of it:** 5.4e20 FLOPs"));
    assert!(gpai.contains("6.8e-9"), "{gpai}"); // 3.66e12 / 5.4e20
    assert!(gpai.contains("below the one-third line"));
}

#[test]
fn gpai_unknown_base_says_what_the_owner_must_supply() {
    let mut l = lineage();
    if let Some(m) = l.base_model.as_mut() {
        m.name = "acme-7b".into();
    }
    let text = card::render(&l, &CardToml::default()).unwrap();
    assert!(text.contains("not known for acme-7b"));
    assert!(text.contains("comparison cannot be made"));
    let todos = todo_keys(&text);
    assert!(todos.contains("base_training_flops") && todos.contains("base_model_repo"));
    assert!(front_matter(&text).contains("base_model: \"acme-7b\""));

    // The owner supplies it: compared, and no longer a TODO.
    let card = card_from("base_model_repo = \"acme/acme-7b\"\nbase_training_flops = 9e12\nbase_training_flops_source = \"acme tech report, table 2\"\n").unwrap();
    let text = card::render(&l, &card).unwrap();
    assert!(text.contains("9.0e12 FLOPs for acme/acme-7b. Source: acme tech report, table 2."));
    assert!(text.contains("122.0% of one third"), "{text}");
    assert!(text.contains("above the one-third line"));
    let todos = todo_keys(&text);
    assert!(!todos.contains("base_training_flops") && !todos.contains("base_model_repo"));
    assert!(front_matter(&text).contains("base_model: \"acme/acme-7b\""));
}

#[test]
fn gpai_without_recorded_run_flops_says_so() {
    let mut l = lineage();
    if let Some(r) = l.run.as_mut() {
        r.flops = None;
    }
    let text = card::render(&l, &full_card()).unwrap();
    assert!(text.contains("**This run's training compute:** not recorded"));
    assert!(!text.contains("one-third line."));
}

#[test]
fn a_version_with_nothing_recorded_still_renders() {
    let text = card::render(&bare(), &CardToml::default()).unwrap();
    assert!(text.contains("No training run is recorded for this version."));
    assert!(text.contains("No evaluation is recorded for this version."));
    assert!(!front_matter(&text).contains("model-index"));
    assert!(!front_matter(&text).contains("base_model:"));
    assert!(todo_keys(&text).contains("base_model_repo"));
}

#[test]
fn disabled_version_says_so_at_the_top() {
    let mut l = lineage();
    l.artifact.disabled = true;
    l.artifact.disabled_reason = Some("leaks ticket ids".into());
    let text = card::render(&l, &full_card()).unwrap();
    assert!(text.contains("> **Disabled** (kill switch): leaks ticket ids."));
}

fn bad_field(toml_text: &str) -> String {
    match card_from(toml_text) {
        Err(e) => match e.downcast::<GovernError>() {
            Ok(GovernError::BadFile { field, .. }) => field,
            other => panic!("expected BadFile, got {other:?}"),
        },
        Ok(c) => panic!("accepted {c:?}"),
    }
}

#[test]
fn bad_card_toml_names_the_field() {
    assert_eq!(bad_field("license = \"mit\"\nlicence = \"mit\"\n"), "licence");
    assert_eq!(bad_field("description = \"x\"\nlanguage = \"en\"\n"), "language");
    assert_eq!(bad_field("base_training_flops = -1.0\n"), "base_training_flops");
    assert_eq!(bad_field("license = \"MIT OR Apache\"\n"), "license");
    let err = CardToml::load(Some(Path::new("/nonexistent/card.toml"))).unwrap_err();
    assert!(matches!(err, GovernError::Io { .. }));
    assert_eq!(CardToml::load(None).unwrap(), CardToml::default());
}

#[test]
fn write_creates_the_folder_and_leaves_only_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cards/support-2");
    let path = card::write(&out, &lineage(), &full_card()).unwrap();
    assert_eq!(path, out.join("README.md"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), card::render(&lineage(), &full_card()).unwrap());
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("README.md")]);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// huggingface_hub reads the front matter (base model, relation, library, license and the
/// model-index as eval results), also for names with quotes and backslashes.
#[test]
fn card_parses_with_huggingface_hub() {
    if std::env::var("FERROTUNE_CHECK_CARDS").as_deref() != Ok("1") {
        println!("SKIPPED (set FERROTUNE_CHECK_CARDS=1)");
        return;
    }
    let dir = match std::env::var("FERROTUNE_CARD_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => tempfile::tempdir().unwrap().keep(),
    };
    let script = repo_root().join("scripts/govern/check_card.sh");
    let check = |readme: &Path, args: &[&str]| {
        let status = std::process::Command::new("bash").arg(&script).arg(readme).args(args).status().unwrap();
        assert!(status.success(), "check_card.sh failed on {}", readme.display());
    };
    let readme = card::write(&dir.join("support-2"), &lineage(), &full_card()).unwrap();
    check(
        &readme,
        &["--expect", "rougeL=0.38338", "--expect", "f1=0.42678680337525887", "--expect", "loss=0.945"],
    );

    let mut tricky = lineage();
    tricky.artifact.name = "sup\"port\\x: yes".into();
    tricky.evals[0].data_path = "data/eval \"v2\".jsonl".into();
    let card = card_from(
        &FULL_CARD
            .replace(
                "license = \"apache-2.0\"",
                "license = \"other\"\ntags = [\"a: b\", \"#c\", \"\\\"q\\\"\"]",
            )
            .replace("tags = [\"customer-support\"]\n", ""),
    )
    .unwrap();
    let readme = card::write(&dir.join("tricky"), &tricky, &card).unwrap();
    check(&readme, &["--expect", "rougeL=0.38338", "--expect-name", "sup\"port\\x: yes"]);
}

/// The repository's example run (runs/demo, not checked in everywhere) imported into a fresh
/// registry: its card's eval table and model-index carry eval.json's numbers, and (with
/// FERROTUNE_CHECK_CARDS=1) huggingface_hub reads them back.
#[test]
fn the_repository_demo_run_gets_a_card_when_present() {
    let demo = repo_root().join("runs/demo");
    if !demo.join("lineage.json").is_file() || !demo.join("eval/eval.json").is_file() {
        println!("SKIPPED (no runs/demo with eval/eval.json)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = ferrotune_govern::Registry::open(&dir.path().join("registry.db")).unwrap();
    let l = reg.import_run(&demo, Some("support"), "alice").unwrap();
    let text = card::render(&l, &full_card()).unwrap();
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("eval/eval.json")).unwrap()).unwrap();
    let rouge = eval["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "rougeL").unwrap();
    let score = |sys: &str| {
        rouge["scores"].as_array().unwrap().iter().find(|s| s["system"] == sys).unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    let demo_rouge = score("demo");
    let row = format!("| rougeL ↑ | {demo_rouge:.3} [");
    assert!(text.contains(&row), "no {row:?} in\n{text}");
    assert!(text.contains(&format!("| {:.3} [", score("base"))));
    assert!(front_matter(&text).contains(&format!("      value: {demo_rouge}\n")));
    println!("{}", ferrotune_govern::render::tree(&l));

    if std::env::var("FERROTUNE_CHECK_CARDS").as_deref() == Ok("1") {
        let out = match std::env::var("FERROTUNE_CARD_DIR") {
            Ok(d) => PathBuf::from(d).join("demo"),
            Err(_) => dir.path().join("card"),
        };
        let readme = card::write(&out, &l, &full_card()).unwrap();
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/govern/check_card.sh"))
            .arg(&readme)
            .args(["--expect", &format!("rougeL={demo_rouge}"), "--expect-name", "support"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
