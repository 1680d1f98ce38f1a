//! Building a daemon: everything that can fail, done before anything is served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tandem_balance::PoolSet;
use tandem_config::Config;
use tandem_control::socket::ControlError;
use tandem_health::Monitor;
use tandem_proxy::{Service, listener};
use tandem_sync::{SyncNode, SyncSettings};
use tandem_vrrp::linux::{Takeover, Vrrp, VrrpError};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::Daemon;
use super::ha::{self, HaSettingsError};
use super::reload::{ListenKey, relayed};
use super::sticky;
use super::sync_store::{self, PoolStore};
use crate::readiness::Gate;
use crate::redirect::RedirectPlane;

/// What to run besides the services of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file `reload` reads again; none: reloads are refused.
    pub config_path: Option<PathBuf>,
    /// Serve `global.control_socket` (off for daemons embedded in tests, which would
    /// share its default path).
    pub control_socket: bool,
}

/// Why a daemon cannot be built. Nothing is left running when it is returned.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A health check cannot be set up.
    #[error("health checks: {0}")]
    Health(String),
    /// A service's settings cannot be used (TLS material, HTTP rules).
    #[error("{0}")]
    Service(String),
    /// A listening address cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The control socket cannot be created.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The admin port cannot be bound.
    #[error("admin port {address}: {source}")]
    Admin {
        /// `global.admin_listen`.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The sync key cannot be read.
    #[error("reading sync.key_file {path}: {source}")]
    SyncKey {
        /// `sync.key_file`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sync listener cannot be bound.
    #[error("starting sync: {0}")]
    Sync(std::io::Error),
    /// The redirect data plane cannot run on this host.
    #[error("{0:#}")]
    Redirect(anyhow::Error),
    /// `[ha]` asks for something VRRP cannot do.
    #[error(transparent)]
    HaSettings(#[from] HaSettingsError),
    /// VRRP cannot start on the interface.
    #[error("starting VRRP: {0}")]
    Vrrp(#[from] VrrpError),
}

/// A listening address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("service {service}: cannot listen on {address}: {source}")]
pub struct BindError {
    /// The service.
    pub service: String,
    /// The address.
    pub address: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// A daemon built and checked: listeners bound, parts that can fail started (health
/// checks, sync, the redirect table, VRRP); no client is accepted yet.
/// [`Built::start`] serves it.
#[derive(Debug)]
pub struct Built {
    pub(super) started: Instant,
    pub(super) config: Config,
    pub(super) config_path: Option<PathBuf>,
    pub(super) pools: Arc<ArcSwap<PoolSet>>,
    pub(super) monitor: Monitor,
    pub(super) services: HashMap<String, Arc<Service>>,
    pub(super) listeners: Vec<(ListenKey, String, TcpListener)>,
    pub(super) control: Option<(PathBuf, UnixListener)>,
    pub(super) admin: Option<(SocketAddr, TcpListener)>,
    pub(super) sync: Option<Arc<SyncNode>>,
    pub(super) redirect: Option<Arc<RedirectPlane>>,
    /// VRRP's takeover hook, answered by the redirect plane once started.
    pub(super) takeovers: Option<mpsc::Receiver<Takeover>>,
    /// One VRRP router per instance, in configuration order.
    pub(super) vrrp: Vec<Arc<Vrrp>>,
    /// What VRRP preemption waits for, when it waits.
    pub(super) gate: Option<Gate>,
}

impl Daemon {
    /// Builds everything `config` asks for that can fail: health checks, services,
    /// every listener (all or nothing), the control socket and admin port, sync, the
    /// redirect table and VRRP. Sticky tables saved in `state_dir` are loaded first.
    pub async fn build(config: Config, options: Options) -> Result<Built, BuildError> {
        let started = Instant::now();
        let pools = Arc::new(ArcSwap::from_pointee(PoolSet::build(&config.pools, None)));
        let mut monitor = Monitor::new();
        monitor
            .apply(&pools.load(), &config.pools)
            .map_err(BuildError::Health)?;
        // Pins from before the stop, before the first client is accepted.
        if let Some(dir) = &config.global.state_dir {
            sticky::restore(dir, &pools.load());
        }
        let listeners = bind_new(&config, |_| false)?;
        let mut services = HashMap::new();
        for s in relayed(&config) {
            let prepared = Service::prepare(s.clone()).map_err(BuildError::Service)?;
            services.insert(s.name.clone(), Service::new(prepared, pools.clone()));
        }
        let admin = match config.global.admin_listen {
            Some(address) => {
                let admin_error = |source| BuildError::Admin { address, source };
                let l = listener::bind(address).map_err(admin_error)?;
                Some((l.local_addr().map_err(admin_error)?, l))
            }
            None => None,
        };
        let control = if options.control_socket {
            let path = config.global.control_socket.clone();
            let l = tandem_control::socket::bind(&path)?;
            Some((path, l))
        } else {
            None
        };
        let Parts {
            sync,
            redirect,
            takeovers,
            vrrp,
            gate,
        } = match build_parts(&config, &pools).await {
            Ok(parts) => parts,
            Err(e) => {
                // No stale socket file for the next start to find.
                if let Some((path, _)) = &control {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        Ok(Built {
            started,
            config,
            config_path: options.config_path,
            pools,
            monitor,
            services,
            listeners,
            control,
            admin,
            sync,
            redirect,
            takeovers,
            vrrp,
            gate,
        })
    }
}

/// The parts that talk to peers and to the kernel.
struct Parts {
    sync: Option<Arc<SyncNode>>,
    redirect: Option<Arc<RedirectPlane>>,
    takeovers: Option<mpsc::Receiver<Takeover>>,
    vrrp: Vec<Arc<Vrrp>>,
    gate: Option<Gate>,
}

/// Sync, the redirect table and VRRP, in this order; on failure the redirect table is
/// removed again (the other parts end when dropped).
async fn build_parts(config: &Config, pools: &Arc<ArcSwap<PoolSet>>) -> Result<Parts, BuildError> {
    let sync = match &config.sync {
        Some(sync) => {
            let secret = std::fs::read(&sync.key_file).map_err(|source| BuildError::SyncKey {
                path: sync.key_file.clone(),
                source,
            })?;
            let settings = SyncSettings {
                node: config.global.name.clone(),
                listen: sync.listen,
                peers: sync.peers.clone(),
                secret: sync_store::trim_ascii(&secret).to_vec(),
                pools_digest: sync_store::pools_digest(config),
            };
            let store = Arc::new(PoolStore(pools.clone()));
            let node = SyncNode::start(settings, store)
                .await
                .map_err(BuildError::Sync)?;
            Some(Arc::new(node))
        }
        None => None,
    };
    if let Some(sync) = &sync {
        sync_store::observe_sticky_tables(sync, &pools.load(), &config.global.name);
    }
    let redirect = if config.has_redirect() {
        Some(
            RedirectPlane::start(config, &pools.load())
                .await
                .map_err(BuildError::Redirect)?,
        )
    } else {
        None
    };
    match build_ha(config, redirect.as_ref()).await {
        Ok((vrrp, takeovers, gate)) => Ok(Parts {
            sync,
            redirect,
            takeovers,
            vrrp,
            gate,
        }),
        Err(e) => {
            // The only part here that outlives its drop: the kernel's table.
            if let Some(plane) = &redirect {
                plane.stop().await;
            }
            Err(e)
        }
    }
}

/// A VRRP router per instance, the redirect plane's takeover hook (conntrackd) on the
/// instance the redirect plane follows, and every instance's preemption held when the
/// readiness gate waits. Routers started before a failing one are shut down again.
async fn build_ha(
    config: &Config,
    redirect: Option<&Arc<RedirectPlane>>,
) -> Result<
    (
        Vec<Arc<Vrrp>>,
        Option<mpsc::Receiver<Takeover>>,
        Option<Gate>,
    ),
    BuildError,
> {
    if config.ha.is_empty() {
        return Ok((Vec::new(), None, None));
    }
    let settings = ha::all_settings(config)?;
    let (mut hook, takeovers) = match redirect {
        Some(plane) => match plane
            .start_state_sync(config)
            .await
            .map_err(BuildError::Redirect)?
        {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        },
        None => (None, None),
    };
    let followed = ha::redirect_instance(config);
    let mut routers = Vec::new();
    for (i, settings) in settings.into_iter().enumerate() {
        let hook = if Some(i) == followed {
            hook.take()
        } else {
            None
        };
        match Vrrp::start_with_takeover(settings, hook).await {
            Ok(v) => routers.push(Arc::new(v)),
            Err(e) => {
                for v in &routers {
                    v.shutdown().await;
                }
                return Err(e.into());
            }
        }
    }
    // Like pfsync's demotion during bulk update: never take over from a live master
    // with an empty table, nor with checks that have not decided.
    let gate = Gate::for_config(config);
    let gate = if gate.waits() {
        for v in &routers {
            v.hold_preempt(true).await;
        }
        Some(gate)
    } else {
        None
    };
    Ok((routers, takeovers, gate))
}

/// Binds every listening address of `config` for which `is_open` says no. All or
/// nothing.
pub(super) fn bind_new(
    config: &Config,
    is_open: impl Fn(&ListenKey) -> bool,
) -> Result<Vec<(ListenKey, String, TcpListener)>, BindError> {
    let mut bound = Vec::new();
    for s in relayed(config) {
        for &address in &s.listen {
            let key = ListenKey::new(&s.name, address);
            if is_open(&key) {
                continue;
            }
            let l = listener::bind(address).map_err(|source| BindError {
                service: s.name.clone(),
                address,
                source,
            })?;
            bound.push((key, s.name.clone(), l));
        }
    }
    Ok(bound)
}

/// `global.max_conns`, or when 0, as many relayed connections as half the open-files
/// limit allows (each takes two), less a reserve for listeners, checks and control.
pub(super) fn node_max_conns(config: &Config) -> u64 {
    if config.global.max_conns > 0 {
        return u64::from(config.global.max_conns);
    }
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (files.saturating_sub(128) / 2).max(64)
}
