//! Bad input is reported with file and line, before anything is written (no model needed).

use ferrotune_rag::RagError;
use ferrotune_rag::source::collect;

#[test]
fn bad_jsonl_line_names_file_and_line() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let f = tmp.path().join("kb.jsonl");
    std::fs::write(&f, "{\"id\": \"a\", \"text\": \"fine\"}\n\n{\"id\": \"b\", \"txt\": \"typo\"}\n")?;
    let err = collect(&[tmp.path().to_path_buf()]).expect_err("line 3 lacks `text`");
    assert!(matches!(err, RagError::InvalidRecord { line: 3, .. }));
    assert_eq!(err.to_string(), format!("{}:3: missing field `text`", f.display()));

    std::fs::write(&f, "{\"id\": \"a\", \"text\": \"fine\"}\nnot json\n")?;
    let err = collect(std::slice::from_ref(&f)).expect_err("line 2 is not JSON").to_string();
    assert!(err.starts_with(&format!("{}:2: not a JSON object", f.display())), "{err}");
    Ok(())
}

#[test]
fn unreadable_inputs_name_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("missing.md");
    let err = collect(std::slice::from_ref(&missing)).expect_err("missing file").to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");

    let latin1 = tmp.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9")?;
    let err = collect(std::slice::from_ref(&latin1)).expect_err("not UTF-8").to_string();
    assert_eq!(err, format!("{}: not valid UTF-8 text (byte 3); convert it to UTF-8 first", latin1.display()));

    let pdf = tmp.path().join("manual.pdf");
    std::fs::write(&pdf, b"%PDF")?;
    assert!(matches!(collect(&[pdf]), Err(RagError::UnsupportedFile { .. })));
    Ok(())
}

#[test]
fn the_same_id_twice_is_an_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("a.jsonl"), "{\"id\": \"x\", \"text\": \"1\"}\n{\"id\": \"x\", \"text\": \"2\"}\n")?;
    let err = collect(&[tmp.path().to_path_buf()]).expect_err("duplicate id");
    assert!(matches!(err, RagError::DuplicateDocument { .. }), "{err}");
    Ok(())
}

#[test]
fn ids_are_paths_relative_to_the_given_folder() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("docs/sub"))?;
    std::fs::create_dir_all(tmp.path().join("docs/.git"))?;
    std::fs::write(tmp.path().join("docs/sub/a.md"), "A")?;
    std::fs::write(tmp.path().join("docs/b.txt"), "B")?;
    std::fs::write(tmp.path().join("docs/.git/c.txt"), "hidden")?;
    let c = collect(&[tmp.path().join("docs")])?;
    let ids: Vec<&str> = c.docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b.txt", "sub/a.md"]);
    let c = collect(&[tmp.path().join("docs/sub/a.md")])?;
    assert_eq!(c.docs[0].id, "a.md");
    Ok(())
}

#[test]
fn a_huge_k_returns_every_chunk_instead_of_panicking() -> anyhow::Result<()> {
    // Regression: a user's `k` sized heaps and vectors up front (`with_capacity(k + 1)`), so
    // `--k 18446744073709551615` aborted instead of returning what there is.
    let tmp = tempfile::tempdir()?;
    ferrotune_rag::bench::build_synthetic_kb(tmp.path(), 300, 16, 3)?;
    let kb = ferrotune_rag::KnowledgeBase::open(tmp.path())?;
    let q = ferrotune_rag::bench::TextGen::new(4).unit_vector(16);
    for mode in ferrotune_rag::Mode::ALL {
        for k in [usize::MAX, usize::MAX / 4, 1 << 40] {
            let hits = kb.query_with_vector("order refund battery", Some(&q), k, mode)?;
            assert!(!hits.is_empty() && hits.len() <= 300, "{mode:?} k {k}: {} hits", hits.len());
        }
    }
    Ok(())
}
