//! Response times of HTTP requests, counted into fixed buckets: what the metrics
//! export as a histogram and the status page turns into p50 and p99.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds; one more bucket counts what is slower
/// than the last.
pub const RESPONSE_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Counts of response times by bucket, and their sum; lock-free, updated on the
/// request path.
#[derive(Debug, Default)]
pub struct ResponseTimes {
    counts: [AtomicU64; RESPONSE_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// What [`ResponseTimes`] held at one moment: per-bucket counts (not cumulative),
/// the last one for times above every bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseTimesRead {
    /// Count per bucket of [`RESPONSE_BUCKETS`], then the count above the last.
    pub counts: Vec<u64>,
    /// Sum of all times, in seconds.
    pub sum_secs: f64,
}

impl ResponseTimes {
    /// Counts one response that took `took`.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = RESPONSE_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(RESPONSE_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> ResponseTimesRead {
        ResponseTimesRead {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_secs: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_land_in_the_bucket_of_their_upper_bound() {
        let t = ResponseTimes::default();
        t.observe(Duration::from_micros(500));
        t.observe(Duration::from_millis(1));
        t.observe(Duration::from_millis(3));
        t.observe(Duration::from_secs(500));
        let r = t.read();
        assert_eq!(r.counts[0], 2, "0.5 ms and 1 ms are <= 1 ms");
        assert_eq!(r.counts[2], 1, "3 ms is <= 5 ms");
        assert_eq!(
            r.counts[RESPONSE_BUCKETS.len()],
            1,
            "500 s is above every bound"
        );
        assert_eq!(r.counts.iter().sum::<u64>(), 4);
        assert!((r.sum_secs - 500.0045).abs() < 1e-6);
    }
}
