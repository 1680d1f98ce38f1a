//! A backend server and the runtime state it keeps across configuration generations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};

use crate::latency::ResponseTimes;

/// Bumped whenever any backend's health or operator flag changes, so selectors know
/// to rebuild the sequence they walk (rare events; the hot path only reads it).
static STATE_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current state epoch. A reader that sees an epoch also sees the flag changes made
/// before it was bumped (Release/Acquire), so one that skips work while the epoch
/// stands misses no change, on weakly ordered CPUs too.
pub fn state_epoch() -> u64 {
    STATE_EPOCH.load(Acquire)
}

/// Runtime state of one backend: health, operator flag and counters. Shared by every
/// generation of the pool in which the backend stays, so a reload keeps it.
#[derive(Debug)]
pub struct BackendState {
    healthy: AtomicBool,
    decided: AtomicBool,
    enabled: AtomicBool,
    active: AtomicU32,
    total: AtomicU64,
    connect_errors: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    response_times: ResponseTimes,
    /// What the backend's agent said last ([`Agent`] bits; 0: nothing against it).
    agent: AtomicU8,
    /// The agent's weight, in percent of the configured one (100 without an agent).
    agent_weight_pct: AtomicU32,
}

/// What a backend's agent (the agent check) says of it, as tandem acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agent {
    /// "down" or "stopped": counts as down whatever the health check says.
    pub down: bool,
    /// "drain": healthy, but no new connections.
    pub drain: bool,
    /// "maint": in maintenance, no new connections.
    pub maint: bool,
    /// The weight in percent of the configured one (100: as configured; 0: no new
    /// connections, as HAProxy's weight 0).
    pub weight_pct: u32,
}

impl Agent {
    /// Nothing said against the backend: up, ready, full weight.
    pub const READY: Agent = Agent {
        down: false,
        drain: false,
        maint: false,
        weight_pct: 100,
    };

    fn bits(self) -> u8 {
        u8::from(self.down) | u8::from(self.drain) << 1 | u8::from(self.maint) << 2
    }

    /// Whether the agent lets the backend take new connections.
    pub fn allows_new(self) -> bool {
        self.bits() == 0 && self.weight_pct > 0
    }

    /// `weight` scaled by the agent's percentage (at least 1).
    pub fn scale(self, weight: u32) -> u32 {
        ((u64::from(weight) * u64::from(self.weight_pct) / 100) as u32).max(1)
    }

    /// How the status shows it: "ready", "drain", "maint", "down", with the weight
    /// when it is not 100%.
    pub fn describe(self) -> String {
        let mut words: Vec<String> = Vec::new();
        for (on, word) in [
            (self.down, "down"),
            (self.drain, "drain"),
            (self.maint, "maint"),
        ] {
            if on {
                words.push(word.into());
            }
        }
        if words.is_empty() {
            words.push("ready".into());
        }
        if self.weight_pct != 100 {
            words.push(format!("{}%", self.weight_pct));
        }
        words.join(" ")
    }
}

impl BackendState {
    /// A new state whose health is known: `healthy` (a backend without checks).
    pub fn new(healthy: bool) -> BackendState {
        let state = BackendState::pending(healthy);
        state.set_decided();
        state
    }

    /// A new state of a checked backend before its checks decided: `healthy` is the
    /// check's `initial` guess (see [`BackendState::is_decided`]).
    pub fn pending(healthy: bool) -> BackendState {
        BackendState {
            healthy: AtomicBool::new(healthy),
            decided: AtomicBool::new(false),
            enabled: AtomicBool::new(true),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            response_times: ResponseTimes::default(),
            agent: AtomicU8::new(0),
            agent_weight_pct: AtomicU32::new(100),
        }
    }

    /// What the backend's agent said last ([`Agent::READY`] without an agent).
    pub fn agent(&self) -> Agent {
        let bits = self.agent.load(Relaxed);
        Agent {
            down: bits & 1 != 0,
            drain: bits & 2 != 0,
            maint: bits & 4 != 0,
            weight_pct: self.agent_weight_pct.load(Relaxed),
        }
    }

    /// Records what the agent says; returns whether its weight changed (the pool's
    /// selectors then need a new generation, which the daemon builds).
    pub fn set_agent(&self, agent: Agent) -> bool {
        let old = self.agent();
        self.agent.store(agent.bits(), Relaxed);
        self.agent_weight_pct.store(agent.weight_pct, Relaxed);
        if old.allows_new() != agent.allows_new() || old.down != agent.down {
            STATE_EPOCH.fetch_add(1, Release);
        }
        old.weight_pct != agent.weight_pct
    }

    /// Whether it may be chosen for new connections as far as health, the operator
    /// and the agent go (connection limits aside).
    pub fn is_selectable(&self) -> bool {
        self.is_healthy() && self.is_enabled() && self.agent().allows_new()
    }

    /// Whether health checks say the backend is up.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Whether the backend counts as up: its checks say so and its agent does not
    /// say "down" ("drain", "maint" and weight 0 take no new connections but leave it
    /// up). What a pool's health (`track_pools`) counts.
    pub fn is_up(&self) -> bool {
        self.is_healthy() && !self.agent().down
    }

    /// Sets the health checks' verdict.
    pub fn set_healthy(&self, up: bool) {
        if self.healthy.swap(up, Relaxed) != up {
            STATE_EPOCH.fetch_add(1, Release);
        }
    }

    /// Whether the health is known: the backend has no checks, or its checks reached
    /// their first decision (first rise or fall). False while it is merely not yet
    /// checked, its health being the configured `initial` guess.
    pub fn is_decided(&self) -> bool {
        self.decided.load(Relaxed)
    }

    /// Records that the checks reached their first decision.
    pub fn set_decided(&self) {
        self.decided.store(true, Relaxed);
    }

    /// Response times of the HTTP requests it answered.
    pub fn response_times(&self) -> &ResponseTimes {
        &self.response_times
    }

    /// Whether the operator lets it take new connections (false = draining).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Enables or disables (drains) the backend.
    pub fn set_enabled(&self, enabled: bool) {
        if self.enabled.swap(enabled, Relaxed) != enabled {
            STATE_EPOCH.fetch_add(1, Release);
        }
    }

    /// Connections open now.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Connections handed to this backend since it was configured.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Failed connection attempts.
    pub fn connect_errors(&self) -> u64 {
        self.connect_errors.load(Relaxed)
    }

    /// Counts a failed connection attempt.
    pub fn record_connect_error(&self) {
        self.connect_errors.fetch_add(1, Relaxed);
    }

    /// Bytes relayed (client to backend, backend to client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_to_backend.load(Relaxed),
            self.bytes_to_client.load(Relaxed),
        )
    }

    /// Adds relayed bytes.
    pub fn record_bytes(&self, to_backend: u64, to_client: u64) {
        self.bytes_to_backend.fetch_add(to_backend, Relaxed);
        self.bytes_to_client.fetch_add(to_client, Relaxed);
    }

    /// Takes a connection slot unless `max_conns` (0 = no limit) are taken already.
    fn try_acquire(&self, max_conns: u32) -> bool {
        if max_conns == 0 {
            self.active.fetch_add(1, Relaxed);
        } else if self
            .active
            .fetch_update(Relaxed, Relaxed, |n| (n < max_conns).then_some(n + 1))
            .is_err()
        {
            return false;
        }
        self.total.fetch_add(1, Relaxed);
        true
    }
}

/// One backend of one pool generation: its configuration and its shared state.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of new connections.
    pub weight: u32,
    /// Connection limit, 0 = none.
    pub max_conns: u32,
    /// Serves only when no primary is usable.
    pub backup: bool,
    /// Runtime state, shared across generations.
    pub state: Arc<BackendState>,
}

impl Backend {
    /// Whether it may take a new connection now: healthy, enabled and under its limit.
    pub fn is_usable(&self) -> bool {
        self.state.is_selectable() && (self.max_conns == 0 || self.state.active() < self.max_conns)
    }

    /// Takes a connection slot; the slot is freed when the lease drops.
    pub fn lease(&self) -> Option<Lease> {
        self.state.try_acquire(self.max_conns).then(|| Lease {
            address: self.address,
            state: self.state.clone(),
        })
    }
}

/// A connection slot on a backend, held for the life of one relayed connection.
#[derive(Debug)]
pub struct Lease {
    /// The backend's address.
    pub address: SocketAddr,
    /// The backend's state, for counters.
    pub state: Arc<BackendState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Relaxed);
    }
}
