//! RFC 6962 / RFC 9162 §2.1 Merkle tree: leaf `SHA-256(0x00 ‖ entry)`, node
//! `SHA-256(0x01 ‖ left ‖ right)`, split at the largest power of two below n.
//!
//! Proofs are built from a slice of leaf hashes: each sibling in a path is the root of a disjoint
//! range of leaves, so a proof costs about n node hashes and O(log n) memory, with no tree kept.
//! Verification follows the bit-twiddling algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2, which
//! reject a proof of the wrong length by construction (the index walk must end exactly at the
//! root). Vectors and the cross-check against `ct-merkle`: `tests/merkle.rs`.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// MTH of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// MTH over the leaf hashes (the empty tree: SHA-256 of the empty string).
pub fn root(leaves: &[Hash]) -> Hash {
    subtree_root(leaves)
}

/// MTH(D[a:b]) of any range of leaf hashes, iteratively (a [`Frontier`] fed with the range), so a
/// million leaves need no recursion and no more than a 64-entry stack.
pub fn subtree_root(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::default();
    for leaf in leaves {
        f.push(*leaf);
    }
    f.root()
}

/// The largest power of two strictly less than `n` (RFC 6962's `k`); `n` ≥ 2.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// PATH(index, D[0:n]) — the audit path of leaf `index` in the tree of `leaves` (RFC 6962 §2.1.1).
/// Panics never: an index ≥ n returns `None`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let mut m = usize::try_from(index).ok()?;
    if m >= leaves.len() {
        return None;
    }
    // Walk down from the root; the RFC's recursion appends each sibling after the sub-path, so
    // the path is the siblings in reverse order of discovery.
    let mut path = Vec::with_capacity(64);
    let mut d = leaves;
    while d.len() > 1 {
        let k = split(d.len());
        if m < k {
            path.push(subtree_root(&d[k..]));
            d = &d[..k];
        } else {
            path.push(subtree_root(&d[..k]));
            d = &d[k..];
            m -= k;
        }
    }
    path.reverse();
    Some(path)
}

/// RFC 9162 §2.1.3.2.
#[must_use]
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// PROOF(old_size, D[0:n]) (RFC 6962 §2.1.2); `None` when old_size is 0 or > n.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> {
    let mut m = usize::try_from(old_size).ok()?;
    if m == 0 || m > leaves.len() {
        return None;
    }
    // SUBPROOF(m, D[0:n], b) unrolled: each step appends one sibling after the sub-proof, and the
    // recursion ends at m == n with MTH(D[0:m]) unless that is the old root itself (b).
    let mut proof = Vec::with_capacity(64);
    let mut d = leaves;
    let mut whole_old_tree = true;
    while m != d.len() {
        let k = split(d.len());
        if m <= k {
            proof.push(subtree_root(&d[k..]));
            d = &d[..k];
        } else {
            proof.push(subtree_root(&d[..k]));
            d = &d[k..];
            m -= k;
            whole_old_tree = false;
        }
    }
    if !whole_old_tree {
        proof.push(subtree_root(d));
    }
    proof.reverse();
    Some(proof)
}

/// RFC 9162 §2.1.4.2. Sizes as Go's `transparency-dev/merkle`: `old_size == new_size` needs an
/// empty proof and equal roots; `old_size == 0` is refused (nothing to prove: PROOF is undefined).
#[must_use]
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let Some((first, rest)) = proof.split_first() else { return false };
    // Step 2: an old tree that is a perfect subtree is its own first proof node (not sent).
    let (start, rest) = if old_size.is_power_of_two() { (old_root, proof) } else { (first, rest) };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

/// The right edge of a growing tree (the roots of its perfect subtrees, largest first): the root
/// after each append in O(log n), without keeping the leaves in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// Append one leaf hash: it merges with the peaks of equal height, one per trailing 1 bit of
    /// the old size (binary-counter carry).
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut carry = self.size;
        while carry & 1 == 1 {
            // The peak count equals the popcount of size, so a set bit always has a peak.
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            carry >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The perfect-subtree roots, largest (leftmost) first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }
    /// Equal to `root(all leaves pushed)`: the peaks folded right to left,
    /// `node(p_0, node(p_1, … node(p_{k-1}, p_k)))`.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else { return empty_root() };
        it.fold(*last, |acc, p| node_hash(p, &acc))
    }
}
