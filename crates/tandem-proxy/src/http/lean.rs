//! The general path's own HTTP/1.1 client for HTTP/2 requests without a body (the
//! common shape: GET, HEAD...). The stream's task writes the request head on an idle
//! backend connection of the service (the fast path's pool) or a new one, reads the
//! response head with httparse and returns a body that reads the backend connection
//! itself, giving it back to the pool when the response is over: no connection task,
//! channel or request clone per request, which is what hyper's pooled client costs.
//!
//! Requests with a body, upgrades and TLS backends stay on hyper's client.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::HttpState;
use super::chunked::Piece;
use super::h1::{self, BackendConn, Framing, ResponseError};
use super::policy::{self, MAX_HEADERS};

/// A body's error, as the client connection's side sees it.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes asked of the backend per read of a body.
const BACKEND_READ: usize = 16 * 1024;
/// Bytes first set aside for a response head (and what follows it).
const HEAD_READ: usize = 8 * 1024;

/// Why a request got no response head.
pub(super) enum Failure {
    /// No connection to the backend.
    Connect(std::io::Error),
    /// Sent, and no usable response head came.
    Response(ResponseError),
}

/// What a request needs of its backend connection.
pub(super) struct Target<'a> {
    pub state: &'a Arc<HttpState>,
    pub address: SocketAddr,
    pub config: &'a tandem_config::Service,
    /// Idle connections kept per backend.
    pub max_idle: usize,
    /// A new connection, not an idle one (the request is sent again).
    pub fresh: bool,
    /// The request may be sent again if a kept connection turns out closed: the kept
    /// connection is used without looking.
    pub idempotent: bool,
    /// The client, as the forwarding fields name it.
    pub client: &'a policy::Client,
    /// The response header rules of the request's route.
    pub response_rules: &'a tandem_config::HeaderRules,
}

/// Sends the body-less request `parts` (its fields as the client sent them: the head
/// is written with the policy's fields, as the fast path writes it) to `target` and
/// reads the response head, its fields those the policy relays.
pub(super) async fn send(
    target: Target<'_>,
    parts: &Parts,
) -> Result<hyper::Response<LeanBody>, Failure> {
    let config = target.config;
    let deadline = Instant::now() + config.http.response_timeout;
    let kept = if target.fresh {
        None
    } else {
        target.state.idle.take(
            target.address,
            config.http.backend_idle_timeout,
            !target.idempotent,
        )
    };
    let mut stream = match kept {
        Some(stream) => stream,
        None => {
            h1::connect(target.address, config)
                .await
                .map_err(Failure::Connect)?
                .stream
        }
    };
    let head = request_head(parts, target.address, target.client, &config.http);
    match timeout_at(deadline, stream.write_all(&head)).await {
        Err(_) => return Err(Failure::Response(ResponseError::TimedOut)),
        Ok(Err(e)) => return Err(Failure::Response(ResponseError::Io(e))),
        Ok(Ok(())) => {}
    }
    let head_method = parts.method == Method::HEAD;
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    let (response, framing, keeps) = read_head(
        &mut stream,
        &mut buf,
        config.http.max_header_size,
        head_method,
        target.response_rules,
        deadline,
    )
    .await
    .map_err(Failure::Response)?;
    let mut body = LeanBody {
        stream: Some(stream),
        buf,
        framing,
        keeps,
        trailers: Vec::new(),
        pending_trailers: None,
        state: target.state.clone(),
        address: target.address,
        max_idle: target.max_idle,
        max_trailers: config.http.max_header_size,
    };
    if matches!(body.framing, Framing::None) {
        body.finish();
    }
    Ok(response.map(|()| body))
}

/// The HTTP/1.1 request head of `parts` to the backend at `address`: the request line,
/// Host (the request's authority, else its Host field, else the backend's address),
/// the client's fields and tandem's as [`h1::push_request_fields`] writes them.
fn request_head(
    parts: &Parts,
    address: SocketAddr,
    client: &policy::Client,
    http: &tandem_config::Http,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = super::request_host(parts);
    // A rule that sets or removes Host has the last word (the fields' writer adds a
    // set value), as on the other paths.
    if !policy::ruled_out("host", &http.request_headers) {
        match host {
            Some(host) => {
                out.extend_from_slice(b"host: ");
                out.extend_from_slice(host);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(format!("host: {address}\r\n").as_bytes()),
        }
    }
    let fields = || {
        parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    };
    let tokens: Vec<&[u8]> = h1::each_connection_token(fields()).collect();
    let prior_xff = parts
        .headers
        .get(super::X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes);
    h1::push_request_fields(
        &mut out,
        fields().filter(|(name, _)| *name != header::HOST.as_str()),
        &tokens,
        client,
        prior_xff,
        host,
        http,
    );
    // A method that expects a body says it has none (as hyper's client does).
    let expects_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if expects_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads the response head (skipping interim responses) into a response without a
/// body, with the fields the policy relays (see [`h1::response_field_kept`]; the
/// `rules` are the response's), how its body is framed and whether the backend keeps
/// the connection.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    head_method: bool,
    rules: &tandem_config::HeaderRules,
    deadline: Instant,
) -> Result<(hyper::Response<()>, Framing, bool), ResponseError> {
    // (Grown only for a head larger than the first read: a realloc per request was
    // 0.8 % of an h2c request's CPU.)
    let prepare = |buf: &mut BytesMut| buf.reserve(HEAD_READ / 2);
    let ((status, framing, keeps, fields), n) =
        h1::read_final_head(stream, buf, max_head, deadline, prepare, |resp, bytes| {
            let (framing, keeps, encoded) = h1::response_framing(resp, head_method)?;
            let status = resp
                .code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or(ResponseError::Invalid("malformed status"))?;
            // The values stay where they were read (no copy each): where they lie in
            // the head, then slices of it.
            let start = bytes.as_ptr() as usize;
            let tokens = h1::connection_tokens(resp.headers);
            let mut fields = Vec::with_capacity(resp.headers.len());
            for h in resp.headers.iter() {
                // A Content-Length beside a transfer coding contradicts the body the
                // client gets (decoded): it goes, as on the fast path.
                let contradicts = encoded && h.name.eq_ignore_ascii_case("content-length");
                if contradicts || !h1::response_field_kept(h.name, &tokens, rules) {
                    continue;
                }
                let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                    return Err(ResponseError::Invalid("malformed response field"));
                };
                let at = match h.value.len() {
                    0 => 0,
                    _ => h.value.as_ptr() as usize - start,
                };
                fields.push((name, at..at + h.value.len()));
            }
            Ok((status, framing, keeps, fields))
        })
        .await?;
    let head = buf.split_to(n).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, at) in fields {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(at)) else {
            return Err(ResponseError::Invalid("malformed response field"));
        };
        headers.append(name, value);
    }
    let mut response = hyper::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok((response, framing, keeps))
}

/// A response body read from its backend connection as the client takes it; the
/// connection goes back to the pool once the body is over, if the backend keeps it.
pub(super) struct LeanBody {
    /// The backend connection, until the body is over.
    stream: Option<TcpStream>,
    /// Bytes read and not yet given.
    buf: BytesMut,
    framing: Framing,
    /// The backend keeps the connection after this response.
    keeps: bool,
    /// Trailer field lines of a chunked body, as they come.
    trailers: Vec<u8>,
    /// The trailers, to give after the last data.
    pending_trailers: Option<HeaderMap>,
    state: Arc<HttpState>,
    address: SocketAddr,
    max_idle: usize,
    max_trailers: usize,
}

impl LeanBody {
    /// The body is over: its connection goes back to the pool when the backend keeps
    /// it and sent nothing more.
    fn finish(&mut self) {
        self.framing = Framing::None;
        if let Some(stream) = self.stream.take()
            && self.keeps
            && self.buf.is_empty()
        {
            let conn = BackendConn {
                stream,
                address: self.address,
                reused: true,
            };
            self.state.idle.put(conn, self.max_idle);
        }
    }

    /// The data (and trailers) of the chunked bytes in `buf`, as far as they go.
    fn decode_chunked(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Framing::Chunked(scanner) = &mut self.framing else {
            return Ok(None);
        };
        // The first piece of data where it lies; the pieces joined only when there are
        // more (no list of them per poll).
        let mut first: Option<std::ops::Range<usize>> = None;
        let mut joined: Option<BytesMut> = None;
        let (buf, trailers) = (&self.buf, &mut self.trailers);
        let end = scanner
            .decode(buf, |piece| match piece {
                Piece::Data(r) => match (&first, &mut joined) {
                    (None, _) => first = Some(r),
                    (Some(one), None) => {
                        let mut both = BytesMut::with_capacity(one.len() + r.len());
                        both.extend_from_slice(&buf[one.clone()]);
                        both.extend_from_slice(&buf[r]);
                        joined = Some(both);
                    }
                    (Some(_), Some(both)) => both.extend_from_slice(&buf[r]),
                },
                Piece::Trailer(r) => trailers.extend_from_slice(&buf[r]),
            })
            .map_err(|_| "malformed chunked response body")?;
        if self.trailers.len() > self.max_trailers {
            return Err("response trailers too large".into());
        }
        let used = end.unwrap_or(self.buf.len());
        let bytes = match (first, joined) {
            (None, _) => {
                self.buf.advance(used);
                None
            }
            (Some(one), None) => {
                let mut chunk = self.buf.split_to(used);
                chunk.advance(one.start);
                chunk.truncate(one.len());
                Some(chunk.freeze())
            }
            (Some(_), Some(joined)) => {
                self.buf.advance(used);
                Some(joined.freeze())
            }
        };
        if end.is_some() {
            self.pending_trailers = trailer_fields(&self.trailers);
            self.finish();
        }
        Ok(bytes)
    }
}

/// Trailer field lines as fields (none when there are none or they do not parse).
fn trailer_fields(lines: &[u8]) -> Option<HeaderMap> {
    if lines.is_empty() {
        return None;
    }
    let mut block = lines.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&block, &mut fields)
    else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(name, value);
        }
    }
    Some(map)
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.framing {
                Framing::None => {
                    return Poll::Ready(
                        this.pending_trailers.take().map(|t| Ok(Frame::trailers(t))),
                    );
                }
                Framing::Length(left) if !this.buf.is_empty() => {
                    let take = (*left).min(this.buf.len() as u64);
                    *left -= take;
                    let data = this.buf.split_to(take as usize).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(_) if !this.buf.is_empty() => match this.decode_chunked() {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) => continue,
                    Err(e) => {
                        this.stream = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Framing::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            let Some(stream) = &this.stream else {
                return Poll::Ready(None);
            };
            if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                this.stream = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            this.buf.reserve(BACKEND_READ);
            match stream.try_read_buf(&mut this.buf) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.stream = None;
                    this.framing = Framing::None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.stream = None;
                    return Poll::Ready(Some(Err("backend closed the connection mid-body".into())));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.stream = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::None) && self.pending_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::None if self.pending_trailers.is_none() => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head `request_head` writes for `parts` from a plain-text client, to the
    /// backend 10.0.0.1:80.
    fn plain_head(parts: &Parts, http: &tandem_config::Http) -> String {
        let client = policy::Client::new("192.0.2.7".parse().unwrap(), false);
        let head = request_head(parts, "10.0.0.1:80".parse().unwrap(), &client, http);
        String::from_utf8(head).unwrap()
    }

    #[test]
    fn an_http2_requests_head_has_the_authority_as_host_and_the_policys_fields() {
        let (parts, ()) = hyper::Request::builder()
            .uri("https://example.org/a?b=1")
            .header("host", "elsewhere.test")
            .header("accept", "*/*")
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-proto", "gopher")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("forwarded", "for=198.51.100.1")
            .header("x-secret", "1")
            .body(())
            .unwrap()
            .into_parts();
        let client = policy::Client::new("192.0.2.7".parse().unwrap(), true);
        let mut http = tandem_config::Http::default();
        http.request_headers.remove.push("x-secret".into());
        let head = request_head(&parts, "10.0.0.1:80".parse().unwrap(), &client, &http);
        let head = String::from_utf8(head).unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(
            lines,
            [
                "GET /a?b=1 HTTP/1.1",
                "host: example.org",
                "accept: */*",
                "forwarded: for=198.51.100.1",
                "x-forwarded-for: 198.51.100.1, 192.0.2.7",
                "x-forwarded-proto: https",
                "x-forwarded-host: example.org",
                "forwarded: for=192.0.2.7;proto=https;host=\"example.org\"",
                "",
                "",
            ]
        );
    }

    #[test]
    fn split_cookie_fields_go_to_the_backend_as_one() {
        let (parts, ()) = hyper::Request::builder()
            .uri("http://example.org/")
            .header("cookie", "a=1")
            .header("accept", "*/*")
            .header("cookie", "b=2")
            .body(())
            .unwrap()
            .into_parts();
        let mut parts = parts;
        // (Joined where the general path takes an HTTP/2 request in, for both clients.)
        super::super::join_split_cookie(&mut parts.headers);
        let head = plain_head(&parts, &tandem_config::Http::default());
        let cookies: Vec<&str> = head
            .split("\r\n")
            .filter(|l| l.starts_with("cookie:"))
            .collect();
        assert_eq!(cookies, ["cookie: a=1; b=2"]);
    }

    #[tokio::test]
    async fn a_content_length_beside_a_transfer_coding_is_not_relayed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        });
        let mut stream = TcpStream::connect(at).await.unwrap();
        let mut buf = BytesMut::new();
        let rules = tandem_config::HeaderRules::default();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let (response, framing, _) =
            read_head(&mut stream, &mut buf, 8192, false, &rules, deadline)
                .await
                .unwrap();
        backend.await.unwrap();
        assert!(matches!(framing, Framing::Chunked(_)));
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(response.headers().get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(response.headers()["x-kept"], "1");
    }

    #[test]
    fn a_rule_that_sets_or_removes_host_has_the_last_word() {
        let (parts, ()) = hyper::Request::builder()
            .uri("https://example.org/")
            .body(())
            .unwrap()
            .into_parts();
        let hosts = |http: &tandem_config::Http| {
            plain_head(&parts, http)
                .split("\r\n")
                .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let mut set = tandem_config::Http::default();
        set.request_headers
            .set
            .push(("host".into(), "inside.test".into()));
        assert_eq!(hosts(&set), ["host: inside.test"]);
        let mut removed = tandem_config::Http::default();
        removed.request_headers.remove.push("Host".into());
        assert!(hosts(&removed).is_empty());
    }

    #[test]
    fn a_request_without_a_host_names_the_backend_and_a_post_says_it_has_no_body() {
        let (parts, ()) = hyper::Request::builder()
            .method("POST")
            .uri("/form")
            .body(())
            .unwrap()
            .into_parts();
        let head = plain_head(&parts, &tandem_config::Http::default());
        assert!(
            head.starts_with("POST /form HTTP/1.1\r\nhost: 10.0.0.1:80\r\n"),
            "{head}"
        );
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
        assert!(!head.contains("x-forwarded-host"), "{head}");
    }
}
