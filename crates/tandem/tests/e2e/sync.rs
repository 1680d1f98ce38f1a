//! State sync between two tandem nodes on loopback: clients pinned on one node are
//! pinned alike on the other, a restarted node gets the whole table, a wrong key gets
//! nothing.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tandem::daemon::Daemon;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn node_text(
    name: &str,
    backends: &str,
    listen: SocketAddr,
    peer: SocketAddr,
    key: &std::path::Path,
) -> String {
    format!(
        "[global]\nname = \"{name}\"\n\n[[pool]]\nname = \"web\"\nbalance = \"round-robin\"\nbackends = {backends}\n\
sticky = {{ key = \"source-ip\", ttl = \"10m\" }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n\n\
[sync]\nlisten = \"{listen}\"\npeers = [\"{peer}\"]\nkey_file = \"{}\"\n",
        key.display()
    )
}

pub(crate) fn client_ip(n: u32) -> IpAddr {
    // 127.1.0.1 onwards: every 127.x.y.z is local on Linux.
    IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + n + 1))
}

pub(crate) fn table(d: &Daemon) -> Arc<tandem_balance::StickyTable> {
    d.pools().get("web").unwrap().sticky.clone().unwrap()
}

/// Two nodes syncing their sticky tables over loopback, connected.
pub(crate) struct Pair {
    pub(crate) a: Daemon,
    pub(crate) b: Daemon,
    pub(crate) key: std::path::PathBuf,
    pub(crate) a_sync: SocketAddr,
    pub(crate) b_sync: SocketAddr,
    pub(crate) _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts node-a and node-b with `backends` and a shared key; returns once each
    /// is connected to the other.
    pub(crate) async fn start(backends: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sync.key");
        std::fs::write(&key, "c2VjcmV0IHNoYXJlZCBieSBhIGFuZCBiIG9ubHk=\n").unwrap();
        let (a_sync, b_sync) = (free_addr(), free_addr());
        let a = start(&node_text("node-a", backends, a_sync, b_sync, &key)).await;
        let b = start(&node_text("node-b", backends, b_sync, a_sync, &key)).await;
        wait_until("peers connected", Duration::from_secs(5), || {
            a.snapshot().sync.iter().all(|p| p.connected)
                && b.snapshot().sync.iter().all(|p| p.connected)
        })
        .await;
        Pair {
            a,
            b,
            key,
            a_sync,
            b_sync,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_pinned_on_a_are_pinned_alike_on_b() {
    raise_fd_limit();
    let backends = [
        name_server("a", false).await,
        name_server("b", false).await,
        name_server("c", false).await,
    ];
    let backends = backends_toml(&backends, &[1, 1, 1]);
    let Pair {
        a,
        b,
        key,
        a_sync,
        b_sync,
        _dir,
    } = Pair::start(&backends).await;
    let to = addr_of(&a, "www");
    const CLIENTS: u32 = 10_000;
    let started = Instant::now();
    let workers: Vec<_> = (0..32u32)
        .map(|w| {
            tokio::spawn(async move {
                let mut n = w;
                while n < CLIENTS {
                    name_via(to, Some(client_ip(n))).await;
                    n += 32;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    println!(
        "{CLIENTS} clients through node A in {:?}",
        started.elapsed()
    );
    let (ta, tb) = (table(&a), table(&b));
    assert_eq!(ta.len(), CLIENTS as usize);
    let took = wait_until("B has every entry", Duration::from_secs(10), || {
        tb.len() == CLIENTS as usize
    })
    .await;
    println!("node B had all {CLIENTS} entries {took:?} after the last client");
    let on_a: std::collections::HashMap<IpAddr, tandem_balance::StickyEntry> =
        ta.entries().into_iter().collect();
    let mut worst_expiry_gap = 0u64;
    for (client, eb) in tb.entries() {
        let ea = on_a[&client];
        assert_eq!(eb.backend, ea.backend, "client {client} pinned differently");
        worst_expiry_gap = worst_expiry_gap.max(ea.expires.abs_diff(eb.expires));
    }
    println!("largest expiry difference between the nodes: {worst_expiry_gap} ms");
    assert!(
        worst_expiry_gap < 1000,
        "entries would expire {worst_expiry_gap} ms apart"
    );
    let peer = &a.snapshot().sync[0];
    assert_eq!(peer.name.as_deref(), Some("node-b"));
    assert!(peer.sent >= CLIENTS as u64, "{peer:?}");

    // B restarts with an empty table: the bulk transfer fills it before it is synced.
    b.shutdown(Duration::from_secs(1)).await;
    wait_until("B's sync port free", Duration::from_secs(3), || {
        std::net::TcpListener::bind(b_sync).is_ok()
    })
    .await;
    let b = start(&node_text("node-b", &backends, b_sync, a_sync, &key)).await;
    let mut synced = b.sync().unwrap().synced();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        table(&b).len(),
        CLIENTS as usize,
        "synced means the whole table is here"
    );
    // And the pins hold through B: each client reaches the backend A gave it.
    let tb = table(&b);
    for n in (0..CLIENTS).step_by(97) {
        let ip = client_ip(n);
        assert_eq!(
            tb.get(&ip, tandem_balance::now_ms()),
            Some(on_a[&ip].backend)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_is_refused_and_gets_nothing() {
    raise_fd_limit();
    let backends = backends_toml(&[name_server("a", false).await], &[1]);
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_c) = (dir.path().join("a.key"), dir.path().join("c.key"));
    std::fs::write(&key_a, "the right key, 32 bytes of it!!!").unwrap();
    std::fs::write(&key_c, "a wrong key, also long enough...").unwrap();
    let (a_sync, c_sync) = (free_addr(), free_addr());
    let a = start(&node_text("node-a", &backends, a_sync, c_sync, &key_a)).await;
    let c = start(&node_text("node-c", &backends, c_sync, a_sync, &key_c)).await;
    for n in 0..20 {
        name_via(addr_of(&a, "www"), Some(client_ip(n))).await;
    }
    wait_until("refusal recorded", Duration::from_secs(5), || {
        a.snapshot().sync[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed"))
            || c.snapshot().sync[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(table(&c).len(), 0, "the node without the key got entries");
    assert!(!a.snapshot().sync[0].connected);
}

/// A `tandem run` process of `text` with its control socket and admin port in `dir`;
/// returns it, its socket and its admin address.
fn run_node(
    dir: &std::path::Path,
    name: &str,
    text: &str,
) -> (Running, std::path::PathBuf, SocketAddr) {
    let socket = dir.join(format!("{name}.sock"));
    let text = text.replacen(
        "[global]\n",
        &format!(
            "[global]\ncontrol_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n",
            socket.display()
        ),
        1,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let mut tandem = Running::spawn(&["run", "--config", path.to_str().unwrap()]);
    let line = tandem.wait_for("admin port ready");
    let at = line.find("admin=").unwrap() + "admin=".len();
    let admin = line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    tandem.wait_for("tandem running");
    (tandem, socket, admin)
}

/// The metrics a node's admin port serves now.
fn metrics(admin: SocketAddr) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {admin}/metrics: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The first sync peer in `tandem ctl --json status`, once `ready` holds for it.
async fn ctl_peer(
    socket: &std::path::Path,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peer = ctl_json(socket, &["status"])["sync"][0].clone();
        if ready(&peer) {
            return peer;
        }
        assert!(Instant::now() < deadline, "sync peer not ready: {peer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two `tandem run` processes synced: `tandem ctl status` (text and JSON) and the
/// metrics show each peer's protocol version and no dropped frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_and_metrics_show_the_peers_protocol_version() {
    let backends = backends_toml(&[name_server("a", false).await], &[1]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sync.key");
    std::fs::write(&key, "c2VjcmV0IHNoYXJlZCBieSBhIGFuZCBiIG9ubHk=\n").unwrap();
    let (a_sync, b_sync) = (free_addr(), free_addr());
    let (_a, a_socket, a_admin) = run_node(
        dir.path(),
        "node-a",
        &node_text("node-a", &backends, a_sync, b_sync, &key),
    );
    let (_b, b_socket, _) = run_node(
        dir.path(),
        "node-b",
        &node_text("node-b", &backends, b_sync, a_sync, &key),
    );
    for socket in [&a_socket, &b_socket] {
        let peer = ctl_peer(socket, |p| p["connected"] == true && p["synced"] == true).await;
        assert_eq!(peer["version"], 2, "{peer}");
        assert_eq!(peer["frames_dropped"], 0, "{peer}");
    }
    let (code, text, err) = ctl(&a_socket, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!(
            "sync peer {b_sync} connected synced, protocol version 2, "
        )) && text.contains(" 0 frames dropped"),
        "{text}"
    );
    let exposition = metrics(a_admin);
    for line in [
        format!("tandem_sync_peer_protocol_version{{peer=\"{b_sync}\"}} 2"),
        format!("tandem_sync_frames_dropped_total{{peer=\"{b_sync}\"}} 0"),
    ] {
        assert!(
            exposition.lines().any(|l| l == line),
            "no {line} in:\n{exposition}"
        );
    }
}

/// A peer of version 1 (the sync crate's own session limited to it) that sends an
/// authentic frame a node of version 1 cannot read (packed entries): the node drops
/// it, goes on, and counts it in `tandem ctl status` and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sync_frame_is_counted_in_ctl_status_and_the_metrics() {
    use tandem_sync::codec::FrameKey;
    use tandem_sync::session::{Role, Session};
    use tandem_sync::{Message, Packed};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backends = backends_toml(&[name_server("a", false).await], &[1]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sync.key");
    let secret = b"the right key, 32 bytes of it!!!";
    std::fs::write(&key, secret).unwrap();
    // The lower address dials: the node's, so that it names the peer by this address.
    let mut two = [
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    two.sort_by_key(|l| l.local_addr().unwrap());
    let [node_listener, peer] = two;
    // Free for the node to bind.
    let node_sync = node_listener.local_addr().unwrap();
    drop(node_listener);
    let peer_addr = peer.local_addr().unwrap();
    peer.set_nonblocking(true).unwrap();
    let peer = tokio::net::TcpListener::from_std(peer).unwrap();
    async fn read_frame(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        let len = s.read_u32().await.unwrap();
        let mut body = vec![0; len as usize];
        s.read_exact(&mut body).await.unwrap();
        body
    }
    /// `frame` as sealed: its length field first.
    async fn write_frame(s: &mut tokio::net::TcpStream, frame: &[u8]) {
        s.write_all(frame).await.unwrap();
    }
    let started = Instant::now();
    // The peer answers the node's hello as it comes (the node waits 5 s for it, maybe
    // before it says it runs).
    let handshake = tokio::spawn(async move {
        let (mut stream, _) = peer.accept().await.unwrap();
        let mut session = Session::new(
            Role::Responder,
            FrameKey::from_secret(secret),
            "old-node",
            [7; 32],
            0,
            started.elapsed(),
        )
        .max_version(1);
        write_frame(&mut stream, &session.hello(started.elapsed())).await;
        let hello = read_frame(&mut stream).await;
        session.receive(&hello, started.elapsed()).unwrap();
        (stream, session)
    });
    let (_node, socket, admin) = run_node(
        dir.path(),
        "node-a",
        &node_text("node-a", &backends, node_sync, peer_addr, &key),
    );
    let (mut stream, mut session) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("the node dials its peer")
        .unwrap();
    let peer = ctl_peer(&socket, |p| p["connected"] == true).await;
    assert_eq!(
        (&peer["version"], &peer["frames_dropped"]),
        (&1.into(), &0.into())
    );
    let packed = Message::Packed {
        bulk: false,
        entries: Packed::pack(&[]),
    };
    for _ in 0..2 {
        write_frame(&mut stream, &session.seal(&packed, started.elapsed())).await;
    }
    // Dropped, not fatal: the session goes on.
    let peer = ctl_peer(&socket, |p| p["frames_dropped"] == 2).await;
    assert_eq!(peer["connected"], true, "{peer}");
    let (_, text, _) = ctl(&socket, &["status"]);
    assert!(
        text.contains(&format!("sync peer {peer_addr} connected "))
            && text.contains("protocol version 1, ")
            && text.contains(" 2 frames dropped"),
        "{text}"
    );
    let line = format!("tandem_sync_frames_dropped_total{{peer=\"{peer_addr}\"}} 2");
    let exposition = metrics(admin);
    assert!(
        exposition.lines().any(|l| l == line),
        "no {line} in:\n{exposition}"
    );
}
