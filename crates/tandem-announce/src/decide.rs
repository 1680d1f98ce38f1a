//! Which addresses to announce, and why the others are withdrawn: a state machine over
//! (time, inputs), without IO, tested with simulated time.
//!
//! An address is announced when the node is ready (its sticky tables synced and its
//! checks decided: the daemon's readiness gate), the operator has not withdrawn the
//! node, tandem is not stopping, and the pools behind the address can serve by the
//! policy's [`WithdrawWhen`]. A health withdraw waits `withdraw_delay`; announcing
//! again after one waits until the pools have been healthy for `announce_delay` (so
//! a flapping backend does not flap the route). The operator's drain and shutdown act
//! at once.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use tandem_config::WithdrawWhen;

/// An address to announce and the pools behind it (those of the services listening
/// on it; each pool's fallback chain is the daemon's to follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service address (announced as /32 or /128).
    pub address: IpAddr,
    /// The pools of the services listening on it.
    pub pools: Vec<String>,
}

/// When and how fast to act on pool health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Which pool failures withdraw an address.
    pub withdraw_when: WithdrawWhen,
    /// How long the pools must have failed before the withdraw.
    pub withdraw_delay: Duration,
    /// How long the pools must have served again before an address withdrawn for
    /// their health is announced again.
    pub announce_delay: Duration,
}

impl Policy {
    /// The policy of an `[announce]` section.
    pub fn of(config: &tandem_config::Announce) -> Policy {
        Policy {
            withdraw_when: config.withdraw_when,
            withdraw_delay: config.withdraw_delay,
            announce_delay: config.announce_delay,
        }
    }
}

/// Why an address is in its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Announced: the node can serve it.
    Serving,
    /// Not yet: the node waits for the sync bulk table and for its checks.
    Starting,
    /// These pools behind it have no healthy backend.
    NoHealthyBackend(Vec<String>),
    /// The operator withdrew the node (`tandem ctl announce withdraw`).
    Operator,
    /// tandem is stopping: withdrawn before the drain.
    ShuttingDown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Serving => f.write_str("serving"),
            Reason::Starting => {
                f.write_str("starting: waiting for the sync bulk table and the checks")
            }
            Reason::NoHealthyBackend(pools) => {
                write!(f, "no healthy backend in pool {}", pools.join(", "))
            }
            Reason::Operator => f.write_str("withdrawn by the operator"),
            Reason::ShuttingDown => f.write_str("tandem is stopping"),
        }
    }
}

/// What the node knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<F: Fn(&str) -> bool> {
    /// The readiness gate has opened.
    pub ready: bool,
    /// The operator withdrew the node.
    pub operator: bool,
    /// tandem is stopping.
    pub stopping: bool,
    /// Whether a pool (with its fallbacks) has a healthy, enabled backend.
    pub healthy: F,
}

/// A change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start announcing the address.
    Announce(IpAddr),
    /// Stop announcing it, for this reason.
    Withdraw(IpAddr, Reason),
}

/// One address's state, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressState {
    /// The address.
    pub address: IpAddr,
    /// The pools behind it.
    pub pools: Vec<String>,
    /// Whether it is announced.
    pub announced: bool,
    /// Why.
    pub reason: Reason,
    /// When it last changed (time since start).
    pub since: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    target: Target,
    announced: bool,
    reason: Reason,
    since: Duration,
    /// Since when the pools fail by the policy (None: they serve).
    failing_since: Option<Duration>,
    /// Since when they serve (None: they fail).
    serving_since: Option<Duration>,
}

/// The decision for every address of one node.
#[derive(Debug, Clone)]
pub struct Announcer {
    policy: Policy,
    entries: Vec<Entry>,
    /// Addresses removed from the targets while announced: withdrawn at the next step.
    removed: Vec<IpAddr>,
}

impl Announcer {
    /// Nothing announced yet, every target waiting for the first [`Announcer::step`].
    pub fn new(policy: Policy, targets: Vec<Target>) -> Announcer {
        let mut a = Announcer {
            policy,
            entries: Vec::new(),
            removed: Vec::new(),
        };
        a.set_targets(targets, Duration::ZERO);
        a
    }

    /// Resumes the decision of the process this one replaces (an upgrade) at `now`:
    /// the `announced` addresses stay announced (a health failure withdraws them only
    /// after `withdraw_delay`, as it would have), those in `unhealthy` stay withdrawn
    /// for their pools' health (announced again after `announce_delay` of serving),
    /// the others wait for the next [`Announcer::step`] as at a start.
    pub fn resume(
        policy: Policy,
        targets: Vec<Target>,
        announced: &[IpAddr],
        unhealthy: &[IpAddr],
        now: Duration,
    ) -> Announcer {
        let mut a = Announcer::new(policy, targets);
        for e in &mut a.entries {
            e.since = now;
            if announced.contains(&e.target.address) {
                (e.announced, e.reason) = (true, Reason::Serving);
            } else if unhealthy.contains(&e.target.address) {
                e.reason = Reason::NoHealthyBackend(Vec::new());
            }
        }
        a
    }

    /// A reload: new targets and policy; addresses that stay keep their state,
    /// removed announced ones are withdrawn at the next step.
    pub fn reconfigure(&mut self, policy: Policy, targets: Vec<Target>, now: Duration) {
        self.policy = policy;
        self.set_targets(targets, now);
    }

    fn set_targets(&mut self, targets: Vec<Target>, now: Duration) {
        let mut old = std::mem::take(&mut self.entries);
        for target in targets {
            let entry = match old.iter().position(|e| e.target.address == target.address) {
                Some(i) => Entry {
                    target,
                    ..old.swap_remove(i)
                },
                None => Entry {
                    target,
                    announced: false,
                    reason: Reason::Starting,
                    since: now,
                    failing_since: None,
                    serving_since: None,
                },
            };
            self.entries.push(entry);
        }
        self.removed.extend(
            old.into_iter()
                .filter(|e| e.announced)
                .map(|e| e.target.address),
        );
    }

    /// Decides at `now` (time since start); returns what changed.
    pub fn step<F: Fn(&str) -> bool>(&mut self, now: Duration, inputs: &Inputs<F>) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .removed
            .drain(..)
            .map(|ip| Action::Withdraw(ip, Reason::Serving))
            .collect();
        let policy = self.policy;
        for e in &mut self.entries {
            let down: Vec<String> = e
                .target
                .pools
                .iter()
                .filter(|p| !(inputs.healthy)(p))
                .cloned()
                .collect();
            let failing = match policy.withdraw_when {
                WithdrawWhen::NoHealthyBackend => {
                    !e.target.pools.is_empty() && down.len() == e.target.pools.len()
                }
                WithdrawWhen::AnyPoolDown => !down.is_empty(),
                WithdrawWhen::Never => false,
            };
            if failing {
                e.serving_since = None;
                e.failing_since.get_or_insert(now);
            } else {
                e.failing_since = None;
                e.serving_since.get_or_insert(now);
            }
            let (announce, reason) = if inputs.stopping {
                (false, Reason::ShuttingDown)
            } else if inputs.operator {
                (false, Reason::Operator)
            } else if !inputs.ready {
                (false, Reason::Starting)
            } else if let Some(t) = e.failing_since {
                if e.announced && now < t + policy.withdraw_delay {
                    (true, Reason::Serving)
                } else {
                    (false, Reason::NoHealthyBackend(down))
                }
            } else {
                let held = matches!(e.reason, Reason::NoHealthyBackend(_))
                    && e.serving_since
                        .is_some_and(|t| now < t + policy.announce_delay);
                if !e.announced && held {
                    (false, e.reason.clone())
                } else {
                    (true, Reason::Serving)
                }
            };
            if announce != e.announced {
                e.announced = announce;
                e.since = now;
                actions.push(if announce {
                    Action::Announce(e.target.address)
                } else {
                    Action::Withdraw(e.target.address, reason.clone())
                });
            } else if reason != e.reason && !announce {
                // Withdrawn for another reason now (the operator, then a shutdown).
                e.since = now;
            }
            e.reason = reason;
        }
        actions
    }

    /// When a delay runs out and [`Announcer::step`] should be called again, if it
    /// matters (time since start).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.entries
            .iter()
            .filter_map(|e| match (e.announced, e.failing_since, e.serving_since) {
                (true, Some(t), _) => Some(t + self.policy.withdraw_delay),
                (false, None, Some(t)) if matches!(e.reason, Reason::NoHealthyBackend(_)) => {
                    Some(t + self.policy.announce_delay)
                }
                _ => None,
            })
            .min()
    }

    /// The addresses to hold now.
    pub fn announced(&self) -> Vec<IpAddr> {
        self.entries
            .iter()
            .filter(|e| e.announced)
            .map(|e| e.target.address)
            .collect()
    }

    /// Every address with its state, in target order.
    pub fn states(&self) -> Vec<AddressState> {
        self.entries
            .iter()
            .map(|e| AddressState {
                address: e.target.address,
                pools: e.target.pools.clone(),
                announced: e.announced,
                reason: e.reason.clone(),
                since: e.since,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(withdraw_when: WithdrawWhen, withdraw: u64, announce: u64) -> Policy {
        Policy {
            withdraw_when,
            withdraw_delay: ms(withdraw),
            announce_delay: ms(announce),
        }
    }

    fn targets() -> Vec<Target> {
        vec![
            Target {
                address: ip("192.0.2.10"),
                pools: vec!["web".into(), "api".into()],
            },
            Target {
                address: ip("2001:db8::10"),
                pools: vec!["mail".into()],
            },
        ]
    }

    /// A world: which pools are down, and the node's flags.
    #[derive(Default)]
    struct World {
        ready: bool,
        operator: bool,
        stopping: bool,
        down: HashSet<&'static str>,
    }

    impl World {
        fn step(&self, a: &mut Announcer, now: u64) -> Vec<Action> {
            let down = &self.down;
            a.step(
                ms(now),
                &Inputs {
                    ready: self.ready,
                    operator: self.operator,
                    stopping: self.stopping,
                    healthy: |p: &str| !down.contains(p),
                },
            )
        }
    }

    #[test]
    fn nothing_is_announced_before_the_node_is_ready() {
        let mut a = Announcer::new(policy(WithdrawWhen::NoHealthyBackend, 0, 0), targets());
        let mut w = World::default();
        assert!(w.step(&mut a, 0).is_empty());
        assert!(w.step(&mut a, 5_000).is_empty());
        assert!(a.states().iter().all(|s| s.reason == Reason::Starting));
        w.ready = true;
        assert_eq!(
            w.step(&mut a, 5_100),
            [
                Action::Announce(ip("192.0.2.10")),
                Action::Announce(ip("2001:db8::10"))
            ]
        );
        assert_eq!(a.announced().len(), 2);
        assert_eq!(a.states()[0].since, ms(5_100));
    }

    #[test]
    fn an_address_is_withdrawn_when_every_pool_behind_it_fails_and_comes_back_after_the_hold() {
        let mut a = Announcer::new(policy(WithdrawWhen::NoHealthyBackend, 0, 2_000), targets());
        let mut w = World {
            ready: true,
            ..World::default()
        };
        w.step(&mut a, 0);
        // One of two pools down: the address still serves the other.
        w.down.insert("web");
        assert!(w.step(&mut a, 100).is_empty());
        w.down.insert("api");
        assert_eq!(
            w.step(&mut a, 200),
            [Action::Withdraw(
                ip("192.0.2.10"),
                Reason::NoHealthyBackend(vec!["web".into(), "api".into()])
            )]
        );
        assert_eq!(
            a.states()[0].reason.to_string(),
            "no healthy backend in pool web, api"
        );
        assert_eq!(a.announced(), [ip("2001:db8::10")]);
        // Back at 1 s: held until it has served for 2 s.
        w.down.clear();
        assert!(w.step(&mut a, 1_000).is_empty());
        assert_eq!(a.next_deadline(), Some(ms(3_000)));
        assert!(w.step(&mut a, 2_999).is_empty());
        assert_eq!(w.step(&mut a, 3_000), [Action::Announce(ip("192.0.2.10"))]);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn a_flap_shorter_than_the_withdraw_delay_keeps_the_route() {
        let mut a = Announcer::new(policy(WithdrawWhen::NoHealthyBackend, 500, 0), targets());
        let mut w = World {
            ready: true,
            ..World::default()
        };
        w.step(&mut a, 0);
        w.down.insert("mail");
        assert!(w.step(&mut a, 1_000).is_empty());
        assert_eq!(a.next_deadline(), Some(ms(1_500)));
        w.down.clear();
        assert!(w.step(&mut a, 1_400).is_empty());
        assert_eq!(a.next_deadline(), None);
        w.down.insert("mail");
        assert!(w.step(&mut a, 2_000).is_empty());
        assert_eq!(
            w.step(&mut a, 2_500),
            [Action::Withdraw(
                ip("2001:db8::10"),
                Reason::NoHealthyBackend(vec!["mail".into()])
            )]
        );
    }

    #[test]
    fn any_pool_down_is_stricter_and_never_ignores_health() {
        let mut strict = Announcer::new(policy(WithdrawWhen::AnyPoolDown, 0, 0), targets());
        let mut never = Announcer::new(policy(WithdrawWhen::Never, 0, 0), targets());
        let mut w = World {
            ready: true,
            ..World::default()
        };
        w.step(&mut strict, 0);
        w.step(&mut never, 0);
        w.down.extend(["web", "mail"]);
        assert_eq!(w.step(&mut strict, 10).len(), 2);
        assert!(w.step(&mut never, 10).is_empty());
        assert_eq!(never.announced().len(), 2);
    }

    #[test]
    fn the_operator_and_the_shutdown_withdraw_at_once_and_say_so() {
        let mut a = Announcer::new(
            policy(WithdrawWhen::NoHealthyBackend, 5_000, 5_000),
            targets(),
        );
        let mut w = World {
            ready: true,
            ..World::default()
        };
        w.step(&mut a, 0);
        w.operator = true;
        let actions = w.step(&mut a, 10);
        assert_eq!(actions.len(), 2, "no delay for the operator");
        assert!(a.states().iter().all(|s| s.reason == Reason::Operator));
        w.operator = false;
        assert_eq!(w.step(&mut a, 20).len(), 2, "restored at once");
        w.stopping = true;
        w.step(&mut a, 30);
        assert!(a.announced().is_empty());
        assert!(a.states().iter().all(|s| s.reason == Reason::ShuttingDown));
        // Stopping wins over everything, for good.
        w.operator = false;
        assert!(w.step(&mut a, 40).is_empty());
    }

    #[test]
    fn a_reload_keeps_the_state_of_addresses_that_stay_and_withdraws_removed_ones() {
        let p = policy(WithdrawWhen::NoHealthyBackend, 0, 0);
        let mut a = Announcer::new(p, targets());
        let w = World {
            ready: true,
            ..World::default()
        };
        w.step(&mut a, 0);
        let mut next = targets();
        next.remove(1);
        next.push(Target {
            address: ip("192.0.2.11"),
            pools: vec!["web".into()],
        });
        a.reconfigure(p, next, ms(100));
        assert_eq!(
            w.step(&mut a, 100),
            [
                Action::Withdraw(ip("2001:db8::10"), Reason::Serving),
                Action::Announce(ip("192.0.2.11"))
            ]
        );
        assert_eq!(a.states()[0].since, ms(0), "the address that stayed");
        assert_eq!(a.announced(), [ip("192.0.2.10"), ip("192.0.2.11")]);
    }

    #[test]
    fn a_resumed_decision_keeps_what_was_announced_and_what_was_held() {
        let p = policy(WithdrawWhen::NoHealthyBackend, 500, 2_000);
        let mut a = Announcer::resume(
            p,
            targets(),
            &[ip("192.0.2.10")],
            &[ip("2001:db8::10")],
            ms(0),
        );
        assert_eq!(a.announced(), [ip("192.0.2.10")], "before any step");
        let mut w = World {
            ready: true,
            ..World::default()
        };
        // Nothing changes at the first step: the route stays, the held one waits.
        assert!(w.step(&mut a, 0).is_empty());
        assert_eq!(a.next_deadline(), Some(ms(2_000)));
        assert_eq!(
            w.step(&mut a, 2_000),
            [Action::Announce(ip("2001:db8::10"))]
        );
        // A failure after the resume still waits for the withdraw delay.
        w.down.extend(["web", "api"]);
        assert!(w.step(&mut a, 2_100).is_empty());
        assert_eq!(w.step(&mut a, 2_600).len(), 1);
        // A resumed node that is not ready (it cannot be: the predecessor was) would
        // withdraw: readiness is an input like any other.
        let mut b = Announcer::resume(p, targets(), &[ip("192.0.2.10")], &[], ms(0));
        assert_eq!(World::default().step(&mut b, 0).len(), 1);
    }

    proptest::proptest! {
        /// Whatever happens, an address is announced only while the node is ready, not
        /// withdrawn, not stopping, and (once past the delay) some pool behind it serves.
        #[test]
        fn announced_only_when_allowed(
            events in proptest::collection::vec((0u64..400, 0u8..6), 1..60),
        ) {
            let p = policy(WithdrawWhen::NoHealthyBackend, 100, 300);
            let mut a = Announcer::new(p, targets());
            let mut w = World::default();
            let mut now = 0;
            let mut failing_since: Option<u64> = None;
            for (dt, what) in events {
                now += dt;
                match what {
                    0 => w.ready = true,
                    1 => w.operator = !w.operator,
                    2 => { w.down.insert("web"); w.down.insert("api"); }
                    3 => { w.down.clear(); }
                    4 => w.stopping = true,
                    _ => {}
                }
                w.step(&mut a, now);
                let failing = w.down.contains("web") && w.down.contains("api");
                failing_since = if failing { failing_since.or(Some(now)) } else { None };
                let announced = a.announced().contains(&ip("192.0.2.10"));
                if announced {
                    proptest::prop_assert!(w.ready && !w.operator && !w.stopping);
                    proptest::prop_assert!(failing_since.is_none_or(|t| now < t + 100));
                }
                if w.ready && !w.operator && !w.stopping && !failing {
                    // Serving, or held after a health withdraw for at most the delay.
                    let s = &a.states()[0];
                    proptest::prop_assert!(announced || matches!(s.reason, Reason::NoHealthyBackend(_)));
                }
            }
        }
    }
}
