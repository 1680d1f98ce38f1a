//! One check of one backend: the IO of every check type.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use regex::{Regex, RegexBuilder};
use rustls::pki_types::ServerName;
use tandem_config::{Check, CheckKind, ProxyProtocol, Step};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::machine::Probe;

/// Most body bytes an http check reads.
const MAX_BODY: usize = 64 * 1024;
/// Most bytes of one send-expect answer (an SMTP EHLO answer is well under 1 KiB).
pub const MAX_ANSWER: usize = 16 * 1024;

/// A ready-to-run check for one pool: compiled regexes, TLS client configuration,
/// the PROXY header to send first.
pub struct Prober {
    check: Check,
    /// Each step with its regex, compiled in multi-line mode (`^` and `$` match at
    /// every line of a multi-line answer).
    steps: Vec<(Step, Regex)>,
    tls: Option<TlsConnector>,
    proxy_header: Option<Vec<u8>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

/// Where a check is, so that a timeout can say what it was waiting for (a fixed
/// text costs no allocation: most checks pass without reading it).
type Stage = std::sync::Mutex<Cow<'static, str>>;

fn enter(stage: &Stage, what: impl Into<Cow<'static, str>>) {
    *stage.lock().unwrap_or_else(|e| e.into_inner()) = what.into();
}

impl Prober {
    /// Prepares `check`; fails when a regex or the CA file cannot be used.
    pub fn new(check: &Check) -> Result<Prober, String> {
        let steps = check
            .steps
            .iter()
            .map(|step| {
                RegexBuilder::new(&step.expect)
                    .multi_line(true)
                    .build()
                    .map(|r| (step.clone(), r))
                    .map_err(|e| format!("expect regex: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let tls = if check.uses_tls() {
            let config = tandem_net::tls::client_config(check.verify, check.ca_file.as_deref())
                .map_err(|e| e.to_string())?;
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Prober {
            check: check.clone(),
            steps,
            tls,
            proxy_header: local_proxy_header(check.send_proxy),
        })
    }

    /// The check's settings.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Whether a check is a connect and nothing else (a tcp check without a PROXY
    /// header): such a check can end without waiting (see [`Prober::begin`]).
    fn connect_only(&self) -> bool {
        self.check.kind == CheckKind::Tcp && self.proxy_header.is_none()
    }

    /// Begins a check of `target` and ends it at once when that needs no waiting: a
    /// connect-only check whose connection is established (or refused) by the time
    /// `connect` returns, as on loopback and other local paths, is over after two
    /// system calls more than a socket (see [`begin_connect`]), with no reactor
    /// registration and no timer. Any other check is returned to be awaited.
    pub fn begin(&self, target: SocketAddr) -> Begun {
        if !self.connect_only() {
            return Begun::Waiting;
        }
        let started = Instant::now();
        match begin_connect(target) {
            Ok(Connecting::Done) => Begun::Done(Probe::pass(started.elapsed())),
            Ok(Connecting::Pending(socket)) => Begun::Connecting(socket, started),
            Err(e) => Begun::Done(Probe::fail(started.elapsed(), format!("connect: {e}"))),
        }
    }

    /// Waits for the end of a connect begun by [`Prober::begin`], bounded by what is
    /// left of the check's timeout.
    pub async fn finish(&self, socket: socket2::Socket, started: Instant) -> Probe {
        let left = self.check.timeout.saturating_sub(started.elapsed());
        let result = tokio::time::timeout(left, finish_connect(socket)).await;
        let result = result.map(|r| r.map(|()| None).map_err(|e| format!("connect: {e}")));
        self.outcome(started.elapsed(), result, "connecting")
    }

    /// Runs the check against `target`, bounded by the check's timeout.
    pub async fn probe(&self, target: SocketAddr) -> Probe {
        match self.begin(target) {
            Begun::Done(probe) => probe,
            Begun::Connecting(socket, started) => self.finish(socket, started).await,
            Begun::Waiting => self.probe_waiting(target).await,
        }
    }

    /// Runs a check that [`Prober::begin`] left to be awaited, bounded by the check's
    /// timeout.
    pub(crate) async fn probe_waiting(&self, target: SocketAddr) -> Probe {
        let started = Instant::now();
        let stage = Stage::new(Cow::Borrowed("connecting"));
        let result = tokio::time::timeout(self.check.timeout, self.run(target, &stage)).await;
        let stage = stage.lock().unwrap_or_else(|e| e.into_inner());
        self.outcome(started.elapsed(), result, &*stage)
    }

    /// The probe a check's `result` makes, `stage` what a timed-out one was doing.
    fn outcome(
        &self,
        latency: Duration,
        result: Result<Result<Option<SystemTime>, String>, tokio::time::error::Elapsed>,
        stage: impl std::fmt::Display,
    ) -> Probe {
        match result {
            Ok(Ok(not_after)) => Probe::pass(latency).with_certificate(not_after),
            Ok(Err(e)) => Probe::fail(latency, e),
            Err(_) => Probe::fail(
                latency,
                format!(
                    "timed out after {} {stage}",
                    fmt_duration(self.check.timeout)
                ),
            ),
        }
    }

    /// One check; a TLS check's result is the certificate's end of validity.
    async fn run(&self, target: SocketAddr, stage: &Stage) -> Result<Option<SystemTime>, String> {
        if self.check.kind == CheckKind::Script {
            enter(stage, "waiting for the script");
            return self.script(target).await.map(|()| None);
        }
        enter(stage, "connecting");
        // Connect-only checks are begun by `begin`; these speak after connecting.
        let mut tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if let Some(header) = &self.proxy_header {
            enter(stage, "sending the PROXY header");
            tcp.write_all(header)
                .await
                .map_err(|e| format!("send PROXY header: {e}"))?;
        }
        match self.check.kind {
            CheckKind::Tcp => {
                // With a PROXY header (a plain connect returned above): a clean end,
                // so a PROXY listener sees a complete header.
                let _ = tcp.shutdown().await;
                Ok(None)
            }
            CheckKind::Tls => {
                enter(stage, "in the TLS handshake");
                let tls = self.handshake(tcp, target).await?;
                certificate_not_after(&tls).map(Some)
            }
            CheckKind::Http => {
                enter(stage, "waiting for the HTTP response");
                self.http(tcp, target).await.map(|()| None)
            }
            CheckKind::Https => {
                enter(stage, "in the TLS handshake");
                let tls = self.handshake(tcp, target).await?;
                let not_after = certificate_not_after(&tls)?;
                enter(stage, "waiting for the HTTP response");
                self.http(tls, target).await.map(|()| Some(not_after))
            }
            CheckKind::SendExpect => self.send_expect(tcp, target, stage).await,
            CheckKind::Script => unreachable!("handled above"),
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        target: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let connector = self.tls.as_ref().expect("tls checks have a connector");
        let name = match &self.check.host {
            Some(h) => ServerName::try_from(h.clone()).map_err(|e| format!("host {h:?}: {e}"))?,
            None => ServerName::IpAddress(target.ip().into()),
        };
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake: {e}"))
    }

    async fn http<S>(&self, stream: S, target: SocketAddr) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http: {e}"))?;
        let driver = tokio::spawn(conn);
        let _abort = AbortOnDrop(driver);
        let host = self
            .check
            .host
            .clone()
            .unwrap_or_else(|| target.to_string());
        let request = Request::get(&self.check.path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONNECTION, "close")
            .header(
                hyper::header::USER_AGENT,
                concat!("tandem-health/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("http request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = response.status().as_u16();
        let status_ok = if self.check.expect_status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.check.expect_status.contains(&status)
        };
        if !status_ok {
            return Err(format!("http status {status}"));
        }
        let Some(needle) = &self.check.expect_body else {
            return Ok(());
        };
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(&data[..data.len().min(MAX_BODY - seen.len())]);
                        if contains(&seen, needle.as_bytes()) {
                            return Ok(());
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("http body: {e}")),
                None => break,
            }
        }
        Err(format!("body lacks {needle:?}"))
    }

    /// The send-expect conversation: every step in order; the steps after a
    /// `starttls` step run over TLS.
    async fn send_expect(
        &self,
        mut tcp: TcpStream,
        target: SocketAddr,
        stage: &Stage,
    ) -> Result<Option<SystemTime>, String> {
        let mut buf = Vec::new();
        let Some(starttls) = self.steps.iter().position(|(s, _)| s.starttls) else {
            converse(&mut tcp, &mut buf, &self.steps, 0, stage).await?;
            self.quit(&mut tcp).await;
            return Ok(None);
        };
        let (plain, secured) = self.steps.split_at(starttls + 1);
        converse(&mut tcp, &mut buf, plain, 0, stage).await?;
        if !buf.is_empty() {
            // What came with the STARTTLS answer would be read as if it had come
            // over TLS (the injection attack of RFC 3207 section 6): refuse it.
            return Err(format!(
                "{} bytes after the answer to STARTTLS, before the TLS handshake",
                buf.len()
            ));
        }
        enter(stage, "in the TLS handshake after STARTTLS");
        let mut tls = self
            .handshake(tcp, target)
            .await
            .map_err(|e| format!("after STARTTLS: {e}"))?;
        let not_after = certificate_not_after(&tls)?;
        converse(&mut tls, &mut buf, secured, starttls + 1, stage).await?;
        self.quit(&mut tls).await;
        Ok(Some(not_after))
    }

    /// Says goodbye when the check has one; politeness only, the verdict is in.
    async fn quit<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        if let Some(quit) = &self.check.quit {
            let _ = stream.write_all(quit.as_bytes()).await;
        }
        let _ = stream.shutdown().await;
    }

    async fn script(&self, target: SocketAddr) -> Result<(), String> {
        let command = self
            .check
            .command
            .as_ref()
            .expect("script checks have a command");
        let child = tokio::process::Command::new(command)
            .env("TANDEM_BACKEND_HOST", target.ip().to_string())
            .env("TANDEM_BACKEND_PORT", target.port().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", command.display()))?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("script: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let status = match out.status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        Err(if last.is_empty() {
            status
        } else {
            format!("{status}: {last}")
        })
    }
}

/// How a check began (see [`Prober::begin`]).
#[derive(Debug)]
pub enum Begun {
    /// Over already.
    Done(Probe),
    /// A connect-only check whose connection is under way: [`Prober::finish`] waits.
    Connecting(socket2::Socket, Instant),
    /// A check to run with [`Prober::probe`].
    Waiting,
}

/// Where a connect begun without waiting stands.
enum Connecting {
    Done,
    Pending(socket2::Socket),
}

/// Connects to `target` for a connect-only check (a tcp check without a PROXY header),
/// which is over once the backend's SYN-ACK arrives, and ends as HAProxy ends its own:
/// the last ACK of the handshake is delayed (`TCP_QUICKACK` off) and the socket closes
/// with `SO_LINGER` 0, so the reset goes out instead of that ACK. The backend's kernel
/// drops the half-open connection: its application never accepts it, and neither end
/// keeps a socket in `TIME_WAIT` (with an orderly close, the checker would keep one
/// per check for a minute). Closing sooner than the delayed ACK (200 ms) is the usual
/// case; should the ACK go out first, the reset ends the established connection all
/// the same.
///
/// A non-blocking `connect` says "in progress", but on a local path the kernel has run
/// the whole handshake by the time it returns; a second `connect` tells (0 once
/// established, the error once refused, `EALREADY` while under way), so such a check
/// takes socket, two options, two connects and close, and no event loop (HAProxy waits
/// for the socket's write readiness: an `epoll_ctl` and a turn of its loop).
fn begin_connect(target: SocketAddr) -> std::io::Result<Connecting> {
    use socket2::{Domain, Socket, Type};
    // Non-blocking and close-on-exec from the start: one system call.
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        None,
    )?;
    socket.set_tcp_quickack(false)?;
    socket.set_linger(Some(Duration::ZERO))?;
    let target = socket2::SockAddr::from(target);
    match socket.connect(&target) {
        Ok(()) => return Ok(Connecting::Done),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    match socket.connect(&target) {
        Ok(()) => Ok(Connecting::Done),
        Err(e) if e.raw_os_error() == Some(libc::EISCONN) => Ok(Connecting::Done),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EALREADY | libc::EINPROGRESS)) => {
            Ok(Connecting::Pending(socket))
        }
        Err(e) => Err(e),
    }
}

/// Waits until a connect under way ends: writable without a pending error is
/// established (what tokio's own connect checks, less the peer-name call).
async fn finish_connect(socket: socket2::Socket) -> std::io::Result<()> {
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// "1s", "250ms": how durations read in messages.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs `steps` (numbered from `first`) over `stream`; `buf` holds what was read
/// past the last answer.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    steps: &[(Step, Regex)],
    first: usize,
    stage: &Stage,
) -> Result<(), String> {
    for (i, (step, regex)) in steps.iter().enumerate() {
        let what = step_name(first + i, step);
        if let Some(send) = &step.send {
            enter(stage, format!("sending {}", command_name(send)));
            stream
                .write_all(send.as_bytes())
                .await
                .map_err(|e| format!("send {}: {e}", command_name(send)))?;
        }
        enter(stage, format!("waiting for {what}"));
        let answer = read_answer(stream, buf, step.send.is_some())
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        judge_answer(&answer, regex).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// "the banner" for a first step that sends nothing, else "the answer to EHLO".
fn step_name(index: usize, step: &Step) -> String {
    match &step.send {
        None if index == 0 => "the banner".into(),
        None => format!("answer {}", index + 1),
        Some(send) => format!("the answer to {}", command_name(send)),
    }
}

/// The first word of a command, for messages ("EHLO", "a1 STARTTLS" -> "STARTTLS").
fn command_name(send: &str) -> String {
    let words: Vec<&str> = send.split_whitespace().collect();
    let word = match words.as_slice() {
        // IMAP commands start with a tag: name the command after it.
        [tag, cmd, ..] if tag.chars().any(|c| c.is_ascii_digit()) => cmd,
        [cmd, ..] => cmd,
        [] => "(empty)",
    };
    word.chars().take(24).collect()
}

/// Reads one answer (see [`answer_end`]) into its own bytes, keeping what follows
/// it in `buf`.
async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    after_command: bool,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = answer_end(buf, after_command) {
            return Ok(buf.drain(..end).collect());
        }
        if buf.len() >= MAX_ANSWER {
            return Err(format!(
                "no end of the answer in its first {} KiB",
                MAX_ANSWER / 1024
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            if buf.is_empty() {
                return Err("closed without answering".into());
            }
            // Judged as it is: a server that closes says its last word.
            return Ok(std::mem::take(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the first complete answer in `received` ends (after its last line's LF),
/// or `None` while it is incomplete. An answer is lines up to the first final one:
/// SMTP continuation lines (`250-...`) are never final, and after a command neither
/// are IMAP untagged lines (`* ...`), which come before the tagged result.
pub fn answer_end(received: &[u8], after_command: bool) -> Option<usize> {
    let mut start = 0;
    while let Some(lf) = received[start..].iter().position(|&b| b == b'\n') {
        let line = &received[start..start + lf];
        start += lf + 1;
        let smtp_continued =
            line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && line[3] == b'-';
        let imap_untagged = after_command && line.starts_with(b"* ");
        if !smtp_continued && !imap_untagged {
            return Some(start);
        }
    }
    None
}

/// The verdict on one send-expect answer: its lines (each without its CR, invalid
/// UTF-8 replaced, joined by LF) must match `regex` (compiled multi-line, so `^220 `
/// matches the last line of a multi-line SMTP answer).
pub fn judge_answer(answer: &[u8], regex: &Regex) -> Result<(), String> {
    let answer = &answer[..answer.len().min(MAX_ANSWER)];
    let text = String::from_utf8_lossy(answer);
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let lines = match lines.as_slice() {
        [rest @ .., ""] => rest,
        all => all,
    };
    let joined = lines.join("\n");
    if regex.is_match(&joined) {
        return Ok(());
    }
    let last = lines.last().copied().unwrap_or("");
    let shown: String = last.chars().take(80).collect();
    let more = if lines.len() > 1 {
        format!(" (last of {} lines)", lines.len())
    } else {
        String::new()
    };
    Err(format!(
        "answer {shown:?}{more} does not match {:?}",
        regex.as_str()
    ))
}

/// The PROXY header a check sends first: LOCAL, so the backend takes the check's
/// own address (what HAProxy's check-send-proxy sends).
pub fn local_proxy_header(version: ProxyProtocol) -> Option<Vec<u8>> {
    match version {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(b"PROXY UNKNOWN\r\n".to_vec()),
        ProxyProtocol::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .ok(),
    }
}

/// The end of validity of the server's certificate; an expired one fails the check
/// (verified or not: clients would refuse it).
fn certificate_not_after<S>(
    tls: &tokio_rustls::client::TlsStream<S>,
) -> Result<SystemTime, String> {
    let (_, connection) = tls.get_ref();
    let der = connection
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the server sent no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot read the server's certificate: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    let now = SystemTime::now();
    if now > not_after {
        let ago = now.duration_since(not_after).unwrap_or_default();
        return Err(format!(
            "certificate expired {} ago (not after {})",
            fmt_days(ago),
            humantime::format_rfc3339_seconds(not_after)
        ));
    }
    Ok(not_after)
}

/// "3 days", "5 hours": how long ago or how soon, for certificate messages.
pub fn fmt_days(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    if days >= 1 {
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else {
        format!("{} hours", d.as_secs() / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(r: &str) -> Regex {
        RegexBuilder::new(r).multi_line(true).build().unwrap()
    }

    #[test]
    fn an_answer_ends_at_its_first_final_line() {
        assert_eq!(answer_end(b"220 ready\r\n", false), Some(11));
        assert_eq!(answer_end(b"220 ready", false), None);
        // SMTP continuation lines are read until the last line.
        let smtp = b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\nleft over";
        assert_eq!(answer_end(smtp, true), Some(smtp.len() - 9));
        assert_eq!(answer_end(b"250-mx\r\n250-STARTTLS\r\n", true), None);
        // IMAP untagged lines come before the tagged answer to a command ...
        let imap = b"* CAPABILITY IMAP4rev1\r\na1 OK done\r\n";
        assert_eq!(answer_end(imap, true), Some(imap.len()));
        assert_eq!(answer_end(b"* CAPABILITY IMAP4rev1\r\n", true), None);
        // ... but the greeting is one untagged line.
        assert_eq!(answer_end(b"* OK ready\r\n", false), Some(12));
    }

    #[test]
    fn the_whole_answer_is_judged_in_multi_line_mode() {
        let ehlo = b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n";
        assert!(judge_answer(ehlo, &regex("^250 ")).is_ok());
        assert!(judge_answer(ehlo, &regex("^250-STARTTLS$")).is_ok());
        let err = judge_answer(ehlo, &regex("^250-SMTPUTF8")).unwrap_err();
        assert_eq!(
            err,
            "answer \"250 8BITMIME\" (last of 3 lines) does not match \"^250-SMTPUTF8\""
        );
        assert!(judge_answer(b"\xff\xfe220 x\r\n", &regex("220 x$")).is_ok());
    }

    #[test]
    fn local_proxy_headers() {
        assert_eq!(local_proxy_header(ProxyProtocol::None), None);
        assert_eq!(
            local_proxy_header(ProxyProtocol::V1).unwrap(),
            b"PROXY UNKNOWN\r\n"
        );
        let v2 = local_proxy_header(ProxyProtocol::V2).unwrap();
        // Signature, version 2 + LOCAL, UNSPEC, no address bytes.
        assert_eq!(&v2[12..], &[0x20, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn commands_are_named_without_their_imap_tag() {
        assert_eq!(command_name("a1 STARTTLS\r\n"), "STARTTLS");
        assert_eq!(command_name("EHLO tandem.check\r\n"), "EHLO");
        assert_eq!(command_name("STLS\r\n"), "STLS");
    }
}
