//! What the end-to-end tests share: the tandem process ([`process`]), an in-process
//! daemon, backends ([`backends`], [`nginx`]), TLS ([`tls`]), clients, PROXY headers
//! and the namespace labs ([`lab`], [`servers`]).

pub mod backends;
pub mod cdp;
pub mod lab;
pub mod nginx;
pub mod process;
pub mod servers;
pub mod tls;

pub use backends::*;
pub use process::*;
pub use tls::*;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tandem::daemon::Daemon;
use tandem_config::Config;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

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

/// A TOML list of backends at `addrs`.
pub fn backends(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!("[{}]", items.join(", "))
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

/// Reads a PROXY header (v1 or v2) from the start of `s`, byte by byte, so nothing
/// after it is consumed; returns its bytes.
pub async fn read_proxy_header(s: &mut TcpStream) -> Vec<u8> {
    use ppp::PartialResult;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("a PROXY header within 5 s")
            .unwrap();
        assert_eq!(n, 1, "ended within the PROXY header: {buf:?}");
        buf.push(byte[0]);
        // ppp takes some cut v1 lines for wrong ones: read a v1 line whole first.
        if buf.starts_with(b"PROXY") && !buf.ends_with(b"\n") {
            continue;
        }
        let parsed = ppp::HeaderResult::parse(&buf);
        if parsed.is_complete() {
            match parsed {
                ppp::HeaderResult::V1(Ok(_)) | ppp::HeaderResult::V2(Ok(_)) => return buf,
                other => panic!("not a PROXY header: {other:?}"),
            }
        }
    }
}

/// The (source, destination) a PROXY header names.
pub fn proxy_addresses(header: &[u8]) -> (SocketAddr, SocketAddr) {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => (
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            ),
            ppp::v1::Addresses::Tcp6(a) => (
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            ),
            other => panic!("{other:?}"),
        },
        ppp::HeaderResult::V2(Ok(h)) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => (
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            ),
            ppp::v2::Addresses::IPv6(a) => (
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// Waits (on the test's runtime) until `done` holds, or panics after `within`; returns
/// the time it took.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}
