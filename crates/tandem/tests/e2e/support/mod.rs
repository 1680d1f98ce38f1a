//! Shared pieces of the integration tests: real loopback backends and clients.

pub mod lab;
pub mod servers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tandem::daemon::Daemon;
use tandem_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The tandem binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// A child process that is killed if the test fails before it ends.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts tandem with `args`; stderr (logs) and stdout lines both arrive on `lines`.
    pub fn spawn(args: &[&str]) -> Running {
        Running::spawn_program(TANDEM, args)
    }

    /// Starts `program` with `args`, as [`Running::spawn`] does tandem.
    pub fn spawn_program(program: &str, args: &[&str]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_TEST_LOG").unwrap_or("info".into()),
            )
            // CI runs the tests as root; the refusal itself is tested in tests/cli.rs.
            .env("TANDEM_ALLOW_ROOT", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits for the `n`-th line containing `needle` and returns it.
    pub fn wait_for_nth(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.seen.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line {n} with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a line containing `needle`; returns its position among the lines read
    /// so far (to compare the order of two lines) and the line.
    pub fn wait_for_position(&mut self, needle: &str) -> (usize, String) {
        let line = self.wait_for(needle);
        let at = self.seen.iter().position(|l| l.contains(needle)).unwrap();
        (at, line)
    }

    /// Every line read so far plus what is pending.
    pub fn drain_lines(&mut self) -> String {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "tandem did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as tandem.toml in `dir`.
pub fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The address in a log line's `listen=ADDR` (text) or `"listen":"ADDR"` (json).
pub fn listen_addr(line: &str) -> SocketAddr {
    let at = line.find("listen").expect("listen field") + "listen".len();
    let rest: String = line[at..]
        .trim_start_matches(['=', '"', ':'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    rest.parse()
        .unwrap_or_else(|_| panic!("no address in {line}"))
}

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

/// `tandem ctl --socket SOCKET ARGS`: exit code, stdout, stderr.
pub fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TANDEM)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tandem ctl --json ARGS`, which must succeed, as JSON.
pub fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl(socket, &all);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Writes a new self-signed certificate for `name` and its key in `dir` (NAME.pem,
/// NAME.key, replacing earlier ones); returns their paths.
pub fn self_signed(dir: &Path, name: &str) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// A TLS client connection to `to` asking for `sni`, trusting only the certificates
/// in the PEM file `ca`: the handshake fails unless tandem served one of them.
pub async fn tls_connect(
    to: SocketAddr,
    sni: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(to).await?, sni, ca).await
}

/// As [`tls_connect`], over a connection already open (after a PROXY header...).
pub async fn tls_over(
    tcp: TcpStream,
    sni: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
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
