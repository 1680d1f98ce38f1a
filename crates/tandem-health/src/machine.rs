//! The rise/fall hysteresis of one backend: pure, driven by check results.

use std::time::Duration;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether the check passed.
    pub ok: bool,
    /// How long it took.
    pub latency: Duration,
    /// Why it failed (empty when it passed).
    pub error: String,
    /// The end of validity of the certificate the check saw (TLS checks).
    pub not_after: Option<std::time::SystemTime>,
}

impl Probe {
    /// A passed check.
    pub fn pass(latency: Duration) -> Probe {
        Probe {
            ok: true,
            latency,
            error: String::new(),
            not_after: None,
        }
    }

    /// The same result, noting the certificate's end of validity.
    pub fn with_certificate(mut self, not_after: Option<std::time::SystemTime>) -> Probe {
        self.not_after = not_after;
        self
    }

    /// A failed check with its reason.
    pub fn fail(latency: Duration, error: impl Into<String>) -> Probe {
        Probe {
            ok: false,
            latency,
            error: error.into(),
            not_after: None,
        }
    }
}

/// A change of a backend's health state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new state.
    pub up: bool,
    /// Consecutive results that caused it.
    pub after: u32,
    /// The last result's error (going down) or empty (going up).
    pub reason: String,
}

/// Counts consecutive results: `rise` passes make a down backend up, `fall` failures
/// make an up backend down. A result that agrees with the state resets the other count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl RiseFall {
    /// A machine starting in state `up`.
    pub fn new(rise: u32, fall: u32, up: bool) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
        }
    }

    /// Whether the backend counts as up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Takes new thresholds (reload), keeping state and streak.
    pub fn reconfigure(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Feeds one result; returns the change it causes, if any.
    pub fn observe(&mut self, probe: &Probe) -> Option<Change> {
        if probe.ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = probe.ok;
        let after = self.streak;
        self.streak = 0;
        Some(Change {
            up: self.up,
            after,
            reason: probe.error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Probe {
        Probe::pass(Duration::from_millis(1))
    }
    fn fail() -> Probe {
        Probe::fail(Duration::from_millis(1), "http status 503")
    }

    #[test]
    fn down_backend_needs_rise_consecutive_passes() {
        let mut m = RiseFall::new(2, 3, false);
        assert_eq!(m.observe(&pass()), None);
        assert_eq!(m.observe(&fail()), None, "a failure resets the streak");
        assert_eq!(m.observe(&pass()), None);
        let c = m.observe(&pass()).expect("up after 2 passes");
        assert!(c.up && c.after == 2);
        assert!(m.is_up());
    }

    #[test]
    fn up_backend_needs_fall_consecutive_failures() {
        let mut m = RiseFall::new(2, 3, true);
        assert_eq!(m.observe(&fail()), None);
        assert_eq!(m.observe(&fail()), None);
        assert_eq!(m.observe(&pass()), None, "a pass resets the streak");
        assert_eq!(m.observe(&fail()), None);
        assert_eq!(m.observe(&fail()), None);
        let c = m.observe(&fail()).expect("down after 3 failures");
        assert_eq!(
            c,
            Change {
                up: false,
                after: 3,
                reason: "http status 503".into()
            }
        );
        // Further failures change nothing.
        assert_eq!(m.observe(&fail()), None);
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut m = RiseFall::new(1, 1, true);
        assert!(!m.observe(&fail()).unwrap().up);
        assert!(m.observe(&pass()).unwrap().up);
    }
}
