//! A second look at HTTP/1 request framing, before hyper parses the bytes.
//!
//! hyper accepts a request carrying both Content-Length and Transfer-Encoding (the
//! latter wins, as RFC 9112 allows) and hides the Content-Length from the service. A
//! proxy must refuse such a request instead, since a backend may frame it the other
//! way (request smuggling). [`Sniffer`] wraps the client stream, parses every request
//! head with `httparse` as the bytes go by, judges it with [`policy::check`] (framing,
//! request-target, Host: the rules the fast path applies too), follows its body with
//! the fast path's [`ChunkedEnd`] or its length to the next head, and records a
//! verdict per request; the service checks the verdict of each request, in order,
//! before forwarding it. It fails closed: a request it did not see (it lost track) is
//! refused, and a chunked body it cannot follow fails the connection's reads, so hyper
//! can never go on where the watch cannot.
//!
//! It also bounds writes to the client: a write that makes no progress for the
//! client timeout fails (the general path's equivalent of HAProxy's `timeout client`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::chunked::ChunkedEnd;
use crate::http::policy::{self, Refusal};

/// Most bytes of a head kept while waiting for its end, unless told otherwise.
const MAX_HEAD: usize = 1 << 20;

/// Verdicts of the requests seen on one connection, oldest first.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<Option<Refusal>>>,
    /// Set once the connection switched protocols: its bytes are no longer HTTP/1.
    stopped: AtomicBool,
    /// A write to the client made no progress within the client timeout.
    timed_out: AtomicBool,
}

impl Verdicts {
    /// Stops watching the connection (it was upgraded to another protocol).
    pub fn stop_watching(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// The verdict of the next request: why it is refused, or `None` when it may go
    /// on. A request the watch has no verdict for is one it did not see: refused.
    pub fn next(&self) -> Option<Refusal> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(Some(policy::LOST))
    }

    /// A write to the client failed for want of progress within the client timeout.
    pub fn write_timed_out(&self) -> bool {
        self.timed_out.load(Relaxed)
    }

    fn push(&self, verdict: Option<Refusal>) {
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
    /// In a chunked body.
    Chunked(ChunkedEnd),
    /// Not HTTP/1 any more (an h2 preface, an upgrade), or a request was refused (the
    /// connection closes after its answer): stop looking.
    Off,
    /// A chunked body that cannot be followed: every read fails from now on.
    Failed,
}

/// The client stream, watched.
#[derive(Debug)]
pub struct Sniffer<S> {
    inner: S,
    /// Bytes read from the client before the sniffer took over, read again first.
    replay: bytes::Bytes,
    state: State,
    verdicts: Arc<Verdicts>,
    max_head: usize,
    /// How long a write may make no progress.
    write_timeout: Option<Duration>,
    /// Armed while a write waits.
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    write_waiting: bool,
}

impl<S> Sniffer<S> {
    /// Wraps `inner`; verdicts go to `verdicts`.
    pub fn new(inner: S, verdicts: Arc<Verdicts>) -> Sniffer<S> {
        Sniffer {
            inner,
            replay: bytes::Bytes::new(),
            state: State::Head(Vec::new()),
            verdicts,
            max_head: MAX_HEAD,
            write_timeout: None,
            write_deadline: None,
            write_waiting: false,
        }
    }

    /// Reads `bytes` (taken from the client earlier) before the stream's own.
    pub fn replaying(mut self, bytes: bytes::Bytes) -> Sniffer<S> {
        self.replay = bytes;
        self
    }

    /// Refuses (431) a head longer than `max` bytes (the service's `max_header_size`).
    pub fn max_head(mut self, max: usize) -> Sniffer<S> {
        self.max_head = max;
        self
    }

    /// Fails a write to the client that makes no progress for `limit`.
    pub fn write_timeout(mut self, limit: Duration) -> Sniffer<S> {
        self.write_timeout = Some(limit);
        self
    }

    /// Watches `bytes` as if read from the client (what the stream does on each read;
    /// public for the fuzzer); false once the connection's reads fail (a chunked body
    /// that cannot be followed).
    pub fn observe(&mut self, bytes: &[u8]) -> bool {
        self.feed(bytes).is_ok() && !matches!(self.state, State::Failed)
    }

    /// Every verdict so far, oldest first (`None` = clean), taking them.
    pub fn take_verdicts(&self) -> Vec<Option<Refusal>> {
        self.verdicts
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Follows `bytes`; `Err(n)` when a chunked body turns malformed after the first
    /// `n` of them (the state is then `Failed`).
    fn feed(&mut self, all: &[u8]) -> Result<(), usize> {
        if self.verdicts.stopped.load(Relaxed) && !matches!(self.state, State::Failed) {
            self.state = State::Off;
        }
        let mut bytes = all;
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return Ok(()),
                State::Failed => return Err(0),
                State::Head(buf) => {
                    if buf.is_empty() {
                        // The usual case: the whole head arrived in one read; parse it
                        // where it lies, without a copy.
                        match parse_head(&bytes[..bytes.len().min(self.max_head)]) {
                            Head::Complete(len, verdict, next) => {
                                self.verdicts.push(verdict);
                                bytes = &bytes[len..];
                                self.state = next;
                                continue;
                            }
                            Head::Partial => {}
                            Head::Invalid => {
                                self.state = State::Off;
                                return Ok(());
                            }
                        }
                    }
                    let take = bytes
                        .len()
                        .min(self.max_head.saturating_sub(buf.len()).max(1));
                    let before = buf.len();
                    buf.extend_from_slice(&bytes[..take]);
                    match parse_head(buf) {
                        Head::Complete(len, verdict, next) => {
                            self.verdicts.push(verdict);
                            bytes = &bytes[len - before..];
                            self.state = next;
                        }
                        Head::Partial if buf.len() < self.max_head => return Ok(()),
                        Head::Partial => {
                            self.verdicts.push(Some(policy::TOO_LARGE));
                            self.state = State::Off;
                            return Ok(());
                        }
                        // hyper refuses what httparse refuses (or it is HTTP/2's
                        // preface); a request after it gets no verdict: refused.
                        Head::Invalid => {
                            self.state = State::Off;
                            return Ok(());
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
                State::Chunked(scanner) => match scanner.feed(bytes) {
                    Ok(Some(end)) => {
                        bytes = &bytes[end..];
                        self.state = State::Head(Vec::new());
                    }
                    Ok(None) => return Ok(()),
                    Err(bad) => {
                        self.state = State::Failed;
                        let done = all.len() - bytes.len();
                        return Err(done + bad.at);
                    }
                },
            }
        }
        Ok(())
    }
}

/// A request head parsed from the start of some bytes.
enum Head {
    /// Its length, its verdict and what follows it.
    Complete(usize, Option<Refusal>, State),
    /// More bytes are needed.
    Partial,
    /// Not a request head httparse accepts.
    Invalid,
}

fn parse_head(data: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; policy::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => match policy::check(&req) {
            Ok(accepted) => {
                let next = match accepted.framing {
                    policy::Framing::None => State::Head(Vec::new()),
                    policy::Framing::Length(n) => State::Body(n),
                    policy::Framing::Chunked => State::Chunked(ChunkedEnd::default()),
                };
                Head::Complete(len, None, next)
            }
            // The connection closes after the refusal's answer.
            Err(refusal) => Head::Complete(len, Some(refusal), State::Off),
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

impl<S> Sniffer<S> {
    /// A write that cannot go on yet: pending until the write timeout, then an error.
    fn write_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let Some(limit) = self.write_timeout else {
            return Poll::Pending;
        };
        if !self.write_waiting {
            self.write_waiting = true;
            let at = tokio::time::Instant::now() + limit;
            match &mut self.write_deadline {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.write_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let sleep = self.write_deadline.as_mut().expect("armed above");
        if sleep.as_mut().poll(cx).is_ready() {
            self.verdicts.timed_out.store(true, Relaxed);
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    /// What a write gave: progress disarms the timeout, a wait arms it.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write_waiting = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if matches!(this.state, State::Failed) {
            return Poll::Ready(Err(malformed_body()));
        }
        let before = buf.filled().len();
        let polled = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = &polled
            && !matches!(this.state, State::Off)
            && let Err(good) = this.feed(&buf.filled()[before..])
        {
            // hyper gets the bytes before the malformed one, then the error (never
            // an empty read, which would look like the end of the stream).
            if good == 0 {
                return Poll::Ready(Err(malformed_body()));
            }
            buf.set_filled(before + good);
        }
        polled
    }
}

fn malformed_body() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, policy::MALFORMED_BODY.why)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.written(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(cx, polled)
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
            let _ = s.feed(c);
        }
        s.take_verdicts()
            .into_iter()
            .map(|v| v.map(|r| r.why))
            .collect()
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

    /// Requests of many shapes, good and bad, one after another.
    fn wire() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let request = prop_oneof![
            Just("GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string()),
            "[a-z]{0,40}".prop_map(|b| format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            ("[a-z]{1,20}", 0usize..3000).prop_map(|(b, ext)| format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x};{}\r\n{b}\r\n0\r\n\r\n",
                b.len(),
                "e".repeat(ext)
            )),
            Just("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
            Just("GET / HTTP/1.1\r\n\r\n".to_string()),
            Just("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".to_string()),
        ];
        proptest::collection::vec(request, 1..5).prop_map(|r| r.concat().into_bytes())
    }

    proptest::proptest! {
        /// However the bytes are cut into reads, the same verdicts, and the reads fail
        /// at the same byte.
        #[test]
        fn the_same_verdicts_across_any_split(
            wire in wire(),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..8),
        ) {
            let run = |pieces: &[&[u8]]| {
                let mut s = Sniffer::new(tokio::io::empty(), Arc::new(Verdicts::default()));
                let mut failed_at = None;
                let mut offset = 0;
                for p in pieces {
                    if failed_at.is_none() && let Err(good) = s.feed(p) {
                        failed_at = Some(offset + good);
                    }
                    offset += p.len();
                }
                (s.take_verdicts(), failed_at)
            };
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            at.push(0);
            at.push(wire.len());
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            proptest::prop_assert_eq!(run(&[&wire]), run(&pieces));
        }
    }

    #[test]
    fn a_request_not_seen_is_refused() {
        let v = Verdicts::default();
        assert_eq!(v.next(), Some(policy::LOST));
        v.push(None);
        assert_eq!(v.next(), None);
        assert_eq!(v.next(), Some(policy::LOST));
    }

    #[test]
    fn a_long_chunk_line_in_pieces_is_followed_to_the_next_head() {
        // Issue 17: the old watch gave up on a chunk-size line past 1,024 bytes, and
        // every later request counted as clean.
        let ext = "a".repeat(1800);
        let first =
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;{ext}");
        let rest = "\r\nhello\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let pieces: Vec<&[u8]> = first
            .as_bytes()
            .chunks(700)
            .chain([rest.as_bytes()])
            .collect();
        assert_eq!(
            verdicts(&pieces),
            vec![None, Some("both Content-Length and Transfer-Encoding")]
        );
    }

    #[test]
    fn a_malformed_chunked_body_fails_the_reads_after_the_good_bytes() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"0x5\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXX",
            b"ffffffffffffffffff\r\n",
            // Issue 16: 2^64 - 1, where `size + 2` overflowed.
            b"ffffffffffffffff\r\nhello\r\n",
        ] {
            let mut s = Sniffer::new(tokio::io::empty(), Arc::new(Verdicts::default()));
            let wire = [&head[..], body].concat();
            let good = s.feed(&wire).unwrap_err();
            assert!(good >= head.len() && good < wire.len(), "{body:?}: {good}");
            assert!(!s.observe(b"more"));
        }
    }
}
