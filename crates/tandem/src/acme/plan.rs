//! When to order a certificate: pure, a function of the time (Unix seconds) and of
//! what is held, so it is tested with simulated time.
//!
//! A certificate is renewed at two thirds of its lifetime; one that does not cover
//! every configured name (the list changed) or is missing is ordered at once. After a
//! failed order the next waits [`backoff`]: 10 s doubling to at most an hour, but
//! never past the certificate's expiry less a tenth of its lifetime, so a long back-off
//! does not let a certificate lapse.

use std::time::Duration;

/// The first wait after a failed order.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between failed orders.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// A certificate held (issued earlier, on disk or from the peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its names (subject alternative names), lower case.
    pub names: Vec<String>,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

/// Failed orders since the last success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// How many in a row.
    pub count: u32,
    /// When the last one ended (Unix seconds).
    pub last: i64,
}

/// What to do about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Order now.
    Order(Why),
    /// Nothing before this time (Unix seconds).
    WaitUntil(i64),
}

/// Why an order is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No certificate is held.
    Missing,
    /// The certificate held lacks a configured name.
    NamesChanged,
    /// Two thirds of its lifetime have passed.
    Renewal,
}

/// When `held` is due for renewal: two thirds into its lifetime.
pub fn renew_at(held: &Held) -> i64 {
    held.not_before + (held.not_after - held.not_before).max(0) * 2 / 3
}

/// The wait after `count` failed orders in a row (`count` >= 1).
pub fn backoff(count: u32) -> Duration {
    let doublings = count.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// What to do at `now` for a certificate of `wanted` names.
pub fn next(wanted: &[String], held: Option<&Held>, failures: Failures, now: i64) -> Next {
    let (why, mut at) = match held {
        None => (Why::Missing, now),
        Some(h) if !wanted.iter().all(|n| h.names.contains(n)) => (Why::NamesChanged, now),
        Some(h) => (Why::Renewal, renew_at(h)),
    };
    if failures.count > 0 {
        let mut retry = failures.last + backoff(failures.count).as_secs() as i64;
        if let Some(h) = held.filter(|_| why == Why::Renewal) {
            // Near the end, keep trying at the first back-off's pace.
            let late = h.not_after - (h.not_after - h.not_before).max(0) / 10;
            if retry > late {
                retry = late.max(failures.last + BACKOFF_FIRST.as_secs() as i64);
            }
        }
        at = at.max(retry);
    }
    if now >= at {
        Next::Order(why)
    } else {
        Next::WaitUntil(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn held(list: &[&str], not_before: i64, not_after: i64) -> Held {
        Held {
            names: names(list),
            not_before,
            not_after,
        }
    }

    #[test]
    fn a_missing_certificate_is_ordered_at_once() {
        let want = names(&["a.test"]);
        assert_eq!(
            next(&want, None, Failures::default(), 1000),
            Next::Order(Why::Missing)
        );
    }

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let want = names(&["a.test", "b.test"]);
        // 90 days from day 0: renewal at day 60.
        let day = 86_400;
        let h = held(&["a.test", "b.test"], 0, 90 * day);
        assert_eq!(renew_at(&h), 60 * day);
        assert_eq!(
            next(&want, Some(&h), Failures::default(), 60 * day - 1),
            Next::WaitUntil(60 * day)
        );
        assert_eq!(
            next(&want, Some(&h), Failures::default(), 60 * day),
            Next::Order(Why::Renewal)
        );
        // A short test lifetime: 30 s from t=100, renewal at 120.
        let h = held(&["a.test", "b.test"], 100, 130);
        assert_eq!(
            next(&want, Some(&h), Failures::default(), 110),
            Next::WaitUntil(120)
        );
    }

    #[test]
    fn a_new_name_orders_again_at_once() {
        let want = names(&["a.test", "c.test"]);
        let h = held(&["a.test", "b.test"], 0, 1000);
        assert_eq!(
            next(&want, Some(&h), Failures::default(), 10),
            Next::Order(Why::NamesChanged)
        );
        // A name dropped from the list does not: the held one still covers the rest.
        let want = names(&["a.test"]);
        assert_eq!(
            next(&want, Some(&h), Failures::default(), 10),
            Next::WaitUntil(666)
        );
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    /// Simulated time: a CA that fails three times, then issues; the orders happen
    /// at 0, 10, 30 and 70 s.
    #[test]
    fn failed_orders_back_off_in_simulated_time() {
        let want = names(&["a.test"]);
        let mut failures = Failures::default();
        let mut held_now: Option<Held> = None;
        let mut orders = Vec::new();
        for now in 0..200 {
            if let Next::Order(_) = next(&want, held_now.as_ref(), failures, now) {
                orders.push(now);
                if orders.len() <= 3 {
                    failures = Failures {
                        count: failures.count + 1,
                        last: now,
                    };
                } else {
                    failures = Failures::default();
                    held_now = Some(held(&["a.test"], now, now + 90 * 86_400));
                }
            }
        }
        assert_eq!(orders, [0, 10, 30, 70]);
    }

    #[test]
    fn backoff_never_lets_a_renewal_lapse() {
        let want = names(&["a.test"]);
        // Lifetime 1000 s; renewal due at 666; the 10th failure at 700 would wait an
        // hour, past the expiry: the retry comes at 900 (a tenth before the end).
        let h = held(&["a.test"], 0, 1000);
        let failures = Failures {
            count: 10,
            last: 700,
        };
        assert_eq!(next(&want, Some(&h), failures, 800), Next::WaitUntil(900));
        // Past that point: every first back-off.
        let failures = Failures {
            count: 12,
            last: 950,
        };
        assert_eq!(next(&want, Some(&h), failures, 955), Next::WaitUntil(960));
        assert_eq!(
            next(&want, Some(&h), failures, 960),
            Next::Order(Why::Renewal)
        );
    }
}
