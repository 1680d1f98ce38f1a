//! HTTP/1.1 conformance of HTTP mode, as data: tests/e2e/conformance/cases.txt lists raw
//! requests, the answers a client must see and what a strict backend must have parsed
//! of each request it got. Each case runs on the fast path and on the general path,
//! some also cut in two at every byte. Then the slow readers: a client that does not
//! read its response is cut off after `client_timeout`, on both paths.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One case of cases.txt.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    line: usize,
    send: Vec<Vec<u8>>,
    /// "STATUS VIEW" per response.
    expect: Vec<String>,
    closed: bool,
    split: bool,
}

/// Decodes a `send:` value: \r \n \\ \xHH and {c*N}.
fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                match b[i + 1] {
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b'\\' => out.push(b'\\'),
                    b'x' => {
                        out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
                        i += 2;
                    }
                    other => panic!("unknown escape \\{}", other as char),
                }
                i += 2;
            }
            b'{' if b.get(i + 2) == Some(&b'*') => {
                let end = i + text[i..].find('}').expect("{c*N} closed");
                let n: usize = text[i + 3..end].parse().expect("{c*N} count");
                out.extend(std::iter::repeat_n(b[i + 1], n));
                i = end + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn cases() -> Vec<Case> {
    let text = include_str!("conformance/cases.txt");
    let mut cases = Vec::new();
    let mut current: Option<Case> = None;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            cases.extend(current.take());
            continue;
        }
        if let Some(name) = line.strip_prefix("case: ") {
            current = Some(Case {
                name: name.to_string(),
                line: n + 1,
                send: Vec::new(),
                expect: Vec::new(),
                closed: false,
                split: false,
            });
            continue;
        }
        let case = current
            .as_mut()
            .unwrap_or_else(|| panic!("cases.txt:{}: outside a case", n + 1));
        if let Some(bytes) = line.strip_prefix("send: ") {
            case.send.push(unescape(bytes));
        } else if let Some(e) = line.strip_prefix("expect: ") {
            case.expect.push(e.to_string());
        } else if line == "closed" {
            case.closed = true;
        } else if line == "split" {
            case.split = true;
        } else {
            panic!("cases.txt:{}: {line:?}", n + 1);
        }
    }
    cases.extend(current);
    cases
}

/// What the strict backend saw: how many whole requests, and what it refused.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    refused: Mutex<Vec<String>>,
}

/// How the strict backend sums up a request head: method, target, Host values,
/// framing fields (the decoded body follows).
fn view(req: &httparse::Request<'_, '_>) -> String {
    let values = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect()
    };
    let hosts = values("host");
    let mut v = format!(
        "{} {} host={}",
        req.method.unwrap(),
        req.path.unwrap(),
        if hosts.is_empty() {
            "-".to_string()
        } else {
            hosts.join(",")
        }
    );
    for (name, short) in [("content-length", "cl"), ("transfer-encoding", "te")] {
        let vs = values(name);
        if !vs.is_empty() {
            v.push_str(&format!(" {short}={}", vs.join(",")));
        }
    }
    v
}

/// Reads more bytes into `buf`; false at the end.
async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// A strict chunked decoder (RFC 9112 7.1): the body and the bytes used, `Err` when
/// malformed, `Ok(None)` when more bytes are needed.
fn dechunk(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = data[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &data[at..at + eol];
        if line.contains(&b'\n') {
            return Err("bare LF in a chunk-size line".into());
        }
        let size_text = line.split(|&b| b == b';').next().unwrap();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(format!(
                "bad chunk size {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap(), 16).unwrap();
        at += eol + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let Some(eol) = data[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..at + size]);
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        at += size + 2;
    }
}

/// A backend that parses requests strictly with httparse, answers each with its view
/// (header `x-view: 1`), and refuses (records and closes) what it cannot frame.
async fn strict_backend() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    let a = serve(move |mut s, _| {
        let seen = record.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut fields);
                let head_len = match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => {
                        if !fill(&mut s, &mut buf).await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        seen.refused.lock().unwrap().push(format!("head: {e}"));
                        return;
                    }
                };
                let count = |n: &str| {
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case(n))
                        .count()
                };
                let ambiguous = count("content-length") > 0 && count("transfer-encoding") > 0
                    || count("content-length") > 1
                    || count("transfer-encoding") > 1;
                let te = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                    .map(|h| h.value.to_vec());
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| String::from_utf8_lossy(h.value).trim().parse::<usize>());
                let head_view = view(&req);
                if ambiguous {
                    seen.refused
                        .lock()
                        .unwrap()
                        .push(format!("ambiguous: {head_view}"));
                    return;
                }
                let (body, used) = if let Some(te) = te {
                    if te != b"chunked" {
                        seen.refused
                            .lock()
                            .unwrap()
                            .push(format!("te: {head_view}"));
                        return;
                    }
                    loop {
                        match dechunk(&buf[head_len..]) {
                            Ok(Some((body, used))) => break (body, used),
                            Ok(None) => {
                                if !fill(&mut s, &mut buf).await {
                                    return;
                                }
                            }
                            Err(e) => {
                                seen.refused
                                    .lock()
                                    .unwrap()
                                    .push(format!("{e}: {head_view}"));
                                return;
                            }
                        }
                    }
                } else {
                    let n = match length {
                        None => 0,
                        Some(Ok(n)) => n,
                        Some(Err(_)) => {
                            seen.refused
                                .lock()
                                .unwrap()
                                .push(format!("cl: {head_view}"));
                            return;
                        }
                    };
                    while buf.len() < head_len + n {
                        if !fill(&mut s, &mut buf).await {
                            return;
                        }
                    }
                    (buf[head_len..head_len + n].to_vec(), n)
                };
                let text = format!(
                    "{head_view} body={}",
                    String::from_utf8_lossy(&body).escape_debug()
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nx-view: 1\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                // A whole request, head and body (a body cut short by tandem
                // when the client's turned out malformed is not one).
                seen.requests.fetch_add(1, Relaxed);
                buf.drain(..head_len + used);
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (a, seen)
}

/// Reads one response: "STATUS VIEW" (`-` when not the backend's), `None` when the
/// connection ended first.
fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = &head[9..12];
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    if head.contains("\r\nx-view: 1\r\n") {
        Some(format!("{status} {}", String::from_utf8_lossy(&body)))
    } else {
        Some(format!("{status} -"))
    }
}

/// Writes `pieces` `gap` apart and reads the answers: the responses, then `closed`
/// when tandem closed the connection (checked when `closed` is expected).
fn run(
    to: SocketAddr,
    pieces: &[Vec<u8>],
    gap: Duration,
    answers: usize,
    closed: bool,
) -> Vec<String> {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        // tandem may close before all is written (a refusal): what it answered counts.
        if s.write_all(p).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        match read_response(&mut s) {
            Some(r) => out.push(r),
            None => {
                out.push("closed".into());
                return out;
            }
        }
    }
    if closed {
        let mut rest = [0u8; 64];
        match s.read(&mut rest) {
            Ok(0) | Err(_) if true => out.push("closed".into()),
            _ => out.push(format!("open: {:?}", String::from_utf8_lossy(&rest))),
        }
    }
    out
}

/// A chunked request first: the general path serves the rest of the connection.
const TO_GENERAL: &[u8] =
    b"POST /warmup HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
const TO_GENERAL_VIEW: &str = "200 POST /warmup host=w te=chunked body=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_gets_its_answers_on_both_paths_and_in_pieces() {
    let (backend, seen) = strict_backend().await;
    let d = start(&format!(
        "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{backend}\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\n"
    ))
    .await;
    let to = addr_of(&d, "www");
    let watch = seen.clone();
    let failures = tokio::task::spawn_blocking(move || {
        let seen = watch;
        let mut failures = Vec::new();
        for case in cases() {
            for general in [false, true] {
                let path = if general { "general" } else { "fast" };
                let mut send = case.send.clone();
                let mut want: Vec<String> = case.expect.clone();
                if general {
                    let mut first = TO_GENERAL.to_vec();
                    first.extend_from_slice(&send[0]);
                    send[0] = first;
                    want.insert(0, TO_GENERAL_VIEW.to_string());
                }
                if case.closed {
                    want.push("closed".into());
                }
                let forwarded = want.iter().filter(|w| !w.ends_with(" -") && *w != "closed").count();
                let before = seen.requests.load(Relaxed);
                let mut runs = 1;
                let got = run(to, &send, Duration::from_millis(30), want.len() - usize::from(case.closed), case.closed);
                let got: Vec<String> = got.iter().map(|g| g.replace(&backend.to_string(), "{backend}")).collect();
                if got != want {
                    failures.push(format!(
                        "cases.txt:{} {} ({path} path):\n  want {want:?}\n  got  {got:?}",
                        case.line, case.name
                    ));
                }
                if case.split {
                    let first = &send[0];
                    for cut in 1..first.len() {
                        let mut pieces = vec![first[..cut].to_vec(), first[cut..].to_vec()];
                        pieces.extend(send[1..].iter().cloned());
                        let got = run(to, &pieces, Duration::from_millis(2), want.len() - usize::from(case.closed), case.closed);
                        let got: Vec<String> = got.iter().map(|g| g.replace(&backend.to_string(), "{backend}")).collect();
                        runs += 1;
                        if got != want {
                            failures.push(format!(
                                "cases.txt:{} {} ({path} path, cut at byte {cut}):\n  want {want:?}\n  got  {got:?}",
                                case.line, case.name
                            ));
                            break;
                        }
                    }
                }
                // Nothing reached the backend besides the requests answered with a view.
                std::thread::sleep(Duration::from_millis(50));
                let reached = seen.requests.load(Relaxed) - before;
                if reached != forwarded * runs {
                    failures.push(format!(
                        "cases.txt:{} {} ({path} path): the backend got {reached} requests, {} answered",
                        case.line,
                        case.name,
                        forwarded * runs
                    ));
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    let refused = seen.refused.lock().unwrap().clone();
    assert!(
        failures.is_empty() && refused.is_empty(),
        "{} failures:\n{}\nthe strict backend refused: {refused:?}",
        failures.len(),
        failures.join("\n")
    );
}

/// A backend that answers every request with `size` bytes (Content-Length) and notes
/// when each of its connections ends.
async fn big_backend(size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let ended = Arc::new(AtomicUsize::new(0));
    let count = ended.clone();
    let a = serve(move |mut s, _| {
        let count = count.clone();
        async move {
            let mut buf = Vec::new();
            let data = vec![b'x'; size];
            loop {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut fields);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        // Bodies of these tests are chunked "0\r\n\r\n" or none.
                        let chunked = req
                            .headers
                            .iter()
                            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                        let used = n + if chunked { 5 } else { 0 };
                        while buf.len() < used {
                            if !fill(&mut s, &mut buf).await {
                                break;
                            }
                        }
                        buf.drain(..used.min(buf.len()));
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(&data).await.is_err()
                        {
                            break;
                        }
                    }
                    Ok(httparse::Status::Partial) if fill(&mut s, &mut buf).await => {}
                    _ => break,
                }
            }
            count.fetch_add(1, Relaxed);
        }
    })
    .await;
    (a, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_client_timeout_on_both_paths() {
    let (backend, ended) = big_backend(64 << 20).await;
    let d = start(&format!(
        "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{backend}\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\n\
[service.http]\nclient_timeout = \"1s\"\n"
    ))
    .await;
    let to = addr_of(&d, "www");
    for (path, request) in [
        ("fast", b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "general",
            [TO_GENERAL, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"].concat(),
        ),
    ] {
        let ended_before = ended.load(Relaxed);
        let started = Instant::now();
        let cut = tokio::task::spawn_blocking(move || {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            // A small window: tandem's writes stall soon.
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&to.into()).unwrap();
            let mut s: TcpStream = s.into();
            s.write_all(&request).unwrap();
            // Read nothing for 4 s, then see whether tandem gave up on the client.
            std::thread::sleep(Duration::from_secs(4));
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
                    Err(_) => return Err(total),
                }
            }
        })
        .await
        .unwrap();
        let total = cut.unwrap_or_else(|t| {
            panic!("{path} path: still sending after 6 s ({t} bytes read), no client timeout")
        });
        assert!(
            total < 64 << 20,
            "{path} path: the whole response came ({total} bytes)"
        );
        // The backend connection is let go (closed: it was in the middle of a response).
        let deadline = Instant::now() + Duration::from_secs(3);
        while ended.load(Relaxed) == ended_before {
            assert!(
                Instant::now() < deadline,
                "{path} path: the backend connection is still held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(9));
    }
    let snapshot = d.snapshot();
    let www = snapshot.services.iter().find(|s| s.name == "www").unwrap();
    assert_eq!(www.client_timeouts, 2, "both cut-offs counted");
}

/// A TLS 1.2 or 1.3 client connection to `to` whose suites are `suites`, in that
/// order of preference: the suite agreed on.
async fn tls_handshake(
    to: SocketAddr,
    ca: &str,
    suites: Vec<rustls::SupportedCipherSuite>,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::CipherSuite {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("tls.test").unwrap(), tcp)
        .await
        .unwrap();
    // A request and its answer: TLS 1.3 tickets come after the handshake.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_the_server_s_cipher_order_wins_and_1_2_sessions_resume_by_id_without_tickets() {
    use rustls::crypto::ring::cipher_suite as cs;
    let (backend, _) = strict_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "tls.test");
    let d = start(&format!(
        "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{backend}\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\n\
tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"
    ))
    .await;
    let to = addr_of(&d, "www");
    // The client prefers AES-256 (then AES-128); tandem prefers AES-128.
    for (version, suites, want) in [
        (
            &rustls::version::TLS13,
            vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let suite = tls_handshake(to, &cert, suites, version).await;
        assert_eq!(suite, want, "{version:?}");
    }
    // Resumption, asked of openssl (as testssl.sh does): a TLS 1.2 client without
    // tickets resumes by session ID, and none is offered to one that would take it.
    let reconnect = move |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &to.to_string(),
                "-servername",
                "tls.test",
                "-reconnect",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = tokio::task::spawn_blocking(move || {
        (
            reconnect(&["-tls1_2", "-no_ticket"]),
            reconnect(&["-tls1_2"]),
        )
    })
    .await
    .unwrap();
    let reused = out
        .0
        .lines()
        .filter(|l| l.starts_with("Reused, TLSv1.2"))
        .count();
    assert_eq!(reused, 5, "TLS 1.2 resumption by session ID:\n{}", out.0);
    assert!(
        !out.1.contains("TLS session ticket:"),
        "a TLS 1.2 ticket was offered:\n{}",
        out.1
    );
}
