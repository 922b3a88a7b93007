//! Inter-annotator agreement: Krippendorff's α for nominal labels, accumulated one unit (record)
//! at a time from `metadata.annotations` (Krippendorff 2011, "Computing Krippendorff's Alpha-
//! Reliability", §C: coincidence matrix). Annotator identities are not needed for α, only each
//! unit's labels; units with fewer than two labels are not pairable and are skipped.
//!
//! Nominal α needs only two sums of the coincidence matrix `o`, never the matrix itself: its row
//! sums `n_c` (the pairable values of label `c`) and its off-diagonal total `Σ_{c≠k} o_ck`, which
//! one unit of `m` values with `n_uc` of label `c` adds as `(m² − Σ_c n_uc²) / (m − 1)`. Memory is
//! one count per distinct label, not one cell per pair of labels: the square matrix this module
//! once kept took ~80 GB at 100k distinct labels (free-text labels or ids in `annotations`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Below this α, annotations are usually not reliable enough to train on (Krippendorff 2004).
pub const MIN_ALPHA: f64 = 0.8;

#[derive(Debug, Default, Clone)]
pub struct Agreement {
    labels: BTreeMap<String, usize>,
    /// `n_c`: pairable values of each label, indexed by label id (the coincidence matrix's row sums).
    values_per_label: Vec<u64>,
    /// `Σ_{c≠k} o_ck`: the coincidences of differing labels, summed over units.
    disagreements: f64,
    units: u64,
    pairable_values: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgreementSummary {
    /// `None` when all pairable labels are the same (expected disagreement is 0).
    pub alpha: Option<f64>,
    pub units: u64,
    pub pairable_values: u64,
    pub labels: Vec<String>,
}

/// A label as a string; `null` is a missing label.
fn label(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Agreement {
    /// Add one unit's labels.
    pub fn add_unit(&mut self, values: &[Value]) {
        let mut ids: Vec<usize> = values.iter().filter_map(label).map(|l| self.id(l)).collect();
        let m = ids.len();
        if m < 2 {
            return;
        }
        // Runs of equal ids are the unit's label counts n_uc.
        ids.sort_unstable();
        let mut same_pairs: u128 = 0;
        for run in ids.chunk_by(|a, b| a == b) {
            let n = run.len() as u64;
            self.values_per_label[run[0]] += n;
            same_pairs += u128::from(n) * u128::from(n);
        }
        let m = m as u128;
        // Exact integers up to here; one rounding per unit.
        self.disagreements += (m * m - same_pairs) as f64 / (m - 1) as f64;
        self.units += 1;
        self.pairable_values += m as u64;
    }

    fn id(&mut self, l: String) -> usize {
        let next = self.labels.len();
        let id = *self.labels.entry(l).or_insert(next);
        if id == next {
            self.values_per_label.push(0);
        }
        id
    }

    pub fn units(&self) -> u64 {
        self.units
    }

    /// α = 1 − (n − 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k, where Σ_{c≠k} n_c·n_k = n² − Σ_c n_c².
    pub fn alpha(&self) -> Option<f64> {
        let n = u128::from(self.pairable_values);
        if n <= 1 {
            return None;
        }
        let squares: u128 = self.values_per_label.iter().map(|&c| u128::from(c) * u128::from(c)).sum();
        let expected = n * n - squares;
        if expected == 0 {
            return None;
        }
        Some(1.0 - (n - 1) as f64 * self.disagreements / expected as f64)
    }

    pub fn summary(&self) -> AgreementSummary {
        AgreementSummary {
            alpha: self.alpha(),
            units: self.units,
            pairable_values: self.pairable_values,
            labels: self.labels.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alpha(units: &[Value]) -> Option<f64> {
        let mut a = Agreement::default();
        for u in units {
            a.add_unit(u.as_array().expect("list"));
        }
        a.alpha()
    }

    #[test]
    fn perfect_agreement_is_one_and_a_single_label_is_undefined() {
        assert_eq!(alpha(&[json!(["a", "a"]), json!(["b", "b", "b"])]), Some(1.0));
        assert_eq!(alpha(&[json!(["a", "a"]), json!(["a", "a"])]), None);
    }

    #[test]
    fn krippendorffs_worked_example_gives_0_743() {
        // Krippendorff (2011) §C nominal example: 4 coders, 12 units, α = 0.743.
        let units = [
            json!([1, 1, null, 1]),
            json!([2, 2, 3, 2]),
            json!([3, 3, 3, 3]),
            json!([3, 3, 3, 3]),
            json!([2, 2, 2, 2]),
            json!([1, 2, 3, 4]),
            json!([4, 4, 4, 4]),
            json!([1, 1, 2, 1]),
            json!([2, 2, 2, 2]),
            json!([null, 5, 5, 5]),
            json!([null, null, 1, 1]),
            json!([null, null, 3, null]),
        ];
        let a = alpha(&units).expect("defined");
        assert!((a - 0.743).abs() < 5e-4, "{a}");
    }

    /// The full coincidence matrix, as Krippendorff (2011) §C builds it: the reference the
    /// running sums are checked against.
    fn alpha_from_the_full_matrix(units: &[Vec<u32>]) -> Option<f64> {
        let labels = units.iter().flatten().copied().max().map_or(0, |m| m as usize + 1);
        let mut o = vec![vec![0.0f64; labels]; labels];
        for u in units.iter().filter(|u| u.len() >= 2) {
            let w = 1.0 / (u.len() as f64 - 1.0);
            for (i, &c) in u.iter().enumerate() {
                for (j, &k) in u.iter().enumerate() {
                    if i != j {
                        o[c as usize][k as usize] += w;
                    }
                }
            }
        }
        let nc: Vec<f64> = o.iter().map(|row| row.iter().sum()).collect();
        let n: f64 = nc.iter().sum();
        let (mut observed, mut expected) = (0.0, 0.0);
        for c in 0..labels {
            for k in (0..labels).filter(|&k| k != c) {
                observed += o[c][k];
                expected += nc[c] * nc[k];
            }
        }
        (n > 1.0 && expected > 0.0).then(|| 1.0 - (n - 1.0) * observed / expected)
    }

    #[test]
    fn running_sums_give_the_full_coincidence_matrix_alpha() {
        // Random units of 0..6 labels out of 1..12 label values: every shape of unit, from
        // unpairable ones to units where every label differs.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for case in 0..200 {
            let values = 1 + next(12);
            let units: Vec<Vec<u32>> =
                (0..1 + next(30)).map(|_| (0..next(7)).map(|_| next(values) as u32).collect()).collect();
            let json: Vec<Value> =
                units.iter().map(|u| json!(u.iter().map(|v| format!("l{v}")).collect::<Vec<_>>())).collect();
            let (ours, reference) = (alpha(&json), alpha_from_the_full_matrix(&units));
            match (ours, reference) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "case {case}: {a} vs {b} for {units:?}"),
                (a, b) => assert_eq!(a, b, "case {case}: {units:?}"),
            }
        }
    }

    #[test]
    fn memory_grows_with_distinct_labels_not_their_square() {
        // Regression: a dense label × label matrix took 8 · 100k² bytes (~80 GB) here and aborted.
        // Every unit's labels all differ, so α is exactly 0 (as much disagreement as chance).
        let mut a = Agreement::default();
        for u in 0..1000 {
            let unit: Vec<Value> = (0..100).map(|j| json!(format!("label-{u}-{j}"))).collect();
            a.add_unit(&unit);
        }
        let s = a.summary();
        assert_eq!((s.labels.len(), s.units, s.pairable_values), (100_000, 1000, 100_000));
        assert!(s.alpha.is_some_and(|x| x.abs() < 1e-12), "{:?}", s.alpha);
        assert_eq!(a.values_per_label.len(), 100_000, "one count per label");
    }
}
