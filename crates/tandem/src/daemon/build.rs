//! Building a daemon: everything that can fail, done before anything is served.

use std::collections::{HashMap, HashSet};
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
use tandem_vrrp::State;
use tandem_vrrp::linux::{Takeover, Vrrp, VrrpError};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::Daemon;
use super::announce::{self, Announcing};
use super::ha;
use super::reload::{ListenKey, relayed};
use super::sticky;
use super::sync_store::{self, PoolStore};
use super::upgrade::Inherited;
use crate::readiness::Gate;
use crate::redirect::RedirectPlane;
use tracing::info;

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
    /// VRRP cannot start on the interface.
    #[error("starting VRRP: {0}")]
    Vrrp(#[from] VrrpError),
    /// The announcement interface cannot be made.
    #[error("announce: {0}")]
    Announce(tandem_announce::linux::DeviceError),
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
    /// The instance the redirect plane follows (see [`ha::redirect_instance`]).
    pub(super) redirect_leader: Option<usize>,
    /// What VRRP preemption waits for, when it waits.
    pub(super) gate: Option<Gate>,
    /// The announcement interface, when `[announce]` is configured.
    pub(super) announce: Option<Arc<Announcing>>,
    /// ACME's state (with `global.state_dir`).
    pub(super) acme: Option<Arc<crate::acme::AcmeState>>,
}

impl Daemon {
    /// Builds everything `config` asks for that can fail: health checks, services,
    /// every listener (all or nothing), the control socket and admin port, sync, the
    /// redirect table and VRRP. Sticky tables saved in `state_dir` are loaded first.
    pub async fn build(config: Config, options: Options) -> Result<Built, BuildError> {
        Daemon::build_inheriting(config, options, Inherited::default()).await
    }

    /// As [`Daemon::build`], taking the listening sockets (services, admin port,
    /// control socket) from `inherited` where it has them, matched by service and
    /// configured address, and merging its sticky pins after the state file's.
    pub async fn build_inheriting(
        config: Config,
        options: Options,
        mut inherited: Inherited,
    ) -> Result<Built, BuildError> {
        let started = Instant::now();
        let pools = Arc::new(ArcSwap::from_pointee(PoolSet::build(&config.pools, None)));
        inherited.restore_health(&pools.load());
        let mut monitor = Monitor::new();
        monitor
            .apply(&pools.load(), &config.pools)
            .map_err(BuildError::Health)?;
        // Pins from before the stop, before the first client is accepted.
        if let Some(dir) = &config.global.state_dir {
            sticky::restore(dir, &pools.load());
        }
        // ACME's certificates from disk, before the first client too.
        let acme = config.global.state_dir.as_deref().map(|dir| {
            let state = Arc::new(crate::acme::AcmeState::new(dir));
            let configs: Vec<&tandem_config::Acme> = config
                .services
                .iter()
                .filter_map(|s| s.tls.as_ref()?.acme.as_ref())
                .collect();
            for problem in state.load(&configs) {
                tracing::warn!("acme: {problem}");
            }
            state
        });
        inherited.restore_sticky(&pools.load());
        let mut listeners = take_inherited(&config, &mut inherited)?;
        let taken: HashSet<ListenKey> = listeners.iter().map(|(k, _, _)| k.clone()).collect();
        listeners.extend(bind_new(&config, |k| taken.contains(k))?);
        let mut services = HashMap::new();
        for s in relayed(&config) {
            let prepared = Service::prepare(s.clone()).map_err(BuildError::Service)?;
            services.insert(s.name.clone(), Service::new(prepared, pools.clone()));
        }
        let admin = match config.global.admin_listen {
            Some(address) => {
                let admin_error = |source| BuildError::Admin { address, source };
                let l = match inherited.take_admin(address) {
                    Some(l) => l.map_err(admin_error)?,
                    None => listener::bind(address).map_err(admin_error)?,
                };
                Some((l.local_addr().map_err(admin_error)?, l))
            }
            None => None,
        };
        let mut control_inherited = false;
        let control = if options.control_socket {
            let path = config.global.control_socket.clone();
            let l = match inherited.take_control(&path) {
                Some(l) => {
                    control_inherited = true;
                    l.map_err(|source| ControlError::Bind {
                        path: path.clone(),
                        source,
                    })?
                }
                None => tandem_control::socket::bind(&path)?,
            };
            Some((path, l))
        } else {
            None
        };
        // No stale socket file for the next start to find (a handed over one is the
        // predecessor's, serving on).
        let unbind = |e: BuildError| {
            if let Some((path, _)) = control.as_ref().filter(|_| !control_inherited) {
                let _ = std::fs::remove_file(path);
            }
            e
        };
        // The interface goes with its descriptor when a later part fails.
        let announce = announce::build(&config, started, &mut inherited)
            .await
            .map_err(unbind)?;
        let Parts {
            sync,
            redirect,
            takeovers,
            vrrp,
            redirect_leader,
            gate,
        } = match build_parts(&config, &pools, &mut inherited, acme.clone()).await {
            Ok(parts) => parts,
            Err(e) => return Err(unbind(e)),
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
            redirect_leader,
            gate,
            announce,
            acme,
        })
    }
}

/// The parts that talk to peers and to the kernel.
struct Parts {
    sync: Option<Arc<SyncNode>>,
    redirect: Option<Arc<RedirectPlane>>,
    takeovers: Option<mpsc::Receiver<Takeover>>,
    vrrp: Vec<Arc<Vrrp>>,
    redirect_leader: Option<usize>,
    gate: Option<Gate>,
}

/// Sync, the redirect table and VRRP, in this order; on failure the redirect table is
/// removed again (the other parts end when dropped).
async fn build_parts(
    config: &Config,
    pools: &Arc<ArcSwap<PoolSet>>,
    inherited: &mut Inherited,
    acme: Option<Arc<crate::acme::AcmeState>>,
) -> Result<Parts, BuildError> {
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
                max_version: tandem_sync::codec::VERSION,
            };
            let store = Arc::new(PoolStore(pools.clone(), acme));
            // After an upgrade: on the predecessor's listener, with its table.
            let node = match inherited.take_sync(sync.listen) {
                Some(listener) => SyncNode::resume(settings, store, listener).await,
                None => SyncNode::start(settings, store).await,
            }
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
            RedirectPlane::start(config, &pools.load(), inherited.redirect_rules())
                .await
                .map_err(BuildError::Redirect)?,
        )
    } else {
        None
    };
    let redirect_leader = ha::redirect_instance(config);
    match build_ha(config, redirect.as_ref(), redirect_leader, inherited).await {
        Ok((vrrp, takeovers, gate)) => Ok(Parts {
            sync,
            redirect,
            takeovers,
            vrrp,
            redirect_leader,
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
/// readiness gate waits; each in its predecessor's state when it replaces a process
/// (upgrade). Routers started before a failing one are shut down again.
async fn build_ha(
    config: &Config,
    redirect: Option<&Arc<RedirectPlane>>,
    followed: Option<usize>,
    inherited: &Inherited,
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
    let settings = ha::all_settings(config);
    let (mut hook, takeovers) = match redirect {
        Some(plane) => match plane
            .start_state_sync(config, inherited.conntrackd_runs())
            .await
            .map_err(BuildError::Redirect)?
        {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        },
        None => (None, None),
    };
    let mut routers = Vec::new();
    let count = settings.len();
    let mut masters = Vec::new();
    for (i, settings) in settings.into_iter().enumerate() {
        let hook = if Some(i) == followed {
            hook.take()
        } else {
            None
        };
        let resume = inherited.vrrp(
            &settings.interface,
            settings.vrid,
            &settings.virtual_ips,
            count,
        );
        masters.push(resume == Some(State::Master));
        let started = match resume {
            Some(state) => Vrrp::resume_with_takeover(settings, hook, state).await,
            None => Vrrp::start_with_takeover(settings, hook).await,
        };
        match started {
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
    // with an empty table, nor with checks that have not decided. (A master resumed
    // from its predecessor has its table and serves already.)
    let gate = Gate::for_config(config);
    let gate = if gate.waits() && masters.iter().any(|m| !m) {
        for (v, _) in routers.iter().zip(&masters).filter(|(_, m)| !**m) {
            v.hold_preempt(true).await;
        }
        Some(gate)
    } else {
        None
    };
    Ok((routers, takeovers, gate))
}

/// The listeners of `config` that `inherited` holds, as received.
fn take_inherited(
    config: &Config,
    inherited: &mut Inherited,
) -> Result<Vec<(ListenKey, String, TcpListener)>, BindError> {
    let mut taken = Vec::new();
    for s in relayed(config) {
        for &address in &s.listen {
            let key = ListenKey::new(&s.name, address);
            if let Some(l) = inherited.take_service(&key) {
                let l = l.map_err(|source| BindError {
                    service: s.name.clone(),
                    address,
                    source,
                })?;
                info!(service = %s.name, listen = %address, from = inherited.from_pid(), "listener taken over");
                taken.push((key, s.name.clone(), l));
            }
        }
    }
    Ok(taken)
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
