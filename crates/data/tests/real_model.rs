//! With the real default model (SmolLM2-135M-Instruct, ChatML, EOS `<|im_end|>` = 2): the
//! rendered ids are exactly the template text's tokenization, loss covers each answer through its
//! `<|im_end|>` and nothing else, and the bundled example validates cleanly. Skipped (with a
//! message) when the model is not installed, failed instead under FERROTUNE_REQUIRE_MODELS=1.

use std::path::PathBuf;
use std::sync::Arc;

use ferrotune_data::{
    IGNORE_INDEX, Record, RenderOptions, Renderer, Role, Turn, ValidateOptions, render_for_training, validate,
};
use ferrotune_model::{LoadedModel, WeightMode};

/// The installed model, `None` (SKIPPED) only when it is not installed and FERROTUNE_REQUIRE_MODELS
/// is not set; a model that is installed but fails to load fails the test.
fn model() -> Option<LoadedModel> {
    let p = ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_MODEL)?;
    Some(
        ferrotune_model::load_path(&p, WeightMode::Quantized, &candle_core::Device::Cpu)
            .expect("the installed model loads"),
    )
}

#[test]
fn smollm2_labels_are_exactly_the_answers_with_their_im_end() {
    let Some(m) = model() else { return };
    let r = Renderer::from_model(&m).expect("renderer");
    assert_eq!(r.eos_id(), 2);
    let rec = Record::chat(vec![
        Turn::new(Role::System, "You are terse."),
        Turn::new(Role::User, "Capital of France?"),
        Turn::new(Role::Assistant, "Paris."),
        Turn::new(Role::User, "And of Italy? Answer with one word, then a newline and 'é😀'."),
        Turn::new(Role::Assistant, " Rome\né😀"),
    ]);
    let out = render_for_training(&rec, &r, &RenderOptions::default()).expect("render");
    assert_eq!(
        out.input_ids,
        m.tokenizer.encode(&out.text, false).expect("encode"),
        "ids must be the template text's tokens"
    );
    assert_eq!(
        out.text,
        m.render_chat(
            &[
                ferrotune_model::Message::new("system", "You are terse."),
                ferrotune_model::Message::new("user", "Capital of France?"),
                ferrotune_model::Message::new("assistant", "Paris."),
                ferrotune_model::Message::new(
                    "user",
                    "And of Italy? Answer with one word, then a newline and 'é😀'."
                ),
                ferrotune_model::Message::new("assistant", " Rome\né😀"),
            ],
            false
        )
        .expect("render_chat")
    );
    // Runs of labelled tokens decode to the two answers, each ending in <|im_end|>.
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&id, &l) in out.input_ids.iter().zip(&out.labels) {
        if l == IGNORE_INDEX {
            if !cur.is_empty() {
                runs.push(std::mem::take(&mut cur));
            }
        } else {
            assert_eq!(l, i64::from(id));
            cur.push(id);
        }
    }
    assert!(cur.is_empty(), "the trailing newline after the last <|im_end|> is masked");
    let texts: Vec<String> = runs.iter().map(|r| m.tokenizer.decode(r, false).expect("decode")).collect();
    assert_eq!(texts, vec!["Paris.<|im_end|>".to_string(), " Rome\né😀<|im_end|>".to_string()]);
    assert_eq!(out.labels.iter().filter(|&&l| l == 2).count(), 2, "each EOS carries loss");
}

#[test]
fn the_bundled_support_example_validates_cleanly_with_token_statistics() {
    let Some(m) = model() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/support");
    let opts = ValidateOptions {
        renderer: Some(Arc::new(Renderer::from_model(&m).expect("renderer"))),
        model_name: Some("smollm2".into()),
        eval_files: vec![root.join("eval.jsonl")],
        ..ValidateOptions::default()
    };
    let r = validate(&[root.join("train.jsonl")], &opts).expect("validate");
    assert!(r.ok && r.warnings == 0, "{r}");
    assert!(r.stats.valid_rows >= 300 && r.stats.eval_rows >= 50);
    let t = r.stats.target_tokens.as_ref().expect("token stats");
    let all = r.stats.total_tokens.as_ref().expect("token stats");
    assert!(t.min > 0 && t.max < all.max && all.max < 2048);
    assert_eq!(r.stats.billed_training_tokens, Some(all.sum * 3));
}

#[test]
fn smollm2_takes_both_fast_paths_and_they_render_exactly_as_minijinja_and_hf() {
    let Some(m) = model() else { return };
    let fast = Renderer::from_model(&m).expect("renderer");
    assert_eq!(fast.fast_paths(), (true, true), "SmolLM2's tokenizer and ChatML template must be recognised");
    let slow = fast.clone().without_fast_paths();
    let pieces = [
        "Hi, question 12: refund",
        " window?",
        "  two spaces",
        "\n\nnew paragraph",
        "don't it's we'll",
        "é😀 中文 ½ Ⅻ ٣",
        "\u{a0}nbsp",
        "tabs\t\there",
        "<|im_end|>",
        "<|im_start|>",
        "<|endoftext|>",
        "1234567.89",
        "   ",
        "CAPS'S",
        "e\u{301}",
        "?!...",
        "\r\n",
    ];
    let mut n = 0;
    for i in 0..pieces.len() {
        for j in 0..pieces.len() {
            let rec = Record::chat(vec![
                Turn::new(Role::System, pieces[(i + j) % pieces.len()]),
                Turn::new(Role::User, format!("{}{}", pieces[i], pieces[j])),
                Turn::new(Role::Assistant, format!("{}{}", pieces[j], pieces[i])),
            ]);
            for train_on_inputs in [false, true] {
                let opts = RenderOptions { train_on_inputs };
                assert_eq!(
                    render_for_training(&rec, &fast, &opts).expect("fast"),
                    render_for_training(&rec, &slow, &opts).expect("slow"),
                    "{rec:?}"
                );
            }
            n += 1;
        }
    }
    assert!(n > 200);
}

#[test]
fn the_text_only_load_renders_exactly_as_the_full_model() {
    let Some(m) = model() else { return };
    let t = ferrotune_model::loaded::load_text_path(&m.path).expect("text-only load");
    assert_eq!(t.eos_ids, m.eos_ids);
    assert_eq!(
        t.chat_template.as_ref().map(|c| c.source().to_string()),
        m.chat_template.as_ref().map(|c| c.source().to_string())
    );
    let (full, text) =
        (Renderer::from_model(&m).expect("renderer"), Renderer::from_text_model(&t).expect("renderer"));
    let rec = Record::chat(vec![
        Turn::new(Role::User, "Capital of France? 12 é😀"),
        Turn::new(Role::Assistant, "  Paris."),
    ]);
    let opts = RenderOptions::default();
    assert_eq!(
        render_for_training(&rec, &full, &opts).expect("render"),
        render_for_training(&rec, &text, &opts).expect("render")
    );
}

/// Runs one test of this binary in a child process with `FERROTUNE_HOME` = `home`.
fn run_alone(test: &str, home: &std::path::Path, require: bool) -> std::process::Output {
    let mut c = std::process::Command::new(std::env::current_exe().expect("test binary"));
    c.args(["--exact", test, "--nocapture"])
        .env("FERROTUNE_HOME", home)
        .env_remove(ferrotune_model::testing::REQUIRE_MODELS);
    if require {
        c.env(ferrotune_model::testing::REQUIRE_MODELS, "1");
    }
    c.output().expect("run the test binary")
}

#[test]
fn a_missing_model_skips_locally_fails_in_ci_and_a_broken_install_always_fails() {
    // Regression: these tests passed, SKIPPED, in CI when the model was missing, and when its
    // manifest was corrupt.
    let test = "smollm2_labels_are_exactly_the_answers_with_their_im_end";
    let home = tempfile::tempdir().expect("tmp");
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let o = run_alone(test, home.path(), false);
    assert!(o.status.success() && text(&o).contains("SKIPPED"), "{}", text(&o));
    let o = run_alone(test, home.path(), true);
    assert!(!o.status.success() && text(&o).contains("FERROTUNE_REQUIRE_MODELS"), "{}", text(&o));
    let dir = home.path().join("models").join(ferrotune_model::store::DEFAULT_MODEL);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("manifest.json"), "{ truncated").expect("write");
    let o = run_alone(test, home.path(), false);
    assert!(!o.status.success() && text(&o).contains("broken"), "{}", text(&o));
}
