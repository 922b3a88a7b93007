//! The retrieval benchmark runs end to end at a tiny size: 200-chunk index, 5 queries; the ingest
//! and the vector / hybrid modes only when MiniLM is installed (SKIPPED otherwise).

use std::sync::Arc;

use ferrotune_bench::rag::{BenchConfig, measure};
use ferrotune_rag::{Embedder, Mode};

/// The installed MiniLM, or `None` (after a SKIPPED note; a failure under
/// FERROTUNE_REQUIRE_MODELS=1).
fn embedder() -> Option<Arc<Embedder>> {
    let dir = ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER)?;
    Some(Arc::new(Embedder::load(&dir).expect("the installed MiniLM loads")))
}

#[test]
fn bench_runs_at_a_tiny_size() {
    let embedder = embedder();
    let cfg = BenchConfig { sizes: vec![200], ingest_chunks: 20, queries: 5, k: 5, seed: 1 };
    let report = measure(&cfg, embedder.clone()).expect("the benchmark runs");
    println!("{report}");
    assert_eq!(report.sizes.len(), 1);
    let s = &report.sizes[0];
    assert_eq!((s.chunks, s.modes.len()), (200, 3));
    for (mode, lat) in &s.modes {
        match lat {
            Some(l) => assert!(l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms, "{mode:?}: {l:?}"),
            None => assert!(embedder.is_none() && *mode != Mode::Bm25, "{mode:?} skipped"),
        }
    }
    match (&report.ingest, &embedder) {
        (Some(i), Some(_)) => {
            assert_eq!(i.chunks, 20);
            assert!((40.0..=120.0).contains(&i.mean_tokens), "mean tokens {}", i.mean_tokens);
        }
        (None, None) => eprintln!("SKIPPED: ingest and vector modes (embedder not installed)"),
        other => panic!("ingest measured iff the embedder is installed: {:?}", other.0),
    }
}
