//! Dataset-wide indexes over row fingerprints: exact duplicates (xxh3-128 of the canonical
//! conversation), near duplicates (MinHash + LSH), and one prompt with conflicting answers. This
//! is the only state that grows with the row count: per row, a 24-byte exact entry plus a 24-byte
//! prompt entry, and with the near-duplicate index at 128 permutations a 128-byte compact
//! signature, an 8-byte reference and one 12-byte bucket entry per band (12 at J = 0.85), each
//! entry with a tag byte — ≈ 340 B/row of payload in tables 3/8 to 3/4 full
//! ([`crate::prehashed::OpenMap`], sized once for the expected rows by [`DupIndex::reserve`]);
//! the measured peak is 623–628 MiB RSS at 1M bench rows (the tables, the process and the chunks
//! in flight), 165 MiB at 200k.

use std::cell::RefCell;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::minhash::{LshIndex, Sketch, Sketcher, shingle_hashes_into};
use crate::prehashed::{Key128, OpenMap};
use crate::record::{Body, Record, Role};

/// A row's position packed into one word: file index (16 bits) and line (48 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, bytemuck::Zeroable)]
pub struct RowRef(pub u64);

impl RowRef {
    pub fn new(file: usize, line: u64) -> Self {
        Self(((file as u64 & 0xffff) << 48) | (line & 0xffff_ffff_ffff))
    }

    pub fn file(self) -> usize {
        (self.0 >> 48) as usize
    }

    pub fn line(self) -> u64 {
        self.0 & 0xffff_ffff_ffff
    }
}

/// What the indexes need of one row, computed in parallel before the sequential pass.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub exact: u128,
    /// Hash of everything before the final target, and of the final target.
    /// (Near-duplicate signatures cover the user and assistant text, not system prompts.)
    pub prompt_answer: Option<(u64, u64)>,
    pub sketch: Option<Sketch>,
}

/// Per-thread buffers for [`Fingerprint::of`], reused from row to row.
#[derive(Default)]
struct Scratch {
    canon: String,
    plain: String,
    prompt: String,
    lower: Vec<u8>,
    words: Vec<u64>,
    shingles: Vec<u64>,
    xs: Vec<u64>,
    mins: Vec<u64>,
}

impl Scratch {
    /// Buffers grown past this by a huge row are given back after it.
    const KEEP: usize = 1 << 20;

    fn trim(&mut self) {
        fn fit<T>(v: &mut Vec<T>) {
            if v.capacity() * std::mem::size_of::<T>() > Scratch::KEEP {
                *v = Vec::new();
            }
        }
        for s in [&mut self.canon, &mut self.plain, &mut self.prompt] {
            if s.capacity() > Self::KEEP {
                *s = String::new();
            }
        }
        fit(&mut self.lower);
        fit(&mut self.words);
        fit(&mut self.shingles);
        fit(&mut self.xs);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Fingerprint {
    pub fn of(record: &Record, sketcher: Option<&Sketcher>) -> Self {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let fp = Self::of_with(record, sketcher, &mut s);
            s.trim();
            fp
        })
    }

    fn of_with(record: &Record, sketcher: Option<&Sketcher>, s: &mut Scratch) -> Self {
        let Scratch { canon, plain, prompt, lower, words, shingles, xs, mins } = s;
        canon.clear();
        plain.clear();
        if let Body::Text(t) = &record.body {
            canon.push_str(t.trim());
            plain.push_str(t);
        } else {
            for t in record.turns().iter() {
                canon.push_str(t.role.as_str());
                canon.push('\u{1f}');
                canon.push_str(t.content.trim());
                canon.push('\u{1e}');
                // A system prompt shared by every row would make all rows look alike.
                if t.role != Role::System {
                    plain.push_str(&t.content);
                    plain.push('\n');
                }
            }
        }
        let prompt_answer = record
            .prompt_and_answer_into(prompt)
            .map(|a| (xxh3_64(prompt.as_bytes()), xxh3_64(a.trim().as_bytes())));
        let sketch = sketcher.map(|h| {
            shingle_hashes_into(plain, lower, words, shingles);
            h.sketch_with(shingles, xs, mins)
        });
        Self { exact: xxh3_128(canon.as_bytes()), prompt_answer, sketch }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DupCheck {
    pub exact_of: Option<RowRef>,
    pub near_of: Option<(RowRef, f64)>,
    pub conflict_with: Option<RowRef>,
}

pub struct DupIndex {
    exact: OpenMap<Key128, RowRef>,
    prompts: OpenMap<u64, (u64, RowRef)>,
    lsh: Option<LshIndex>,
}

impl DupIndex {
    /// `near`: the Jaccard threshold and number of permutations, or `None` for exact only.
    pub fn new(near: Option<(f64, usize)>) -> Self {
        Self::with_lsh(near.map(|(t, p)| LshIndex::new(t, p)))
    }

    /// With this near-duplicate index (e.g. [`Sketcher::index`], whose banding it shares).
    pub fn with_lsh(lsh: Option<LshIndex>) -> Self {
        Self { exact: OpenMap::default(), prompts: OpenMap::default(), lsh }
    }

    /// Makes room for `rows` rows in all: the tables are sized once instead of doubling as they
    /// fill (each doubling allocates, zeroes and refills a table; at a million rows that was a
    /// third of the sequential pass).
    pub fn reserve(&mut self, rows: usize) {
        self.exact.reserve(rows);
        self.prompts.reserve(rows);
        if let Some(lsh) = &mut self.lsh {
            lsh.reserve(rows);
        }
    }

    /// [`DupIndex::reserve`] for the rows `files` probably hold (see
    /// [`crate::reader::estimate_rows`]), at most 2^21 (≈ 1.1 GiB of tables at 128 permutations),
    /// so that a misjudged file (say, sorted by length, short rows first) cannot reserve much
    /// more than it needs; past that the tables grow as they fill.
    pub fn reserve_for<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let n: u64 = files.into_iter().filter_map(crate::reader::estimate_rows).sum();
        self.reserve(n.min(1 << 21) as usize);
    }

    pub fn lsh_params(&self) -> Option<(usize, usize)> {
        self.lsh.as_ref().map(LshIndex::params)
    }

    /// Starts loading what [`DupIndex::check_insert`] will look up for `fp` (a hint, for a row a
    /// few rows ahead; no effect on results).
    pub fn prefetch(&self, fp: &Fingerprint) {
        self.exact.prefetch(&Key128::new(fp.exact));
        if let Some((p, _)) = fp.prompt_answer {
            self.prompts.prefetch(&p);
        }
        if let (Some(lsh), Some(sk)) = (&self.lsh, &fp.sketch) {
            lsh.prefetch(sk);
        }
    }

    /// Compare a row with every row entered before it (without entering it).
    pub fn check(&self, fp: &Fingerprint) -> DupCheck {
        let exact_of = self.exact.get(&Key128::new(fp.exact)).copied();
        let near_of = match (&self.lsh, &fp.sketch, exact_of) {
            (Some(lsh), Some(sk), None) => lsh.query(sk).map(|(r, j)| (RowRef(r), j)),
            _ => None,
        };
        let conflict_with = match (exact_of, fp.prompt_answer) {
            (None, Some((p, a))) => self.prompts.get(&p).filter(|(other, _)| *other != a).map(|(_, r)| *r),
            _ => None,
        };
        DupCheck { exact_of, near_of, conflict_with }
    }

    /// [`DupIndex::check`] the row, then enter it, with one lookup per table. The first row with
    /// a conversation or prompt stands for it; rows that duplicate an earlier one are left out of
    /// the near-duplicate index (the earlier row already stands for them).
    pub fn check_insert(&mut self, fp: &Fingerprint, at: RowRef) -> DupCheck {
        let exact_of = self.exact.get_or_insert(Key128::new(fp.exact), at);
        let conflict_with = match fp.prompt_answer {
            Some((p, a)) => match self.prompts.get_or_insert(p, (a, at)) {
                Some((other, r)) => (exact_of.is_none() && other != a).then_some(r),
                None => None,
            },
            None => None,
        };
        let near_of = match (&mut self.lsh, &fp.sketch, exact_of) {
            (Some(lsh), Some(sk), None) => lsh.query_insert(sk, at.0).map(|(r, j)| (RowRef(r), j)),
            _ => None,
        };
        DupCheck { exact_of, near_of, conflict_with }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Turn;

    fn chat(q: &str, a: &str) -> Record {
        Record::chat(vec![Turn::new(Role::User, q), Turn::new(Role::Assistant, a)])
    }

    #[test]
    fn exact_near_and_conflicting_rows_are_told_apart() {
        let h = Sketcher::new(0.8, 128, 1);
        let long: String = (0..60).map(|i| format!("token{i} ")).collect();
        let mut idx = DupIndex::new(Some((0.8, 128)));
        let rows = [
            chat("What is the refund window?", "30 days."),
            chat("What is the refund window?", "30 days. "),
            chat("What is the refund window?", "45 days."),
            chat("Tell me", &long),
            chat("Tell me", &long.replace("token30 ", "other ")),
        ];
        let checks: Vec<DupCheck> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let fp = Fingerprint::of(r, Some(&h));
                let c = idx.check(&fp);
                assert_eq!(idx.check_insert(&fp, RowRef::new(0, i as u64 + 1)), c, "row {i}");
                c
            })
            .collect();
        assert_eq!(checks[0], DupCheck::default());
        assert_eq!(checks[1].exact_of, Some(RowRef::new(0, 1)));
        assert_eq!(checks[2].conflict_with, Some(RowRef::new(0, 1)));
        assert!(checks[2].exact_of.is_none());
        assert!(checks[3].near_of.is_none());
        assert_eq!(checks[4].near_of.map(|n| n.0), Some(RowRef::new(0, 4)));
    }

    #[test]
    fn row_refs_pack_file_and_line() {
        let r = RowRef::new(3, 123_456_789);
        assert_eq!((r.file(), r.line()), (3, 123_456_789));
    }
}
