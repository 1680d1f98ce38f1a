//! The admin HTTP port: `GET /metrics` (OpenMetrics), `GET /` (the live status page),
//! `GET /status.json` (the snapshot), `GET /history.json` (the last hour's rates),
//! `GET /events.json?since=N` (the timeline), and, only where [`AdminAccess`] allows
//! it, `POST /action` (drain or enable a backend, as `tandem ctl backend` does).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::events::Event;
use crate::history::HistoryView;
use crate::protocol::{self, BackendAction, Snapshot};

/// Where the state comes from and where actions go: the daemon implements it.
pub trait StateSource: Send + Sync + 'static {
    /// The state now.
    fn snapshot(&self) -> Snapshot;
    /// The last hour's rates.
    fn history(&self) -> HistoryView {
        HistoryView::default()
    }
    /// Events changed after event `since_seq` or after `since_ms`, oldest first.
    fn events(&self, _since_seq: u64, _since_ms: u64) -> Vec<Event> {
        Vec::new()
    }
    /// Carries out a control request as the control socket would (same effect, same
    /// log line) and answers it.
    fn act(&self, _request: protocol::Request) -> protocol::Response {
        protocol::Response::error("this tandem takes no actions from the admin port")
    }
}

/// Who may act from the status page: nobody unless `write`, and then only clients
/// whose address is in one of the `allow` prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// `global.admin_write`.
    pub write: bool,
    /// `global.admin_allow`: (network, prefix length).
    pub allow: Vec<(IpAddr, u8)>,
}

impl AdminAccess {
    /// Whether a client at `ip` may act.
    pub fn may_write(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.write
            && self
                .allow
                .iter()
                .any(|&(net, len)| in_prefix(ip, canonical(net), len))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Serves the admin port on `listener` until `stop`, read-only.
pub async fn serve(listener: TcpListener, source: Arc<dyn StateSource>, stop: CancellationToken) {
    serve_with(listener, source, AdminAccess::default(), stop).await;
}

/// Serves the admin port on `listener` until `stop`, taking actions as `access` allows;
/// returns once every connection it served has ended.
pub async fn serve_with(
    listener: TcpListener,
    source: Arc<dyn StateSource>,
    access: AdminAccess,
    stop: CancellationToken,
) {
    let access = Arc::new(access);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "admin accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        let access = access.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let source = source.clone();
                let access = access.clone();
                async move { Ok::<_, Infallible>(route(req, peer, source.as_ref(), &access).await) }
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

/// `since=N&since_ms=M` of `/events.json`.
fn since(query: Option<&str>) -> (u64, u64) {
    let (mut seq, mut ms) = (0, 0);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("since", v)) => seq = v.parse().unwrap_or(0),
            Some(("since_ms", v)) => ms = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (seq, ms)
}

fn json(body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string(body).unwrap_or_default(),
    )
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    source: &dyn StateSource,
    access: &AdminAccess,
) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == "/action" {
        return action(req, peer, source, access).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET (and POST /action where admin_write allows it)\n".into(),
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
            crate::page::render(
                &source.snapshot(),
                &source.history(),
                access.may_write(peer.ip()),
            ),
        ),
        "/status.json" => json(&source.snapshot()),
        "/history.json" => json(&source.history()),
        "/events.json" => {
            let (seq, ms) = since(req.uri().query());
            json(&source.events(seq, ms))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /metrics, /status.json, /history.json or /events.json\n".into(),
        ),
    }
}

#[derive(Deserialize)]
struct ActionBody {
    action: BackendAction,
    pool: String,
    address: String,
}

fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_string(&protocol::Response::error(why)).unwrap_or_default(),
    )
}

/// `POST /action`: only from an allowed address, only from the page itself (a
/// request another site makes a browser send has no `x-tandem-action` header without
/// a CORS preflight, which this port never grants, and says so in `sec-fetch-site`).
async fn action(
    req: Request<Incoming>,
    peer: SocketAddr,
    source: &dyn StateSource,
    access: &AdminAccess,
) -> Response<Full<Bytes>> {
    if !access.may_write(peer.ip()) {
        let why = if access.write {
            format!("{} is not in global.admin_allow", peer.ip())
        } else {
            "actions are off: set global.admin_write = true (and admin_allow)".to_string()
        };
        return refuse(StatusCode::FORBIDDEN, &why);
    }
    let headers = req.headers();
    if headers.get("x-tandem-action").is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            "an action needs the x-tandem-action header",
        );
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "actions come only from the status page itself",
        );
    }
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "the action body could not be read"),
    };
    let body: ActionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("the action is not {{action, pool, address}}: {e}"),
            );
        }
    };
    info!(client = %peer, action = ?body.action, pool = %body.pool, backend = %body.address, "action from the status page");
    let answer = source.act(protocol::Request::Backend {
        action: body.action,
        pool: body.pool,
        address: body.address,
    });
    let status = if answer.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    reply(
        status,
        "application/json",
        serde_json::to_string(&answer).unwrap_or_default(),
    )
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header(
            "content-security-policy",
            format!(
                "default-src 'none'; style-src 'unsafe-inline'; script-src {}; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
                crate::page::script_hash()
            ),
        )
        .body(Full::new(Bytes::from(body)))
        .expect("static headers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_needs_the_switch_and_an_allowed_address() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let off = AdminAccess {
            write: false,
            allow: vec![(lo, 8)],
        };
        assert!(!off.may_write(lo));
        let on = AdminAccess {
            write: true,
            allow: vec![(lo, 8), ("2001:db8::".parse().unwrap(), 32)],
        };
        assert!(on.may_write("127.1.2.3".parse().unwrap()));
        assert!(on.may_write("::ffff:127.0.0.1".parse().unwrap()));
        assert!(on.may_write("2001:db8:1::5".parse().unwrap()));
        assert!(!on.may_write("10.0.0.1".parse().unwrap()));
        assert!(!on.may_write("2001:db9::1".parse().unwrap()));
        let everyone = AdminAccess {
            write: true,
            allow: vec![("0.0.0.0".parse().unwrap(), 0)],
        };
        assert!(everyone.may_write("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn since_reads_the_query() {
        assert_eq!(since(Some("since=5&since_ms=77")), (5, 77));
        assert_eq!(since(Some("since=x")), (0, 0));
        assert_eq!(since(None), (0, 0));
    }
}
