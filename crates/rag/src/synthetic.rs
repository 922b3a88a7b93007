//! Generated support-like text and synthetic knowledge bases: seeded passages, questions and
//! unit vectors for this crate's tests and for the retrieval benchmark (`ferrotune-bench`).
//!
//! A synthetic index ([`build_synthetic_kb`]) holds BM25 over real generated text but **random
//! unit vectors**, not the model's: exact search does the same work whatever the vectors hold, so
//! it costs what a real index of that size would, while its rankings mean nothing.

use std::path::Path;

use crate::error::Result;
use crate::source::{DocKind, SourceDoc};
use crate::writer::Writer;

/// MiniLM's width: the synthetic indexes use it so that search costs what it would for real.
pub const MINILM_DIM: usize = 384;

/// Content words of customer-support text, most common first (drawn with a Zipf-like law).
const CONTENT: &[&str] = &[
    "order",
    "account",
    "device",
    "battery",
    "charge",
    "app",
    "update",
    "refund",
    "password",
    "login",
    "screen",
    "setting",
    "warranty",
    "delivery",
    "payment",
    "speaker",
    "earphones",
    "case",
    "cable",
    "firmware",
    "bluetooth",
    "connection",
    "reset",
    "store",
    "return",
    "replacement",
    "customer",
    "support",
    "email",
    "phone",
    "volume",
    "sound",
    "light",
    "button",
    "power",
    "hours",
    "days",
    "invoice",
    "subscription",
    "plan",
    "price",
    "discount",
    "code",
    "address",
    "shipping",
    "package",
    "tracking",
    "number",
    "serial",
    "model",
    "version",
    "error",
    "message",
    "problem",
    "issue",
    "fix",
    "step",
    "guide",
    "manual",
    "policy",
    "label",
    "box",
    "receipt",
    "card",
    "bank",
    "credit",
    "wifi",
    "network",
    "router",
    "signal",
    "pairing",
    "mode",
    "noise",
    "cancellation",
    "microphone",
    "call",
    "camera",
    "photo",
    "storage",
    "cloud",
    "backup",
    "sync",
    "data",
    "privacy",
    "security",
    "profile",
    "notification",
    "alarm",
    "timer",
    "schedule",
    "thermostat",
    "heating",
    "temperature",
    "sensor",
    "door",
    "lock",
    "hub",
    "bulb",
    "colour",
    "brightness",
    "motion",
    "alert",
    "kitchen",
    "scale",
    "kettle",
    "water",
    "filter",
    "cleaning",
    "dust",
    "vacuum",
    "brush",
    "mop",
    "map",
    "room",
    "floor",
    "dock",
    "station",
    "adapter",
    "plug",
    "socket",
    "voltage",
    "travel",
    "country",
    "region",
    "language",
    "display",
    "clock",
    "weather",
    "voice",
    "assistant",
    "command",
    "skill",
    "family",
    "member",
    "invite",
    "share",
    "permission",
    "owner",
    "transfer",
    "gift",
    "voucher",
    "balance",
    "loyalty",
    "points",
    "repair",
    "technician",
    "appointment",
    "visit",
    "pickup",
    "courier",
    "damage",
    "scratch",
    "crack",
    "leak",
    "overheating",
    "restart",
    "freeze",
    "crash",
    "slow",
    "delay",
    "cancel",
    "change",
    "upgrade",
    "downgrade",
    "trial",
    "renewal",
    "fee",
    "tax",
    "stock",
    "colourway",
    "size",
    "strap",
    "band",
    "fitness",
    "steps",
    "sleep",
    "heart",
    "rate",
    "workout",
    "goal",
    "progress",
    "report",
    "export",
    "import",
    "contact",
    "chat",
    "ticket",
];

/// Function words, drawn uniformly between content words so that text reads like English.
const GLUE: &[&str] = &[
    "the", "a", "your", "to", "of", "and", "in", "on", "for", "with", "is", "if", "it", "you", "can", "not",
    "after", "before", "when", "then", "from", "this", "that", "will", "be", "or", "by",
];

/// Seeded generator of support-like passages, questions and unit vectors (SplitMix64: no
/// dependency, same output on every platform).
pub struct TextGen {
    state: u64,
}

impl TextGen {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + (self.next_u64() % (hi_inclusive - lo + 1) as u64) as usize
    }

    /// A content word, rank r drawn with probability ≈ 1/r (log-uniform), as word frequencies go.
    fn content_word(&mut self) -> &'static str {
        let n = CONTENT.len() as f64;
        let r = ((n + 1.0).powf(self.unit()) - 1.0) as usize;
        CONTENT[r.min(CONTENT.len() - 1)]
    }

    fn word(&mut self) -> &'static str {
        if self.unit() < 0.35 { GLUE[self.range(0, GLUE.len() - 1)] } else { self.content_word() }
    }

    /// A passage of 30–90 words in sentences of 5–14 words (about 40–120 MiniLM tokens).
    pub fn passage(&mut self) -> String {
        let words = self.range(30, 90);
        let mut out = String::new();
        let mut left = words;
        while left > 0 {
            let n = self.range(5, 14).min(left);
            for i in 0..n {
                let w = self.word();
                if i == 0 {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        out.extend(f.to_uppercase());
                        out.push_str(c.as_str());
                    }
                } else {
                    out.push(' ');
                    out.push_str(w);
                }
            }
            out.push('.');
            left -= n;
        }
        out
    }

    /// A question of 3–7 content words.
    pub fn question(&mut self) -> String {
        let n = self.range(3, 7);
        let words: Vec<&str> = (0..n).map(|_| self.content_word()).collect();
        format!("how do I fix the {}?", words.join(" "))
    }

    /// A random direction in `dim` dimensions (Box–Muller normals, L2-normalised).
    pub fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                let (u1, u2) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// `n` generated passages as documents `gen/000000`, `gen/000001`, …
pub fn generated_docs(n: usize, seed: u64) -> Vec<SourceDoc> {
    let mut g = TextGen::new(seed);
    (0..n)
        .map(|i| {
            let id = format!("gen/{i:06}");
            SourceDoc::new(id.clone(), id, DocKind::Text, g.passage(), serde_json::Map::new())
        })
        .collect()
}

/// **Tests and benchmarks only**: a knowledge base in `dir` of `n` generated passages (one chunk each) with
/// synthetic random unit vectors of `dim` dimensions (see the module docs).
pub fn build_synthetic_kb(dir: &Path, n: usize, dim: usize, seed: u64) -> Result<()> {
    let docs = generated_docs(n, seed);
    let mut vecs = TextGen::new(seed ^ 0x5EED_F00D_7EC7);
    let mut w = Writer::open(dir, None, dim)?;
    w.ingest_with_vectors(&docs, &mut |_| vecs.unit_vector(dim))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_text_is_seeded_and_vectors_are_unit_length() {
        let (a, b) = (TextGen::new(7).passage(), TextGen::new(7).passage());
        assert_eq!(a, b);
        assert!(a.split_whitespace().count() >= 30 && a.ends_with('.'));
        let v = TextGen::new(1).unit_vector(MINILM_DIM);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
