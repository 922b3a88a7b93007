//! The bundled classifier on the committed held-out split (crates/guard/corpus/test.jsonl, never
//! used for any choice): a retrained or edited model that loses recall fails here.
//!
//! Measured when the model was trained (bench/guard-injection.json): recall 92.7% at 1% false
//! positives, 96.7% at 5%, AUROC 0.996. The floors below are those minus 3 points (recall) and
//! 0.005 (AUROC): the split has 368 injections, so one point is about 4 of them.

use std::path::Path;

use ferrotune_guard::injection::{InjectionDetector, evaluate, read_labelled};

#[test]
fn the_bundled_model_keeps_its_held_out_recall() -> anyhow::Result<()> {
    let rows = read_labelled(&Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/test.jsonl"))?;
    let det = InjectionDetector::bundled();
    let r = evaluate(&det, &rows);
    assert!(r.attacks >= 300 && r.benign >= 1000, "the held-out split shrank: {} / {}", r.attacks, r.benign);
    let at = |f: f64| {
        r.at_fpr.iter().find(|p| p.target_fpr == Some(f)).map(|p| (p.recall, p.fpr)).unwrap_or_default()
    };
    let (recall1, fpr1) = at(0.01);
    let (recall5, _) = at(0.05);
    assert!(fpr1 <= 0.01 + 1e-12, "FPR {fpr1} over 1%: the rules alone flag too many benign rows");
    assert!(recall1 >= 0.897, "recall at 1% FPR {recall1:.3} < 0.897 (measured 0.927)");
    assert!(recall5 >= 0.937, "recall at 5% FPR {recall5:.3} < 0.937 (measured 0.967)");
    assert!(r.auroc >= 0.991, "AUROC {:.4} < 0.991 (measured 0.996)", r.auroc);
    Ok(())
}
