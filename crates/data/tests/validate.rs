//! `validate` end to end on files written by the tests: each check reports the right code at the
//! right file, line and field; statistics and agreement come out of the same pass.

use std::path::{Path, PathBuf};

use ferrotune_data::validate::validate;
use ferrotune_data::{Code, Report, ValidateOptions};
use serde_json::json;

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").expect("write");
    p
}

fn chat(i: usize, topic: &str) -> String {
    json!({"messages": [
        {"role": "system", "content": "You are the support bot."},
        {"role": "user", "content": format!("Question number {i}: where is parcel {} going after {} days?", i * 7, i % 13)},
        {"role": "assistant", "content": format!("Answer {i}: it goes to depot {} and then to you, ticket {}.", i * 3, i * 11)}],
        "metadata": {"topic": topic}})
    .to_string()
}

fn at(r: &Report, code: Code) -> Vec<(Option<u64>, String)> {
    r.findings.iter().filter(|f| f.code == code).map(|f| (f.line, f.field.clone())).collect()
}

#[test]
fn a_clean_file_of_enough_rows_passes_with_statistics() {
    let d = tempfile::tempdir().expect("tmp");
    let rows: Vec<String> = (0..120).map(|i| chat(i, if i % 2 == 0 { "a" } else { "b" })).collect();
    let p = write(d.path(), "train.jsonl", &rows);
    let r = validate(&[p], &ValidateOptions::default()).expect("validate");
    assert!(r.ok && r.errors == 0 && r.warnings == 0, "{r}");
    assert_eq!(r.stats.valid_rows, 120);
    assert_eq!(r.stats.messages_per_example.as_ref().map(|s| (s.min, s.max)), Some((3, 3)));
    assert_eq!(r.stats.coverage["topic"].counts["a"], 60);
    assert!(r.stats.total_tokens.is_none(), "no model, no token counts");
}

#[test]
fn each_error_and_warning_is_reported_at_its_line_and_field() {
    let d = tempfile::tempdir().expect("tmp");
    let mut rows: Vec<String> = (0..12).map(|i| chat(i, "a")).collect();
    rows.push(
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}"#.into(),
    ); // 13: bad JSON
    rows.push(
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}"#.into(),
    ); // 14
    rows.push(chat(3, "a")); // 15: exact duplicate of line 4
    rows.push(json!({"messages": [{"role": "user", "content": "mail me at ann@corp.example"}, {"role": "assistant", "content": "ok"}]}).to_string()); // 16
    rows.push(json!({"prompt": "p", "completion": "c"}).to_string()); // 17: mixed formats
    let p = write(d.path(), "t.jsonl", &rows);
    let r = validate(std::slice::from_ref(&p), &ValidateOptions::default()).expect("validate");
    assert!(!r.ok);
    assert_eq!(at(&r, Code::BadJson), vec![(Some(13), String::new())]);
    assert!(r.findings.iter().any(|f| f.code == Code::BadJson && f.message.contains("column")));
    assert_eq!(at(&r, Code::UnknownRole), vec![(Some(14), "messages[1].role".into())]);
    assert_eq!(at(&r, Code::ExactDuplicate), vec![(Some(15), String::new())]);
    assert!(r.findings.iter().any(|f| f.code == Code::ExactDuplicate && f.message.ends_with("t.jsonl:4")));
    assert_eq!(at(&r, Code::Pii), vec![(Some(16), "messages[0].content".into())]);
    assert!(!r.findings.iter().any(|f| f.message.contains("ann@corp")), "reports must not repeat the PII");
    assert_eq!(at(&r, Code::MixedFormats), vec![(Some(17), String::new())]);
    assert!(r.findings.iter().all(|f| f.file.ends_with("t.jsonl") && !f.hint.is_empty()));
    assert_eq!(r.counts[&Code::MissingSystem], 1);
    // The JSON form carries the same findings.
    let j = serde_json::to_value(&r).expect("json");
    assert_eq!(j["counts"]["unknown_role"], 1);
    assert_eq!(j["findings"].as_array().map(Vec::len), Some(r.findings.len()));
}

#[test]
fn near_duplicates_conflicts_and_eval_leakage_are_found() {
    let d = tempfile::tempdir().expect("tmp");
    let long: String = (0..200).map(|i| format!("w{i} ")).collect(); // near copies below: Jaccard ≈ 0.95
    let mut rows: Vec<String> = (0..10).map(|i| chat(i, "a")).collect();
    let q = |u: &str, a: &str| {
        json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": u}, {"role": "assistant", "content": a}]}).to_string()
    };
    rows.push(q("tell me", &long)); // 11
    rows.push(q("tell me please", &long.replace("w30 ", "x "))); // 12: near dup of 11
    rows.push(q("refund window?", "30 days")); // 13
    rows.push(q("refund window?", "45 days")); // 14: conflicts with 13
    let train = write(d.path(), "train.jsonl", &rows);
    let eval = write(
        d.path(),
        "eval.jsonl",
        &[chat(5, "a"), q("tell me now", &long.replace("w10 ", "y ")), chat(999, "a")],
    );
    let opts = ValidateOptions { eval_files: vec![eval], ..ValidateOptions::default() };
    let r = validate(&[train], &opts).expect("validate");
    assert_eq!(at(&r, Code::NearDuplicate), vec![(Some(12), String::new())]);
    assert_eq!(at(&r, Code::ConflictingAnswers), vec![(Some(14), String::new())]);
    let leaks: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.code == Code::EvalLeakage)
        .map(|f| (f.file.ends_with("eval.jsonl"), f.line))
        .collect();
    assert_eq!(leaks, vec![(true, Some(1)), (true, Some(2))]);
    assert_eq!((r.stats.eval_rows, r.stats.eval_rows_leaked), (3, 2));
    assert!(r.ok, "warnings only: {r}");
}

#[test]
fn too_few_rows_is_an_error_and_few_rows_a_warning() {
    let d = tempfile::tempdir().expect("tmp");
    let p = write(d.path(), "small.jsonl", &(0..9).map(|i| chat(i, "a")).collect::<Vec<_>>());
    let r = validate(&[p], &ValidateOptions::default()).expect("validate");
    assert_eq!(at(&r, Code::TooFewExamples), vec![(None, String::new())]);
    assert!(!r.ok);
    let p = write(d.path(), "mid.jsonl", &(0..50).map(|i| chat(i, "a")).collect::<Vec<_>>());
    let r = validate(&[p], &ValidateOptions::default()).expect("validate");
    assert!(r.ok && r.counts.get(&Code::FewExamples) == Some(&1));
}

#[test]
fn skewed_coverage_and_low_annotator_agreement_are_flagged() {
    let d = tempfile::tempdir().expect("tmp");
    let rows: Vec<String> = (0..120)
        .map(|i| {
            let topic = if i < 115 { "billing" } else { "legal" };
            // Three annotators who agree on even rows only.
            let labels = if i % 2 == 0 { json!(["pos", "pos", "pos"]) } else { json!(["pos", "neg", "neu"]) };
            let mut v: serde_json::Value = serde_json::from_str(&chat(i, topic)).expect("json");
            v["metadata"]["annotations"] = labels;
            v.to_string()
        })
        .collect();
    let p = write(d.path(), "a.jsonl", &rows);
    let r = validate(&[p], &ValidateOptions::default()).expect("validate");
    let skew: Vec<_> = r.findings.iter().filter(|f| f.code == Code::SkewedCoverage).collect();
    assert_eq!(skew.len(), 1);
    assert!(skew[0].field == "metadata.topic" && skew[0].message.contains("legal (5)"), "{:?}", skew[0]);
    let a = r.agreement.as_ref().expect("agreement");
    assert_eq!(a.units, 120);
    assert!(a.alpha.is_some_and(|x| x < 0.8));
    assert_eq!(r.counts.get(&Code::LowAgreement), Some(&1));
}

#[test]
fn csv_files_are_checked_with_the_same_rules() {
    let d = tempfile::tempdir().expect("tmp");
    let mut lines = vec!["instruction,input,output,metadata".to_string()];
    for i in 0..11 {
        lines.push(format!("Translate item {i},hello {i},hallo {i},\"{{\"\"lang\"\":\"\"de\"\"}}\""));
    }
    lines.push("Summarize,some text,,".into()); // line 13: no output
    let p = write(d.path(), "a.csv", &lines);
    let r = validate(&[p], &ValidateOptions::default()).expect("validate");
    assert_eq!(at(&r, Code::MissingField), vec![(Some(13), "output".into())]);
    assert_eq!(r.stats.per_format.values().sum::<u64>(), 11);
    assert_eq!(r.stats.coverage["lang"].counts["de"], 11);
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = validate(&[PathBuf::from("/nonexistent/x.jsonl")], &ValidateOptions::default())
        .expect_err("must fail");
    assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
}

/// The scan runs on the rayon pool and helps it while it waits: with one thread (the reader and
/// sink being the only worker) it must neither hang nor change the report; over several chunks
/// (10 000 rows, 4 096 a chunk) the order-dependent findings keep their file order.
#[test]
fn one_pool_thread_gives_the_same_report_as_the_default_pool() {
    let d = tempfile::tempdir().expect("tmp");
    let mut rows: Vec<String> = (0..10_000).map(|i| chat(i, if i % 3 == 0 { "a" } else { "b" })).collect();
    rows[9_000] = rows[17].clone(); // exact duplicate far from its original, chunks apart
    rows[5_000] = r#"{"messages": "#.into(); // bad JSON mid-file
    let p = write(d.path(), "many.jsonl", &rows);
    let opts = ValidateOptions { max_findings_per_code: 100_000, ..ValidateOptions::default() };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let r1 = one.install(|| validate(std::slice::from_ref(&p), &opts)).expect("validate");
    let r = validate(std::slice::from_ref(&p), &opts).expect("validate");
    assert_eq!(serde_json::to_string(&r1).expect("json"), serde_json::to_string(&r).expect("json"));
    assert_eq!(at(&r, Code::ExactDuplicate), vec![(Some(9_001), String::new())]);
    assert_eq!(at(&r, Code::BadJson), vec![(Some(5_001), String::new())]);
    assert_eq!(r.stats.valid_rows, 9_999);
}

/// The progress callback hears each file's rows and bytes as the scan goes, ending at the whole
/// file (training file, then the eval file).
#[test]
fn progress_reports_reach_each_files_rows_and_bytes() {
    use std::sync::{Arc, Mutex};
    let d = tempfile::tempdir().expect("tmp");
    let rows: Vec<String> = (0..9_000).map(|i| chat(i, "a")).collect();
    let train = write(d.path(), "train.jsonl", &rows);
    let eval = write(d.path(), "eval.jsonl", &rows[..50]);
    // (file, rows, bytes) of each report.
    type Seen = Vec<(PathBuf, u64, Option<u64>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let progress = ferrotune_data::Progress::new(move |p| {
        log.lock().expect("lock").push((p.file.to_path_buf(), p.rows, p.bytes))
    });
    let opts = ValidateOptions { eval_files: vec![eval.clone()], progress, ..ValidateOptions::default() };
    validate(std::slice::from_ref(&train), &opts).expect("validate");
    let seen = seen.lock().expect("lock");
    let of = |f: &PathBuf| seen.iter().filter(|s| &s.0 == f).map(|s| (s.1, s.2)).collect::<Vec<_>>();
    let (t, e) = (of(&train), of(&eval));
    assert!(t.len() >= 3, "one report a chunk: {t:?}");
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "rows grow: {t:?}");
    assert_eq!(t.last(), Some(&(9_000, Some(std::fs::metadata(&train).expect("size").len()))));
    assert_eq!(e, vec![(50, Some(std::fs::metadata(&eval).expect("size").len()))]);
    assert!(
        seen.iter().position(|s| s.0 == eval) > seen.iter().rposition(|s| s.0 == train),
        "train first, then eval"
    );
}
