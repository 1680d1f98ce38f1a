//! The admin HTTP port: `GET /metrics` (OpenMetrics), `GET /` (status page),
//! `GET /status.json` (the snapshot). Read-only: it changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::protocol::Snapshot;

/// Where snapshots come from: the daemon implements it.
pub trait StateSource: Send + Sync + 'static {
    /// The state now.
    fn snapshot(&self) -> Snapshot;
}

/// Serves the admin port on `listener` until `stop`.
pub async fn serve(listener: TcpListener, source: Arc<dyn StateSource>, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!(error = %e, "admin accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(route(&req, source.as_ref())) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn route<B>(req: &Request<B>, source: &dyn StateSource) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::encode(&source.snapshot()),
        ),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::page::render(&source.snapshot()),
        ),
        "/status.json" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&source.snapshot()).unwrap_or_default(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /metrics or /status.json\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("static headers")
}
