//! The last hour, per service and per backend: rates computed from the counters of
//! successive snapshots, kept in fixed-size rings for the status page's charts.
//!
//! The daemon calls [`History::record`] every [`STEP_SECS`] with the snapshot of
//! that moment; nothing here reads a clock, so tests drive it with simulated time.
//! Each series holds [`POINTS`] `f32` values: 720 x 4 bytes = 2.8 KiB, two series
//! (connections/s, errors/s) per service and per backend, so 5.6 KiB for each,
//! whatever the traffic; in HTTP mode two more (p50 and p99 response time over each
//! step), 11.2 KiB in all. A service or backend that a reload removes leaves with its
//! series; one that a reload adds starts empty.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::protocol::{ResponseTimesSnapshot, ServiceSnapshot, Snapshot};

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
    /// HTTP mode: the median response time of each step, in ms (None: no response
    /// in that step); empty in TCP mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p50_ms: Vec<Option<f32>>,
    /// HTTP mode: the 99th percentile, as `p50_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_ms: Vec<Option<f32>>,
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
    /// HTTP mode: the median time to its response heads in each step, in ms (None:
    /// no response in that step); empty until it has answered a request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p50_ms: Vec<Option<f32>>,
    /// HTTP mode: the 99th percentile, as `p50_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_ms: Vec<Option<f32>>,
}

/// Rings of rates, fed with snapshots.
#[derive(Debug, Default)]
pub struct History {
    last_ms: Option<u64>,
    services: BTreeMap<String, Track>,
    backends: BTreeMap<(String, String), Track>,
}

/// One subject's series and the counters of the previous snapshot.
#[derive(Debug, Default)]
struct Track {
    counters: Option<(u64, u64)>,
    connections: VecDeque<f32>,
    errors: VecDeque<f32>,
    /// The response times of the previous snapshot, once there are any.
    times: Option<ResponseTimesSnapshot>,
    /// Quantiles in ms, NaN for a step without responses.
    p50: VecDeque<f32>,
    p99: VecDeque<f32>,
}

/// Appends `value`, dropping the oldest point of a full ring.
fn push_point(ring: &mut VecDeque<f32>, value: f32) {
    if ring.len() == POINTS {
        ring.pop_front();
    }
    ring.push_back(value);
}

/// A ring of quantiles as the page reads it: NaN is a step without responses.
fn quantiles(ring: &VecDeque<f32>) -> Vec<Option<f32>> {
    ring.iter().map(|&v| (!v.is_nan()).then_some(v)).collect()
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
                push_point(ring, (increase(now, before) as f64 / secs) as f32);
            }
        }
        self.counters = Some(counters);
    }

    /// Adds the p50 and p99 of the responses counted since the previous reading (a
    /// subject's first reading counts from zero: its counters start with it).
    fn push_times(&mut self, times: Option<&ResponseTimesSnapshot>, elapsed_secs: Option<f64>) {
        let Some(times) = times else { return };
        if elapsed_secs.is_some() {
            // A counter that went down (the subject was replaced) counts from zero.
            let before = self.times.as_ref().filter(|b| b.count() <= times.count());
            for (ring, q) in [(&mut self.p50, 0.5), (&mut self.p99, 0.99)] {
                let ms = times
                    .quantile_since(before, q)
                    .map_or(f32::NAN, |secs| (secs * 1000.0) as f32);
                push_point(ring, ms);
            }
        }
        self.times = Some(times.clone());
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
            track.push_times(s.response_times.as_ref(), elapsed);
            self.services.insert(s.name.clone(), track);
        }
        let mut backends = std::mem::take(&mut self.backends);
        for p in &snapshot.pools {
            for b in &p.backends {
                let key = (p.name.clone(), b.address.clone());
                let mut track = backends.remove(&key).unwrap_or_default();
                track.push((b.total, b.connect_errors), elapsed);
                track.push_times(b.response_times.as_ref(), elapsed);
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
                    p50_ms: quantiles(&t.p50),
                    p99_ms: quantiles(&t.p99),
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
                    p50_ms: quantiles(&t.p50),
                    p99_ms: quantiles(&t.p99),
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

    fn times(counts: &[u64]) -> ResponseTimesSnapshot {
        ResponseTimesSnapshot {
            bounds_secs: vec![0.01, 0.1, 1.0],
            counts: counts.to_vec(),
            sum_secs: 0.0,
        }
    }

    #[test]
    fn quantiles_are_of_each_step_and_a_step_without_responses_has_none() {
        let mut h = History::new();
        let mut s = snapshot(0, 0, &[("a", 0)]);
        let step = |s: &mut Snapshot, counts: &[u64]| {
            s.services[0].response_times = Some(times(counts));
            s.pools[0].backends[0].response_times = Some(times(counts));
        };
        step(&mut s, &[0, 0, 0, 0]);
        h.record(0, &s);
        // 100 fast responses, then 100 more of which 10 slow, then none.
        step(&mut s, &[100, 0, 0, 0]);
        h.record(5_000, &s);
        step(&mut s, &[190, 0, 10, 0]);
        h.record(10_000, &s);
        h.record(15_000, &s);
        let v = h.view();
        for (p50, p99) in [
            (&v.services[0].p50_ms, &v.services[0].p99_ms),
            (&v.backends[0].p50_ms, &v.backends[0].p99_ms),
        ] {
            assert_eq!(p50.len(), 3);
            assert_eq!(p50[0], Some(5.0));
            // 50 of the step's 90 fast responses: 50/90 of the way into the first bucket.
            assert!((p50[1].unwrap() - 5.556).abs() < 0.01, "{:?}", p50[1]);
            assert_eq!(p50[2], None);
            assert!(p99[0].unwrap() < 10.0);
            let slow = p99[1].unwrap();
            assert!((100.0..=1000.0).contains(&slow), "{slow}");
            assert_eq!(p99[2], None);
        }
    }

    #[test]
    fn tcp_subjects_have_no_quantiles() {
        let mut h = History::new();
        h.record(0, &snapshot(0, 0, &[("a", 0)]));
        h.record(5_000, &snapshot(10, 0, &[("a", 10)]));
        let v = h.view();
        assert!(v.services[0].p50_ms.is_empty() && v.backends[0].p99_ms.is_empty());
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("p50_ms"), "{json}");
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
