//! MinHash signatures and an LSH index for near-duplicate detection (Broder 1997; banding as in
//! Leskovec et al., *Mining of Massive Datasets* §3.4).
//!
//! Our own rather than `gaoya`: the index here must stream (query, then insert, one row at a
//! time, in file order) and keep memory per row small at millions of rows. Each stored row keeps
//! one byte per permutation (b-bit minwise hashing, Li & König 2010) to confirm candidates,
//! plus one bucket entry per band.
//!
//! Permutation `i` hashes a shingle's 32-bit hash `x` by multiply-add-shift,
//! `h_i(x) = ((a_i·x + b_i) mod 2^64) div 2^32` with `a_i, b_i` uniform 64-bit (Dietzfelbinger
//! 1996): a strongly universal (pairwise independent) family, the same guarantee as datasketch's
//! `(a·x + b) mod (2^61 − 1)`, at a third of its vector instructions (two 32×32-bit products, a
//! shift, two adds and a min per eight permutations, where the Mersenne reduction needs four
//! products and a dozen more steps). `tests/parity.rs` checks the estimates against exact
//! Jaccard and against datasketch's. The band / row split is chosen by datasketch's rule
//! (minimise the weighted integrated false-positive plus false-negative probability at the
//! threshold; weights in [`LSH_WEIGHTS`]), checked against it in `tests/parity.rs`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xxhash_rust::xxh3::xxh3_64;

use crate::prehashed::{Key64, OpenMap};

#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    /// `a` as 32-bit halves and `b`, padded to whole lanes (see [`mul_add_shift`]).
    a_hi: Vec<u64>,
    a_lo: Vec<u64>,
    b_pad: Vec<u64>,
}

/// Permutations computed together: four AVX-512 registers, eight AVX2 ones.
const LANES: usize = 32;

/// A shingle hash folded to the 32 bits the permutations take.
#[inline]
fn fold32(h: u64) -> u64 {
    (h ^ (h >> 32)) & 0xffff_ffff
}

/// `(a·x + b) mod 2^64` for `x < 2^32`, from `a`'s 32-bit halves (`a = a_hi·2^32 + a_lo`) with
/// only 32×32→64-bit products, so that it vectorises (`vpmuludq`, not the slower `vpmullq`):
/// `a·x ≡ a_lo·x + (a_hi·x mod 2^32)·2^32`. Equal to the wrapping 64-bit arithmetic (tested).
#[inline(always)]
fn mul_add_shift(a_hi: u64, a_lo: u64, x: u64, b: u64) -> u64 {
    let mul = |u: u64, v: u64| u64::from(u as u32) * u64::from(v as u32);
    mul(a_lo, x).wrapping_add(mul(a_hi, x) << 32).wrapping_add(b)
}

/// The minima over `xs` (32-bit shingle hashes) of `LANES` permutations, before the shift.
#[inline(always)]
fn min_lanes(a: [&[u64; LANES]; 3], xs: &[u64], out: &mut [u64; LANES]) {
    let [a_hi, a_lo, b] = a;
    let mut m = [u64::MAX; LANES];
    for &x in xs {
        for l in 0..LANES {
            m[l] = m[l].min(mul_add_shift(a_hi[l], a_lo[l], x, b[l]));
        }
    }
    *out = m;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn min_lanes_avx512(a: [&[u64; LANES]; 3], xs: &[u64], out: &mut [u64; LANES]) {
    min_lanes(a, xs, out)
}

fn lanes(v: &[u64], at: usize) -> &[u64; LANES] {
    v[at..at + LANES].try_into().unwrap_or(&[0; LANES])
}

/// The minimum of each permuted hash over a set's elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(pub Vec<u64>);

impl MinHasher {
    pub fn new(num_perm: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<u64> = (0..num_perm).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..num_perm).map(|_| rng.random()).collect();
        let padded = num_perm.div_ceil(LANES) * LANES;
        let pad =
            |v: Vec<u64>| -> Vec<u64> { v.into_iter().chain(std::iter::repeat(0)).take(padded).collect() };
        let a_hi = pad(a.iter().map(|x| x >> 32).collect());
        let a_lo = pad(a.iter().map(|x| x & 0xffff_ffff).collect());
        let b_pad = pad(b.clone());
        Self { a, b, a_hi, a_lo, b_pad }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// Signature of the set of `hashes` (an empty set gives all-`u64::MAX`); each minimum is
    /// below 2^32.
    pub fn signature(&self, hashes: &[u64]) -> Signature {
        let mut mins = Vec::new();
        self.signature_into(hashes, &mut Vec::new(), &mut mins);
        Signature(mins)
    }

    /// [`MinHasher::signature`] into `mins`, with `xs` as scratch (buffers reused across rows).
    pub fn signature_into(&self, hashes: &[u64], xs: &mut Vec<u64>, mins: &mut Vec<u64>) {
        mins.clear();
        if hashes.is_empty() {
            mins.resize(self.a.len(), u64::MAX);
            return;
        }
        xs.clear();
        xs.extend(hashes.iter().map(|&h| fold32(h)));
        mins.resize(self.a_hi.len(), 0);
        #[cfg(target_arch = "x86_64")]
        let wide = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl");
        for at in (0..self.a_hi.len()).step_by(LANES) {
            let coef = [lanes(&self.a_hi, at), lanes(&self.a_lo, at), lanes(&self.b_pad, at)];
            let mut out = [0u64; LANES];
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: the CPU has the features the function is compiled for (checked above).
                #[allow(unsafe_code)]
                unsafe {
                    min_lanes_avx512(coef, xs, &mut out)
                };
            } else {
                min_lanes(coef, xs, &mut out);
            }
            #[cfg(not(target_arch = "x86_64"))]
            min_lanes(coef, xs, &mut out);
            for (m, o) in mins[at..at + LANES].iter_mut().zip(out) {
                *m = o >> 32;
            }
        }
        mins.truncate(self.a.len());
    }

    /// The signature by plain wrapping 64-bit arithmetic, one permutation at a time: the
    /// reference the vectorised [`MinHasher::signature`] is tested against.
    pub fn signature_reference(&self, hashes: &[u64]) -> Signature {
        let mut mins = vec![u64::MAX; self.a.len()];
        for &h in hashes {
            let x = fold32(h);
            for ((m, &a), &b) in mins.iter_mut().zip(&self.a).zip(&self.b) {
                let v = a.wrapping_mul(x).wrapping_add(b) >> 32;
                if v < *m {
                    *m = v;
                }
            }
        }
        Signature(mins)
    }
}

impl Signature {
    /// Estimated Jaccard similarity: the fraction of permutations whose minima agree.
    pub fn jaccard(&self, other: &Signature) -> f64 {
        let n = self.0.len().min(other.0.len());
        if n == 0 {
            return 0.0;
        }
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / n as f64
    }

    /// One byte per permutation (the minima's low bits), for confirming LSH candidates.
    pub fn compact(&self) -> Vec<u8> {
        self.0.iter().map(|m| *m as u8).collect()
    }
}

/// Jaccard estimate from two compact (b = 8 bit) signatures: unrelated minima agree by chance
/// with probability 1/256, so `J = (m − 1/256) / (1 − 1/256)` (Li & König 2010, Theorem 1).
pub fn compact_jaccard(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let m = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64;
    let c = 1.0 / 256.0;
    ((m - c) / (1.0 - c)).max(0.0)
}

/// What the streaming [`LshIndex`] needs of a row's signature: each band's key and one byte per
/// permutation. Computed with the signature (in parallel), so the index's sequential pass only
/// looks keys up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch {
    pub bands: Box<[u64]>,
    pub compact: Box<[u8]>,
}

/// A [`MinHasher`] with the LSH banding chosen for a threshold (as [`LshIndex::new`] chooses it).
#[derive(Debug, Clone)]
pub struct Sketcher {
    hasher: MinHasher,
    threshold: f64,
    bands: usize,
    rows: usize,
}

impl Sketcher {
    pub fn new(threshold: f64, num_perm: usize, seed: u64) -> Self {
        let (bands, rows) = optimal_param(threshold, num_perm, LSH_WEIGHTS.0, LSH_WEIGHTS.1);
        Self { hasher: MinHasher::new(num_perm, seed), threshold, bands, rows }
    }

    pub fn hasher(&self) -> &MinHasher {
        &self.hasher
    }

    /// An empty index for this sketcher's sketches (the same banding, not chosen again).
    pub fn index(&self) -> LshIndex {
        LshIndex::with_params(self.threshold, self.hasher.num_perm(), (self.bands, self.rows))
    }

    pub fn sketch(&self, hashes: &[u64]) -> Sketch {
        self.sketch_with(hashes, &mut Vec::new(), &mut Vec::new())
    }

    /// [`Sketcher::sketch`] with scratch buffers reused across rows.
    pub fn sketch_with(&self, hashes: &[u64], xs: &mut Vec<u64>, mins: &mut Vec<u64>) -> Sketch {
        self.hasher.signature_into(hashes, xs, mins);
        Sketch {
            bands: band_keys(mins, self.bands, self.rows),
            compact: mins.iter().map(|m| *m as u8).collect(),
        }
    }
}

/// Each band's key: xxh3 of its (first 64) minima as little-endian bytes.
fn band_keys(sig: &[u64], bands: usize, rows: usize) -> Box<[u64]> {
    let mut bytes = [0u8; 8 * 64];
    (0..bands)
        .map(|i| {
            let band = &sig[i * rows..(i + 1) * rows];
            let n = band.len().min(64);
            for (j, v) in band[..n].iter().enumerate() {
                bytes[j * 8..j * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            xxh3_64(&bytes[..n * 8])
        })
        .collect()
}

/// The shingles of a text: hashes of lowercase word 3-grams (words = runs of alphanumeric
/// characters), or of the words themselves when there are fewer than three. Sorted, unique.
/// A 3-gram's hash combines its words' xxh3 hashes ([`trigram`]), so each word is hashed
/// once rather than three times inside three joined strings.
pub fn shingles(text: &str) -> Vec<u64> {
    let mut out = shingle_hashes(text);
    out.sort_unstable();
    out.dedup();
    out
}

/// The hashes of [`shingles`] in text order, with repeats: enough for a signature (a minimum
/// does not care about order or repeats), without the sort.
pub fn shingle_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    shingle_hashes_into(text, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

/// ASCII `A`–`Z` to `a`–`z` in each byte of `x` (every byte below 0x80): bytes from 0x41
/// get their top bit set by adding 0x3f, bytes from 0x5b by adding 0x25; the difference marks
/// the capitals, whose 0x20 bit is then set.
#[inline]
fn ascii_lower(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let capital = (x.wrapping_add(0x3f * ONES) & !x.wrapping_add(0x25 * ONES)) & (0x80 * ONES);
    x | (capital >> 2)
}

/// A word 3-gram's hash from its words' hashes: each word's hash multiplied by its own odd
/// constant (so order matters), xored, then murmur3's 64-bit finaliser to spread the bits.
#[inline]
fn trigram(a: u64, b: u64, c: u64) -> u64 {
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ c.wrapping_mul(0x1656_67b1_9e37_79f9);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// [`shingle_hashes`] into `out`, with `lower` (a word lowercased) and `words` (the words'
/// hashes) as scratch reused across rows.
pub fn shingle_hashes_into(text: &str, lower: &mut Vec<u8>, words: &mut Vec<u64>, out: &mut Vec<u64>) {
    words.clear();
    out.clear();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Skip separators.
        while i < b.len() {
            if b[i] < 128 {
                if b[i].is_ascii_alphanumeric() {
                    break;
                }
                i += 1;
            } else {
                let c = text[i..].chars().next().unwrap_or(' ');
                if c.is_alphanumeric() {
                    break;
                }
                i += c.len_utf8();
            }
        }
        let start = i;
        let mut ascii = true;
        while i < b.len() {
            if b[i] < 128 {
                if !b[i].is_ascii_alphanumeric() {
                    break;
                }
                i += 1;
            } else {
                let c = text[i..].chars().next().unwrap_or(' ');
                if !c.is_alphanumeric() {
                    break;
                }
                ascii = false;
                i += c.len_utf8();
            }
        }
        if start == i {
            continue;
        }
        let word = &b[start..i];
        let h = if ascii && word.len() <= 16 && start + 16 <= b.len() {
            // The word's 16 bytes as two words, lowercased and cut to length in registers, then
            // stored whole (byte-by-byte stores stalled xxh3's wide loads: store forwarding).
            let mut w = [0u8; 16];
            w.copy_from_slice(&b[start..start + 16]);
            let (lo, hi) = (
                u64::from_le_bytes(w[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(w[8..].try_into().unwrap_or_default()),
            );
            let keep = |n: usize| if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
            let lo = ascii_lower(lo) & keep(word.len());
            let hi = ascii_lower(hi) & keep(word.len().saturating_sub(8));
            w[..8].copy_from_slice(&lo.to_le_bytes());
            w[8..].copy_from_slice(&hi.to_le_bytes());
            xxh3_64(&w[..word.len()])
        } else if ascii {
            lower.clear();
            lower.extend(word.iter().map(u8::to_ascii_lowercase));
            xxh3_64(lower)
        } else {
            lower.clear();
            // `str::to_lowercase` (not per character): a final sigma lowers to `ς`.
            lower.extend_from_slice(text[start..i].to_lowercase().as_bytes());
            xxh3_64(lower)
        };
        words.push(h);
    }
    if words.len() < 3 {
        out.extend_from_slice(words);
    } else {
        out.extend(words.windows(3).map(|w| trigram(w[0], w[1], w[2])));
    }
}

/// [`shingles`] by the obvious allocating route: the reference it is tested against.
pub fn shingles_reference(text: &str) -> Vec<u64> {
    let words: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| xxh3_64(w.to_lowercase().as_bytes()))
        .collect();
    let mut out: Vec<u64> =
        if words.len() < 3 { words } else { words.windows(3).map(|w| trigram(w[0], w[1], w[2])).collect() };
    out.sort_unstable();
    out.dedup();
    out
}

/// The shingle strings themselves (for the parity script and for debugging).
pub fn shingle_strings(text: &str) -> Vec<String> {
    let words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    let mut out: Vec<String> =
        if words.len() < 3 { words } else { words.windows(3).map(|w| w.join(" ")).collect() };
    out.sort();
    out.dedup();
    out
}

fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    // Composite Simpson; the integrands are smooth polynomials in s.
    const N: usize = 512;
    let h = (b - a) / N as f64;
    let mut sum = f(a) + f(b);
    for i in 1..N {
        let x = a + h * i as f64;
        sum += if i % 2 == 1 { 4.0 } else { 2.0 } * f(x);
    }
    sum * h / 3.0
}

/// Weights of the false-positive and false-negative probability mass when choosing bands. Unlike
/// datasketch's default (0.5, 0.5), which finds only ≈ 46% of pairs at J = 0.85 with 128
/// permutations (8 bands × 16), we favour recall: every candidate is confirmed with its estimated
/// Jaccard, so a false candidate costs one comparison, while a missed one is a missed duplicate.
/// (12 × 10 at 0.85: 93% of pairs at the threshold, 98% at 0.88.)
pub const LSH_WEIGHTS: (f64, f64) = (0.05, 0.95);

/// (bands, rows per band) minimising `fp_weight`·(false-positive probability mass below
/// `threshold`) + `fn_weight`·(false-negative mass above it) — datasketch `MinHashLSH`'s
/// `_optimal_param`.
pub fn optimal_param(threshold: f64, num_perm: usize, fp_weight: f64, fn_weight: f64) -> (usize, usize) {
    let mut best = (f64::INFINITY, (1, 1));
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let (bf, rf) = (b as f64, r as f64);
            let fp = integrate(|s| 1.0 - (1.0 - s.powf(rf)).powf(bf), 0.0, threshold);
            let fneg = integrate(|s| (1.0 - s.powf(rf)).powf(bf), threshold, 1.0);
            let err = fp_weight * fp + fn_weight * fneg;
            if err < best.0 {
                best = (err, (b, r));
            }
        }
    }
    best.1
}

/// Streaming LSH index: `query` a row against everything inserted before, then `insert` it
/// (or both at once, [`LshIndex::query_insert`]). Each band bucket keeps the first row that
/// landed in it.
pub struct LshIndex {
    threshold: f64,
    bands: usize,
    rows: usize,
    num_perm: usize,
    /// Per band: band key → the first row id with it.
    tables: Vec<OpenMap<Key64, u32>>,
    sigs: Vec<u8>,
    refs: Vec<u64>,
}

impl LshIndex {
    pub fn new(threshold: f64, num_perm: usize) -> Self {
        Self::with_params(
            threshold,
            num_perm,
            optimal_param(threshold, num_perm, LSH_WEIGHTS.0, LSH_WEIGHTS.1),
        )
    }

    fn with_params(threshold: f64, num_perm: usize, (bands, rows): (usize, usize)) -> Self {
        Self {
            threshold,
            bands,
            rows,
            num_perm,
            tables: vec![OpenMap::default(); bands],
            sigs: Vec::new(),
            refs: Vec::new(),
        }
    }

    pub fn params(&self) -> (usize, usize) {
        (self.bands, self.rows)
    }

    /// Makes room for `n` rows in all (tables and stored signatures), so that entering them
    /// never grows a table.
    pub fn reserve(&mut self, n: usize) {
        for t in &mut self.tables {
            t.reserve(n);
        }
        self.sigs.reserve(n.saturating_mul(self.num_perm).saturating_sub(self.sigs.len()));
        self.refs.reserve(n.saturating_sub(self.refs.len()));
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Whether `sk` was made with this index's banding and permutation count.
    fn fits(&self, sk: &Sketch) -> bool {
        sk.bands.len() == self.bands && sk.compact.len() == self.num_perm
    }

    /// Confirms candidate `id` (skipping those already seen) and keeps the best above the
    /// threshold.
    fn consider(&self, sk: &Sketch, id: u32, seen: &mut Vec<u32>, best: &mut Option<(u64, f64)>) {
        if seen.contains(&id) {
            return;
        }
        seen.push(id);
        let stored = &self.sigs[id as usize * self.num_perm..(id as usize + 1) * self.num_perm];
        let j = compact_jaccard(&sk.compact, stored);
        if j >= self.threshold && best.is_none_or(|b| j > b.1) {
            *best = Some((self.refs[id as usize], j));
        }
    }

    /// Starts loading the buckets `sk` will be looked up in (a hint; no effect on results).
    pub fn prefetch(&self, sk: &Sketch) {
        if self.fits(sk) {
            for (table, &key) in self.tables.iter().zip(sk.bands.iter()) {
                table.prefetch(&Key64::new(key));
            }
        }
    }

    /// The earlier row most similar to `sk` among the LSH candidates, if its estimated Jaccard
    /// similarity reaches the threshold: (its reference, the estimate).
    pub fn query(&self, sk: &Sketch) -> Option<(u64, f64)> {
        if !self.fits(sk) {
            return None;
        }
        let mut best = None;
        let mut seen = Vec::new();
        for (table, &key) in self.tables.iter().zip(sk.bands.iter()) {
            if let Some(&id) = table.get(&Key64::new(key)) {
                self.consider(sk, id, &mut seen, &mut best);
            }
        }
        best
    }

    pub fn insert(&mut self, sk: &Sketch, reference: u64) {
        if !self.fits(sk) || self.refs.len() >= u32::MAX as usize {
            return;
        }
        let id = self.refs.len() as u32;
        for (table, &key) in self.tables.iter_mut().zip(sk.bands.iter()) {
            table.get_or_insert(Key64::new(key), id);
        }
        self.sigs.extend_from_slice(&sk.compact);
        self.refs.push(reference);
    }

    /// [`LshIndex::query`], then [`LshIndex::insert`] when it found nothing, with one lookup
    /// per band (the empty slots found are filled afterwards).
    pub fn query_insert(&mut self, sk: &Sketch, reference: u64) -> Option<(u64, f64)> {
        if !self.fits(sk) {
            return None;
        }
        if self.refs.len() >= u32::MAX as usize {
            return self.query(sk);
        }
        let id = self.refs.len() as u32;
        let mut best = None;
        let mut seen = Vec::new();
        // Per band, the empty slot this row would take (usize::MAX: the key is there already).
        let mut vacant = [usize::MAX; 32];
        let mut vacant_more: Vec<usize> = Vec::new();
        let mut tables = std::mem::take(&mut self.tables);
        for (band, (table, &key)) in tables.iter_mut().zip(sk.bands.iter()).enumerate() {
            table.reserve_one();
            let slot = match table.probe(&Key64::new(key)) {
                Ok(at) => {
                    self.consider(sk, *table.value(at), &mut seen, &mut best);
                    usize::MAX
                }
                Err(slot) => slot,
            };
            match vacant.get_mut(band) {
                Some(v) => *v = slot,
                None => vacant_more.push(slot),
            }
        }
        if best.is_none() {
            let slots = vacant.iter().chain(&vacant_more);
            for ((table, &key), &slot) in tables.iter_mut().zip(sk.bands.iter()).zip(slots) {
                if slot != usize::MAX {
                    table.fill(slot, Key64::new(key), id);
                }
            }
            self.sigs.extend_from_slice(&sk.compact);
            self.refs.push(reference);
        }
        self.tables = tables;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorised_product_matches_wrapping_64_bit_arithmetic() {
        let mut rng = StdRng::seed_from_u64(3);
        let edge = [0, 1, 2, u64::MAX, u64::MAX - 1, (1 << 32) - 1, 1 << 32, (1 << 63) + 12345];
        for i in 0..200_000 {
            let (a, x, b) = if i < 512 {
                (edge[i % 8], edge[(i / 8) % 8] & 0xffff_ffff, edge[(i / 64) % 8])
            } else {
                (rng.random(), rng.random::<u64>() & 0xffff_ffff, rng.random())
            };
            let want = a.wrapping_mul(x).wrapping_add(b);
            assert_eq!(mul_add_shift(a >> 32, a & 0xffff_ffff, x, b), want, "{a} {x} {b}");
        }
    }

    /// Over 200 independent hashers, the estimate of a pair of sets with known Jaccard J is
    /// unbiased and has the binomial spread √(J(1−J)/128) of ideal minwise hashing.
    #[test]
    fn estimates_are_unbiased_with_the_binomial_spread() {
        let h = |i: u64| xxh3_64(&i.to_le_bytes());
        for (shared, only) in [(20u64, 40u64), (50, 25), (85, 8), (150, 4)] {
            // A = shared ∪ a-only, B = shared ∪ b-only, |A ∩ B| = shared, |A ∪ B| = shared + 2·only.
            let a: Vec<u64> = (0..shared + only).map(h).collect();
            let b: Vec<u64> = (0..shared).chain(1_000_000..1_000_000 + only).map(h).collect();
            let j = shared as f64 / (shared + 2 * only) as f64;
            let est: Vec<f64> = (0..200)
                .map(|seed| {
                    let m = MinHasher::new(128, seed);
                    m.signature(&a).jaccard(&m.signature(&b))
                })
                .collect();
            let mean = est.iter().sum::<f64>() / est.len() as f64;
            let sd = (est.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (est.len() - 1) as f64).sqrt();
            let ideal = (j * (1.0 - j) / 128.0).sqrt();
            assert!((mean - j).abs() < 0.01, "J {j}: mean estimate {mean}");
            assert!(sd > 0.75 * ideal && sd < 1.25 * ideal, "J {j}: spread {sd}, ideal {ideal}");
        }
    }

    #[test]
    fn signatures_equal_the_reference_for_any_hashes_and_permutation_count() {
        let mut rng = StdRng::seed_from_u64(5);
        for num_perm in [1, 7, 16, 64, 100, 128, 256] {
            let h = MinHasher::new(num_perm, 11);
            for n in [0usize, 1, 2, 5, 100, 1000] {
                let mut hashes: Vec<u64> = (0..n).map(|_| rng.random()).collect();
                if n > 2 {
                    hashes[0] = u64::MAX;
                    hashes[1] = 0;
                    hashes[2] = 0xffff_ffff;
                }
                assert_eq!(
                    h.signature(&hashes),
                    h.signature_reference(&hashes),
                    "{num_perm} perms, {n} hashes"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn shingles_equal_the_allocating_reference(t in "(\\PC|[ a-zA-Z0-9ΣσςİK.,'-]){0,80}") {
            proptest::prop_assert_eq!(shingles(&t), shingles_reference(&t));
            let h = MinHasher::new(32, 2);
            proptest::prop_assert_eq!(h.signature(&shingle_hashes(&t)), h.signature(&shingles(&t)));
        }
    }

    #[test]
    fn trigram_hashes_differ_for_every_ordered_triple_of_a_vocabulary() {
        let words: Vec<u64> = (0..60u32).map(|i| xxh3_64(format!("w{i}").as_bytes())).collect();
        let mut all = Vec::new();
        for &a in &words {
            for &b in &words {
                for &c in &words {
                    all.push(trigram(a, b, c));
                }
            }
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "colliding 3-gram hashes");
        assert_ne!(shingles("red green blue"), shingles("blue green red"));
    }

    #[test]
    fn swar_lowercasing_equals_the_bytewise_one_for_every_ascii_byte() {
        for c in 0u8..128 {
            for pos in 0..8 {
                let x = u64::from(c) << (8 * pos) | 0x4161_7a5a_3039_2040u64 & !(0xff << (8 * pos));
                let want = u64::from_le_bytes(x.to_le_bytes().map(|b| b.to_ascii_lowercase()));
                assert_eq!(ascii_lower(x), want, "byte {c:#x} at {pos}");
            }
        }
    }

    #[test]
    fn shingles_of_fixed_strings_equal_the_reference() {
        for t in [
            "",
            "one",
            "one two",
            "The quick, brown fox!",
            "ΣΑΣ σας ΟΔΟΣ",
            "İstanbul KELVIN 1st 2nd",
            "a--b__c  d\ne",
            "中文 字 😀 x y z",
        ] {
            assert_eq!(shingles(t), shingles_reference(t), "{t:?}");
        }
    }

    #[test]
    fn identical_sets_have_estimate_one_and_disjoint_sets_near_zero() {
        let h = MinHasher::new(128, 1);
        let a = h.signature(&shingles("the quick brown fox jumps over the lazy dog"));
        let b = h.signature(&shingles("The quick, brown fox jumps over the lazy dog!"));
        assert_eq!(a.jaccard(&b), 1.0);
        let c = h.signature(&shingles("completely different words appear in this other sentence here"));
        assert!(a.jaccard(&c) < 0.05);
    }

    #[test]
    fn the_index_finds_a_near_duplicate_and_not_an_unrelated_row() {
        let s = Sketcher::new(0.85, 128, 1);
        let base: String = (0..80).map(|i| format!("word{i} ")).collect();
        let near = base.replace("word40 ", "changed ");
        let far: String = (0..80).map(|i| format!("other{i} ")).collect();
        let mut idx = LshIndex::new(0.85, 128);
        assert_eq!(idx.params(), s.index().params());
        idx.insert(&s.sketch(&shingles(&base)), 7);
        let hit = idx.query(&s.sketch(&shingles(&near))).expect("near duplicate found");
        assert_eq!(hit.0, 7);
        assert!(hit.1 > 0.85);
        assert!(idx.query(&s.sketch(&shingles(&far))).is_none());
    }

    #[test]
    fn a_sketch_holds_the_signatures_band_keys_and_low_bytes() {
        let s = Sketcher::new(0.85, 128, 1);
        let hashes = shingles("the quick brown fox jumps over the lazy dog again and again");
        let sig = s.hasher().signature(&hashes);
        let sk = s.sketch(&hashes);
        assert_eq!(&sk.compact[..], &sig.compact()[..]);
        let keys: Vec<u64> = sig
            .0
            .chunks(s.rows)
            .take(s.bands)
            .map(|band| xxh3_64(&band.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()))
            .collect();
        assert_eq!(&sk.bands[..], &keys[..]);
    }

    #[test]
    fn query_insert_equals_query_then_insert() {
        let s = Sketcher::new(0.85, 128, 1);
        let mut rng = StdRng::seed_from_u64(9);
        let bases: Vec<Vec<String>> =
            (0..5).map(|b| (0..60).map(|i| format!("w{b}x{i}")).collect()).collect();
        let (mut a, mut b) = (LshIndex::new(0.85, 128), LshIndex::new(0.85, 128));
        let mut found = 0;
        for r in 0..600u64 {
            let mut words = bases[rng.random_range(0..5)].clone();
            for _ in 0..rng.random_range(0..10) {
                let i = rng.random_range(0..words.len());
                words[i] = format!("y{}", rng.random_range(0..1000));
            }
            let sk = s.sketch(&shingles(&words.join(" ")));
            let want = a.query(&sk);
            if want.is_none() {
                a.insert(&sk, r);
            }
            found += usize::from(want.is_some());
            assert_eq!(b.query_insert(&sk, r), want, "row {r}");
        }
        assert!(found > 100 && a.len() > 50, "{found} found, {} kept", a.len());
        assert_eq!((&a.sigs, &a.refs), (&b.sigs, &b.refs));
        assert_eq!(a.tables, b.tables);
    }
}
