//! Text → sparse feature vector: word unigrams and bigrams plus character 3–5-grams of the
//! normalised text, signed-hashed into `2^bits` buckets (Weinberger et al. 2009, "Feature Hashing
//! for Large Scale Multitask Learning": the sign bit keeps collisions unbiased), counts made
//! sublinear (1 + ln c) and scaled to unit L2 norm so a long document and a short message weigh
//! the same. [`FEATURES_VERSION`] names this recipe in model files.
//!
//! Normalisation: lower case, whitespace runs → one space, and every invisible formatting
//! character (Unicode tags, invisible operators, zero-width space, variant selectors beyond the
//! emoji one) → one marker character, so hidden-text smuggling leaves a visible trace of n-grams.

/// Bumped whenever the text → features mapping changes: a model file trained on another
/// recipe is refused instead of scoring garbage.
pub const FEATURES_VERSION: u32 = 1;

/// What invisible characters become in the normalised text.
pub(crate) const INVISIBLE: char = '\u{1}';

/// Namespaces, so a word and the same letters as a character n-gram land in different buckets.
const WORD_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const BIGRAM_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;
const CHAR_SEED: u64 = 0x1656_67b1_9e37_79f9;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Characters that render as nothing and are used to hide instructions from a human reader:
/// Unicode tags (U+E0000–E007F), supplementary variant selectors, invisible operators, zero-width
/// space / non-joiner, directional marks, the BOM. Zero-width joiner and U+FE0F are left alone:
/// every multi-person or coloured emoji uses them.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0xE0000..=0xE007F | 0xE0100..=0xE01EF | 0xFE00..=0xFE0E | 0x2060..=0x2064 | 0x200B | 0x200C | 0x200E | 0x200F | 0x202A..=0x202E | 0xFEFF)
}

/// The normalised characters of `text` (see the module comment).
pub(crate) fn normalise(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(' ');
    for c in text.chars() {
        if is_invisible(c) {
            out.push(INVISIBLE);
        } else if c.is_whitespace() {
            if out.last() != Some(&' ') {
                out.push(' ');
            }
        } else if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    if out.last() != Some(&' ') {
        out.push(' ');
    }
    out
}

#[inline]
fn fnv_char(mut h: u64, c: char) -> u64 {
    // The code point's bytes, low first: same value as hashing its UTF-32 form.
    let mut v = c as u32;
    loop {
        h ^= u64::from(v & 0xff);
        h = h.wrapping_mul(FNV_PRIME);
        v >>= 8;
        if v == 0 {
            return h;
        }
    }
}

/// splitmix64's finaliser: FNV's low bits are weak, and the bucket index takes low bits.
#[inline]
fn avalanche(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Signed hashed features of one text: sorted bucket indices with values, L2 norm 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

impl Features {
    pub fn dot(&self, w: &[f32]) -> f32 {
        self.idx.iter().zip(&self.val).map(|(&i, &v)| w[i as usize] * v).sum()
    }
}

/// Hashes a text into `2^bits` buckets.
pub struct Hasher {
    mask: u64,
}

impl Hasher {
    pub fn new(bits: u32) -> Self {
        Self { mask: (1u64 << bits) - 1 }
    }

    fn push(&self, raw: &mut Vec<(u32, f32)>, h: u64) {
        let h = avalanche(h);
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        raw.push(((h & self.mask) as u32, sign));
    }

    pub fn features(&self, text: &str) -> Features {
        let chars = normalise(text);
        let mut raw: Vec<(u32, f32)> = Vec::with_capacity(chars.len() * 3 + chars.len() / 2);
        // Character 3-, 4- and 5-grams over the padded text (word edges included via the spaces).
        for start in 0..chars.len() {
            let mut h = CHAR_SEED;
            for n in 0..5 {
                let Some(&c) = chars.get(start + n) else { break };
                h = fnv_char(h, c);
                if n >= 2 {
                    self.push(&mut raw, h ^ (n as u64));
                }
            }
        }
        // Words: runs of letters and digits, or of invisible markers.
        let mut prev: Option<u64> = None;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let word_char = |c: char| c.is_alphanumeric() || c == '_';
            if !(word_char(c) || c == INVISIBLE) {
                i += 1;
                continue;
            }
            let invisible = c == INVISIBLE;
            let mut h = WORD_SEED;
            while i < chars.len() && (if invisible { chars[i] == INVISIBLE } else { word_char(chars[i]) }) {
                h = fnv_char(h, chars[i]);
                i += 1;
            }
            self.push(&mut raw, h);
            if let Some(p) = prev {
                self.push(&mut raw, (p ^ BIGRAM_SEED).wrapping_mul(FNV_PRIME) ^ h);
            }
            prev = Some(h);
        }
        raw.sort_unstable_by_key(|e| e.0);
        let mut idx: Vec<u32> = Vec::with_capacity(raw.len());
        let mut val: Vec<f32> = Vec::with_capacity(raw.len());
        for (i, v) in raw {
            if idx.last() == Some(&i) {
                if let Some(last) = val.last_mut() {
                    *last += v;
                }
            } else {
                idx.push(i);
                val.push(v);
            }
        }
        // Sublinear counts (1 + ln c): a gram repeated forty times in a long jailbreak should not
        // outweigh forty different ones (on the validation split: recall at 1% FPR 0.88 → 0.94).
        for v in val.iter_mut() {
            if v.abs() >= 1.0 {
                *v = v.signum() * (1.0 + v.abs().ln());
            }
        }
        let norm = val.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            val.iter_mut().for_each(|v| *v /= norm);
        }
        Features { idx, val }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_spacing_do_not_change_the_features() {
        let h = Hasher::new(18);
        assert_eq!(
            h.features("Ignore   the\tPREVIOUS instructions"),
            h.features("ignore the previous instructions")
        );
        assert_ne!(
            h.features("ignore the previous instructions"),
            h.features("follow the previous instructions")
        );
    }

    #[test]
    fn features_have_unit_norm_and_sorted_distinct_buckets() {
        let f = Hasher::new(12).features("The quick brown fox jumps over the lazy dog. The dog sleeps.");
        let n: f32 = f.val.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
        assert!(f.idx.windows(2).all(|w| w[0] < w[1]));
        assert!(f.idx.iter().all(|&i| i < 4096));
        assert!(Hasher::new(12).features("").idx.is_empty());
    }

    #[test]
    fn hidden_unicode_tags_become_visible_markers() {
        let hidden: String =
            "ignore".chars().map(|c| char::from_u32(0xE0000 + c as u32).unwrap_or(' ')).collect();
        let chars = normalise(&format!("hello {hidden}"));
        assert_eq!(chars.iter().filter(|&&c| c == INVISIBLE).count(), 6);
        // An emoji's joiner and variation selector are not hidden text.
        assert!(!normalise("👨\u{200D}👩 ❤\u{FE0F}").contains(&INVISIBLE));
    }
}
