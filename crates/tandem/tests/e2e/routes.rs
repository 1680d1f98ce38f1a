//! Routes end to end: curl and openssl through tandem to real loopback backends. Http
//! services choose a pool by host (exact, wildcard, default), path prefix, method and
//! header on the fast path, the general path (HTTP/1.0) and h2c alike; redirect and
//! respond routes answer themselves; a tcp service passes TLS through to the backend
//! the ClientHello's server name chooses; a reload changes the routes of new requests;
//! a route's `hsts` is sent over TLS (HTTP/1.1 and h2) and replaces the service's.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 backend (keep-alive) that answers every request with
/// `NAME METHOD TARGET`.
async fn http_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head (and its Content-Length body), bounded.
                    let (len, line, body) = loop {
                        let mut fields = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut fields);
                        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                            let body: usize = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                                .unwrap_or(0);
                            let line = format!(
                                "{name} {} {}\n",
                                req.method.unwrap_or("-"),
                                req.path.unwrap_or("-")
                            );
                            break (len, line, body);
                        }
                        if buf.len() > 64 * 1024 {
                            return;
                        }
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    while buf.len() < len + body {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..len + body);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{line}",
                        line.len()
                    );
                    if s.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    a
}

/// A TLS backend with a self-signed certificate for `name` (written to `dir`), which
/// answers one HTTP request with its name and closes; returns its address and the
/// certificate's file.
async fn tls_backend(dir: &Path, name: &'static str) -> (SocketAddr, String) {
    let (cert_file, key_file) = support::self_signed(dir, name);
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key_file).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(s)).await
                else {
                    return;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut chunk).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let body = format!("{name}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (a, cert_file)
}

/// curl's output (`-s`, bounded), run off the runtime's threads.
async fn curl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

fn pool(name: &str, at: SocketAddr) -> String {
    format!("[[pool]]\nname = \"{name}\"\nbackends = [{{ address = \"{at}\" }}]\n")
}

const HTTP_ROUTES: &str = r#"
[[service]]
name = "web"
listen = ["127.0.0.1:0"]
mode = "http"
pool = "default"

[[service.route]]
host = "www.example.test"
pool = "www"

[[service.route]]
host = "*.example.test"
path_prefix = "/down/"
respond = { status = 503, body = "<h1>Back soon</h1>\n", content_type = "text/html; charset=utf-8" }

[[service.route]]
host = "*.example.test"
pool = "wild"

[[service.route]]
path_prefix = "/api/"
method = ["POST", "PUT"]
pool = "api"

[[service.route]]
header = { name = "X-Canary", value = "1" }
pool = "canary"

[[service.route]]
host = "old.example.net"
redirect = { status = 308, location = "https://{host}{uri}" }
"#;

async fn http_daemon() -> tandem::daemon::Daemon {
    let mut text = String::new();
    for name in ["default", "www", "wild", "api", "canary"] {
        text.push_str(&pool(name, http_backend(name).await));
    }
    text.push_str(HTTP_ROUTES);
    support::start(&text).await
}

/// The ways curl reaches the two HTTP paths: HTTP/1.1 (fast path), HTTP/1.0 and h2c
/// (the general path, the latter HTTP/2).
const PATHS: [(&str, &str); 3] = [
    ("fast path", "--http1.1"),
    ("general path", "--http1.0"),
    ("h2c", "--http2-prior-knowledge"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_pool_of_their_route_on_every_path() {
    let daemon = http_daemon().await;
    let at = support::addr_of(&daemon, "web");
    let url = |path: &str| format!("http://{at}{path}");
    for (path_name, version) in PATHS {
        let get = |host: &str, path: &str, extra: &[&str]| {
            let mut args = vec![
                version.to_string(),
                "-H".to_string(),
                format!("Host: {host}"),
                url(path),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let cases: Vec<(Vec<String>, &str)> = vec![
            (get("www.example.test", "/a?b=1", &[]), "www GET /a?b=1\n"),
            (get("WWW.Example.Test:8080", "/", &[]), "www GET /\n"),
            (get("wiki.example.test", "/x", &[]), "wild GET /x\n"),
            (get("a.b.example.test", "/", &[]), "wild GET /\n"),
            (get("example.test", "/", &[]), "default GET /\n"),
            (get("other.test", "/api/v1", &[]), "default GET /api/v1\n"),
            (
                get("other.test", "/api/v1", &["-X", "POST", "-d", "x=1"]),
                "api POST /api/v1\n",
            ),
            (
                get("other.test", "/api/v1", &["-X", "PUT", "-d", "x=1"]),
                "api PUT /api/v1\n",
            ),
            (
                get("other.test", "/apiv1", &["-X", "POST", "-d", "x=1"]),
                "default POST /apiv1\n",
            ),
            (
                get("other.test", "/", &["-H", "X-Canary: 1"]),
                "canary GET /\n",
            ),
            (
                get("other.test", "/", &["-H", "X-Canary: 10"]),
                "default GET /\n",
            ),
            // In order: the host route comes before the header route.
            (
                get("www.example.test", "/", &["-H", "X-Canary: 1"]),
                "www GET /\n",
            ),
        ];
        for (args, want) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(curl(&args).await, want, "{path_name}: curl {args:?}");
        }
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_keeps_path_and_query_and_respond_serves_the_maintenance_page() {
    let daemon = http_daemon().await;
    let at = support::addr_of(&daemon, "web");
    for (path_name, version) in PATHS {
        let out = curl(&[
            version,
            "-i",
            "-H",
            "Host: old.example.net:8080",
            &format!("http://{at}/wiki/Main%20Page?action=edit&x=1"),
        ])
        .await;
        let lower = out.to_ascii_lowercase();
        assert!(
            lower.starts_with("http/1.1 308 permanent redirect\r\n")
                || lower.starts_with("http/1.0 308 permanent redirect\r\n")
                || lower.starts_with("http/2 308 \r\n"),
            "{path_name}: {out}"
        );
        assert!(
            lower.contains(
                "\r\nlocation: https://old.example.net/wiki/main%20page?action=edit&x=1\r\n"
            ),
            "{path_name}: {out}"
        );
        assert!(
            out.ends_with(
                "\r\n\r\n308 Permanent Redirect\nhttps://old.example.net/wiki/Main%20Page?action=edit&x=1\n"
            ),
            "{path_name}: {out}"
        );
        let out = curl(&[
            version,
            "-i",
            "-H",
            "Host: wiki.example.test",
            &format!("http://{at}/down/now"),
        ])
        .await;
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains(" 503 "), "{path_name}: {out}");
        assert!(
            lower.contains("\r\ncontent-type: text/html; charset=utf-8\r\n"),
            "{path_name}: {out}"
        );
        assert!(
            out.ends_with("\r\n\r\n<h1>Back soon</h1>\n"),
            "{path_name}: {out}"
        );
        // HEAD: the head only.
        let out = curl(&[
            version,
            "-I",
            "-H",
            "Host: wiki.example.test",
            &format!("http://{at}/down/now"),
        ])
        .await;
        assert!(out.contains(" 503"), "{path_name}: {out}");
        assert!(!out.contains("Back soon"), "{path_name}: {out}");
        // The same connection goes on after an answer of tandem's own.
        if version == "--http1.1" {
            let out = curl(&[
                version,
                "-H",
                "Host: wiki.example.test",
                &format!("http://{at}/down/x"),
                &format!("http://{at}/up"),
            ])
            .await;
            assert_eq!(out, "<h1>Back soon</h1>\nwild GET /up\n", "{path_name}");
        }
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_goes_to_the_backend_of_the_client_hellos_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_cert) = tls_backend(dir.path(), "a.example.test").await;
    let (b, b_cert) = tls_backend(dir.path(), "b.example.test").await;
    let (other, other_cert) = tls_backend(dir.path(), "other.test").await;
    let text = format!(
        "{}{}{}\n[[service]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\npool = \"other\"\n\
         [[service.route]]\nsni = \"a.example.test\"\npool = \"a\"\n\
         [[service.route]]\nsni = \"*.example.test\"\npool = \"b\"\n",
        pool("a", a),
        pool("b", b),
        pool("other", other)
    );
    let daemon = support::start(&text).await;
    let at = support::addr_of(&daemon, "tls");
    let port = at.port();
    // curl checks the certificate against the one backend's: only that backend's
    // handshake succeeds.
    for (name, ca, want) in [
        ("a.example.test", &a_cert, "a.example.test\n"),
        ("b.example.test", &b_cert, "b.example.test\n"),
        ("other.test", &other_cert, "other.test\n"),
    ] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let out = curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca,
            &format!("https://{name}:{port}/"),
        ])
        .await;
        assert_eq!(out, want, "{name}");
    }
    // The wildcard covers deeper names; a name under no route gets the default pool.
    for (name, subject) in [
        ("x.y.example.test", "b.example.test"),
        ("nothing.invalid", "other.test"),
    ] {
        let port = port.to_string();
        let connect = format!("127.0.0.1:{port}");
        let server_name = name.to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .args([
                    "10",
                    "openssl",
                    "s_client",
                    "-connect",
                    &connect,
                    "-servername",
                    &server_name,
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // rcgen names every self-signed subject alike: the served certificate is told
        // apart by comparing its PEM, which s_client prints, with the backend's file.
        let served = text
            .split("-----BEGIN CERTIFICATE-----")
            .nth(1)
            .and_then(|r| r.split("-----END CERTIFICATE-----").next())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<String>();
        let file = std::fs::read_to_string(dir.path().join(format!("{subject}.pem"))).unwrap();
        let expected = file
            .split("-----BEGIN CERTIFICATE-----")
            .nth(1)
            .and_then(|r| r.split("-----END CERTIFICATE-----").next())
            .unwrap()
            .split_whitespace()
            .collect::<String>();
        assert!(!served.is_empty(), "{name}: no certificate in {text}");
        assert_eq!(served, expected, "{name}");
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_routes_of_new_requests() {
    let mut pools = String::new();
    for name in ["default", "www", "wild"] {
        pools.push_str(&pool(name, http_backend(name).await));
    }
    let service = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"default\"\n";
    let before =
        format!("{pools}{service}[[service.route]]\nhost = \"www.example.test\"\npool = \"www\"\n");
    let daemon = support::start(&before).await;
    let at = support::addr_of(&daemon, "web");
    let ask = |host: &'static str| {
        let url = format!("http://{at}/r");
        async move { curl(&["-H", &format!("Host: {host}"), &url]).await }
    };
    assert_eq!(ask("www.example.test").await, "www GET /r\n");
    assert_eq!(ask("a.example.test").await, "default GET /r\n");
    // The same listen address: the reload keeps the service (and its socket).
    let after = format!(
        "{pools}{service}[[service.route]]\nhost = \"*.example.test\"\npool = \"wild\"\n[[service.route]]\npath_prefix = \"/\"\nredirect = {{ location = \"https://{{host}}{{uri}}\" }}\n"
    );
    daemon.apply(support::config(&after)).await.expect("reload");
    assert_eq!(ask("www.example.test").await, "wild GET /r\n");
    assert_eq!(ask("a.example.test").await, "wild GET /r\n");
    let out = curl(&[
        "-i",
        "-H",
        "Host: elsewhere.test",
        &format!("http://{at}/r?q"),
    ])
    .await;
    assert!(out.starts_with("HTTP/1.1 302 Found\r\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("\r\nlocation: https://elsewhere.test/r?q\r\n"),
        "{out}"
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_routes_by_its_authority() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::self_signed(dir.path(), "www.example.test");
    let mut text = String::new();
    for name in ["default", "www", "wild", "api", "canary"] {
        text.push_str(&pool(name, http_backend(name).await));
    }
    text.push_str(&HTTP_ROUTES.replace(
        "pool = \"default\"\n",
        &format!("pool = \"default\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
    ));
    let daemon = support::start(&text).await;
    let port = support::addr_of(&daemon, "web").port();
    for (name, want) in [
        ("www.example.test", "www GET /h2\n"),
        ("wiki.example.test", "wild GET /h2\n"),
    ] {
        let out = curl(&[
            "--http2",
            "-w",
            "%{http_version}",
            "--cacert",
            &cert,
            "--resolve",
            &format!("www.example.test:{port}:127.0.0.1"),
            // The certificate names www only: curl checks www's name, and sends the
            // Host asked for as :authority.
            "-H",
            &format!("Host: {name}"),
            &format!("https://www.example.test:{port}/h2"),
        ])
        .await;
        assert_eq!(out, format!("{want}2"), "{name}");
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

/// The Strict-Transport-Security value of a curl `-D -` response head, if any.
fn sts_of(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("strict-transport-security")
            .then(|| value.trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_a_route_option_sent_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::self_signed(dir.path(), "www.example.test");
    let mut text = pool("www", http_backend("www").await);
    let routes = "[[service.route]]\npath_prefix = \"/strict/\"\npool = \"www\"\nhsts = \"max-age=60; includeSubDomains\"\n\
[[service.route]]\npath_prefix = \"/plain/\"\npool = \"www\"\n";
    text.push_str(&format!(
        "[[service]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"www\"\n\
tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n{routes}\n\
[[service]]\nname = \"tls-service-hsts\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"www\"\n\
tls = {{ cert = \"{cert}\", key = \"{key}\" }}\nhttp = {{ hsts = \"300s\" }}\n{routes}\n\
[[service]]\nname = \"plain\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"www\"\n\
[[service.route]]\npath_prefix = \"/strict/\"\npool = \"www\"\n"
    ));
    let daemon = support::start(&text).await;
    let tls = support::addr_of(&daemon, "tls").port();
    let both = support::addr_of(&daemon, "tls-service-hsts").port();
    let plain = support::addr_of(&daemon, "plain");
    let strict = Some("max-age=60; includeSubDomains".to_string());
    let service = Some("max-age=300".to_string());
    // HTTP/1.1 over TLS is the fast path; h2 (ALPN) the hyper path.
    for (path_name, version, want_version) in
        [("fast path", "--http1.1", "1.1"), ("h2", "--http2", "2")]
    {
        for (port, path, want) in [
            (tls, "/strict/a", strict.clone()),
            (tls, "/plain/a", None),
            (tls, "/", None),
            (both, "/strict/a", strict.clone()),
            (both, "/plain/a", service.clone()),
            (both, "/", service.clone()),
        ] {
            let head = curl(&[
                version,
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-w",
                "version=%{http_version}",
                "--cacert",
                &cert,
                "--resolve",
                &format!("www.example.test:{port}:127.0.0.1"),
                &format!("https://www.example.test:{port}{path}"),
            ])
            .await;
            assert!(
                head.ends_with(&format!("version={want_version}")),
                "{path_name}: {head}"
            );
            assert_eq!(
                sts_of(&head),
                want,
                "{path_name} port {port} {path}: {head}"
            );
            let hsts = sts_of(&head);
            println!("{path_name} :{port}{path}: strict-transport-security {hsts:?}");
        }
        // Plain HTTP never carries it.
        let head = curl(&[
            if version == "--http2" {
                "--http2-prior-knowledge"
            } else {
                version
            },
            "-o",
            "/dev/null",
            "-D",
            "-",
            &format!("http://{plain}/strict/a"),
        ])
        .await;
        assert!(head.starts_with("HTTP/"), "{head}");
        assert_eq!(sts_of(&head), None, "plain {path_name}: {head}");
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_pool_keeps_its_own_sticky_cookie() {
    let (one, two) = (http_backend("one").await, http_backend("two").await);
    let text = format!(
        "{}[[pool]]\nname = \"app\"\nbackends = [{{ address = \"{one}\" }}, {{ address = \"{two}\" }}]\n\
         [pool.sticky]\nkey = \"cookie\"\ncookie = \"APPID\"\n\
         [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"default\"\n\
         [[service.route]]\nhost = \"app.example.test\"\npool = \"app\"\n",
        pool("default", http_backend("default").await)
    );
    let daemon = support::start(&text).await;
    let at = support::addr_of(&daemon, "web");
    let dir = tempfile::tempdir().unwrap();
    for (path_name, version) in PATHS {
        let jar = dir.path().join(format!("jar{}", version.len()));
        let jar = jar.to_str().unwrap();
        let ask = |with_jar: bool| {
            let mut args = vec![version, "-H", "Host: app.example.test"];
            if with_jar {
                args.extend(["-b", jar, "-c", jar]);
            }
            let url = format!("http://{at}/s");
            let args: Vec<String> = args.iter().map(|a| a.to_string()).chain([url]).collect();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&args).await
            }
        };
        // Without the cookie, the pool's round-robin answers with both.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(ask(false).await);
        }
        assert_eq!(seen.len(), 2, "{path_name}: {seen:?}");
        // With it, the first choice holds.
        let first = ask(true).await;
        assert!(
            first.starts_with("one ") || first.starts_with("two "),
            "{first}"
        );
        for _ in 0..4 {
            assert_eq!(ask(true).await, first, "{path_name}");
        }
        let cookies = std::fs::read_to_string(jar).unwrap();
        assert!(cookies.contains("APPID"), "{path_name}: {cookies}");
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn tandem_check_reports_shadowed_routes_and_unknown_pools_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n\
                [[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\n\
                [[service.route]]\nhost = \"*.example.org\"\npool = \"web\"\n\
                [[service.route]]\nhost = \"wiki.example.org\"\npool = \"wikki\"\n";
    let path = support::write_config(dir.path(), text);
    let out = Command::new(support::TANDEM)
        .args(["check", "--config", &path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!(
            "{path}:12:1: service.route: is never used: route 1 of this service"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{path}:14:8: service.route.pool: no pool is named \"wikki\""
        )),
        "{said}"
    );
}
