//! Distributions and coverage counts, in memory bounded by the number of distinct values (not
//! rows): a value → count histogram gives exact percentiles.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: BTreeMap<u64, u64>,
    n: u64,
    sum: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub sum: u64,
    pub mean: f64,
    pub min: u64,
    pub p5: u64,
    pub median: u64,
    pub p95: u64,
    pub max: u64,
}

impl Histogram {
    pub fn add(&mut self, v: u64) {
        *self.counts.entry(v).or_default() += 1;
        self.n += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Nearest-rank percentile: the smallest value with at least `q`·n values at or below it.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (&v, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(v);
            }
        }
        self.counts.keys().next_back().copied()
    }

    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            count: self.n,
            sum: self.sum,
            mean: self.sum as f64 / self.n.max(1) as f64,
            min: *self.counts.keys().next()?,
            p5: self.percentile(0.05)?,
            median: self.percentile(0.5)?,
            p95: self.percentile(0.95)?,
            max: *self.counts.keys().next_back()?,
        })
    }
}

/// More distinct values than this and a metadata field is an identifier, not a class: it stops
/// being counted (keeps memory flat).
pub const MAX_CLASSES: usize = 1000;

/// Rows per value of each scalar metadata field.
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    fields: BTreeMap<String, FieldCoverage>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FieldCoverage {
    /// Written in key order (a hash map's order would differ from run to run).
    #[serde(serialize_with = "in_key_order")]
    pub counts: HashMap<String, u64>,
    /// Too many distinct values to be a class; counting stopped.
    pub high_cardinality: bool,
    pub rows: u64,
}

fn in_key_order<S: serde::Serializer>(
    counts: &HashMap<String, u64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(counts.iter().collect::<BTreeMap<_, _>>())
}

/// A metadata value as a class name; `None` for values that are not scalars.
pub fn class_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        _ => None,
    }
}

impl Coverage {
    pub fn add(&mut self, metadata: &serde_json::Map<String, Value>) {
        for (k, v) in metadata {
            // Strings are borrowed for the lookups; a key or class is copied only when new
            // (this runs once per row on the sequential path).
            let class: std::borrow::Cow<'_, str> = match v {
                Value::String(s) => s.as_str().into(),
                Value::Bool(_) | Value::Number(_) => v.to_string().into(),
                _ => continue,
            };
            if !self.fields.contains_key(k.as_str()) {
                self.fields.insert(k.clone(), FieldCoverage::default());
            }
            let Some(f) = self.fields.get_mut(k.as_str()) else { continue };
            f.rows += 1;
            if f.high_cardinality {
                continue;
            }
            if let Some(n) = f.counts.get_mut(class.as_ref()) {
                *n += 1;
                continue;
            }
            if f.counts.len() >= MAX_CLASSES {
                f.high_cardinality = true;
                f.counts.clear();
                continue;
            }
            f.counts.insert(class.into_owned(), 1);
        }
    }

    pub fn fields(&self) -> &BTreeMap<String, FieldCoverage> {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut h = Histogram::default();
        (1..=100).for_each(|v| h.add(v));
        let s = h.summary().expect("summary");
        assert_eq!((s.min, s.p5, s.median, s.p95, s.max), (1, 5, 50, 95, 100));
        assert_eq!(s.sum, 5050);
        assert!(Histogram::default().summary().is_none());
    }

    #[test]
    fn identifier_like_fields_stop_being_counted() {
        let mut c = Coverage::default();
        for i in 0..(MAX_CLASSES + 5) {
            c.add(
                &serde_json::json!({"id": i, "topic": if i % 2 == 0 { "a" } else { "b" }})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        assert!(c.fields()["id"].high_cardinality && c.fields()["id"].counts.is_empty());
        assert_eq!(c.fields()["topic"].counts.len(), 2);
    }

    #[test]
    fn class_counts_serialise_in_key_order() {
        let mut c = Coverage::default();
        for t in ["zeta", "alpha", "mid", "beta", "alpha", "omega", "kappa", "delta"] {
            c.add(serde_json::json!({"topic": t}).as_object().expect("object"));
        }
        let json = serde_json::to_string(&c.fields()["topic"]).expect("json");
        assert!(
            json.starts_with(
                r#"{"counts":{"alpha":2,"beta":1,"delta":1,"kappa":1,"mid":1,"omega":1,"zeta":1}"#
            ),
            "{json}"
        );
    }
}
