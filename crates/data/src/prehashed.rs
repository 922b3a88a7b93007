//! The dedup index's tables: maps keyed by values that are already hashes (xxh3 of rows,
//! prompts, LSH bands), whose own bits pick the slot. Open addressing, so the slot a key lands
//! in is known before the lookup and the sequential pass can prefetch it for the rows a few
//! rows ahead (at a million rows every lookup was a cache miss, and together they were most of
//! that pass's time). (Not DoS-hardened: a crafted file could collide xxh3 values, which a
//! local validator accepts.)

/// A 128-bit hash as two 64-bit halves: 8-byte aligned, so a map entry with a 64-bit value is
/// 24 bytes instead of a `u128`'s 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Zeroable)]
pub struct Key128([u64; 2]);

impl Key128 {
    pub fn new(k: u128) -> Self {
        Self([k as u64, (k >> 64) as u64])
    }
}

/// A key that is already a hash: its slot in an [`OpenMap`] comes from these bits.
pub trait Prehashed: Copy + Eq + Default + bytemuck::Zeroable {
    fn bits(&self) -> u64;
}

impl Prehashed for u64 {
    fn bits(&self) -> u64 {
        *self
    }
}

impl Prehashed for Key128 {
    fn bits(&self) -> u64 {
        self.0[0] ^ self.0[1]
    }
}

/// A 64-bit hash in two halves: an entry with a `u32` value is 12 bytes, not 16 (the LSH band
/// tables hold one entry per band per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Zeroable)]
pub struct Key64([u32; 2]);

impl Key64 {
    pub fn new(k: u64) -> Self {
        Self([k as u32, (k >> 32) as u32])
    }
}

impl Prehashed for Key64 {
    fn bits(&self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
}

/// Insert-only map over [`Prehashed`] keys: linear probing, at most 3/4 full, a tag byte per
/// slot (0: empty) beside the entries. Each doubling allocates and re-inserts the whole table
/// (at a million rows the dedup index's 14 tables spent 0.7–1.2 s of the sequential pass
/// growing): [`OpenMap::reserve`] the keys expected when there is an estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMap<K, V> {
    tags: Vec<u8>,
    entries: Vec<(K, V)>,
    len: usize,
}

impl<K: Prehashed, V: Copy + Default + bytemuck::Zeroable> Default for OpenMap<K, V> {
    fn default() -> Self {
        Self { tags: vec![0; 16], entries: vec![Default::default(); 16], len: 0 }
    }
}

impl<K: Prehashed, V: Copy + Default + bytemuck::Zeroable> OpenMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, key: &K) -> usize {
        key.bits() as usize & (self.tags.len() - 1)
    }

    /// The slot holding `key`, or the empty slot where it would go.
    pub fn probe(&self, key: &K) -> Result<usize, usize> {
        let mask = self.tags.len() - 1;
        let mut i = self.home(key);
        loop {
            if self.tags[i] == 0 {
                return Err(i);
            }
            if self.entries[i].0 == *key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.probe(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn value(&self, slot: usize) -> &V {
        &self.entries[slot].1
    }

    /// Stores `key` → `value` in the empty slot `probe` gave, with no insert (and a
    /// [`OpenMap::reserve_one`] before the probe) in between.
    pub fn fill(&mut self, slot: usize, key: K, value: V) {
        self.tags[slot] = 1;
        self.entries[slot] = (key, value);
        self.len += 1;
    }

    /// The value under `key` if there is one; else inserts `value` and returns `None`.
    pub fn get_or_insert(&mut self, key: K, value: V) -> Option<V> {
        self.reserve_one();
        match self.probe(&key) {
            Ok(i) => Some(self.entries[i].1),
            Err(i) => {
                self.fill(i, key, value);
                None
            }
        }
    }

    /// Makes room for one more key (so a slot from `probe` stays valid for `fill`).
    pub fn reserve_one(&mut self) {
        if (self.len + 1) * 4 <= self.tags.len() * 3 {
            return;
        }
        self.grow_to(self.tags.len() * 2);
    }

    /// Makes room for `n` keys in all, so that inserting them never grows the table.
    pub fn reserve(&mut self, n: usize) {
        let slots = (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(16);
        if slots > self.tags.len() {
            self.grow_to(slots);
        }
    }

    fn grow_to(&mut self, n: usize) {
        let tags = std::mem::replace(&mut self.tags, vec![0; n]);
        // Zeroed by the allocator (fresh pages from the OS, not written until used), so that a
        // table reserved up front costs nothing before the rows arrive.
        let entries = std::mem::replace(&mut self.entries, bytemuck::zeroed_vec(n));
        for (_, e) in tags.into_iter().zip(entries).filter(|(t, _)| *t != 0) {
            if let Err(i) = self.probe(&e.0) {
                self.tags[i] = 1;
                self.entries[i] = e;
            }
        }
    }

    /// Starts loading `key`'s slot (a hint: no effect on contents).
    pub fn prefetch(&self, key: &K) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let i = self.home(key);
            let (tag, entry): (*const u8, *const (K, V)) = (&self.tags[i], &self.entries[i]);
            // SAFETY: SSE is part of x86_64, and a prefetch reads nothing (both are in bounds).
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(tag.cast());
                _mm_prefetch::<_MM_HINT_T0>(entry.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    #[test]
    fn an_open_map_keeps_the_first_value_of_each_key_like_a_hash_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut open: OpenMap<Key64, u32> = OpenMap::default();
        let mut std: HashMap<u64, u32> = HashMap::new();
        for v in 0..50_000u32 {
            // Few distinct keys at first (repeats), then many; some share their low bits.
            let k: u64 = if v < 5000 { rng.random_range(0..500) << 40 } else { rng.random() };
            let want = std.get(&k).copied();
            std.entry(k).or_insert(v);
            assert_eq!(open.get_or_insert(Key64::new(k), v), want);
        }
        assert_eq!(open.len(), std.len());
        for (k, v) in &std {
            assert_eq!(open.get(&Key64::new(*k)), Some(v));
        }
        assert_eq!(open.get(&Key64::new(12345)), std.get(&12345));
    }

    #[test]
    fn a_reserved_map_takes_that_many_keys_without_growing_and_keeps_its_contents() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for n in [0usize, 1, 11, 12, 13, 1000, 3072, 3073] {
            let mut m: OpenMap<u64, u32> = OpenMap::default();
            let early: Vec<u64> = (0..5).map(|_| rng.random()).collect();
            for (v, k) in early.iter().enumerate() {
                m.get_or_insert(*k, v as u32);
            }
            m.reserve(n);
            let slots = m.tags.len();
            for v in 5..n.max(5) {
                m.get_or_insert(rng.random(), v as u32);
            }
            assert_eq!(m.tags.len(), slots, "{n} keys reserved");
            for (v, k) in early.iter().enumerate() {
                assert_eq!(m.get(k), Some(&(v as u32)));
            }
        }
    }
}
