//! HTTP mode: a reverse proxy. Clients speak HTTP/1.1 (keep-alive), HTTP/2 over TLS
//! (ALPN) or h2c; each request picks its own backend and goes out as HTTP/1.1 on kept-
//! alive connections. Bodies stream both ways, never buffered whole. HTTP/1.1 of the
//! common shape takes the fast path ([`h1`]); the rest, the general path here, on
//! hyper. Both ask [`policy`] what to forward, answer and send again (docs/http.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tandem_balance::{Lease, PoolSet, now_ms};
use tandem_config::HeaderRules;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::framing::{Sniffer, Verdicts};

pub(crate) mod chunked;
mod h1;
mod lean;
pub(crate) mod park;
pub mod policy;

type ProxyBody = BoxBody<Bytes, lean::BoxError>;

/// Streams an HTTP/2 client may have open at once on one connection (hyper's default,
/// set here because the backend pool is sized by it).
const H2_MAX_STREAMS: u32 = 200;

/// What an HTTP service needs besides its configuration: the pooled client to the
/// backends and the TLS acceptor. Built anew on reload (TLS files are read again).
pub struct HttpState {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    tls: Option<TlsAcceptor>,
    scheme: &'static str,
    /// HTTP/1.1 requests take the fast path (plain-text backends only).
    fast: bool,
    /// Idle backend connections of the fast path.
    idle: h1::IdlePool,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpState {
    /// Prepares `config` (an http service): fails when its TLS material is unusable.
    pub fn build(config: &tandem_config::Service) -> Result<HttpState, String> {
        let tls = match &config.tls {
            Some(t) => Some(
                crate::tls::acceptor(t, crate::tls::HTTP_ALPN)
                    .map_err(|e| format!("service {}: tls: {e}", config.name))?,
            ),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let backend_tls = crate::tls::client_config(
            config.http.backend_verify,
            config.http.backend_ca_file.as_deref(),
        )
        .map_err(|e| format!("service {}: backend tls: {e}", config.name))?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(backend_tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        // Besides `backend_max_idle`, the general path keeps as many idle connections as
        // one HTTP/2 client may have streams: its responses come back in bursts, each
        // connection returning to the pool before the next requests arrive, and a pool
        // capped below the requests in flight closed the surplus to open it again a
        // moment later (h2load -c10 -m10: a new backend connection every 70 requests,
        // a third of the proxy's CPU).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.http.backend_idle_timeout)
            .pool_max_idle_per_host(config.http.backend_max_idle + H2_MAX_STREAMS as usize)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let scheme = if config.http.backend_tls {
            "https"
        } else {
            "http"
        };
        Ok(HttpState {
            client,
            tls,
            scheme,
            fast: !config.http.backend_tls,
            idle: h1::IdlePool::default(),
        })
    }
}

pub use policy::cookie_id;

/// Serves one client connection in HTTP mode until it ends: HTTP/1.1 on the fast path
/// while requests have its shape, the general (hyper) path for the rest of the
/// connection from the first that has not, and for HTTP/2.
pub(crate) async fn serve(
    service: Arc<crate::Service>,
    state: Arc<HttpState>,
    stream: TcpStream,
    peer: SocketAddr,
    close_all: CancellationToken,
    held: crate::service::Held,
) {
    let config = service.config.load_full();
    let conn = Connection::new(service.clone(), state.clone(), peer, close_all, 0);
    match &state.tls {
        Some(acceptor) => {
            let header_timeout = config.http.header_timeout;
            // Boxed: the handshake's state is freed once it is done.
            let handshake = Box::pin(tokio::time::timeout(
                header_timeout,
                acceptor.accept(stream),
            ));
            let tls = match handshake.await {
                // Boxed: a connection's future does not carry the session's size, and a
                // plain connection's not at all.
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => return service.tls_failed(&config.name, peer, &e.to_string()),
                Err(_) => {
                    let why = format!("no handshake within {header_timeout:?}");
                    return service.tls_failed(&config.name, peer, &why);
                }
            };
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn == Some(tandem_net::acme::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was the answer.
                return;
            }
            let h2 = alpn == Some(b"h2");
            serve_stream(conn, &config, tls, state.fast && !h2).await;
        }
        None if state.fast => serve_plain(conn, stream, held).await,
        None => serve_stream(conn, &config, stream, false).await,
    }
}

/// Serves a plain connection on the fast path, then on the general path when a
/// request needs it. One idle for [`park::PARK_AFTER`] is parked: this task ends, and
/// a new one serves the connection once its socket is readable.
async fn serve_plain(conn: Arc<Connection>, stream: TcpStream, held: crate::service::Held) {
    let (mut conn, mut stream, mut held) = (conn, stream, held);
    loop {
        match fast_path(&conn, &mut stream, true).await {
            FastEnd::Closed => return,
            FastEnd::Handoff(rest) => {
                let config = conn.service.config.load_full();
                // Boxed: a connection the fast path serves to its end never carries the
                // general path's state.
                Box::pin(general_path(conn, &config, stream, rest)).await;
                return;
            }
            FastEnd::Idle(deadline) => {
                // What the connection's next task needs to build it again: no more (its
                // shared state is made anew then).
                let resume = park::Resume {
                    stream,
                    service: conn.service.clone(),
                    state: conn.state.clone(),
                    peer: conn.peer,
                    close_all: conn.close_all.clone(),
                    requests: conn.requests.load(Relaxed),
                    held,
                };
                drop(conn);
                let Some(readable) = park::park(resume, deadline) else {
                    return;
                };
                (conn, stream, held) = readable.serve_on();
            }
        }
    }
}

/// Serves a connection's requests on the fast path while `fast` and they have its
/// shape, then on the general path.
async fn serve_stream<S>(
    conn: Arc<Connection>,
    config: &tandem_config::Service,
    mut io: S,
    fast: bool,
) where
    S: h1::ClientIo + Send + 'static,
{
    let rest = if fast {
        match fast_path(&conn, &mut io, false).await {
            FastEnd::Handoff(rest) => rest,
            FastEnd::Closed | FastEnd::Idle(_) => return,
        }
    } else {
        Bytes::new()
    };
    // Boxed: a connection the fast path serves to its end never carries the general
    // path's state.
    Box::pin(general_path(conn, config, io, rest)).await;
}

/// How the fast path left a connection.
enum FastEnd {
    /// Closed.
    Closed,
    /// The general path goes on, with these bytes read and not used.
    Handoff(Bytes),
    /// Idle for [`park::PARK_AFTER`] with nothing buffered and no backend connection
    /// held; its next request head is due by this deadline.
    Idle(tokio::time::Instant),
}

/// Runs the fast path until the connection closes, needs the general path, or (when it
/// `parks`) has been idle for [`park::PARK_AFTER`].
async fn fast_path<S>(conn: &Connection, client: &mut S, parks: bool) -> FastEnd
where
    S: h1::ClientIo,
{
    let idle = std::sync::atomic::AtomicBool::new(true);
    let mut fast = h1::FastPath::new(conn, &conn.state, &idle, parks);
    let end = {
        let serving = fast.serve(client);
        let mut serving = std::pin::pin!(serving);
        tokio::select! {
            biased;
            end = serving.as_mut() => end,
            () = conn.close_all.cancelled() => {
                // Draining: a connection between requests closes now; one in the middle
                // of a request gets a second to finish it (its response says close).
                if !idle.load(Relaxed) {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), serving).await;
                }
                h1::End::Closed
            }
        }
    };
    fast.finish();
    match end {
        h1::End::Closed => FastEnd::Closed,
        h1::End::Handoff(rest) => FastEnd::Handoff(rest.freeze()),
        h1::End::Idle(deadline) => FastEnd::Idle(deadline),
    }
}

/// Serves the rest of a connection with hyper (HTTP/1.1 and HTTP/2), starting with the
/// bytes the fast path read and left.
async fn general_path<S>(conn: Arc<Connection>, config: &tandem_config::Service, io: S, read: Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h = &config.http;
    let close_all = conn.close_all.clone();
    let verdicts = conn.verdicts.clone();
    let for_handler = conn.clone();
    let handler = hyper::service::service_fn(move |req| {
        let conn = for_handler.clone();
        // Boxed: hyper's HTTP/2 server moves each stream's future into a task of its
        // own, and a request's state is several KiB (copied three times, 1.6 % of an
        // h2c request's CPU in perf) where a box is one allocation.
        async move { Ok::<_, Infallible>(Box::pin(conn.handle(req)).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(h.header_timeout)
        .max_buf_size(h.max_header_size)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(h.max_header_size as u32);
    let io = Sniffer::new(io, verdicts.clone())
        .replaying(read)
        .max_head(h.max_header_size)
        .write_timeout(h.client_timeout);
    let upgraded = conn.clone();
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), handler);
    let mut served = std::pin::pin!(served);
    tokio::select! {
        _ = served.as_mut() => {}
        () = close_all.cancelled() => {
            // The drain deadline: ask the connection to finish what it has begun.
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), served).await;
        }
    }
    let tunnel = upgraded
        .tunnel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(tunnel) = tunnel {
        let _ = tunnel.await;
    }
    if verdicts.write_timed_out() {
        conn.client_timed_out(config);
    }
}

impl Connection {
    /// A connection of `peer` to `service`, that has served `requests` before.
    fn new(
        service: Arc<crate::Service>,
        state: Arc<HttpState>,
        peer: SocketAddr,
        close_all: CancellationToken,
        requests: u32,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            service,
            client: policy::Client::new(peer.ip(), state.tls.is_some()),
            state,
            peer,
            requests: AtomicU32::new(requests),
            verdicts: Arc::new(Verdicts::default()),
            close_all,
            tunnel: std::sync::Mutex::new(None),
        })
    }
}

struct Connection {
    service: Arc<crate::Service>,
    state: Arc<HttpState>,
    peer: SocketAddr,
    /// The client as the forwarding fields name it.
    client: policy::Client,
    requests: AtomicU32,
    verdicts: Arc<Verdicts>,
    close_all: CancellationToken,
    /// The tunnel of an upgraded request (WebSocket...), which the connection's task
    /// waits for, so that it keeps its slot and is drained like any connection.
    tunnel: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The protocol an HTTP/1.1 request asks to switch to: its Upgrade field, when its
/// Connection field names `upgrade`.
fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let names_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    names_upgrade
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// X-Forwarded-For's name.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The host a request names: an absolute-form target's authority (HTTP/2's
/// :authority), whatever Host says (RFC 9112 3.2.2, RFC 9113 8.3.1), else Host.
fn request_host(parts: &hyper::http::request::Parts) -> Option<&[u8]> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
    }
}

/// Joins the Cookie fields an HTTP/2 client split into one, its crumbs separated by
/// "; ", as an HTTP/1.1 backend expects a single Cookie field (RFC 9113 8.2.3).
fn join_split_cookie(headers: &mut HeaderMap) {
    let crumbs = headers.get_all(header::COOKIE);
    if crumbs.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, crumb) in crumbs.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The Connection values are cloned (a clone shares its bytes) so that the names
    // they list can be removed as they are read; a list only for a second field.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let more: Vec<HeaderValue> = connection.cloned().collect();
    for value in first.iter().chain(&more) {
        for name in value.to_str().unwrap_or("").split(',') {
            headers.remove(name.trim());
        }
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
}

/// [`policy::fields::HOP_BY_HOP`] as header names, made once (a `&str` is parsed into
/// a name at every removal).
fn hop_by_hop() -> &'static [HeaderName] {
    static NAMES: std::sync::OnceLock<Vec<HeaderName>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| header_names(&policy::fields::HOP_BY_HOP))
}

/// [`policy::fields::REPLACED`] as header names, made once.
fn replaced() -> &'static [HeaderName] {
    static NAMES: std::sync::OnceLock<Vec<HeaderName>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| header_names(&policy::fields::REPLACED))
}

fn header_names(names: &[&'static str]) -> Vec<HeaderName> {
    names.iter().map(|&n| HeaderName::from_static(n)).collect()
}

/// Drops the fields the rules remove or set (the rules' `set` and `add` fields are
/// written with tandem's own, by [`policy::request_fields`] and
/// [`policy::response_fields`]).
fn drop_ruled_out(headers: &mut HeaderMap, rules: &HeaderRules) {
    for name in rules.remove.iter().chain(rules.set.iter().map(|(n, _)| n)) {
        headers.remove(name.as_str());
    }
}

/// Appends a field the policy gives as its name and value pieces (the value joined
/// once, into the field as it is; the forwarding fields' names made once).
fn append_field(headers: &mut HeaderMap, name: &str, value: &[&[u8]]) {
    static FORWARDING: std::sync::OnceLock<Vec<HeaderName>> = std::sync::OnceLock::new();
    let known = FORWARDING.get_or_init(|| {
        header_names(&[
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "via",
        ])
    });
    let name = match known.iter().find(|n| n.as_str() == name) {
        Some(n) => n.clone(),
        None => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => n,
            Err(_) => return,
        },
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value.concat())) {
        headers.append(name, v);
    }
}

/// An answer of tandem's own (the body format of [`policy::answer_body`]).
fn error_response(refusal: policy::Refusal) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in policy::ANSWER_FIELDS {
        response = response.header(name, value);
    }
    response
        .body(
            Full::new(Bytes::from(policy::answer_body(refusal)))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

/// The answer a route gives (redirect or respond); to a HEAD request, its head only
/// (with the body's length: HTTP/2 refuses a HEAD response's body).
fn route_answer(answer: policy::route::Answer, head: bool) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = Response::builder().status(status);
    for (name, value) in &answer.fields {
        response = response.header(*name, value.as_str());
    }
    let body = if head {
        response = response.header(header::CONTENT_LENGTH, answer.body.len());
        Bytes::new()
    } else {
        Bytes::from(answer.body)
    };
    response
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap_or_else(|_| error_response(policy::Cause::BadAnswer.refusal()))
}

/// Notes at debug level which route a request took.
pub(crate) fn log_route(
    config: &tandem_config::Service,
    route: Option<usize>,
    decision: &policy::route::Decision<'_>,
) {
    if !tracing::enabled!(target: "tandem::route", tracing::Level::DEBUG) {
        return;
    }
    let to = match decision {
        policy::route::Decision::Pool(p) => format!("pool {p}"),
        policy::route::Decision::Answer(a) => format!("answer {}", a.status),
    };
    match route {
        Some(i) => {
            tracing::debug!(target: "tandem::route", service = %config.name, route = i + 1, "route {} matched: {to}", i + 1)
        }
        None => {
            tracing::debug!(target: "tandem::route", service = %config.name, "no route matched: {to}")
        }
    }
}

/// The answer for a request no backend answered.
fn own_answer(cause: policy::Cause) -> (StatusCode, Option<SocketAddr>, Response<Logged>) {
    let response = error_response(cause.refusal());
    (response.status(), None, unlogged(response))
}

/// The two sides of an upgraded request and the protocol the backend switched to.
type Tunnel = (
    hyper::upgrade::OnUpgrade,
    hyper::upgrade::OnUpgrade,
    Option<HeaderValue>,
);

/// Why a backend request got no response.
enum Failed {
    /// The client's body failed (the client's error).
    ClientBody,
    /// No connection to the backend (the error's text).
    Connect(String),
    /// Sent, and no usable response came.
    Send(policy::SendError, String),
}

/// The backend chosen for a request.
struct Chosen {
    lease: Lease,
    pool: Arc<tandem_balance::Pool>,
    /// The Set-Cookie value that pins the client to this new choice.
    set_cookie: Option<String>,
}

impl Connection {
    /// A write to the client made no progress within `client_timeout`: counted and
    /// logged (the connection is closed, its backend connection let go).
    fn client_timed_out(&self, config: &tandem_config::Service) {
        self.service.stats.client_timeouts.fetch_add(1, Relaxed);
        info!(target: "tandem::http", service = %config.name, client = %self.peer,
            "client took no response bytes within {:?}: closed", config.http.client_timeout);
    }

    /// The drain deadline passed: responses say close.
    fn close_all_requested(&self) -> bool {
        self.close_all.is_cancelled()
    }

    /// Serves one request of the general path. (Its body is hyper's to poll as it is:
    /// not boxed again.)
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Logged> {
        let started = Instant::now();
        let config = self.service.config.load_full();
        let n = self.requests.fetch_add(1, Relaxed) + 1;
        let last = config.http.max_requests_per_connection != 0
            && n >= config.http.max_requests_per_connection;
        let method = req.method().clone();
        // The request's path is copied only when there is an access log to write.
        let logging = tracing::enabled!(target: "tandem::http", tracing::Level::INFO);
        let path = if logging {
            req.uri()
                .path_and_query()
                .map_or("/".to_string(), ToString::to_string)
        } else {
            String::new()
        };
        let version = req.version();
        let ambiguous = if version == Version::HTTP_2 {
            None
        } else {
            self.verdicts.next()
        };
        if let Some(refusal) = ambiguous {
            // A request two parsers could frame differently is how requests are smuggled
            // past a proxy; a Host or target that does not follow RFC 9112 is the
            // client's error too: refuse it, never forward it, and close the connection.
            return unlogged(self.refuse(&config, refusal, method.as_str(), &path));
        }
        let (status, backend, mut response) = self.forward(req, &config, started).await;
        if last && version == Version::HTTP_11 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status.is_server_error() && backend.is_none() {
            AccessLog {
                service: &config.name,
                client: self.peer,
                method: method.as_str(),
                path: &path,
                status: status.as_u16(),
                backend: None,
                bytes: 0,
                started,
            }
            .write();
            return response;
        }
        // Log when the body is done, with its size.
        let (parts, mut body) = response.into_parts();
        if logging {
            body.line = Some(LogLine {
                service: config.name.clone(),
                client: self.peer,
                method,
                path,
                status: parts.status.as_u16(),
                backend,
                started,
            });
        }
        Response::from_parts(parts, body)
    }

    /// Answers with `refusal` (the client's error), logged and counted; the connection
    /// closes after it.
    fn refuse(
        &self,
        config: &tandem_config::Service,
        refusal: policy::Refusal,
        method: &str,
        path: &str,
    ) -> Response<ProxyBody> {
        self.service.stats.bad_requests.fetch_add(1, Relaxed);
        info!(target: "tandem::http", service = %config.name, client = %self.peer, method = %method, path = %path,
            status = refusal.status, "refused: {}", refusal.why);
        let mut response = error_response(refusal);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// Picks, forwards, sends again when [`policy::may_send_again`] allows; returns the
    /// status, the backend, and the response. The request came at `started`.
    async fn forward(
        &self,
        mut req: Request<hyper::body::Incoming>,
        config: &tandem_config::Service,
        started: Instant,
    ) -> (StatusCode, Option<SocketAddr>, Response<Logged>) {
        // An HTTP/1.1 upgrade (WebSocket...): its Upgrade field goes to the backend, and
        // on a 101 the two connections become one tunnel.
        let mut upgrade =
            requested_upgrade(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let (mut parts, body) = req.into_parts();
        let pools = self.service.pools.load_full();
        let ended = body.is_end_stream();
        let empty_body = ended || body.size_hint().exact() == Some(0);
        let idempotent = policy::is_idempotent(parts.method.as_str());
        // Only a request that may be sent again can need its headers again.
        let may_resend = config.retries > 0 || (idempotent && empty_body);
        // HTTP/2 requests without a body to a plain-text backend: tandem's own client,
        // which writes the request head from the client's fields as they are.
        let lean =
            self.state.fast && parts.version == Version::HTTP_2 && upgrade.is_none() && ended;
        if parts.version == Version::HTTP_2 {
            join_split_cookie(&mut parts.headers);
        }
        let view = policy::route::RequestView {
            method: parts.method.as_str(),
            host: request_host(&parts),
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: || {
                parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes()))
            },
        };
        let (route, decision) = policy::route::decide(&config.routes, &config.pool, &view);
        log_route(config, route, &decision);
        let pool = match decision {
            policy::route::Decision::Pool(pool) => pool,
            policy::route::Decision::Answer(answer) => {
                let response = route_answer(answer, parts.method == Method::HEAD);
                return (response.status(), None, unlogged(response));
            }
        };
        if !lean {
            let original_host = request_host(&parts).and_then(|h| HeaderValue::from_bytes(h).ok());
            self.prepare_request_headers(&mut parts.headers, original_host.as_ref(), config);
        }
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        // For hyper's client (the lean one has no body): a client body that fails
        // (malformed chunked framing) fails the backend request, and is then the
        // client's error, not the backend's; the body stays in its slot until the
        // backend connection reads it: a failed connect leaves it whole for the next
        // backend.
        let hyper_side = (!lean).then(|| {
            (
                Arc::new(std::sync::atomic::AtomicBool::new(false)),
                Arc::new(std::sync::Mutex::new(Some(body))),
            )
        });
        let rules = policy::route::response_rules(config, route);
        let mut tried: Vec<SocketAddr> = Vec::new();
        // The backend to send the request to again, after a lost connection.
        let mut again: Option<Chosen> = None;
        let mut resent = false;
        loop {
            let chosen = match again.take() {
                Some(chosen) => chosen,
                None => match self.choose(&pools, pool, &parts.headers, &tried) {
                    Some(chosen) => chosen,
                    None => {
                        self.service.stats.no_backend.fetch_add(1, Relaxed);
                        return own_answer(if tried.is_empty() {
                            policy::Cause::NoBackend
                        } else {
                            policy::Cause::Unreachable
                        });
                    }
                },
            };
            let address = chosen.lease.address;
            let sent = if let Some((client_failed, slot)) = &hyper_side {
                // Boxed: the lean path's requests do not carry hyper's client future.
                Box::pin(self.send_hyper(
                    &mut parts,
                    slot,
                    client_failed,
                    &mut upgrade,
                    may_resend,
                    address,
                    config,
                ))
                .await
                .map(|(response, tunnel)| (response.map(Relayed::Boxed), tunnel))
            } else {
                let target = lean::Target {
                    state: &self.state,
                    address,
                    config,
                    max_idle: config.http.backend_max_idle + H2_MAX_STREAMS as usize,
                    fresh: resent,
                    idempotent,
                    client: &self.client,
                    response_rules: &rules,
                };
                match lean::send(target, &parts).await {
                    Ok(resp) => Ok((resp.map(Relayed::Lean), None)),
                    Err(lean::Failure::Connect(e)) => Err(Failed::Connect(e.to_string())),
                    Err(lean::Failure::Response(e)) => Err(Failed::Send(e.kind(), e.to_string())),
                }
            };
            let error = match sent {
                Ok((resp, tunnel)) => {
                    let took = started.elapsed();
                    chosen.lease.state.response_times().observe(took);
                    self.service.stats.response_times.observe(took);
                    let (mut rparts, rbody) = resp.into_parts();
                    // (The lean client's response has the fields the policy relays.)
                    if !lean {
                        strip_hop_by_hop(&mut rparts.headers);
                        drop_ruled_out(&mut rparts.headers, &rules);
                    }
                    let mut lease = Some(chosen.lease);
                    if let Some((client_side, backend_side, protocol)) = tunnel {
                        rparts
                            .headers
                            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        if let Some(p) = protocol {
                            rparts.headers.insert(header::UPGRADE, p);
                        }
                        self.open_tunnel(
                            client_side,
                            backend_side,
                            lease.take(),
                            config.idle_timeout,
                        );
                    }
                    policy::response_fields(
                        config.http.via,
                        chosen.set_cookie.as_deref(),
                        &rules,
                        |name, value| append_field(&mut rparts.headers, name, value),
                    );
                    let status = rparts.status;
                    let body = Logged {
                        inner: rbody,
                        bytes: 0,
                        line: None,
                        _lease: lease,
                    };
                    return (status, Some(address), Response::from_parts(rparts, body));
                }
                Err(Failed::ClientBody) => {
                    let refusal = policy::MALFORMED_BODY;
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let response = self.refuse(config, refusal, parts.method.as_str(), path);
                    let status = response.status();
                    return (status, None, unlogged(response));
                }
                Err(Failed::Connect(e)) => {
                    chosen.lease.state.record_connect_error();
                    tried.push(address);
                    info!(target: "tandem::http", service = %config.name, backend = %address, pool = %chosen.pool.name, "connect to backend failed: {e}");
                    policy::SendError::Connect
                }
                Err(Failed::Send(policy::SendError::TimedOut, _)) => {
                    info!(target: "tandem::http", service = %config.name, backend = %address, "backend gave no response within {:?}", config.http.response_timeout);
                    policy::SendError::TimedOut
                }
                Err(Failed::Send(error, e)) => {
                    info!(target: "tandem::http", service = %config.name, backend = %address, "backend error: {e}");
                    error
                }
            };
            let whole = empty_body
                || hyper_side.as_ref().is_none_or(|(_, slot)| {
                    slot.lock().unwrap_or_else(|e| e.into_inner()).is_some()
                });
            match error {
                policy::SendError::Connect
                    if tried.len() <= config.retries as usize
                        && policy::may_send_again(idempotent, whole, error) => {}
                policy::SendError::Connect => {
                    self.service.stats.no_backend.fetch_add(1, Relaxed);
                    return own_answer(error.cause());
                }
                policy::SendError::Lost
                    if !resent && policy::may_send_again(idempotent, whole, error) =>
                {
                    // Once, on a new connection to the same backend.
                    resent = true;
                    again = Some(chosen);
                }
                _ => return own_answer(error.cause()),
            }
        }
    }

    /// Sends the request on hyper's pooled client: the response (with the two sides
    /// of a tunnel when the backend switched protocols), or why none came.
    #[allow(clippy::too_many_arguments)]
    async fn send_hyper(
        &self,
        parts: &mut hyper::http::request::Parts,
        slot: &Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>,
        client_failed: &Arc<std::sync::atomic::AtomicBool>,
        upgrade: &mut Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        may_resend: bool,
        address: SocketAddr,
        config: &tandem_config::Service,
    ) -> Result<(Response<ProxyBody>, Option<Tunnel>), Failed> {
        let mut upstream = Request::builder()
            .method(parts.method.clone())
            .uri(
                Uri::builder()
                    .scheme(self.state.scheme)
                    .authority(address.to_string())
                    .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                    .build()
                    .expect("valid uri"),
            )
            .version(Version::HTTP_11)
            .body(
                ClientBody {
                    slot: slot.clone(),
                    body: None,
                    failed: client_failed.clone(),
                }
                .map_err(Into::into)
                .boxed(),
            )
            .expect("valid request");
        *upstream.headers_mut() = if may_resend {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        let sent = tokio::time::timeout(
            config.http.response_timeout,
            self.state.client.request(upstream),
        )
        .await;
        match sent {
            Ok(Ok(mut resp)) => {
                let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let tunnel = match upgrade.take() {
                    Some((_, client_side)) if switched => Some((
                        client_side,
                        hyper::upgrade::on(&mut resp),
                        resp.headers().get(header::UPGRADE).cloned(),
                    )),
                    _ => None,
                };
                Ok((resp.map(|b| b.map_err(Into::into).boxed()), tunnel))
            }
            Ok(Err(_)) if client_failed.load(Relaxed) => Err(Failed::ClientBody),
            Ok(Err(e)) if e.is_connect() => Err(Failed::Connect(e.to_string())),
            Ok(Err(e)) => Err(Failed::Send(send_error(&e), e.to_string())),
            Err(_) => Err(Failed::Send(policy::SendError::TimedOut, String::new())),
        }
    }

    /// Joins the client's and the backend's upgraded connections once both are handed
    /// over, until either side ends, no byte moves either way for `idle`, or the drain
    /// deadline passes; `lease` keeps the backend counted as busy meanwhile.
    fn open_tunnel(
        &self,
        client_side: hyper::upgrade::OnUpgrade,
        backend_side: hyper::upgrade::OnUpgrade,
        lease: Option<Lease>,
        idle: std::time::Duration,
    ) {
        // What follows on the client connection is the new protocol, not HTTP/1.
        self.verdicts.stop_watching();
        let close_all = self.close_all.clone();
        let tunnel = tokio::spawn(async move {
            let _lease = lease;
            let (Ok(client), Ok(backend)) = tokio::join!(client_side, backend_side) else {
                return;
            };
            let activity = crate::relay::Activity::new();
            let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
            let (mut backend_read, mut backend_write) = tokio::io::split(TokioIo::new(backend));
            let both = async {
                tokio::try_join!(
                    tunnel_pipe(&mut client_read, &mut backend_write, &activity),
                    tunnel_pipe(&mut backend_read, &mut client_write, &activity),
                )
            };
            tokio::select! {
                _ = both => {}
                () = activity.quiet_for(idle) => {}
                () = close_all.cancelled() => {}
            }
        });
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(tunnel);
    }

    /// Turns the client's request fields into what the backend gets (see
    /// [`policy::request_fields`]).
    fn prepare_request_headers(
        &self,
        headers: &mut HeaderMap,
        host: Option<&HeaderValue>,
        config: &tandem_config::Service,
    ) {
        strip_hop_by_hop(headers);
        let prior_xff = headers.get(X_FORWARDED_FOR).cloned();
        for name in replaced() {
            headers.remove(name);
        }
        if let Some(h) = host {
            headers.insert(header::HOST, h.clone());
        }
        let rules = &config.http.request_headers;
        drop_ruled_out(headers, rules);
        policy::request_fields(
            &self.client,
            prior_xff.as_ref().map(HeaderValue::as_bytes),
            host.map(HeaderValue::as_bytes),
            config.http.via,
            rules,
            |name, value| append_field(headers, name, value),
        );
    }

    /// The sticky cookie's backend when usable, else the pool's choice (source-IP
    /// stickiness included); a new cookie is set whenever the choice is new.
    fn choose(
        &self,
        pools: &PoolSet,
        pool: &str,
        headers: &HeaderMap,
        tried: &[SocketAddr],
    ) -> Option<Chosen> {
        let wanted = pools.get(pool)?.cookie.as_deref().and_then(|name| {
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| policy::cookie_value(v, name))
        });
        self.choose_by_cookie(pools, pool, wanted, tried)
    }

    /// As `choose`, with the sticky cookie's value already read from the request.
    fn choose_by_cookie(
        &self,
        pools: &PoolSet,
        pool: &str,
        wanted: Option<&str>,
        tried: &[SocketAddr],
    ) -> Option<Chosen> {
        let p = pools.get(pool)?;
        let sticky_cookie = p.cookie.as_deref();
        if sticky_cookie.is_some()
            && let Some(id) = wanted
            && let Some(b) = p.backends.iter().find(|b| cookie_id(pool, b.address) == id)
            && b.is_usable()
            && !tried.contains(&b.address)
            && let Some(lease) = b.lease()
        {
            return Some(Chosen {
                lease,
                pool: p.clone(),
                set_cookie: None,
            });
        }
        let pick = pools.pick(pool, self.peer.ip(), tried, now_ms())?;
        let set_cookie = sticky_cookie
            .map(|name| policy::set_cookie(name, &cookie_id(&pick.pool.name, pick.lease.address)));
        Some(Chosen {
            pool: pick.pool,
            lease: pick.lease,
            set_cookie,
        })
    }
}

/// What one access log line says of a request (target `tandem::http`, message
/// "request"): written once per request, by whichever path served it.
pub(crate) struct AccessLog<'a> {
    pub service: &'a str,
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub backend: Option<SocketAddr>,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub started: Instant,
}

impl AccessLog<'_> {
    pub(crate) fn write(&self) {
        info!(
            target: "tandem::http",
            service = %self.service,
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            backend = %self.backend.map_or("-".to_string(), |b| b.to_string()),
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

struct LogLine {
    service: String,
    client: SocketAddr,
    method: Method,
    path: String,
    status: u16,
    backend: Option<SocketAddr>,
    started: Instant,
}

/// One of tandem's own responses, as a body with nothing to count or log yet.
fn unlogged(response: Response<ProxyBody>) -> Response<Logged> {
    response.map(|inner| Logged {
        inner: Relayed::Boxed(inner),
        bytes: 0,
        line: None,
        _lease: None,
    })
}

/// A response's body as it comes: read by the lean client, or boxed. (The lean body is
/// the common case and lives in the stream's task, which is on the heap already: a
/// box of its own was one more allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Relayed {
    Lean(lean::LeanBody),
    Boxed(ProxyBody),
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = lean::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, lean::BoxError>>> {
        match self.get_mut() {
            Relayed::Lean(body) => Pin::new(body).poll_frame(cx),
            Relayed::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Relayed::Lean(body) => body.is_end_stream(),
            Relayed::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Relayed::Lean(body) => body.size_hint(),
            Relayed::Boxed(body) => body.size_hint(),
        }
    }
}

/// A response body that counts its bytes, holds the backend's slot until it is done,
/// and writes the access log line when it ends.
struct Logged {
    inner: Relayed,
    bytes: u64,
    line: Option<LogLine>,
    _lease: Option<Lease>,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = lean::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, lean::BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
            if let Some(lease) = &self._lease {
                lease.state.record_bytes(0, data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(l) = self.line.take() {
            AccessLog {
                service: &l.service,
                client: l.client,
                method: l.method.as_str(),
                path: &l.path,
                status: l.status,
                backend: l.backend,
                bytes: self.bytes,
                started: l.started,
            }
            .write();
        }
    }
}

/// The client's request body as a backend request carries it. It is taken from `slot`
/// only when the backend connection starts to read it: a request dropped before that
/// (a failed connect) leaves it there, whole, for the next try. It notes in `failed`
/// when it fails (malformed chunked framing: the client's error, not the backend's).
struct ClientBody {
    slot: Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>,
    body: Option<hyper::body::Incoming>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientBody {
    fn peek<T>(&self, f: impl FnOnce(Option<&hyper::body::Incoming>) -> T) -> T {
        match &self.body {
            Some(body) => f(Some(body)),
            None => f(self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref()),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.body = taken;
        }
        let Some(body) = &mut self.body else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.peek(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}

/// How a backend request failed that is not a failed connect: a response that was not
/// HTTP, or a connection lost before a response head.
fn send_error(e: &hyper_util::client::legacy::Error) -> policy::SendError {
    let parse = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_parse);
    if parse {
        policy::SendError::Invalid
    } else {
        policy::SendError::Lost
    }
}

/// Copies one direction of a tunnel until `from` ends (then shuts down `to`'s write
/// side, so the other direction can finish), noting each chunk in `activity`.
async fn tunnel_pipe<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &crate::relay::Activity,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
    }
}
