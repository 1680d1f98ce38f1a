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
///
/// Until the checks have *decided* (`rise` passes or `fall` failures in a row since
/// checking began, whatever the initial state), the state is only the configured
/// guess (`initial`): [`RiseFall::is_decided`] tells the two apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
    /// `None` once decided; before that, the run of equal results since the start.
    first: Option<(bool, u32)>,
}

impl RiseFall {
    /// A machine starting in state `up`, not decided yet.
    pub fn new(rise: u32, fall: u32, up: bool) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
            first: Some((true, 0)),
        }
    }

    /// A machine in state `up` that counts as decided already (a backend whose state
    /// is known from before its checks began, e.g. an unchecked pool that gains a check
    /// on reload).
    pub fn decided(rise: u32, fall: u32, up: bool) -> RiseFall {
        RiseFall {
            first: None,
            ..RiseFall::new(rise, fall, up)
        }
    }

    /// Whether the backend counts as up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether the checks have decided: `rise` passes or `fall` failures in a row have
    /// been seen since checking began (a change of state decides too).
    pub fn is_decided(&self) -> bool {
        self.first.is_none()
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
        if let Some((ok, run)) = self.first {
            let run = if ok == probe.ok { run + 1 } else { 1 };
            let needed = if probe.ok { self.rise } else { self.fall };
            self.first = (run < needed).then_some((probe.ok, run));
        }
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
        self.first = None;
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
    fn checks_decide_after_rise_passes_or_fall_failures_whatever_the_initial_state() {
        // Initially down: three failures (fall) confirm it without a change.
        let mut m = RiseFall::new(2, 3, false);
        assert!(!m.is_decided());
        m.observe(&fail());
        m.observe(&fail());
        assert!(!m.is_decided());
        assert_eq!(m.observe(&fail()), None);
        assert!(m.is_decided() && !m.is_up());
        // Initially down: two passes (rise) bring it up, which decides.
        let mut m = RiseFall::new(2, 3, false);
        m.observe(&pass());
        assert!(!m.is_decided());
        assert!(m.observe(&pass()).unwrap().up);
        assert!(m.is_decided());
        // Initially up: two passes confirm it; alternating results never decide.
        let mut m = RiseFall::new(2, 3, true);
        for _ in 0..10 {
            m.observe(&pass());
            m.observe(&fail());
        }
        assert!(!m.is_decided(), "pass, fail, pass... decides nothing");
        m.observe(&pass());
        assert_eq!(m.observe(&pass()), None);
        assert!(m.is_decided() && m.is_up());
        // Once decided, it stays decided.
        m.observe(&fail());
        assert!(m.is_decided());
        assert!(RiseFall::decided(2, 3, true).is_decided());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut m = RiseFall::new(1, 1, true);
        assert!(!m.observe(&fail()).unwrap().up);
        assert!(m.observe(&pass()).unwrap().up);
    }
}
