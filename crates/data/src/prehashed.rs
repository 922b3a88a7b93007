//! Hash maps keyed by values that are already hashes (xxh3 of rows, prompts, LSH bands): the
//! key's own bits are the bucket hash, instead of SipHash over them again on the sequential
//! dedup path. (Not DoS-hardened: a crafted file could collide xxh3 values, which a local
//! validator accepts; it would collide under SipHash too, since equal keys are equal.)

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the integer keys below; a correct fallback for any other key.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

pub type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// A 128-bit hash as two 64-bit halves: 8-byte aligned, so a map entry with a 64-bit value is
/// 24 bytes instead of a `u128`'s 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key128([u64; 2]);

impl Key128 {
    pub fn new(k: u128) -> Self {
        Self([k as u64, (k >> 64) as u64])
    }
}

impl std::hash::Hash for Key128 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}
