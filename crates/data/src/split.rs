//! Exact-size random selection in one pass (Knuth, TAOCP vol. 2, §3.4.2, Algorithm S): to pick
//! k of n items seen in order, take each with probability (k − picked) / (n − seen). Used per
//! stratum, so the eval split has exactly round(F·n_s) rows of each stratum without holding rows.

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Selector {
    remaining: u64,
    wanted: u64,
}

impl Selector {
    pub fn new(n: u64, k: u64) -> Self {
        Self { remaining: n, wanted: k.min(n) }
    }

    /// Whether the next item is picked.
    pub fn pick(&mut self, rng: &mut impl Rng) -> bool {
        if self.remaining == 0 {
            return false;
        }
        let take = self.wanted > 0 && rng.random_range(0..self.remaining) < self.wanted;
        self.remaining -= 1;
        if take {
            self.wanted -= 1;
        }
        take
    }
}

/// Eval rows for a stratum of `n`: round(F·n), and at least one when F > 0 and n ≥ 2, but never
/// all of a stratum with more than one row.
pub fn eval_count(n: u64, fraction: f64) -> u64 {
    if n == 0 || fraction <= 0.0 {
        return 0;
    }
    let k = (fraction * n as f64).round() as u64;
    let k = if n >= 2 { k.max(1) } else { k };
    if n >= 2 { k.min(n - 1) } else { k.min(n) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn selection_picks_exactly_k_and_every_item_can_be_picked() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut hits = [0u32; 10];
        for _ in 0..2000 {
            let mut s = Selector::new(10, 3);
            let picked: Vec<usize> = (0..10).filter(|_| s.pick(&mut rng)).collect();
            assert_eq!(picked.len(), 3);
            picked.iter().for_each(|&i| hits[i] += 1);
        }
        // Each item is picked with probability 0.3: 600 of 2000 expected.
        assert!(hits.iter().all(|&h| (450..750).contains(&h)), "{hits:?}");
    }

    #[test]
    fn eval_count_rounds_and_keeps_training_rows() {
        assert_eq!(eval_count(100, 0.1), 10);
        assert_eq!(eval_count(3, 0.1), 1);
        assert_eq!(eval_count(2, 0.9), 1);
        assert_eq!(eval_count(1, 0.5), 1);
        assert_eq!(eval_count(50, 0.0), 0);
    }
}
