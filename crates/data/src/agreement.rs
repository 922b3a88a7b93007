//! Inter-annotator agreement: Krippendorff's α for nominal labels, accumulated one unit (record)
//! at a time from `metadata.annotations` (Krippendorff 2011, "Computing Krippendorff's Alpha-
//! Reliability", §C: coincidence matrix). Annotator identities are not needed for α, only each
//! unit's labels; units with fewer than two labels are not pairable and are skipped.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Below this α, annotations are usually not reliable enough to train on (Krippendorff 2004).
pub const MIN_ALPHA: f64 = 0.8;

#[derive(Debug, Default, Clone)]
pub struct Agreement {
    labels: BTreeMap<String, usize>,
    /// Coincidences o[c][k], indexed by label id.
    o: Vec<Vec<f64>>,
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
        let ids: Vec<usize> = values.iter().filter_map(label).map(|l| self.id(l)).collect();
        let m = ids.len();
        if m < 2 {
            return;
        }
        let mut counts: BTreeMap<usize, f64> = BTreeMap::new();
        for &i in &ids {
            *counts.entry(i).or_default() += 1.0;
        }
        let w = 1.0 / (m as f64 - 1.0);
        for (&c, &nc) in &counts {
            for (&k, &nk) in &counts {
                let pairs = if c == k { nc * (nc - 1.0) } else { nc * nk };
                self.o[c][k] += pairs * w;
            }
        }
        self.units += 1;
        self.pairable_values += m as u64;
    }

    fn id(&mut self, l: String) -> usize {
        let next = self.labels.len();
        let id = *self.labels.entry(l).or_insert(next);
        if id == next {
            for row in &mut self.o {
                row.push(0.0);
            }
            self.o.push(vec![0.0; next + 1]);
        }
        id
    }

    pub fn units(&self) -> u64 {
        self.units
    }

    /// α = 1 − (n − 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k.
    pub fn alpha(&self) -> Option<f64> {
        let nc: Vec<f64> = self.o.iter().map(|row| row.iter().sum()).collect();
        let n: f64 = nc.iter().sum();
        if n <= 1.0 {
            return None;
        }
        let mut observed = 0.0;
        let mut expected = 0.0;
        for c in 0..nc.len() {
            for k in 0..nc.len() {
                if c != k {
                    observed += self.o[c][k];
                    expected += nc[c] * nc[k];
                }
            }
        }
        if expected == 0.0 {
            return None;
        }
        Some(1.0 - (n - 1.0) * observed / expected)
    }

    pub fn summary(&self) -> AgreementSummary {
        AgreementSummary { alpha: self.alpha(), units: self.units, pairable_values: self.pairable_values, labels: self.labels.keys().cloned().collect() }
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
            json!([1, 1, null, 1]), json!([2, 2, 3, 2]), json!([3, 3, 3, 3]), json!([3, 3, 3, 3]),
            json!([2, 2, 2, 2]), json!([1, 2, 3, 4]), json!([4, 4, 4, 4]), json!([1, 1, 2, 1]),
            json!([2, 2, 2, 2]), json!([null, 5, 5, 5]), json!([null, null, 1, 1]), json!([null, null, 3, null]),
        ];
        let a = alpha(&units).expect("defined");
        assert!((a - 0.743).abs() < 5e-4, "{a}");
    }
}
