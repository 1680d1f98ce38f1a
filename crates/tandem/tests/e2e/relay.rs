//! The TCP relay end to end on loopback: real clients, real backends, tandem between.

use crate::support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn service(listen_pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"svc\"\nlisten = [\"127.0.0.1:0\"]\npool = \"{listen_pool}\"\nconnect_timeout = \"1s\"\n{extra}\n"
    )
}

fn pool(name: &str, balance: &str, backends: &str, extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nbalance = \"{balance}\"\nbackends = {backends}\n{extra}\n"
    )
}

async fn three_named(hold: bool) -> Vec<std::net::SocketAddr> {
    vec![
        name_server("a", hold).await,
        name_server("b", hold).await,
        name_server("c", hold).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_exactly() {
    let backends = three_named(false).await;
    let text = pool(
        "p",
        "round-robin",
        &backends_toml(&backends, &[1, 2, 3]),
        "",
    ) + &service("p", "");
    let d = start(&text).await;
    let counts = tally(addr_of(&d, "svc"), 600).await;
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (100, 200, 300),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights() {
    let backends = three_named(false).await;
    let text = pool("p", "random", &backends_toml(&backends, &[1, 2, 3]), "") + &service("p", "");
    let d = start(&text).await;
    let n = 3000;
    let counts = tally(addr_of(&d, "svc"), n).await;
    for (name, weight) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        let share = counts[name] as f64 / n as f64;
        assert!(
            (share - weight / 6.0).abs() < 0.05,
            "{name}: {share:.3} ({counts:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_fills_by_weight_while_connections_stay_open() {
    let backends = three_named(true).await;
    let text =
        pool("p", "least-conn", &backends_toml(&backends, &[1, 2, 3]), "") + &service("p", "");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let mut held = Vec::new();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(to).await.unwrap();
        *counts.entry(read_name(&mut s).await).or_default() += 1;
        held.push(s);
    }
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (10, 20, 30),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_algorithms_spread_clients_by_weight_and_keep_each_on_one_backend() {
    for balance in ["source-hash", "maglev"] {
        let backends = three_named(false).await;
        let text =
            pool("p", balance, &backends_toml(&backends, &[1, 1, 2]), "") + &service("p", "");
        let d = start(&text).await;
        let to = addr_of(&d, "svc");
        let mut counts = std::collections::HashMap::<String, usize>::new();
        let clients = 800u32;
        for n in 0..clients {
            let ip = IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + n * 7 + 1));
            let first = name_via(to, Some(ip)).await;
            // The same client lands on the same backend again.
            assert_eq!(
                name_via(to, Some(ip)).await,
                first,
                "{balance}: client {ip} moved"
            );
            *counts.entry(first).or_default() += 1;
        }
        for (name, share) in [("a", 0.25), ("b", 0.25), ("c", 0.5)] {
            let got = counts[name] as f64 / clients as f64;
            assert!(
                (got - share).abs() < 0.07,
                "{balance} {name}: {got:.3} ({counts:?})"
            );
        }
        d.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_stay_for_the_ttl_and_are_rebalanced_after_it() {
    let backends = three_named(false).await;
    let sticky = "sticky = { key = \"source-ip\", ttl = \"1s\" }";
    let text = pool(
        "p",
        "round-robin",
        &backends_toml(&backends, &[1, 1, 1]),
        sticky,
    ) + &service("p", "");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let alice = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
    let bob = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
    // Round-robin order is a, b, c: alice takes a, bob takes b, the next new pick is c.
    assert_eq!(name_via(to, Some(alice)).await, "a");
    assert_eq!(name_via(to, Some(bob)).await, "b");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            name_via(to, Some(alice)).await,
            "a",
            "alice left her backend within the TTL"
        );
    }
    let table = d.pools().get("p").unwrap().sticky.clone().unwrap();
    assert_eq!(table.len(), 2);
    // Idle for longer than the TTL: the sweeper removes both entries.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(table.len(), 0, "expired entries were not swept");
    assert_eq!(
        name_via(to, Some(alice)).await,
        "c",
        "after the TTL the algorithm chooses again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_skipped_and_no_client_sees_an_error() {
    let dead = dead_address().await;
    let a = name_server("a", false).await;
    let b = name_server("b", false).await;
    let text = pool(
        "p",
        "round-robin",
        &backends_toml(&[a, dead, b], &[1, 1, 1]),
        "",
    ) + &service("p", "retries = 2");
    let d = start(&text).await;
    let counts = tally(addr_of(&d, "svc"), 300).await;
    assert_eq!(
        counts.values().sum::<usize>(),
        300,
        "every client got an answer: {counts:?}"
    );
    assert!(counts["a"] >= 100 && counts["b"] >= 100, "{counts:?}");
    let pools = d.pools();
    let dead_state = &pools.get("p").unwrap().backend(&dead).unwrap().state;
    assert!(
        dead_state.connect_errors() >= 100,
        "errors counted: {}",
        dead_state.connect_errors()
    );
    assert_eq!(
        d.service("svc")
            .unwrap()
            .service
            .stats
            .no_backend
            .load(Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_backend_closes_the_client_and_counts_it() {
    let (x, y) = (dead_address().await, dead_address().await);
    let text = pool("p", "round-robin", &backends_toml(&[x, y], &[1, 1]), "")
        + &service("p", "retries = 5");
    let d = start(&text).await;
    let mut s = TcpStream::connect(addr_of(&d, "svc")).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)));
    let stats = &d.service("svc").unwrap().service.stats;
    assert_eq!(stats.no_backend.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_transfers_of_one_mib_each_way_arrive_intact() {
    const SIZE: usize = 1 << 20;
    let (b1, h1) = hashing_server(SIZE).await;
    let (b2, h2) = hashing_server(SIZE).await;
    let text = pool("p", "least-conn", &backends_toml(&[b1, b2], &[1, 1]), "") + &service("p", "");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let started = Instant::now();
    let clients: Vec<_> = (0..200u64)
        .map(|id| {
            tokio::spawn(async move {
                let s = TcpStream::connect(to).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let data = random_bytes(id, SIZE);
                let sent = sha256(&data);
                let send = async move {
                    w.write_u64(id).await.unwrap();
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let receive = async move {
                    let mut got = Vec::with_capacity(SIZE);
                    r.read_to_end(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::join!(send, receive);
                assert_eq!(got.len(), SIZE, "client {id} received {} bytes", got.len());
                (id, sent, sha256(&got))
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in clients {
        results.push(
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .expect("transfer done")
                .unwrap(),
        );
    }
    let elapsed = started.elapsed();
    // The backend records after the client has read everything: wait for the last ones.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (h1, h2) = (h1.lock().unwrap(), h2.lock().unwrap());
    assert_eq!(h1.len() + h2.len(), 200);
    assert!(
        h1.len() >= 50 && h2.len() >= 50,
        "least-conn spread: {} / {}",
        h1.len(),
        h2.len()
    );
    for (id, sent, received) in results {
        let (backend_rx, backend_tx) = h1
            .get(&id)
            .or_else(|| h2.get(&id))
            .copied()
            .expect("backend saw the client");
        assert_eq!(backend_rx, sent, "client {id}: bytes to backend corrupted");
        assert_eq!(
            backend_tx, received,
            "client {id}: bytes to client corrupted"
        );
    }
    println!("200 x 1 MiB each way in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_exchanges_and_bulk_transfers_alternate_on_one_connection_intact() {
    // Each direction copies small chunks through user space and splices bulk ones,
    // switching as the chunks change size: an echo session that alternates one-line
    // commands with multi-MiB transfers must get every byte back, in order, each time.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "") + &service("p", "");
    let d = start(&text).await;
    let s = TcpStream::connect(addr_of(&d, "svc")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sizes = [
        12,
        3 << 20,
        40,
        7,
        16 * 1024,
        16 * 1024 + 1,
        5,
        (1 << 20) + 3,
        1,
    ];
    for (round, size) in sizes.into_iter().enumerate() {
        let data = random_bytes(round as u64, size);
        let send = async { w.write_all(&data).await.unwrap() };
        let receive = async {
            let mut got = vec![0; size];
            tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
                .await
                .expect("echo within 10 s")
                .unwrap();
            got
        };
        let ((), got) = tokio::join!(send, receive);
        assert!(
            got == data,
            "round {round} ({size} bytes) came back changed"
        );
    }
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "{} stray bytes after the last echo",
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_client_receive_the_whole_response() {
    // The backend answers only after the request ended, as many request/response
    // protocols do: the client's shutdown must reach it while its answer still flows back.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                s.read_to_end(&mut request).await.unwrap();
                let response = random_bytes(request.len() as u64, 3 << 20);
                s.write_all(&sha256(&request)).await.unwrap();
                s.write_all(&response).await.unwrap();
            });
        }
    });
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "") + &service("p", "");
    let d = start(&text).await;
    let mut s = TcpStream::connect(addr_of(&d, "svc")).await.unwrap();
    let request = random_bytes(7, 300_000);
    s.write_all(&request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.len(), 32 + (3 << 20));
    assert_eq!(
        answer[..32],
        sha256(&request),
        "backend got the whole request"
    );
    assert_eq!(
        answer[32..],
        random_bytes(request.len() as u64, 3 << 20)[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_keeps_the_client_direction_open() {
    // A backend that sends its banner and shuts down its write side still gets the
    // client's data and can answer with a count after the client ends.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let std = s.into_std().unwrap();
        std.shutdown(std::net::Shutdown::Write).unwrap();
        let s = TcpStream::from_std(std).unwrap();
        let mut s = s;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 500_000);
    });
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "") + &service("p", "");
    let d = start(&text).await;
    let mut s = TcpStream::connect(addr_of(&d, "svc")).await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).await.unwrap(),
        0,
        "backend's EOF reaches the client"
    );
    s.write_all(&vec![7u8; 500_000]).await.unwrap();
    s.shutdown().await.unwrap();
    // The relay ends once both directions are done.
    let svc = d.service("svc").unwrap().service.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while svc.stats.active.load(Relaxed) > 0 {
        assert!(Instant::now() < deadline, "relay did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pools = d.pools();
    assert_eq!(
        pools
            .get("p")
            .unwrap()
            .backend(&backend)
            .unwrap()
            .state
            .bytes()
            .0,
        500_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_limit_closes_excess_connections_at_once() {
    let a = name_server("a", true).await;
    let text =
        pool("p", "round-robin", &backends_toml(&[a], &[1]), "") + &service("p", "max_conns = 5");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(to).await.unwrap();
        assert_eq!(read_name(&mut s).await, "a");
        held.push(s);
    }
    let started = Instant::now();
    let mut sixth = TcpStream::connect(to).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), sixth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "6th connection got data: {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let stats = &d.service("svc").unwrap().service.stats;
    assert_eq!(stats.rejected.load(Relaxed), 1);
    // A slot frees when a held connection closes.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.active.load(Relaxed) >= 5 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = TcpStream::connect(to).await.unwrap();
    assert_eq!(read_name(&mut again).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_limit_sends_excess_to_other_backends_then_closes() {
    let a = name_server("a", true).await;
    let b = name_server("b", true).await;
    let backends =
        format!("[{{ address = \"{a}\", max_conns = 2 }}, {{ address = \"{b}\", max_conns = 1 }}]");
    let text = pool("p", "round-robin", &backends, "") + &service("p", "");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(to).await.unwrap();
        names.push(read_name(&mut s).await);
        held.push(s);
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b"]);
    let mut fourth = TcpStream::connect(to).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(
        d.service("svc")
            .unwrap()
            .service
            .stats
            .no_backend
            .load(Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_reach_the_backend() {
    for version in ["v1", "v2"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
            + &service("p", &format!("proxy_protocol = \"{version}\""));
        let d = start(&text).await;
        let listen = addr_of(&d, "svc");
        let mut client = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 42)), listen).await;
        let client_port = client.local_addr().unwrap().port();
        client.write_all(b"hello").await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = vec![0u8; 256];
        let mut len = 0;
        while !got[..len].ends_with(b"hello") {
            len += s.read(&mut got[len..]).await.unwrap();
        }
        let header = &got[..len - 5];
        if version == "v1" {
            let expect = format!(
                "PROXY TCP4 127.0.0.42 127.0.0.1 {client_port} {}\r\n",
                listen.port()
            );
            assert_eq!(String::from_utf8_lossy(header), expect);
        } else {
            let h = ppp_v2(header);
            assert_eq!(h, (format!("127.0.0.42:{client_port}"), listen.to_string()));
        }
    }
}

fn ppp_v2(bytes: &[u8]) -> (String, String) {
    // Signature, version/command, family, length, then the IPv4 addresses and ports.
    assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(bytes[12], 0x21, "v2 PROXY");
    assert_eq!(bytes[13], 0x11, "TCP over IPv4");
    let a = &bytes[16..];
    let src = format!(
        "{}.{}.{}.{}:{}",
        a[0],
        a[1],
        a[2],
        a[3],
        u16::from_be_bytes([a[8], a[9]])
    );
    let dst = format!(
        "{}.{}.{}.{}:{}",
        a[4],
        a[5],
        a[6],
        a[7],
        u16::from_be_bytes([a[10], a[11]])
    );
    (src, dst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service("p", "idle_timeout = \"400ms\"");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let mut busy = TcpStream::connect(to).await.unwrap();
    let mut quiet = TcpStream::connect(to).await.unwrap();
    let started = Instant::now();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        busy.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        busy.read_exact(&mut buf)
            .await
            .expect("busy connection stays open");
    }
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(2), quiet.read(&mut buf))
        .await
        .expect("quiet one closed");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// Whether tandem closed `s` at once without relaying anything.
async fn closed_at_once(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_close_only_the_excess_of_that_client() {
    let a = name_server("a", true).await;
    let text = pool("p", "round-robin", &backends_toml(&[a], &[1]), "")
        + &service("p", "max_conns_per_client = 2\nrate_per_client = 4");
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let one: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    let two: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(one, to).await;
        assert_eq!(read_name(&mut s).await, "a");
        held.push(s);
    }
    // A third at once from the same address is over its count...
    assert!(closed_at_once(connect_from(one, to).await).await);
    // ...another address is not limited by it.
    assert_eq!(name_via(to, Some(two)).await, "a");
    let stats = &d.service("svc").unwrap().service.stats;
    assert_eq!(stats.client_limited.load(Relaxed), 1);

    // Rate: 4 per second with a burst of 4; address two used one already.
    let mut served = 1;
    let mut refused = 0;
    for _ in 0..6 {
        let mut s = connect_from(two, to).await;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await {
            Ok(Ok(1)) => served += 1,
            _ => refused += 1,
        }
    }
    assert_eq!(
        (served, refused),
        (4, 3),
        "the burst is 4, the 5th to 7th are refused"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        name_via(to, Some(two)).await,
        "a",
        "tokens come back with time"
    );
    assert_eq!(stats.client_limited.load(Relaxed), 4);
    let snapshot = d.snapshot();
    assert_eq!(snapshot.services[0].client_limited, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_limit_closes_connections_past_global_max_conns_on_every_service() {
    let a = name_server("a", true).await;
    let text = format!(
        "[global]\nmax_conns = 3\n{}{}[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n",
        pool("p", "round-robin", &backends_toml(&[a], &[1]), ""),
        service("p", "")
    );
    let d = start(&text).await;
    let (svc, other) = (addr_of(&d, "svc"), addr_of(&d, "other"));
    let mut held = Vec::new();
    for to in [svc, svc, other] {
        let mut s = TcpStream::connect(to).await.unwrap();
        assert_eq!(read_name(&mut s).await, "a");
        held.push(s);
    }
    assert!(closed_at_once(TcpStream::connect(other).await.unwrap()).await);
    assert!(closed_at_once(TcpStream::connect(svc).await.unwrap()).await);
    let snapshot = d.snapshot();
    let limited: u64 = snapshot.services.iter().map(|s| s.node_limited).sum();
    assert_eq!(limited, 2);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(svc).await.unwrap();
        let mut byte = [0u8; 1];
        if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a slot frees when a connection ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plaintext backend such as an IMAP server behind a TLS front: greets, echoes what
/// it gets, and when the client's input ends says "bye" and closes. The first bytes of
/// each connection (up to its first line) go to the returned channel.
async fn greeting_echo_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let a = serve(move |mut s, _| {
        let tx = tx.clone();
        async move {
            s.write_all(b"* OK plaintext backend\r\n").await.unwrap();
            let mut first = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                if !first.ends_with(b"\n") && first.len() < 256 {
                    first.extend_from_slice(&buf[..n.min(256)]);
                    if first.contains(&b'\n') {
                        let _ = tx.send(first.clone());
                    }
                }
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"bye\r\n").await;
        }
    })
    .await;
    (a, rx)
}

/// Reads one line (through its LF) from `s`.
async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("a line within 5 s")
            .unwrap();
        assert_eq!(n, 1, "ended after {:?}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    String::from_utf8(out).unwrap()
}

fn tls_toml(certs: &[&(String, String)]) -> String {
    let pairs: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = \"{c}\", key = \"{k}\" }}"))
        .collect();
    format!("tls = {{ certs = [{}] }}", pairs.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_for_tcp_services_and_the_plaintext_goes_both_ways_intact() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "imap.a.test");
    let b = self_signed(dir.path(), "imap.b.test");
    let (backend, mut first) = greeting_echo_server().await;
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service("p", &tls_toml(&[&a, &b]));
    let d = start(&text).await;
    let to = addr_of(&d, "svc");

    // SNI picks the certificate: each name verifies against its own only.
    for (name, (cert, _)) in [("imap.a.test", &a), ("imap.b.test", &b)] {
        let mut s = tls_connect(to, name, cert).await.expect("handshake");
        assert_eq!(read_line(&mut s).await, "* OK plaintext backend\r\n");
        s.write_all(b"a1 CAPABILITY\r\n").await.unwrap();
        assert_eq!(read_line(&mut s).await, "a1 CAPABILITY\r\n");
        assert_eq!(
            first.recv().await.unwrap(),
            b"a1 CAPABILITY\r\n",
            "the backend got the plaintext"
        );
    }
    assert!(
        tls_connect(to, "imap.b.test", &a.0).await.is_err(),
        "imap.b.test was served imap.a.test's certificate"
    );

    // 8 MiB up while the echo comes down, then the client half-closes (close_notify):
    // the backend sees the end, and its last words still reach the client.
    let s = tls_connect(to, "imap.a.test", &a.0).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    assert_eq!(read_line(&mut r).await, "* OK plaintext backend\r\n");
    const SIZE: usize = 8 << 20;
    let data = random_bytes(7, SIZE);
    let send = async {
        for piece in data.chunks(100_000) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let receive = async {
        let mut got = Vec::with_capacity(SIZE + 16);
        tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
            .await
            .expect("the echo within 60 s")
            .unwrap();
        got
    };
    let ((), got) = tokio::join!(send, receive);
    assert_eq!(got.len(), SIZE + 5, "all of it came back, then bye");
    assert!(
        sha256(&got[..SIZE]) == sha256(&data),
        "bytes changed on the way"
    );
    assert_eq!(&got[SIZE..], b"bye\r\n");
    let stats = &d.service("svc").unwrap().service.stats;
    assert_eq!(
        stats.tls_handshake_errors.load(Relaxed),
        1,
        "only the wrong-name one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_speaks_imaps_to_a_plaintext_imap_backend_through_tandem() {
    // A tiny plaintext IMAP server: greeting, CAPABILITY, LOGOUT.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"* OK [CAPABILITY IMAP4rev1] plaintext imap ready\r\n")
            .await
            .unwrap();
        loop {
            let line = read_line(&mut s).await;
            let _ = seen_tx.send(line.clone());
            let tag = line.split(' ').next().unwrap().to_string();
            if line.contains("CAPABILITY") {
                s.write_all(
                    format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n").as_bytes(),
                )
                .await
                .unwrap();
            } else {
                s.write_all(format!("* BYE logging out\r\n{tag} OK bye\r\n").as_bytes())
                    .await
                    .unwrap();
                return;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "mail.example.test");
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service("p", &tls_toml(&[&cert]));
    let d = start(&text).await;
    let port = addr_of(&d, "svc").port();
    let script = format!(
        "import imaplib, ssl\n\
ctx = ssl.create_default_context(cafile={ca:?})\n\
ctx.check_hostname = False\n\
m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx, timeout=10)\n\
print(m.welcome.decode())\n\
print(m.capability())\n\
print(m.sock.version())\n\
print(m.logout())\n",
        ca = cert.0
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "imaplib failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("* OK [CAPABILITY IMAP4rev1] plaintext imap ready"),
        "{stdout}"
    );
    assert!(stdout.contains("AUTH=PLAIN"), "{stdout}");
    assert!(stdout.contains("BYE"), "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(seen.recv().await.unwrap().ends_with(" CAPABILITY\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_are_counted_and_other_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "pop.test");
    let (backend, _first) = greeting_echo_server().await;
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service("p", &tls_toml(&[&cert]));
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let mut good = tls_connect(to, "pop.test", &cert.0).await.unwrap();
    assert_eq!(read_line(&mut good).await, "* OK plaintext backend\r\n");

    // What such a client gets: at most a TLS alert, then the end; never the backend.
    let ends_unserved = |mut s: TcpStream| async move {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
            .await
            .expect("closed")
            .ok();
        assert!(got.len() < 64 && !got.starts_with(b"* OK"), "{got:?}");
    };
    // Plain text where a TLS hello should be: closed at once, no backend asked.
    let mut plain = TcpStream::connect(to).await.unwrap();
    plain.write_all(b"USER alice\r\n").await.unwrap();
    ends_unserved(plain).await;
    // Silence: closed at the handshake's bound (connect_timeout = 1s here).
    let started = Instant::now();
    ends_unserved(TcpStream::connect(to).await.unwrap()).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );

    good.write_all(b"STAT\r\n").await.unwrap();
    assert_eq!(
        read_line(&mut good).await,
        "STAT\r\n",
        "the good one goes on"
    );
    let snapshot = d.snapshot();
    assert_eq!(snapshot.services[0].tls_handshake_errors, 2);
    let metrics = tandem_control::metrics::encode(&snapshot);
    assert!(
        metrics.contains("tandem_service_tls_handshake_errors_total{service=\"svc\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        d.pools().get("p").unwrap().backends[0].state.total(),
        1,
        "only the good client reached the backend"
    );
}

/// A TLS service for `name` (certificate in `dir`, `extra` lines added) that sends a
/// PROXY v2 header to its one backend, a listener the test accepts on itself.
async fn tls_v2_service(
    dir: &std::path::Path,
    name: &str,
    extra: &str,
) -> (tandem::daemon::Daemon, TcpListener, (String, String)) {
    let cert = self_signed(dir, name);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service(
            "p",
            &format!("{}\nproxy_protocol = \"v2\"{extra}", tls_toml(&[&cert])),
        );
    (start(&text).await, l, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_header_after_tls_carries_the_sni_and_the_ssl_tlvs() {
    let dir = tempfile::tempdir().unwrap();
    let (d, l, cert) = tls_v2_service(dir.path(), "smtp.example.test", "").await;
    let to = addr_of(&d, "svc");
    let mut client = tls_connect(to, "smtp.example.test", &cert.0).await.unwrap();
    let client_port = client.get_ref().0.local_addr().unwrap().port();
    client.write_all(b"EHLO client.test\r\n").await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    let header = read_proxy_header(&mut s).await;
    assert_eq!(
        proxy_addresses(&header),
        (format!("127.0.0.1:{client_port}").parse().unwrap(), to)
    );
    let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
    let tlvs: Vec<_> = parsed.tlvs().map(Result::unwrap).collect();
    let authority = tlvs
        .iter()
        .find(|t| t.kind == 0x02)
        .expect("PP2_TYPE_AUTHORITY");
    assert_eq!(&authority.value[..], b"smtp.example.test");
    let ssl = &tlvs
        .iter()
        .find(|t| t.kind == 0x20)
        .expect("PP2_TYPE_SSL")
        .value;
    assert_eq!(ssl[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    assert_eq!(
        u32::from_be_bytes(ssl[1..5].try_into().unwrap()),
        0,
        "verify"
    );
    let subs: Vec<_> = ppp::v2::TypeLengthValues::from(&ssl[5..])
        .map(Result::unwrap)
        .collect();
    let sub = |kind: u8| {
        subs.iter()
            .find(|t| t.kind == kind)
            .map(|t| String::from_utf8(t.value.to_vec()).unwrap())
    };
    assert_eq!(
        sub(0x21).as_deref(),
        Some("TLSv1.3"),
        "PP2_SUBTYPE_SSL_VERSION"
    );
    let cipher = sub(0x23).expect("PP2_SUBTYPE_SSL_CIPHER");
    assert!(
        [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&cipher.as_str()),
        "{cipher}"
    );
    // The plaintext follows the header.
    assert_eq!(read_line(&mut s).await, "EHLO client.test\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_renewed_certificates_and_an_unusable_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _first) = greeting_echo_server().await;
    let cert = self_signed(dir.path(), "imap.test");
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service("p", &tls_toml(&[&cert]));
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let old_ca = dir.path().join("old.pem").display().to_string();
    std::fs::copy(&cert.0, &old_ca).unwrap();
    let greets = |ca: String| async move {
        match tls_connect(to, "imap.test", &ca).await {
            Ok(mut s) => read_line(&mut s).await == "* OK plaintext backend\r\n",
            Err(_) => false,
        }
    };
    let mut open = tls_connect(to, "imap.test", &old_ca).await.unwrap();
    assert_eq!(read_line(&mut open).await, "* OK plaintext backend\r\n");
    self_signed(dir.path(), "imap.test");
    d.apply(support::config(&text)).await.unwrap();
    assert!(
        greets(cert.0.clone()).await,
        "the renewed certificate is served"
    );
    assert!(!greets(old_ca.clone()).await, "the old one is not");
    // A broken certificate file: the reload is refused, the running one stays.
    std::fs::copy(&cert.0, dir.path().join("good.pem")).unwrap();
    std::fs::write(&cert.0, "not a certificate\n").unwrap();
    let refused = d
        .apply(support::config(&text))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("imap.test.pem"), "{refused}");
    assert!(greets(dir.path().join("good.pem").display().to_string()).await);
    // The connection opened before both reloads goes on.
    open.write_all(b"a1 NOOP\r\n").await.unwrap();
    assert_eq!(read_line(&mut open).await, "a1 NOOP\r\n");
}

/// The PROXY header an upstream balancer sends for a connection from `client` to
/// `local`.
fn upstream_header(v2: bool, client: &str, local: &str) -> Vec<u8> {
    let addresses = (
        client.parse::<std::net::SocketAddr>().unwrap(),
        local.parse::<std::net::SocketAddr>().unwrap(),
    );
    if v2 {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap()
    } else {
        ppp::v1::Addresses::from(addresses).to_string().into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_takes_the_client_from_a_trusted_header_and_keeps_the_bytes_after_it() {
    let trusted: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    for v2 in [false, true] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        let out = if v2 { "v2" } else { "v1" };
        let text = pool(
            "p",
            "round-robin",
            &backends_toml(&[backend], &[1]),
            "sticky = { key = \"source-ip\", ttl = \"5m\" }",
        ) + &service(
            "p",
            &format!(
                "accept_proxy = true\naccept_proxy_from = [\"10.0.0.0/8\", \"127.0.0.2\"]\nproxy_protocol = \"{out}\"\nmax_conns_per_client = 1"
            ),
        );
        let d = start(&text).await;
        let to = addr_of(&d, "svc");
        // The header and the client's first bytes in one segment.
        let mut first = upstream_header(v2, "198.51.100.7:40000", "192.0.2.1:143");
        first.extend_from_slice(b"a1 LOGIN alice secret\r\n");
        let mut held = connect_from(trusted, to).await;
        held.write_all(&first).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let header = read_proxy_header(&mut s).await;
        assert_eq!(
            proxy_addresses(&header),
            (
                "198.51.100.7:40000".parse().unwrap(),
                "192.0.2.1:143".parse().unwrap()
            ),
            "the backend is told of the header's client (v2 in: {v2})"
        );
        assert_eq!(
            read_line(&mut s).await,
            "a1 LOGIN alice secret\r\n",
            "the bytes after the header are kept"
        );
        let sticky = d.pools().get("p").unwrap().sticky.clone().unwrap();
        let keys: Vec<IpAddr> = sticky.entries().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(keys, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
        // Per-client limits count the header's client: the same one again is over
        // max_conns_per_client, another behind the same balancer is not.
        let mut again = connect_from(trusted, to).await;
        again
            .write_all(&upstream_header(v2, "198.51.100.7:40001", "192.0.2.1:143"))
            .await
            .unwrap();
        assert!(closed_at_once(again).await);
        let mut other = connect_from(trusted, to).await;
        other
            .write_all(&upstream_header(v2, "198.51.100.8:40000", "192.0.2.1:143"))
            .await
            .unwrap();
        let (mut s2, _) = l.accept().await.unwrap();
        let header = read_proxy_header(&mut s2).await;
        assert_eq!(
            proxy_addresses(&header).0,
            "198.51.100.8:40000".parse().unwrap()
        );
        let stats = &d.service("svc").unwrap().service.stats;
        assert_eq!(stats.client_limited.load(Relaxed), 1);
        drop(held);
    }
}

/// A backend that reads the PROXY header tandem sends, answers "from SOURCE", then
/// echoes lines.
async fn telling_server() -> std::net::SocketAddr {
    serve(move |mut s, _| async move {
        let header = read_proxy_header(&mut s).await;
        let from = proxy_addresses(&header).0;
        s.write_all(format!("from {from}\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            if s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_closes_untrusted_headerless_malformed_and_slow_connections_and_counts_them() {
    let backend = telling_server().await;
    let text = pool("p", "round-robin", &backends_toml(&[backend], &[1]), "")
        + &service(
            "p",
            "accept_proxy = true\naccept_proxy_from = [\"127.0.0.2/32\"]\nproxy_protocol = \"v1\"",
        );
    let d = start(&text).await;
    let to = addr_of(&d, "svc");
    let trusted: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let header = upstream_header(false, "198.51.100.7:40000", "192.0.2.1:110");
    let mut good = connect_from(trusted, to).await;
    good.write_all(&header).await.unwrap();
    assert_eq!(read_line(&mut good).await, "from 198.51.100.7:40000\n");

    // Not a listed source, with a fine header all the same.
    let mut untrusted = connect_from(Ipv4Addr::new(127, 0, 0, 3).into(), to).await;
    untrusted.write_all(&header).await.unwrap();
    assert!(closed_at_once(untrusted).await);
    // A listed source that speaks the protocol at once.
    let mut missing = connect_from(trusted, to).await;
    missing.write_all(b"USER alice\r\n").await.unwrap();
    assert!(closed_at_once(missing).await);
    let mut malformed = connect_from(trusted, to).await;
    malformed
        .write_all(b"PROXY TCP4 198.51.100.300 192.0.2.1 40000 110\r\n")
        .await
        .unwrap();
    assert!(closed_at_once(malformed).await);
    // Half a header, then nothing: closed at the bound (connect_timeout, 1 s here).
    let started = Instant::now();
    let mut slow = connect_from(trusted, to).await;
    slow.write_all(&header[..15]).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
        .await
        .expect("closed within 3 s");
    assert!(matches!(r, Ok(0) | Err(_)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );

    // A header in two segments is waited for; a LOCAL header (an upstream's health
    // check) is served with the connection's own address.
    let mut split = connect_from(trusted, to).await;
    split.write_all(&header[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    split.write_all(&header[20..]).await.unwrap();
    assert_eq!(read_line(&mut split).await, "from 198.51.100.7:40000\n");
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let mut check = connect_from(trusted, to).await;
    let check_port = check.local_addr().unwrap().port();
    check.write_all(&local).await.unwrap();
    assert_eq!(
        read_line(&mut check).await,
        format!("from 127.0.0.2:{check_port}\n")
    );

    good.write_all(b"STAT\r\n").await.unwrap();
    assert_eq!(
        read_line(&mut good).await,
        "STAT\r\n",
        "the good one goes on"
    );
    let snapshot = d.snapshot();
    let refused = &snapshot.services[0].proxy_refused;
    for reason in ["untrusted_source", "no_header", "malformed", "timeout"] {
        assert_eq!(refused.get(reason), Some(&1), "{reason}: {refused:?}");
    }
    let metrics = tandem_control::metrics::encode(&snapshot);
    assert!(
        metrics
            .contains("tandem_service_proxy_refused_total{service=\"svc\",reason=\"timeout\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        d.pools().get("p").unwrap().backends[0].state.total(),
        3,
        "only the good, split and LOCAL ones reached the backend"
    );
}

#[test]
fn accept_proxy_logs_name_the_source_the_reason_and_the_header_s_client() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(telling_server());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\ncontrol_socket = \"{}/tandem.sock\"\n\n{}{}",
            dir.path().display(),
            pool("p", "round-robin", &backends_toml(&[backend], &[1]), ""),
            service(
                "p",
                "accept_proxy = true\naccept_proxy_from = [\"127.0.0.2\"]\nproxy_protocol = \"v2\""
            )
        ),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let to = listen_addr(&tandem.wait_for("service ready"));
    rt.block_on(async {
        let mut untrusted = connect_from(Ipv4Addr::new(127, 0, 0, 3).into(), to).await;
        untrusted
            .write_all(&upstream_header(
                true,
                "198.51.100.7:40000",
                "192.0.2.1:995",
            ))
            .await
            .unwrap();
        assert!(closed_at_once(untrusted).await);
        let mut good = connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), to).await;
        good.write_all(&upstream_header(
            true,
            "198.51.100.7:40000",
            "192.0.2.1:995",
        ))
        .await
        .unwrap();
        assert_eq!(read_line(&mut good).await, "from 198.51.100.7:40000\n");
    });
    let refused = tandem.wait_for("accept_proxy");
    assert!(
        refused.contains("127.0.0.3") && refused.contains("untrusted_source"),
        "{refused}"
    );
    // The connection's own line, once it ends, names the header's client.
    tandem.signal(rustix::process::Signal::TERM);
    let line = tandem.wait_for("client=198.51.100.7:40000");
    assert!(
        line.contains(&format!("backend={backend}")) && line.contains("end="),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_behind_a_balancer_reads_its_header_then_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (d, l, cert) = tls_v2_service(
        dir.path(),
        "submit.example.test",
        "\naccept_proxy = true\naccept_proxy_from = [\"127.0.0.0/8\"]",
    )
    .await;
    let mut tcp = TcpStream::connect(addr_of(&d, "svc")).await.unwrap();
    tcp.write_all(&upstream_header(
        false,
        "203.0.113.5:51000",
        "192.0.2.25:465",
    ))
    .await
    .unwrap();
    let mut client = tls_over(tcp, "submit.example.test", &cert.0).await.unwrap();
    client.write_all(b"EHLO c\r\n").await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    let header = read_proxy_header(&mut s).await;
    assert_eq!(
        proxy_addresses(&header),
        (
            "203.0.113.5:51000".parse().unwrap(),
            "192.0.2.25:465".parse().unwrap()
        )
    );
    let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
    assert!(
        parsed.tlvs().any(|t| t.unwrap().kind == 0x20),
        "PP2_TYPE_SSL"
    );
    assert_eq!(read_line(&mut s).await, "EHLO c\r\n");
}
