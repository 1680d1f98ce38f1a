//! Each check type against servers on loopback, including the faults that real servers
//! do not show on demand: silence, wrong answers, resets, slowness around the timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::{Check, CheckKind, ProxyProtocol, Step};
use tandem_health::Prober;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn step(send: Option<&str>, expect: &str) -> Step {
    Step {
        send: send.map(str::to_string),
        expect: expect.into(),
        starttls: false,
    }
}

fn starttls(send: &str, expect: &str) -> Step {
    Step {
        starttls: true,
        ..step(Some(send), expect)
    }
}

fn check(kind: CheckKind) -> Check {
    Check {
        timeout: Duration::from_millis(300),
        rise: 1,
        fall: 1,
        path: "/health".into(),
        ..Check::new(kind)
    }
}

/// A server that runs `behave` for every connection.
async fn server<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(behave(s));
        }
    });
    a
}

async fn read_request(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf[len..]).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        len += n;
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// An HTTP server answering `status` with `body`, after `delay`.
async fn http_server(status: u16, body: &'static str, delay: Duration) -> SocketAddr {
    server(move |mut s| async move {
        let request = read_request(&mut s).await;
        tokio::time::sleep(delay).await;
        let echo = if request.to_ascii_lowercase().contains("host: app.example") {
            "host-seen "
        } else {
            ""
        };
        let body = format!("{echo}{body}");
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(response.as_bytes()).await;
    })
    .await
}

async fn refused() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
    // dropped: connections are refused
}

async fn probe(c: &Check, target: SocketAddr) -> tandem_health::Probe {
    Prober::new(c).unwrap().probe(target).await
}

#[tokio::test]
async fn tcp_check_passes_on_connect_and_fails_on_refusal() {
    let up = server(|_s| async {}).await;
    assert!(probe(&check(CheckKind::Tcp), up).await.ok);
    let p = probe(&check(CheckKind::Tcp), refused().await).await;
    assert!(!p.ok);
    assert!(p.error.starts_with("connect: "), "{}", p.error);
    assert!(p.error.contains("refused"), "{}", p.error);
}

/// The sockets with `address` at either end in /proc/net/tcp, as their state (hex, "06"
/// is TIME_WAIT).
fn socket_states(address: SocketAddr) -> Vec<String> {
    let std::net::IpAddr::V4(ip) = address.ip() else {
        panic!("an IPv4 address");
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        address.port()
    );
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[1] == wanted || f[2] == wanted).then(|| f[3].to_string())
        })
        .collect()
}

#[tokio::test]
async fn a_tcp_check_ends_with_a_reset_and_leaves_no_time_wait() {
    // A backend that does not accept: what its kernel completes waits in the queue. On
    // an address of its own in 127/8, so that no other test's sockets count below.
    let ip = std::net::Ipv4Addr::new(127, fastrand::u8(2..255), fastrand::u8(..), 1);
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let backend = listener.local_addr().unwrap();
    for _ in 0..20 {
        let p = probe(&check(CheckKind::Tcp), backend).await;
        assert!(p.ok, "{}", p.error);
    }
    // The handshake's last ACK was held back and a reset sent instead: the backend's
    // kernel dropped the half-open connections, so nothing waits to be accepted. (On a
    // slow run the delayed ACK may go out first: such a connection must then have
    // been reset, never closed in order.)
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut byte = [0u8; 1];
                let read = std::io::Read::read(&mut s, &mut byte);
                assert_eq!(
                    read.map_err(|e| e.kind()),
                    Err(std::io::ErrorKind::ConnectionReset),
                    "a check connection the backend accepted must have been reset"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    // No socket of either end lingers (an orderly close leaves the checker's end in
    // TIME_WAIT for a minute).
    let states = socket_states(backend);
    assert_eq!(states, ["0A"], "only the listener (0A) is left: {states:?}");
}

#[tokio::test]
async fn a_tcp_check_whose_handshake_is_not_done_at_once_waits_for_it_within_its_timeout() {
    // A listener whose accept queue (backlog 0) is full drops further SYNs: the
    // check's connect stays under way until its SYN is sent again (after 1 s), so the
    // check cannot end at once and waits for the socket.
    let ip = std::net::Ipv4Addr::new(127, fastrand::u8(2..255), fastrand::u8(..), 2);
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    listener.listen(0).unwrap();
    let listener = std::net::TcpListener::from(listener);
    let backend = listener.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(backend).unwrap();
    let prober = Prober::new(&check(CheckKind::Tcp)).unwrap();
    assert!(
        matches!(prober.begin(backend), tandem_health::Begun::Connecting(..)),
        "the queue is full: the connect is under way"
    );
    let p = prober.probe(backend).await;
    assert!(!p.ok);
    assert_eq!(p.error, "timed out after 300ms connecting");
    // With room in the queue by the time the SYN goes again, the check passes.
    let mut patient = check(CheckKind::Tcp);
    patient.timeout = Duration::from_secs(5);
    let prober = Prober::new(&patient).unwrap();
    let tandem_health::Begun::Connecting(socket, started) = prober.begin(backend) else {
        panic!("the queue is still full");
    };
    let accepted = listener.accept().unwrap();
    drop((filler, accepted));
    let p = prober.finish(socket, started).await;
    assert!(p.ok, "{}", p.error);
    assert!(p.latency >= Duration::from_millis(500), "{:?}", p.latency);
}

#[tokio::test]
async fn http_check_judges_status_body_and_host() {
    let ok = http_server(200, "status: ok", Duration::ZERO).await;
    let unavailable = http_server(503, "busy", Duration::ZERO).await;
    let redirect = http_server(302, "", Duration::ZERO).await;
    let c = check(CheckKind::Http);
    assert!(probe(&c, ok).await.ok);
    assert!(probe(&c, redirect).await.ok, "3xx counts by default");
    assert_eq!(probe(&c, unavailable).await.error, "http status 503");
    let mut only_200 = check(CheckKind::Http);
    only_200.expect_status = vec![200];
    assert_eq!(probe(&only_200, redirect).await.error, "http status 302");
    let mut body = check(CheckKind::Http);
    body.expect_body = Some("ok".into());
    assert!(probe(&body, ok).await.ok);
    body.expect_body = Some("ready".into());
    assert_eq!(probe(&body, ok).await.error, "body lacks \"ready\"");
    let mut host = check(CheckKind::Http);
    host.host = Some("app.example".into());
    host.expect_body = Some("host-seen".into());
    assert!(probe(&host, ok).await.ok, "Host header sent");
}

#[tokio::test]
async fn slow_answers_pass_just_under_the_timeout_and_fail_just_over() {
    let c = check(CheckKind::Http); // timeout 300 ms
    let under = http_server(200, "ok", Duration::from_millis(150)).await;
    let over = http_server(200, "ok", Duration::from_millis(450)).await;
    let p = probe(&c, under).await;
    assert!(p.ok, "{}", p.error);
    assert!(p.latency >= Duration::from_millis(150));
    let p = probe(&c, over).await;
    assert_eq!(
        p.error,
        "timed out after 300ms waiting for the HTTP response"
    );
    assert!(p.latency >= Duration::from_millis(300) && p.latency < Duration::from_millis(420));
}

#[tokio::test]
async fn silence_and_resets_fail() {
    let silent = server(|s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let reset = server(|s| async move {
        let std = s.into_std().unwrap();
        socket2::SockRef::from(&std)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(std);
    })
    .await;
    for kind in [CheckKind::Http, CheckKind::SendExpect, CheckKind::Tls] {
        let mut c = check(kind);
        c.steps = vec![step(None, "^220 ")];
        let p = probe(&c, silent).await;
        let waiting = match kind {
            CheckKind::Http => "waiting for the HTTP response",
            CheckKind::SendExpect => "waiting for the banner",
            _ => "in the TLS handshake",
        };
        assert_eq!(
            p.error,
            format!("timed out after 300ms {waiting}"),
            "{kind:?}"
        );
        let p = probe(&c, reset).await;
        assert!(!p.ok, "{kind:?} passed against a reset");
    }
}

#[tokio::test]
async fn send_expect_matches_the_first_line_and_says_quit() {
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::unbounded_channel();
    let smtp = server(move |mut s| {
        let quit_tx = quit_tx.clone();
        async move {
            s.write_all(b"220 mx.example ESMTP ready\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut got)).await;
            let _ = quit_tx.send(String::from_utf8_lossy(&got).into_owned());
        }
    })
    .await;
    let wrong = server(|mut s| async move {
        let _ = s.write_all(b"554 go away\r\n").await;
    })
    .await;
    let mut c = check(CheckKind::SendExpect);
    c.steps = vec![step(None, "^220 ")];
    c.quit = Some("QUIT\r\n".into());
    assert!(probe(&c, smtp).await.ok);
    assert_eq!(quit_rx.recv().await.unwrap(), "QUIT\r\n");
    let p = probe(&c, wrong).await;
    assert_eq!(
        p.error,
        "the banner: answer \"554 go away\" does not match \"^220 \""
    );
    // send first, then the answer to it.
    let echo = server(|mut s| async move {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
    })
    .await;
    let mut ping = check(CheckKind::SendExpect);
    ping.steps = vec![step(Some("PING\r\n"), "^PING$")];
    assert!(probe(&ping, echo).await.ok);
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn tls_and_https_checks_against_a_rustls_server() {
    let acceptor = tls_acceptor();
    let a = acceptor.clone();
    let https = server(move |s| {
        let a = a.clone();
        async move {
            let Ok(mut tls) = a.accept(s).await else {
                return;
            };
            let mut buf = vec![0u8; 2048];
            let _ = tls.read(&mut buf).await;
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    let p = probe(&check(CheckKind::Tls), https).await;
    assert!(p.ok, "{}", p.error);
    let mut c = check(CheckKind::Https);
    c.expect_body = Some("ok".into());
    let p = probe(&c, https).await;
    assert!(p.ok, "{}", p.error);
    // A plain-text service on the port (an SMTP banner) fails the handshake.
    let plain = server(|mut s| async move {
        let _ = s.write_all(b"220 mx.example ESMTP\r\n").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let p = probe(&check(CheckKind::Tls), plain).await;
    assert!(p.error.starts_with("tls handshake"), "{}", p.error);
}

#[tokio::test]
async fn tls_verification_uses_the_ca_file() {
    let acceptor = tls_acceptor();
    let tls = server(move |s| {
        let a = acceptor.clone();
        async move {
            let _ = a.accept(s).await;
        }
    })
    .await;
    // Another CA: verification must fail.
    let other = rcgen::generate_simple_self_signed(vec!["other.test".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tandem-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let mut c = check(CheckKind::Tls);
    c.verify = true;
    c.ca_file = Some(ca);
    c.host = Some("backend.test".into());
    let p = probe(&c, tls).await;
    assert!(
        p.error.contains("tls handshake") && p.error.contains("certificate"),
        "{}",
        p.error
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn script_checks_get_the_backend_in_their_environment() {
    let dir = std::env::temp_dir().join(format!("tandem-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("check.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$TANDEM_BACKEND_PORT\" = 4242 ] && exit 0\necho \"port $TANDEM_BACKEND_PORT on $TANDEM_BACKEND_HOST is not 4242\" >&2\nexit 3\n",
    )
    .unwrap();
    let slow = dir.join("slow.sh");
    std::fs::write(&slow, "#!/bin/sh\nsleep 5\n").unwrap();
    for f in [&script, &slow] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = check(CheckKind::Script);
    c.command = Some(script);
    assert!(probe(&c, "127.0.0.1:4242".parse().unwrap()).await.ok);
    let p = probe(&c, "127.0.0.1:4243".parse().unwrap()).await;
    assert_eq!(p.error, "exit status 3: port 4243 on 127.0.0.1 is not 4242");
    c.command = Some(slow);
    let started = std::time::Instant::now();
    let p = probe(&c, "127.0.0.1:1".parse().unwrap()).await;
    assert_eq!(p.error, "timed out after 300ms waiting for the script");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a hung script is killed at the timeout"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An SMTP server of the test's own, for faults real servers do not show on demand:
/// multi-line answers, a STARTTLS that answers and then breaks, one that never
/// answers, bytes injected after the STARTTLS answer. `tls` upgrades after STARTTLS.
#[derive(Clone, Copy, PartialEq)]
enum Smtp {
    Good,
    BrokenTls,
    SilentStarttls,
    Injected,
}

async fn smtp_server(kind: Smtp, acceptor: tokio_rustls::TlsAcceptor) -> SocketAddr {
    server(move |mut s| {
        let acceptor = acceptor.clone();
        async move {
            let _ = s
                .write_all(b"220-mx.example ESMTP\r\n220-second line\r\n220 ready\r\n")
                .await;
            let mut line = String::new();
            let ehlo = b"250-mx.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n";
            loop {
                line.clear();
                if read_line(&mut s, &mut line).await == 0 {
                    return;
                }
                if line.starts_with("EHLO") {
                    let _ = s.write_all(ehlo).await;
                } else if line.starts_with("STARTTLS") {
                    match kind {
                        Smtp::SilentStarttls => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            return;
                        }
                        Smtp::Injected => {
                            let _ = s.write_all(b"220 go ahead\r\n250 injected\r\n").await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return;
                        }
                        Smtp::BrokenTls => {
                            let _ = s.write_all(b"220 go ahead\r\n").await;
                            let _ = s.write_all(b"this is not a TLS record\r\n").await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return;
                        }
                        Smtp::Good => {
                            let _ = s.write_all(b"220 go ahead\r\n").await;
                            let Ok(mut tls) = acceptor.accept(s).await else {
                                return;
                            };
                            let mut buf = [0u8; 512];
                            let Ok(n) = tls.read(&mut buf).await else {
                                return;
                            };
                            if buf[..n].starts_with(b"EHLO") {
                                let _ =
                                    tls.write_all(b"250-mx.example\r\n250 AUTH PLAIN\r\n").await;
                            }
                            let _ = tls.read(&mut buf).await;
                            return;
                        }
                    }
                } else {
                    let _ = s.write_all(b"221 bye\r\n").await;
                    return;
                }
            }
        }
    })
    .await
}

async fn read_line(s: &mut TcpStream, line: &mut String) -> usize {
    let mut byte = [0u8; 1];
    while s.read(&mut byte).await.unwrap_or(0) == 1 {
        line.push(byte[0] as char);
        if byte[0] == b'\n' {
            break;
        }
    }
    line.len()
}

fn smtp_check() -> Check {
    let mut c = check(CheckKind::SendExpect);
    c.steps = vec![
        step(None, "^220 "),
        step(Some("EHLO tandem.check\r\n"), "^250-STARTTLS"),
        starttls("STARTTLS\r\n", "^220 "),
        step(Some("EHLO tandem.check\r\n"), "^250 AUTH"),
    ];
    c.quit = Some("QUIT\r\n".into());
    c
}

#[tokio::test]
async fn smtp_starttls_conversation_reads_multi_line_answers_and_upgrades() {
    let good = smtp_server(Smtp::Good, tls_acceptor()).await;
    let p = probe(&smtp_check(), good).await;
    assert!(p.ok, "{}", p.error);
    let not_after = p.not_after.expect("the certificate was read");
    assert!(not_after > std::time::SystemTime::now());
    // Without the multi-line reading, "^220 " would meet "220-mx.example ESMTP".
    let mut banner_only = check(CheckKind::SendExpect);
    banner_only.steps = vec![step(None, "^220 ready$")];
    assert!(probe(&banner_only, good).await.ok);
    // An expectation the EHLO answer does not meet names its step.
    let mut c = smtp_check();
    c.steps[1].expect = "^250-SMTPUTF8".into();
    let p = probe(&c, good).await;
    assert_eq!(
        p.error,
        "the answer to EHLO: answer \"250 8BITMIME\" (last of 4 lines) does not match \"^250-SMTPUTF8\""
    );
}

#[tokio::test]
async fn broken_starttls_fails_with_its_reason() {
    let broken = smtp_server(Smtp::BrokenTls, tls_acceptor()).await;
    let p = probe(&smtp_check(), broken).await;
    assert!(
        p.error.starts_with("after STARTTLS: tls handshake"),
        "{}",
        p.error
    );
    let silent = smtp_server(Smtp::SilentStarttls, tls_acceptor()).await;
    let p = probe(&smtp_check(), silent).await;
    assert_eq!(
        p.error,
        "timed out after 300ms waiting for the answer to STARTTLS"
    );
    let injected = smtp_server(Smtp::Injected, tls_acceptor()).await;
    let p = probe(&smtp_check(), injected).await;
    assert_eq!(
        p.error,
        "14 bytes after the answer to STARTTLS, before the TLS handshake"
    );
}

#[tokio::test]
async fn imap_untagged_lines_come_before_the_tagged_answer() {
    let imap = server(|mut s| async move {
        let _ = s
            .write_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
            .await;
        let mut line = String::new();
        read_line(&mut s, &mut line).await;
        let _ = s
            .write_all(b"* CAPABILITY IMAP4rev1 STARTTLS\r\na1 OK Capability completed\r\n")
            .await;
        read_line(&mut s, &mut line).await;
    })
    .await;
    let mut c = check(CheckKind::SendExpect);
    c.steps = vec![
        step(None, "^\\* OK"),
        step(Some("a1 CAPABILITY\r\n"), "STARTTLS(?s:.*)^a1 OK"),
    ];
    let p = probe(&c, imap).await;
    assert!(p.ok, "{}", p.error);
}

/// A certificate for `backend.test` that ended on 2020-01-01.
fn expired_acceptor() -> tokio_rustls::TlsAcceptor {
    let mut params = rcgen::CertificateParams::new(vec!["backend.test".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn an_expired_certificate_fails_even_unverified() {
    let expired = smtp_server(Smtp::Good, expired_acceptor()).await;
    let p = probe(&smtp_check(), expired).await;
    assert!(
        p.error.starts_with("certificate expired") && p.error.contains("2020-01-01"),
        "{}",
        p.error
    );
    let acceptor = expired_acceptor();
    let tls = server(move |s| {
        let a = acceptor.clone();
        async move {
            let _ = a.accept(s).await;
        }
    })
    .await;
    let p = probe(&check(CheckKind::Tls), tls).await;
    assert!(p.error.starts_with("certificate expired"), "{}", p.error);
}

/// A server that requires a PROXY header first (as Postfix with
/// smtpd_upstream_proxy_protocol and Dovecot with haproxy = yes do), then greets.
async fn proxy_listener(headers: tokio::sync::mpsc::UnboundedSender<Vec<u8>>) -> SocketAddr {
    server(move |mut s| {
        let headers = headers.clone();
        async move {
            let mut buf = vec![0u8; 256];
            let n = match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            let head = buf[..n].to_vec();
            let v1 = head.starts_with(b"PROXY ");
            let v2 = ppp::v2::Header::try_from(&head[..]).is_ok();
            let _ = headers.send(head);
            if v1 || v2 {
                let _ = s.write_all(b"220 mx.example ESMTP\r\n").await;
                let _ = s.read(&mut buf).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn checks_send_the_local_proxy_header_of_their_service() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let postfix_like = proxy_listener(tx).await;
    let mut c = check(CheckKind::SendExpect);
    c.steps = vec![step(None, "^220 ")];
    // Without the header the server never greets and gives up (as Dovecot does).
    let p = probe(&c, postfix_like).await;
    assert_eq!(p.error, "the banner: closed without answering");
    assert!(rx.recv().await.unwrap().is_empty());
    c.send_proxy = ProxyProtocol::V2;
    let p = probe(&c, postfix_like).await;
    assert!(p.ok, "{}", p.error);
    let head = rx.recv().await.unwrap();
    let header = ppp::v2::Header::try_from(&head[..]).unwrap();
    assert_eq!(header.command, ppp::v2::Command::Local);
    assert_eq!(header.addresses, ppp::v2::Addresses::Unspecified);
    c.send_proxy = ProxyProtocol::V1;
    let p = probe(&c, postfix_like).await;
    assert!(p.ok, "{}", p.error);
    assert_eq!(rx.recv().await.unwrap(), b"PROXY UNKNOWN\r\n");
    // A tcp check sends the header and ends the connection cleanly.
    let mut tcp = check(CheckKind::Tcp);
    tcp.send_proxy = ProxyProtocol::V2;
    assert!(probe(&tcp, postfix_like).await.ok);
    assert!(ppp::v2::Header::try_from(&rx.recv().await.unwrap()[..]).is_ok());
}
