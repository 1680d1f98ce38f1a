//! What an operator sees: the running state as the control protocol's snapshots (for
//! `tandem ctl`, the metrics and the status page).

use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use tandem_config::Mode;
use tandem_control::admin::StateSource;
use tandem_control::{
    BackendSnapshot, CheckSnapshot, HaSnapshot, PeerSnapshot, PoolSnapshot, ResponseTimesSnapshot,
    ServiceSnapshot, Snapshot,
};
use tandem_proxy::proxy_header::Refusal;

use super::Daemon;
use crate::redirect::RedirectPlane;

impl Daemon {
    /// Everything an operator sees, now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_of(|_| true)
    }

    /// [`Daemon::snapshot`] with only the pools `wanted` names (the event log's look
    /// each second takes only the pools that changed).
    pub(super) fn snapshot_of(&self, wanted: impl Fn(&str) -> bool) -> Snapshot {
        let config = self.config();
        let pools = self.pools();
        let services = self
            .services()
            .iter()
            .map(|rs| {
                let c = rs.service.config.load();
                let st = &rs.service.stats;
                ServiceSnapshot {
                    name: c.name.clone(),
                    mode: c.mode.name().into(),
                    pool: c.pool.clone(),
                    listen: rs.bound.iter().map(ToString::to_string).collect(),
                    active: st.active.load(Relaxed),
                    total: st.total.load(Relaxed),
                    rejected: st.rejected.load(Relaxed),
                    no_backend: st.no_backend.load(Relaxed),
                    accept_errors: st.accept_errors.load(Relaxed),
                    client_limited: st.client_limited.load(Relaxed),
                    node_limited: st.node_limited.load(Relaxed),
                    tls_handshake_errors: st.tls_handshake_errors.load(Relaxed),
                    bad_requests: st.bad_requests.load(Relaxed),
                    client_timeouts: st.client_timeouts.load(Relaxed),
                    proxy_refused: if c.accept_proxy {
                        Refusal::ALL
                            .iter()
                            .map(|r| {
                                (
                                    r.name().to_string(),
                                    st.proxy_refused[r.index()].load(Relaxed),
                                )
                            })
                            .collect()
                    } else {
                        Default::default()
                    },
                    response_times: (c.mode == Mode::Http)
                        .then(|| response_times(&st.response_times)),
                    certificates: c.tls.as_ref().map(certificates).unwrap_or_default(),
                }
            })
            .chain(
                config
                    .services
                    .iter()
                    .filter(|s| s.mode == Mode::Redirect)
                    .map(|s| ServiceSnapshot {
                        name: s.name.clone(),
                        mode: s.mode.name().into(),
                        pool: s.pool.clone(),
                        listen: s.listen.iter().map(ToString::to_string).collect(),
                        ..ServiceSnapshot::default()
                    }),
            )
            .collect();
        let pools = config
            .pools
            .iter()
            .filter(|pc| wanted(&pc.name))
            .filter_map(|pc| {
                let p = pools.get(&pc.name)?;
                Some(PoolSnapshot {
                    name: p.name.clone(),
                    balance: pc.balance.name().into(),
                    sticky_entries: p.sticky.as_ref().map(|t| t.len() as u64),
                    fallback: p.fallback.clone(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| self.backend_snapshot(&p.name, b))
                        .collect(),
                })
            })
            .collect();
        Snapshot {
            node: config.global.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.shared.started.elapsed().as_secs(),
            config_path: self
                .shared
                .config_path
                .as_ref()
                .map(|p| p.display().to_string()),
            reloads: self.shared.reloads.load(Relaxed),
            workers: self
                .shared
                .workers
                .as_ref()
                .map(|w| w.live())
                .unwrap_or_default(),
            services,
            pools,
            ha: tandem_control::HaInstances(
                self.vrrp()
                    .iter()
                    .map(|v| ha_snapshot(&v.status()))
                    .collect(),
            ),
            redirect: self.redirect().map(|p| redirect_summary(&p)),
            announce: self.shared.announce.as_ref().map(|a| a.snapshot()),
            sync: self
                .sync()
                .map(|s| {
                    s.peers()
                        .into_iter()
                        .map(|p| PeerSnapshot {
                            address: p.address,
                            name: p.name,
                            connected: p.connected,
                            synced: p.synced,
                            sent: p.sent,
                            received: p.received,
                            last_error: p.last_error,
                            version: p.version,
                            frames_dropped: p.frames_dropped,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The redirect services' rules, the kernel's table and conntrackd asked now.
    pub async fn redirect_snapshot(&self) -> Option<tandem_control::RedirectSnapshot> {
        let plane = self.redirect()?;
        plane.conntrack_status().await;
        let mut snapshot = redirect_summary(&plane);
        snapshot.table = plane.table().await;
        Some(snapshot)
    }

    pub(super) fn backend_snapshot(
        &self,
        pool: &str,
        b: &tandem_balance::Backend,
    ) -> BackendSnapshot {
        let health = self.shared.health.get(pool, b.address);
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs();
        let (to_backend, to_client) = b.state.bytes();
        BackendSnapshot {
            address: b.address.to_string(),
            weight: b.weight,
            backup: b.backup,
            max_conns: b.max_conns,
            health: match &health {
                None => "unchecked",
                Some(h) if h.up => "up",
                // Its checks have not decided yet (initial = "down"): new clients
                // wait for it, its pins are followed.
                Some(h) if !h.is_decided() => "pending",
                Some(_) => "down",
            }
            .into(),
            enabled: b.state.is_enabled(),
            active: u64::from(b.state.active()),
            total: b.state.total(),
            bytes_to_backend: to_backend,
            bytes_to_client: to_client,
            connect_errors: b.state.connect_errors(),
            check_failures: health.as_ref().map_or(0, |h| h.failures),
            certificate_days_left: health.as_ref().and_then(|h| h.not_after).map(|t| {
                match t.duration_since(now) {
                    Ok(left) => (left.as_secs() / 86_400) as i64,
                    Err(past) => -((past.duration().as_secs() / 86_400) as i64) - 1,
                }
            }),
            last_check: health
                .as_ref()
                .and_then(|h| h.last.as_ref())
                .map(|c| CheckSnapshot {
                    ok: c.ok,
                    latency_ms: c.latency.as_secs_f64() * 1000.0,
                    error: c.error.clone(),
                    age_secs: age(c.at),
                }),
            health_since_secs: health.map(|h| age(h.since)),
            // Only backends that answered HTTP requests have response times.
            response_times: Some(response_times(b.state.response_times()))
                .filter(|t| t.count() > 0),
            agent: self.shared.health.agent(pool, b.address).map(|a| {
                format!(
                    "{}: {}{}",
                    a.agent.describe(),
                    if a.failed {
                        "last ask failed: "
                    } else {
                        "said "
                    },
                    a.said
                )
            }),
        }
    }
}

fn response_times(t: &tandem_balance::ResponseTimes) -> ResponseTimesSnapshot {
    let read = t.read();
    ResponseTimesSnapshot {
        bounds_secs: tandem_balance::RESPONSE_BUCKETS.to_vec(),
        counts: read.counts,
        sum_secs: read.sum_secs,
    }
}

impl StateSource for Daemon {
    fn snapshot(&self) -> Snapshot {
        Daemon::snapshot(self)
    }

    fn history(&self) -> tandem_control::history::HistoryView {
        let history = self.shared.live.history.lock();
        history.unwrap_or_else(|e| e.into_inner()).view()
    }

    fn events(&self, since_seq: u64, since_ms: u64) -> Vec<tandem_control::events::Event> {
        self.shared.live.events.since(since_seq, since_ms)
    }

    fn act(&self, request: tandem_control::Request) -> tandem_control::Response {
        match request {
            tandem_control::Request::Backend {
                action,
                pool,
                address,
            } => self.backend_request(action, &pool, &address),
            _ => {
                tandem_control::Response::error("the status page only drains and enables backends")
            }
        }
    }
}

fn ha_snapshot(s: &tandem_vrrp::linux::Status) -> HaSnapshot {
    HaSnapshot {
        state: s.state.name().into(),
        interface: s.interface.clone(),
        vrid: s.vrid,
        priority: s.priority,
        effective_priority: s.effective_priority,
        demotions: s.demotions.clone(),
        virtual_ips: s
            .virtual_ips
            .iter()
            .map(|(ip, p)| format!("{ip}/{p}"))
            .collect(),
        master: s.master.map(|m| m.to_string()),
        transitions: s.transitions,
        dropped: s
            .dropped
            .iter()
            .map(|(r, n)| (r.label().to_string(), *n))
            .collect(),
    }
}

/// Rules and the last-known conntrackd state of redirect services (no kernel table).
fn redirect_summary(plane: &RedirectPlane) -> tandem_control::RedirectSnapshot {
    let forwards = plane.forwards();
    tandem_control::RedirectSnapshot {
        rules: forwards
            .iter()
            .map(tandem_redirect::rules::describe)
            .collect(),
        forwards: forwards
            .iter()
            .map(|f| tandem_control::ForwardSnapshot {
                service: f.service.clone(),
                listen: f.listen.to_string(),
                backends: f.targets.iter().map(|t| t.address.to_string()).collect(),
            })
            .collect(),
        table: String::new(),
        conntrack: plane
            .last_conntrack_status()
            .map(|c| tandem_control::ConntrackSnapshot {
                running: c.running,
                restarts: c.restarts,
                internal: c.internal,
                external: c.external,
                role: c.role,
            }),
    }
}

/// The names a TLS service serves and how long their certificates have left.
fn certificates(tls: &tandem_config::Tls) -> Vec<tandem_control::CertificateSnapshot> {
    let now = tandem_net::ocsp::unix_now();
    tandem_net::tls::served_names(tls)
        .into_iter()
        .map(|s| tandem_control::CertificateSnapshot {
            name: s.name,
            source: s.source.to_string(),
            not_after: s.not_after,
            seconds_left: s.not_after - now,
        })
        .collect()
}
