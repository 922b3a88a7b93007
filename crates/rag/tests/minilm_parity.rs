//! Our candle BERT + pooling against sentence-transformers on all-MiniLM-L6-v2: the embeddings
//! recorded by scripts/parity/minilm_fixtures.py (fixtures/minilm/embeddings.json): cosine above
//! 1 − 1e-11 per sentence and every element within 1e-6 (measured: 1 − 1.1e-12 and 2.5e-7; the
//! README states these bounds). Sentences include > 256-token inputs (truncation), unicode, and
//! near-empty text.

mod common;

use std::path::Path;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_embeddings_match_sentence_transformers() -> anyhow::Result<()> {
    let Some(embedder) = common::embedder() else { return Ok(()) };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/minilm/embeddings.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let rows = fixture["sentences"].as_array().ok_or_else(|| anyhow::anyhow!("no sentences"))?;
    let texts: Vec<String> =
        rows.iter().map(|r| r["text"].as_str().unwrap_or_default().to_string()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = embedder.embed(&refs)?;
    assert_eq!(embedder.max_seq_length(), 256);
    let mut min = f64::INFINITY;
    let mut max_abs = 0f64;
    for (row, got) in rows.iter().zip(&ours) {
        let want: Vec<f32> = row["embedding"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no embedding"))?
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        let c = cosine(got, &want);
        let text = row["text"].as_str().unwrap_or_default();
        let norm: f64 = got.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
        assert!(
            1.0 - c < 1e-11,
            "cosine 1 - {:.1e} for {:?}",
            1.0 - c,
            text.chars().take(60).collect::<String>()
        );
        min = min.min(c);
        max_abs = got.iter().zip(&want).map(|(a, b)| f64::from((a - b).abs())).fold(max_abs, f64::max);
    }
    eprintln!(
        "MiniLM parity: {} sentences, min cosine vs sentence-transformers {min:.9} (1 - min = {:.1e}), max |Δ| {max_abs:.1e}",
        rows.len(),
        1.0 - min
    );
    assert!(max_abs < 1e-6, "largest element difference {max_abs:.1e}");
    Ok(())
}

#[test]
fn padding_in_a_batch_does_not_change_an_embedding() -> anyhow::Result<()> {
    let Some(embedder) = common::embedder() else { return Ok(()) };
    let short = "Refunds within 30 days.";
    let long =
        "Express delivery costs EUR 9.90 and arrives the next business day when ordered before 14:00. "
            .repeat(5);
    let alone = embedder.embed(&[short])?;
    let batched = embedder.embed(&[long.as_str(), short])?;
    let c = cosine(&alone[0], &batched[1]);
    assert!(c > 0.99999, "cosine {c}");
    Ok(())
}
