//! HTTP mode end to end: real nginx backends started by the tests, a small hyper server
//! for faults and large bodies, curl and raw sockets as clients.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::nginx::nginx;
use support::*;

fn http_service(backends: &str, extra_pool: &str, extra_service: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\nbackends = {backends}\n{extra_pool}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\nconnect_timeout = \"500ms\"\n{extra_service}\n"
    )
}

/// Reads a response head, up to and with its blank line, byte by byte (nothing after
/// it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed mid-headers: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

/// One HTTP/1.1 exchange on an open connection: (status, headers text, body).
fn exchange(s: &mut TcpStream, request: &str) -> (u16, String, String) {
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(s);
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// One exchange on a new connection to service www of `d`.
fn ask(d: &tandem::daemon::Daemon, request: &str) -> (u16, String, String) {
    exchange(&mut TcpStream::connect(addr_of(d, "www")).unwrap(), request)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: www.example.test\r\n{extra}\r\n")
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_spread_and_headers_are_forwarded_and_rewritten() {
    let Some(n) = nginx() else { return };
    let rules = "[service.http]\nvia = true\nrequest_headers = { set = { \"X-Added\" = \"yes\" }, remove = [\"X-Gone\"] }\n\
response_headers = { remove = [\"X-Secret-Backend-Header\"], add = { \"X-Frame-Options\" = \"DENY\" } }\n";
    let d = start(&http_service(&n.backends(), "", rules)).await;
    let to = addr_of(&d, "www");
    let mut s = TcpStream::connect(to).unwrap();
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, head, body) = exchange(
            &mut s,
            &get(
                "/",
                "X-Forwarded-For: 192.0.2.1\r\nX-Gone: bye\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s3cr3t\r\n",
            ),
        );
        assert_eq!(status, 200, "{head}");
        names.push(body.split(' ').next().unwrap().to_string());
        // Headers as the backend saw them.
        assert!(body.contains("xff=192.0.2.1, 127.0.0.1 "), "{body}");
        assert!(body.contains("proto=http "), "{body}");
        assert!(body.contains("xhost=www.example.test "), "{body}");
        assert!(
            body.contains("fwd=for=127.0.0.1;proto=http;host=\"www.example.test\" "),
            "{body}"
        );
        assert!(body.contains("via=1.1 tandem "), "{body}");
        assert!(body.contains("added=yes gone= "), "{body}");
        assert!(
            body.contains("secret= "),
            "a header named in Connection was forwarded: {body}"
        );
        assert!(body.contains("host=www.example.test"), "{body}");
        // Headers as the client sees them.
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("x-secret-backend-header"), "{head}");
        assert!(lower.contains("x-frame-options: deny"), "{head}");
        assert!(lower.contains("via: 1.1 tandem"), "{head}");
    }
    names.sort();
    assert_eq!(
        names,
        [
            "nginx-a", "nginx-a", "nginx-a", "nginx-b", "nginx-b", "nginx-b"
        ],
        "one connection, requests spread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_keeps_a_client_on_its_backend_across_connections() {
    let Some(n) = nginx() else { return };
    let d = start(&http_service(
        &n.backends(),
        "sticky = { key = \"cookie\", cookie = \"TANDEMID\" }",
        "",
    ))
    .await;
    let to = addr_of(&d, "www");
    let (_, head, body) = exchange(&mut TcpStream::connect(to).unwrap(), &get("/", ""));
    let first = body.split(' ').next().unwrap().to_string();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    let value = cookie.split(';').next().unwrap().to_string();
    assert!(
        value.starts_with("TANDEMID=") && !value.contains("127.0.0.1"),
        "opaque: {value}"
    );
    for _ in 0..10 {
        let (_, head, body) = exchange(
            &mut TcpStream::connect(to).unwrap(),
            &get("/", &format!("Cookie: theme=dark; {value}\r\n")),
        );
        assert_eq!(body.split(' ').next().unwrap(), first);
        assert!(
            !head.contains("set-cookie"),
            "no new cookie while it holds: {head}"
        );
    }
    // A stale value falls back to the algorithm and gets a new cookie.
    let (_, head, _) = exchange(
        &mut TcpStream::connect(to).unwrap(),
        &get("/", "Cookie: TANDEMID=0000000000000000\r\n"),
    );
    assert!(head.contains("set-cookie: TANDEMID="), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_picks_the_certificate_by_sni_and_speaks_h2_and_h1() {
    let Some(n) = nginx() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = self_signed(dir.path(), "a.test");
    let (b_cert, b_key) = self_signed(dir.path(), "b.test");
    let tls = format!(
        "tls = {{ certs = [{{ cert = \"{a_cert}\", key = \"{a_key}\" }}, {{ cert = \"{b_cert}\", key = \"{b_key}\" }}] }}"
    );
    let d = start(&http_service(&n.backends(), "", &tls)).await;
    let port = addr_of(&d, "www").port();
    for (name, ca) in [("a.test", &a_cert), ("b.test", &b_cert)] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/");
        // Verifying against that name's own certificate proves which one was served.
        let out = curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca,
            "-w",
            "|%{http_version}|%{ssl_verify_result}",
            &url,
        ]);
        assert!(
            out.starts_with("nginx-") && out.ends_with("|2|0"),
            "{name}: {out}"
        );
        let out = curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca,
            "--http1.1",
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "-w",
            "|%{http_version}",
            &url,
        ]);
        assert!(
            out.contains("proto=https") && out.ends_with("|1.1"),
            "{name} over TLS 1.2: {out}"
        );
    }
    // The other name's certificate does not verify: SNI chose.
    let out = curl(&[
        "--resolve",
        &format!("b.test:{port}:127.0.0.1"),
        "--cacert",
        &a_cert,
        &format!("https://b.test:{port}/"),
    ]);
    assert!(
        out.is_empty(),
        "b.test verified with a.test's certificate: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let Some(n) = nginx() else { return };
    let d = start(&http_service(&n.backends(), "", "")).await;
    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "|%{http_version}",
        &format!("http://{}/", addr_of(&d, "www")),
    ]);
    assert!(out.starts_with("nginx-") && out.ends_with("|2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_a_client_understands_502_503_504_and_retry_on_connect_failure() {
    let alive = rust_backend().await;
    let dead = dead_address().await;
    // 502: the only backend refuses connections (no health check to know better).
    let d = start(&http_service(&backends(&[dead]), "", "retries = 1")).await;
    let (status, _, body) = ask(&d, &get("/", ""));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no backend could be reached"), "{body}");
    // 503: no backend is healthy.
    let d = start(&http_service(
        &backends(&[dead]),
        "check = { type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"down\" }",
        "",
    ))
    .await;
    let (status, _, body) = ask(&d, &get("/", ""));
    assert_eq!(status, 503, "{body}");
    // 504: the backend is slower than response_timeout.
    let d = start(&http_service(
        &backends(&[alive]),
        "",
        "[service.http]\nresponse_timeout = \"300ms\"\n",
    ))
    .await;
    let started = Instant::now();
    let (status, _, _) = ask(&d, &get("/slow?ms=2000", ""));
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _, body) = ask(&d, &get("/slow?ms=100", ""));
    assert_eq!((status, body.as_str()), (200, "slow\n"));
    // Retry: half the picks land on the dead backend; idempotent requests never see it.
    let d = start(&http_service(&backends(&[dead, alive]), "", "retries = 2")).await;
    for _ in 0..10 {
        let (status, _, body) = ask(&d, &get("/", ""));
        assert_eq!((status, body.as_str()), (200, "rust\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout_and_smuggling_is_refused() {
    let backend = rust_backend().await;
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "[service.http]\nheader_timeout = \"1s\"\n",
    ))
    .await;
    let to = addr_of(&d, "www");
    // A client that trickles its headers is closed after the header timeout.
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        if s.write_all(b"X-Slow: 1\r\n").is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    // Content-Length with Transfer-Encoding: 400, and the backend never sees it.
    let total_before = d.pools().get("web").unwrap().backends[0].state.total();
    let mut s = TcpStream::connect(to).unwrap();
    let (status, head, _) = exchange(
        &mut s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    );
    assert_eq!(status, 400, "{head}");
    assert_eq!(
        d.pools().get("web").unwrap().backends[0].state.total(),
        total_before,
        "forwarded to the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_ends_after_max_requests() {
    let backend = rust_backend().await;
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "[service.http]\nmax_requests_per_connection = 3\n",
    ))
    .await;
    let mut s = TcpStream::connect(addr_of(&d, "www")).unwrap();
    for n in 1..=3 {
        let (status, head, _) = exchange(&mut s, &get("/", ""));
        assert_eq!(status, 200);
        assert_eq!(
            head.contains("connection: close"),
            n == 3,
            "request {n}: {head}"
        );
    }
    let mut buf = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed after the third");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_up_and_down_in_bounded_memory() {
    let backend = rust_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\ncontrol_socket = \"{}/t.sock\"\n\n{}",
            dir.path().display(),
            http_service(
                &backends(&[backend]),
                "",
                "[service.http]\nresponse_timeout = \"120s\"\n"
            )
        ),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let to = listen_addr(&tandem.wait_for("service ready"));
    let pid = tandem.child.id();
    let baseline = peak_rss_kib(pid);
    // Upload 1 GiB (chunked, from a pipe), then download 1 GiB.
    let upload = tokio::task::spawn_blocking(move || {
        let mut head = Command::new("head")
            .args(["-c", "1073741824", "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "120",
                "-T",
                "-",
                &format!("http://{to}/upload"),
            ])
            .stdin(head.stdout.take().unwrap())
            .output()
            .unwrap();
        let _ = head.wait();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    assert_eq!(upload.await.unwrap().trim(), "1073741824");
    let download = tokio::task::spawn_blocking(move || {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--max-time",
            "120",
            &format!("http://{to}/download?mib=1024"),
        ])
    });
    assert_eq!(download.await.unwrap(), "1073741824");
    let peak = peak_rss_kib(pid);
    println!("tandem peak RSS: {baseline} KiB at start, {peak} KiB after 1 GiB up and 1 GiB down");
    assert!(
        peak < baseline + 64 * 1024,
        "memory grew by {} KiB",
        peak - baseline
    );
    // One access log line per request.
    tandem.wait_for("method=PUT path=/upload status=200");
    tandem.wait_for("method=GET path=/download?mib=1024 status=200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_can_be_spoken_to_over_tls() {
    let backend = tls_backend().await;
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "[service.http]\nbackend_tls = true\n",
    ))
    .await;
    let (status, _, body) = ask(&d, &get("/", ""));
    assert_eq!((status, body.as_str()), (200, "tls-backend\n"));
    // Without backend_tls the same backend cannot answer plain HTTP.
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "[service.http]\nresponse_timeout = \"1s\"\n",
    ))
    .await;
    let (status, _, _) = ask(&d, &get("/", ""));
    assert!(status == 502 || status == 504, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_picks_up_renewed_certificates() {
    let backend = rust_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "a.test");
    let old = std::fs::read_to_string(&cert).unwrap();
    let text = http_service(
        &backends(&[backend]),
        "",
        &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    );
    let d = start(&text).await;
    let port = addr_of(&d, "www").port();
    let fetch = |ca: &str| {
        curl(&[
            "--resolve",
            &format!("a.test:{port}:127.0.0.1"),
            "--cacert",
            ca,
            &format!("https://a.test:{port}/"),
        ])
    };
    let old_ca = dir.path().join("old.pem");
    std::fs::write(&old_ca, &old).unwrap();
    assert_eq!(fetch(old_ca.to_str().unwrap()), "rust\n");
    // The certificate is renewed in place, then tandem reloads.
    self_signed(dir.path(), "a.test");
    d.apply(support::config(&text)).await.unwrap();
    assert_eq!(fetch(&cert), "rust\n", "the renewed certificate is served");
    assert_eq!(fetch(old_ca.to_str().unwrap()), "", "the old one is not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_stickiness_holds_in_http_mode() {
    let Some(n) = nginx() else { return };
    let d = start(&http_service(
        &n.backends(),
        "sticky = { key = \"source-ip\", ttl = \"5m\" }",
        "",
    ))
    .await;
    let to = addr_of(&d, "www");
    let mut names = std::collections::HashSet::new();
    for _ in 0..8 {
        let (_, _, body) = exchange(&mut TcpStream::connect(to).unwrap(), &get("/", ""));
        names.insert(body.split(' ').next().unwrap().to_string());
    }
    assert_eq!(names.len(), 1, "one client, one backend: {names:?}");
    assert_eq!(
        d.pools().get("web").unwrap().sticky.as_ref().unwrap().len(),
        1
    );
}

/// A backend written by hand, for what hyper would not send: a keep-alive response
/// after which it closes anyway (`/once`), and a body that ends when it closes (`/eof`).
async fn rude_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    let addr = serve(move |mut s, _| {
        let closed = counter.clone();
        async move {
            let Some(head) = read_request_head(&mut s).await else {
                return;
            };
            let answer: &[u8] = if head.starts_with(b"GET /eof ") {
                b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
            } else if head.starts_with(b"GET /sneaky ") {
                b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nok\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
            };
            let _ = s.write_all(answer).await;
            drop(s);
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (addr, closed)
}

/// Reads a chunked body to its end: the pieces' text.
fn read_chunked(s: &mut TcpStream) -> String {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
        let mut data = vec![0u8; size + 2];
        s.read_exact(&mut data).unwrap();
        if size == 0 {
            return text;
        }
        text.push_str(std::str::from_utf8(&data[..size]).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_fast_path_relays_chunked_pipelined_and_hands_other_shapes_over() {
    let backend = rust_backend().await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A chunked response is relayed as it came, and its end found: the connection
    // serves the next request.
    for _ in 0..2 {
        s.write_all(get("/chunked?n=3", "").as_bytes()).unwrap();
        let head = read_head(&mut s).to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(read_chunked(&mut s), "piece 0\npiece 1\npiece 2\n");
    }
    // Three pipelined requests, one write: three answers in order.
    s.write_all(
        format!(
            "{}{}{}",
            get("/", ""),
            get("/chunked?n=1", ""),
            get("/", "")
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, _, body) = exchange(&mut s, "");
    assert_eq!((status, body.as_str()), (200, "rust\n"));
    let (status, head, _) = exchange(&mut s, "");
    assert!(status == 200 && head.contains("chunked"), "{head}");
    assert_eq!(read_chunked(&mut s), "piece 0\n");
    let (status, _, body) = exchange(&mut s, "");
    assert_eq!((status, body.as_str()), (200, "rust\n"));
    // A chunked upload is the general path's: it serves it and the rest of the
    // connection.
    let (status, _, body) = exchange(
        &mut s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!((status, body.as_str()), (200, "11\n"));
    let (status, _, body) = exchange(&mut s, &get("/", ""));
    assert_eq!((status, body.as_str()), (200, "rust\n"));
    // A Content-Length upload stays on the fast path, its body with it.
    let mut s = TcpStream::connect(to).unwrap();
    let (status, _, body) = exchange(
        &mut s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert_eq!((status, body.as_str()), (200, "4\n"));
    // A Connection field naming Content-Length does not strip the body's framing.
    let (status, _, body) = exchange(
        &mut s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert_eq!((status, body.as_str()), (200, "4\n"));
    let (status, _, body) = exchange(&mut s, &get("/", ""));
    assert_eq!((status, body.as_str()), (200, "rust\n"));
    // HTTP/1.0 is the general path's too.
    let mut s = TcpStream::connect(to).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") && answer.ends_with("rust\n"),
        "{answer}"
    );

    // A backend that closes a kept connection after each answer: the next request is
    // sent again on a new connection, unseen by the client; a body that ends with the
    // backend's close reaches the client whole, and the client's connection closes.
    let (rude, closed) = rude_backend().await;
    let d = start(&http_service(&backends(&[rude]), "", "")).await;
    let mut s = TcpStream::connect(addr_of(&d, "www")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for request in [get("/once", ""), get("/sneaky", ""), get("/once", "")] {
        let (status, _, body) = exchange(&mut s, &request);
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    // A POST is never sent twice (it is not idempotent), so it may meet only a close
    // that has happened: one racing the request would rightly be a 502. Once the
    // backend has closed the three connections, the POST goes on a new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the rude backend never closed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, _, body) = exchange(
        &mut s,
        "POST /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    s.write_all(get("/eof", "").as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nuntil the end"), "{answer}");
}

/// A backend that switches protocols on `Upgrade: echo` (sends "ready\n", then echoes
/// every byte) and answers any other request with a plain 200.
async fn upgrading_backend() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    serve(|mut s, _| async move {
        let Some(head) = read_request_head(&mut s).await else {
            return;
        };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !(head.contains("\r\nupgrade: echo\r\n") && head.contains("\r\nconnection: upgrade\r\n"))
        {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nno upgrade\r\n")
                .await;
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nready\n")
            .await;
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Connects to `to` and asks to switch to the `echo` protocol: the connection and the
/// response head (lower case).
fn ask_upgrade(to: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s).to_ascii_lowercase();
    (s, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_becomes_a_tunnel_to_the_backend() {
    let backend = upgrading_backend().await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let (mut s, head) = ask_upgrade(to);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    // The backend speaks first in the new protocol, then echoes: small and large
    // messages, including bytes that an HTTP parser would refuse.
    let mut ready = [0u8; 6];
    s.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    for size in [5usize, 3 << 20, 1] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let mut writer = s.try_clone().unwrap();
        let sent = data.clone();
        let send = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut got = vec![0u8; size];
        s.read_exact(&mut got).unwrap();
        send.join().unwrap();
        assert!(got == data, "{size} bytes came back changed");
    }
    // The tunnel holds the backend as busy, and ends with the client.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Without Connection: upgrade, the Upgrade field is hop-by-hop and dropped: a plain
    // exchange.
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, _, body) = exchange(&mut s, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(body, "no upgrade\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_client_gives_its_backend_connection_back_for_others() {
    // A client that sends nothing for a while no longer holds a backend connection:
    // the next client's request goes over that same connection, from the pool.
    let backend = rust_backend().await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let mut first = TcpStream::connect(to).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (status, _, used_by_first) = exchange(&mut first, &get("/peer", ""));
    assert_eq!(status, 200);
    // Busy: a second request right away keeps the same backend connection.
    let (_, _, again) = exchange(&mut first, &get("/peer", ""));
    assert_eq!(again, used_by_first);
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = TcpStream::connect(to).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (_, _, used_by_second) = exchange(&mut second, &get("/peer", ""));
    assert_eq!(
        used_by_second, used_by_first,
        "the idle client kept its backend connection"
    );
    // The first client, still open, is served again (over another connection).
    let (status, _, _) = exchange(&mut first, &get("/peer", ""));
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_is_served_again_timed_out_and_closed_at_the_drain() {
    // A plain keep-alive connection idle for a moment between requests is parked (its
    // task ends): it stays counted, its next request is served on the same connection
    // with its request count kept, its header timeout still closes it, and the drain
    // deadline closes it at once.
    use std::sync::atomic::Ordering::Relaxed;
    let backend = rust_backend().await;
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "[service.http]\nheader_timeout = \"1500ms\"\nmax_requests_per_connection = 3\n",
    ))
    .await;
    let to = addr_of(&d, "www");
    let service = d.service("www").unwrap().service;
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for n in 1..=3 {
        let (status, head, _) = exchange(&mut s, &get("/peer", ""));
        assert_eq!(status, 200, "request {n}");
        let closes = head.to_ascii_lowercase().contains("connection: close");
        assert_eq!(closes, n == 3, "request {n} of at most 3: {head}");
        if n < 3 {
            // Parked well before this.
            std::thread::sleep(Duration::from_millis(400));
            assert_eq!(
                service.stats.active.load(Relaxed),
                1,
                "counted while parked"
            );
            assert_eq!(d.open_connections(), 1, "tracked while parked");
        }
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after its last request");

    // The header timeout closes an idle connection, parked or not.
    let mut idle = TcpStream::connect(to).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(exchange(&mut idle, &get("/peer", "")).0, 200);
    let since = Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).unwrap(), 0, "closed by tandem");
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_secs(3),
        "closed {waited:?} after its response (header_timeout 1.5 s)"
    );
    wait_until(
        "the timed-out connection is let go",
        Duration::from_secs(2),
        || service.stats.active.load(Relaxed) == 0 && d.open_connections() == 0,
    )
    .await;

    // Draining: the drain deadline closes a parked connection at once (not at its
    // header timeout).
    let mut parked = TcpStream::connect(to).unwrap();
    parked
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(exchange(&mut parked, &get("/peer", "")).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let report = d.shutdown(Duration::from_millis(200)).await;
    let took = began.elapsed();
    assert_eq!(report.open_at_start, 1);
    assert_eq!(report.closed_at_deadline, 1);
    assert!(took < Duration::from_millis(1000), "drained in {took:?}");
    assert_eq!(
        parked.read(&mut byte).unwrap(),
        0,
        "closed at the drain deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_with_no_bytes_for_the_idle_timeout_is_closed_and_a_busy_one_is_not() {
    let backend = upgrading_backend().await;
    let d = start(&http_service(
        &backends(&[backend]),
        "",
        "idle_timeout = \"400ms\"\n",
    ))
    .await;
    let to = addr_of(&d, "www");
    let open = || {
        let (mut s, head) = ask_upgrade(to);
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let mut ready = [0u8; 6];
        s.read_exact(&mut ready).unwrap();
        assert_eq!(&ready, b"ready\n");
        s
    };
    // Busy: a byte each 100 ms for 1.2 s, three idle timeouts, each echoed.
    let mut busy = open();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(100));
        busy.write_all(b"x").unwrap();
        let mut echo = [0u8; 1];
        busy.read_exact(&mut echo).unwrap();
    }
    // Quiet: closed by tandem after about 400 ms.
    let mut quiet = open();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = quiet.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

/// A backend that answers each request with its head as the body.
async fn head_echo_backend() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    serve(|mut s, _| async move {
        while let Some(head) = read_request_head(&mut s).await {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len());
            if s.write_all(answer.as_bytes()).await.is_err() || s.write_all(&head).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_puts_the_header_s_client_in_the_forwarded_fields_on_both_paths() {
    let backend = head_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "www.example.test");
    let trust = "accept_proxy = true\naccept_proxy_from = [\"127.0.0.0/8\"]";
    let plain = http_service(&backends(&[backend]), "", trust);
    let tls = http_service(
        &backends(&[backend]),
        "",
        &format!("{trust}\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    )
    .replace("name = \"www\"", "name = \"wwws\"")
    .replace("[[pool]]\nname = \"web\"", "[[pool]]\nname = \"web2\"")
    .replace("pool = \"web\"", "pool = \"web2\"");
    let d = start(&(plain + &tls)).await;
    let to = addr_of(&d, "www");
    let v1 = |client: &str| {
        ppp::v1::Addresses::from((
            client.parse::<SocketAddr>().unwrap(),
            "192.0.2.1:80".parse::<SocketAddr>().unwrap(),
        ))
        .to_string()
    };
    // The fast path (a plain HTTP/1.1 GET), header and request in one segment; an
    // X-Forwarded-For from the client is appended to.
    let head = tokio::task::spawn_blocking({
        let header = v1("203.0.113.9:5555");
        move || {
            let mut s = TcpStream::connect(to).unwrap();
            let request = format!("{header}{}", get("/", "X-Forwarded-For: 10.9.9.9\r\n"));
            exchange(&mut s, &request).2.to_ascii_lowercase()
        }
    })
    .await
    .unwrap();
    assert!(
        head.contains("x-forwarded-for: 10.9.9.9, 203.0.113.9\r\n"),
        "{head}"
    );
    assert!(
        head.contains("forwarded: for=203.0.113.9;proto=http"),
        "{head}"
    );
    // The general path (HTTP/1.0), an IPv6 client in a v2 header.
    let head = tokio::task::spawn_blocking(move || {
        let mut header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::9]:5555".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:80".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        header.extend_from_slice(b"GET / HTTP/1.0\r\nHost: www.example.test\r\n\r\n");
        let mut s = TcpStream::connect(to).unwrap();
        s.write_all(&header).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(head.contains("x-forwarded-for: 2001:db8::9\r\n"), "{head}");
    assert!(
        head.contains("forwarded: for=\"[2001:db8::9]\";proto=http"),
        "{head}"
    );
    // TLS after the header: the header's client, and proto=https.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr_of(&d, "wwws"))
            .await
            .unwrap();
        tcp.write_all(v1("198.51.100.20:6000").as_bytes())
            .await
            .unwrap();
        let mut s = tls_over(tcp, "www.example.test", &cert).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.ok();
        let answer = answer.to_ascii_lowercase();
        assert!(
            answer.contains("x-forwarded-for: 198.51.100.20\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("forwarded: for=198.51.100.20;proto=https"),
            "{answer}"
        );
    }
    // Without a header, a listed source is refused all the same.
    let refused = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(to).unwrap();
        s.write_all(get("/", "").as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));
    let snapshot = d.snapshot();
    let www = snapshot.services.iter().find(|s| s.name == "www").unwrap();
    assert_eq!(www.proxy_refused.get("no_header"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_h2_streams_keep_their_backend_connections() {
    // 100 streams at once take 100 backend connections; their responses come back
    // together, and the next burst finds them all in the pool. (Capped at
    // backend_max_idle, 32, the pool closed the surplus to open it again: about 68 new
    // connections per burst.)
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let noted = seen.clone();
    let backend = hyper_backend(None, move |_req, peer| {
        let noted = noted.clone();
        async move {
            noted.lock().unwrap().insert(peer);
            tokio::time::sleep(Duration::from_millis(100)).await;
            text("ok\n")
        }
    })
    .await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let sender = h2_client(to).await;
    for burst in 0..3 {
        let streams: Vec<_> = (0..100)
            .map(|i| {
                let mut sender = sender.clone();
                let req = hyper::Request::get(format!("http://{to}/{i}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) })
            })
            .collect();
        for stream in streams {
            let status = stream.await.unwrap().unwrap();
            assert_eq!(status, 200, "burst {burst}");
        }
    }
    let connections = seen.lock().unwrap().len();
    assert!(
        (33..=130).contains(&connections),
        "{connections} backend connections for 3 bursts of 100 streams"
    );
}

/// An HTTP/2 (prior knowledge) client connection to `to`.
async fn h2_client(
    to: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_reuse_backend_connections_and_a_cut_response_fails_only_its_stream() {
    // A hand-written backend: /cut promises 100 bytes and closes after 7, /trailers
    // answers chunked with a trailer field, anything else "ok". It counts connections.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let backend = serve(move |mut s, _| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            use tokio::io::AsyncWriteExt;
            while let Some(head) = read_request_head(&mut s).await {
                let head = String::from_utf8_lossy(&head).to_string();
                let answer: &[u8] = if head.starts_with("GET /cut ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"
                } else if head.starts_with("GET /close ") {
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
                } else if head.starts_with("HEAD ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
                } else if head.starts_with("GET /trailers ") {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: abc\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                };
                let last = head.starts_with("GET /cut ") || head.starts_with("GET /close ");
                if s.write_all(answer).await.is_err() || last {
                    return;
                }
            }
        }
    })
    .await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let sender = h2_client(to).await;
    let ask = |path: &str| {
        let mut sender = sender.clone();
        let (method, path) = path.split_once(' ').unwrap_or(("GET", path));
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let collected = http_body_util::BodyExt::collect(resp.into_body()).await?;
            Ok::<_, hyper::Error>((status, collected))
        }
    };
    // Streams one after the other share one backend connection.
    for _ in 0..20 {
        let (status, body) = ask("/ok").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.to_bytes(), "ok\n");
    }
    let after_ok = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after_ok, 1, "backend connections for 20 streams in turn");
    // A response cut short fails its stream only: the streams beside it and after it
    // are answered on the same client connection.
    // (The stream is reset: its response head may be lost with it.)
    let (cut, beside) = tokio::join!(ask("/cut"), ask("/ok"));
    assert!(cut.is_err(), "a cut body ended as if whole");
    assert_eq!(beside.unwrap().1.to_bytes(), "ok\n");
    let (status, body) = ask("/ok").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.to_bytes(), "ok\n");
    // A chunked response arrives decoded, with its trailer field.
    let (status, body) = ask("/trailers").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body.trailers()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.to_str().unwrap()),
        Some("abc")
    );
    assert_eq!(body.to_bytes(), "hello, world");
    // A body that ends with the backend's connection; a HEAD response's head only, its
    // connection kept for the next stream.
    let (status, body) = ask("/close").await.unwrap();
    assert_eq!(
        (status.as_u16(), &body.to_bytes()[..]),
        (200, &b"until the end"[..])
    );
    let before = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let (status, body) = ask("HEAD /ok").await.unwrap();
    assert_eq!((status.as_u16(), body.to_bytes().len()), (200, 0));
    let (status, body) = ask("/ok").await.unwrap();
    assert_eq!((status.as_u16(), &body.to_bytes()[..]), (200, &b"ok\n"[..]));
    let after = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after - before <= 1,
        "{} connections for HEAD then GET",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_large_bodies_flow_both_ways() {
    // More than any flow-control window either way: 8 MiB down, 8 MiB up, on streams
    // of one client connection at the same time.
    let backend = rust_backend().await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let sender = h2_client(to).await;
    let mut down = sender.clone();
    let download = async move {
        let req = hyper::Request::get(format!("http://{to}/download?mib=8"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = down.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        body.to_bytes().len()
    };
    let mut up = sender.clone();
    let upload = async move {
        let req = hyper::Request::post(format!("http://{to}/upload"))
            .body(http_body_util::Full::new(bytes::Bytes::from(random_bytes(
                7,
                8 << 20,
            ))))
            .unwrap();
        let resp = up.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    };
    let (downloaded, uploaded) = tokio::join!(download, upload);
    assert_eq!(downloaded, 8 << 20);
    assert_eq!(uploaded, format!("{}\n", 8 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_mid_response_ends_alone_and_its_backend_connection_is_not_reused() {
    // /hold promises 1000 bytes, sends 5 and waits; the client takes the head and the 5
    // bytes, then drops the response (RST_STREAM CANCEL). The backend connection, in
    // the middle of a response, is closed, not pooled; a stream beside it, and the next
    // one on the same client connection, are answered.
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let closed = std::sync::Arc::new(AtomicUsize::new(0));
    let (counted, noted) = (accepted.clone(), closed.clone());
    let backend = serve(move |mut s, _| {
        counted.fetch_add(1, Relaxed);
        let noted = noted.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Some(head) = read_request_head(&mut s).await {
                if head.starts_with(b"GET /hold ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst")
                        .await;
                    let mut byte = [0u8; 1];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await
                    {
                        noted.fetch_add(1, Relaxed);
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let sender = h2_client(to).await;
    let get = |path: &str| {
        hyper::Request::get(format!("http://{to}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let mut held = sender.clone();
    let mut resp = held.send_request(get("/hold")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = http_body_util::BodyExt::frame(resp.body_mut())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let mut beside = sender.clone();
    let beside = tokio::spawn(async move {
        let resp = beside.send_request(get_ok(to)).await.unwrap();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
    });
    drop(resp);
    assert_eq!(beside.await.unwrap(), "ok\n");
    wait_until(
        "the reset stream's backend connection is closed",
        Duration::from_secs(3),
        || closed.load(Relaxed) == 1,
    )
    .await;
    let before = accepted.load(Relaxed);
    let mut next = sender.clone();
    let resp = next.send_request(get("/ok")).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "ok\n");
    // The next stream took the connection the stream beside left in the pool (or a new
    // one): never the reset one, which the backend saw closed.
    assert!(accepted.load(Relaxed) - before <= 1);
    assert_eq!(closed.load(Relaxed), 1);
}

fn get_ok(to: SocketAddr) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    hyper::Request::get(format!("http://{to}/ok"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_sends_h2_goaway_and_streams_in_flight_finish() {
    // A stream whose backend answers 800 ms late is in flight when the drain deadline
    // passes (200 ms): its response still arrives, whole; a stream the client starts
    // after the GOAWAY is refused, not served.
    let backend = hyper_backend(None, |req, _| async move {
        if req.uri().path() == "/late" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        text("late but whole\n")
    })
    .await;
    let d = start(&http_service(&backends(&[backend]), "", "")).await;
    let to = addr_of(&d, "www");
    let sender = h2_client(to).await;
    let mut early = sender.clone();
    let in_flight = tokio::spawn(async move {
        let req = hyper::Request::get(format!("http://{to}/late"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = early.send_request(req).await.unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        (status, body.to_bytes())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = tokio::spawn(async move {
        let report = d.shutdown(Duration::from_millis(200)).await;
        (report.open_at_start, report.closed_at_deadline)
    });
    // Well after the deadline (and GOAWAY's ping round trip), before the late answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = sender.clone();
    let after = tokio::time::timeout(Duration::from_secs(5), async move {
        let req = hyper::Request::get(format!("http://{to}/ok"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        late.send_request(req).await
    })
    .await
    .expect("a stream after GOAWAY got no answer at all");
    assert!(after.is_err(), "a stream begun after GOAWAY was served");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(
        (status.as_u16(), &body[..]),
        (200, &b"late but whole\n"[..])
    );
    assert_eq!(drain.await.unwrap(), (1, 1));
}
