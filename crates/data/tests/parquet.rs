//! Parquet input: files written by pyarrow (`scripts/parity/parquet_fixtures.py`) give the same
//! findings, statistics and prepared output as their JSONL twins holding the same rows; positions
//! are rows; a corrupt file is an error naming the file, never a panic.

use std::path::{Path, PathBuf};

use ferrotune_data::{Code, DedupMode, PrepareOptions, Report, Unit, ValidateOptions, prepare, validate};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet").join(name)
}

/// Findings as comparable tuples: file references in messages written the JSONL way.
fn findings(
    r: &Report,
    file: &Path,
    skip_bad_json: bool,
) -> Vec<(Code, Option<u64>, String, String, String)> {
    let name = file.display().to_string();
    r.findings
        .iter()
        .filter(|f| !(skip_bad_json && f.code == Code::BadJson))
        .map(|f| {
            let msg =
                f.message.replace(&format!("{name} row "), "FILE:").replace(&format!("{name}:"), "FILE:");
            (f.code, f.line, f.field.clone(), msg, f.hint.clone())
        })
        .collect()
}

fn check_twins(stem: &str) -> (Report, Report) {
    let (pq, jl) = (fixture(&format!("{stem}.parquet")), fixture(&format!("{stem}.jsonl")));
    let opts = ValidateOptions::default();
    let a = validate(std::slice::from_ref(&pq), &opts).expect("validate parquet");
    let b = validate(std::slice::from_ref(&jl), &opts).expect("validate jsonl");
    assert_eq!(
        findings(&a, &pq, true),
        findings(&b, &jl, true),
        "{stem}: parquet vs jsonl findings\n{a}\n---\n{b}"
    );
    // Bad JSON cells are found on the same rows (the messages differ: a cell's column vs the line's).
    let bad = |r: &Report| {
        r.findings.iter().filter(|f| f.code == Code::BadJson).map(|f| f.line).collect::<Vec<_>>()
    };
    assert_eq!(bad(&a), bad(&b), "{stem}");
    assert_eq!(a.counts, b.counts, "{stem}");
    let stats = |r: &Report| serde_json::to_value(&r.stats).expect("stats json");
    assert_eq!(stats(&a), stats(&b), "{stem}");
    assert_eq!(a.agreement.as_ref().map(|x| x.alpha), b.agreement.as_ref().map(|x| x.alpha), "{stem}");
    for f in &a.findings {
        if f.line.is_some() {
            assert_eq!(f.unit, Unit::Row, "{f}");
            assert!(f.to_string().starts_with(&format!("{} row ", pq.display())), "{f}");
        }
    }
    assert!(b.findings.iter().all(|f| f.unit == Unit::Line));
    (a, b)
}

#[test]
fn chat_with_list_of_struct_messages_matches_its_jsonl_twin() {
    let (a, _) = check_twins("chat");
    // The rows the fixture script marks, by row number.
    let at = |code| {
        a.findings.iter().filter(|f| f.code == code).map(|f| (f.line, f.field.clone())).collect::<Vec<_>>()
    };
    assert_eq!(at(Code::ExactDuplicate), vec![(Some(17), String::new())]);
    assert!(
        a.findings
            .iter()
            .any(|f| f.code == Code::ExactDuplicate && f.message.ends_with("chat.parquet row 2")),
        "{a}"
    );
    assert_eq!(at(Code::UnknownRole), vec![(Some(18), "messages[0].role".into())]);
    assert_eq!(
        at(Code::MissingField).first(),
        Some(&(Some(18), "messages[1].content".into())),
        "a null struct field is an absent key"
    );
    assert_eq!(at(Code::BadWeight), vec![(Some(21), "messages[1].weight".into())]);
    assert_eq!(at(Code::Pii), vec![(Some(22), "messages[0].content".into())]);
    assert_eq!(at(Code::UnknownFormat), vec![(Some(23), String::new())]);
    assert_eq!(at(Code::WrongType), vec![(Some(25), "messages[1]".into())], "a null list element is kept");
    assert_eq!(a.stats.coverage["topic"].counts["billing"], 7);
    assert!(a.agreement.is_some());
}

#[test]
fn json_string_columns_across_row_groups_match_their_jsonl_twin() {
    let (a, _) = check_twins("chat_json");
    let bad: Vec<_> = a.findings.iter().filter(|f| f.code == Code::BadJson).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].line, bad[0].field.as_str()), (Some(26), "messages"));
    assert!(bad[0].message.contains("not valid JSON") && bad[0].message.contains("column"), "{}", bad[0]);
    assert_eq!(a.stats.rows, 28, "all five row groups are read");
}

#[test]
fn alpaca_completion_and_text_columns_match_their_jsonl_twins() {
    let (a, _) = check_twins("alpaca");
    assert!(
        a.findings.iter().any(|f| f.code == Code::MissingField && f.line == Some(15) && f.field == "output"),
        "{a}"
    );
    let (c, _) = check_twins("completion");
    assert!(
        c.findings.iter().any(|f| f.code == Code::UnknownKey && f.line == Some(13) && f.field == "source"),
        "{c}"
    );
    let (t, _) = check_twins("text");
    assert!(t.findings.iter().any(|f| f.code == Code::EmptyTarget && f.line == Some(12)), "{t}");
}

#[test]
fn prepare_writes_the_same_split_from_parquet_as_from_jsonl() {
    for (stem, strat) in [("chat", Some("topic")), ("alpaca", Some("team")), ("text", None)] {
        let d = tempfile::tempdir().expect("tmp");
        let opts = PrepareOptions {
            dedup: DedupMode::Near,
            redact_pii: true,
            eval_fraction: 0.25,
            stratify_by: strat.map(String::from),
            seed: 3,
            ..PrepareOptions::default()
        };
        let a = prepare(&fixture(&format!("{stem}.parquet")), &d.path().join("pq"), &opts)
            .expect("prepare parquet");
        let b =
            prepare(&fixture(&format!("{stem}.jsonl")), &d.path().join("jl"), &opts).expect("prepare jsonl");
        assert_eq!(a.unit, Unit::Row);
        assert_eq!(b.unit, Unit::Line);
        let drops = |r: &ferrotune_data::PrepareReport| {
            r.dropped
                .iter()
                .map(|x| (x.line, x.reason, x.detail.replace(" row ", " line ")))
                .collect::<Vec<_>>()
        };
        assert_eq!(drops(&a), drops(&b), "{stem}");
        assert!(!a.dropped.is_empty(), "{stem}: the fixtures have bad rows");
        assert_eq!(
            (a.train_rows, a.eval_rows, a.changed.len()),
            (b.train_rows, b.eval_rows, b.changed.len()),
            "{stem}"
        );
        for f in ["train.jsonl", "eval.jsonl"] {
            let read = |dir: &str| std::fs::read_to_string(d.path().join(dir).join(f)).expect("read");
            assert_eq!(read("pq"), read("jl"), "{stem}/{f}");
        }
    }
}

#[test]
fn binary_cells_that_are_not_utf8_are_reported_at_their_row_and_column() {
    let p = fixture("binary.parquet");
    let r = validate(std::slice::from_ref(&p), &ValidateOptions::default()).expect("validate");
    assert_eq!(r.stats.valid_rows, 1, "UTF-8 binary is text: {r}");
    let bad: Vec<_> = r.findings.iter().filter(|f| f.code == Code::BadJson).collect();
    assert_eq!(bad.len(), 1, "{r}");
    assert_eq!((bad[0].line, bad[0].field.as_str()), (Some(2), "text"));
    assert!(bad[0].message.contains("not UTF-8"), "{}", bad[0]);
}

fn corrupted(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join(name);
    std::fs::write(&p, bytes).expect("write");
    (d, p)
}

fn expect_file_error(p: &Path) -> String {
    let err = validate(&[p.to_path_buf()], &ValidateOptions::default())
        .expect_err("a corrupt file must fail")
        .to_string();
    assert!(err.contains(&p.display().to_string()), "{err}");
    err
}

#[test]
fn corrupt_parquet_files_are_errors_naming_the_file() {
    let good = std::fs::read(fixture("chat.parquet")).expect("read");
    // Not Parquet at all.
    let (_d, p) = corrupted("garbage.parquet", b"{\"text\": \"this is JSON, not Parquet\"}\n");
    let err = expect_file_error(&p);
    assert!(err.contains("not a readable Parquet file"), "{err}");
    // Cut short: the footer is gone.
    let (_d, p) = corrupted("cut.parquet", &good[..good.len() / 2]);
    expect_file_error(&p);
    // Footer intact, column data overwritten: the error names the row it reached.
    let mut bad = good.clone();
    for b in &mut bad[8..good.len() / 3] {
        *b = 0xAB;
    }
    let (_d, p) = corrupted("pages.parquet", &bad);
    let err = expect_file_error(&p);
    assert!(err.contains("row 1"), "{err}");
    // prepare stops the same way and leaves no output folder.
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let err = prepare(&p, &out, &PrepareOptions::default()).expect_err("corrupt");
    assert!(err.to_string().contains("pages.parquet"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 0, "no temporary folder left behind");
}

#[test]
fn damage_anywhere_in_a_parquet_file_is_an_error_or_a_finding_never_a_crash() {
    let good = std::fs::read(fixture("chat_json.parquet")).expect("read");
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join("damaged.parquet");
    let (mut failed, mut read) = (0, 0);
    // 16-byte windows of 0xFF every 61 bytes: page headers, compressed pages, the footer.
    for start in (4..good.len().saturating_sub(8)).step_by(61) {
        let mut bad = good.clone();
        let end = (start + 16).min(good.len() - 8);
        bad[start..end].fill(0xFF);
        std::fs::write(&p, &bad).expect("write");
        match validate(std::slice::from_ref(&p), &ValidateOptions::default()) {
            Ok(_) => read += 1,
            Err(e) => {
                assert!(e.to_string().contains("damaged.parquet"), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "damage must be noticed somewhere ({read} read fine)");
}

/// Found by fuzzing (`fuzz/fuzz_targets/data_rows.rs`): a footer whose column chunk has a
/// negative offset made the decoder panic on the first row (caught, but a panic all the same);
/// it is refused when the file is opened, as a corrupt footer.
#[test]
fn a_column_chunk_at_a_negative_offset_is_refused_when_the_file_opens() {
    let p = fixture("fuzz-negative-offset.parquet");
    let Err(err) = ferrotune_data::reader::RowReader::open(&p) else { panic!("must be refused at open") };
    let err = err.to_string();
    assert!(err.contains("negative offset"), "{err}");
    expect_file_error(&p);
}

/// Found by fuzzing: a page shorter than its header says trips an assertion inside the parquet
/// decoder (`bit_util.rs`: `size <= src.len()`). Still open in the decoder; the reader turns the
/// panic into an error naming the file and row, which this keeps true.
#[test]
fn a_page_shorter_than_its_header_says_is_an_error_naming_the_file() {
    let err = expect_file_error(&fixture("fuzz-short-page.parquet"));
    assert!(err.contains("cannot decode the Parquet data"), "{err}");
}
