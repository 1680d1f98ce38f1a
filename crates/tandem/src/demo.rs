//! `tandem demo`: built-in web servers on loopback and a balancer in front of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

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

use crate::daemon::Daemon;

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
}

impl Demo {
    /// Starts three backends on 127.0.0.1 and a balancer on `listen` (round-robin) and on
    /// the next port (sticky).
    pub async fn start(listen: SocketAddr) -> anyhow::Result<Demo> {
        let stop_backends = CancellationToken::new();
        let mut backends = Vec::new();
        for n in 1..=3 {
            let name = format!("demo-{n}");
            let address = start_backend(name.clone(), stop_backends.clone()).await?;
            backends.push((name, address));
        }
        let sticky = SocketAddr::new(
            listen.ip(),
            if listen.port() == 0 {
                0
            } else {
                listen.port() + 1
            },
        );
        let socket = std::env::temp_dir().join(format!("tandem-demo-{}.sock", std::process::id()));
        let text = TEMPLATE
            .replace("{listen}", &listen.to_string())
            .replace("{listen_sticky}", &sticky.to_string())
            .replace("{control_socket}", &socket.display().to_string())
            .replace("{backend1}", &backends[0].1.to_string())
            .replace("{backend2}", &backends[1].1.to_string())
            .replace("{backend3}", &backends[2].1.to_string());
        let config =
            Config::parse(&text, "<demo>", Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let daemon = Daemon::start(config)
            .await
            .context("starting the demo balancer")?;
        Ok(Demo {
            daemon,
            backends,
            stop_backends,
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
        for (name, address) in &self.backends {
            text += &format!("  backend   {name} on {address}\n");
        }
        text += "\nTry it from another terminal:\n\n";
        text += &format!("  for i in 1 2 3 4; do curl -s http://{web}/; done     # names change\n");
        text += &format!("  for i in 1 2 3; do curl -s http://{sticky}/; done     # one name\n");
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

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers every request with its name.
async fn start_backend(name: String, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    let address = listener.local_addr()?;
    let body = Bytes::from(format!("Hello from {name} at {address}\n"));
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
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    let name = name.clone();
                    async move {
                        let response = Response::builder()
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
