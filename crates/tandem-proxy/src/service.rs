//! A service, tcp or http mode: the accept loop with its limits and the PROXY header
//! of each accepted connection; in tcp mode the TLS handshake and the life of each
//! relayed connection (an http connection goes on in [`crate::http`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tandem_balance::{Pick, PoolSet, now_ms};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::limits::{ClientLimits, ClientSlot, ClientTable, GlobalLimit};
use crate::proxy_header::Refusal;
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
    /// TLS handshakes that failed or timed out (the connection was closed).
    pub tls_handshake_errors: AtomicU64,
    /// HTTP requests refused with 400 as the client's error (ambiguous or malformed
    /// framing, Host and request-target rules).
    pub bad_requests: AtomicU64,
    /// HTTP responses cut off because the client did not take them within
    /// `http.client_timeout`.
    pub client_timeouts: AtomicU64,
    /// Connections refused under `accept_proxy`, by reason (index of
    /// [`crate::proxy_header::Refusal::index`]).
    pub proxy_refused: [AtomicU64; 4],
    /// In HTTP mode: the time from a request's head read to its backend's response
    /// head, per request answered by a backend.
    pub response_times: tandem_balance::ResponseTimes,
}

/// Most client addresses a service tracks for its per-client limits.
const CLIENT_TABLE_CAPACITY: usize = 100_000;

/// Each kind of warning of a service (limits, TLS, PROXY header, accept, backend,
/// client) is logged at most once in this long, with a count of those left out.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A running service: its current configuration (swapped on reload) and counters.
#[derive(Debug)]
pub struct Service {
    /// The service's configuration; a reload stores a new one.
    pub config: ArcSwap<tandem_config::Service>,
    /// Counters.
    pub stats: ServiceStats,
    pub(crate) pools: Arc<ArcSwap<PoolSet>>,
    http: ArcSwap<Option<Arc<crate::http::HttpState>>>,
    /// The TLS acceptor of a tcp service that terminates TLS.
    tls: ArcSwap<Option<Terminator>>,
    warn_limit: RateLimited,
    warn_tls: RateLimited,
    warn_proxy: RateLimited,
    warn_accept: RateLimited,
    warn_backend: RateLimited,
    warn_client: RateLimited,
    clients: Arc<ClientTable>,
    /// Its tcp mode connections open now, for `tandem ctl connections`.
    pub connections: crate::connections::Connections,
    /// Its idle HTTP connections parked without a task.
    pub(crate) parked: crate::http::park::Lot,
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
    tls: Option<Terminator>,
}

impl Service {
    /// Makes `config` ready; fails on unusable TLS material.
    pub fn prepare(config: tandem_config::Service) -> Result<Prepared, String> {
        let http = match config.mode {
            tandem_config::Mode::Http => Some(Arc::new(crate::http::HttpState::build(&config)?)),
            _ => None,
        };
        let tls = match (&config.tls, config.mode) {
            (Some(t), tandem_config::Mode::Tcp) => Some(Terminator(
                crate::tls::acceptor(t, &[])
                    .map_err(|e| format!("service {}: tls: {e}", config.name))?,
            )),
            _ => None,
        };
        Ok(Prepared { config, http, tls })
    }

    /// Takes a prepared configuration for new connections.
    pub fn install(&self, prepared: Prepared) {
        self.http.store(Arc::new(prepared.http));
        self.tls.store(Arc::new(prepared.tls));
        self.config.store(Arc::new(prepared.config));
    }

    /// A service relaying to pools from `pools`.
    pub fn new(prepared: Prepared, pools: Arc<ArcSwap<PoolSet>>) -> Arc<Service> {
        Arc::new(Service {
            config: ArcSwap::from_pointee(prepared.config),
            http: ArcSwap::from_pointee(prepared.http),
            tls: ArcSwap::from_pointee(prepared.tls),
            stats: ServiceStats::default(),
            pools,
            warn_limit: RateLimited::new(WARN_EVERY),
            warn_tls: RateLimited::new(WARN_EVERY),
            warn_proxy: RateLimited::new(WARN_EVERY),
            warn_accept: RateLimited::new(WARN_EVERY),
            warn_backend: RateLimited::new(WARN_EVERY),
            warn_client: RateLimited::new(WARN_EVERY),
            clients: ClientTable::new(CLIENT_TABLE_CAPACITY),
            connections: Default::default(),
            parked: Default::default(),
        })
    }

    /// Accepts on `listener` until `life.stop_accepting` fires, handling each connection
    /// in its own task, then hands the listener back (a reload may keep it open for
    /// another service). Accept errors never end the loop: resource exhaustion (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM) pauses it with a growing backoff.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, life: Lifecycle) -> TcpListener {
        self.serve_seated(listener, life, None).await
    }

    /// As [`Service::serve`], on one of several workers sharing the listener: with a
    /// `seat`, each connection is counted on its worker, and the loop leaves the socket
    /// to the other workers while its own holds more than its share.
    pub async fn serve_seated(
        self: Arc<Self>,
        listener: TcpListener,
        life: Lifecycle,
        seat: Option<crate::spread::Seat>,
    ) -> TcpListener {
        let local = listener.local_addr().ok();
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(seat) = &seat {
                seat.turn(&life.stop_accepting).await;
            }
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
                    let proxied = self.config.load().accept_proxy;
                    if proxied && !self.trusted_source(peer) {
                        drop(client);
                        continue;
                    }
                    // Under accept_proxy the client is known once its header is read.
                    let client_slot = if proxied {
                        None
                    } else {
                        let Ok(slot) = self.admit_client(peer) else {
                            drop(client);
                            continue;
                        };
                        slot
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
                    let worker = seat.as_ref().map(crate::spread::Seat::hold);
                    let service = self.clone();
                    let close_all = life.close_all.clone();
                    // (The tracker's token, held as a tracked task holds it: an HTTP
                    // connection parked between requests keeps it without a task.)
                    let mut held = Held {
                        _slot: slot,
                        _client: client_slot,
                        _node: node_slot,
                        _token: life.tracker.token(),
                        _worker: worker,
                    };
                    if !proxied && self.http.load().is_none() {
                        // A relayed connection: its task is the boxed connection
                        // future alone (128 bytes), not a task sized by the HTTP
                        // branch's state beside a boxed relay (384 bytes more, per
                        // idle connection).
                        let ends = Ends {
                            client: peer,
                            local: None,
                        };
                        let listener = local.unwrap_or(peer);
                        tokio::spawn(Box::pin(
                            service.handle(client, ends, listener, close_all, held),
                        ));
                        continue;
                    }
                    let fut = async move {
                        let mut ends = Ends {
                            client: peer,
                            local: None,
                        };
                        if proxied {
                            // Boxed: a connection carries the header's state only while
                            // it is read.
                            let Some(told) =
                                Box::pin(service.receive_proxy(&client, peer, &close_all)).await
                            else {
                                return;
                            };
                            ends = told;
                            let Ok(admitted) = service.admit_client(ends.client) else {
                                return;
                            };
                            held._client = admitted;
                        }
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
                                    ends.client,
                                    close_all,
                                    held,
                                ))
                                .await;
                            }
                            None => {
                                // Boxed too: an HTTP connection's task does not carry
                                // the size of a relayed one's.
                                Box::pin(service.handle(
                                    client,
                                    ends,
                                    local.unwrap_or(peer),
                                    close_all,
                                    held,
                                ))
                                .await;
                            }
                        }
                    };

                    tokio::spawn(fut);
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

    /// Whether `peer` may connect to a service under `accept_proxy`; counts and logs
    /// the refusal when not.
    fn trusted_source(&self, peer: SocketAddr) -> bool {
        let c = self.config.load();
        if crate::proxy_header::trusted(&c.accept_proxy_from, peer.ip()) {
            return true;
        }
        self.refuse_proxy(
            &c.name,
            peer,
            Refusal::Untrusted,
            "the source is not in accept_proxy_from",
        );
        false
    }

    /// Counts and logs (rate-limited) a connection refused under `accept_proxy`.
    fn refuse_proxy(&self, service: &str, peer: SocketAddr, reason: Refusal, why: &str) {
        self.stats.proxy_refused[reason.index()].fetch_add(1, Relaxed);
        if let Some(left_out) = self.warn_proxy.allow() {
            warn!(service = %service, source = %peer, reason = reason.name(), left_out, "accept_proxy: {why}: connection closed");
        }
    }

    /// Reads the PROXY header a trusted upstream sent first: the client and the
    /// address it reached, as the header gives them (the connection's own for a LOCAL
    /// header). `None` when refused (counted and logged) or when draining. The bound is
    /// `http.header_timeout` in http mode, `connect_timeout` in tcp mode.
    async fn receive_proxy(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
        close_all: &CancellationToken,
    ) -> Option<Ends> {
        let c = self.config.load_full();
        let within = match c.mode {
            tandem_config::Mode::Http => c.http.header_timeout,
            _ => c.connect_timeout,
        };
        let received = tokio::select! {
            received = crate::proxy_header::receive(client, within) => received,
            () = close_all.cancelled() => return None,
        };
        match received {
            Ok(Some((from, to))) => Some(Ends {
                client: from,
                local: Some(to),
            }),
            Ok(None) => Some(Ends {
                client: peer,
                local: None,
            }),
            Err((reason, why)) => {
                self.refuse_proxy(&c.name, peer, reason, &why);
                None
            }
        }
    }

    /// Counts and logs (rate-limited) a failed TLS handshake.
    pub(crate) fn tls_failed(&self, service: &str, client: SocketAddr, why: &str) {
        self.stats.tls_handshake_errors.fetch_add(1, Relaxed);
        if let Some(left_out) = self.warn_tls.allow() {
            warn!(service = %service, client = %client, left_out, "TLS handshake failed: {why}: connection closed");
        }
    }

    /// Serves a tcp mode connection to its end; `held` is let go then.
    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        ends: Ends,
        listener: SocketAddr,
        close_all: CancellationToken,
        _held: Held,
    ) {
        // (What lives across the relay is what each idle relayed connection costs: no
        // copies of the arguments, what is done with dropped before it.)
        let close_all = &close_all;
        self.stats.total.fetch_add(1, Relaxed);
        let started = Instant::now();
        let config = self.config.load_full();
        let peer = ends.client;
        let _ = client.set_nodelay(true);
        // The address the client reached: the PROXY header's, or getsockname, asked
        // only when a header to the backend needs it (the listener's may be 0.0.0.0).
        let header = |client: &TcpStream, tls: Option<&crate::proxy_header::TlsInfo>| match config
            .proxy_protocol
        {
            tandem_config::ProxyProtocol::None => None,
            version => {
                let local = ends
                    .local
                    .or_else(|| client.local_addr().ok())
                    .unwrap_or(listener);
                crate::proxy_header::header_with_tls(version, peer, local, tls)
            }
        };
        let acceptor = self.tls.load_full();
        // A TLS client's session first, within connect_timeout: no backend is asked
        // for a client that cannot complete it.
        let (client, header) = match acceptor.as_ref() {
            None => {
                let header = header(&client, None);
                (Client::Plain(client), header)
            }
            Some(Terminator(acceptor)) => {
                let handshake = Box::pin(tokio::time::timeout(
                    config.connect_timeout,
                    acceptor.accept(client),
                ));
                let handshake = tokio::select! {
                    done = handshake => done,
                    () = close_all.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        let (tcp, session) = tls.get_ref();
                        let header = header(tcp, Some(&crate::tls::info(session)));
                        (Client::Tls(Box::new(tls)), header)
                    }
                    Ok(Err(e)) => return self.tls_failed(&config.name, peer, &e.to_string()),
                    Err(_) => {
                        let why = format!("no handshake within {:?}", config.connect_timeout);
                        return self.tls_failed(&config.name, peer, &why);
                    }
                }
            }
        };
        drop(acceptor);
        // TLS passed through with sni routes: the ClientHello's server name chooses the
        // pool, and the bytes read to learn it go to the backend first, untouched.
        let mut hello = Vec::new();
        let mut pool = config.pool.as_str();
        if let Client::Plain(tcp) = &client
            && config.routes.iter().any(|r| r.sni.is_some())
        {
            let read = tokio::select! {
                read = Box::pin(read_client_hello(tcp, config.connect_timeout)) => read,
                () = close_all.cancelled() => return,
            };
            let Some((bytes, name)) = read else {
                return;
            };
            hello = bytes;
            let (route, chosen) =
                crate::http::policy::route::by_name(&config.routes, &config.pool, name.as_deref());
            debug!(target: "tandem::route", service = %config.name, client = %peer, sni = name.as_deref().unwrap_or("-"), route = route.map_or(0, |i| i + 1), "pool {chosen}");
            pool = chosen;
        }
        // Boxed: the connect phase's state is freed once connected, instead of sizing
        // the task of every (mostly idle) relayed connection.
        let Some((mut backend, pick)) = Box::pin(self.connect(&config, pool, peer)).await else {
            self.stats.no_backend.fetch_add(1, Relaxed);
            info!(target: "tandem::conn", service = %config.name, client = %peer, backend = "-", to_backend = 0u64, to_client = 0u64, duration_ms = started.elapsed().as_millis() as u64, end = "no backend", "connection");
            return;
        };
        let state = pick.lease.state.clone();
        // Listed for `tandem ctl connections` until it ends; closing it from there
        // cancels its own token, which the relay watches (close_all cancels it too).
        let registered = self
            .connections
            .register(peer, pick.lease.address, &pick.pool.name);
        let entry = registered.connection.clone();
        let own = registered.connection.close_token();
        let meter = move |to_backend: bool, n: u64| {
            if to_backend {
                state.record_bytes(n, 0);
            } else {
                state.record_bytes(0, n);
            }
            entry.record(to_backend, n);
        };
        let header_error = match &header {
            Some(h) => Box::pin(backend.write_all(h)).await.err(),
            None => None,
        };
        drop(header);
        let header_error = match header_error {
            None if !hello.is_empty() => {
                pick.lease.state.record_bytes(hello.len() as u64, 0);
                registered.connection.record(true, hello.len() as u64);
                Box::pin(backend.write_all(&hello)).await.err()
            }
            other => other,
        };
        drop(hello);
        let cancel = relay::Cancel {
            own,
            all: close_all,
        };
        // (Matched in place, the client borrowed: a tuple or a moved binding would be
        // one more copy of the socket in every idle relayed connection's state.)
        let outcome = match header_error {
            Some(e) => relay::Outcome {
                to_backend: 0,
                to_client: 0,
                end: End::BackendError(format!("sending PROXY header: {e}")),
            },
            None => match client {
                // One plain relay call site, so the task holds one relay's state.
                Client::Plain(ref client) => {
                    relay::relay(client, &backend, config.idle_timeout, cancel, &meter).await
                }
                Client::Tls(tls) => {
                    Box::pin(relay::relay_stream(
                        tls,
                        &mut backend,
                        config.idle_timeout,
                        cancel,
                        &meter,
                    ))
                    .await
                }
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
        drop(registered);
    }

    /// Picks and connects, trying up to `retries` other backends when a connect fails.
    async fn connect(
        &self,
        config: &tandem_config::Service,
        pool: &str,
        peer: SocketAddr,
    ) -> Option<(TcpStream, Pick)> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let pools = self.pools.load();
        for _ in 0..=config.retries {
            let pick = pools.pick(pool, peer.ip(), &tried, now_ms())?;
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

/// Most bytes read while waiting for a whole ClientHello (a record's most, and its
/// header): a longer one is not read further, and goes to the default pool.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// Reads the start of a connection until it holds a whole TLS ClientHello, is not TLS,
/// or `within` passes: the bytes read (to be relayed as they are) and the server name
/// the hello asks for. `None` when the client closed or failed first.
async fn read_client_hello(
    client: &TcpStream,
    within: Duration,
) -> Option<(Vec<u8>, Option<String>)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut read = Vec::new();
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    while read.len() < MAX_HELLO {
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Err(_) => return Some((read, None)),
            Ok(Err(_)) => return None,
            Ok(Ok(())) => {}
        }
        let n = match client.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        };
        read.extend_from_slice(&chunk[..n]);
        let mut fed = &chunk[..n];
        while !fed.is_empty() {
            match acceptor.read_tls(&mut fed) {
                Ok(0) | Err(_) => return Some((read, None)),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_string);
                return Some((read, name));
            }
            Err(_) => return Some((read, None)),
        }
    }
    Some((read, None))
}

/// The TLS acceptor of a tcp service that terminates TLS.
struct Terminator(TlsAcceptor);

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

/// A connection's two addresses as the service sees them.
#[derive(Debug, Clone, Copy)]
struct Ends {
    /// The client: the peer, or the one a trusted PROXY header names.
    client: SocketAddr,
    /// The address the client reached, when a PROXY header said it.
    local: Option<SocketAddr>,
}

/// A client connection, as tandem relays it: bytes as they are, or a TLS session it
/// terminated.
enum Client {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection slot under the service's limit, freed on drop.
struct Slot(Arc<Service>);

/// What keeps an open client connection counted, wherever it is served (an HTTP
/// connection parked between requests has no task): its slots under the service's,
/// the client's and the node's limits, and its token of the daemon's task tracker (a
/// drain waits for it). Released when dropped, in that order.
pub(crate) struct Held {
    _slot: Slot,
    _client: Option<ClientSlot>,
    _node: crate::limits::GlobalSlot,
    _token: tokio_util::task::task_tracker::TaskTrackerToken,
    _worker: Option<crate::spread::Hold>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes a rustls client sends: its ClientHello naming `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    /// What `read_client_hello` makes of `bytes`, sent in pieces of `piece` bytes.
    async fn read_sent(bytes: Vec<u8>, piece: usize) -> Option<(Vec<u8>, Option<String>)> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            for p in bytes.chunks(piece) {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            s
        });
        let (server, _) = l.accept().await.unwrap();
        let read = read_client_hello(&server, Duration::from_secs(5)).await;
        drop(writer.await.unwrap());
        read
    }

    #[tokio::test]
    async fn a_client_hello_in_pieces_is_read_whole_and_kept_as_it_came() {
        let hello = client_hello("a.example.test");
        assert!(hello.len() > 100, "{} bytes", hello.len());
        let (read, name) = read_sent(hello.clone(), 37).await.unwrap();
        assert_eq!(name.as_deref(), Some("a.example.test"));
        assert_eq!(read, hello, "every byte read is relayed, untouched");
    }

    #[tokio::test]
    async fn what_is_not_tls_has_no_server_name_and_is_kept() {
        let text = b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n".to_vec();
        let (read, name) = read_sent(text.clone(), text.len()).await.unwrap();
        assert_eq!(name, None);
        assert_eq!(read, text);
    }
}
