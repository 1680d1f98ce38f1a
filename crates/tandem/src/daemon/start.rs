//! Starting a built daemon: cannot fail; spawns the accept loops and every background
//! task, each tracked by name.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use tandem_config::Config;
use tandem_control::admin::StateSource;
use tandem_proxy::Lifecycle;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::build::{Built, node_max_conns};
use super::reload::ListenKey;
use super::tasks::{Tasks, Until};
use super::workers::{AcceptLoops, Workers};
use super::{
    Daemon, Inner, RunningListener, RunningService, Shared, acme, ha, live, ocsp, runtime, sticky,
    upgrade,
};
use crate::readiness::Gate;
use crate::upgrade::Socket;

impl Built {
    /// Serves what was built: accept loops, control socket, admin port, and the
    /// background tasks (sticky sweeper and saver, VRRP wiring, redirect rules).
    pub fn start(self) -> Daemon {
        let Built {
            started,
            config,
            config_path,
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
            acme: acme_state,
        } = self;
        let tasks = Tasks::default();
        let life = Lifecycle {
            limit: tandem_proxy::limits::GlobalLimit::new(node_max_conns(&config)),
            stop_accepting: CancellationToken::new(),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let workers = match Workers::for_threads(config.global.threads) {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot start the worker threads ({e}): serving on the main thread");
                None
            }
        };
        if let Some(w) = &workers {
            info!(workers = w.len(), "connections served on worker threads");
        }
        let mut inner = Inner {
            listeners: HashMap::new(),
            services,
            monitor,
            workers,
        };
        for (key, service, l) in listeners {
            spawn_listener(&life, &mut inner, key, &service, l);
        }
        let view = services_view(&inner, &config);
        let shared = Arc::new(Shared {
            started,
            config_path,
            config: ArcSwap::from_pointee(config.clone()),
            pools: pools.clone(),
            services: ArcSwap::from_pointee(view),
            health: inner.monitor.board(),
            workers: inner.workers.clone(),
            inner: Mutex::new(inner),
            life,
            tasks: tasks.clone(),
            reloads: AtomicU64::new(0),
            admin: admin.as_ref().map(|(a, _)| *a),
            control_socket: control.as_ref().map(|(p, _)| p.clone()),
            vrrp,
            redirect_leader,
            sync,
            redirect,
            live: Default::default(),
            announce: announce.clone(),
            runtime_pools: Default::default(),
            handoff: upgrade::Handoff {
                accepting: tasks.stop().child_token(),
                ..Default::default()
            },
        });
        let daemon = Daemon { shared };
        let stop = tasks.stop().clone();
        if config.global.state_dir.is_some() {
            tasks.spawn(
                "sticky saver",
                Until::Shutdown,
                sticky::save_every(daemon.clone(), stop.clone()),
            );
        }
        tasks.spawn(
            "sticky sweeper",
            Until::Shutdown,
            sticky::sweep_every(pools.clone(), stop.clone()),
        );
        if let Some(plane) = daemon.redirect() {
            tasks.spawn(
                "redirect rules",
                Until::Shutdown,
                plane.clone().follow(pools.clone(), stop.clone()),
            );
            if let Some(rx) = takeovers {
                tasks.spawn(
                    "conntrackd status",
                    Until::Shutdown,
                    plane.clone().watch_conntrack(stop.clone()),
                );
                tasks.spawn(
                    "conntrackd takeovers",
                    Until::Done,
                    plane.clone().commit_takeovers(rx, stop.clone()),
                );
            }
        }
        ha::start(&daemon, &tasks, gate);
        if let Some(part) = &announce {
            super::announce::start(&daemon, &tasks, part, Gate::for_config(&config));
        }
        tasks.spawn(
            "agent weights",
            Until::Shutdown,
            runtime::follow_agent_weights(daemon.clone(), stop.clone()),
        );
        // The event log feeds the status page and `tandem ctl monitor`.
        if admin.is_some() || control.is_some() {
            tasks.spawn(
                "status history",
                Until::Shutdown,
                live::follow(daemon.clone(), stop.clone()),
            );
        }
        tasks.spawn(
            "ocsp",
            Until::Shutdown,
            ocsp::run(daemon.clone(), stop.clone()),
        );
        if let Some(state) = acme_state {
            tasks.spawn(
                "acme",
                Until::Shutdown,
                acme::run(daemon.clone(), state, stop.clone()),
            );
        }
        if let Some((path, l)) = control {
            daemon.keep_for_upgrade(Socket::Control { path: path.clone() }, l.as_fd());
            daemon.serve_control(&tasks, l);
            info!(socket = %path.display(), "control socket ready");
        }
        if let (Some((_, l)), Some(address)) = (&admin, config.global.admin_listen) {
            daemon.keep_for_upgrade(Socket::Admin { address }, l.as_fd());
        }
        if let Some((bound, l)) = admin {
            let source: Arc<dyn StateSource> = Arc::new(daemon.clone());
            let access = tandem_control::admin::AdminAccess {
                write: config.global.admin_write,
                allow: config.global.admin_allow.clone(),
            };
            tasks.spawn(
                "admin port",
                Until::Done,
                tandem_control::admin::serve_with(
                    l,
                    source,
                    access.clone(),
                    daemon.shared.handoff.accepting.clone(),
                ),
            );
            if !bound.ip().is_loopback() {
                warn!(admin = %bound, "the admin port is not on loopback: metrics and status are readable from the network");
            }
            if access.write {
                info!(admin = %bound, allow = ?config.global.admin_allow, "admin port ready: /metrics, /, /status.json; the status page may drain and enable backends");
            } else {
                info!(admin = %bound, "admin port ready: /metrics, /, /status.json");
            }
        }
        for s in daemon.services().iter() {
            let c = s.service.config.load();
            let addrs: Vec<String> = s.bound.iter().map(ToString::to_string).collect();
            info!(service = %c.name, pool = %c.pool, listen = %addrs.join(","), "service ready");
        }
        daemon
    }
}

impl Daemon {
    /// Answers the control socket's requests until shutdown.
    fn serve_control(&self, tasks: &Tasks, listener: tokio::net::UnixListener) {
        let (tx, mut rx) = mpsc::channel::<tandem_control::socket::Command>(64);
        let stop = tasks.stop().clone();
        let events = self.clone();
        let follow: tandem_control::socket::Follow = Arc::new(move || events.follow_events());
        // Ends at shutdown, or when an upgrade's successor takes the socket over.
        tasks.spawn(
            "control socket",
            Until::Done,
            tandem_control::socket::serve_until(
                listener,
                tx,
                self.shared.handoff.accepting.clone(),
                stop.clone(),
                Some(follow),
            ),
        );
        let daemon = self.clone();
        tasks.spawn("control requests", Until::Shutdown, async move {
            while let Some((request, reply)) = tokio::select! {
                () = stop.cancelled() => None,
                r = rx.recv() => r,
            } {
                let _ = reply.send(daemon.handle(request).await);
            }
        });
    }

    /// Keeps a copy of `fd` (the admin port's or control socket's) to hand over at an
    /// upgrade.
    fn keep_for_upgrade(&self, socket: Socket, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(fd) => self
                .shared
                .handoff
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((socket, fd)),
            Err(e) => warn!(
                ?socket,
                "cannot keep a copy to hand over at an upgrade: {e}"
            ),
        }
    }
}

/// Starts accepting on `l` for `service`, under `life`.
pub(super) fn spawn_listener(
    life: &Lifecycle,
    inner: &mut Inner,
    key: ListenKey,
    service: &str,
    l: TcpListener,
) {
    let svc = inner.services[service].clone();
    let stop = life.stop_accepting.child_token();
    let bound = l.local_addr().unwrap_or(key.address);
    let life = Lifecycle {
        stop_accepting: stop.clone(),
        ..life.clone()
    };
    let fd = l.as_fd().try_clone_to_owned().ok();
    let task = match &inner.workers {
        None => AcceptLoops::here(svc, l, life),
        Some(workers) => workers.serve(&svc, l, &life).unwrap_or_else(|(e, l)| {
            warn!(listen = %bound, "cannot accept on the worker threads ({e}): accepting on the main thread");
            AcceptLoops::here(svc, l, life)
        }),
    };
    inner.listeners.insert(
        key,
        RunningListener {
            service: service.to_string(),
            bound,
            stop,
            task,
            fd,
        },
    );
}

/// The services with their bound addresses, in configuration order.
pub(super) fn services_view(inner: &Inner, config: &Config) -> Vec<RunningService> {
    config
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
        .collect()
}
