//! A running tandem: listeners, pools, services, health checks, the control socket and
//! the admin port, their reload and their orderly end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use tandem_balance::StickyChange;
use tandem_balance::{PoolSet, now_ms};
use tandem_config::{Config, Mode};
use tandem_control::admin::StateSource;
use tandem_control::{
    BackendAction, BackendSnapshot, CheckSnapshot, HaSnapshot, PeerSnapshot, PoolSnapshot, Request,
    Response, ServiceSnapshot, Snapshot,
};
use tandem_health::{HealthBoard, Monitor, Prober};
use tandem_proxy::proxy_header::Refusal;
use tandem_proxy::{Lifecycle, Service, listener};
use tandem_sync::{Change, Store, SyncNode, SyncSettings, WireEntry};
use tandem_vrrp::linux::{HaSettings, Vrrp};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::readiness::{Gate, Verdict};
use crate::redirect::RedirectPlane;
use crate::state_file;

/// How often expired sticky entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A service and the addresses its listeners are bound to.
#[derive(Debug, Clone)]
pub struct RunningService {
    /// The service.
    pub service: Arc<Service>,
    /// Bound addresses (with the real port where the config said 0).
    pub bound: Vec<SocketAddr>,
}

/// A running balancer. Cheap to clone: clones share one daemon.
#[derive(Debug, Clone)]
pub struct Daemon {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    pools: Arc<ArcSwap<PoolSet>>,
    services: ArcSwap<Vec<RunningService>>,
    health: Arc<HealthBoard>,
    inner: Mutex<Inner>,
    life: Lifecycle,
    background: CancellationToken,
    reloads: AtomicU64,
    admin: std::sync::Mutex<Option<SocketAddr>>,
    control_socket: std::sync::Mutex<Option<PathBuf>>,
    vrrp: std::sync::Mutex<Option<Arc<Vrrp>>>,
    sync: std::sync::Mutex<Option<Arc<SyncNode>>>,
    redirect: std::sync::Mutex<Option<Arc<RedirectPlane>>>,
}

/// Identifies a listener across reloads: its configured address, and for port 0 (any
/// free port, which several services may ask for) also its service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListenKey {
    address: SocketAddr,
    ephemeral_for: Option<String>,
}

impl ListenKey {
    fn new(service: &str, address: SocketAddr) -> ListenKey {
        ListenKey {
            address,
            ephemeral_for: (address.port() == 0).then(|| service.to_string()),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Listeners by configured address.
    listeners: HashMap<ListenKey, RunningListener>,
    services: HashMap<String, Arc<Service>>,
    monitor: Monitor,
}

#[derive(Debug)]
struct RunningListener {
    service: String,
    bound: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<TcpListener>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when accepting stopped.
    pub open_at_start: u64,
    /// Connections still open at the deadline, closed by tandem.
    pub closed_at_deadline: u64,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed (their connections run on).
    pub services_removed: Vec<String>,
    /// Listening addresses opened.
    pub listeners_opened: Vec<String>,
    /// Listening addresses closed.
    pub listeners_closed: Vec<String>,
    /// Settings that only a restart applies.
    pub needs_restart: Vec<String>,
}

impl Daemon {
    /// Starts from `config`, with no file to reload from.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        Daemon::start_with(config, None).await
    }

    /// Binds every listener (failing as a whole if one cannot be bound), starts health
    /// checks and accepting. `config_path` is what `reload` reads again.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> anyhow::Result<Daemon> {
        let pools = Arc::new(ArcSwap::from_pointee(PoolSet::build(&config.pools, None)));
        let mut monitor = Monitor::new();
        monitor
            .apply(&pools.load(), &config.pools)
            .map_err(|e| anyhow::anyhow!("health checks: {e}"))?;
        let life = Lifecycle {
            limit: tandem_proxy::limits::GlobalLimit::new(node_max_conns(&config)),
            stop_accepting: CancellationToken::new(),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let shared = Arc::new(Shared {
            started: Instant::now(),
            config_path,
            config: ArcSwap::from_pointee(config.clone()),
            pools: pools.clone(),
            services: ArcSwap::from_pointee(Vec::new()),
            health: monitor.board(),
            inner: Mutex::new(Inner {
                listeners: HashMap::new(),
                services: HashMap::new(),
                monitor,
            }),
            life,
            background: CancellationToken::new(),
            reloads: AtomicU64::new(0),
            admin: std::sync::Mutex::new(None),
            control_socket: std::sync::Mutex::new(None),
            vrrp: std::sync::Mutex::new(None),
            sync: std::sync::Mutex::new(None),
            redirect: std::sync::Mutex::new(None),
        });
        let daemon = Daemon { shared };
        // Pins from before the stop, before the first client is accepted.
        if let Some(dir) = &config.global.state_dir {
            restore_sticky_tables(dir, &pools.load());
            tokio::spawn(save_sticky_tables(daemon.shared.clone()));
        }
        {
            let mut inner = daemon.shared.inner.lock().await;
            let bound = bind_new(&config, &inner.listeners)?;
            for s in relayed(&config) {
                inner.services.insert(
                    s.name.clone(),
                    Service::new(
                        Service::prepare(s.clone()).map_err(|e| anyhow::anyhow!(e))?,
                        pools.clone(),
                    ),
                );
            }
            for (key, (service, l)) in bound {
                daemon.spawn_listener(&mut inner, key, &service, l);
            }
            daemon.publish_services(&inner, &config);
        }
        tokio::spawn(sweep_sticky_tables(pools, daemon.shared.background.clone()));
        if let Some(sync) = &config.sync {
            let secret = std::fs::read(&sync.key_file)
                .with_context(|| format!("reading sync.key_file {}", sync.key_file.display()))?;
            let settings = SyncSettings {
                node: config.global.name.clone(),
                listen: sync.listen,
                peers: sync.peers.clone(),
                secret: trim_ascii(&secret).to_vec(),
                pools_digest: pools_digest(&config),
            };
            let store = Arc::new(PoolStore(daemon.shared.pools.clone()));
            let node = Arc::new(
                SyncNode::start(settings, store)
                    .await
                    .context("starting sync")?,
            );
            *daemon.shared.sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(node);
            daemon.observe_sticky_tables();
        }
        let redirect = if config.has_redirect() {
            let plane = RedirectPlane::start(
                &config,
                daemon.shared.pools.clone(),
                daemon.shared.background.clone(),
            )
            .await?;
            *daemon
                .shared
                .redirect
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(plane.clone());
            Some(plane)
        } else {
            None
        };
        if let Some(ha) = &config.ha {
            let settings = HaSettings::from_config(ha)?;
            let takeover = match &redirect {
                Some(plane) => {
                    plane
                        .start_state_sync(&config, daemon.shared.background.clone())
                        .await?
                }
                None => None,
            };
            let vrrp = Arc::new(
                Vrrp::start_with_takeover(settings, takeover)
                    .await
                    .context("starting VRRP")?,
            );
            if let Some(plane) = &redirect {
                plane.follow_vrrp(&vrrp, daemon.shared.background.clone());
            }
            *daemon.shared.vrrp.lock().unwrap_or_else(|e| e.into_inner()) = Some(vrrp.clone());
            // Like pfsync's demotion during bulk update: never take over from a live
            // master with an empty table, nor with checks that have not decided.
            let gate = Gate::for_config(&config);
            if gate.waits() {
                vrrp.hold_preempt(true).await;
                tokio::spawn(hold_until_ready(
                    gate,
                    vrrp.clone(),
                    daemon.sync().map(|s| s.synced()),
                    daemon.health(),
                    daemon.shared.started,
                    daemon.shared.background.clone(),
                ));
            }
            if let Some(sync) = daemon.sync() {
                // A peer whose sync session closes has most likely exited: as its
                // backup, wait for one more advertisement, not three.
                let mut ended = sync.sessions_ended();
                ended.borrow_and_update();
                let vrrp = vrrp.clone();
                tokio::spawn(async move {
                    while ended.changed().await.is_ok() {
                        vrrp.peer_exited().await;
                    }
                });
            }
            tokio::spawn(track_pools(
                daemon.clone(),
                vrrp,
                daemon.shared.background.clone(),
            ));
        }
        for s in daemon.services().iter() {
            let c = s.service.config.load();
            let addrs: Vec<String> = s.bound.iter().map(ToString::to_string).collect();
            info!(service = %c.name, pool = %c.pool, listen = %addrs.join(","), "service ready");
        }
        Ok(daemon)
    }

    fn spawn_listener(&self, inner: &mut Inner, key: ListenKey, service: &str, l: TcpListener) {
        let svc = inner.services[service].clone();
        let stop = self.shared.life.stop_accepting.child_token();
        let bound = l.local_addr().unwrap_or(key.address);
        let life = Lifecycle {
            stop_accepting: stop.clone(),
            ..self.shared.life.clone()
        };
        let task = tokio::spawn(svc.serve(l, life));
        inner.listeners.insert(
            key,
            RunningListener {
                service: service.to_string(),
                bound,
                stop,
                task,
            },
        );
    }

    /// Refreshes the lock-free view of services (in configuration order).
    fn publish_services(&self, inner: &Inner, config: &Config) {
        let view = config
            .services
            .iter()
            .filter_map(|s| {
                let service = inner.services.get(&s.name)?.clone();
                let bound = s
                    .listen
                    .iter()
                    .filter_map(|a| {
                        inner
                            .listeners
                            .get(&ListenKey::new(&s.name, *a))
                            .map(|l| l.bound)
                    })
                    .collect();
                Some(RunningService { service, bound })
            })
            .collect();
        self.shared.services.store(Arc::new(view));
    }

    /// The configuration running now.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// The current pool generation.
    pub fn pools(&self) -> Arc<PoolSet> {
        self.shared.pools.load_full()
    }

    /// Health of every checked backend, and the stream of transitions.
    pub fn health(&self) -> Arc<HealthBoard> {
        self.shared.health.clone()
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<RunningService> {
        self.services()
            .iter()
            .find(|s| s.service.config.load().name == name)
            .cloned()
    }

    /// Every service, in configuration order.
    pub fn services(&self) -> Arc<Vec<RunningService>> {
        self.shared.services.load_full()
    }

    /// Connections open now, over all services (removed ones included).
    pub fn open_connections(&self) -> u64 {
        // Tasks of removed services are still tracked; count by task, not by service.
        self.shared.life.tracker.len() as u64
    }

    /// The admin port's bound address, once serving.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.shared.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the configuration file again and applies it (see [`Daemon::apply`]).
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let path = self
            .shared
            .config_path
            .as_ref()
            .ok_or("this tandem was not started from a configuration file")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        for w in &config.warnings {
            warn!("{}", w.render(&path.display().to_string(), "warning: "));
        }
        self.apply(config).await
    }

    /// Applies a new, validated configuration without dropping connections: listeners
    /// of unchanged addresses stay open (moved to another service if need be), new
    /// ones are bound first (a failure leaves everything as it was), pools are rebuilt
    /// keeping backend state and sticky tables, health checks keep their state.
    /// Established connections run on with their backend.
    pub async fn apply(&self, config: Config) -> Result<ReloadReport, String> {
        let mut inner = self.shared.inner.lock().await;
        let old = self.shared.config.load_full();
        // Everything that can fail comes before any change.
        for p in &config.pools {
            if let Some(check) = &p.check {
                Prober::new(check).map_err(|e| format!("pool {}: {e}", p.name))?;
            }
        }
        let mut prepared = HashMap::new();
        for s in relayed(&config) {
            prepared.insert(s.name.clone(), Service::prepare(s.clone())?);
        }
        let redirect = self.redirect();
        if redirect.is_none() && config.has_redirect() {
            return Err("redirect services were added: the kernel data plane starts with tandem, restart it".into());
        }
        let bound = bind_new(&config, &inner.listeners).map_err(|e| format!("{e:#}"))?;
        let mut report = ReloadReport::default();
        if old.global.control_socket != config.global.control_socket {
            report.needs_restart.push("global.control_socket".into());
        }
        if old.global.admin_listen != config.global.admin_listen {
            report.needs_restart.push("global.admin_listen".into());
        }
        if old.global.log_format != config.global.log_format {
            report.needs_restart.push("global.log_format".into());
        }
        if old.ha != config.ha {
            report.needs_restart.push("ha".into());
        }
        if old.sync != config.sync {
            report.needs_restart.push("sync".into());
        }
        if old.global.user != config.global.user || old.global.group != config.global.group {
            report.needs_restart.push("global.user".into());
        }
        self.shared.life.limit.set_max(node_max_conns(&config));
        let pools = PoolSet::build(&config.pools, Some(&self.shared.pools.load()));
        inner.monitor.apply(&pools, &config.pools)?;
        self.shared.pools.store(Arc::new(pools));
        self.observe_sticky_tables();
        // Services: update in place, add, remove.
        let mut services = HashMap::new();
        for s in relayed(&config) {
            let ready = prepared.remove(&s.name).expect("prepared above");
            let service = match inner.services.remove(&s.name) {
                Some(existing) => {
                    existing.install(ready);
                    existing
                }
                None => {
                    report.services_added.push(s.name.clone());
                    Service::new(ready, self.shared.pools.clone())
                }
            };
            services.insert(s.name.clone(), service);
        }
        report.services_removed = inner.services.keys().cloned().collect();
        inner.services = services;
        // Listeners: keep, move to another service, or close.
        let wanted: HashMap<ListenKey, &str> = relayed(&config)
            .flat_map(|s| {
                s.listen
                    .iter()
                    .map(move |a| (ListenKey::new(&s.name, *a), s.name.as_str()))
            })
            .collect();
        let current: Vec<ListenKey> = inner.listeners.keys().cloned().collect();
        for key in current {
            let keep_for = wanted.get(&key).copied();
            if keep_for == Some(inner.listeners[&key].service.as_str()) {
                continue;
            }
            let l = inner.listeners.remove(&key).expect("listed");
            l.stop.cancel();
            let listener = l.task.await.map_err(|e| format!("listener task: {e}"))?;
            match keep_for {
                Some(service) => self.spawn_listener(&mut inner, key, service, listener),
                None => report.listeners_closed.push(l.bound.to_string()),
            }
        }
        for (key, (service, l)) in bound {
            report
                .listeners_opened
                .push(l.local_addr().map_or(key.address, |a| a).to_string());
            self.spawn_listener(&mut inner, key, &service, l);
        }
        self.publish_services(&inner, &config);
        if let Some(plane) = redirect
            && let Err(e) = plane.reload(&config, &self.shared.pools.load()).await
        {
            warn!(error = %e, "the previous redirect rules stay until the kernel takes the new ones");
        }
        self.shared.config.store(Arc::new(config));
        self.shared.reloads.fetch_add(1, Relaxed);
        info!(
            added = ?report.services_added,
            removed = ?report.services_removed,
            opened = ?report.listeners_opened,
            closed = ?report.listeners_closed,
            "configuration reloaded"
        );
        if !report.needs_restart.is_empty() {
            warn!(settings = ?report.needs_restart, "changed settings that apply only after a restart");
        }
        Ok(report)
    }

    /// Enables or disables (drains) a backend of a pool.
    pub fn set_backend_enabled(
        &self,
        pool: &str,
        address: &str,
        enabled: bool,
    ) -> Result<BackendSnapshot, String> {
        let pools = self.pools();
        let p = pools
            .get(pool)
            .ok_or_else(|| format!("no pool is named {pool:?}"))?;
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP:port address"))?;
        let b = p
            .backend(&addr)
            .ok_or_else(|| format!("pool {pool} has no backend {addr}"))?;
        b.state.set_enabled(enabled);
        info!(pool, backend = %addr, "backend {} by the operator", if enabled { "enabled" } else { "disabled (draining)" });
        if let Some(sync) = self.sync() {
            sync.publish(Change::Backend {
                pool: pool.to_string(),
                address: addr,
                enabled,
            });
        }
        Ok(self.backend_snapshot(pool, b))
    }

    /// Answers one control request.
    pub async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(self.snapshot()),
            Request::Pools => Response::ok(self.snapshot()),
            Request::Ha => Response::ok(self.snapshot().ha),
            Request::Redirect => Response::ok(self.redirect_snapshot().await),
            Request::Backend {
                action,
                pool,
                address,
            } => match self.set_backend_enabled(&pool, &address, action == BackendAction::Enable) {
                Ok(b) => Response::ok(b),
                Err(e) => Response::error(e),
            },
            Request::Reload => match self.reload().await {
                Ok(report) => Response::ok(report),
                Err(e) => {
                    warn!("reload refused, the running configuration stays:\n{e}");
                    Response::error(format!(
                        "reload refused, the running configuration stays:\n{e}"
                    ))
                }
            },
        }
    }

    /// Serves the control socket of `global.control_socket` until shutdown.
    pub fn serve_control(&self) -> anyhow::Result<()> {
        let path = self.config().global.control_socket.clone();
        let listener = tandem_control::socket::bind(&path)?;
        let (tx, mut rx) = mpsc::channel::<tandem_control::socket::Command>(64);
        let stop = self.shared.background.clone();
        tokio::spawn(tandem_control::socket::serve(listener, tx, stop.clone()));
        let daemon = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = tokio::select! {
                () = stop.cancelled() => None,
                r = rx.recv() => r,
            } {
                let _ = reply.send(daemon.handle(request).await);
            }
        });
        *self
            .shared
            .control_socket
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
        info!(socket = %self.config().global.control_socket.display(), "control socket ready");
        Ok(())
    }

    /// Serves `global.admin_listen` (metrics, status page), when configured.
    pub fn serve_admin(&self) -> anyhow::Result<()> {
        let Some(address) = self.config().global.admin_listen else {
            return Ok(());
        };
        let l = listener::bind(address).with_context(|| format!("admin port {address}"))?;
        let bound = l.local_addr()?;
        *self.shared.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
        let source: Arc<dyn StateSource> = Arc::new(self.clone());
        tokio::spawn(tandem_control::admin::serve(
            l,
            source,
            self.shared.background.clone(),
        ));
        if !bound.ip().is_loopback() {
            warn!(admin = %bound, "the admin port is not on loopback: metrics and status are readable from the network");
        }
        info!(admin = %bound, "admin port ready: /metrics, /, /status.json");
        Ok(())
    }

    /// Everything an operator sees, now.
    pub fn snapshot(&self) -> Snapshot {
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
            services,
            pools,
            ha: self.vrrp().map(|v| ha_snapshot(&v.status())),
            redirect: self.redirect().map(|p| redirect_summary(&p)),
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

    fn backend_snapshot(&self, pool: &str, b: &tandem_balance::Backend) -> BackendSnapshot {
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
        }
    }

    /// The sync node, when `[sync]` is configured.
    pub fn sync(&self) -> Option<Arc<SyncNode>> {
        self.shared
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tells the sync node of every change of every sticky table (tables that already
    /// have their observer keep it).
    fn observe_sticky_tables(&self) {
        let Some(sync) = self.sync() else { return };
        let origin = node_hash(&self.config().global.name);
        for pool in self.pools().iter() {
            let Some(table) = &pool.sticky else { continue };
            let sync = Arc::downgrade(&sync);
            let name = pool.name.clone();
            table.observe(
                origin,
                Arc::new(move |change| {
                    let Some(sync) = sync.upgrade() else { return };
                    sync.publish(match change {
                        StickyChange::Pinned { client, entry } => Change::Entry(WireEntry {
                            pool: name.clone(),
                            client,
                            backend: entry.backend,
                            remaining_ms: entry.expires.saturating_sub(now_ms()),
                            pinned_at_ms: entry.pinned_at,
                            origin: entry.origin,
                        }),
                        StickyChange::Evicted { client } => Change::Delete(name.clone(), client),
                    });
                }),
            );
        }
    }

    /// The kernel data plane, when redirect services are configured.
    pub fn redirect(&self) -> Option<Arc<RedirectPlane>> {
        self.shared
            .redirect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The VRRP router, when `[ha]` is configured.
    pub fn vrrp(&self) -> Option<Arc<Vrrp>> {
        self.shared
            .vrrp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting (listeners close, new connections are refused), lets open
    /// connections finish until `deadline`, then closes what is left. With VRRP, the
    /// node first leaves (priority 0), so the backup takes over at once.
    pub async fn shutdown(self, deadline: Duration) -> DrainReport {
        let vrrp = self
            .shared
            .vrrp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(vrrp) = vrrp {
            vrrp.shutdown().await;
        }
        self.shared.life.stop_accepting.cancel();
        {
            let mut inner = self.shared.inner.lock().await;
            for (_, l) in inner.listeners.drain() {
                drop(l.task.await);
            }
        }
        let open_at_start = self.open_connections();
        if open_at_start > 0 {
            info!(open = open_at_start, deadline = ?deadline, "draining: accepting stopped, waiting for open connections");
        }
        self.shared.life.tracker.close();
        let closed_at_deadline =
            match tokio::time::timeout(deadline, self.shared.life.tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => {
                    let left = self.open_connections();
                    info!(
                        left,
                        "drain deadline passed: closing the remaining connections"
                    );
                    self.shared.life.close_all.cancel();
                    self.shared.life.tracker.wait().await;
                    left
                }
            };
        self.shared.background.cancel();
        if let Some(dir) = &self.shared.config.load().global.state_dir {
            save_sticky_state(dir, &self.shared);
        }
        self.shared.inner.lock().await.monitor.stop();
        if let Some(sync) = self
            .shared
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            sync.stop();
        }
        let redirect = self
            .shared
            .redirect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(plane) = redirect {
            plane.stop().await;
        }
        if let Some(path) = self
            .shared
            .control_socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = std::fs::remove_file(path);
        }
        DrainReport {
            open_at_start,
            closed_at_deadline,
        }
    }
}

impl StateSource for Daemon {
    fn snapshot(&self) -> Snapshot {
        Daemon::snapshot(self)
    }
}

/// The sticky tables of the current pools, as sync sees them.
struct PoolStore(Arc<ArcSwap<PoolSet>>);

impl Store for PoolStore {
    fn entries(&self) -> Vec<WireEntry> {
        let now = now_ms();
        self.0
            .load()
            .live_pins(now)
            .into_iter()
            .map(|(pool, client, e)| WireEntry {
                pool: pool.to_string(),
                client,
                backend: e.backend,
                remaining_ms: e.expires - now,
                pinned_at_ms: e.pinned_at,
                origin: e.origin,
            })
            .collect()
    }

    fn apply(&self, entries: &[WireEntry]) {
        let now = now_ms();
        let pools = self.0.load();
        for e in entries {
            if let Some(table) = pools.get(&e.pool).and_then(|p| p.sticky.as_ref()) {
                table.merge(
                    e.client,
                    e.backend,
                    now + e.remaining_ms,
                    e.pinned_at_ms,
                    e.origin,
                    now,
                );
            }
        }
    }

    fn delete(&self, keys: &[(String, std::net::IpAddr)]) {
        let pools = self.0.load();
        for (pool, client) in keys {
            if let Some(table) = pools.get(pool).and_then(|p| p.sticky.as_ref()) {
                table.remove(client);
            }
        }
    }

    fn set_backend(&self, pool: &str, address: SocketAddr, enabled: bool) {
        if let Some(b) = self
            .0
            .load()
            .get(pool)
            .and_then(|p| p.backend(&address).cloned())
        {
            b.state.set_enabled(enabled);
            info!(pool, backend = %address, "backend {} by a peer's operator", if enabled { "enabled" } else { "disabled" });
        }
    }
}

/// A stable hash of a node name: the origin stamped on its sticky pins.
fn node_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// A digest of the pools and their backends, equal on nodes configured alike.
fn pools_digest(config: &Config) -> u64 {
    let mut lines: Vec<String> = config
        .pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(move |b| format!("{}\t{}", p.name, b.address))
        })
        .collect();
    lines.sort();
    xxhash_rust::xxh3::xxh3_64(lines.join("\n").as_bytes())
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
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

/// Holds VRRP preemption until `gate` says the node is ready (sticky tables synced,
/// checks of the served and tracked pools decided, or their bound passed), then logs
/// what it waited for and lets preemption go.
async fn hold_until_ready(
    mut gate: Gate,
    vrrp: Arc<Vrrp>,
    mut synced: Option<tokio::sync::watch::Receiver<bool>>,
    health: Arc<HealthBoard>,
    started: Instant,
    stop: CancellationToken,
) {
    let mut decisions = health.decisions();
    loop {
        let now = started.elapsed();
        let is_synced = synced.as_mut().is_none_or(|s| *s.borrow_and_update());
        let recheck_at = match gate.judge(now, is_synced, |pool| health.decided(pool)) {
            Verdict::Ready(ready) => {
                if ready.undecided.is_empty() {
                    info!(target: "tandem::vrrp", "{ready}: VRRP may preempt");
                } else {
                    warn!(target: "tandem::vrrp", "{ready}: VRRP may preempt");
                }
                vrrp.hold_preempt(false).await;
                return;
            }
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
            () = stop.cancelled() => return,
            () = sync_changed => {}
            r = decisions.changed() => if r.is_err() { return },
            () = bound => {}
        }
    }
}

/// Demotes the VRRP priority while a tracked pool has no healthy backend.
async fn track_pools(daemon: Daemon, vrrp: Arc<Vrrp>, stop: CancellationToken) {
    let mut changes = daemon.health().subscribe();
    loop {
        let config = daemon.config();
        let pools = daemon.pools();
        let demotions: Vec<(String, u8)> = config
            .ha
            .iter()
            .flat_map(|ha| ha.track_pools.iter())
            .filter(|(name, _)| {
                pools
                    .get(name)
                    .is_some_and(|p| !p.backends.iter().any(|b| b.state.is_healthy()))
            })
            .map(|(name, weight)| (format!("pool {name} has no healthy backend"), *weight))
            .collect();
        vrrp.set_demotions(demotions).await;
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            // Reloads can change pools without a health transition.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Binds every listening address of `config` that is not open yet. All or nothing.
fn bind_new(
    config: &Config,
    open: &HashMap<ListenKey, RunningListener>,
) -> anyhow::Result<Vec<(ListenKey, (String, TcpListener))>> {
    let mut bound = Vec::new();
    for s in relayed(config) {
        for &address in &s.listen {
            let key = ListenKey::new(&s.name, address);
            if open.contains_key(&key) {
                continue;
            }
            let l = listener::bind(address)
                .with_context(|| format!("service {}: cannot listen on {address}", s.name))?;
            bound.push((key, (s.name.clone(), l)));
        }
    }
    Ok(bound)
}

/// `global.max_conns`, or when 0, as many relayed connections as half the open-files
/// limit allows (each takes two), less a reserve for listeners, checks and control.
fn node_max_conns(config: &Config) -> u64 {
    if config.global.max_conns > 0 {
        return u64::from(config.global.max_conns);
    }
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (files.saturating_sub(128) / 2).max(64)
}

/// The services tandem relays itself (redirect services are the kernel's).
fn relayed(config: &Config) -> impl Iterator<Item = &tandem_config::Service> {
    config.services.iter().filter(|s| s.mode != Mode::Redirect)
}

/// Loads `dir`'s sticky state into `pools` and says what it found; a foreign or
/// damaged file is refused (tandem starts with empty tables).
fn restore_sticky_tables(dir: &Path, pools: &PoolSet) {
    let file = state_file::path(dir);
    match state_file::load(dir) {
        Ok(None) => {
            info!(file = %file.display(), "no sticky state saved yet: starting with empty tables")
        }
        Ok(Some(saved)) => {
            let unix_now = tandem_balance::unix_ms();
            let done = state_file::restore(pools, &saved, now_ms(), unix_now);
            let age = Duration::from_millis(unix_now.saturating_sub(saved.written_unix_ms));
            info!(file = %file.display(), loaded = done.loaded, expired = done.expired, unknown_pool = done.unknown_pool,
                "sticky tables restored: {} pins (written by {} {} s ago; {} expired meanwhile, {} of pools no longer sticky)",
                done.loaded, saved.node, age.as_secs(), done.expired, done.unknown_pool);
        }
        Err(e) => {
            warn!(file = %file.display(), "sticky state refused, starting with empty tables: {e}")
        }
    }
}

/// Writes the sticky tables to the current configuration's `state_dir`.
fn save_sticky_state(dir: &Path, shared: &Shared) {
    let saved = state_file::snapshot(
        &shared.pools.load(),
        &shared.config.load().global.name,
        now_ms(),
        tandem_balance::unix_ms(),
    );
    if let Err(e) = state_file::save(dir, &saved) {
        warn!(dir = %dir.display(), "cannot save the sticky tables: {e}");
    }
}

/// Saves the sticky tables every [`state_file::SAVE_EVERY`] until shutdown (which
/// saves once more after the connections are done).
async fn save_sticky_tables(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(state_file::SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shared.background.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(dir) = shared.config.load().global.state_dir.clone() else {
            continue;
        };
        let worker = shared.clone();
        let _ = tokio::task::spawn_blocking(move || save_sticky_state(&dir, &worker)).await;
    }
}

async fn sweep_sticky_tables(pools: Arc<ArcSwap<PoolSet>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for pool in pools.load().iter() {
            if let Some(table) = &pool.sticky {
                table.sweep(now);
            }
        }
    }
}
