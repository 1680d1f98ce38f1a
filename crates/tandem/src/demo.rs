//! `tandem demo`: built-in web servers on loopback and a balancer in front of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tandem_config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, Options};

/// The demo's configuration template.
pub const TEMPLATE: &str = include_str!("demo.toml");

/// A running demo: backends and the balancer.
#[derive(Debug)]
pub struct Demo {
    /// The balancer.
    pub daemon: Daemon,
    /// Names and addresses of the built-in backends.
    pub backends: Vec<(String, SocketAddr)>,
    stop_backends: CancellationToken,
    flap: Flap,
}

/// When demo-2 plays failing its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flap {
    /// From this long after start...
    pub after: Duration,
    /// ...for this long...
    pub lasting: Duration,
    /// ...and again every this long.
    pub every: Duration,
}

impl Default for Flap {
    fn default() -> Flap {
        Flap {
            after: Duration::from_secs(20),
            lasting: Duration::from_secs(15),
            every: Duration::from_secs(60),
        }
    }
}

impl Flap {
    fn failing(&self, since_start: Duration) -> bool {
        since_start >= self.after
            && (since_start - self.after).as_millis() % self.every.as_millis().max(1)
                < self.lasting.as_millis()
    }
}

impl Demo {
    /// Starts three backends on 127.0.0.1 and a balancer on `listen` (round-robin) and on
    /// the next port (sticky). demo-2 fails its health check as `flap` says.
    pub async fn start(listen: SocketAddr, flap: Flap) -> anyhow::Result<Demo> {
        let stop_backends = CancellationToken::new();
        let mut backends = Vec::new();
        for n in 1..=3 {
            let name = format!("demo-{n}");
            let flaps = (n == 2).then_some(flap);
            let address = start_backend(name.clone(), stop_backends.clone(), flaps).await?;
            backends.push((name, address));
        }
        let next_port = |n: u16| {
            SocketAddr::new(
                listen.ip(),
                if listen.port() == 0 {
                    0
                } else {
                    listen.port() + n
                },
            )
        };
        let sticky = next_port(1);
        let admin = next_port(2);
        let socket = std::env::temp_dir().join(format!("tandem-demo-{}.sock", std::process::id()));
        let text = TEMPLATE
            .replace("{listen}", &listen.to_string())
            .replace("{listen_sticky}", &sticky.to_string())
            .replace("{control_socket}", &socket.display().to_string())
            .replace("{admin}", &admin.to_string())
            .replace("{backend1}", &backends[0].1.to_string())
            .replace("{backend2}", &backends[1].1.to_string())
            .replace("{backend3}", &backends[2].1.to_string());
        let config =
            Config::parse(&text, "<demo>", Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let options = Options {
            config_path: None,
            control_socket: true,
        };
        let daemon = Daemon::build(config, options)
            .await
            .context("starting the demo balancer")?
            .start();
        Ok(Demo {
            daemon,
            backends,
            stop_backends,
            flap,
        })
    }

    /// What to try, for the terminal.
    pub fn instructions(&self) -> String {
        let web = self.daemon.service("web").expect("web service").bound[0];
        let sticky = self
            .daemon
            .service("web-sticky")
            .expect("sticky service")
            .bound[0];
        let mut text = String::from("tandem demo is running.\n\n");
        text += &format!(
            "  balancer  http://{web}/  round-robin over 3 backends (demo-3 has weight 2)\n"
        );
        text += &format!(
            "  sticky    http://{sticky}/  each client address stays on one backend for 1m\n"
        );
        if let Some(admin) = self.daemon.admin_addr() {
            text += &format!("  status    http://{admin}/  (metrics: http://{admin}/metrics)\n");
        }
        for (name, address) in &self.backends {
            text += &format!("  backend   {name} on {address}\n");
        }
        text += "\nTry it from another terminal:\n\n";
        text += &format!("  for i in 1 2 3 4; do curl -s http://{web}/; done     # names change\n");
        text += &format!("  for i in 1 2 3; do curl -s http://{sticky}/; done     # one name\n");
        let socket = self
            .daemon
            .config()
            .global
            .control_socket
            .display()
            .to_string();
        text += &format!("  tandem ctl --socket {socket} pools\n");
        text += &format!(
            "  tandem ctl --socket {socket} backend disable web {}\n",
            self.backends[0].1
        );
        text += &format!(
            "\nHealth checks: every backend answers GET /health. demo-2 fails it {}s after start, \
for {}s, then every {}s: the log says when it goes down and comes back, and curl \
never meets it meanwhile.\n",
            self.flap.after.as_secs(),
            self.flap.lasting.as_secs(),
            self.flap.every.as_secs()
        );
        text += "\nEach connection is logged when it ends. Press Ctrl-C to stop.\n";
        text
    }

    /// Drains the balancer, then stops the backends.
    pub async fn stop(self) {
        self.daemon
            .shutdown(std::time::Duration::from_secs(2))
            .await;
        self.stop_backends.cancel();
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers every request with its name, and
/// GET /health with "ok" (or 503 while it plays failing, from `flap` on).
async fn start_backend(
    name: String,
    stop: CancellationToken,
    flap: Option<Flap>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    let address = listener.local_addr()?;
    let body = Bytes::from(format!("Hello from {name} at {address}\n"));
    let started = Instant::now();
    let failing = move || flap.is_some_and(|f| f.failing(started.elapsed()));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let body = body.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let failing = failing;
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, body) = match req.uri().path() {
                        "/health" if failing() => (503, Bytes::from_static(b"failing (demo)\n")),
                        "/health" => (200, Bytes::from_static(b"ok\n")),
                        _ => (200, body.clone()),
                    };
                    let name = name.clone();
                    async move {
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "text/plain")
                            .header("x-backend", name)
                            .body(Full::new(body))
                            .expect("static response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}
