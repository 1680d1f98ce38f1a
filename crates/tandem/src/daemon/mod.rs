//! A running tandem: listeners, pools, services, health checks, the control socket and
//! the admin port, their reload and their orderly end.
//!
//! The parts: [`build`] does everything that can fail (configuration, listeners, the
//! control socket and admin port, sync, redirect, VRRP) and returns plain values;
//! [`Built::start`] cannot fail: it spawns the accept loops and the background tasks
//! ([`tasks`]) and returns the [`Daemon`] handle. [`reload`] plans a new configuration
//! against the running one ([`plan_reload`], pure) and applies it; [`status`] maps the
//! running state to the control protocol's snapshots; [`control`] answers the control
//! socket; [`sync_store`] adapts the pools' sticky tables to sync; [`ha`] wires VRRP to
//! the pools and the readiness gate; [`sticky`] saves, restores and sweeps the tables;
//! [`announce`] holds the service addresses BIRD announces while the node can serve.

mod acme;
mod announce;
mod build;
mod control;
mod ha;
mod live;
mod ocsp;
mod reload;
mod runtime;
mod start;
mod status;
mod sticky;
mod sync_store;
mod tasks;
mod upgrade;
mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tandem_balance::PoolSet;
use tandem_config::Config;
use tandem_control::BackendSnapshot;
use tandem_health::{HealthBoard, Monitor};
use tandem_proxy::{Lifecycle, Service};
use tandem_sync::{Change, SyncNode};
use tandem_vrrp::linux::Vrrp;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use build::{BuildError, Built, Options};
pub use reload::{ListenKey, ReloadError, ReloadPlan, plan_reload};
pub use runtime::{RuntimeError, UNTIL_RELOAD};
pub use tandem_control::ReloadReply as ReloadReport;
pub use upgrade::{Inherited, Successor, UpgradeError};

use crate::redirect::RedirectPlane;
use tasks::Tasks;

/// How long shutdown waits for the background tasks once their token is cancelled.
const TASKS_STOP_WITHIN: Duration = Duration::from_secs(5);

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
    tasks: Tasks,
    reloads: AtomicU64,
    admin: Option<SocketAddr>,
    control_socket: Option<PathBuf>,
    vrrp: Vec<Arc<Vrrp>>,
    /// The instance the redirect plane follows, decided once at start (it got VRRP's
    /// takeover hook).
    redirect_leader: Option<usize>,
    sync: Option<Arc<SyncNode>>,
    redirect: Option<Arc<RedirectPlane>>,
    live: live::Live,
    announce: Option<Arc<announce::Announcing>>,
    /// The pools as changed at run time (`tandem ctl backend weight/add/remove`), until
    /// the next reload; none: as configured.
    runtime_pools: std::sync::Mutex<Option<Vec<tandem_config::Pool>>>,
    handoff: upgrade::Handoff,
    /// The worker threads (as in `Inner`), for their figures.
    workers: Option<Arc<workers::Workers>>,
}

/// What reloads change: the listeners, the services and the health checks.
#[derive(Debug)]
struct Inner {
    /// Listeners by configured address.
    listeners: HashMap<ListenKey, RunningListener>,
    services: HashMap<String, Arc<Service>>,
    monitor: Monitor,
    /// The threads connections are served on; none: the main runtime serves them.
    workers: Option<Arc<workers::Workers>>,
}

/// A listener's accept loops; they hand it back when `stop` is cancelled.
#[derive(Debug)]
struct RunningListener {
    service: String,
    bound: SocketAddr,
    stop: CancellationToken,
    task: workers::AcceptLoops,
    /// A copy of the listener's descriptor, to hand over at an upgrade.
    fd: Option<std::os::fd::OwnedFd>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when accepting stopped.
    pub open_at_start: u64,
    /// Connections still open at the deadline, closed by tandem.
    pub closed_at_deadline: u64,
}

/// Why an operator's command on a backend was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No such pool.
    #[error("no pool is named {0:?}")]
    NoPool(String),
    /// The address does not parse.
    #[error("{0:?} is not an IP:port address")]
    BadAddress(String),
    /// The pool has no such backend.
    #[error("pool {pool} has no backend {address}")]
    NoBackend {
        /// The pool.
        pool: String,
        /// The address asked for.
        address: SocketAddr,
    },
}

impl Daemon {
    /// Builds from `config` (no file to reload from, no control socket) and starts.
    pub async fn start(config: Config) -> Result<Daemon, BuildError> {
        Ok(Daemon::build(config, Options::default()).await?.start())
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

    /// The admin port's bound address, when `global.admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.admin
    }

    /// The kernel data plane, when redirect services are configured.
    pub fn redirect(&self) -> Option<Arc<RedirectPlane>> {
        self.shared.redirect.clone()
    }

    /// The VRRP routers, one per instance of `[ha]`, in configuration order.
    pub fn vrrp(&self) -> &[Arc<Vrrp>] {
        &self.shared.vrrp
    }

    /// The index in [`Daemon::vrrp`] of the instance the redirect plane (conntrackd's
    /// role) follows, when `[ha]` is configured.
    pub(crate) fn redirect_leader(&self) -> Option<usize> {
        self.shared.redirect_leader
    }

    /// The sync node, when `[sync]` is configured.
    pub fn sync(&self) -> Option<Arc<SyncNode>> {
        self.shared.sync.clone()
    }

    /// Enables or disables (drains) a backend of a pool.
    pub fn set_backend_enabled(
        &self,
        pool: &str,
        address: &str,
        enabled: bool,
    ) -> Result<BackendSnapshot, BackendError> {
        let pools = self.pools();
        let p = pools
            .get(pool)
            .ok_or_else(|| BackendError::NoPool(pool.to_string()))?;
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| BackendError::BadAddress(address.to_string()))?;
        let b = p.backend(&addr).ok_or_else(|| BackendError::NoBackend {
            pool: pool.to_string(),
            address: addr,
        })?;
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

    /// Stops accepting (listeners close, new connections are refused), lets open
    /// connections finish until `deadline`, then closes what is left; then ends the
    /// background tasks (waiting a bounded time) and the parts. With VRRP, the node
    /// first leaves (priority 0), so the backup takes over at once. With `[announce]`,
    /// before anything else, the node withdraws its routes and keeps accepting for
    /// `announce.stop_delay` while the routers move new flows elsewhere.
    pub async fn shutdown(self, deadline: Duration) -> DrainReport {
        let shared = &self.shared;
        // After an upgrade the successor announces, on the same device.
        if let Some(announce) = shared.announce.as_ref().filter(|_| !self.has_retired()) {
            // Withdraw first: the routers move new flows to the other nodes while
            // this one still accepts what is on its way.
            announce.stop(&self).await;
            let delay = shared
                .config
                .load()
                .announce
                .as_ref()
                .map_or(Duration::ZERO, |a| a.stop_delay);
            info!(
                "announcements withdrawn; accepting for {delay:?} more while the routers converge"
            );
            tokio::time::sleep(delay).await;
        }
        // After an upgrade the successor holds the addresses and advertises.
        for vrrp in shared.vrrp.iter().filter(|_| !self.has_retired()) {
            vrrp.shutdown().await;
        }
        shared.life.stop_accepting.cancel();
        {
            let mut inner = shared.inner.lock().await;
            for (_, l) in inner.listeners.drain() {
                drop(l.task.join().await);
            }
        }
        let open_at_start = self.open_connections();
        if open_at_start > 0 {
            info!(open = open_at_start, deadline = ?deadline, "draining: accepting stopped, waiting for open connections");
        }
        shared.life.tracker.close();
        let closed_at_deadline =
            match tokio::time::timeout(deadline, shared.life.tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => {
                    let left = self.open_connections();
                    info!(
                        left,
                        "drain deadline passed: closing the remaining connections"
                    );
                    shared.life.close_all.cancel();
                    shared.life.tracker.wait().await;
                    left
                }
            };
        shared.tasks.shutdown(TASKS_STOP_WITHIN).await;
        // After an upgrade the state file and the control socket are the successor's.
        let retired = self.has_retired();
        if let Some(dir) = shared
            .config
            .load()
            .global
            .state_dir
            .as_ref()
            .filter(|_| !retired)
        {
            sticky::save(dir, &shared.pools.load(), &shared.config.load().global.name);
        }
        shared.inner.lock().await.monitor.stop();
        if let Some(sync) = &shared.sync {
            sync.stop();
        }
        // After an upgrade the table (and conntrackd) are the successor's.
        if let Some(plane) = shared.redirect.as_ref().filter(|_| !retired) {
            plane.stop().await;
        }
        if let Some(path) = shared.control_socket.as_ref().filter(|_| !retired) {
            let _ = std::fs::remove_file(path);
        }
        DrainReport {
            open_at_start,
            closed_at_deadline,
        }
    }
}
