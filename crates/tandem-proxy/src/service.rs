//! A TCP service: the accept loop and the life of each relayed connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tandem_balance::{Pick, PoolSet, now_ms};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::limits::{ClientLimits, ClientSlot, ClientTable, GlobalLimit};
use crate::ratelog::RateLimited;
use crate::relay::{self, End};

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections accepted and handled (not rejected).
    pub total: AtomicU64,
    /// Connections closed at once because the service was at its limit.
    pub rejected: AtomicU64,
    /// Connections closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Accept errors (such as EMFILE) that paused the listener.
    pub accept_errors: AtomicU64,
    /// Connections closed at once by a per-client limit (count or rate).
    pub client_limited: AtomicU64,
    /// Connections closed at once because the node was at `global.max_conns`.
    pub node_limited: AtomicU64,
}

/// Most client addresses a service tracks for its per-client limits.
const CLIENT_TABLE_CAPACITY: usize = 100_000;

/// A running service: its current configuration (swapped on reload) and counters.
#[derive(Debug)]
pub struct Service {
    /// The service's configuration; a reload stores a new one.
    pub config: ArcSwap<tandem_config::Service>,
    /// Counters.
    pub stats: ServiceStats,
    pub(crate) pools: Arc<ArcSwap<PoolSet>>,
    http: ArcSwap<Option<Arc<crate::http::HttpState>>>,
    warn_limit: RateLimited,
    warn_accept: RateLimited,
    warn_backend: RateLimited,
    warn_client: RateLimited,
    clients: Arc<ClientTable>,
}

/// What the accept loop and connections need to stop.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Stops accepting; established connections go on.
    pub stop_accepting: CancellationToken,
    /// Closes established connections (the drain deadline passed).
    pub close_all: CancellationToken,
    /// Tracks connection tasks, so the daemon can wait for them.
    pub tracker: TaskTracker,
    /// The node-wide connection limit.
    pub limit: Arc<GlobalLimit>,
}

/// A configuration checked and made ready to install (TLS files read, HTTP client
/// built), so that a reload can fail before it changes anything.
#[derive(Debug)]
pub struct Prepared {
    config: tandem_config::Service,
    http: Option<Arc<crate::http::HttpState>>,
}

impl Service {
    /// Makes `config` ready; fails on unusable TLS material.
    pub fn prepare(config: tandem_config::Service) -> Result<Prepared, String> {
        let http = match config.mode {
            tandem_config::Mode::Http => Some(Arc::new(crate::http::HttpState::build(&config)?)),
            _ => None,
        };
        Ok(Prepared { config, http })
    }

    /// Takes a prepared configuration for new connections.
    pub fn install(&self, prepared: Prepared) {
        self.http.store(Arc::new(prepared.http));
        self.config.store(Arc::new(prepared.config));
    }

    /// A service relaying to pools from `pools`.
    pub fn new(prepared: Prepared, pools: Arc<ArcSwap<PoolSet>>) -> Arc<Service> {
        Arc::new(Service {
            config: ArcSwap::from_pointee(prepared.config),
            http: ArcSwap::from_pointee(prepared.http),
            stats: ServiceStats::default(),
            pools,
            warn_limit: RateLimited::new(Duration::from_secs(5)),
            warn_accept: RateLimited::new(Duration::from_secs(5)),
            warn_backend: RateLimited::new(Duration::from_secs(5)),
            warn_client: RateLimited::new(Duration::from_secs(5)),
            clients: ClientTable::new(CLIENT_TABLE_CAPACITY),
        })
    }

    /// Accepts on `listener` until `life.stop_accepting` fires, handling each connection
    /// in its own task, then hands the listener back (a reload may keep it open for
    /// another service). Accept errors never end the loop: resource exhaustion (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM) pauses it with a growing backoff.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, life: Lifecycle) -> TcpListener {
        let local = listener.local_addr().ok();
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                () = life.stop_accepting.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((client, peer)) => {
                    backoff = Duration::from_millis(5);
                    let Some(node_slot) = life.limit.enter() else {
                        self.stats.node_limited.fetch_add(1, Relaxed);
                        if let Some(left_out) = self.warn_limit.allow() {
                            warn!(service = %self.config.load().name, limit = life.limit.max(), left_out, "node at global.max_conns: connection from {peer} closed");
                        }
                        drop(client);
                        continue;
                    };
                    let Ok(client_slot) = self.admit_client(peer) else {
                        drop(client);
                        continue;
                    };
                    let Some(slot) = self.enter() else {
                        self.stats.rejected.fetch_add(1, Relaxed);
                        if let Some(left_out) = self.warn_limit.allow() {
                            let c = self.config.load();
                            warn!(service = %c.name, limit = c.max_conns, left_out, "service at its connection limit: connection from {peer} closed");
                        }
                        drop(client);
                        continue;
                    };
                    let service = self.clone();
                    let close_all = life.close_all.clone();
                    let fut = async move {
                        match service.http.load_full().as_ref().clone() {
                            Some(state) => {
                                service.stats.total.fetch_add(1, Relaxed);
                                let _ = client.set_nodelay(true);
                                // Boxed: a TCP connection's task then carries only its own
                                // state, which is what each idle relayed connection costs.
                                Box::pin(crate::http::serve(
                                    service.clone(),
                                    state,
                                    client,
                                    peer,
                                    close_all,
                                ))
                                .await;
                            }
                            None => {
                                service
                                    .handle(client, peer, local.unwrap_or(peer), &close_all)
                                    .await
                            }
                        }
                        drop(slot);
                        drop(client_slot);
                        drop(node_slot);
                    };

                    life.tracker.spawn(fut);
                }
                Err(e) => {
                    self.stats.accept_errors.fetch_add(1, Relaxed);
                    if is_resource_exhaustion(&e) {
                        if let Some(left_out) = self.warn_accept.allow() {
                            warn!(service = %self.config.load().name, error = %e, left_out, pause_ms = backoff.as_millis() as u64, "accept failed: pausing the listener");
                        }
                        tokio::select! {
                            () = life.stop_accepting.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else {
                        debug!(error = %e, "accept error");
                    }
                }
            }
        }
        listener
    }

    /// Takes a slot under the per-client limits (`Ok(None)` when none is set), or counts
    /// and logs the refusal.
    fn admit_client(&self, peer: SocketAddr) -> Result<Option<ClientSlot>, ()> {
        let c = self.config.load();
        let limits = ClientLimits {
            max_conns: c.max_conns_per_client,
            rate: c.rate_per_client,
        };
        if !limits.active() {
            return Ok(None);
        }
        match self.clients.admit(peer.ip(), limits, Instant::now()) {
            Ok(slot) => Ok(Some(slot)),
            Err(refusal) => {
                self.stats.client_limited.fetch_add(1, Relaxed);
                if let Some(left_out) = self.warn_client.allow() {
                    warn!(service = %c.name, client = %peer.ip(), left_out, "{}: connection closed", refusal.reason());
                }
                Err(())
            }
        }
    }

    /// Takes a slot under the service's max_conns, or `None` at the limit.
    fn enter(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.load().max_conns as u64;
        let ok = self
            .stats
            .active
            .fetch_update(Relaxed, Relaxed, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok();
        ok.then(|| Slot(self.clone()))
    }

    async fn handle(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        listener: SocketAddr,
        close_all: &CancellationToken,
    ) {
        self.stats.total.fetch_add(1, Relaxed);
        let started = Instant::now();
        let config = self.config.load_full();
        let _ = client.set_nodelay(true);
        // Boxed: the connect phase's state is freed once connected, instead of sizing
        // the task of every (mostly idle) relayed connection.
        let Some((mut backend, pick)) = Box::pin(self.connect(&config, peer)).await else {
            self.stats.no_backend.fetch_add(1, Relaxed);
            info!(target: "tandem::conn", service = %config.name, client = %peer, backend = "-", to_backend = 0u64, to_client = 0u64, duration_ms = started.elapsed().as_millis() as u64, end = "no backend", "connection");
            return;
        };
        // The address the client reached (getsockname), asked only when a PROXY header
        // needs it: the listener's may be 0.0.0.0.
        let header = match config.proxy_protocol {
            tandem_config::ProxyProtocol::None => None,
            version => {
                let local = client.local_addr().unwrap_or(listener);
                crate::proxy_header::header(version, peer, local)
            }
        };
        let state = pick.lease.state.clone();
        let meter = move |to_backend: bool, n: u64| {
            if to_backend {
                state.record_bytes(n, 0);
            } else {
                state.record_bytes(0, n);
            }
        };
        let header_error = match &header {
            Some(h) => Box::pin(backend.write_all(h)).await.err(),
            None => None,
        };
        // One relay call site, so the task holds one relay's state.
        let outcome = match header_error {
            None => relay::relay(&client, &backend, config.idle_timeout, close_all, &meter).await,
            Some(e) => relay::Outcome {
                to_backend: 0,
                to_client: 0,
                end: End::BackendError(format!("sending PROXY header: {e}")),
            },
        };
        info!(
            target: "tandem::conn",
            service = %config.name,
            client = %peer,
            backend = %pick.lease.address,
            pool = %pick.pool.name,
            sticky = pick.sticky,
            to_backend = outcome.to_backend,
            to_client = outcome.to_client,
            duration_ms = started.elapsed().as_millis() as u64,
            end = %outcome.end,
            "connection"
        );
    }

    /// Picks and connects, trying up to `retries` other backends when a connect fails.
    async fn connect(
        &self,
        config: &tandem_config::Service,
        peer: SocketAddr,
    ) -> Option<(TcpStream, Pick)> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let pools = self.pools.load();
        for _ in 0..=config.retries {
            let pick = pools.pick(&config.pool, peer.ip(), &tried, now_ms())?;
            let address = pick.lease.address;
            let error =
                match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((stream, pick));
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {:?}", config.connect_timeout),
                };
            pick.lease.state.record_connect_error();
            if let Some(left_out) = self.warn_backend.allow() {
                warn!(service = %config.name, pool = %pick.pool.name, backend = %address, error, left_out, "connect to backend failed");
            }
            tried.push(address);
        }
        None
    }
}

/// A connection slot under the service's limit, freed on drop.
struct Slot(Arc<Service>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}
