//! The whole tree in memory, every perfect subtree's root kept (2n hashes), so the root at any
//! size, an inclusion proof or a consistency proof costs O(log² n) instead of the O(n) that
//! `merkle::inclusion_proof` / `consistency_proof` pay per call. Export (one inclusion proof per
//! entry) and verify (one consistency proof per pair of checkpoints) need that; the proofs are the
//! RFC 6962 §2.1.1 / §2.1.2 definitions, and a test checks them against `merkle`'s.

use crate::audit::merkle::{self, Hash};

pub struct Tree {
    /// `levels[k][i]` = MTH(D[i·2^k : (i+1)·2^k]); `levels[0]` are the leaves.
    levels: Vec<Vec<Hash>>,
}

/// The largest power of two strictly below `n` (n ≥ 2): RFC 6962's split point.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() >= 2) {
            let up: Vec<Hash> = below.chunks_exact(2).map(|p| merkle::node_hash(&p[0], &p[1])).collect();
            levels.push(up);
        }
        Self { levels }
    }

    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.levels[0].get(index as usize)
    }

    /// MTH(D[a:b]) for 0 ≤ a < b ≤ size.
    fn mth(&self, a: u64, b: u64) -> Hash {
        let len = b - a;
        if len.is_power_of_two() && a.is_multiple_of(len) {
            let k = len.trailing_zeros() as usize;
            return self.levels[k][(a >> k) as usize];
        }
        let k = split(len);
        merkle::node_hash(&self.mth(a, a + k), &self.mth(a + k, b))
    }

    /// The root of the first `n` leaves (`None` past the end).
    pub fn root_at(&self, n: u64) -> Option<Hash> {
        match n {
            0 => Some(merkle::root(&[])),
            n if n <= self.size() => Some(self.mth(0, n)),
            _ => None,
        }
    }

    /// PATH(index, D[0:n]), leaf end first.
    pub fn inclusion(&self, index: u64, n: u64) -> Option<Vec<Hash>> {
        if index >= n || n > self.size() {
            return None;
        }
        let (mut a, mut b, mut path) = (0, n, Vec::new());
        while b - a > 1 {
            let k = split(b - a);
            if index < a + k {
                path.push(self.mth(a + k, b));
                b = a + k;
            } else {
                path.push(self.mth(a, a + k));
                a += k;
            }
        }
        path.reverse();
        Some(path)
    }

    /// PROOF(m, D[0:n]); `None` when m is 0 or m > n or n is past the end.
    pub fn consistency(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        if m == 0 || m > n || n > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        self.subproof(m, 0, n, true, &mut proof);
        Some(proof)
    }

    /// SUBPROOF(m, D[a:b], whole): the nodes in the order RFC 6962 §2.1.2 lists them.
    fn subproof(&self, m: u64, a: u64, b: u64, whole: bool, out: &mut Vec<Hash>) {
        if m == b - a {
            if !whole {
                out.push(self.mth(a, b));
            }
            return;
        }
        let k = split(b - a);
        if m <= k {
            self.subproof(m, a, a + k, whole, out);
            out.push(self.mth(a + k, b));
        } else {
            self.subproof(m - k, a + k, b, false, out);
            out.push(self.mth(a, a + k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn proofs_and_roots_equal_the_definitions_in_merkle() {
        let all = leaves(70);
        let tree = Tree::new(all.clone());
        for n in 1..=70u64 {
            let prefix = &all[..n as usize];
            assert_eq!(tree.root_at(n), Some(merkle::root(prefix)), "root {n}");
            for i in 0..n {
                assert_eq!(tree.inclusion(i, n), merkle::inclusion_proof(prefix, i), "inclusion {i} in {n}");
            }
            for m in 1..=n {
                assert_eq!(
                    tree.consistency(m, n),
                    merkle::consistency_proof(prefix, m),
                    "consistency {m} → {n}"
                );
            }
        }
        assert_eq!(tree.root_at(0), Some(merkle::root(&[])));
        assert_eq!((tree.root_at(71), tree.inclusion(70, 70), tree.consistency(0, 5)), (None, None, None));
        // Larger, uneven sizes: a few indexes and old sizes each.
        let all = leaves(5000);
        let tree = Tree::new(all.clone());
        for n in [1023u64, 1024, 1025, 3001, 4999, 5000] {
            let prefix = &all[..n as usize];
            for i in [0, 1, n / 3, n / 2 + 1, n - 2, n - 1] {
                assert_eq!(tree.inclusion(i, n), merkle::inclusion_proof(prefix, i), "inclusion {i} in {n}");
                assert_eq!(
                    tree.consistency(i + 1, n),
                    merkle::consistency_proof(prefix, i + 1),
                    "consistency {} → {n}",
                    i + 1
                );
            }
        }
    }
}
