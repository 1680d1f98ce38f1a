//! The last hour, per service and per backend: rates computed from the counters of
//! successive snapshots, kept in fixed-size rings for the status page's charts.
//!
//! The daemon calls [`History::record`] every [`STEP_SECS`] with the snapshot of
//! that moment; nothing here reads a clock, so tests drive it with simulated time.
//! Each series holds [`POINTS`] `f32` values: 720 x 4 bytes = 2.8 KiB, two series
//! (connections/s, errors/s) per service and per backend, so 5.6 KiB for each,
//! whatever the traffic. A service or backend that a reload removes leaves with its
//! series; one that a reload adds starts empty.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::protocol::{ServiceSnapshot, Snapshot};

/// Seconds between two points.
pub const STEP_SECS: u64 = 5;

/// Points kept per series: one hour.
pub const POINTS: usize = 720;

/// What the page draws: each series ends at `end_ms`, one point per `step_secs`,
/// oldest first (a series younger than an hour is shorter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    /// Seconds between points.
    pub step_secs: u64,
    /// Points a full series holds.
    pub points: usize,
    /// When the newest point was taken, ms since the Unix epoch (0: none yet).
    pub end_ms: u64,
    /// Per service.
    pub services: Vec<ServiceHistory>,
    /// Per backend of each pool.
    pub backends: Vec<BackendHistory>,
}

impl Default for HistoryView {
    /// No points yet, with the step and length a [`History`] keeps.
    fn default() -> Self {
        History::new().view()
    }
}

/// A service's last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceHistory {
    /// The service.
    pub service: String,
    /// Connections accepted per second.
    pub connections: Vec<f32>,
    /// Connections turned away or failed per second: limits, no backend, accept,
    /// TLS and PROXY header errors, HTTP 400s and client timeouts.
    pub errors: Vec<f32>,
}

/// A backend's last hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendHistory {
    /// Its pool.
    pub pool: String,
    /// Its address.
    pub backend: String,
    /// Connections handed to it per second.
    pub connections: Vec<f32>,
    /// Failed connects to it per second.
    pub errors: Vec<f32>,
}

/// Rings of rates, fed with snapshots.
#[derive(Debug, Default)]
pub struct History {
    last_ms: Option<u64>,
    services: BTreeMap<String, Track>,
    backends: BTreeMap<(String, String), Track>,
}

/// One subject's two series and the counters of the previous snapshot.
#[derive(Debug, Default)]
struct Track {
    counters: Option<(u64, u64)>,
    connections: VecDeque<f32>,
    errors: VecDeque<f32>,
}

impl Track {
    /// Adds the rates since the previous counters (a counter that went down was
    /// reset, as Prometheus reads it: its whole value is the increase).
    fn push(&mut self, counters: (u64, u64), elapsed_secs: Option<f64>) {
        if let (Some(previous), Some(secs)) = (self.counters, elapsed_secs) {
            let increase = |now: u64, before: u64| if now >= before { now - before } else { now };
            for (ring, now, before) in [
                (&mut self.connections, counters.0, previous.0),
                (&mut self.errors, counters.1, previous.1),
            ] {
                if ring.len() == POINTS {
                    ring.pop_front();
                }
                ring.push_back((increase(now, before) as f64 / secs) as f32);
            }
        }
        self.counters = Some(counters);
    }
}

fn service_errors(s: &ServiceSnapshot) -> u64 {
    s.rejected
        + s.no_backend
        + s.accept_errors
        + s.client_limited
        + s.node_limited
        + s.tls_handshake_errors
        + s.bad_requests
        + s.client_timeouts
        + s.proxy_refused.values().sum::<u64>()
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Takes the snapshot of `at_ms` (ms since the epoch): one point per series, the
    /// rate since the previous call.
    pub fn record(&mut self, at_ms: u64, snapshot: &Snapshot) {
        let elapsed = self
            .last_ms
            .filter(|&last| at_ms > last)
            .map(|last| (at_ms - last) as f64 / 1000.0);
        if self.last_ms.is_some() && elapsed.is_none() {
            return;
        }
        self.last_ms = Some(at_ms);
        let mut services = std::mem::take(&mut self.services);
        for s in &snapshot.services {
            let mut track = services.remove(&s.name).unwrap_or_default();
            track.push((s.total, service_errors(s)), elapsed);
            self.services.insert(s.name.clone(), track);
        }
        let mut backends = std::mem::take(&mut self.backends);
        for p in &snapshot.pools {
            for b in &p.backends {
                let key = (p.name.clone(), b.address.clone());
                let mut track = backends.remove(&key).unwrap_or_default();
                track.push((b.total, b.connect_errors), elapsed);
                self.backends.insert(key, track);
            }
        }
    }

    /// The rings as the page reads them.
    pub fn view(&self) -> HistoryView {
        HistoryView {
            step_secs: STEP_SECS,
            points: POINTS,
            end_ms: self.last_ms.unwrap_or(0),
            services: self
                .services
                .iter()
                .map(|(name, t)| ServiceHistory {
                    service: name.clone(),
                    connections: t.connections.iter().copied().collect(),
                    errors: t.errors.iter().copied().collect(),
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|((pool, backend), t)| BackendHistory {
                    pool: pool.clone(),
                    backend: backend.clone(),
                    connections: t.connections.iter().copied().collect(),
                    errors: t.errors.iter().copied().collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BackendSnapshot, PoolSnapshot};

    fn snapshot(total: u64, refused: u64, backends: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            services: vec![ServiceSnapshot {
                name: "www".into(),
                total,
                no_backend: refused,
                ..Default::default()
            }],
            pools: vec![PoolSnapshot {
                name: "web".into(),
                backends: backends
                    .iter()
                    .map(|(a, t)| BackendSnapshot {
                        address: a.to_string(),
                        total: *t,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_counter_increases_over_the_elapsed_time() {
        let mut h = History::new();
        h.record(0, &snapshot(0, 0, &[("a", 0)]));
        h.record(5_000, &snapshot(50, 5, &[("a", 50)]));
        h.record(10_000, &snapshot(60, 5, &[("a", 60)]));
        let v = h.view();
        assert_eq!(v.end_ms, 10_000);
        assert_eq!(v.services[0].connections, vec![10.0, 2.0]);
        assert_eq!(v.services[0].errors, vec![1.0, 0.0]);
        assert_eq!(v.backends[0].connections, vec![10.0, 2.0]);
    }

    #[test]
    fn an_hour_is_kept_and_no_more() {
        let mut h = History::new();
        for i in 0..(POINTS as u64 + 100) {
            h.record(i * STEP_SECS * 1000, &snapshot(i * 5, 0, &[]));
        }
        let v = h.view();
        assert_eq!(v.services[0].connections.len(), POINTS);
        assert!(v.services[0].connections.iter().all(|&r| r == 1.0));
    }

    #[test]
    fn a_reset_counter_counts_from_zero_and_a_repeated_time_is_ignored() {
        let mut h = History::new();
        h.record(0, &snapshot(100, 0, &[]));
        h.record(5_000, &snapshot(10, 0, &[]));
        h.record(5_000, &snapshot(20, 0, &[]));
        assert_eq!(h.view().services[0].connections, vec![2.0]);
    }

    #[test]
    fn a_reload_removes_and_adds_backends() {
        let mut h = History::new();
        h.record(0, &snapshot(0, 0, &[("a", 0), ("b", 0)]));
        h.record(5_000, &snapshot(0, 0, &[("a", 5), ("b", 5)]));
        h.record(10_000, &snapshot(0, 0, &[("a", 10), ("c", 0)]));
        let v = h.view();
        let names: Vec<&str> = v.backends.iter().map(|b| b.backend.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(v.backends[0].connections, vec![1.0, 1.0]);
        assert!(v.backends[1].connections.is_empty(), "c starts empty");
    }
}
