//! One check of one backend: the IO of every check type.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use regex::Regex;
use rustls::pki_types::ServerName;
use tandem_config::{Check, CheckKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::machine::Probe;

/// Most body bytes an http check reads.
const MAX_BODY: usize = 64 * 1024;
/// Most bytes a send-expect check reads looking for the first line.
pub const MAX_LINE: usize = 4096;

/// A ready-to-run check for one pool: parsed regex, TLS client configuration.
pub struct Prober {
    check: Check,
    expect: Option<Regex>,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Prepares `check`; fails when its regex or CA file cannot be used.
    pub fn new(check: &Check) -> Result<Prober, String> {
        let expect = match &check.expect {
            Some(e) => Some(Regex::new(e).map_err(|e| format!("expect regex: {e}"))?),
            None => None,
        };
        let tls = match check.kind {
            CheckKind::Tls | CheckKind::Https => Some(TlsConnector::from(Arc::new(
                tandem_proxy::tls::client_config(check.verify, check.ca_file.as_deref())?,
            ))),
            _ => None,
        };
        Ok(Prober {
            check: check.clone(),
            expect,
            tls,
        })
    }

    /// The check's settings.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Runs the check against `target`, bounded by the check's timeout.
    pub async fn probe(&self, target: SocketAddr) -> Probe {
        let started = Instant::now();
        let result = tokio::time::timeout(self.check.timeout, self.run(target)).await;
        let latency = started.elapsed();
        match result {
            Ok(Ok(())) => Probe::pass(latency),
            Ok(Err(e)) => Probe::fail(latency, e),
            Err(_) => Probe::fail(
                latency,
                format!("timed out after {}", fmt_duration(self.check.timeout)),
            ),
        }
    }

    async fn run(&self, target: SocketAddr) -> Result<(), String> {
        if self.check.kind == CheckKind::Script {
            return self.script(target).await;
        }
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match self.check.kind {
            CheckKind::Tcp => Ok(()),
            CheckKind::Tls => self.handshake(tcp, target).await.map(drop),
            CheckKind::Http => self.http(tcp, target).await,
            CheckKind::Https => {
                let tls = self.handshake(tcp, target).await?;
                self.http(tls, target).await
            }
            CheckKind::SendExpect => self.send_expect(tcp).await,
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

    async fn send_expect(&self, mut tcp: TcpStream) -> Result<(), String> {
        if let Some(send) = &self.check.send {
            tcp.write_all(send.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = tcp.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                if line.is_empty() {
                    return Err("closed without answering".into());
                }
                break;
            }
            line.extend_from_slice(&buf[..n]);
            if let Some(end) = line.iter().position(|&b| b == b'\n') {
                line.truncate(end);
                break;
            }
            if line.len() >= MAX_LINE {
                line.truncate(MAX_LINE);
                break;
            }
        }
        let regex = self
            .expect
            .as_ref()
            .expect("send-expect checks have a regex");
        judge_answer(&line, regex)?;
        if let Some(quit) = &self.check.quit {
            // Politeness only: the verdict is already in.
            let _ = tcp.write_all(quit.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
        Ok(())
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

/// The verdict on a send-expect answer: its first line (up to [`MAX_LINE`] bytes, a
/// trailing CR removed, invalid UTF-8 replaced) must match `regex`.
pub fn judge_answer(received: &[u8], regex: &Regex) -> Result<(), String> {
    let line = &received[..received.len().min(MAX_LINE)];
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        None => line,
    };
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if regex.is_match(text) {
        return Ok(());
    }
    let shown: String = text.chars().take(80).collect();
    Err(format!(
        "answer {shown:?} does not match {:?}",
        regex.as_str()
    ))
}
