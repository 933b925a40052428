//! The generators' distributions, drawn from [`Rng`] only.
//!
//! Every draw that picks a value is integer arithmetic on the stream (weights are whole
//! numbers, durations are whole seconds uniform within a bin), and the only floating-point
//! work is `+ - * /` and comparisons, which IEEE 754 defines exactly: no `ln`, `exp` or `cos`,
//! whose last bit may differ between platforms' math libraries. So a seed gives the same
//! workload, byte for byte, on every platform, as [`Rng`] promises for its stream.

use crate::rng::Rng;

/// A value picked with probability proportional to its whole-number weight.
#[derive(Clone, Debug)]
pub struct Weighted<T> {
    items: Vec<(T, u32)>,
    total: u64,
}

impl<T: Copy> Weighted<T> {
    /// `items` must have a positive total weight.
    pub fn new(items: &[(T, u32)]) -> Weighted<T> {
        let total = items.iter().map(|&(_, w)| u64::from(w)).sum();
        assert!(total > 0, "a weighted choice needs a positive total weight");
        Weighted {
            items: items.to_vec(),
            total,
        }
    }

    pub fn pick(&self, rng: &mut Rng) -> T {
        let mut x = rng.below(self.total as usize) as u64;
        for &(item, w) in &self.items {
            if x < u64::from(w) {
                return item;
            }
            x -= u64::from(w);
        }
        unreachable!("x < total")
    }

    /// The mean of `f` over the choices.
    pub fn mean(&self, f: impl Fn(T) -> f64) -> f64 {
        let sum: f64 = self.items.iter().map(|&(t, w)| f(t) * f64::from(w)).sum();
        sum / self.total as f64
    }

    /// The items with their probabilities.
    pub fn shares(&self) -> impl Iterator<Item = (T, f64)> + '_ {
        self.items
            .iter()
            .map(|&(t, w)| (t, f64::from(w) / self.total as f64))
    }
}

/// One bin of a duration histogram: `lo_s..hi_s` seconds, with a weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    pub lo_s: u64,
    pub hi_s: u64,
    pub weight: u32,
}

/// A duration distribution as a histogram: a bin by weight, then a whole number of seconds
/// uniform in it. Heavy tails are written as bins: many short jobs, a few long ones holding
/// most of the GPU time.
#[derive(Clone, Debug)]
pub struct Hist {
    bins: Vec<Bin>,
    pick: Weighted<usize>,
}

impl Hist {
    /// `bins` as `(lo_s, hi_s, weight)`, each with `lo_s >= 1` and `hi_s > lo_s`.
    pub fn new(bins: &[(u64, u64, u32)]) -> Hist {
        let bins: Vec<Bin> = bins
            .iter()
            .map(|&(lo_s, hi_s, weight)| {
                assert!(lo_s >= 1 && hi_s > lo_s, "bin {lo_s}..{hi_s}");
                Bin { lo_s, hi_s, weight }
            })
            .collect();
        let pick = Weighted::new(
            &bins
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b.weight))
                .collect::<Vec<_>>(),
        );
        Hist { bins, pick }
    }

    /// Every bound times `factor` (rounded to whole seconds, at least 1 s and bins at
    /// least 1 s wide): the same shape, longer or shorter.
    pub fn scaled(&self, factor: f64) -> Hist {
        let scale = |s: u64| ((s as f64 * factor).round() as u64).max(1);
        let bins: Vec<(u64, u64, u32)> = self
            .bins
            .iter()
            .map(|b| {
                let lo = scale(b.lo_s);
                (lo, scale(b.hi_s).max(lo + 1), b.weight)
            })
            .collect();
        Hist::new(&bins)
    }

    pub fn bins(&self) -> &[Bin] {
        &self.bins
    }

    /// The probability of each bin.
    pub fn shares(&self) -> Vec<f64> {
        self.pick.shares().map(|(_, p)| p).collect()
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let b = self.bins[self.pick.pick(rng)];
        b.lo_s + rng.below((b.hi_s - b.lo_s) as usize) as u64
    }

    /// The exact mean of [`Hist::sample`], seconds.
    pub fn mean_s(&self) -> f64 {
        self.pick.mean(|i| {
            let b = self.bins[i];
            (b.lo_s + b.hi_s - 1) as f64 / 2.0
        })
    }

    /// The time left to run of a job found running at a random instant of a steady state:
    /// its length is drawn length-biased (a job twice as long is twice as likely to be
    /// running), then the time left is uniform in it. Returns `(length, left)`.
    pub fn residual(&self, rng: &mut Rng) -> (u64, u64) {
        // A bin with probability proportional to weight x mean length.
        let weights: Vec<f64> = self
            .bins
            .iter()
            .map(|b| f64::from(b.weight) * (b.lo_s + b.hi_s) as f64)
            .collect();
        let total: f64 = weights.iter().sum();
        let mut x = unit(rng) * total;
        let mut chosen = self.bins.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                chosen = i;
                break;
            }
            x -= w;
        }
        let b = self.bins[chosen];
        // Inside the bin, density proportional to the length: uniform draws accepted with
        // probability length / hi (at most 64 tries; the last is kept).
        let mut length = b.lo_s;
        for _ in 0..64 {
            length = b.lo_s + rng.below((b.hi_s - b.lo_s) as usize) as u64;
            if rng.below(b.hi_s as usize) < length as usize {
                break;
            }
        }
        (length, 1 + rng.below(length as usize) as u64)
    }
}

/// Uniform in `[0, 1)`, from the top 53 bits of the next output.
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Arrivals per hour of day: a working day's shape, flat from 10:00 to 17:00, lowest
/// (70 %) from 02:00 to 05:00. Relative weights, percent of the daytime plateau. A cluster of
/// this size runs round the clock (long jobs, submissions from several time zones, jobs queued
/// before leaving), so the night is lower, not empty.
pub const DIURNAL: [u32; 24] = [
    75, 72, 70, 70, 70, 72, 75, 80, 90, 95, 100, 100, // 00:00-11:59
    100, 100, 100, 100, 100, 100, 97, 95, 92, 88, 84, 80, // 12:00-23:59
];

/// Hours of the day counted as "day" (09:00-20:59) when a load is given for the day.
pub const DAY_HOURS: std::ops::Range<usize> = 9..21;

/// The mean of [`DIURNAL`] over [`DAY_HOURS`].
pub fn diurnal_day_mean() -> f64 {
    let day = &DIURNAL[DAY_HOURS];
    day.iter().map(|&w| f64::from(w)).sum::<f64>() / day.len() as f64
}

/// When arrivals come: an hourly rate profile (hour 0 starts at 0 s), any scale.
///
/// [`Profile::time`] draws the time of one arrival of a Poisson process with these rates,
/// given how many arrivals there are: an hour with probability proportional to its rate, a
/// second uniform within it. Drawing the number of arrivals first (as many as make the asked
/// GPU-time) and their times this way is the Poisson process conditioned on that number: the
/// offered load is then what was asked, not what a heavy tail happened to give.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Cumulative rates: `cumulative[h]` is the sum of the rates of hours `0..=h`.
    cumulative: Vec<f64>,
}

impl Profile {
    /// `rates` must have a positive sum and no negative entry.
    pub fn new(rates: &[f64]) -> Profile {
        let mut sum = 0.0;
        let cumulative: Vec<f64> = rates
            .iter()
            .map(|&r| {
                assert!(r >= 0.0, "a negative rate");
                sum += r;
                sum
            })
            .collect();
        assert!(sum > 0.0, "a profile needs a positive rate somewhere");
        Profile { cumulative }
    }

    pub fn hours(&self) -> usize {
        self.cumulative.len()
    }

    /// The second of one arrival.
    pub fn time(&self, rng: &mut Rng) -> u64 {
        let total = *self.cumulative.last().expect("at least one hour");
        let x = unit(rng) * total;
        let hour = self
            .cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len() - 1);
        hour as u64 * 3_600 + rng.below(3_600) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_picks_follow_the_weights() {
        let w = Weighted::new(&[(1u32, 1), (2, 3)]);
        let mut rng = Rng::new(7);
        let twos = (0..40_000).filter(|_| w.pick(&mut rng) == 2).count();
        assert!((29_000..31_000).contains(&twos), "{twos}");
        assert!((w.mean(f64::from) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn hist_samples_stay_in_their_bins_and_match_the_mean() {
        let h = Hist::new(&[(60, 600, 3), (3_600, 7_200, 1)]);
        let mut rng = Rng::new(1);
        let n = 100_000;
        let mut sum = 0u64;
        for _ in 0..n {
            let d = h.sample(&mut rng);
            assert!((60..600).contains(&d) || (3_600..7_200).contains(&d), "{d}");
            sum += d;
        }
        let mean = sum as f64 / n as f64;
        assert!(
            (mean / h.mean_s() - 1.0).abs() < 0.02,
            "{mean} {}",
            h.mean_s()
        );
        let doubled = h.scaled(2.0);
        assert_eq!(doubled.bins()[1].lo_s, 7_200);
        assert!((doubled.mean_s() / h.mean_s() - 2.0).abs() < 0.01);
        for _ in 0..1_000 {
            let (length, left) = h.residual(&mut rng);
            assert!(left >= 1 && left <= length);
        }
    }

    #[test]
    fn arrival_times_follow_the_hourly_rates() {
        let mut rng = Rng::new(3);
        let profile = Profile::new(&[1.0, 0.0, 3.0]);
        let times: Vec<u64> = (0..40_000).map(|_| profile.time(&mut rng)).collect();
        let in_hour = |h: u64| times.iter().filter(|&&t| t / 3600 == h).count();
        assert!((9_500..10_500).contains(&in_hour(0)), "{}", in_hour(0));
        assert_eq!(in_hour(1), 0);
        assert_eq!(in_hour(0) + in_hour(2), 40_000);
    }
}
