//! The workspace's seeded random stream: the same seed gives the same numbers on every
//! platform. The simulator's packing runs and `qm bench`'s generated clusters draw from it.
//!
//! The generator is SplitMix64 from the rust-random project's `rand_xoshiro`, started from the
//! seed itself as its state (`from_seed` of the seed's little-endian bytes; no extra mixing),
//! so a seed gives the same stream as the reference `splitmix64.c`, and the same as the
//! generator this workspace had before. The range helpers are ours and stay as they are: every
//! seeded figure depends on them. `qm-core` takes no randomness at all.

use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

/// A small, fast, seeded random stream (SplitMix64): the same seed gives the same run on every
/// platform.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::from_seed(seed.to_le_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0): the high 64 bits of the next output times `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// The next output modulo `n` (`n` 0 is taken as 1): nearly uniform in `0..n` for a small
    /// `n`. `qm bench` draws its scenarios with it.
    pub fn below_mod(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fisher-Yates, from the last element down, each swap partner drawn with [`Rng::below`].
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// `0..8` shuffled by seed 42, as the generator before the crate shuffled it.
    const SHUFFLED_42: [u32; 8] = [4, 3, 2, 0, 7, 6, 1, 5];

    /// The stream is SplitMix64's from the seed as its state: the values the generator produced
    /// before it came from a crate (and the reference `splitmix64.c` for seed 0). Every figure
    /// of a seeded run depends on them.
    #[test]
    fn the_stream_is_pinned() {
        let first = |seed: u64| {
            let mut rng = Rng::new(seed);
            [0; 4].map(|_: u64| rng.next_u64())
        };
        assert_eq!(
            first(0),
            [
                16_294_208_416_658_607_535,
                7_960_286_522_194_355_700,
                487_617_019_471_545_679,
                17_909_611_376_780_542_444
            ]
        );
        assert_eq!(
            first(42),
            [
                13_679_457_532_755_275_413,
                2_949_826_092_126_892_291,
                5_139_283_748_462_763_858,
                6_349_198_060_258_255_764
            ]
        );
        let mut rng = Rng::new(42);
        let below: Vec<usize> = (0..6).map(|_| rng.below(10)).collect();
        assert_eq!(below, [7, 1, 2, 3, 0, 8], "the high bits of the product");
        let mut rng = Rng::new(42);
        let below_mod: Vec<u64> = (0..6).map(|_| rng.below_mod(10)).collect();
        assert_eq!(below_mod, [3, 1, 8, 4, 0, 2], "the remainder");
        let mut items: Vec<u32> = (0..8).collect();
        Rng::new(42).shuffle(&mut items);
        assert_eq!(items, SHUFFLED_42);
    }
}
