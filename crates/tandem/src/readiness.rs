//! When a starting node is ready to take master from a live peer: its sticky tables
//! are synced and the health checks of every pool it serves have decided.
//!
//! A node that preempts too early refuses clients (every checked backend still at its
//! `initial` guess, "down" by default) and moves pins (a pinned backend not yet "up"
//! here). [`Gate`] is the decision, pure: fed the time since start, whether the bulk
//! sync is in and which pools have decided, it says wait (and until when at most) or
//! go, with a summary for the log. The daemon holds VRRP preemption until it says go.
//! Only preemption waits: a node that hears no master takes over when the RFC's
//! master-down timer says so, ready or not (nobody else serves then). Route
//! announcement (`[announce]`) waits for the same gate: a node announces nothing with
//! an empty table or undecided checks. [`wait`] drives a gate with the live sync and
//! health state.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_config::Config;
use tandem_health::HealthBoard;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The longest a node waits for its checks to decide, whatever their settings.
pub const MAX_CHECK_WAIT: Duration = Duration::from_secs(30);

/// What the gate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not ready: ask again when something changes, or at `recheck_at` (time since
    /// start) at the latest, when the wait for checks runs out.
    Wait {
        /// When the check bound passes, if it still matters.
        recheck_at: Option<Duration>,
    },
    /// Ready (or the checks' bound passed): preemption may go on.
    Ready(Ready),
}

/// What was waited for, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Time since start when the gate opened.
    pub at: Duration,
    /// When the sticky tables were synced (None: no `[sync]`).
    pub synced_at: Option<Duration>,
    /// When the last watched pool decided (None: no checked pool, or the bound passed).
    pub decided_at: Option<Duration>,
    /// The checked pools waited for.
    pub pools: Vec<String>,
    /// Pools still undecided when the bound passed.
    pub undecided: Vec<String>,
    /// The bound on the wait for checks.
    pub bound: Duration,
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ready to preempt after {} ms:", self.at.as_millis())?;
        let mut parts = Vec::new();
        if let Some(t) = self.synced_at {
            parts.push(format!("sticky tables synced after {} ms", t.as_millis()));
        }
        if let Some(t) = self.decided_at {
            parts.push(format!(
                "checks of pool {} decided after {} ms",
                self.pools.join(", "),
                t.as_millis()
            ));
        }
        if !self.undecided.is_empty() {
            parts.push(format!(
                "checks of pool {} still undecided after {} ms (the bound): going on",
                self.undecided.join(", "),
                self.bound.as_millis()
            ));
        }
        if parts.is_empty() {
            parts.push("nothing to wait for".into());
        }
        write!(f, " {}", parts.join("; "))
    }
}

/// The readiness decision of one start.
#[derive(Debug, Clone)]
pub struct Gate {
    sync: bool,
    pools: Vec<String>,
    bound: Duration,
    synced_at: Option<Duration>,
    decided_at: Option<Duration>,
}

impl Gate {
    /// A gate waiting for the sync (when `sync`) and for the checked `pools`, whose
    /// checks get at most `bound` after start to decide.
    pub fn new(sync: bool, pools: Vec<String>, bound: Duration) -> Gate {
        Gate {
            sync,
            pools,
            bound,
            synced_at: None,
            decided_at: None,
        }
    }

    /// The gate for `config`: the bulk sync when `[sync]` is there, and every checked
    /// pool that a service serves (with its fallbacks) or `ha.track_pools` names;
    /// the bound is [`check_bound`] of those pools.
    pub fn for_config(config: &Config) -> Gate {
        let pools = watched_pools(config);
        let bound = check_bound(
            pools
                .iter()
                .filter_map(|p| config.pools.iter().find(|c| &c.name == p)?.check.as_ref()),
        );
        Gate::new(config.sync.is_some(), pools, bound)
    }

    /// Whether there is anything to wait for at all.
    pub fn waits(&self) -> bool {
        self.sync || !self.pools.is_empty()
    }

    /// Judges at `now` (time since start) whether the node is ready: `synced` is the
    /// sync's state, `decided` tells whether a pool's checks have decided.
    pub fn judge(
        &mut self,
        now: Duration,
        synced: bool,
        decided: impl Fn(&str) -> bool,
    ) -> Verdict {
        if self.sync && synced && self.synced_at.is_none() {
            self.synced_at = Some(now);
        }
        let undecided: Vec<String> = self.pools.iter().filter(|p| !decided(p)).cloned().collect();
        if undecided.is_empty() && self.decided_at.is_none() && !self.pools.is_empty() {
            self.decided_at = Some(now);
        }
        let bound_passed = now >= self.bound;
        let checks_done = undecided.is_empty() || bound_passed;
        if (self.sync && !synced) || !checks_done {
            return Verdict::Wait {
                recheck_at: (!checks_done).then_some(self.bound),
            };
        }
        Verdict::Ready(Ready {
            at: now,
            synced_at: self.synced_at,
            decided_at: self.decided_at,
            pools: self.pools.clone(),
            undecided,
            bound: self.bound,
        })
    }
}

/// Judges `gate` again whenever the sync's state (`synced`, when `[sync]` is there)
/// or a check's first decision changes, or its bound passes, until it says ready
/// (returned) or `stop` is cancelled (None). `started` is the node's start.
pub async fn wait(
    mut gate: Gate,
    mut synced: Option<watch::Receiver<bool>>,
    health: Arc<HealthBoard>,
    started: Instant,
    stop: CancellationToken,
) -> Option<Ready> {
    let mut decisions = health.decisions();
    loop {
        let now = started.elapsed();
        let is_synced = synced.as_mut().is_none_or(|s| *s.borrow_and_update());
        let recheck_at = match gate.judge(now, is_synced, |pool| health.decided(pool)) {
            Verdict::Ready(ready) => return Some(ready),
            Verdict::Wait { recheck_at } => recheck_at,
        };
        let sync_changed = async {
            match synced.as_mut() {
                Some(s) => {
                    if s.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let bound = async {
            match recheck_at {
                Some(at) => tokio::time::sleep_until((started + at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return None,
            () = sync_changed => {}
            r = decisions.changed() => if r.is_err() { return None },
            () = bound => {}
        }
    }
}

/// How long checks may take to decide: for each check, (the larger of rise and fall,
/// plus one) intervals plus its timeout (the extra interval covers the spread of the
/// pool's first checks over one interval), the longest of them, at most
/// [`MAX_CHECK_WAIT`]. Zero without checks.
pub fn check_bound<'a>(checks: impl IntoIterator<Item = &'a tandem_config::Check>) -> Duration {
    checks
        .into_iter()
        .map(|c| c.interval * (c.rise.max(c.fall).max(1) + 1) + c.timeout)
        .max()
        .unwrap_or_default()
        .min(MAX_CHECK_WAIT)
}

/// The checked pools whose health a master needs: those services use (their own and
/// their routes', and their fallback chains) and those `ha.track_pools` names, in
/// configuration order.
fn watched_pools(config: &Config) -> Vec<String> {
    let starts = config.services.iter().flat_map(|s| s.pools()).chain(
        config
            .ha
            .iter()
            .flat_map(|ha| ha.track_pools.keys().map(String::as_str)),
    );
    let mut wanted: Vec<&str> = Vec::new();
    for start in starts {
        // Follow the fallback chain, bounded by the number of pools (a cycle ends).
        let mut name = Some(start);
        for _ in 0..=config.pools.len() {
            let Some(pool) = name.and_then(|n| config.pools.iter().find(|p| p.name == n)) else {
                break;
            };
            if !wanted.contains(&pool.name.as_str()) {
                wanted.push(&pool.name);
            }
            name = pool.fallback.as_deref();
        }
    }
    config
        .pools
        .iter()
        .filter(|p| p.check.is_some() && wanted.contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_for_the_sync_and_every_pool_then_says_what_it_waited_for() {
        let mut gate = Gate::new(true, vec!["mail".into(), "web".into()], ms(2_000));
        let none = |_: &str| false;
        assert_eq!(
            gate.judge(ms(0), false, none),
            Verdict::Wait {
                recheck_at: Some(ms(2_000))
            }
        );
        // Synced first: still waiting for the checks.
        assert!(matches!(
            gate.judge(ms(300), true, none),
            Verdict::Wait { .. }
        ));
        assert!(matches!(
            gate.judge(ms(600), true, |p| p == "web"),
            Verdict::Wait { .. }
        ));
        let Verdict::Ready(ready) = gate.judge(ms(900), true, |_| true) else {
            panic!("ready once every pool decided");
        };
        assert_eq!(ready.synced_at, Some(ms(300)));
        assert_eq!(ready.decided_at, Some(ms(900)));
        assert!(ready.undecided.is_empty());
        assert_eq!(
            ready.to_string(),
            "ready to preempt after 900 ms: sticky tables synced after 300 ms; checks of pool mail, web decided after 900 ms"
        );
    }

    #[test]
    fn checks_decided_before_the_sync_wait_for_the_sync_without_a_bound() {
        let mut gate = Gate::new(true, vec!["web".into()], ms(1_000));
        assert_eq!(
            gate.judge(ms(500), false, |_| true),
            Verdict::Wait { recheck_at: None },
            "the sync has its own bound (lone node grace)"
        );
        assert!(matches!(
            gate.judge(ms(5_000), false, |_| true),
            Verdict::Wait { recheck_at: None }
        ));
        let Verdict::Ready(r) = gate.judge(ms(5_100), true, |_| true) else {
            panic!()
        };
        assert_eq!(
            (r.synced_at, r.decided_at),
            (Some(ms(5_100)), Some(ms(500)))
        );
    }

    #[test]
    fn checks_that_never_decide_are_waited_for_only_until_the_bound() {
        let mut gate = Gate::new(false, vec!["web".into()], ms(1_000));
        assert_eq!(
            gate.judge(ms(999), true, |_| false),
            Verdict::Wait {
                recheck_at: Some(ms(1_000))
            }
        );
        let Verdict::Ready(r) = gate.judge(ms(1_000), true, |_| false) else {
            panic!("the bound passed")
        };
        assert_eq!(r.undecided, vec!["web".to_string()]);
        assert_eq!(r.decided_at, None);
        assert!(
            r.to_string().contains("still undecided after 1000 ms"),
            "{r}"
        );
    }

    #[test]
    fn nothing_to_wait_for_is_ready_at_once() {
        let mut gate = Gate::new(false, Vec::new(), Duration::ZERO);
        assert!(!gate.waits());
        assert!(matches!(
            gate.judge(ms(0), false, |_| false),
            Verdict::Ready(_)
        ));
    }

    #[test]
    fn watches_the_checked_pools_of_services_fallbacks_and_tracking() {
        let text = r#"
[[pool]]
name = "smtp"
backends = [{ address = "10.0.0.1:25" }]
fallback = "spare"
check = { type = "tcp", interval = "500ms", timeout = "200ms", rise = 3, fall = 2 }

[[pool]]
name = "spare"
backends = [{ address = "10.0.0.9:25" }]
check = { type = "tcp", interval = "1s", timeout = "300ms", rise = 1, fall = 1 }

[[pool]]
name = "plain"
backends = [{ address = "10.0.0.2:80" }]

[[pool]]
name = "tracked"
backends = [{ address = "10.0.0.3:80" }]
check = { type = "tcp" }

[[pool]]
name = "idle"
backends = [{ address = "10.0.0.4:80" }]
check = { type = "tcp", interval = "60s" }

[[service]]
name = "smtp"
listen = ["127.0.0.1:2525"]
pool = "smtp"

[[service]]
name = "www"
listen = ["127.0.0.1:8080"]
pool = "plain"

[ha]
interface = "eth0"
vrid = 1
virtual_ips = ["192.0.2.10/24"]
track_pools = { tracked = 10 }
"#;
        let config = Config::parse(text, "test.toml", std::path::Path::new(".")).unwrap();
        let gate = Gate::for_config(&config);
        assert!(gate.waits());
        assert_eq!(gate.pools, vec!["smtp", "spare", "tracked"]);
        // tracked has the defaults: (3 + 1) x 2 s + 1 s; "idle" serves nobody.
        assert_eq!(gate.bound, ms(9_000));
        assert!(!gate.sync);
    }

    #[test]
    fn the_bound_follows_the_slowest_check_and_is_capped() {
        let check = |interval: u64, timeout: u64, rise: u32, fall: u32| tandem_config::Check {
            interval: ms(interval),
            timeout: ms(timeout),
            rise,
            fall,
            ..tandem_config::Check::new(tandem_config::CheckKind::Tcp)
        };
        // Defaults (2 s, 1 s, rise 2, fall 3): (3 + 1) x 2 s + 1 s.
        assert_eq!(
            check_bound([&tandem_config::Check::new(tandem_config::CheckKind::Tcp)]),
            ms(9_000)
        );
        let fast = check(200, 100, 3, 2);
        let slow = check(1_000, 500, 1, 1);
        assert_eq!(check_bound([&fast, &slow]), ms(2_500));
        assert_eq!(check_bound([&check(60_000, 1_000, 3, 3)]), MAX_CHECK_WAIT);
        assert_eq!(check_bound([]), Duration::ZERO);
    }
}
