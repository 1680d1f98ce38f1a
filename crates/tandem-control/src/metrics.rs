//! Prometheus metrics, built from a [`Snapshot`] at each scrape.
//!
//! Counters come from tandem's own atomics, so each scrape registers fresh metric
//! families and fills them: nothing is kept here, and a reload that removes a backend
//! removes its series.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::protocol::{ResponseTimesSnapshot, Snapshot};

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReasonLabels {
    service: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    service: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    pool: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    pool: String,
    backend: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HaLabels {
    interface: String,
    vrid: String,
    state: String,
}

/// One VRRP instance (not `instance`: Prometheus names the scrape target so).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VridLabels {
    interface: String,
    vrid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VridReasonLabels {
    interface: String,
    vrid: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    service: String,
    listen: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// A histogram whose buckets were counted elsewhere (tandem's own atomics): set once
/// per scrape from a [`ResponseTimesSnapshot`].
#[derive(Debug, Default)]
struct Buckets(std::sync::Mutex<Option<ResponseTimesSnapshot>>);

impl Buckets {
    fn set(&self, times: &ResponseTimesSnapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(times.clone());
    }
}

impl TypedMetric for Buckets {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = times.as_ref() else {
            return Ok(());
        };
        // Per-bucket counts (the encoder adds them up); the last is above every bound.
        let buckets: Vec<(f64, u64)> = t
            .bounds_secs
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(t.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(t.sum_secs, t.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Counters<L> = Family<L, Counter>;
type Gauges<L> = Family<L, Gauge>;
type FloatGauges<L> = Family<L, Gauge<f64, AtomicU64>>;

fn counter<L>(registry: &mut Registry, name: &str, help: &str) -> Counters<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Counters::<L>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge<L>(registry: &mut Registry, name: &str, help: &str) -> Gauges<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Gauges::<L>::default();
    registry.register(name, help, family.clone());
    family
}

/// The OpenMetrics text exposition of `snapshot`.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("tandem");
    let info = gauge::<InfoLabels>(
        &mut registry,
        "build_info",
        "tandem version and node name (always 1)",
    );
    info.get_or_create(&InfoLabels {
        version: snapshot.version.clone(),
        node: snapshot.node.clone(),
    })
    .set(1);
    let uptime = Gauge::<i64>::default();
    registry.register_with_unit(
        "uptime",
        "Time since tandem started",
        Unit::Seconds,
        uptime.clone(),
    );
    uptime.set(snapshot.uptime_secs as i64);
    let reloads = Counter::<u64>::default();
    registry.register(
        "config_reloads",
        "Successful configuration reloads",
        reloads.clone(),
    );
    reloads.inc_by(snapshot.reloads);
    let workers = gauge::<WorkerLabels>(
        &mut registry,
        "worker_connections",
        "Connections open on each worker thread",
    );
    for (i, &open) in snapshot.workers.iter().enumerate() {
        workers
            .get_or_create(&WorkerLabels {
                worker: i.to_string(),
            })
            .set(open as i64);
    }

    let active = gauge::<ServiceLabels>(
        &mut registry,
        "service_connections_active",
        "Connections open now",
    );
    let total = counter::<ServiceLabels>(
        &mut registry,
        "service_connections",
        "Connections accepted and handled",
    );
    let rejected = counter::<ServiceLabels>(
        &mut registry,
        "service_connections_rejected",
        "Connections closed at once: the service was at max_conns",
    );
    let no_backend = counter::<ServiceLabels>(
        &mut registry,
        "service_no_backend",
        "Connections closed: no backend could be reached",
    );
    let accept_errors = counter::<ServiceLabels>(
        &mut registry,
        "service_accept_errors",
        "Accept errors (EMFILE and the like)",
    );
    let client_limited = counter::<ServiceLabels>(
        &mut registry,
        "service_client_limited",
        "Connections closed at once by a per-client limit (max_conns_per_client, rate_per_client)",
    );
    let node_limited = counter::<ServiceLabels>(
        &mut registry,
        "service_node_limited",
        "Connections closed at once: the node was at global.max_conns",
    );
    let tls_errors = counter::<ServiceLabels>(
        &mut registry,
        "service_tls_handshake_errors",
        "TLS handshakes with clients that failed or timed out (the connection was closed)",
    );
    let bad_requests = counter::<ServiceLabels>(
        &mut registry,
        "service_http_bad_requests",
        "HTTP requests refused with 400 as the client's error (framing, Host, request-target)",
    );
    let client_timeouts = counter::<ServiceLabels>(
        &mut registry,
        "service_http_client_timeouts",
        "HTTP responses cut off: the client did not read them within client_timeout",
    );
    let proxy_refused = counter::<ServiceReasonLabels>(
        &mut registry,
        "service_proxy_refused",
        "Connections closed at once under accept_proxy: untrusted_source, no_header, malformed, timeout",
    );
    let response_times = Family::<ServiceLabels, Buckets>::default();
    registry.register_with_unit(
        "service_http_response",
        "HTTP mode: time from a request's head read to its backend's response head",
        Unit::Seconds,
        response_times.clone(),
    );
    for s in &snapshot.services {
        let l = ServiceLabels {
            service: s.name.clone(),
        };
        if let Some(t) = &s.response_times {
            response_times.get_or_create(&l).set(t);
        }
        tls_errors.get_or_create(&l).inc_by(s.tls_handshake_errors);
        bad_requests.get_or_create(&l).inc_by(s.bad_requests);
        client_timeouts.get_or_create(&l).inc_by(s.client_timeouts);
        for (reason, n) in &s.proxy_refused {
            proxy_refused
                .get_or_create(&ServiceReasonLabels {
                    service: s.name.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
        active.get_or_create(&l).set(s.active as i64);
        total.get_or_create(&l).inc_by(s.total);
        rejected.get_or_create(&l).inc_by(s.rejected);
        no_backend.get_or_create(&l).inc_by(s.no_backend);
        accept_errors.get_or_create(&l).inc_by(s.accept_errors);
        client_limited.get_or_create(&l).inc_by(s.client_limited);
        node_limited.get_or_create(&l).inc_by(s.node_limited);
    }

    let cert_expiry = Gauges::<CertificateLabels>::default();
    registry.register_with_unit(
        "certificate_expiry",
        "Time until the certificate a TLS service serves for the name expires (negative once expired)",
        Unit::Seconds,
        cert_expiry.clone(),
    );
    for s in &snapshot.services {
        for c in &s.certificates {
            cert_expiry
                .get_or_create(&CertificateLabels {
                    service: s.name.clone(),
                    name: c.name.clone(),
                })
                .set(c.seconds_left);
        }
    }

    let b_active = gauge::<BackendLabels>(
        &mut registry,
        "backend_connections_active",
        "Connections open to the backend now",
    );
    let b_total = counter::<BackendLabels>(
        &mut registry,
        "backend_connections",
        "Connections handed to the backend",
    );
    let b_errors = counter::<BackendLabels>(
        &mut registry,
        "backend_connect_errors",
        "Failed connection attempts to the backend",
    );
    let b_bytes = Counters::<BytesLabels>::default();
    registry.register_with_unit(
        "backend",
        "Bytes relayed, by direction",
        Unit::Bytes,
        b_bytes.clone(),
    );
    let b_up = gauge::<BackendLabels>(
        &mut registry,
        "backend_up",
        "1 when health checks say up (or unchecked), 0 when down or not decided yet",
    );
    let b_enabled = gauge::<BackendLabels>(
        &mut registry,
        "backend_enabled",
        "0 while an operator has disabled (drained) the backend",
    );
    let b_latency = FloatGauges::<BackendLabels>::default();
    registry.register_with_unit(
        "backend_check_latency",
        "Duration of the last health check",
        Unit::Seconds,
        b_latency.clone(),
    );
    let b_check_failures = counter::<BackendLabels>(
        &mut registry,
        "backend_check_failures",
        "Health checks of the backend that failed",
    );
    let b_cert_days = gauge::<BackendLabels>(
        &mut registry,
        "backend_certificate_days_left",
        "Whole days until the certificate seen by the backend's TLS checks expires",
    );
    let b_response_times = Family::<BackendLabels, Buckets>::default();
    registry.register_with_unit(
        "backend_http_response",
        "HTTP mode: time from a request's head read to the backend's response head",
        Unit::Seconds,
        b_response_times.clone(),
    );
    let sticky = gauge::<PoolLabels>(
        &mut registry,
        "pool_sticky_entries",
        "Entries in the pool's sticky table",
    );
    for p in &snapshot.pools {
        if let Some(n) = p.sticky_entries {
            sticky
                .get_or_create(&PoolLabels {
                    pool: p.name.clone(),
                })
                .set(n as i64);
        }
        for b in &p.backends {
            let l = BackendLabels {
                pool: p.name.clone(),
                backend: b.address.clone(),
            };
            b_active.get_or_create(&l).set(b.active as i64);
            b_total.get_or_create(&l).inc_by(b.total);
            b_errors.get_or_create(&l).inc_by(b.connect_errors);
            for (direction, bytes) in [
                ("to_backend", b.bytes_to_backend),
                ("to_client", b.bytes_to_client),
            ] {
                b_bytes
                    .get_or_create(&BytesLabels {
                        pool: p.name.clone(),
                        backend: b.address.clone(),
                        direction: direction.into(),
                    })
                    .inc_by(bytes);
            }
            b_up.get_or_create(&l)
                .set(i64::from(matches!(b.health.as_str(), "up" | "unchecked")));
            b_enabled.get_or_create(&l).set(i64::from(b.enabled));
            if let Some(c) = &b.last_check {
                b_latency.get_or_create(&l).set(c.latency_ms / 1000.0);
                b_check_failures.get_or_create(&l).inc_by(b.check_failures);
            }
            if let Some(days) = b.certificate_days_left {
                b_cert_days.get_or_create(&l).set(days);
            }
            if let Some(t) = &b.response_times {
                b_response_times.get_or_create(&l).set(t);
            }
        }
    }

    if !snapshot.ha.is_empty() {
        let state = gauge::<HaLabels>(
            &mut registry,
            "vrrp_state",
            "1 for the current VRRP state, per instance",
        );
        let prio = gauge::<VridLabels>(
            &mut registry,
            "vrrp_priority",
            "VRRP priority after demotions, per instance",
        );
        let transitions = counter::<VridLabels>(
            &mut registry,
            "vrrp_transitions",
            "VRRP state changes, per instance",
        );
        let dropped = counter::<VridReasonLabels>(
            &mut registry,
            "vrrp_dropped_packets",
            "VRRP packets dropped, per instance and reason",
        );
        for ha in snapshot.ha.iter() {
            let l = VridLabels {
                interface: ha.interface.clone(),
                vrid: ha.vrid.to_string(),
            };
            for s in ["initialize", "backup", "master"] {
                state
                    .get_or_create(&HaLabels {
                        interface: l.interface.clone(),
                        vrid: l.vrid.clone(),
                        state: s.into(),
                    })
                    .set(i64::from(ha.state.eq_ignore_ascii_case(s)));
            }
            prio.get_or_create(&l).set(i64::from(ha.effective_priority));
            transitions.get_or_create(&l).inc_by(ha.transitions);
            for (reason, n) in &ha.dropped {
                dropped
                    .get_or_create(&VridReasonLabels {
                        interface: l.interface.clone(),
                        vrid: l.vrid.clone(),
                        reason: reason.clone(),
                    })
                    .inc_by(*n);
            }
        }
    }
    if !snapshot.sync.is_empty() {
        let connected = gauge::<PeerLabels>(
            &mut registry,
            "sync_peer_connected",
            "1 while the sync link to the peer is up",
        );
        let synced = gauge::<PeerLabels>(
            &mut registry,
            "sync_peer_synced",
            "1 once the bulk transfer with the peer is done",
        );
        let sent = counter::<PeerLabels>(
            &mut registry,
            "sync_entries_sent",
            "Sticky entries sent to the peer",
        );
        let received = counter::<PeerLabels>(
            &mut registry,
            "sync_entries_received",
            "Sticky entries received from the peer",
        );
        let version = gauge::<PeerLabels>(
            &mut registry,
            "sync_peer_protocol_version",
            "Sync protocol version of the last session with the peer (0 before one)",
        );
        let frames_dropped = counter::<PeerLabels>(
            &mut registry,
            "sync_frames_dropped",
            "Authentic frames from the peer that did not decode, dropped",
        );
        for p in &snapshot.sync {
            let l = PeerLabels {
                peer: p.address.clone(),
            };
            connected.get_or_create(&l).set(i64::from(p.connected));
            synced.get_or_create(&l).set(i64::from(p.synced));
            sent.get_or_create(&l).inc_by(p.sent);
            received.get_or_create(&l).inc_by(p.received);
            version.get_or_create(&l).set(i64::from(p.version));
            frames_dropped.get_or_create(&l).inc_by(p.frames_dropped);
        }
    }
    if let Some(r) = &snapshot.redirect {
        let live = gauge::<ForwardLabels>(
            &mut registry,
            "redirect_live_backends",
            "Backends the kernel sends new connections of this service address to",
        );
        for f in &r.forwards {
            live.get_or_create(&ForwardLabels {
                service: f.service.clone(),
                listen: f.listen.clone(),
            })
            .set(f.backends.len() as i64);
        }
        if let Some(c) = &r.conntrack {
            let running = Gauge::<i64>::default();
            registry.register(
                "conntrackd_running",
                "1 while conntrackd answers on its control socket",
                running.clone(),
            );
            running.set(i64::from(c.running));
            let restarts = Counter::<u64>::default();
            registry.register(
                "conntrackd_restarts",
                "conntrackd restarts by tandem",
                restarts.clone(),
            );
            restarts.inc_by(c.restarts);
            let states = gauge::<OriginLabels>(
                &mut registry,
                "conntrack_states",
                "Connection states held by conntrackd: local (this kernel's) and peer (ready to commit)",
            );
            for (origin, n) in [("local", c.internal), ("peer", c.external)] {
                states
                    .get_or_create(&OriginLabels {
                        origin: origin.into(),
                    })
                    .set(n as i64);
            }
        }
    }
    if let Some(a) = &snapshot.announce {
        let state = gauge::<AddressLabels>(
            &mut registry,
            "announce_state",
            "1 while this node announces the service address to its BGP speaker, 0 while withdrawn",
        );
        for x in &a.addresses {
            state
                .get_or_create(&AddressLabels {
                    address: x.address.clone(),
                })
                .set(i64::from(x.announced));
        }
        let drained = Gauge::<i64>::default();
        registry.register(
            "announce_operator_withdrawn",
            "1 while the operator has withdrawn this node (tandem ctl announce withdraw)",
            drained.clone(),
        );
        drained.set(i64::from(a.operator_withdrawn));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HaInstances, HaSnapshot, ServiceSnapshot};

    #[test]
    fn response_times_are_a_histogram_with_cumulative_buckets() {
        let snapshot = Snapshot {
            services: vec![ServiceSnapshot {
                name: "www".into(),
                response_times: Some(ResponseTimesSnapshot {
                    bounds_secs: vec![0.005, 0.1],
                    counts: vec![3, 0, 2],
                    sum_secs: 4.5,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = encode(&snapshot);
        for line in [
            "# TYPE tandem_service_http_response_seconds histogram",
            "tandem_service_http_response_seconds_sum{service=\"www\"} 4.5",
            "tandem_service_http_response_seconds_count{service=\"www\"} 5",
            "tandem_service_http_response_seconds_bucket{le=\"0.005\",service=\"www\"} 3",
            "tandem_service_http_response_seconds_bucket{le=\"0.1\",service=\"www\"} 3",
            "tandem_service_http_response_seconds_bucket{le=\"+Inf\",service=\"www\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn connections_per_worker_are_a_gauge_each() {
        let snapshot = Snapshot {
            workers: vec![7, 0],
            ..Default::default()
        };
        let text = encode(&snapshot);
        for line in [
            r#"tandem_worker_connections{worker="0"} 7"#,
            r#"tandem_worker_connections{worker="1"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        let one_thread = encode(&Snapshot::default());
        assert!(!one_thread.contains("tandem_worker_connections{"));
    }

    #[test]
    fn vrrp_metrics_are_per_instance() {
        let instance = |vrid: u8, state: &str| HaSnapshot {
            state: state.into(),
            interface: "eth0".into(),
            vrid,
            effective_priority: vrid,
            transitions: u64::from(vrid),
            ..Default::default()
        };
        let snapshot = Snapshot {
            ha: HaInstances(vec![instance(51, "MASTER"), instance(52, "BACKUP")]),
            ..Default::default()
        };
        let text = encode(&snapshot);
        for line in [
            r#"tandem_vrrp_state{interface="eth0",vrid="51",state="master"} 1"#,
            r#"tandem_vrrp_state{interface="eth0",vrid="52",state="master"} 0"#,
            r#"tandem_vrrp_state{interface="eth0",vrid="52",state="backup"} 1"#,
            r#"tandem_vrrp_priority{interface="eth0",vrid="52"} 52"#,
            r#"tandem_vrrp_transitions_total{interface="eth0",vrid="51"} 51"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }

    #[test]
    fn sync_peers_have_their_protocol_version_and_dropped_frames() {
        let snapshot = Snapshot {
            sync: vec![crate::protocol::PeerSnapshot {
                address: "10.9.0.2:7400".into(),
                version: 2,
                frames_dropped: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = encode(&snapshot);
        for line in [
            r#"tandem_sync_peer_protocol_version{peer="10.9.0.2:7400"} 2"#,
            r#"tandem_sync_frames_dropped_total{peer="10.9.0.2:7400"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }
}
