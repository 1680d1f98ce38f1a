//! Sync nodes over loopback TCP with in-memory stores: bursts, bulk transfers after a
//! restart, operator changes, and a peer without the key.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_sync::{Change, Store, SyncNode, SyncSettings, WireEntry};

#[derive(Default)]
struct Memory {
    entries: Mutex<HashMap<(String, IpAddr), WireEntry>>,
    backends: Mutex<Vec<(String, SocketAddr, bool)>>,
    acme: Mutex<Vec<Vec<u8>>>,
}

impl Store for Memory {
    fn entries(&self) -> Vec<WireEntry> {
        self.entries.lock().unwrap().values().cloned().collect()
    }
    fn apply(&self, entries: &[WireEntry]) {
        let mut m = self.entries.lock().unwrap();
        for e in entries {
            m.insert((e.pool.to_string(), e.client), e.clone());
        }
    }
    fn delete(&self, keys: &[(String, IpAddr)]) {
        let mut m = self.entries.lock().unwrap();
        for k in keys {
            m.remove(k);
        }
    }
    fn set_backend(&self, pool: &str, address: SocketAddr, enabled: bool) {
        self.backends
            .lock()
            .unwrap()
            .push((pool.to_string(), address, enabled));
    }
    fn acme_records(&self) -> Vec<Vec<u8>> {
        self.acme.lock().unwrap().clone()
    }
    fn apply_acme(&self, record: &[u8]) {
        self.acme.lock().unwrap().push(record.to_vec());
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn settings(node: &str, listen: SocketAddr, peer: SocketAddr, secret: &[u8]) -> SyncSettings {
    SyncSettings {
        node: node.into(),
        listen,
        peers: vec![peer],
        secret: secret.to_vec(),
        pools_digest: 1,
        max_version: tandem_sync::codec::VERSION,
    }
}

fn entry(n: u32) -> WireEntry {
    WireEntry {
        pool: "web".into(),
        client: IpAddr::from(n.to_be_bytes()),
        backend: SocketAddr::from(([10, 0, 0, (n % 3) as u8 + 1], 80)),
        remaining_ms: 600_000,
        pinned_at_ms: 1,
        origin: 1,
    }
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_leaves_in_a_few_frames_and_a_restart_gets_the_bulk() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_store = Arc::new(Memory::default());
    let b_store = Arc::new(Memory::default());
    let a = SyncNode::start(settings("a", a_addr, b_addr, KEY), a_store.clone())
        .await
        .unwrap();
    let b = SyncNode::start(settings("b", b_addr, a_addr, KEY), b_store.clone())
        .await
        .unwrap();
    until("connected", Duration::from_secs(5), || {
        a.peers()[0].connected && b.peers()[0].connected
    })
    .await;
    until("b synced", Duration::from_secs(5), || *b.synced().borrow()).await;
    let frames_before = a.peers()[0].frames_sent;
    for n in 0..10_000 {
        let e = entry(n);
        a_store.apply(std::slice::from_ref(&e));
        a.publish(Change::Entry(e));
    }
    until("10k entries on b", Duration::from_secs(5), || {
        b_store.entries.lock().unwrap().len() == 10_000
    })
    .await;
    let frames = a.peers()[0].frames_sent - frames_before;
    println!("10,000 entries in {frames} frames");
    assert!(frames <= 10, "{frames} frames for a burst of 10k");
    assert_eq!(a.peers()[0].sent, 10_000);
    assert_eq!(b.peers()[0].received, 10_000);
    assert_eq!(b.peers()[0].name.as_deref(), Some("a"));
    assert_eq!(
        (a.peers()[0].version, b.peers()[0].version),
        (tandem_sync::codec::VERSION, tandem_sync::codec::VERSION)
    );

    // b restarts empty: its bulk request brings the whole table back.
    drop(b);
    // Its listener closes once its task sees the stop.
    until("old listener closed", Duration::from_secs(2), || {
        std::net::TcpListener::bind(b_addr).is_ok()
    })
    .await;
    let b_store = Arc::new(Memory::default());
    let b = SyncNode::start(settings("b", b_addr, a_addr, KEY), b_store.clone())
        .await
        .unwrap();
    until("bulk after restart", Duration::from_secs(10), || {
        b_store.entries.lock().unwrap().len() == 10_000
    })
    .await;
    until("b synced again", Duration::from_secs(5), || {
        *b.synced().borrow()
    })
    .await;
    let want = a_store.entries.lock().unwrap().clone();
    assert_eq!(*b_store.entries.lock().unwrap(), want);

    // Operator changes travel too.
    a.publish(Change::Backend {
        pool: "web".into(),
        address: "10.0.0.2:80".parse().unwrap(),
        enabled: false,
    });
    until("backend change", Duration::from_secs(5), || {
        !b_store.backends.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        b_store.backends.lock().unwrap()[0],
        ("web".into(), "10.0.0.2:80".parse().unwrap(), false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_key_gets_and_gives_nothing() {
    let (a_addr, c_addr) = (free_addr(), free_addr());
    let a_store = Arc::new(Memory::default());
    a_store.apply(&[entry(1), entry(2)]);
    let c_store = Arc::new(Memory::default());
    let a = SyncNode::start(settings("a", a_addr, c_addr, KEY), a_store.clone())
        .await
        .unwrap();
    let c = SyncNode::start(
        settings("c", c_addr, a_addr, b"not the right key at all!!!!!!!"),
        c_store.clone(),
    )
    .await
    .unwrap();
    c.publish(Change::Entry(entry(99)));
    until("refusal seen", Duration::from_secs(5), || {
        a.peers()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c_store.entries.lock().unwrap().is_empty(), "c got entries");
    assert_eq!(a_store.entries.lock().unwrap().len(), 2, "a took c's entry");
    assert!(!a.peers()[0].connected && !*a.synced().borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_recovers_by_itself_after_the_peer_returns() {
    // The lower address dials: give it to a, which starts alone and must keep trying.
    let (x, y) = (free_addr(), free_addr());
    let (a_addr, b_addr) = (x.min(y), x.max(y));
    let a_store = Arc::new(Memory::default());
    let a = SyncNode::start(settings("a", a_addr, b_addr, KEY), a_store.clone())
        .await
        .unwrap();
    // b is away at first: a keeps trying with backoff.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(a.peers()[0].last_error.is_some());
    let b_store = Arc::new(Memory::default());
    let _b = SyncNode::start(settings("b", b_addr, a_addr, KEY), b_store.clone())
        .await
        .unwrap();
    until("link up", Duration::from_secs(6), || a.peers()[0].connected).await;
    a.publish(Change::Entry(entry(5)));
    until("entry through", Duration::from_secs(5), || {
        b_store.entries.lock().unwrap().len() == 1
    })
    .await;
}

/// Three nodes, each with the other two as peers (a full mesh, as N balancers behind
/// ECMP run it): a pin made on any node reaches both others, and a node that restarts
/// empty gets the whole table by bulk from the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_three_shares_every_pin_and_a_restarted_node_gets_the_bulk() {
    // Each node on its own address, as on a real sync network (an accepted session is
    // named after the configured peer with its IP).
    let addrs: Vec<SocketAddr> = (1..=3u8)
        .map(|i| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 77, i), 0))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let mesh = |i: usize| SyncSettings {
        node: format!("n{i}"),
        listen: addrs[i],
        peers: addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect(),
        secret: KEY.to_vec(),
        pools_digest: 1,
        max_version: tandem_sync::codec::VERSION,
    };
    let stores: Vec<Arc<Memory>> = (0..3).map(|_| Arc::new(Memory::default())).collect();
    let mut nodes = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        nodes.push(SyncNode::start(mesh(i), store.clone()).await.unwrap());
    }
    until(
        "every node connected to both others",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .all(|n| n.peers().iter().filter(|p| p.connected).count() == 2)
        },
    )
    .await;
    // Each node pins a third of the clients, as each serves a third of the flows.
    for n in 0..300u32 {
        let i = (n % 3) as usize;
        let e = entry(n);
        stores[i].apply(std::slice::from_ref(&e));
        nodes[i].publish(Change::Entry(e));
    }
    until("300 pins on every node", Duration::from_secs(5), || {
        stores
            .iter()
            .all(|s| s.entries.lock().unwrap().len() == 300)
    })
    .await;
    for (i, n) in nodes.iter().enumerate() {
        let received: u64 = n.peers().iter().map(|p| p.received).sum();
        assert_eq!(received, 200, "node {i} hears the other two nodes' pins");
    }

    // Node 2 restarts empty: the bulk from its peers brings all 300 back before it
    // says it is synced.
    let old = nodes.pop().unwrap();
    drop(old);
    until("old listener closed", Duration::from_secs(2), || {
        std::net::TcpListener::bind(addrs[2]).is_ok()
    })
    .await;
    let fresh = Arc::new(Memory::default());
    let restarted = SyncNode::start(mesh(2), fresh.clone()).await.unwrap();
    let mut synced = restarted.synced();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s))
        .await
        .expect("synced within 10 s")
        .unwrap();
    until(
        "the bulk on the restarted node",
        Duration::from_secs(5),
        || fresh.entries.lock().unwrap().len() == 300,
    )
    .await;
    assert_eq!(
        *fresh.entries.lock().unwrap(),
        *stores[0].entries.lock().unwrap()
    );
}

/// ACME records: those in force go in the bulk transfer, a new one as a change; a
/// peer without the key gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_records_travel_in_the_bulk_and_as_changes() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_store = Arc::new(Memory::default());
    a_store.apply_acme(b"account");
    a_store.apply_acme(b"certificate");
    let b_store = Arc::new(Memory::default());
    let a = SyncNode::start(settings("a", a_addr, b_addr, KEY), a_store.clone())
        .await
        .unwrap();
    let _b = SyncNode::start(settings("b", b_addr, a_addr, KEY), b_store.clone())
        .await
        .unwrap();
    until("bulk with the ACME records", Duration::from_secs(5), || {
        b_store.acme.lock().unwrap().len() == 2
    })
    .await;
    a.publish(Change::Acme(b"challenge".to_vec()));
    until("the change", Duration::from_secs(5), || {
        b_store.acme.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(
        *b_store.acme.lock().unwrap(),
        [
            b"account".to_vec(),
            b"certificate".to_vec(),
            b"challenge".to_vec()
        ]
    );
}

/// A node's process replaced in place (`SyncNode::resume` on its predecessor's
/// listener, as `tandem upgrade` does): its session comes up without a bulk transfer
/// either way, the predecessor's session ending is not taken for the node's exit,
/// changes flow both ways on the new session, and the successor's own exit is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resumed_in_place_needs_no_bulk_and_its_predecessors_end_is_not_an_exit() {
    resumed_in_place(true).await;
}

/// The same with the resumed node the one its peer dials: it connects once itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_its_peer_dials_connects_itself_when_resumed() {
    resumed_in_place(false).await;
}

/// Node a is replaced in place; it dials b when `a_dials` (it has the lower address).
async fn resumed_in_place(a_dials: bool) {
    let secret = b"0123456789abcdef0123456789abcdef";
    let (x, y) = (free_addr(), free_addr());
    let (low, high) = if x < y { (x, y) } else { (y, x) };
    let (la, lb) = if a_dials { (low, high) } else { (high, low) };
    let store_a = Arc::new(Memory::default());
    let store_b = Arc::new(Memory::default());
    store_b.apply(&(0..100).map(entry).collect::<Vec<_>>());
    let a = SyncNode::start(settings("a", la, lb, secret), store_a.clone())
        .await
        .unwrap();
    let b = SyncNode::start(settings("b", lb, la, secret), store_b.clone())
        .await
        .unwrap();
    until("a has b's table", Duration::from_secs(5), || {
        store_a.entries().len() == 100
    })
    .await;
    until("both synced", Duration::from_secs(5), || {
        a.peers()[0].synced && b.peers()[0].synced
    })
    .await;
    let sent_before = b.peers()[0].sent;
    assert_eq!(sent_before, 100, "the first session's bulk transfer");
    let mut ended = b.sessions_ended();
    ended.borrow_and_update();

    // The successor: the same settings, the predecessor's listener and table.
    let store_a2 = Arc::new(Memory::default());
    store_a2.apply(&store_a.entries());
    let listener = std::net::TcpListener::from(a.listener().unwrap());
    let a2 = SyncNode::resume(settings("a", la, lb, secret), store_a2.clone(), listener)
        .await
        .unwrap();
    assert!(
        *a2.synced().borrow(),
        "synced from the start: it has the table"
    );
    until(
        "b has a second session with a",
        Duration::from_secs(5),
        || b.peers()[0].sessions == 2,
    )
    .await;
    a.stop();
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !ended.has_changed().unwrap(),
        "the predecessor's session ending is not the node's exit"
    );
    let peer = b.peers()[0].clone();
    assert!(peer.connected && peer.synced, "{peer:?}");
    assert_eq!(peer.sent, sent_before, "no bulk transfer to the successor");
    assert_eq!(a2.peers()[0].received, 0, "no bulk transfer from b");
    assert!(a2.peers()[0].synced);

    b.publish(Change::Entry(entry(500)));
    until("a2 has b's new pin", Duration::from_secs(5), || {
        store_a2.entries().iter().any(|e| *e == entry(500))
    })
    .await;
    a2.publish(Change::Entry(entry(600)));
    until("b has a2's new pin", Duration::from_secs(5), || {
        store_b.entries().iter().any(|e| *e == entry(600))
    })
    .await;

    // The successor's own exit is one.
    a2.stop();
    drop(a2);
    until("b hears the exit", Duration::from_secs(5), || {
        ended.has_changed().unwrap()
    })
    .await;
    assert!(!b.peers()[0].connected);
}

/// A rolling upgrade: a node of this version and one of version 1 (limited to it, its
/// hello and frames are a version 1 node's byte for byte, and it drops packed entries
/// as such a node could not read them) speak version 1: each one's table reaches the
/// other by bulk transfer, and changes travel both ways, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_version_1_and_one_of_this_version_sync_in_version_1() {
    for old_dials in [true, false] {
        let (x, y) = (free_addr(), free_addr());
        let (low, high) = (x.min(y), x.max(y));
        let (old_addr, new_addr) = if old_dials { (low, high) } else { (high, low) };
        let old_store = Arc::new(Memory::default());
        let new_store = Arc::new(Memory::default());
        old_store.apply(&(0..3000).map(entry).collect::<Vec<_>>());
        new_store.apply(&(3000..8000).map(entry).collect::<Vec<_>>());
        let old = SyncNode::start(
            SyncSettings {
                max_version: 1,
                ..settings("old", old_addr, new_addr, KEY)
            },
            old_store.clone(),
        )
        .await
        .unwrap();
        let new = SyncNode::start(settings("new", new_addr, old_addr, KEY), new_store.clone())
            .await
            .unwrap();
        until("both bulks through", Duration::from_secs(10), || {
            old_store.entries.lock().unwrap().len() == 8000
                && new_store.entries.lock().unwrap().len() == 8000
        })
        .await;
        for n in 8000..8100 {
            let e = entry(n);
            old_store.apply(std::slice::from_ref(&e));
            old.publish(Change::Entry(e));
            let e = entry(n + 100);
            new_store.apply(std::slice::from_ref(&e));
            new.publish(Change::Entry(e));
        }
        until("changes both ways", Duration::from_secs(5), || {
            old_store.entries.lock().unwrap().len() == 8200
                && new_store.entries.lock().unwrap().len() == 8200
        })
        .await;
        assert_eq!(
            *old_store.entries.lock().unwrap(),
            *new_store.entries.lock().unwrap()
        );
        let (o, n) = (old.peers()[0].clone(), new.peers()[0].clone());
        assert_eq!((o.version, n.version), (1, 1), "old dials: {old_dials}");
        assert_eq!((o.frames_dropped, n.frames_dropped), (0, 0));
        assert_eq!((o.received, n.received), (5100, 3100));
    }
}
