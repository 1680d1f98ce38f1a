//! A second look at HTTP/1 request framing, before hyper parses the bytes.
//!
//! hyper accepts a request carrying both Content-Length and Transfer-Encoding (the
//! latter wins, as RFC 9112 allows) and hides the Content-Length from the service. A
//! proxy must refuse such a request instead, since a backend may frame it the other
//! way (request smuggling). [`Sniffer`] wraps the client stream, parses every request
//! head with `httparse` as the bytes go by, follows the body framing to the next head,
//! and records a verdict per request; the service checks the verdict of each request,
//! in order, before forwarding it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes of a head kept while waiting for its end.
const MAX_HEAD: usize = 1 << 20;

/// Verdicts of the requests seen on one connection, oldest first.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<Option<&'static str>>>,
    /// Set once the connection switched protocols: its bytes are no longer HTTP/1.
    stopped: std::sync::atomic::AtomicBool,
}

impl Verdicts {
    /// Stops watching the connection (it was upgraded to another protocol).
    pub fn stop_watching(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The verdict of the next request: why it is ambiguous, or `None` when clean.
    pub fn next(&self) -> Option<&'static str> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .flatten()
    }

    fn push(&self, verdict: Option<&'static str>) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(verdict);
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping `n` bytes of a Content-Length body.
    Body(u64),
    /// In a chunked body: reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data (and its CRLF).
    ChunkData(u64),
    /// Skipping trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not HTTP/1 (an h2 preface) or beyond repair: stop looking.
    Off,
}

/// The client stream, watched.
#[derive(Debug)]
pub struct Sniffer<S> {
    inner: S,
    /// Bytes read from the client before the sniffer took over, read again first.
    replay: bytes::Bytes,
    state: State,
    verdicts: Arc<Verdicts>,
}

impl<S> Sniffer<S> {
    /// Wraps `inner`; verdicts go to `verdicts`.
    pub fn new(inner: S, verdicts: Arc<Verdicts>) -> Sniffer<S> {
        Sniffer {
            inner,
            replay: bytes::Bytes::new(),
            state: State::Head(Vec::new()),
            verdicts,
        }
    }

    /// Reads `bytes` (taken from the client earlier) before the stream's own.
    pub fn replaying(mut self, bytes: bytes::Bytes) -> Sniffer<S> {
        self.replay = bytes;
        self
    }

    /// Watches `bytes` as if read from the client (what the stream does on each read;
    /// public for the fuzzer).
    pub fn observe(&mut self, bytes: &[u8]) {
        self.feed(bytes);
    }

    /// Every verdict so far, oldest first (`None` = clean), taking them.
    pub fn take_verdicts(&self) -> Vec<Option<&'static str>> {
        self.verdicts
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if self
            .verdicts
            .stopped
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.state = State::Off;
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    if buf.is_empty() && bytes.starts_with(b"PRI * HTTP/2") {
                        self.state = State::Off;
                        return;
                    }
                    if buf.is_empty() {
                        // The usual case: the whole head arrived in one read; parse it
                        // where it lies, without a copy.
                        match parse_head(&bytes[..bytes.len().min(MAX_HEAD)]) {
                            Head::Complete(len, verdict, next) => {
                                self.verdicts.push(verdict);
                                bytes = &bytes[len..];
                                self.state = next;
                                continue;
                            }
                            Head::Partial => {}
                            Head::Invalid => {
                                self.state = State::Off;
                                return;
                            }
                        }
                    }
                    let take = bytes.len().min(MAX_HEAD.saturating_sub(buf.len()).max(1));
                    let before = buf.len();
                    buf.extend_from_slice(&bytes[..take]);
                    match parse_head(buf) {
                        Head::Complete(len, verdict, next) => {
                            self.verdicts.push(verdict);
                            bytes = &bytes[len - before..];
                            self.state = next;
                        }
                        Head::Partial if buf.len() < MAX_HEAD => return,
                        // hyper refuses what httparse refuses: nothing to add.
                        _ => {
                            self.state = State::Off;
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let skip = (*n).min(bytes.len() as u64);
                    *n -= skip;
                    bytes = &bytes[skip as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        line.extend_from_slice(&bytes[..=end]);
                        bytes = &bytes[end + 1..];
                        let text = String::from_utf8_lossy(line);
                        let size = text.split(';').next().unwrap_or("").trim();
                        match u64::from_str_radix(size, 16) {
                            Ok(0) => self.state = State::Trailers(Vec::new()),
                            Ok(n) => self.state = State::ChunkData(n + 2),
                            Err(_) => self.state = State::Off,
                        }
                    }
                    None => {
                        line.extend_from_slice(bytes);
                        if line.len() > 1024 {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
                State::ChunkData(n) => {
                    let skip = (*n).min(bytes.len() as u64);
                    *n -= skip;
                    bytes = &bytes[skip as usize..];
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        line.extend_from_slice(&bytes[..=end]);
                        bytes = &bytes[end + 1..];
                        let empty = line.as_slice() == b"\r\n" || line.as_slice() == b"\n";
                        self.state = if empty {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        };
                    }
                    None => {
                        line.extend_from_slice(bytes);
                        return;
                    }
                },
            }
        }
    }
}

/// A request head parsed from the start of some bytes.
enum Head {
    /// Its length, its verdict and what follows it.
    Complete(usize, Option<&'static str>, State),
    /// More bytes are needed.
    Partial,
    /// Not a request head httparse accepts.
    Invalid,
}

fn parse_head(data: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => {
            let (verdict, next) = judge(req.headers);
            Head::Complete(len, verdict, next)
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

/// The verdict on a head and where its body ends.
fn judge(headers: &[httparse::Header<'_>]) -> (Option<&'static str>, State) {
    let value =
        |h: &httparse::Header<'_>| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase();
    let lengths: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .flat_map(|h| {
            value(h)
                .split(',')
                .map(|v| v.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let te: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(value)
        .collect();
    if !lengths.is_empty() && !te.is_empty() {
        return (
            Some("both Content-Length and Transfer-Encoding"),
            State::Off,
        );
    }
    if lengths.iter().any(|l| *l != lengths[0]) {
        return (Some("conflicting Content-Length values"), State::Off);
    }
    if !te.is_empty() {
        return (None, State::ChunkSize(Vec::new()));
    }
    match lengths.first().map(|l| l.parse::<u64>()) {
        Some(Ok(0)) | None => (None, State::Head(Vec::new())),
        Some(Ok(n)) => (None, State::Body(n)),
        Some(Err(_)) => (None, State::Off),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = &polled
            && !matches!(this.state, State::Off)
        {
            this.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(chunks: &[&[u8]]) -> Vec<Option<&'static str>> {
        let v = Arc::new(Verdicts::default());
        let mut s = Sniffer::new(tokio::io::empty(), v.clone());
        for c in chunks {
            s.feed(c);
        }
        let mut out = Vec::new();
        while !v.queue.lock().unwrap().is_empty() {
            out.push(v.next());
        }
        out
    }

    #[test]
    fn clean_requests_on_one_connection_each_get_a_verdict() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(verdicts(&[stream]), vec![None, None, None, None]);
        // Byte by byte gives the same.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![None, None, None, None]);
    }

    #[test]
    fn ambiguous_framing_is_named() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG";
        assert_eq!(
            verdicts(&[cl_te]),
            vec![Some("both Content-Length and Transfer-Encoding")]
        );
        let two_cl =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nContent-Length: 5\r\n\r\nhello!";
        assert_eq!(
            verdicts(&[two_cl]),
            vec![Some("conflicting Content-Length values")]
        );
        // The second request of a connection is watched as closely as the first.
        let later = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            verdicts(&[later]),
            vec![None, Some("both Content-Length and Transfer-Encoding")]
        );
    }

    #[test]
    fn h2_prefaces_are_left_alone() {
        assert_eq!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), vec![]);
    }
}
