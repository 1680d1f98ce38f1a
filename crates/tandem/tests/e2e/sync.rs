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
