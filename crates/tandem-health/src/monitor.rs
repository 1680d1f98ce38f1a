//! Scheduling checks and publishing their effect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use tandem_balance::{Agent, BackendState, PoolSet};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::machine::{Probe, RiseFall};
use crate::probe::{Prober, fmt_duration};

/// Anything that can check a backend: the real [`Prober`], or a script in tests.
pub trait Checker: Send + Sync + 'static {
    /// Checks `target` once; must end within the check's timeout.
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>>;
}

impl Checker for Prober {
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(Prober::probe(self, target))
    }
}

/// The last check of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    /// Whether it passed.
    pub ok: bool,
    /// How long it took.
    pub latency: Duration,
    /// Why it failed.
    pub error: String,
    /// When it ended.
    pub at: SystemTime,
}

/// What is known of one checked backend.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    /// Whether it counts as up.
    pub up: bool,
    /// The last result.
    pub last: Option<LastCheck>,
    /// When the state last changed (or checking began).
    pub since: SystemTime,
    /// Checks run so far.
    pub checks: u64,
    /// Checks failed so far.
    pub failures: u64,
    /// The end of validity of the certificate the last TLS check saw.
    pub not_after: Option<SystemTime>,
    /// When a near expiry was last logged.
    expiry_logged: Option<SystemTime>,
    machine: RiseFall,
}

/// How often a certificate that is about to expire is logged again.
const EXPIRY_LOG_EVERY: Duration = Duration::from_secs(24 * 3600);

impl BackendHealth {
    /// Whether its checks have decided (first rise or fall reached): until then `up` is
    /// only the check's `initial` guess.
    pub fn is_decided(&self) -> bool {
        self.machine.is_decided()
    }
}

/// A change of state, as published to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Pool of the backend.
    pub pool: String,
    /// The backend.
    pub backend: SocketAddr,
    /// New state.
    pub up: bool,
    /// Consecutive results that caused it.
    pub after: u32,
    /// Why (the last failure, going down).
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// The health of every checked backend, readable by other parts of tandem (control
/// socket, metrics, VRRP tracking), and the stream of transitions.
#[derive(Debug)]
pub struct HealthBoard {
    /// Each pool's backends' slots, which their check tasks hold too (a result takes no
    /// lookup; a reader finds a backend without building a key).
    backends: RwLock<HashMap<String, HashMap<SocketAddr, Slot>>>,
    changes: broadcast::Sender<Transition>,
    /// Counts backends whose checks reached their first decision.
    decisions: watch::Sender<u64>,
    /// The last answer of each backend's agent (agent checks).
    agents: RwLock<HashMap<(String, SocketAddr), AgentSeen>>,
    /// Counts agent answers that changed a backend's weight.
    weights: watch::Sender<u64>,
}

/// One checked backend's health, shared by the board and the backend's check task.
type Slot = Arc<Mutex<BackendHealth>>;

fn lock(slot: &Mutex<BackendHealth>) -> MutexGuard<'_, BackendHealth> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a backend's agent said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeen {
    /// The states it set.
    pub agent: Agent,
    /// Its answer as read (first line, trimmed), or why asking failed.
    pub said: String,
    /// Whether the last ask failed (the states of the last answer stay).
    pub failed: bool,
    /// When.
    pub at: SystemTime,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard {
            backends: RwLock::default(),
            changes: broadcast::channel(1024).0,
            decisions: watch::channel(0).0,
            agents: RwLock::default(),
            weights: watch::channel(0).0,
        }
    }
}

impl HealthBoard {
    /// The health of `backend` in `pool`, when it is checked.
    pub fn get(&self, pool: &str, backend: SocketAddr) -> Option<BackendHealth> {
        self.read()
            .get(pool)
            .and_then(|backends| backends.get(&backend))
            .map(|slot| lock(slot).clone())
    }

    /// Every checked backend.
    pub fn all(&self) -> Vec<((String, SocketAddr), BackendHealth)> {
        self.read()
            .iter()
            .flat_map(|(pool, backends)| {
                backends
                    .iter()
                    .map(|(a, slot)| ((pool.clone(), *a), lock(slot).clone()))
            })
            .collect()
    }

    /// Whether every checked backend of `pool` has decided (first rise or fall
    /// reached); true for a pool without checks (or unknown here).
    pub fn decided(&self, pool: &str) -> bool {
        self.read().get(pool).is_none_or(|backends| {
            backends
                .values()
                .all(|slot| lock(slot).machine.is_decided())
        })
    }

    /// Changes each time a backend's checks reach their first decision (which need not
    /// be a transition: an initially down backend whose first checks fail).
    pub fn decisions(&self) -> watch::Receiver<u64> {
        self.decisions.subscribe()
    }

    /// A receiver of every transition from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.changes.subscribe()
    }

    /// What the agent of `backend` in `pool` said last, when its pool has an agent.
    pub fn agent(&self, pool: &str, backend: SocketAddr) -> Option<AgentSeen> {
        self.agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pool.to_string(), backend))
            .cloned()
    }

    /// Changes each time an agent's answer changes a backend's weight: the pools'
    /// selectors then need a new generation (the daemon builds it).
    pub fn weight_changes(&self) -> watch::Receiver<u64> {
        self.weights.subscribe()
    }

    /// Records one ask of an agent: an answer sets the backend's agent states, a
    /// failure keeps them; changes are logged once.
    fn record_agent(
        &self,
        pool: &str,
        backend: SocketAddr,
        state: &BackendState,
        asked: Result<String, String>,
    ) {
        let now = SystemTime::now();
        let before = state.agent();
        let seen = match asked.as_deref().map(crate::agent::parse) {
            Ok(Some(answer)) => {
                if !answer.ignored.is_empty() {
                    tracing::debug!(target: "tandem::health", pool, backend = %backend, ignored = ?answer.ignored, "agent words ignored");
                }
                AgentSeen {
                    agent: answer.agent,
                    said: asked
                        .as_deref()
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    failed: false,
                    at: now,
                }
            }
            Ok(None) => AgentSeen {
                agent: before,
                said: "empty answer".into(),
                failed: true,
                at: now,
            },
            Err(e) => AgentSeen {
                agent: before,
                said: e.clone(),
                failed: true,
                at: now,
            },
        };
        let previous = self
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pool.to_string(), backend), seen.clone());
        if seen.agent != before {
            if state.set_agent(seen.agent) {
                self.weights.send_modify(|n| *n += 1);
            }
            info!(target: "tandem::health", pool, backend = %backend, agent = %seen.said,
                "{pool} {backend}: agent says {} (was {})", seen.agent.describe(), before.describe());
        }
        let failed_before = previous.as_ref().is_some_and(|p| p.failed);
        if seen.failed && !failed_before {
            warn!(target: "tandem::health", pool, backend = %backend, "{pool} {backend}: {}; its last answer stays", seen.said);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, HashMap<SocketAddr, Slot>>> {
        self.backends.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<SocketAddr, Slot>>> {
        self.backends.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds a result; on a change, flips the backend's state, logs once and publishes.
    /// A certificate within `warn_expiry` of its end is logged (again each day).
    fn record(
        &self,
        slot: &Mutex<BackendHealth>,
        pool: &str,
        backend: SocketAddr,
        state: &BackendState,
        probe: Probe,
        warn_expiry: Option<Duration>,
    ) {
        let now = SystemTime::now();
        let change = {
            let mut entry = lock(slot);
            entry.checks += 1;
            if !probe.ok {
                entry.failures += 1;
            }
            if probe.not_after.is_some() {
                entry.not_after = probe.not_after;
            }
            if let (Some(warn), Some(not_after)) = (warn_expiry, probe.not_after) {
                let left = not_after.duration_since(now).unwrap_or_default();
                let due = entry
                    .expiry_logged
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= EXPIRY_LOG_EVERY);
                if left < warn && due {
                    entry.expiry_logged = Some(now);
                    warn!(target: "tandem::health", pool, backend = %backend,
                        days_left = left.as_secs() / 86_400,
                        "{pool} {backend}: certificate expires in {} (not after {})",
                        crate::probe::fmt_days(left), humantime::format_rfc3339_seconds(not_after));
                }
            }
            let was_decided = entry.machine.is_decided();
            let change = entry.machine.observe(&probe);
            if !was_decided && entry.machine.is_decided() {
                state.set_decided();
                self.decisions.send_modify(|n| *n += 1);
            }
            entry.last = Some(LastCheck {
                ok: probe.ok,
                latency: probe.latency,
                error: probe.error.clone(),
                at: now,
            });
            if let Some(c) = &change {
                entry.up = c.up;
                entry.since = now;
            }
            change
        };
        let Some(change) = change else { return };
        state.set_healthy(change.up);
        if change.up {
            info!(target: "tandem::health", pool, backend = %backend, latency_ms = probe.latency.as_millis() as u64,
                "{pool} {backend} up: after {} passed checks", change.after);
        } else {
            warn!(target: "tandem::health", pool, backend = %backend,
                "{pool} {backend} down: {} after {} checks", change.reason, change.after);
        }
        let _ = self.changes.send(Transition {
            pool: pool.to_string(),
            backend,
            up: change.up,
            after: change.after,
            reason: change.reason,
            at: now,
        });
    }
}

/// Runs one task per checked backend and keeps the board.
#[derive(Debug, Default)]
pub struct Monitor {
    board: Arc<HealthBoard>,
    tasks: HashMap<(String, SocketAddr), Watch>,
    agents: HashMap<(String, SocketAddr), AgentWatch>,
}

#[derive(Debug)]
struct AgentWatch {
    check: tandem_config::AgentCheck,
    state: Arc<BackendState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AgentWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Watch {
    check: tandem_config::Check,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// A monitor with no checks yet.
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// The board other parts read.
    pub fn board(&self) -> Arc<HealthBoard> {
        self.board.clone()
    }

    /// Makes the running checks match `pools` (a new generation): starts checks of new
    /// backends, stops those of removed ones, restarts those whose check changed.
    /// Backends that stay keep their state and counts. Unchecked backends count as up.
    pub fn apply(
        &mut self,
        pools: &PoolSet,
        configs: &[tandem_config::Pool],
    ) -> Result<(), String> {
        self.apply_with(pools, configs, |check| {
            Prober::new(check).map(|p| Arc::new(p) as Arc<dyn Checker>)
        })
    }

    /// [`Monitor::apply`] with the checker made by `make` (tests use a scripted one).
    pub fn apply_with(
        &mut self,
        pools: &PoolSet,
        configs: &[tandem_config::Pool],
        make: impl Fn(&tandem_config::Check) -> Result<Arc<dyn Checker>, String>,
    ) -> Result<(), String> {
        let mut wanted: HashMap<(String, SocketAddr), ()> = HashMap::new();
        // Checked pools interleave: the k-th of them starts k/checked of one backend's
        // slot later, so that the first backends of a thousand pools are not checked
        // at the same moment (HAProxy spreads all its servers' checks likewise).
        let checked = configs.iter().filter(|c| c.check.is_some()).count().max(1) as u32;
        let mut k = 0u32;
        for config in configs {
            let Some(pool) = pools.get(&config.name) else {
                continue;
            };
            let Some(check) = &config.check else {
                for b in &pool.backends {
                    b.state.set_healthy(true);
                    b.state.set_decided();
                }
                continue;
            };
            let checker = make(check).map_err(|e| format!("pool {}: {e}", config.name))?;
            let n = pool.backends.len().max(1) as u32;
            let offset = check.interval / n * k / checked;
            k += 1;
            for (i, b) in pool.backends.iter().enumerate() {
                let key = (config.name.clone(), b.address);
                wanted.insert(key.clone(), ());
                if self.tasks.get(&key).is_some_and(|w| &w.check == check) {
                    continue;
                }
                let slot = {
                    let mut map = self.board.write();
                    let backends = map.entry(config.name.clone()).or_default();
                    let slot = backends.entry(b.address).or_insert_with(|| {
                        Arc::new(Mutex::new(BackendHealth {
                            up: b.state.is_healthy(),
                            last: None,
                            since: SystemTime::now(),
                            checks: 0,
                            failures: 0,
                            not_after: None,
                            expiry_logged: None,
                            machine: if b.state.is_decided() {
                                RiseFall::decided(check.rise, check.fall, b.state.is_healthy())
                            } else {
                                RiseFall::new(check.rise, check.fall, b.state.is_healthy())
                            },
                        }))
                    });
                    lock(slot).machine.reconfigure(check.rise, check.fall);
                    slot.clone()
                };
                // Spread the pool's checks over the interval, plus a little jitter.
                let phase = check.interval * i as u32 / n + offset;
                let jitter = Duration::from_millis(fastrand::u64(
                    ..=(check.interval.as_millis() as u64 / 20).max(1),
                ));
                let task = tokio::spawn(watch(
                    self.board.clone(),
                    slot,
                    config.name.clone(),
                    b.address,
                    b.state.clone(),
                    checker.clone(),
                    Timing {
                        interval: check.interval,
                        first: phase + jitter,
                        warn_expiry: check.warn_expiry,
                    },
                ));
                self.tasks.insert(
                    key,
                    Watch {
                        check: check.clone(),
                        task,
                    },
                );
            }
        }
        self.tasks.retain(|k, _| wanted.contains_key(k));
        self.board.write().retain(|pool, backends| {
            backends.retain(|a, _| wanted.contains_key(&(pool.clone(), *a)));
            !backends.is_empty()
        });
        self.apply_agents(pools, configs);
        Ok(())
    }

    /// Makes the running agent checks match `pools`: a backend whose pool no longer
    /// has an agent goes back to ready and full weight.
    fn apply_agents(&mut self, pools: &PoolSet, configs: &[tandem_config::Pool]) {
        let mut wanted: HashMap<(String, SocketAddr), ()> = HashMap::new();
        for config in configs {
            let (Some(pool), Some(agent)) = (pools.get(&config.name), &config.agent) else {
                continue;
            };
            let n = pool.backends.len();
            for (i, b) in pool.backends.iter().enumerate() {
                let key = (config.name.clone(), b.address);
                wanted.insert(key.clone(), ());
                if self
                    .agents
                    .get(&key)
                    .is_some_and(|w| &w.check == agent && Arc::ptr_eq(&w.state, &b.state))
                {
                    continue;
                }
                let task = tokio::spawn(ask_agent(
                    self.board.clone(),
                    config.name.clone(),
                    b.address,
                    b.state.clone(),
                    agent.clone(),
                    crate::agent::phase(agent.interval, i, n),
                ));
                self.agents.insert(
                    key,
                    AgentWatch {
                        check: agent.clone(),
                        state: b.state.clone(),
                        task,
                    },
                );
            }
        }
        let mut weights_changed = false;
        self.agents.retain(|k, w| {
            let keep = wanted.contains_key(k);
            if !keep {
                weights_changed |= w.state.set_agent(Agent::READY);
            }
            keep
        });
        self.board
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| wanted.contains_key(k));
        if weights_changed {
            self.board.weights.send_modify(|n| *n += 1);
        }
    }

    /// Stops every check.
    pub fn stop(&mut self) {
        self.tasks.clear();
        self.agents.clear();
    }
}

/// When one backend's checks run, and how near an expiry is worth a warning.
struct Timing {
    interval: Duration,
    first: Duration,
    warn_expiry: Option<Duration>,
}

/// Asks one backend's agent every `check.interval`, from `first` on.
async fn ask_agent(
    board: Arc<HealthBoard>,
    pool: String,
    backend: SocketAddr,
    state: Arc<BackendState>,
    check: tandem_config::AgentCheck,
    first: Duration,
) {
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let asked = crate::agent::ask(&check, backend).await;
        board.record_agent(&pool, backend, &state, asked);
        next += check.interval;
        let now = Instant::now();
        if next < now {
            next = now + check.interval;
        }
    }
}

async fn watch(
    board: Arc<HealthBoard>,
    slot: Slot,
    pool: String,
    backend: SocketAddr,
    state: Arc<BackendState>,
    checker: Arc<dyn Checker>,
    timing: Timing,
) {
    let Timing {
        interval,
        first,
        warn_expiry,
    } = timing;
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let probe = checker.probe(backend).await;
        board.record(&slot, &pool, backend, &state, probe, warn_expiry);
        next += interval;
        let now = Instant::now();
        if next < now {
            // A check overran its slot: keep the phase, skip what was missed.
            tracing::debug!(pool, backend = %backend, "check late by {}", fmt_duration(now - next));
            next = now + interval;
        }
    }
}
