//! `prepare` end to end: drops and changes are all in the report, the split is exact and
//! stratified, the input is untouched, and a failed run leaves nothing behind.

use std::path::Path;

use ferrotune_data::{Code, DedupMode, PrepareOptions, prepare};
use serde_json::{Value, json};

fn row(i: usize, topic: &str, answer: &str) -> String {
    json!({"messages": [{"role": "user", "content": format!("Question {i} about {topic}: how do returns of item {} work?", i * 13)},
                        {"role": "assistant", "content": answer}], "metadata": {"topic": topic}})
    .to_string()
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn prepare_drops_dedups_redacts_and_splits_with_every_change_reported() {
    let d = tempfile::tempdir().expect("tmp");
    let mut lines: Vec<String> = (0..90).map(|i| row(i, "a", &format!("Answer {i}"))).collect();
    lines.extend((90..120).map(|i| row(i, "b", &format!("Answer {i}"))));
    lines.push(row(5, "a", "Answer 5")); // 121: exact duplicate of line 6
    lines.push("{oops".into()); // 122: bad JSON
    lines.push(row(200, "b", "Call me on +1 415-555-0132 or mail bo@shop.example")); // 123: PII
    let input = d.path().join("in.jsonl");
    let original = lines.join("\n") + "\n";
    std::fs::write(&input, &original).expect("write");
    let out = d.path().join("out");
    let opts = PrepareOptions {
        redact_pii: true,
        eval_fraction: 0.2,
        stratify_by: Some("topic".into()),
        seed: 7,
        ..PrepareOptions::default()
    };
    let r = prepare(&input, &out, &opts).expect("prepare");

    assert_eq!(std::fs::read_to_string(&input).expect("read"), original, "input must not change");
    assert_eq!(r.rows_read, 123);
    let dropped: Vec<(u64, Code)> = r.dropped.iter().map(|x| (x.line, x.reason)).collect();
    assert_eq!(dropped, vec![(121, Code::ExactDuplicate), (122, Code::BadJson)]);
    assert_eq!(r.changed.len(), 1);
    assert_eq!(r.changed[0].line, 123);
    // 90 of topic a, 31 of topic b kept: exactly round(0.2·n) of each go to eval.
    assert_eq!((r.strata["a"].eval, r.strata["a"].train), (18, 72));
    assert_eq!((r.strata["b"].eval, r.strata["b"].train), (6, 25));
    let train = read_jsonl(&out.join("train.jsonl"));
    let eval = read_jsonl(&out.join("eval.jsonl"));
    assert_eq!((train.len(), eval.len()), (97, 24));
    let all = format!("{train:?}{eval:?}");
    assert!(
        !all.contains("bo@shop.example")
            && !all.contains("415-555")
            && all.contains("[EMAIL]")
            && all.contains("[PHONE]")
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["dropped"][0]["reason"], "exact_duplicate");
    assert_eq!(report["changed"][0]["redacted"][0][1], "phone");

    // Same seed, same split; another seed, another split of the same sizes.
    let again = prepare(&input, &d.path().join("again"), &opts).expect("prepare");
    assert_eq!(read_jsonl(&d.path().join("again/eval.jsonl")), eval);
    assert_eq!(again.eval_rows, r.eval_rows);
    let other = PrepareOptions { seed: 8, ..opts.clone() };
    prepare(&input, &d.path().join("other"), &other).expect("prepare");
    assert_ne!(read_jsonl(&d.path().join("other/eval.jsonl")), eval);
}

#[test]
fn near_dedup_drops_near_copies_and_off_keeps_everything() {
    let d = tempfile::tempdir().expect("tmp");
    let long: String = (0..50).map(|i| format!("word{i} ")).collect();
    let lines = [row(1, "a", &long), row(1, "a", &long.replace("word25 ", "other ")), row(1, "a", &long)];
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let near = PrepareOptions { dedup: DedupMode::Near, eval_fraction: 0.0, ..PrepareOptions::default() };
    let r = prepare(&input, &d.path().join("near"), &near).expect("prepare");
    let dropped: Vec<(u64, Code)> = r.dropped.iter().map(|x| (x.line, x.reason)).collect();
    assert_eq!(dropped, vec![(2, Code::NearDuplicate), (3, Code::ExactDuplicate)]);
    let off = PrepareOptions { dedup: DedupMode::Off, eval_fraction: 0.0, ..PrepareOptions::default() };
    let r = prepare(&input, &d.path().join("off"), &off).expect("prepare");
    assert!(r.dropped.is_empty() && r.train_rows == 3);
}

#[test]
fn a_failed_prepare_leaves_no_output_and_no_temporary_folder() {
    let d = tempfile::tempdir().expect("tmp");
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, row(1, "a", "x")).expect("write");
    let out = d.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), "mine").expect("write");
    let err = prepare(&input, &out, &PrepareOptions::default()).expect_err("non-empty out must be refused");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).expect("read"), "mine");
    // An unreadable input fails in the middle of the run: nothing is published.
    let missing = d.path().join("missing.jsonl");
    assert!(prepare(&missing, &d.path().join("out2"), &PrepareOptions::default()).is_err());
    let names: Vec<String> = std::fs::read_dir(d.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".ferrotune-prepare-") || n == "out2"), "{names:?}");
}

/// Progress comes in two stages, the checks and then the writing, each reaching the whole file
/// (9 000 rows: several chunks).
#[test]
fn progress_covers_both_passes_to_the_end_of_the_file() {
    use std::sync::{Arc, Mutex};
    let d = tempfile::tempdir().expect("tmp");
    let lines: Vec<String> =
        (0..9_000).map(|i| row(i, ["a", "b", "c"][i % 3], &format!("Answer {i}"))).collect();
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    // (stage, rows, bytes) of each report.
    type Seen = Vec<(&'static str, u64, Option<u64>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let progress =
        ferrotune_data::Progress::new(move |p| log.lock().expect("lock").push((p.stage, p.rows, p.bytes)));
    let opts =
        PrepareOptions { stratify_by: Some("topic".into()), seed: 4, progress, ..PrepareOptions::default() };
    let r = prepare(&input, &d.path().join("out"), &opts).expect("prepare");
    assert_eq!(r.rows_kept, 9_000);
    let seen = seen.lock().expect("lock");
    let size = std::fs::metadata(&input).expect("size").len();
    for stage in ["checking", "writing"] {
        let last = seen.iter().rfind(|s| s.0 == stage).copied();
        assert_eq!(last, Some((stage, 9_000, Some(size))), "{stage}: {seen:?}");
    }
    assert!(seen.iter().position(|s| s.0 == "writing") > seen.iter().rposition(|s| s.0 == "checking"));
}
