//! A lineage built by hand with the values of a real run (`runs/demo`: SmolLM2-135M-Instruct,
//! LoRA r=16 on examples/support, its eval.json), shared by the card and render tests.

#![allow(dead_code)]

use ferrotune_govern::*;
use serde_json::json;

pub const ARTIFACT_ID: i64 = 9;

fn file(path: &str, bytes: u64, sha256: &str) -> FileHash {
    FileHash { path: path.into(), bytes, sha256: sha256.into() }
}

/// One metric of eval.json: scores of `base` and `demo`, and demo's paired difference.
pub fn metric(
    name: &str,
    higher: bool,
    base: (f64, f64, f64),
    demo: (f64, f64, f64),
    diff: (f64, f64, f64),
) -> serde_json::Value {
    json!({
        "name": name, "higher_is_better": higher, "scale": 1.0,
        "scores": [
            {"system": "base", "value": base.0, "ci95": [base.1, base.2]},
            {"system": "demo", "value": demo.0, "ci95": [demo.1, demo.2]}
        ],
        "vs_base": [{"system": "demo", "value": diff.0, "ci95": [diff.1, diff.2]}]
    })
}

pub fn eval() -> EvalRecord {
    EvalRecord {
        id: 4,
        path: "/srv/ferrotune/runs/demo/eval/eval.json".into(),
        sha256: "0d6c1a1f29e1c3d2b8f7a6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a21".into(),
        model: "smollm2-135m-instruct".into(),
        data_path: "examples/support/eval.jsonl".into(),
        data_sha256: "5686a266f0a2a35c719baa9be0ed55bffc4c1926b5d74bbf0658e2083908290f".into(),
        rows: 60,
        created: "2026-12-07T12:43:45Z".into(),
        actor: "alice".into(),
        systems: vec![
            (EvalSystem { name: "base".into(), adapter: None, adapter_files: vec![] }, None),
            (
                EvalSystem {
                    name: "demo".into(),
                    adapter: Some("runs/demo/adapter".into()),
                    adapter_files: vec![file(
                        "adapter_model.safetensors",
                        19_593_032,
                        "bfa2c6beef52102ecdac2d68e98461ff11a45f143fda0eef71162fe8dc5f4d46",
                    )],
                },
                Some(ARTIFACT_ID),
            ),
        ],
        metrics: json!([
            metric("exact_match", true, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
            metric(
                "f1",
                true,
                (0.1311156980178492, 0.11587747355621378, 0.14769653637618668),
                (0.42678680337525887, 0.39498996668597314, 0.45786955111482047),
                (0.2956711053574097, 0.26098029469975326, 0.3306344617913887)
            ),
            metric(
                "rougeL",
                true,
                (0.10894, 0.0951, 0.1232),
                (0.38338, 0.3529, 0.4148),
                (0.27444444102903276, 0.24256884818203484, 0.31040369010566343)
            ),
            metric(
                "loss",
                false,
                (3.5032, 3.41, 3.60),
                (0.9450, 0.90, 0.99),
                (-2.5581632687742677, -2.6940106390156875, -2.4143871438417763)
            ),
        ]),
    }
}

pub fn lineage() -> Lineage {
    let config = json!({
        "model": "smollm2-135m-instruct", "data": "examples/support/train.jsonl", "eval_data": "examples/support/eval.jsonl",
        "out": "runs/demo", "method": "lora", "lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "rslora": false,
        "epochs": 3.0, "max_steps": 30, "batch_size": 4, "grad_accum": 1, "lr": 0.001, "weight_decay": 0.0,
        "warmup_steps": null, "warmup_ratio": 0.0, "scheduler": "linear", "max_grad_norm": 1.0, "max_seq_len": null,
        "train_on_inputs": false, "packing": false, "seed": 42, "device": "cpu", "devices": null, "dtype": "auto"
    });
    Lineage {
        artifact: ArtifactRecord {
            id: ARTIFACT_ID,
            name: "support".into(),
            version: 2,
            kind: ArtifactKind::Adapter,
            path: "/srv/ferrotune/runs/demo/adapter".into(),
            files: vec![
                file(
                    "adapter_config.json",
                    467,
                    "d11ae06d5b2a9f127c2ef89960b3927a6ba1b90e05f6c0b7969112aa77e9d08e",
                ),
                file(
                    "adapter_model.safetensors",
                    19_593_032,
                    "bfa2c6beef52102ecdac2d68e98461ff11a45f143fda0eef71162fe8dc5f4d46",
                ),
            ],
            run: Some(3),
            base_model: Some(1),
            created: "2026-12-07T12:38:14Z".into(),
            actor: "alice".into(),
            disabled: false,
            disabled_reason: None,
            aliases: vec!["champion".into()],
        },
        run: Some(RunRecord {
            id: 3,
            name: "demo".into(),
            run_dir: "/srv/ferrotune/runs/demo".into(),
            status: RunStatus::Succeeded,
            error: None,
            base_model: 1,
            datasets: vec![5, 6],
            config,
            method: "lora".into(),
            device: "cpu".into(),
            actor: "alice".into(),
            register_as: "support".into(),
            host: "build-box".into(),
            pid: 4242,
            started: "2026-12-07T12:36:20Z".into(),
            finished: Some("2026-12-07T12:38:13Z".into()),
            tokens: Some(6450),
            steps: Some(30),
            metrics: Some(
                json!({"steps": 30, "final_loss": 1.1506867140866397, "best_eval_loss": 0.9450199017144179, "best_step": 30, "train_tokens_per_sec": 214.41590479932756}),
            ),
            flops: Some(Flops {
                value: 3.6595165824e12,
                formula:
                    "(4·N + 6·N_lora)·T, N = 134515008 base parameters, N_lora = 4884480, T = 6450 tokens"
                        .into(),
            }),
        }),
        base_model: Some(ModelRecord {
            id: 1,
            name: "smollm2-135m-instruct".into(),
            path: "/srv/ferrotune/.ferrotune/models/smollm2-135m-instruct".into(),
            files: vec![file(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                98_362_432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            )],
            config: json!({"architecture": "llama", "layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3, "vocab": 49152, "context": 8192}),
            parameters: Some(134_515_008),
            created: "2026-12-07T12:36:19Z".into(),
        }),
        datasets: vec![
            DatasetRecord {
                id: 5,
                path: "examples/support/train.jsonl".into(),
                sha256: "83e1d7505deb792be4e1c639b0341f9d3d3de4f802388586ed3e1ba154bf9be0".into(),
                bytes: 312_404,
                format: Some("chat".into()),
                rows: Some(480),
                report: Some(
                    json!({"ok": true, "errors": 0, "warnings": 2, "counts": {"pii_email": 1, "near_duplicate": 1}}),
                ),
                pii_findings: Some(1),
                duplicates: Some(1),
                created: "2026-12-07T12:36:19Z".into(),
            },
            DatasetRecord {
                id: 6,
                path: "examples/support/eval.jsonl".into(),
                sha256: "5686a266f0a2a35c719baa9be0ed55bffc4c1926b5d74bbf0658e2083908290f".into(),
                bytes: 49_402,
                format: None,
                rows: None,
                report: None,
                pii_findings: None,
                duplicates: None,
                created: "2026-12-07T12:36:19Z".into(),
            },
        ],
        evals: vec![eval()],
        releases: vec![
            HistoryEvent {
                id: 20,
                time: "2026-12-07T12:59:00Z".into(),
                actor: "alice".into(),
                action: "promote-requested".into(),
                name: "support".into(),
                version: Some(2),
                alias: Some("champion".into()),
                from_version: None,
                to_version: None,
                request: Some(7),
                reason: Some("better rougeL".into()),
            },
            HistoryEvent {
                id: 21,
                time: "2026-12-07T13:00:00Z".into(),
                actor: "bob".into(),
                action: "approved".into(),
                name: "support".into(),
                version: Some(2),
                alias: Some("champion".into()),
                from_version: None,
                to_version: None,
                request: Some(7),
                reason: None,
            },
            HistoryEvent {
                id: 22,
                time: "2026-12-07T13:00:00Z".into(),
                actor: "bob".into(),
                action: "alias-set".into(),
                name: "support".into(),
                version: Some(2),
                alias: Some("champion".into()),
                from_version: Some(1),
                to_version: Some(2),
                request: Some(7),
                reason: Some("better rougeL".into()),
            },
        ],
    }
}

/// The same version with nothing optional recorded: no run, base, data, evals or releases.
pub fn bare() -> Lineage {
    let mut l = lineage();
    l.run = None;
    l.base_model = None;
    l.datasets.clear();
    l.evals.clear();
    l.releases.clear();
    l.artifact.run = None;
    l.artifact.base_model = None;
    l.artifact.aliases.clear();
    l.artifact.files.clear();
    l
}

/// card.toml with every field filled.
pub const FULL_CARD: &str = r#"
description = "Answers Brightwave customer-support questions in the house style."
developers = "Brightwave support tooling team"
contact = "ml-team@example.com"
license = "apache-2.0"
language = ["en"]
tags = ["customer-support"]
datasets = ["brightwave/support-chats"]
intended_use = "Drafting replies to support tickets for a human agent to review."
out_of_scope_use = "Sending replies without review; legal or medical advice."
bias_risks = "Trained on 480 English tickets; may invent policies."
limitations = "Greedy decoding up to 160 tokens was tested; longer answers were not."
recommendations = "Keep a human agent in the loop; check policy statements."
provider = "Brightwave Ltd, 1 Example Street, Dublin"
intended_purpose = "Assist support agents by drafting replies."
data_provenance = "Support tickets from 2025, anonymised and selected by the support lead."
human_oversight = "Every draft is reviewed by an agent before sending."
cybersecurity = "Served behind API keys on the internal network only."
metrics_rationale = "rougeL and f1 against agents' actual replies measure closeness to house style."
risk_management = "Covered by the support risk register, entry SR-12."
lifecycle_changes = "Retrained quarterly on new tickets; each retrain is a new version."
harmonised_standards = "None applied; internal guideline ML-3."
declaration_of_conformity = "Not required: not a high-risk system (internal assessment A-7)."
post_market_monitoring = "Weekly review of 50 sampled drafts and the server's request metrics."
"#;
