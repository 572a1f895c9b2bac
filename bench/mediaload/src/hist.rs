//! A log-linear histogram of non-negative integers (µs here): exact below
//! 64, then 32 buckets per power of two (≤ 3 % error), fixed size, cheap to
//! record and to merge across threads.

const LINEAR: u64 = 64;
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^48 (µs: nine years) have a bucket; larger ones clamp.
const BUCKETS: usize = LINEAR as usize + (48 - 6 + 1) * SUB;

/// Counts of values in buckets, plus the exact maximum and sum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], n: 0, max: 0, sum: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let b = 63 - v.leading_zeros(); // >= 6
    let shift = b - SUB_BITS;
    let mant = (v >> shift) as usize - SUB; // 0..32
    (LINEAR as usize + (b as usize - 6) * SUB + mant).min(BUCKETS - 1)
}

/// The middle of bucket `i`.
fn value_of(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let j = i - LINEAR as usize;
    let b = (j / SUB) as u32 + 6;
    let mant = (j % SUB + SUB) as u64;
    let shift = b - SUB_BITS;
    let low = mant << shift;
    low + (1u64 << shift) / 2
}

impl Histogram {
    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.n += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The largest value (exact), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum as f64 / self.n as f64 }
    }

    /// The value at quantile `q` (0..=1), 0 when empty; never above the max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [0u64, 1, 63, 64, 65, 100, 1000, 4095, 4096, 1 << 20, (1 << 40) + 12345] {
            let i = index(v);
            assert!(i >= last, "index of {v} went back");
            last = i;
            let mid = value_of(i);
            let err = mid.abs_diff(v) as f64 / (v.max(1)) as f64;
            assert!(err <= 0.04, "{v} -> bucket {i} -> {mid}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((480..=520).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) >= 960);
        assert_eq!(h.max(), 1000);
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
