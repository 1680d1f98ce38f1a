//! Warnings that cannot flood the log: at most one line per period, with a count of
//! the ones left out.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A rate limit for one kind of log line.
#[derive(Debug)]
pub struct RateLimited {
    period_ms: u64,
    start: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimited {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> RateLimited {
        RateLimited {
            period_ms: period.as_millis() as u64,
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.period_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_left_out() {
        let r = RateLimited::new(Duration::from_millis(50));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.allow(), Some(2));
    }
}
