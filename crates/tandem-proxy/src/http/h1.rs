//! The HTTP/1.1 fast path. Requests of the common shape (HTTP/1.1, an origin-form
//! target, no body or a Content-Length body, no Expect, Upgrade or Transfer-Encoding)
//! are parsed where they lie with httparse, rewritten into one buffer and relayed over a
//! backend connection that the client connection keeps while it goes to the same
//! backend; the response head is rewritten the same way and its body relayed as it
//! comes (chunked bodies untouched, their end found by [`ChunkedEnd`]). No task,
//! channel or header map per request: that is what hyper's general path costs.
//!
//! Anything else (another shape, a head the policy refuses or past `max_header_size`,
//! the HTTP/2 preface) hands the connection, with the bytes read so far, to the general
//! path, which serves it from then on. What either path forwards, answers or sends
//! again is decided by [`super::policy`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tandem_config::HeaderRules;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::info;

use super::chunked::ChunkedEnd;
use super::{AccessLog, Chosen, Connection, HttpState};

use super::policy::{self, MAX_HEADERS, content_length, hop_by_hop, ruled_out};
/// Bytes asked of the client per read.
const CLIENT_READ: usize = 16 * 1024;
/// Bytes first set aside for a rewritten head.
const HEAD_OUT: usize = 1024;
/// How long a client connection may wait for its next request and keep its backend
/// connection; then the backend connection goes back to the service's pool.
const RELEASE_BACKEND_AFTER: Duration = Duration::from_secs(1);
/// Bytes asked of the backend per read.
const BACKEND_READ: usize = 32 * 1024;

/// A client connection of the fast path: its bytes, and the TCP socket they come
/// over, whose readiness a connection waiting for its next request waits for while it
/// holds no buffer.
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under the connection.
    fn socket(&self) -> &TcpStream;
}

impl ClientIo for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl ClientIo for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How the fast path left a client connection.
pub(super) enum End {
    /// Closed (or to be closed): nothing more to serve.
    Closed,
    /// The general path serves the rest, starting with these unread bytes.
    Handoff(BytesMut),
    /// Idle for [`super::park::PARK_AFTER`], holding no buffer and no backend
    /// connection: to be parked until it is readable or this deadline passes.
    Idle(Instant),
}

/// Why no request head came.
enum NoHead {
    /// The client is gone, failed or was too slow: close.
    Closed,
    /// The general path must take the connection.
    Handoff,
    /// Idle long enough to be parked; its next head is due by this deadline.
    Idle(Instant),
}

/// A connection to a backend, kept between requests.
pub(super) struct BackendConn {
    pub(super) stream: TcpStream,
    pub(super) address: SocketAddr,
    /// Served a request before: the backend may have closed it meanwhile.
    pub(super) reused: bool,
}

/// Idle backend connections of one service, shared by its client connections.
#[derive(Default)]
pub(super) struct IdlePool {
    /// Oldest first: each goes in at the back, when it becomes idle (so the expired
    /// ones are found at the front without looking at the rest).
    idle: std::sync::Mutex<std::collections::VecDeque<(TcpStream, SocketAddr, std::time::Instant)>>,
}

impl IdlePool {
    /// An idle connection to `address` younger than `max_age` that the backend has
    /// not closed (made readable); unchecked (no read) unless `probe`: a request that
    /// may be sent again on a new connection need not pay for the look.
    pub(super) fn take(
        &self,
        address: SocketAddr,
        max_age: Duration,
        probe: bool,
    ) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        while idle
            .front()
            .is_some_and(|(_, _, since)| now.duration_since(*since) >= max_age)
        {
            idle.pop_front();
        }
        // The newest first: it is the likeliest to be still open.
        while let Some(i) = idle.iter().rposition(|(_, a, _)| *a == address) {
            let Some((stream, _, _)) = idle.remove(i) else {
                break;
            };
            // A backend that closed the idle connection made it readable (EOF).
            if !probe || still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to its backend, unless `max_per_backend`
    /// connections to it are idle already.
    pub(super) fn put(&self, conn: BackendConn, max_per_backend: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // (Counted only when the pool holds that many for all backends together.)
        let full = idle.len() >= max_per_backend
            && idle.iter().filter(|(_, a, _)| *a == conn.address).count() >= max_per_backend;
        if !full {
            idle.push_back((conn.stream, conn.address, std::time::Instant::now()));
        }
    }
}

/// What the fast path keeps of a request head it will serve.
struct Head {
    /// Length of the head.
    len: usize,
    /// Body bytes that follow the head.
    body: u64,
    /// A HEAD request: the response has no body whatever it says.
    head_method: bool,
    /// Its method is idempotent (it may be sent again after a lost connection).
    idempotent: bool,
    /// The client asked to close after this request.
    close: bool,
    /// The sticky cookie's value, when the pool has one.
    cookie: Option<String>,
    /// Method and target, for the access log.
    log: Option<(String, String)>,
    /// The route it matched (`None`: the service's pool).
    route: Option<usize>,
    /// The answer its route gives instead of a pool's.
    answer: Option<policy::route::Answer>,
}

/// The pool a request goes to: its route's, or the service's.
fn pool_of(config: &tandem_config::Service, route: Option<usize>) -> &str {
    match route.and_then(|i| config.routes.get(i)).map(|r| &r.action) {
        Some(tandem_config::RouteAction::Pool(p)) => p,
        _ => &config.pool,
    }
}

enum Parsed {
    Fast(Head),
    Partial,
    /// For the general path.
    Other,
}

/// How a response body ends.
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked(ChunkedEnd),
    UntilClose,
}

/// The state of one client connection on the fast path.
pub(super) struct FastPath<'a> {
    conn: &'a Connection,
    state: &'a HttpState,
    /// Bytes from the client not used yet.
    buf: BytesMut,
    /// The head (and small body) being written out.
    out: Vec<u8>,
    /// Bytes from the backend.
    from_backend: BytesMut,
    /// The backend connection this client connection used last.
    held: Option<BackendConn>,
    /// Set while waiting for the next request head (nothing owed to the client).
    idle: &'a std::sync::atomic::AtomicBool,
    /// An idle connection ends with [`End::Idle`] to be parked.
    parks: bool,
}

/// `a` equals `b` ignoring ASCII case (header names).
fn is(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes a field the policy gives as its name and value pieces.
fn push_pieces(out: &mut Vec<u8>, name: &str, value: &[&[u8]]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for piece in value {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(b"\r\n");
}

/// The tokens of Connection fields (the fields they name are hop-by-hop too).
pub(super) fn connection_tokens<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h [u8]> {
    each_connection_token(pairs(headers)).collect()
}

/// Fields as their names and values.
fn pairs<'h>(headers: &[httparse::Header<'h>]) -> impl Iterator<Item = (&'h str, &'h [u8])> {
    headers.iter().map(|h| (h.name, h.value))
}

/// The tokens of the Connection fields among `fields` (names and values).
pub(super) fn each_connection_token<'h>(
    fields: impl Iterator<Item = (&'h str, &'h [u8])>,
) -> impl Iterator<Item = &'h [u8]> {
    fields
        .filter(|(name, _)| is(name, "connection"))
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// Writes a request's own `fields` as the backend gets them: without those the policy
/// drops (hop-by-hop, named by the Connection `tokens`, replaced, ruled out by the
/// rules), then tandem's forwarding fields ([`policy::request_fields`]). The fast path
/// and the lean HTTP/2 client write their heads with it.
pub(super) fn push_request_fields<'h>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'h str, &'h [u8])>,
    tokens: &[&[u8]],
    client: &policy::Client,
    prior_xff: Option<&[u8]>,
    host: Option<&[u8]>,
    http: &tandem_config::Http,
) {
    let rules = &http.request_headers;
    for (name, value) in fields {
        if !policy::replaced(name)
            && !hop_by_hop(name)
            && !named_by(tokens, name)
            && !ruled_out(name, rules)
        {
            push_field(out, name, value);
        }
    }
    policy::request_fields(client, prior_xff, host, http.via, rules, |name, value| {
        push_pieces(out, name, value)
    });
}

/// Whether a response field named `name` is relayed as it is (not hop-by-hop, named by
/// the Connection `tokens` or ruled out by the response `rules`); the body's framing
/// fields are each path's own.
pub(super) fn response_field_kept(name: &str, tokens: &[&[u8]], rules: &HeaderRules) -> bool {
    !hop_by_hop(name) && !named_by(tokens, name) && !ruled_out(name, rules)
}

fn named_by(tokens: &[&[u8]], name: &str) -> bool {
    tokens
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Writes `bytes` to the client; false when that failed or the client took none of
/// them within `client_timeout` (then counted and logged: the caller closes the
/// connection and lets its backend connection go).
async fn send<S>(
    client: &mut S,
    bytes: &[u8],
    conn: &Connection,
    config: &tandem_config::Service,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    // Flushed: over TLS, bytes the socket did not take at once would otherwise stay in
    // the session while the connection waits for its next request.
    let written = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match timeout(config.http.client_timeout, written).await {
        Ok(written) => written.is_ok(),
        Err(_) => {
            conn.client_timed_out(config);
            false
        }
    }
}

impl<'a> FastPath<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        state: &'a HttpState,
        idle: &'a std::sync::atomic::AtomicBool,
        parks: bool,
    ) -> FastPath<'a> {
        FastPath {
            conn,
            state,
            buf: BytesMut::new(),
            out: Vec::new(),
            from_backend: BytesMut::new(),
            held: None,
            idle,
            parks,
        }
    }

    /// Serves requests until the connection ends or needs the general path.
    pub(super) async fn serve<S>(&mut self, client: &mut S) -> End
    where
        S: ClientIo,
    {
        loop {
            self.idle.store(self.buf.is_empty(), Relaxed);
            let config = self.conn.service.config.load_full();
            let head = match self.read_head(client, &config).await {
                Ok(head) => head,
                Err(NoHead::Closed) => return End::Closed,
                Err(NoHead::Handoff) => return End::Handoff(std::mem::take(&mut self.buf)),
                Err(NoHead::Idle(deadline)) => return End::Idle(deadline),
            };
            self.idle.store(false, Relaxed);
            // Boxed: a connection waiting for its next request does not carry the
            // state of a request in flight.
            match Box::pin(self.exchange(client, &config, head)).await {
                Ok(true) => {}
                Ok(false) | Err(()) => {
                    // (A TLS goodbye is a write too: bounded.)
                    let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
                    return End::Closed;
                }
            }
        }
    }

    /// Gives the backend connection back to the service's pool.
    pub(super) fn finish(&mut self) {
        if let Some(conn) = self.held.take() {
            let config = self.conn.service.config.load();
            self.state.idle.put(conn, config.http.backend_max_idle);
        }
    }

    /// Reads the next request head, or says why none came.
    async fn read_head<S>(
        &mut self,
        client: &mut S,
        config: &tandem_config::Service,
    ) -> Result<Head, NoHead>
    where
        S: ClientIo,
    {
        let deadline = Instant::now() + config.http.header_timeout;
        loop {
            if !self.buf.is_empty() {
                // (The HTTP/2 preface, "PRI * HTTP/2.0", is not HTTP/1: hyper's.)
                match self.parse(config) {
                    Parsed::Fast(head) => return Ok(head),
                    Parsed::Other => return Err(NoHead::Handoff),
                    Parsed::Partial if self.buf.len() >= config.http.max_header_size => {
                        return Err(NoHead::Handoff);
                    }
                    Parsed::Partial => {}
                }
            }
            let read = if self.buf.is_empty() {
                match self.read_when_ready(client, deadline).await {
                    Some(read) => read,
                    None => return Err(NoHead::Idle(deadline)),
                }
            } else {
                self.read_more(client, deadline).await
            };
            match read {
                Ok(n) if n > 0 => {}
                // Gone, failed, or slower than header_timeout (slowloris): closed.
                _ => return Err(NoHead::Closed),
            }
        }
    }

    /// Reads what the client sends next when nothing of it is buffered (between
    /// requests, and before the first). One read is tried with the buffers at hand (a
    /// busy client's next request is often there); if nothing came, an idle
    /// connection gives its buffers back to the thread's spares and waits for its
    /// socket to become readable, holding no buffer, then reads into a spare one. A
    /// client quiet for [`RELEASE_BACKEND_AFTER`] gives its backend connection back to
    /// the service's pool, for other clients (a backend with few worker slots is not
    /// tied up by idle keep-alive clients). A connection that `parks` does so after
    /// [`super::park::PARK_AFTER`], and then ends here (`None`) to be parked.
    async fn read_when_ready<S>(
        &mut self,
        client: &mut S,
        deadline: Instant,
    ) -> Option<std::io::Result<usize>>
    where
        S: ClientIo,
    {
        if self.buf.capacity() == 0 {
            self.buf = spares::take();
        }
        self.buf.reserve(CLIENT_READ);
        // (After a TLS handshake the request may already be decrypted and buffered in
        // the session, where the socket's readiness would not show it: tried first.)
        let tried = {
            let reading = client.read_buf(&mut self.buf);
            let mut reading = std::pin::pin!(reading);
            std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match reading.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => Some(r),
                    std::task::Poll::Pending => None,
                })
            })
            .await
        };
        if let Some(read) = tried {
            return Some(read);
        }
        self.release_buffers();
        let (release_at, park_at) = if self.parks {
            let at = Instant::now() + super::park::PARK_AFTER;
            (at, Some(at))
        } else {
            (Instant::now() + RELEASE_BACKEND_AFTER, None)
        };
        loop {
            let wait_until = match (&self.held, park_at) {
                (Some(_), _) => release_at.min(deadline),
                (None, Some(park_at)) => park_at.min(deadline),
                (None, None) => deadline,
            };
            // (poll_read_ready keeps its waker in the socket's registration: the wait
            // carries no waiter of its own.)
            let ready = std::future::poll_fn(|cx| client.socket().poll_read_ready(cx));
            match timeout_at(wait_until, ready).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) if Instant::now() >= deadline => {
                    return Some(Err(std::io::ErrorKind::TimedOut.into()));
                }
                Err(_) if self.held.is_some() => self.finish(),
                Err(_) => return None,
            }
        }
        self.buf = spares::take();
        Some(self.read_more(client, deadline).await)
    }

    /// Reads what the client sends into `buf`, by `deadline`.
    async fn read_more<S>(&mut self, client: &mut S, deadline: Instant) -> std::io::Result<usize>
    where
        S: ClientIo,
    {
        self.buf.reserve(CLIENT_READ);
        timeout_at(deadline, client.read_buf(&mut self.buf))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Gives the buffers an idle connection does not need to the thread's spares (the
    /// head buffer to the allocator: small, and cheap to take again).
    fn release_buffers(&mut self) {
        spares::give(std::mem::take(&mut self.buf));
        spares::give(std::mem::take(&mut self.from_backend));
        self.out = Vec::new();
    }

    /// Parses the head at the start of `buf`, writes its rewritten form to `out` and
    /// consumes it.
    fn parse(&mut self, config: &tandem_config::Service) -> Parsed {
        let pools = self.conn.service.pools.load();
        let cookie_name = |pool: &str| pools.get(pool).and_then(|p| p.cookie.as_deref());
        let side = RequestSide {
            client: &self.conn.client,
            cookie_name: &cookie_name,
            log: tracing::enabled!(target: "tandem::http", tracing::Level::INFO),
            http: &config.http,
            service: Some(config),
        };
        self.out.reserve(HEAD_OUT);
        let parsed = rewrite_request(&self.buf, &side, &mut self.out);
        if let Parsed::Fast(head) = &parsed {
            self.buf.advance(head.len);
        }
        parsed
    }

    /// Forwards one request and its response: `Ok(true)` to go on with the next,
    /// `Ok(false)` to close the client connection.
    async fn exchange<S>(
        &mut self,
        client: &mut S,
        config: &tandem_config::Service,
        mut head: Head,
    ) -> Result<bool, ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let started = std::time::Instant::now();
        let n = self.conn.requests.fetch_add(1, Relaxed) + 1;
        let max = config.http.max_requests_per_connection;
        let mut closing = head.close || (max != 0 && n >= max);
        // A body already read travels with the head, in one write.
        let buffered = head.body.min(self.buf.len() as u64) as usize;
        self.out.extend_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        let mut body_left = head.body - buffered as u64;
        let replayable = body_left == 0;
        if let Some(answer) = head.answer.take() {
            let close = closing || body_left > 0 || self.conn.close_all_requested();
            let skip_body = head.head_method;
            let written = self
                .answer(client, config, &head, started, answer, close, skip_body)
                .await;
            return Ok(written && !close);
        }
        let pool = pool_of(config, head.route);

        // Picking, connecting, sending and reading the head; any failure is one of
        // tandem's own answers.
        let forwarded = async {
            let pools = self.conn.service.pools.load_full();
            let mut tried: Vec<SocketAddr> = Vec::new();
            let mut attempts = 0;
            let (chosen, mut backend) = loop {
                let Some(chosen) =
                    self.conn
                        .choose_by_cookie(&pools, pool, head.cookie.as_deref(), &tried)
                else {
                    self.conn.service.stats.no_backend.fetch_add(1, Relaxed);
                    let cause = if tried.is_empty() {
                        policy::Cause::NoBackend
                    } else {
                        policy::Cause::Unreachable
                    };
                    return Err(Own { cause, unread_body: body_left > 0 });
                };
                let address = chosen.lease.address;
                match self.backend_for(address, head.idempotent, config).await {
                    Ok(b) => break (chosen, b),
                    Err(e) => {
                        chosen.lease.state.record_connect_error();
                        info!(target: "tandem::http", service = %config.name, backend = %address, pool = %chosen.pool.name, "connect to backend failed: {e}");
                        tried.push(address);
                        attempts += 1;
                        // Nothing was sent, and the body not read yet: the whole request
                        // is at hand.
                        let error = policy::SendError::Connect;
                        if attempts > config.retries
                            || !policy::may_send_again(head.idempotent, true, error)
                        {
                            self.conn.service.stats.no_backend.fetch_add(1, Relaxed);
                            return Err(Own { cause: error.cause(), unread_body: body_left > 0 });
                        }
                    }
                }
            };
            let address = backend.address;
            let deadline = Instant::now() + config.http.response_timeout;
            let mut retried = false;
            // Send the request and read the response head; a connection lost before the
            // response head is replaced once, when the policy lets the request be sent
            // again.
            let response = loop {
                let sent = async {
                    backend.stream.write_all(&self.out).await?;
                    while body_left > 0 {
                        if self.buf.is_empty() {
                            self.buf.reserve(CLIENT_READ);
                            let n = timeout(config.idle_timeout, client.read_buf(&mut self.buf))
                                .await
                                .map_err(|_| std::io::ErrorKind::TimedOut)??;
                            if n == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                        }
                        let take = body_left.min(self.buf.len() as u64) as usize;
                        backend.stream.write_all(&self.buf[..take]).await?;
                        chosen.lease.state.record_bytes(take as u64, 0);
                        self.buf.advance(take);
                        body_left -= take as u64;
                    }
                    Ok::<(), std::io::Error>(())
                };
                let outcome = match sent.await {
                    Ok(()) => {
                        self.read_response_head(&mut backend.stream, config, &head, &chosen, deadline)
                            .await
                    }
                    Err(e) => Err(ResponseError::Io(e)),
                };
                let failed = match outcome {
                    Ok(response) => break response,
                    Err(e) => e,
                };
                let error = failed.kind();
                match error {
                    policy::SendError::TimedOut => {
                        info!(target: "tandem::http", service = %config.name, backend = %address, "backend gave no response within {:?}", config.http.response_timeout);
                    }
                    _ => {
                        info!(target: "tandem::http", service = %config.name, backend = %address, "backend error: {failed}");
                    }
                }
                if retried || !policy::may_send_again(head.idempotent, replayable, error) {
                    return Err(Own { cause: error.cause(), unread_body: body_left > 0 });
                }
                // Once, on a new connection to the same backend.
                retried = true;
                self.from_backend.clear();
                match connect(address, config).await {
                    Ok(fresh) => backend = fresh,
                    Err(e) => {
                        chosen.lease.state.record_connect_error();
                        info!(target: "tandem::http", service = %config.name, backend = %address, "connect to backend failed: {e}");
                        return Err(Own { cause: policy::Cause::Unreachable, unread_body: false });
                    }
                }
            };
            Ok((chosen, backend, response))
        }
        .await;
        let (chosen, mut backend, response) = match forwarded {
            Ok(forwarded) => forwarded,
            Err(own) => return self.refuse(client, config, &head, started, own).await,
        };
        let took = started.elapsed();
        chosen.lease.state.response_times().observe(took);
        self.conn.service.stats.response_times.observe(took);
        let address = backend.address;
        let ResponseHead {
            status,
            mut framing,
            mut backend_keeps,
        } = response;
        if matches!(framing, Framing::UntilClose) {
            backend_keeps = false;
            closing = true;
        }
        if self.conn.close_all_requested() {
            closing = true;
        }
        if closing {
            push_field(&mut self.out, "connection", b"close");
        }
        self.out.extend_from_slice(b"\r\n");

        // The body: what came with the head goes in the same write.
        let mut sent_body = 0u64;
        let mut done = self.take_body(&mut framing, &mut backend_keeps);
        let first = self.from_backend.split_to(done.0);
        self.out.extend_from_slice(&first);
        let mut written = send(client, &self.out, self.conn, config).await;
        sent_body += first.len() as u64;
        chosen.lease.state.record_bytes(0, first.len() as u64);
        while written && !done.1 {
            self.from_backend.clear();
            self.from_backend.reserve(BACKEND_READ);
            let n = match timeout(
                config.idle_timeout,
                backend.stream.read_buf(&mut self.from_backend),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 {
                // The backend closed: the end of a close-delimited body, else a cut one.
                backend_keeps = false;
                if !matches!(framing, Framing::UntilClose) {
                    closing = true;
                    info!(target: "tandem::http", service = %config.name, backend = %address, "backend closed in the middle of a response");
                }
                break;
            }
            done = self.take_body(&mut framing, &mut backend_keeps);
            let piece = &self.from_backend[..done.0];
            written = send(client, piece, self.conn, config).await;
            sent_body += piece.len() as u64;
            chosen.lease.state.record_bytes(0, piece.len() as u64);
        }
        if !self.from_backend[done.0.min(self.from_backend.len())..].is_empty() && done.1 {
            // Bytes after the response: the backend is out of step; not kept.
            backend_keeps = false;
        }
        self.from_backend.clear();
        if written && done.1 && backend_keeps {
            backend.reused = true;
            self.held = Some(backend);
        }
        if let Some((method, path)) = head.log {
            AccessLog {
                service: &config.name,
                client: self.conn.peer,
                method: &method,
                path: &path,
                status,
                backend: Some(address),
                bytes: sent_body,
                started,
            }
            .write();
        }
        drop(chosen);
        Ok(written && done.1 && !closing)
    }

    /// How many of `from_backend`'s bytes belong to the body, and whether it ends there.
    fn take_body(&mut self, framing: &mut Framing, backend_keeps: &mut bool) -> (usize, bool) {
        let have = self.from_backend.len();
        match framing {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(have as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(scanner) => match scanner.feed(&self.from_backend) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (have, false),
                Err(_) => {
                    // Relay what came; the connection cannot be trusted after it.
                    *backend_keeps = false;
                    *framing = Framing::UntilClose;
                    (have, false)
                }
            },
            Framing::UntilClose => (have, false),
        }
    }

    /// Reads the backend's response head and writes its rewritten form (without the
    /// final empty line) to `out`; interim (1xx) responses are skipped (none is asked
    /// for: no Expect, no Upgrade).
    async fn read_response_head(
        &mut self,
        backend: &mut TcpStream,
        config: &tandem_config::Service,
        head: &Head,
        chosen: &Chosen,
        deadline: Instant,
    ) -> Result<ResponseHead, ResponseError> {
        let out = &mut self.out;
        let (response, n) = read_final_head(
            backend,
            &mut self.from_backend,
            config.http.max_header_size,
            deadline,
            |buf| {
                if buf.capacity() == 0 {
                    *buf = spares::take();
                }
                buf.reserve(BACKEND_READ);
            },
            |resp, _| rewrite_response(resp, out, config, head, chosen),
        )
        .await?;
        self.from_backend.advance(n);
        Ok(response)
    }

    /// The kept connection to `address`, an idle one of the service, or a new one. A
    /// request that is not `idempotent` cannot be sent again if its kept connection
    /// turns out closed: it gets the kept connection only if the backend has not
    /// closed it (made it readable) meanwhile.
    async fn backend_for(
        &mut self,
        address: SocketAddr,
        idempotent: bool,
        config: &tandem_config::Service,
    ) -> std::io::Result<BackendConn> {
        if let Some(held) = self.held.take() {
            if held.address == address && (idempotent || still_open(&held.stream)) {
                return Ok(held);
            }
            if held.address == address {
                return connect(address, config).await;
            }
            self.state.idle.put(held, config.http.backend_max_idle);
        }
        if let Some(stream) = self
            .state
            .idle
            .take(address, config.http.backend_idle_timeout, true)
        {
            return Ok(BackendConn {
                stream,
                address,
                reused: true,
            });
        }
        connect(address, config).await
    }

    /// Writes the answer a route gives (its body left out for HEAD), logged; false
    /// when the client did not take it.
    #[allow(clippy::too_many_arguments)]
    async fn answer<S>(
        &mut self,
        client: &mut S,
        config: &tandem_config::Service,
        head: &Head,
        started: std::time::Instant,
        answer: policy::route::Answer,
        close: bool,
        skip_body: bool,
    ) -> bool
    where
        S: AsyncWrite + Unpin,
    {
        let status = answer.status;
        let mut response = format!("HTTP/1.1 {status} {}\r\n", policy::reason(status));
        for (name, value) in &answer.fields {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str(&format!("content-length: {}\r\n", answer.body.len()));
        if close {
            response.push_str("connection: close\r\n");
        }
        response.push_str("\r\n");
        let body_len = if skip_body { 0 } else { answer.body.len() };
        if !skip_body {
            response.push_str(&answer.body);
        }
        let written = send(client, response.as_bytes(), self.conn, config).await;
        if let Some((method, path)) = &head.log {
            AccessLog {
                service: &config.name,
                client: self.conn.peer,
                method,
                path,
                status,
                backend: None,
                bytes: body_len as u64,
                started,
            }
            .write();
        }
        written
    }

    /// Answers with one of tandem's own errors; `Ok(false)` (close) when the client's
    /// request body was not all read.
    async fn refuse<S>(
        &mut self,
        client: &mut S,
        config: &tandem_config::Service,
        head: &Head,
        started: std::time::Instant,
        own: Own,
    ) -> Result<bool, ()>
    where
        S: AsyncWrite + Unpin,
    {
        let refusal = own.cause.refusal();
        let status = refusal.status;
        if let Some((method, path)) = &head.log {
            AccessLog {
                service: &config.name,
                client: self.conn.peer,
                method,
                path,
                status,
                backend: None,
                bytes: 0,
                started,
            }
            .write();
        }
        let close = own.unread_body || head.close || self.conn.close_all_requested();
        let body = policy::answer_body(refusal);
        let mut response = format!("HTTP/1.1 {status} {}\r\n", policy::reason(status));
        for (name, value) in policy::ANSWER_FIELDS {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str(&format!("content-length: {}\r\n", body.len()));
        if close {
            response.push_str("connection: close\r\n");
        }
        response.push_str("\r\n");
        response.push_str(&body);
        if !send(client, response.as_bytes(), self.conn, config).await {
            return Ok(false);
        }
        Ok(!close)
    }
}

/// One of tandem's own answers to a request.
struct Own {
    /// Why no backend answered.
    cause: policy::Cause,
    /// Part of the request body was not read: the connection must close.
    unread_body: bool,
}

/// Reads a backend's response from `stream` into `buf` until a final response head is
/// whole (interim 1xx responses skipped, an unasked 101 refused), `prepare` readying
/// `buf` before each read; `on_head` makes what the caller needs of the head (given
/// the bytes it was parsed from), returned with the head's length, left in `buf`.
pub(super) async fn read_final_head<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    deadline: Instant,
    mut prepare: impl FnMut(&mut BytesMut),
    on_head: impl FnOnce(&httparse::Response<'_, '_>, &[u8]) -> Result<T, ResponseError>,
) -> Result<(T, usize), ResponseError> {
    loop {
        if !buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => match resp.code {
                    Some(101) => {
                        return Err(ResponseError::Invalid("an unasked protocol switch"));
                    }
                    Some(100..=199) => {
                        buf.advance(n);
                        continue;
                    }
                    _ => return Ok((on_head(&resp, buf)?, n)),
                },
                Ok(httparse::Status::Partial) if buf.len() < max_head => {}
                Ok(httparse::Status::Partial) => {
                    return Err(ResponseError::Invalid("response head too large"));
                }
                Err(_) => return Err(ResponseError::Invalid("malformed response head")),
            }
        }
        prepare(buf);
        match timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(ResponseError::TimedOut),
            Ok(Err(e)) if buf.is_empty() => return Err(ResponseError::Io(e)),
            Ok(Err(_)) => return Err(ResponseError::Invalid("connection lost mid-head")),
            Ok(Ok(0)) if buf.is_empty() => return Err(ResponseError::Closed),
            Ok(Ok(0)) => return Err(ResponseError::Invalid("connection closed mid-head")),
            Ok(Ok(_)) => {}
        }
    }
}

/// A new connection to the backend at `address`, within `connect_timeout`.
pub(super) async fn connect(
    address: SocketAddr,
    config: &tandem_config::Service,
) -> std::io::Result<BackendConn> {
    let stream = timeout(config.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(BackendConn {
        stream,
        address,
        reused: false,
    })
}

/// A kept backend connection the backend has not closed: not readable (a closed one
/// reads as EOF; a backend sends nothing unasked).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Why no response head came from a backend.
#[derive(Debug)]
pub(super) enum ResponseError {
    /// Sending or reading failed before any response byte.
    Io(std::io::Error),
    /// The backend closed before any response byte.
    Closed,
    /// No head within response_timeout.
    TimedOut,
    /// Not a usable response head.
    Invalid(&'static str),
}

impl ResponseError {
    /// The failure as the retry rule knows it.
    pub(super) fn kind(&self) -> policy::SendError {
        match self {
            ResponseError::Io(_) | ResponseError::Closed => policy::SendError::Lost,
            ResponseError::TimedOut => policy::SendError::TimedOut,
            ResponseError::Invalid(_) => policy::SendError::Invalid,
        }
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Io(e) => write!(f, "{e}"),
            ResponseError::Closed => f.write_str("connection closed before a response"),
            ResponseError::TimedOut => f.write_str("no response in time"),
            ResponseError::Invalid(why) => f.write_str(why),
        }
    }
}

/// What rewriting a request head needs to know of its connection and service.
struct RequestSide<'c> {
    /// The client, as the forwarding fields name it.
    client: &'c policy::Client,
    /// A pool's sticky cookie, whose value the head may carry.
    cookie_name: &'c dyn Fn(&str) -> Option<&'c str>,
    /// Keep method and target for the access log.
    log: bool,
    http: &'c tandem_config::Http,
    /// The service, whose routes choose the pool (none: its default pool, in tests).
    service: Option<&'c tandem_config::Service>,
}

/// Parses the request head at the start of `buf`; when the fast path can serve it,
/// writes its rewritten form (what the backend gets) to `out`.
fn rewrite_request(buf: &[u8], side: &RequestSide<'_>, out: &mut Vec<u8>) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    // A head past max_header_size that came in one read is the general path's too,
    // whose watch refuses it (431) as it refuses one that came in pieces.
    if head_len > side.http.max_header_size {
        return Parsed::Other;
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    // What the policy refuses, the general path refuses (with the same answer, from
    // one place); what it accepts, the fast path serves in origin-form with a length.
    let accepted = match super::policy::check(&req) {
        Ok(a) => a,
        Err(_) => return Parsed::Other,
    };
    let length = match accepted.framing {
        super::policy::Framing::None => None,
        super::policy::Framing::Length(n) => Some(n),
        super::policy::Framing::Chunked => return Parsed::Other,
    };
    if method == "CONNECT" || accepted.absolute.is_some() || !target.starts_with('/') {
        return Parsed::Other;
    }
    let host = accepted.host;
    let tokens = connection_tokens(req.headers);
    // An upgrade, or a Connection field that would strip the fields framing and
    // routing the request (hyper rebuilds them; the fast path relays bytes).
    if ["upgrade", "content-length", "transfer-encoding", "host"]
        .iter()
        .any(|n| named_by(&tokens, n))
    {
        return Parsed::Other;
    }
    let close = named_by(&tokens, "close");
    let mut previous_xff = None;
    let mut lengths = 0;
    for h in req.headers.iter() {
        if is(h.name, "expect") || is(h.name, "upgrade") {
            return Parsed::Other;
        } else if is(h.name, "content-length") {
            // Relayed as it is: one plain number ("5, 5" and repeats: hyper's, which
            // sends one).
            lengths += 1;
            if lengths > 1 || content_length(h.value).is_none() {
                return Parsed::Other;
            }
        } else if is(h.name, "x-forwarded-for") && previous_xff.is_none() {
            previous_xff = Some(h.value);
        }
    }
    let (route, decision) = match side.service {
        Some(config) => {
            let view = policy::route::RequestView {
                method,
                host,
                target,
                headers: || req.headers.iter().map(|h| (h.name, h.value)),
            };
            let (route, decision) = policy::route::decide(&config.routes, &config.pool, &view);
            super::log_route(config, route, &decision);
            (route, decision)
        }
        None => (None, policy::route::Decision::Pool("")),
    };
    let (cookie_name, answer) = match decision {
        policy::route::Decision::Pool(pool) => ((side.cookie_name)(pool), None),
        policy::route::Decision::Answer(answer) => (None, Some(answer)),
    };
    let cookie = cookie_name.and_then(|name| {
        req.headers
            .iter()
            .filter(|h| is(h.name, "cookie"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .find_map(|v| policy::cookie_value(v, name))
            .map(str::to_string)
    });
    let log = side.log.then(|| (method.to_string(), target.to_string()));

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_request_fields(
        out,
        pairs(req.headers),
        &tokens,
        side.client,
        previous_xff,
        host,
        side.http,
    );
    out.extend_from_slice(b"\r\n");
    let head = Head {
        len: head_len,
        body: length.unwrap_or(0),
        head_method: method == "HEAD",
        idempotent: policy::is_idempotent(method),
        close,
        cookie,
        log,
        route,
        answer,
    };
    Parsed::Fast(head)
}

/// Buffers of connections between requests, kept per thread for the next request, so
/// that an idle connection holds none and a busy one does not go through malloc.
mod spares {
    use bytes::BytesMut;
    use std::cell::RefCell;

    /// Most spares a thread keeps.
    const KEPT: usize = 256;
    /// The capacity of a new buffer.
    const SIZE: usize = 32 * 1024;

    thread_local! {
        static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer.
    pub(super) fn take() -> BytesMut {
        SPARES
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
    }

    /// Keeps `buffer` for another connection, when it is worth keeping.
    pub(super) fn give(mut buffer: BytesMut) {
        buffer.clear();
        if buffer.capacity() >= SIZE / 2 && buffer.capacity() <= 4 * SIZE {
            SPARES.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < KEPT {
                    s.push(buffer);
                }
            });
        }
    }
}

/// What the relay needs to know of a response head.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The backend connection can serve another request after this response.
    backend_keeps: bool,
}

/// Writes the rewritten response head to `out`, all but `connection` and the final
/// empty line.
fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    out: &mut Vec<u8>,
    config: &tandem_config::Service,
    head: &Head,
    chosen: &Chosen,
) -> Result<ResponseHead, ResponseError> {
    let status = resp.code.unwrap_or(502);
    let tokens = connection_tokens(resp.headers);
    let (framing, backend_keeps, encoded) = response_framing(resp, head.head_method)?;
    let rules = &*policy::route::response_rules(config, head.route);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        // The body is relayed as it came: its Transfer-Encoding stays (whatever
        // Connection names), and a Content-Length beside it would contradict it and goes.
        let keep = if is(h.name, "transfer-encoding") {
            true
        } else if is(h.name, "content-length") {
            !encoded
        } else {
            response_field_kept(h.name, &tokens, rules)
        };
        if keep {
            push_field(out, h.name, h.value);
        }
    }
    policy::response_fields(
        config.http.via,
        chosen.set_cookie.as_deref(),
        rules,
        |name, value| push_pieces(out, name, value),
    );
    Ok(ResponseHead {
        status,
        framing,
        backend_keeps,
    })
}

/// How a backend's response head frames its body (to a HEAD request when
/// `head_method`), whether the backend keeps the connection after it, and whether it
/// has a Transfer-Encoding.
pub(super) fn response_framing(
    resp: &httparse::Response<'_, '_>,
    head_method: bool,
) -> Result<(Framing, bool, bool), ResponseError> {
    let status = resp.code.unwrap_or(502);
    // (No list of the tokens: the fast path's rewrite collects its own.)
    let backend_keeps = resp.version == Some(1)
        && !each_connection_token(pairs(resp.headers)).any(|t| t.eq_ignore_ascii_case(b"close"));
    let mut chunked = false;
    let mut encoded = false;
    let mut length = None;
    for h in resp.headers.iter() {
        if is(h.name, "transfer-encoding") {
            encoded = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if is(h.name, "content-length") {
            match (length, content_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err(ResponseError::Invalid("invalid Content-Length")),
            }
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::None
    } else if encoded && chunked {
        Framing::Chunked(ChunkedEnd::default())
    } else if encoded {
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok((framing, backend_keeps, encoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static CLIENT: std::sync::LazyLock<policy::Client> =
        std::sync::LazyLock::new(|| policy::Client::new("192.0.2.7".parse().unwrap(), false));

    fn side(http: &tandem_config::Http) -> RequestSide<'_> {
        RequestSide {
            client: &CLIENT,
            cookie_name: &|_| Some("TANDEMID"),
            log: false,
            http,
            service: None,
        }
    }

    /// The fields of a parsed head, names lowercased.
    fn fields(head: &[u8]) -> (String, String, Vec<(String, String)>, usize) {
        let mut f = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut f);
        let Ok(httparse::Status::Complete(len)) = req.parse(head) else {
            panic!("not a head: {:?}", String::from_utf8_lossy(head));
        };
        let fields = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (
            req.method.unwrap().to_string(),
            req.path.unwrap().to_string(),
            fields,
            len,
        )
    }

    #[test]
    fn a_plain_request_is_rewritten_with_the_forwarding_fields() {
        let http = tandem_config::Http {
            via: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let request = b"POST /p?q=1 HTTP/1.1\r\nHost: www.example.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 198.51.100.1\r\nCookie: a=b; TANDEMID=abc\r\nContent-Length: 2\r\n\r\nhi";
        let Parsed::Fast(head) = rewrite_request(request, &side(&http), &mut out) else {
            panic!("not for the fast path");
        };
        assert_eq!((head.len, head.body), (request.len() - 2, 2));
        assert_eq!(head.cookie.as_deref(), Some("abc"));
        let (method, path, fields, len) = fields(&out);
        assert_eq!(
            (method.as_str(), path.as_str(), len),
            ("POST", "/p?q=1", out.len())
        );
        let get = |n: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("host"), ["www.example.test"]);
        assert_eq!(get("content-length"), ["2"]);
        assert!(get("connection").is_empty() && get("x-hop").is_empty());
        assert_eq!(get("x-forwarded-for"), ["198.51.100.1, 192.0.2.7"]);
        assert_eq!(get("x-forwarded-proto"), ["http"]);
        assert_eq!(get("x-forwarded-host"), ["www.example.test"]);
        assert_eq!(
            get("forwarded"),
            ["for=192.0.2.7;proto=http;host=\"www.example.test\""]
        );
        assert_eq!(get("via"), ["1.1 tandem"]);
    }

    const NAMES: [&str; 12] = [
        "Host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "X-Forwarded-For",
        "Expect",
        "Upgrade",
        "TE",
        "Keep-Alive",
        "X-Custom",
        "Cookie",
    ];

    fn field() -> impl Strategy<Value = (String, String)> {
        let value = prop_oneof![
            3 => "[0-9]{1,4}",
            3 => proptest::sample::subsequence(NAMES.to_vec(), 1..3).prop_map(|n| n.join(", ")),
            1 => Just("chunked".to_string()),
            1 => Just(" 5 ".to_string()),
            1 => Just("5, 5".to_string()),
            1 => Just("+5".to_string()),
            1 => "[ -~]{0,12}",
        ];
        (proptest::sample::select(NAMES.to_vec()), value).prop_map(|(n, v)| (n.to_string(), v))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Whatever fields a client sends, a head the fast path takes goes out as one
        /// well-formed head that frames the same body: a single Content-Length equal to
        /// the body it relays (or none for none), no Transfer-Encoding, Expect, Upgrade
        /// or Connection, its Host kept. That is what keeps requests from being smuggled.
        #[test]
        fn what_goes_out_frames_what_came_in(
            method in proptest::sample::select(vec!["GET", "POST", "PUT", "HEAD", "DELETE"]),
            fields_in in prop::collection::vec(field(), 0..5),
        ) {
            let http = tandem_config::Http::default();
            let mut request = format!("{method} /x HTTP/1.1\r\n");
            for (n, v) in &fields_in {
                request.push_str(&format!("{n}: {v}\r\n"));
            }
            request.push_str("\r\n");
            let mut out = Vec::new();
            if let Parsed::Fast(head) = rewrite_request(request.as_bytes(), &side(&http), &mut out) {
                prop_assert_eq!(head.len, request.len());
                let (m, path, sent, len) = fields(&out);
                prop_assert_eq!(len, out.len());
                prop_assert_eq!((m.as_str(), path.as_str()), (method, "/x"));
                let lengths: Vec<&str> = sent.iter().filter(|(k, _)| k == "content-length").map(|(_, v)| v.as_str()).collect();
                // One length at most, and it frames exactly the body relayed.
                prop_assert!(lengths.len() <= 1, "{:?}", lengths);
                let framed = lengths.first().map_or(Some(0), |v| v.trim().parse::<u64>().ok());
                prop_assert_eq!(framed, Some(head.body));
                for banned in ["transfer-encoding", "expect", "upgrade", "connection", "te", "keep-alive"] {
                    prop_assert!(!sent.iter().any(|(k, _)| k == banned), "{} went out", banned);
                }
                let hosts_in = fields_in.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host")).count();
                let hosts_out = sent.iter().filter(|(k, _)| k == "host").count();
                prop_assert_eq!(hosts_in, hosts_out);
                prop_assert_eq!(sent.iter().filter(|(k, _)| k == "x-forwarded-for").count(), 1);
            }
        }
    }
}
