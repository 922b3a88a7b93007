//! `ferrotune data validate | prepare | render` as a user runs them: exit codes (0 clean, 1 data
//! errors, 2 usage errors), the JSON report agreeing with the terminal one, prepare publishing
//! its outputs atomically without touching the input, and render marking the loss spans.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn ferrotune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
}

fn run(args: &[&str]) -> Output {
    #[allow(clippy::expect_used)]
    ferrotune().args(args).output().expect("run ferrotune")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn chat(i: usize, system: bool) -> Value {
    let mut m = vec![
        json!({"role": "user", "content": format!("Question {i}: when does parcel {} arrive after {} days?", i * 7, i % 13)}),
        json!({"role": "assistant", "content": format!("Answer {i}: at depot {} first, then ticket {}.", i * 3, i * 11)}),
    ];
    if system {
        m.insert(0, json!({"role": "system", "content": "You are the parcel support bot."}));
    }
    json!({"messages": m, "metadata": {"topic": if i.is_multiple_of(2) { "a" } else { "b" }}})
}

fn write_rows(dir: &Path, name: &str, rows: &[Value]) -> PathBuf {
    let p = dir.join(name);
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, body).expect("write rows");
    p
}

/// 40 clean rows, then a bad row of each kind at known lines.
fn dirty_rows() -> Vec<Value> {
    let mut rows: Vec<Value> = (0..40).map(|i| chat(i, true)).collect();
    rows.push(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]})); // 41
    rows.push(json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]})); // 42
    rows.push(chat(3, true)); // 43: duplicate of line 4
    rows.push(json!({"messages": [{"role": "user", "content": "mail ann@corp.example"}, {"role": "assistant", "content": "ok"}]})); // 44
    rows
}

#[test]
fn validate_exits_0_on_clean_data_even_with_warnings() {
    let d = tempfile::tempdir().expect("tmp");
    // No system messages: a warning on every row, no error.
    let p = write_rows(d.path(), "clean.jsonl", &(0..120).map(|i| chat(i, false)).collect::<Vec<_>>());
    let out = run(&["data", "validate", p.to_str().expect("utf8")]);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
    assert!(so.contains("missing_system (120)") && so.contains("OK with warnings"), "{so}");
}

#[test]
fn validate_exits_1_on_data_errors_naming_file_line_and_field() {
    let d = tempfile::tempdir().expect("tmp");
    let p = write_rows(d.path(), "dirty.jsonl", &dirty_rows());
    let out = run(&["data", "validate", p.to_str().expect("utf8")]);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    let file = p.display().to_string();
    assert!(so.contains(&format!("{file}:41 messages[1].role: unknown role `bot`")), "{so}");
    assert!(so.contains(&format!("{file}:42 messages[1].content: `content` is a number")), "{so}");
    assert!(so.contains(&format!("{file}:43: same conversation as {file}:4")), "{so}");
    assert!(so.contains("fix: "), "every finding carries a fix hint: {so}");
    assert!(so.contains("FAILED"), "{so}");
    assert!(text(&out.stderr).contains("2 error(s) in the data"), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2_with_the_reason() {
    let d = tempfile::tempdir().expect("tmp");
    let p = write_rows(d.path(), "ok.jsonl", &(0..20).map(|i| chat(i, true)).collect::<Vec<_>>());
    let p = p.to_str().expect("utf8");
    let out_dir = d.path().join("out");
    let out_dir = out_dir.to_str().expect("utf8");
    let missing = d.path().join("missing.jsonl");
    let missing = missing.to_str().expect("utf8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["data", "validate", p, "--bogus"], "--bogus"),
        (vec!["data", "validate"], "FILES"),
        (vec!["data", "validate", missing], "missing.jsonl: no such file"),
        (vec!["data", "validate", p, "--eval", missing], "missing.jsonl: no such file"),
        (vec!["data", "validate", p, "--format", "xml"], "xml"),
        (vec!["data", "validate", p, "--near-dup-threshold", "0"], "--near-dup-threshold"),
        (vec!["data", "validate", p, "--max-seq-len", "lots"], "lots"),
        (vec!["data", "prepare", p, "--out", out_dir, "--eval-fraction", "1.5"], "--eval-fraction 1.5"),
        (
            vec!["data", "prepare", p, "--out", out_dir, "--eval-fraction=-0.1"],
            "--eval-fraction -0.1 is not in [0, 1)",
        ),
        (vec!["data", "prepare", p, "--out", out_dir, "--eval-fraction", "half"], "half"),
        (vec!["data", "prepare", p], "--out"),
        (vec!["data", "prepare", missing, "--out", out_dir], "missing.jsonl: no such file"),
        (vec!["data", "prepare", p, "--out", out_dir, "--dedup", "fuzzy"], "fuzzy"),
        (vec!["data", "render", missing], "missing.jsonl: no such file"),
    ];
    for (args, says) in cases {
        let out = run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
    assert!(!Path::new(out_dir).exists(), "a usage error writes nothing");
}

/// Per-code counts and totals as the terminal report prints them.
fn human_counts(report: &str) -> (u64, u64, BTreeMap<String, u64>) {
    let head = report.lines().next().unwrap_or_default();
    let num = |word: &str| -> u64 {
        let i = head.find(word).unwrap_or(0);
        head[..i].trim_end().rsplit([' ', ':']).next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
    };
    let mut codes = BTreeMap::new();
    for l in report.lines() {
        // "  code (n)" lines, two spaces deep, under "errors:" and "warnings:".
        if let Some(rest) = l.strip_prefix("  ")
            && !rest.starts_with(' ')
            && let Some((code, n)) = rest.split_once(" (")
            && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && let Some(Ok(n)) = n.strip_suffix(')').map(str::parse::<u64>)
        {
            codes.insert(code.to_string(), n);
        }
    }
    (num(" errors"), num(" warnings"), codes)
}

#[test]
fn the_json_report_parses_and_has_the_human_reports_counts() {
    let d = tempfile::tempdir().expect("tmp");
    let p = write_rows(d.path(), "dirty.jsonl", &dirty_rows());
    let eval = write_rows(d.path(), "eval.jsonl", &[chat(5, true), chat(500, true)]);
    let args = ["data", "validate", p.to_str().expect("utf8"), "--eval", eval.to_str().expect("utf8")];
    let human = run(&args);
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let js = run(&with_json);
    assert_eq!(human.status.code(), Some(1));
    assert_eq!(js.status.code(), Some(1), "--json keeps the exit code");
    let report: Value = serde_json::from_slice(&js.stdout).expect("stdout is one JSON document");
    let (errors, warnings, codes) = human_counts(&text(&human.stdout));
    assert_eq!(report["errors"].as_u64(), Some(errors), "{}", text(&human.stdout));
    assert_eq!(report["warnings"].as_u64(), Some(warnings));
    assert_eq!(errors, 2);
    let json_codes: BTreeMap<String, u64> = report["counts"]
        .as_object()
        .expect("counts")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(json_codes, codes);
    assert!(codes.contains_key("eval_leakage") && codes.contains_key("pii"), "{codes:?}");
    let f = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["code"] == "unknown_role")
        .expect("unknown_role");
    assert_eq!(
        (f["line"].as_u64(), f["field"].as_str(), f["unit"].as_str()),
        (Some(41), Some("messages[1].role"), Some("line"))
    );
    assert_eq!(report["stats"]["rows"].as_u64(), Some(44));
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The file's bytes and modification time: what "never modified" means.
fn snapshot(p: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (std::fs::read(p).expect("read"), std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime"))
}

#[test]
fn prepare_publishes_train_eval_and_report_and_never_touches_the_input() {
    let d = tempfile::tempdir().expect("tmp");
    let p = write_rows(d.path(), "dirty.jsonl", &dirty_rows());
    let before = snapshot(&p);
    let out = d.path().join("prepared");
    let res = run(&[
        "data",
        "prepare",
        p.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--redact-pii",
        "--eval-fraction",
        "0.25",
        "--stratify-by",
        "topic",
        "--seed",
        "9",
    ]);
    assert_eq!(res.status.code(), Some(0), "{}", text(&res.stderr));
    assert_eq!(snapshot(&p), before, "the input must not change");
    assert_eq!(listing(&out), ["eval.jsonl", "report.json", "train.jsonl"]);
    assert_eq!(listing(d.path()), ["dirty.jsonl", "prepared"], "no temporary folder left beside --out");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("report json");
    let lines = |f: &str| std::fs::read_to_string(out.join(f)).expect("read").lines().count() as u64;
    assert_eq!(
        (lines("train.jsonl"), lines("eval.jsonl")),
        (report["train_rows"].as_u64().unwrap_or(0), report["eval_rows"].as_u64().unwrap_or(0))
    );
    assert_eq!(report["rows_read"].as_u64(), Some(44));
    let dropped: Vec<(u64, &str)> = report["dropped"]
        .as_array()
        .expect("dropped")
        .iter()
        .map(|x| (x["line"].as_u64().unwrap_or(0), x["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(dropped, [(41, "unknown_role"), (42, "wrong_type"), (43, "exact_duplicate")]);
    assert_eq!(report["changed"][0]["line"].as_u64(), Some(44));
    assert!(
        !std::fs::read_to_string(out.join("train.jsonl")).expect("train").contains("ann@corp")
            && !std::fs::read_to_string(out.join("eval.jsonl")).expect("eval").contains("ann@corp")
    );
    assert!(text(&res.stdout).contains("44 rows read, 3 dropped, 1 changed"), "{}", text(&res.stdout));

    // A second run into the same, now full, folder is refused and changes nothing.
    let published = snapshot(&out.join("train.jsonl"));
    let again = run(&["data", "prepare", p.to_str().expect("utf8"), "--out", out.to_str().expect("utf8")]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("not empty"), "{}", text(&again.stderr));
    assert_eq!(snapshot(&out.join("train.jsonl")), published);
}

#[test]
fn prepare_on_an_unreadable_input_leaves_no_output_folder() {
    let d = tempfile::tempdir().expect("tmp");
    // A Parquet file whose footer is intact but whose pages are overwritten: reading fails part way.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tests/fixtures/parquet/chat.parquet");
    let mut bytes = std::fs::read(fixture).expect("fixture");
    let n = bytes.len();
    bytes[8..n / 3].fill(0xAB);
    let p = d.path().join("broken.parquet");
    std::fs::write(&p, &bytes).expect("write");
    let before = snapshot(&p);
    let out = d.path().join("prepared");
    let res = run(&["data", "prepare", p.to_str().expect("utf8"), "--out", out.to_str().expect("utf8")]);
    let err = text(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.parquet") && err.contains("row"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(d.path()), ["broken.parquet"], "no output folder, no temporary folder");
    assert_eq!(snapshot(&p), before);
    // validate says the same, with exit 1.
    let res = run(&["data", "validate", p.to_str().expect("utf8")]);
    assert_eq!(res.status.code(), Some(1));
    assert!(text(&res.stderr).contains("broken.parquet"), "{}", text(&res.stderr));
}

#[test]
fn parquet_findings_name_the_row() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tests/fixtures/parquet/chat.parquet");
    let out = run(&["data", "validate", fixture.to_str().expect("utf8")]);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(so.contains("chat.parquet row 18 messages[0].role: unknown role `robot`"), "{so}");
    assert!(so.contains("chat.parquet row 17: same conversation as"), "{so}");
}

#[test]
fn render_marks_the_loss_spans_and_validate_counts_tokens_with_the_model() {
    let d = tempfile::tempdir().expect("tmp");
    let model = d.path().join("tiny");
    ferrotune_model::testing::write_tiny_model(&model).expect("tiny model");
    let model = model.to_str().expect("utf8");
    let mut rows =
        vec![json!({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]})];
    rows.extend((0..12).map(|i| chat(i, true)));
    let p = write_rows(d.path(), "r.jsonl", &rows);
    let p = p.to_str().expect("utf8");

    let out = run(&["data", "render", p, "--model", model, "--n", "2", "--plain", "--ids"]);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(":1 messages[1].role"),
        "skipped rows are reported: {}",
        text(&out.stderr)
    );
    assert!(so.contains(&format!("example 1: {p}:2 — ")), "{so}");
    // Only the answer and its EOS carry loss; the system and user turns are masked.
    assert!(
        so.contains("<|im_start|>assistant\n[[Answer 0: at depot 0 first, then ticket 0.<|im_end|>]]\n"),
        "{so}"
    );
    assert!(so.contains("<|im_start|>system\nYou are the parcel support bot.<|im_end|>"), "{so}");
    assert_eq!(so.matches("<|im_end|>]]").count(), 2, "one span per example: {so}");
    let ids: Value = so
        .lines()
        .find(|l| l.starts_with("{\"input_ids\""))
        .map(|l| serde_json::from_str(l).expect("ids json"))
        .expect("ids line");
    let labels = ids["labels"].as_array().expect("labels");
    let with_loss = labels.iter().filter(|l| l.as_i64() != Some(-100)).count();
    assert_eq!(with_loss, "Answer 0: at depot 0 first, then ticket 0.".len() + 1, "answer bytes + EOS");
    assert!(so.contains(&format!("tokens, {with_loss} with loss")), "{so}");

    let ok = run(&["data", "validate", p, "--model", model]);
    assert_eq!(ok.status.code(), Some(1), "row 1 has an unknown role");
    assert!(text(&ok.stdout).contains("tokens per example: min"), "{}", text(&ok.stdout));
    let long = run(&["data", "validate", p, "--model", model, "--max-seq-len", "40", "--json"]);
    let report: Value = serde_json::from_slice(&long.stdout).expect("json");
    assert_eq!(report["counts"]["too_long"].as_u64(), Some(12), "{report}");
}

/// `ferrotune data validate --json | head` — the reader closes the pipe early; the command ends
/// without a panic message (it used to panic in `println!` on the broken pipe).
#[test]
fn a_report_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::Read;
    let d = tempfile::tempdir().expect("tmp");
    let rows: Vec<Value> = (0..3000).map(|i| chat(i, i % 3 != 0)).collect();
    let p = write_rows(d.path(), "t.jsonl", &rows);
    let mut child = ferrotune()
        .args(["data", "validate", p.to_str().expect("utf-8 path"), "--json", "--max-findings", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = [0u8; 16];
    child.stdout.take().expect("stdout").read_exact(&mut first).expect("read the report's start");
    // The pipe's read end is dropped here, with most of the report unread.
    let out = child.wait_with_output().expect("wait");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
