//! The vector index: unit-length embeddings in one file, searched for the rows with the highest
//! dot product with the query (the cosine, for unit vectors). Results are those of an exact search
//! — the same rows, order and f32 scores as a dot product with every row — at a quarter of the
//! memory traffic:
//!
//! 1. **8-bit pass.** Every row also lives as 8-bit codes ([`crate::int8`]: per-row symmetric
//!    scale, `i8` values, made when the file is loaded). The query is coded the same way and all
//!    rows are scored by integer dot products, in parallel blocks (rayon): 384 bytes a row instead
//!    of 1,536, which is what bounds exact search (100k MiniLM rows: 38 MB streamed, not 150 MB).
//!    The best `max(8·k, 100)` rows by this score are the candidates.
//! 2. **Exact rerank.** The candidates are rescored with the f32 dot product and the best `k` kept.
//! 3. **Proof.** The 8-bit score is within a bound `ε` of the exact one (from each row's measured
//!    quantization error; see [`crate::int8`]). Every row outside the candidates scores at most
//!    `floor + ε` exactly (`floor`: the last candidate's 8-bit score); when that is below the k-th
//!    exact score the result is the exact top k. Otherwise (rare: a wide candidate set is far
//!    deeper than the quantization noise for typical embeddings; it takes many near-duplicates)
//!    every row whose 8-bit score is within `ε` of the k-th exact score is rescored too, which is
//!    exact by the same argument. A non-finite value anywhere falls back to the plain exact scan.
//!
//! Search is still linear in the number of chunks: 100k MiniLM chunks hold 150 MB of f32 rows
//! (kept for the rerank and the file) plus 38 MB of codes, and the 8-bit pass takes a few ms on
//! two cores. Far beyond a few hundred thousand chunks an approximate index (HNSW) or an external
//! vector store is the tool.
//!
//! File `vectors.bin`, little-endian: magic `FTVECS01`, `dim: u32`, 4 reserved bytes, `count: u64`,
//! `generation: u64`, then `count` chunk ids (`u64`), then `count × dim` `f32`. The codes are not
//! stored (coding 100k rows on load takes tens of ms), so files of every version so far load as
//! they are. Written to a temporary file, synced, and renamed over the old one, so a reader sees
//! the old or the new file, never a half-written one.

use std::io::Write;
use std::path::Path;

use crate::error::{RagError, Result};
use crate::int8::{self, Int8Rows, Scored, TopN};

const MAGIC: &[u8; 8] = b"FTVECS01";
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

/// How a search found its rows (for the tests: each way must give the exact result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// f32 dot products with every row (small index, very wide vectors, or a non-finite value).
    Exact,
    /// 8-bit pass + rerank, the bound proving the candidates complete.
    Proved,
    /// 8-bit pass + rerank of every row the bound could not exclude.
    Widened,
}

/// Candidates the 8-bit pass hands to the exact rerank for `k` results.
pub fn candidates(k: usize) -> usize {
    k.saturating_mul(8).max(100)
}

#[derive(Debug, Clone, Default)]
pub struct VectorIndex {
    pub dim: usize,
    /// The knowledge-base generation this file was written for.
    pub generation: u64,
    ids: Vec<u64>,
    data: Vec<f32>,
    /// The same rows as 8-bit codes, in step with `data`.
    codes: Int8Rows,
}

impl VectorIndex {
    pub fn new(dim: usize) -> Self {
        Self { dim, generation: 0, ids: Vec::new(), data: Vec::new(), codes: Int8Rows::new(dim) }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn push(&mut self, id: u64, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(RagError::Query {
                query: String::new(),
                reason: format!("vector of {} dimensions for an index of {}", v.len(), self.dim),
            });
        }
        self.ids.push(id);
        self.data.extend_from_slice(v);
        self.codes.push(v);
        Ok(())
    }

    /// Keeps the rows whose id passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let dim = self.dim;
        let mut w = 0;
        for r in 0..self.ids.len() {
            if keep(self.ids[r]) {
                if w != r {
                    self.ids[w] = self.ids[r];
                    self.data.copy_within(r * dim..(r + 1) * dim, w * dim);
                    self.codes.move_row(r, w);
                }
                w += 1;
            }
        }
        self.ids.truncate(w);
        self.data.truncate(w * dim);
        self.codes.truncate(w);
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// The `k` rows with the highest dot product with `query`, best first: `(id, cosine)`. Exact
    /// (see the module docs); ties go to the row stored first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(u64, f32)> {
        if k == 0 || query.len() != self.dim || self.dim == 0 {
            return Vec::new();
        }
        let (top, _) = self.search_rows(query, k, candidates(k));
        top.into_iter().map(|Scored(s, r)| (self.ids[r], s)).collect()
    }

    fn search_rows(&self, query: &[f32], k: usize, width: usize) -> (Vec<Scored>, Pass) {
        if self.len() <= width || self.dim > int8::MAX_DIM {
            (self.exact_top(query, k, 0..self.len()), Pass::Exact)
        } else {
            self.two_pass_top(query, k, width)
        }
    }

    /// The plain exact search over `rows`: f32 dot products, the best `k` kept.
    fn exact_top(&self, query: &[f32], k: usize, rows: impl Iterator<Item = usize>) -> Vec<Scored> {
        let mut top = TopN::new(k);
        for r in rows {
            top.push(Scored(dot(self.row(r), query), r));
        }
        top.into_sorted()
    }

    /// 8-bit pass → exact rerank of `width` candidates → proof or a wider rerank (module docs).
    fn two_pass_top(&self, query: &[f32], k: usize, width: usize) -> (Vec<Scored>, Pass) {
        let code = self.codes.code_query(query);
        let bound = self.codes.error_bound(&code);
        let candidates = self.codes.top(&code, width);
        let top = self.exact_top(query, k, candidates.iter().map(|s| s.1));
        let (Some(last), Some(kth)) = (candidates.last(), top.get(k - 1)) else {
            return (self.exact_top(query, k, 0..self.len()), Pass::Exact);
        };
        if !(bound.is_finite() && kth.0.is_finite()) {
            return (self.exact_top(query, k, 0..self.len()), Pass::Exact);
        }
        if last.0 + bound < kth.0 {
            return (top, Pass::Proved);
        }
        // The final k-th score is at least `kth`, so every row of the true top k has an exact score
        // ≥ kth and an 8-bit score ≥ kth − bound.
        let wide = self.codes.rows_at_least(&code, kth.0 - bound);
        (self.exact_top(query, k, wide.into_iter()), Pass::Widened)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let corrupt = |reason: String| RagError::Corrupt { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| RagError::io(path, e))?;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(corrupt("vectors.bin: not a ferrotune vector file".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let dim = u32_at(8) as usize;
        let count = u64_at(16) as usize;
        let generation = u64_at(24);
        let expected = count.checked_mul(8 + dim * 4).and_then(|n| n.checked_add(HEADER));
        if expected != Some(bytes.len()) {
            return Err(corrupt(format!("vectors.bin: {} bytes, header says {count} × {dim}", bytes.len())));
        }
        let ids = (0..count).map(|i| u64_at(HEADER + 8 * i)).collect();
        let data = bytes[HEADER + 8 * count..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<f32>>();
        let codes = Int8Rows::from_rows(dim, &data);
        Ok(Self { dim, generation, ids, data, codes })
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::with_capacity(HEADER + self.ids.len() * 8 + self.data.len() * 4);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(self.dim as u32).to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        buf.extend_from_slice(&self.generation.to_le_bytes());
        for id in &self.ids {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        for x in &self.data {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        write_atomic(path, &buf)
    }
}

/// Dot product over 8 independent partial sums: a single running `f32` sum cannot be reordered,
/// so the compiler keeps it scalar; eight lanes let it use SIMD (several times faster exact search).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Writes `bytes` to `path` through a synced temporary file in the same folder (`NAME.tmp-PID`,
/// removed if the write fails: a full disk leaves nothing behind) and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RagError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RagError::io(path, e)
    })
}

/// The generation in a vector file's header, without reading its rows.
pub fn read_generation(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut head = [0u8; HEADER];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).map_err(|e| RagError::io(path, e))?;
    if &head[..8] != MAGIC {
        return Err(RagError::Corrupt {
            path: path.to_path_buf(),
            reason: "not a ferrotune vector file".into(),
        });
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&head[24..32]);
    Ok(u64::from_le_bytes(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_returns_best_rows_first_and_round_trips_through_disk() {
        let mut v = VectorIndex::new(2);
        for (id, x) in [(10u64, [1.0f32, 0.0]), (11, [0.0, 1.0]), (12, [0.6, 0.8]), (13, [-1.0, 0.0])] {
            v.push(id, &x).expect("dim matches");
        }
        let hits = v.search(&[1.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [10, 12, 11]);
        v.retain(|id| id != 12);
        v.generation = 7;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vectors.bin");
        v.write(&p).expect("write");
        let r = VectorIndex::read(&p).expect("read");
        assert_eq!((r.dim, r.generation, r.ids()), (2, 7, &[10u64, 11, 13][..]));
        assert_eq!(r.search(&[0.0, 1.0], 1), vec![(11, 1.0)]);
    }

    #[test]
    fn truncated_file_is_reported_not_panicked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vectors.bin");
        let mut v = VectorIndex::new(3);
        v.push(1, &[1.0, 0.0, 0.0]).expect("dim");
        v.write(&p).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 2]).expect("write");
        assert!(VectorIndex::read(&p).is_err());
    }

    /// The reference: the f32 dot product of every row (the same arithmetic as exact search, so
    /// the results must be identical, not just close), all rows sorted by score then row — no
    /// heap, codes, bound or candidates. The f64 product checks that arithmetic.
    fn brute_force(rows: &[Vec<f32>], q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = rows.iter().enumerate().map(|(r, v)| (r as u64, dot(v, q))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        for &(r, s) in &all {
            let exact: f64 = rows[r as usize].iter().zip(q).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            assert!((f64::from(s) - exact).abs() < 1e-5, "f32 dot {s} vs f64 {exact}");
        }
        all
    }

    fn assert_same(got: &[(u64, f32)], want: &[(u64, f32)], what: &str) {
        assert_eq!(got, want, "{what}");
    }

    #[test]
    fn two_pass_search_returns_the_exact_top_k_of_random_unit_vectors() {
        let mut g = crate::synthetic::TextGen::new(11);
        let dim = 384;
        let rows: Vec<Vec<f32>> = (0..5000).map(|_| g.unit_vector(dim)).collect();
        let mut v = VectorIndex::new(dim);
        for (id, row) in rows.iter().enumerate() {
            v.push(id as u64, row).expect("dim");
        }
        let mut proved = 0;
        for i in 0..40 {
            let q = g.unit_vector(dim);
            for k in [1, 5, 15, 50] {
                let want = brute_force(&rows, &q, k);
                let (top, pass) = v.search_rows(&q, k, candidates(k));
                assert_ne!(pass, Pass::Exact, "5000 rows take the 8-bit pass");
                proved += usize::from(pass == Pass::Proved);
                let got: Vec<(u64, f32)> = top.iter().map(|s| (v.ids[s.1], s.0)).collect();
                assert_same(&got, &want, &format!("query {i}, k {k}, {pass:?}"));
                assert_eq!(v.search(&q, k), got);
            }
        }
        // Random unit vectors leave the candidates' floor far below the k-th score.
        assert_eq!(proved, 160, "every search proved by the bound");
    }

    #[test]
    fn near_duplicates_widen_the_rerank_and_still_match_the_exact_top_k() {
        // 3000 rows within ~1e-3 of one direction, 8-bit steps are ~5e-4 per element: the best
        // 100 by 8-bit score cannot be proved complete, so the search must rescore more rows.
        let mut g = crate::synthetic::TextGen::new(5);
        let dim = 64;
        let base = g.unit_vector(dim);
        let rows: Vec<Vec<f32>> = (0..3000)
            .map(|_| {
                let noise = g.unit_vector(dim);
                let mut r: Vec<f32> = base.iter().zip(&noise).map(|(b, n)| b + 0.05 * n).collect();
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter_mut().for_each(|x| *x /= norm);
                r
            })
            .collect();
        let mut v = VectorIndex::new(dim);
        for (id, row) in rows.iter().enumerate() {
            v.push(id as u64, row).expect("dim");
        }
        let mut widened = 0;
        for i in 0..20 {
            let noise = g.unit_vector(dim);
            let q: Vec<f32> = base.iter().zip(&noise).map(|(b, n)| b + 0.05 * n).collect();
            let k = 10;
            let want = brute_force(&rows, &q, k);
            let (top, pass) = v.search_rows(&q, k, 20);
            widened += usize::from(pass == Pass::Widened);
            let got: Vec<(u64, f32)> = top.iter().map(|s| (v.ids[s.1], s.0)).collect();
            assert_same(&got, &want, &format!("query {i}, {pass:?}"));
        }
        assert!(widened > 0, "the data was meant to defeat the bound at width 20");
    }

    #[test]
    fn identical_rows_tie_to_the_row_stored_first_as_exact_search_does() {
        let mut g = crate::synthetic::TextGen::new(8);
        let dup = g.unit_vector(32);
        let mut v = VectorIndex::new(32);
        for id in 0..400u64 {
            let row = if id % 50 == 7 { dup.clone() } else { g.unit_vector(32) };
            v.push(1000 + id, &row).expect("dim");
        }
        let hits = v.search(&dup, 3);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1007, 1057, 1107]);
        assert_eq!(hits[0].1, hits[2].1);
    }

    #[test]
    fn non_finite_values_fall_back_to_the_exact_scan_without_panicking() {
        let mut g = crate::synthetic::TextGen::new(9);
        let mut v = VectorIndex::new(16);
        for id in 0..300u64 {
            let mut row = g.unit_vector(16);
            if id == 3 {
                row[0] = f32::NAN;
            }
            v.push(id, &row).expect("dim");
        }
        let q = g.unit_vector(16);
        let (_, pass) = v.search_rows(&q, 5, candidates(5));
        assert_eq!(pass, Pass::Exact);
        assert_eq!(v.search(&q, 5).len(), 5);
        let nan_query = vec![f32::NAN; 16];
        assert_eq!(v.search(&nan_query, 5).len(), 5);
    }

    #[test]
    fn retain_keeps_the_codes_in_step_with_the_rows() {
        let mut g = crate::synthetic::TextGen::new(12);
        let rows: Vec<Vec<f32>> = (0..1000).map(|_| g.unit_vector(48)).collect();
        let mut v = VectorIndex::new(48);
        for (id, row) in rows.iter().enumerate() {
            v.push(id as u64, row).expect("dim");
        }
        v.retain(|id| id % 3 != 0);
        let kept: Vec<Vec<f32>> =
            rows.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, r)| r.clone()).collect();
        let kept_ids: Vec<u64> = (0..1000u64).filter(|i| i % 3 != 0).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vectors.bin");
        v.write(&p).expect("write");
        let reread = VectorIndex::read(&p).expect("read");
        for _ in 0..10 {
            let q = g.unit_vector(48);
            let want: Vec<(u64, f32)> =
                brute_force(&kept, &q, 5).into_iter().map(|(r, s)| (kept_ids[r as usize], s)).collect();
            assert_same(&v.search(&q, 5), &want, "after retain");
            assert_same(&reread.search(&q, 5), &want, "after retain and reload");
        }
    }
}
