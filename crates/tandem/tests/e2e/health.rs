//! Health checks end to end: a backend killed leaves the rotation before clients
//! notice, and comes back after `rise` passed checks once restarted.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend that writes its name, on a port it can be killed on and restarted on.
async fn serve_name(address: SocketAddr, name: &'static str) -> JoinHandle<()> {
    let l = TcpListener::bind(address).await.unwrap();
    serve_on(l, move |mut s, _| async move {
        let _ = s.write_all(format!("{name}\n").as_bytes()).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_the_rotation_and_returns_after_rise_checks() {
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        servers.push(serve_name(port, name).await);
        addrs.push(port);
    }
    // retries = 0: only health checks keep clients away from the dead backend.
    let text = format!(
        "[[pool]]\nname = \"p\"\nbackends = {}\ncheck = {{ type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\nretries = 0\n",
        backends_toml(&addrs, &[1, 1, 1])
    );
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let board = d.health();
    let pools = d.pools();
    let up = |i: usize| pools.get("p").unwrap().backends[i].state.is_healthy();
    // initial = down: every backend passes `rise` checks first.
    wait_until("all backends up", Duration::from_secs(3), || (0..3).all(up)).await;
    let mut changes = board.subscribe();

    servers[1].abort();
    let _ = (&mut servers[1]).await;
    let detected = wait_until("b detected down", Duration::from_secs(2), || !up(1)).await;
    // Two failing checks 200 ms apart, the first within one interval of the kill.
    assert!(
        detected <= Duration::from_millis(700),
        "detection took {detected:?}"
    );
    let t = changes.recv().await.unwrap();
    assert_eq!((t.backend, t.up, t.after), (addrs[1], false, 2));
    assert!(t.reason.starts_with("connect: "), "{}", t.reason);
    let last = board.get("p", addrs[1]).unwrap().last.unwrap();
    assert!(!last.ok && last.error.contains("refused"), "{last:?}");

    let counts = tally(to, 1000).await;
    assert_eq!(
        counts.values().sum::<usize>(),
        1000,
        "every client served: {counts:?}"
    );
    assert_eq!(
        counts.get("b"),
        None,
        "the dead backend got clients: {counts:?}"
    );
    assert!(counts["a"] == 500 && counts["c"] == 500, "{counts:?}");

    let restarted = Instant::now();
    servers[1] = serve_name(addrs[1], "b").await;
    wait_until("b back up", Duration::from_secs(2), || up(1)).await;
    let back = restarted.elapsed();
    // rise = 2 checks at 200 ms: between one and three intervals after the restart.
    assert!(
        back >= Duration::from_millis(200) && back <= Duration::from_millis(800),
        "back after {back:?}"
    );
    let t = changes.recv().await.unwrap();
    assert_eq!((t.backend, t.up, t.after), (addrs[1], true, 2));
    let counts: HashMap<String, usize> = tally(to, 300).await;
    assert_eq!(counts["b"], 100, "b back in rotation: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_while_every_primary_is_down_then_the_fallback_pool() {
    let primary = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backup = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sorry = name_server("sorry", false).await;
    let p = serve_name(primary, "primary").await;
    let b = serve_name(backup, "backup").await;
    let check = "check = { type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"up\" }";
    let text = format!(
        "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{primary}\" }}, {{ address = \"{backup}\", backup = true }}]\nfallback = \"sorry\"\n{check}\n\n\
[[pool]]\nname = \"sorry\"\nbackends = [{{ address = \"{sorry}\" }}]\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\nretries = 0\n"
    );
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    assert_eq!(tally(to, 5).await["primary"], 5);
    p.abort();
    let pools = d.pools();
    let web = pools.get("web").unwrap().clone();
    wait_until("primary down", Duration::from_secs(2), || {
        !web.backends[0].state.is_healthy()
    })
    .await;
    assert_eq!(tally(to, 5).await["backup"], 5);
    b.abort();
    wait_until("backup down", Duration::from_secs(2), || {
        !web.backends[1].state.is_healthy()
    })
    .await;
    assert_eq!(tally(to, 5).await["sorry"], 5);
}

/// A mail server behind a PROXY listener, as Postfix with
/// `smtpd_upstream_proxy_protocol = haproxy`: no greeting without a PROXY v2 header;
/// a LOCAL one (a check) is greeted plainly, a PROXY one with the client's address.
async fn proxy_mail_server() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    serve(|mut s, _| async move {
        let mut buf = vec![0u8; 512];
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        else {
            return; // "haproxy: Client disconnected"
        };
        let Ok(header) = ppp::v2::Header::try_from(&buf[..n]) else {
            return;
        };
        let greeting = match header.addresses {
            ppp::v2::Addresses::IPv4(a) => format!("220 hello {}\r\n", a.source_address),
            _ => "220 check\r\n".to_string(),
        };
        let _ = s.write_all(greeting.as_bytes()).await;
        let _ = s.read(&mut buf).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_send_the_proxy_header_their_service_sends() {
    let backend = proxy_mail_server().await;
    let text = |extra: &str| {
        format!(
            "[[pool]]\nname = \"smtp\"\nbackends = [{{ address = \"{backend}\" }}]\n\
check = {{ type = \"send-expect\", expect = \"^220 \", quit = \"QUIT\\r\\n\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 1{extra} }}\n\n\
[[service]]\nname = \"smtp\"\nlisten = [\"127.0.0.1:0\"]\npool = \"smtp\"\nproxy_protocol = \"v2\"\n"
        )
    };
    let d = start(&text("")).await;
    let pools = d.pools();
    let up = || pools.get("smtp").unwrap().backends[0].state.is_healthy();
    wait_until("the PROXY backend up", Duration::from_secs(2), up).await;
    let mut client = tokio::net::TcpStream::connect(addr_of(&d, "smtp"))
        .await
        .unwrap();
    let greeting = read_name(&mut client).await.trim_end().to_string();
    assert_eq!(greeting, "220 hello 127.0.0.1");
    drop(d);

    // What the issue saw before: a check without the header never sees a greeting.
    let d = start(&text(", send_proxy = false")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let health = d.health().get("smtp", backend).unwrap();
    assert!(!health.up);
    // The server waits 300 ms for the header; the check gives up at its timeout.
    assert_eq!(
        health.last.unwrap().error,
        "timed out after 150ms waiting for the banner"
    );
    assert!(health.failures >= 2, "{}", health.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_is_pending_until_its_checks_decide() {
    let alive = name_server("alive", false).await;
    let dead = dead_address().await;
    let text = format!(
        "[[pool]]\nname = \"p\"\nbackends = {}\ncheck = {{ type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 3, fall = 3 }}\n\n\
[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n",
        backends_toml(&[alive, dead], &[1, 1])
    );
    let d = start(&text).await;
    let health = |d: &tandem::daemon::Daemon| -> Vec<String> {
        d.snapshot().pools[0]
            .backends
            .iter()
            .map(|b| b.health.clone())
            .collect()
    };
    // Both start "down" (initial), but neither has been judged: pending, not down.
    assert_eq!(health(&d), ["pending", "pending"]);
    wait_until("both decided", Duration::from_secs(3), || {
        health(&d) == ["up", "down"]
    })
    .await;
}
