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
    assert_eq!(
        err,
        format!("{}: not valid UTF-8 text (byte 3); convert it to UTF-8 first", latin1.display())
    );

    let pdf = tmp.path().join("manual.pdf");
    std::fs::write(&pdf, b"%PDF")?;
    assert!(matches!(collect(&[pdf]), Err(RagError::UnsupportedFile { .. })));
    Ok(())
}

#[test]
fn the_same_id_twice_is_an_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(
        tmp.path().join("a.jsonl"),
        "{\"id\": \"x\", \"text\": \"1\"}\n{\"id\": \"x\", \"text\": \"2\"}\n",
    )?;
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
fn the_largest_k_returns_every_chunk_in_every_mode() -> anyhow::Result<()> {
    // A user's `k` once sized heaps and vectors up front (`with_capacity(k + 1)`); k is now
    // bounded by MAX_K (a larger one is an error, below), and the bound itself returns what there is.
    let tmp = tempfile::tempdir()?;
    ferrotune_rag::synthetic::build_synthetic_kb(tmp.path(), 300, 16, 3)?;
    let kb = ferrotune_rag::KnowledgeBase::open(tmp.path())?;
    let q = ferrotune_rag::synthetic::TextGen::new(4).unit_vector(16);
    for mode in ferrotune_rag::Mode::ALL {
        let hits = kb.query_with_vector("order refund battery", Some(&q), ferrotune_rag::MAX_K, mode)?;
        assert!(!hits.is_empty() && hits.len() <= 300, "{mode:?}: {} hits", hits.len());
        if mode == ferrotune_rag::Mode::Vector {
            assert_eq!(hits.len(), 300, "every chunk has a vector score");
        }
    }
    Ok(())
}

#[test]
fn a_huge_k_is_an_error_and_the_largest_allowed_k_returns_every_match() -> anyhow::Result<()> {
    // Regression: `k + 10` wrapped for k = usize::MAX, so the query quietly returned 9 hits.
    use ferrotune_rag::synthetic::{build_synthetic_kb, generated_docs};
    use ferrotune_rag::{KnowledgeBase, MAX_K, Mode};
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("kb");
    build_synthetic_kb(&dir, 30, 8, 1)?;
    let kb = KnowledgeBase::open(&dir)?;
    // Words of the first passage: every passage shares some of them.
    let text = &generated_docs(30, 1)[0].text;
    let q: String = text.split_whitespace().take(12).collect::<Vec<_>>().join(" ");
    for k in [usize::MAX, MAX_K + 1] {
        let err = kb.query(&q, k, Mode::Bm25).expect_err("k over the limit");
        assert!(matches!(err, RagError::TooManyHits { .. }), "{err}");
        assert!(err.to_string().contains(&MAX_K.to_string()), "{err}");
    }
    let all = kb.query(&q, MAX_K, Mode::Bm25)?;
    assert!(all.len() > 10, "{} hits", all.len());
    assert_eq!(all.len(), kb.query(&q, 100, Mode::Bm25)?.len());
    Ok(())
}
