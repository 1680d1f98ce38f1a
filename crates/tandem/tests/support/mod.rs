//! Shared pieces of the integration tests: real loopback backends and clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tandem::daemon::Daemon;
use tandem_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Raises the soft open-files limit to the hard one: relay tests hold many sockets.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// Parses a test configuration (must be valid).
pub fn config(text: &str) -> Config {
    Config::parse(text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Starts a daemon from `text`.
pub async fn start(text: &str) -> Daemon {
    raise_fd_limit();
    Daemon::start(config(text)).await.expect("daemon starts")
}

/// The first bound address of `service`.
pub fn addr_of(daemon: &Daemon, service: &str) -> SocketAddr {
    daemon.service(service).expect("service").bound[0]
}

/// A TOML list of backends with the given weights.
pub fn backends_toml(addrs: &[SocketAddr], weights: &[u32]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .zip(weights)
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!("[{}]", items.join(", "))
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let name = format!("{name}\n");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                if hold {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    a
}

/// Connects to `to` from source address `from` (any 127.x.y.z works on Linux).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads the backend's name line on `stream` (the first line).
pub async fn read_name(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == b'\n' => break,
            Ok(Ok(1)) => out.push(byte[0]),
            other => panic!(
                "no name from backend: {other:?} after {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8(out).unwrap()
}

/// Connects to `to` (from `from` if given) and returns the name the backend sent.
pub async fn name_via(to: SocketAddr, from: Option<IpAddr>) -> String {
    let mut s = match from {
        Some(ip) => connect_from(ip, to).await,
        None => TcpStream::connect(to).await.unwrap(),
    };
    read_name(&mut s).await
}

/// Counts of each name over `n` sequential connections.
pub async fn tally(to: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(name_via(to, None).await).or_default() += 1;
    }
    counts
}

/// What the hashing backend saw on one connection: SHA-256 of bytes received and sent.
pub type Hashes = Arc<Mutex<HashMap<u64, ([u8; 32], [u8; 32])>>>;

/// A backend that reads an 8-byte id, then at once receives `size` bytes and sends
/// `size` seeded random bytes, recording both SHA-256 digests under the id.
pub async fn hashing_server(size: usize) -> (SocketAddr, Hashes) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let hashes: Hashes = Arc::default();
    let record = hashes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
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
            });
        }
    });
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
