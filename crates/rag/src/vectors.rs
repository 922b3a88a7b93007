//! The vector index: unit-length embeddings in one file, searched exactly (a dot product with
//! every row, which is the cosine for unit vectors).
//!
//! Exact search is linear in the number of chunks: at MiniLM's 384 dimensions, 200k chunks take
//! 300 MB of memory and a few tens of milliseconds per query on one core — fine to about that size;
//! beyond it an approximate index (HNSW) or an external vector store is the tool.
//!
//! File `vectors.bin`, little-endian: magic `FTVECS01`, `dim: u32`, 4 reserved bytes, `count: u64`,
//! `generation: u64`, then `count` chunk ids (`u64`), then `count × dim` `f32`. Written to a
//! temporary file, synced, and renamed over the old one, so a reader sees the old or the new file,
//! never a half-written one.

use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::io::Write;
use std::path::Path;

use crate::error::{RagError, Result};

const MAGIC: &[u8; 8] = b"FTVECS01";
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

#[derive(Debug, Clone, Default)]
pub struct VectorIndex {
    pub dim: usize,
    /// The knowledge-base generation this file was written for.
    pub generation: u64,
    ids: Vec<u64>,
    data: Vec<f32>,
}

#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, usize);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Higher score first; on ties the earlier row wins (deterministic results).
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

impl VectorIndex {
    pub fn new(dim: usize) -> Self {
        Self { dim, generation: 0, ids: Vec::new(), data: Vec::new() }
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
                }
                w += 1;
            }
        }
        self.ids.truncate(w);
        self.data.truncate(w * dim);
    }

    /// The `k` rows with the highest dot product with `query`, best first: `(id, cosine)`.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(u64, f32)> {
        if k == 0 || query.len() != self.dim || self.dim == 0 {
            return Vec::new();
        }
        let mut heap: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(k + 1);
        for (r, row) in self.data.chunks_exact(self.dim).enumerate() {
            let s = dot(row, query);
            let item = Scored(s, r);
            if heap.len() < k {
                heap.push(Reverse(item));
            } else if heap.peek().is_some_and(|Reverse(min)| item > *min) {
                heap.pop();
                heap.push(Reverse(item));
            }
        }
        let mut out: Vec<Scored> = heap.into_iter().map(|Reverse(s)| s).collect();
        out.sort_by(|a, b| b.cmp(a));
        out.into_iter().map(|Scored(s, r)| (self.ids[r], s)).collect()
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
            .collect();
        Ok(Self { dim, generation, ids, data })
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

/// Writes `bytes` to `path` through a synced temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| RagError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| RagError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| RagError::io(path, e))
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
}
