//! Backends on loopback ports for the tests: an accept loop for hand-written ones, name
//! and hashing servers, and the hyper backends (plain and TLS) of the HTTP tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Serves a new loopback port: `handle` runs on a task of its own for each connection,
/// with the client's address. The port stays open until the test's runtime ends.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    serve_on(l, handle);
    a
}

/// As [`serve`], on listener `l`; aborting the handle closes the port (a killed
/// backend).
pub fn serve_on<F, Fut>(l: TcpListener, handle: F) -> JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, peer)) => drop(tokio::spawn(handle(s, peer))),
                // Out of descriptors, say: try again a little later.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

/// A free loopback port (bound and released: nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address on which nothing listens (connections are refused).
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A backend that writes its name and closes; `hold` keeps the connection open until
/// the client closes it.
pub async fn name_server(name: &str, hold: bool) -> SocketAddr {
    let name = format!("{name}\n");
    serve(move |mut s, _| {
        let name = name.clone();
        async move {
            let _ = s.write_all(name.as_bytes()).await;
            if hold {
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }
    })
    .await
}

/// What the hashing backend saw on one connection: SHA-256 of bytes received and sent.
pub type Hashes = Arc<Mutex<HashMap<u64, ([u8; 32], [u8; 32])>>>;

/// A backend that reads an 8-byte id, then at once receives `size` bytes and sends
/// `size` seeded random bytes, recording both SHA-256 digests under the id.
pub async fn hashing_server(size: usize) -> (SocketAddr, Hashes) {
    let hashes: Hashes = Arc::default();
    let record = hashes.clone();
    let a = serve(move |s, _| {
        let record = record.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            let id = r.read_u64().await.unwrap();
            let receive = async move {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < size {
                    let n = r.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client data ended early at {got}");
                    h.update(&buf[..n]);
                    got += n;
                }
                <[u8; 32]>::from(h.finalize())
            };
            let send = async move {
                let data = random_bytes(id ^ 0x5eed, size);
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
                <[u8; 32]>::from(Sha256::digest(&data))
            };
            let (rx, tx) = tokio::join!(receive, send);
            record.lock().unwrap().insert(id, (rx, tx));
        }
    })
    .await;
    (a, hashes)
}

/// `len` bytes from a generator seeded with `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A test backend's read of a request head, byte by byte (nothing after it is
/// consumed); `None` when the connection ends first.
pub async fn read_request_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// A response of a hyper backend.
pub type Reply = hyper::Response<BoxBody<Bytes, Infallible>>;

/// A response with `text` as its body (Content-Length).
pub fn text(text: impl Into<Bytes>) -> Reply {
    hyper::Response::new(Full::new(text.into()).boxed())
}

/// An HTTP/1.1 backend (hyper) on a new loopback port, over TLS when `tls` is given:
/// `answer` makes the response to each request, told the client's address (tandem's
/// backend connection).
pub async fn hyper_backend<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, answer: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    serve(move |s, peer| {
        let (tls, answer) = (tls.clone(), answer.clone());
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let reply = answer(req, peer);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let http1 = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                None => {
                    http1
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await
                }
                Some(acceptor) => {
                    let Ok(s) = acceptor.accept(s).await else {
                        return;
                    };
                    http1
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await
                }
            };
        }
    })
    .await
}

/// The hyper backend for faults and large bodies: /slow?ms=N, /upload (answers the
/// byte count), /download?mib=N (streams N MiB), /chunked?n=N (N pieces, no length),
/// /peer (the address of tandem's connection); anything else answers "rust".
pub async fn rust_backend() -> SocketAddr {
    hyper_backend(
        None,
        |req: hyper::Request<hyper::body::Incoming>, peer| async move {
            let q = req.uri().query().unwrap_or("").to_string();
            let num = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match req.uri().path() {
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(num("ms="))).await;
                    text("slow\n")
                }
                "/upload" => {
                    let mut body = req.into_body();
                    let mut total = 0u64;
                    while let Some(Ok(f)) = body.frame().await {
                        if let Some(d) = f.data_ref() {
                            total += d.len() as u64;
                        }
                    }
                    text(format!("{total}\n"))
                }
                "/download" => {
                    let chunks = num("mib=") * 16;
                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
                        Ok::<_, Infallible>(hyper::body::Frame::data(chunk.clone()))
                    }));
                    hyper::Response::builder()
                        .header("content-length", (chunks * 64 * 1024).to_string())
                        .body(StreamBody::new(stream).boxed())
                        .unwrap()
                }
                "/chunked" => {
                    // No length: hyper sends it chunked, one chunk per piece.
                    let pieces = (0..num("n=")).map(|i| {
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
                            "piece {i}\n"
                        ))))
                    });
                    hyper::Response::new(
                        StreamBody::new(futures_util::stream::iter(pieces)).boxed(),
                    )
                }
                // Which of tandem's backend connections carried the request.
                "/peer" => text(format!("{peer}\n")),
                _ => text("rust\n"),
            }
        },
    )
    .await
}

/// An HTTPS backend (hyper, rustls, self-signed for backend.test) answering
/// "tls-backend".
pub async fn tls_backend() -> SocketAddr {
    let acceptor = super::tls::acceptor("backend.test");
    hyper_backend(Some(acceptor), |_, _| async { text("tls-backend\n") }).await
}
