//! Parity with the Python reference packages, values recorded once by
//! `scripts/parity/data_reference.py` into `fixtures/data/reference.json`:
//! krippendorff (α nominal), python-stdnum (Luhn, IBAN mod-97), datasketch (MinHash, LSH params).

use ferrotune_data::agreement::Agreement;
use ferrotune_data::minhash::{MinHasher, optimal_param, shingle_strings, shingles};
use ferrotune_data::pii::{iban_valid, luhn_valid};
use serde_json::Value;

fn reference() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/data/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference.json parses")
}

fn cases<'a>(r: &'a Value, key: &str) -> &'a Vec<Value> {
    let c = r[key].as_array().unwrap_or_else(|| panic!("{key} missing"));
    assert!(!c.is_empty(), "{key} is empty");
    c
}

#[test]
fn krippendorff_alpha_matches_the_krippendorff_package_to_1e_9() {
    let r = reference();
    for (i, c) in cases(&r, "krippendorff_alpha_nominal").iter().enumerate() {
        let mut a = Agreement::default();
        for unit in c["units"].as_array().expect("units") {
            a.add_unit(unit.as_array().expect("unit"));
        }
        let want = c["alpha"].as_f64().expect("alpha");
        let got = a.alpha().expect("alpha defined");
        assert!((got - want).abs() < 1e-9, "case {i}: ours {got}, krippendorff {want}");
    }
}

#[test]
fn luhn_agrees_with_python_stdnum_on_every_number() {
    let r = reference();
    let c = cases(&r, "luhn");
    assert!(c.iter().any(|x| x["valid"] == true) && c.iter().any(|x| x["valid"] == false));
    for x in c {
        let n = x["number"].as_str().expect("number");
        assert_eq!(luhn_valid(n), x["valid"].as_bool().expect("valid"), "{n}");
    }
}

#[test]
fn iban_checksum_agrees_with_python_stdnum_on_every_iban() {
    let r = reference();
    let c = cases(&r, "iban");
    assert!(c.iter().any(|x| x["valid"] == true) && c.iter().any(|x| x["valid"] == false));
    for x in c {
        let n = x["iban"].as_str().expect("iban");
        assert_eq!(iban_valid(n), x["valid"].as_bool().expect("valid"), "{n}");
    }
}

/// Both estimates have a standard deviation of √(J(1−J)/128) ≤ 0.044; we require each of our
/// estimates within 0.15 (≈ 3.4σ) of the exact Jaccard, within 0.2 of datasketch's (the
/// difference of two independent estimates, ≈ 3.2σ), and a mean absolute error no worse than
/// datasketch's + 0.01.
#[test]
fn minhash_estimates_track_exact_jaccard_as_closely_as_datasketch() {
    let r = reference();
    let h = MinHasher::new(128, 1);
    let (mut ours_err, mut ref_err) = (0.0, 0.0);
    let c = cases(&r, "minhash_128");
    for x in c {
        let (a, b) = (x["a"].as_str().expect("a"), x["b"].as_str().expect("b"));
        assert_eq!(
            shingle_strings(a).len() as u64,
            x["shingles_a"].as_u64().expect("n"),
            "shingling differs from the script's"
        );
        assert_eq!(shingle_strings(b).len() as u64, x["shingles_b"].as_u64().expect("n"));
        let est = h.signature(&shingles(a)).jaccard(&h.signature(&shingles(b)));
        let exact = x["jaccard"].as_f64().expect("jaccard");
        let ds = x["datasketch_estimate"].as_f64().expect("estimate");
        assert!((est - exact).abs() < 0.15, "ours {est}, exact {exact}");
        assert!((est - ds).abs() < 0.2, "ours {est}, datasketch {ds}");
        ours_err += (est - exact).abs();
        ref_err += (ds - exact).abs();
    }
    let n = c.len() as f64;
    assert!(
        ours_err / n <= ref_err / n + 0.01,
        "mean abs error: ours {}, datasketch {}",
        ours_err / n,
        ref_err / n
    );
}

#[test]
fn lsh_bands_and_rows_match_datasketch_optimal_param() {
    let r = reference();
    for x in cases(&r, "lsh_params_128") {
        let t = x["threshold"].as_f64().expect("threshold");
        let (wfp, wfn) = (x["weights"][0].as_f64().expect("w"), x["weights"][1].as_f64().expect("w"));
        let want = (
            x["bands_rows"][0].as_u64().expect("b") as usize,
            x["bands_rows"][1].as_u64().expect("r") as usize,
        );
        assert_eq!(optimal_param(t, 128, wfp, wfn), want, "threshold {t}, weights ({wfp}, {wfn})");
    }
}
