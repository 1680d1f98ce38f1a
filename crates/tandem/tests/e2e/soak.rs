//! A soak under faults: TCP and HTTP clients keep tandem busy while its backends are
//! killed and restarted, made slow, made to reset connections and made to accept and
//! hang; the configuration is reloaded every few seconds; tandem's open-files limit is
//! low enough that a burst of connections makes accept(2) fail with EMFILE.
//!
//! At the end: every request either succeeded with every byte right or failed cleanly
//! (refused, reset, closed early, a 5xx) within its timeout; tandem's RSS and open
//! descriptors are back to their level after warm-up; and it still serves.
//!
//! `TANDEM_SOAK_SECS` sets the faulty phase (default 20 s, the CI's short mode; run it
//! with 180 or more for the long one):
//! `TANDEM_SOAK_SECS=180 cargo nextest run -p tandem --test e2e -E 'test(/^soak::/)' --no-capture`.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use support::{Running, TANDEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a fault backend does with the next connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Normal = 0,
    Slow = 1,
    Reset = 2,
    Hang = 3,
    Dead = 4,
}

const MODES: [Mode; 5] = [
    Mode::Normal,
    Mode::Slow,
    Mode::Reset,
    Mode::Hang,
    Mode::Dead,
];

/// A backend that echoes TCP bytes, or answers `GET /blob/SEED/LEN` with that pattern,
/// in the mode set on it. `Dead` closes its listener (connections are refused) and
/// drops every connection it holds, as a killed server does.
struct FaultBackend {
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl FaultBackend {
    async fn start() -> Arc<FaultBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Arc::new(FaultBackend {
            address: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(Mode::Normal as u8)),
            server: std::sync::Mutex::new(None),
        });
        b.serve(listener);
        b
    }

    fn serve(&self, listener: TcpListener) {
        let mode = self.mode.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((s, _)) = accepted else { continue };
                        let m = mode.load(Relaxed);
                        connections.spawn(handle(s, m));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    async fn set(&self, mode: Mode) {
        let was = self.mode.swap(mode as u8, Relaxed);
        if mode == Mode::Dead && was != Mode::Dead as u8 {
            // Killed: the listener and every connection go (the JoinSet drops them).
            let task = self.server.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        } else if mode != Mode::Dead && was == Mode::Dead as u8 {
            // Restarted on the same port.
            let listener = loop {
                match TcpListener::bind(self.address).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            self.serve(listener);
        }
    }
}

async fn handle(mut s: TcpStream, mode: u8) {
    match mode {
        m if m == Mode::Reset as u8 => {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
        m if m == Mode::Hang as u8 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {
            let slow = mode == Mode::Slow as u8;
            let mut first = [0u8; 4];
            if s.read_exact(&mut first).await.is_err() {
                return;
            }
            if &first == b"GET " {
                let mut head = first.to_vec();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let mut parts = path.trim_start_matches("/blob/").split('/');
                let seed: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1);
                let len: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let body = support::random_bytes(seed, len);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
                for chunk in body.chunks(16 * 1024) {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            } else {
                // Echo until the client half-closes, then close.
                let _ = s.write_all(&first).await;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if slow {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            }
        }
    }
}

/// How the requests ended.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    clean_errors: AtomicU64,
    corrupt: AtomicU64,
    hung: AtomicU64,
    bytes: AtomicU64,
}

/// The longest a client waits for one request: tandem's own timeouts (connect 500 ms
/// with retries, idle 2 s, HTTP response 2 s) must end every request well before.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

enum Outcome {
    Ok(u64),
    Clean,
    Corrupt(String),
}

/// One TCP exchange: `len` pattern bytes up, half-close, the same bytes back.
async fn tcp_request(to: SocketAddr, seed: u64, len: usize) -> Outcome {
    let Ok(mut s) = TcpStream::connect(to).await else {
        return Outcome::Clean;
    };
    let data = support::random_bytes(seed, len);
    let (mut r, mut w) = s.split();
    let send = async {
        let _ = w.write_all(&data).await;
        let _ = w.shutdown().await;
    };
    let mut back = Vec::with_capacity(len);
    let receive = r.read_to_end(&mut back);
    let (_, received) = tokio::join!(send, receive);
    if back.len() > len || back[..] != data[..back.len()] {
        return Outcome::Corrupt(format!(
            "tcp: {} bytes back, differing from what was sent",
            back.len()
        ));
    }
    match received {
        Ok(_) if back.len() == len => Outcome::Ok(len as u64),
        // Cut short (a reset, a killed or hanging backend): a clean error.
        _ => Outcome::Clean,
    }
}

/// One HTTP request for `len` pattern bytes.
async fn http_request(to: SocketAddr, seed: u64, len: usize) -> Outcome {
    let Ok(mut s) = TcpStream::connect(to).await else {
        return Outcome::Clean;
    };
    let request =
        format!("GET /blob/{seed}/{len} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return Outcome::Clean;
    }
    let mut response = Vec::new();
    let complete = s.read_to_end(&mut response).await.is_ok();
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Outcome::Clean;
    };
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = &response[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("");
    match status {
        "200" => {
            let expected = support::random_bytes(seed, len);
            let declared = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            });
            if declared.as_deref() != Some(len.to_string().as_str()) {
                return Outcome::Corrupt(format!("http: content-length {declared:?} for {len}"));
            }
            if body.len() > len || body[..] != expected[..body.len()] {
                return Outcome::Corrupt(format!("http: body of {} bytes differs", body.len()));
            }
            if complete && body.len() == len {
                Outcome::Ok(len as u64)
            } else {
                Outcome::Clean
            }
        }
        "502" | "503" | "504" => Outcome::Clean,
        other => Outcome::Corrupt(format!("http: status {other:?}: {head}")),
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// Runs `clients` loops of `request` against `to` until `stop`.
fn load(
    clients: usize,
    to: SocketAddr,
    http: bool,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (tally, stop, failures) = (tally.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    n += 1;
                    let seed = (c as u64) << 32 | n;
                    let len = [100, 4096, 65_536, 300_000][(n % 4) as usize];
                    let request = async {
                        if http {
                            http_request(to, seed, len).await
                        } else {
                            tcp_request(to, seed, len).await
                        }
                    };
                    match tokio::time::timeout(CLIENT_TIMEOUT, request).await {
                        Ok(Outcome::Ok(bytes)) => {
                            tally.ok.fetch_add(1, Relaxed);
                            tally.bytes.fetch_add(bytes, Relaxed);
                        }
                        Ok(Outcome::Clean) => {
                            tally.clean_errors.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Ok(Outcome::Corrupt(why)) => {
                            tally.corrupt.fetch_add(1, Relaxed);
                            failures.lock().unwrap().push(why);
                        }
                        Err(_) => {
                            tally.hung.fetch_add(1, Relaxed);
                            failures.lock().unwrap().push(format!(
                                "{} request hung past {CLIENT_TIMEOUT:?}",
                                if http { "http" } else { "tcp" }
                            ));
                        }
                    }
                }
            })
        })
        .collect()
}

fn config_text(dir: &std::path::Path, backends: &[Arc<FaultBackend>], weight: u32) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{{ address = \"{}\", weight = {} }}",
                b.address,
                if i == 0 { weight } else { 1 }
            )
        })
        .collect();
    format!(
        "[global]\ncontrol_socket = \"{dir}/soak.sock\"\ndrain_timeout = \"1s\"\n# Past the files limit on purpose: the test wants EMFILE.\nmax_conns = 100000\n\n\
[[pool]]\nname = \"p\"\nbackends = [{list}]\n\
check = {{ type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n\n\
[[service]]\nname = \"tcp\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\nconnect_timeout = \"500ms\"\nidle_timeout = \"2s\"\nretries = 2\n\n\
[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"p\"\nconnect_timeout = \"500ms\"\nidle_timeout = \"2s\"\n\
http = {{ response_timeout = \"2s\" }}\n",
        dir = dir.display(),
        list = list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_every_request_ends_cleanly_and_nothing_leaks() {
    let soak = Duration::from_secs(
        std::env::var("TANDEM_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    support::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(FaultBackend::start().await);
    }
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config_text(dir.path(), &backends, 1)).unwrap();
    // 256 open files: a burst of a few hundred connections exhausts them.
    let mut tandem = Running::spawn_program(
        "prlimit",
        &[
            "--nofile=256:256",
            TANDEM,
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    let tcp = support::listen_addr(&tandem.wait_for("service=tcp"));
    let web = support::listen_addr(&tandem.wait_for("service=web"));
    tandem.wait_for("tandem running");
    let pid = tandem.child.id();
    let socket = dir.path().join("soak.sock");

    let tally = Arc::new(Tally::default());
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));

    // Warm-up without faults: the baseline is taken after it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(8, tcp, false, tally.clone(), stop.clone(), failures.clone());
    clients.extend(load(
        8,
        web,
        true,
        tally.clone(),
        stop.clone(),
        failures.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_base, fds_base) = (proc_status(pid, "VmRSS"), open_fds(pid));
    let (warm_ok, warm_clean) = (tally.ok.load(Relaxed), tally.clean_errors.load(Relaxed));
    assert!(warm_ok > 50, "warm-up: only {warm_ok} requests served");

    // The faulty phase.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(
        16,
        tcp,
        false,
        tally.clone(),
        stop.clone(),
        failures.clone(),
    );
    clients.extend(load(
        16,
        web,
        true,
        tally.clone(),
        stop.clone(),
        failures.clone(),
    ));
    let started = Instant::now();
    let (mut reloads, mut reload_failures, mut emfile_bursts, mut faults) =
        (0u32, 0u32, 0u32, 0u32);
    let mut step = 0u64;
    while started.elapsed() < soak {
        step += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A fault on one backend every half second; the others keep their mode.
        let victim = &backends[(step % 3) as usize];
        let mode = MODES[fastrand::usize(..MODES.len())];
        victim.set(mode).await;
        faults += 1;
        if step.is_multiple_of(6) {
            // A reload (a weight changes) every 3 s, once tandem has descriptors to
            // read its file with: right after a burst it is still closing the burst's
            // connections, and a reload at the limit is refused (the old configuration
            // stays, as it must).
            let calm = Instant::now();
            while open_fds(pid) > 200 && calm.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::fs::write(
                &path,
                config_text(dir.path(), &backends, 1 + (step % 3) as u32),
            )
            .unwrap();
            match support::ctl(&socket, &["reload"]) {
                (0, _, _) => reloads += 1,
                (_, out, err) => {
                    eprintln!("reload refused: {out}{err}");
                    reload_failures += 1
                }
            }
        }
        if step % 10 == 5 {
            // A burst past the open-files limit: held a moment, then let go.
            emfile_bursts += 1;
            let mut held = Vec::new();
            for _ in 0..300 {
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(tcp)).await
                {
                    held.push(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(held);
        }
    }
    for b in &backends {
        b.set(Mode::Normal).await;
    }
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    // Quiet again: descriptors and memory back to the warm-up level.
    let settle = Instant::now();
    let (mut rss_end, mut fds_end) = (proc_status(pid, "VmRSS"), open_fds(pid));
    while settle.elapsed() < Duration::from_secs(10) && fds_end > fds_base + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (rss_end, fds_end) = (proc_status(pid, "VmRSS"), open_fds(pid));
    }
    // tandem still answers its control socket.
    let status = support::ctl_json(&socket, &["status"]);
    let accept_errors: u64 = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["accept_errors"].as_u64().unwrap_or(0))
        .sum();
    // And it still serves.
    let mut last = None;
    for n in 0..50 {
        if let Outcome::Ok(_) = tcp_request(tcp, 99 + n, 10_000).await
            && let Outcome::Ok(_) = http_request(web, 99 + n, 10_000).await
        {
            last = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ok = tally.ok.load(Relaxed);
    let clean = tally.clean_errors.load(Relaxed);
    println!(
        "soak {}s (after a {warm_ok}-request warm-up): {ok} requests served ({} MiB verified), {clean} clean errors, {} corrupt, {} hung; \
         {faults} faults, {reloads} reloads ({reload_failures} refused), {emfile_bursts} bursts past 256 files \
         ({accept_errors} accept errors); RSS {rss_base} -> {rss_end} KiB, open files {fds_base} -> {fds_end}",
        soak.as_secs(),
        tally.bytes.load(Relaxed) >> 20,
        tally.corrupt.load(Relaxed),
        tally.hung.load(Relaxed),
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} bad requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(last.is_some(), "tandem no longer serves");
    // Traffic went on through the faults (a failing request returns fast and is
    // retried at once, so clean errors outnumber successes when most backends are down:
    // the count that matters is that none was corrupt or hung).
    let (faulty_ok, faulty_clean) = (ok - warm_ok, clean - warm_clean);
    assert!(
        faulty_ok >= 100 && faulty_clean > 0,
        "under faults {faulty_ok} served, {faulty_clean} clean errors"
    );
    assert_eq!(reload_failures, 0);
    assert!(
        accept_errors > 0,
        "the bursts never made accept fail: the test did not test EMFILE"
    );
    assert!(
        fds_end <= fds_base + 2,
        "descriptors leaked: {fds_base} -> {fds_end}"
    );
    assert!(
        rss_end <= rss_base + rss_base / 5 + 4096,
        "memory grew: {rss_base} -> {rss_end} KiB"
    );
}
