//! Each check type against servers on loopback, including the faults that real servers
//! do not show on demand: silence, wrong answers, resets, slowness around the timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::{Check, CheckKind};
use tandem_health::Prober;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    assert_eq!(p.error, "timed out after 300ms");
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
        c.expect = Some("^220 ".into());
        let p = probe(&c, silent).await;
        assert_eq!(p.error, "timed out after 300ms", "{kind:?}");
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
    c.expect = Some("^220 ".into());
    c.quit = Some("QUIT\r\n".into());
    assert!(probe(&c, smtp).await.ok);
    assert_eq!(quit_rx.recv().await.unwrap(), "QUIT\r\n");
    let p = probe(&c, wrong).await;
    assert_eq!(p.error, "answer \"554 go away\" does not match \"^220 \"");
    // send first, then the answer to it.
    let echo = server(|mut s| async move {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
    })
    .await;
    let mut ping = check(CheckKind::SendExpect);
    ping.send = Some("PING\r\n".into());
    ping.expect = Some("^PING$".into());
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
    assert_eq!(p.error, "timed out after 300ms");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a hung script is killed at the timeout"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
