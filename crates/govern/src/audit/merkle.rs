//! RFC 6962 / RFC 9162 §2.1 Merkle tree: leaf `SHA-256(0x00 ‖ entry)`, node
//! `SHA-256(0x01 ‖ left ‖ right)`, split at the largest power of two below n.
//! API SKELETON — bodies being written; signatures are the contract.

pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash { todo!("{}", entry.len()) }
/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash { todo!("{left:?}{right:?}") }
/// MTH over the leaf hashes (the empty tree: SHA-256 of the empty string).
pub fn root(leaves: &[Hash]) -> Hash { todo!("{}", leaves.len()) }
/// PATH(index, D[0:n]) — the audit path of leaf `index` in the tree of `leaves` (RFC 6962 §2.1.1).
/// Panics never: an index ≥ n returns `None`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> { todo!("{}{index}", leaves.len()) }
/// RFC 9162 §2.1.3.2.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool { todo!("{leaf:?}{index}{size}{proof:?}{root:?}") }
/// PROOF(old_size, D[0:n]) (RFC 6962 §2.1.2); `None` when old_size is 0 or > n.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> { todo!("{}{old_size}", leaves.len()) }
/// RFC 9162 §2.1.4.2.
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    todo!("{old_size}{new_size}{old_root:?}{new_root:?}{proof:?}")
}

/// The right edge of a growing tree (the roots of its perfect subtrees, largest first): the root
/// after each append in O(log n), without keeping the leaves in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn push(&mut self, leaf: Hash) { todo!("{leaf:?}{:?}{}", self.peaks, self.size) }
    pub fn size(&self) -> u64 { self.size }
    /// Equal to `root(all leaves pushed)`.
    pub fn root(&self) -> Hash { todo!() }
}
