//! VRRPv3 over IPv6 and untrusted adverts in a network-namespace lab: two tandem nodes
//! share a link-local and a global IPv6 address; a client requests through the global
//! one while the master is killed and comes back (its neighbour entry must follow the
//! master: unsolicited neighbour advertisements); keepalived is the other IPv6 router
//! in both directions; a third host forges adverts (TTL/hop limit 254, bad checksum,
//! version 2, another VRID, truncated, priority 255 from a non-peer), which both nodes
//! drop and count by reason while the master stays master.

use crate::support;
use crate::support::lab;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

use super::ha::{keepalived, spawn_keepalived};
use lab::Lab;
use support::Running;
use tandem_vrrp::packet::{Advertisement, Centis, MULTICAST_V4, MULTICAST_V6};

/// The global virtual address the clients use, and the router's link-local one.
const VIP6: &str = "fd99::100";
const LL_VIP: &str = "fe80::100";

fn vip6() -> SocketAddr {
    format!("[{VIP6}]:80").parse().unwrap()
}

/// Gives host `name` exactly one link-local address (`fe80::…`, no DAD, so it is usable
/// at once and the lab knows what VRRP sends from) and, unless empty, a global one.
fn ipv6(lab: &Lab, name: &str, link_local: &str, global: &str) {
    lab.ip_in(name, &["link", "set", "eth0", "addrgenmode", "none"]);
    lab.ip_in(
        name,
        &["-6", "addr", "flush", "dev", "eth0", "scope", "link"],
    );
    let ll = format!("{link_local}/64");
    lab.ip_in(name, &["addr", "add", &ll, "dev", "eth0", "nodad"]);
    if !global.is_empty() {
        let g = format!("{global}/64");
        lab.ip_in(name, &["addr", "add", &g, "dev", "eth0", "nodad"]);
    }
}

/// Two balancers, two IPv4 web backends, a client with IPv6.
fn lab6(tag: &str) -> Option<Lab> {
    let mut lab = Lab::new(tag)?;
    lab.host("lb1", "10.99.0.1/24");
    lab.host("lb2", "10.99.0.2/24");
    lab.host("be1", "10.99.0.11/24");
    lab.host("be2", "10.99.0.12/24");
    lab.host("client", "10.99.0.50/24");
    ipv6(&lab, "lb1", "fe80::1", "fd99::1");
    ipv6(&lab, "lb2", "fe80::2", "fd99::2");
    ipv6(&lab, "client", "fe80::50", "fd99::50");
    lab.http_backend("be1", "10.99.0.11:80".parse().unwrap(), "be1\n");
    lab.http_backend("be2", "10.99.0.12:80".parse().unwrap(), "be2\n");
    Some(lab)
}

/// A tandem node: `[global]` extras, then `[ha]` with `ha` (interface, vrid 51,
/// priority, 100 ms adverts added here).
fn start(lab: &Lab, name: &str, priority: u8, listen: &str, global: &str, ha: &str) -> Running {
    let dir = lab.dir.path().display();
    let text = format!(
        "[global]\nname = \"{name}\"\ncontrol_socket = \"{dir}/{name}.sock\"\ndrain_timeout = \"1s\"\n{global}\n\
[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.99.0.11:80\" }}, {{ address = \"10.99.0.12:80\" }}]\n\
check = {{ type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 2, initial = \"up\" }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"{listen}\"]\npool = \"web\"\nconnect_timeout = \"200ms\"\n\n\
[ha]\ninterface = \"eth0\"\nvrid = 51\npriority = {priority}\nadvert_interval = \"100ms\"\n{ha}\n"
    );
    lab.run_tandem(name, &lab.write_config(name, &text))
}

fn start6(lab: &Lab, name: &str, priority: u8, extra_ha: &str) -> Running {
    let ha = format!("virtual_ips = [\"{LL_VIP}/64\", \"{VIP6}/64\"]\n{extra_ha}");
    start(lab, name, priority, &format!("[{VIP6}]:80"), "", &ha)
}

fn has6(lab: &Lab, name: &str, address: &str) -> bool {
    lab.ip_in(name, &["-6", "addr", "show", "dev", "eth0"])
        .contains(&format!("inet6 {address}/"))
}

fn mac(lab: &Lab, name: &str) -> String {
    let out = lab.ip_in(name, &["-o", "link", "show", "eth0"]);
    let at = out.find("link/ether ").expect("an Ethernet interface") + "link/ether ".len();
    out[at..at + 17].to_string()
}

/// The link-layer address the client's neighbour entry for the global virtual address
/// holds, if any.
fn client_neighbour(lab: &Lab) -> Option<String> {
    let out = lab.ip_in("client", &["-6", "neigh", "show", VIP6, "dev", "eth0"]);
    let at = out.find("lladdr ")? + "lladdr ".len();
    out.get(at..at + 17).map(str::to_string)
}

#[test]
fn ipv6_master_killed_the_backup_serves_within_a_second_and_the_neighbour_entry_follows() {
    let Some(lab) = lab6("v6") else { return };
    let mut lb1 = start6(&lab, "lb1", 150, "");
    let mut lb2 = start6(&lab, "lb2", 100, "");
    lab.wait("lb1 master", Duration::from_secs(5), || {
        has6(&lab, "lb1", VIP6)
    });
    lb1.wait_for("VRRP BACKUP -> MASTER");
    lb2.wait_for("VRRP INIT -> BACKUP");
    assert!(
        has6(&lab, "lb1", LL_VIP),
        "the link-local virtual address too"
    );
    assert!(!has6(&lab, "lb2", VIP6));
    // lb2 hears lb1's IPv6 adverts (from lb1's link-local address) and drops none.
    let ha = support::ctl_json(&lab.socket("lb2"), &["ha"]);
    assert_eq!(ha["master"], "fe80::1", "{ha}");
    assert_eq!(ha["dropped"], serde_json::json!([]), "{ha}");
    let (mac1, mac2) = (mac(&lab, "lb1"), mac(&lab, "lb2"));
    let client = lab.client(
        "client",
        vip6(),
        Duration::from_millis(20),
        Duration::from_secs(60),
    );
    let started = Instant::now();
    client.wait_answer_after(started, Duration::from_secs(5));
    assert_eq!(client_neighbour(&lab).as_deref(), Some(mac1.as_str()));

    let mut failovers = Vec::new();
    for round in 1..=3 {
        // SIGKILL: no priority 0, lb1's kernel even keeps the address; lb2 must notice
        // the silence and its neighbour advertisement must turn the client to it.
        let killed = Instant::now();
        lb1.signal(rustix::process::Signal::KILL);
        let (served_at, body) = client.wait_answer_after(killed, Duration::from_secs(5));
        let failover = served_at.duration_since(killed);
        assert!(body == "be1\n" || body == "be2\n", "{body:?}");
        assert!(has6(&lab, "lb2", VIP6) && has6(&lab, "lb2", LL_VIP));
        let entry = client_neighbour(&lab);
        println!(
            "IPv6 round {round}: first request served {} ms after SIGKILL of the master; client's neighbour entry for {VIP6}: {entry:?} (lb1 {mac1}, lb2 {mac2})",
            failover.as_millis()
        );
        assert_eq!(entry.as_deref(), Some(mac2.as_str()), "neighbour entry");
        failovers.push(failover);
        lb2.wait_for_nth("VRRP BACKUP -> MASTER", round);

        // lb1 comes back, preempts, and the client's entry turns back to it.
        drop(lb1);
        lb1 = start6(&lab, "lb1", 150, "");
        lab.wait("lb1 master again", Duration::from_secs(5), || {
            has6(&lab, "lb1", VIP6) && !has6(&lab, "lb2", VIP6)
        });
        let back = lab.wait(
            "the client's neighbour entry back at lb1",
            Duration::from_secs(1),
            || client_neighbour(&lab).as_deref() == Some(mac1.as_str()),
        );
        println!(
            "IPv6 round {round}: lb1 took the address back; neighbour entry at lb1's MAC {} ms after",
            back.as_millis()
        );
        client.wait_answer_after(Instant::now(), Duration::from_secs(2));
    }
    let (ok, failed) = client.counts_after(started);
    println!(
        "IPv6 failover after SIGKILL at 100 ms adverts: {:?} ms; client {ok} answered, {failed} failed",
        failovers
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>()
    );
    for f in failovers {
        assert!(f < Duration::from_secs(1), "failover took {f:?}");
    }
}

/// keepalived 2.x as an IPv6 VRRPv3 router for the same two addresses.
fn start_keepalived6(lab: &Lab, name: &str, priority: u8) -> Running {
    spawn_keepalived(
        lab,
        name,
        &format!(
            "vrrp_instance VI_6 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n  native_ipv6\n  \
virtual_ipaddress {{\n    {LL_VIP}/64 dev eth0\n    {VIP6}/64 dev eth0\n  }}\n}}\n"
        ),
    )
}

#[test]
fn interoperates_with_keepalived_over_ipv6_in_both_directions() {
    if keepalived().is_none() {
        eprintln!("SKIPPED: keepalived is not installed (scripts/test installs it as root)");
        return;
    }
    let Some(mut lab) = lab6("k6") else { return };
    lab.host("kp", "10.99.0.3/24");
    ipv6(&lab, "kp", "fe80::3", "fd99::3");

    // tandem master (150), keepalived backup (100).
    let mut tandem = start6(&lab, "lb1", 150, "");
    lab.wait("tandem master", Duration::from_secs(5), || {
        has6(&lab, "lb1", VIP6)
    });
    let mut kp = start_keepalived6(&lab, "kp", 100);
    kp.wait_for("Entering BACKUP STATE");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        has6(&lab, "lb1", VIP6) && !has6(&lab, "kp", VIP6),
        "keepalived accepted tandem as IPv6 master:\n{}",
        kp.drain_lines()
    );
    // tandem leaves (priority 0): keepalived takes over.
    tandem.signal(rustix::process::Signal::TERM);
    assert_eq!(tandem.wait_exit(Duration::from_secs(5)), 0);
    let took = lab.wait(
        "keepalived took over from tandem",
        Duration::from_secs(2),
        || has6(&lab, "kp", VIP6),
    );
    kp.wait_for("Entering MASTER STATE");
    println!(
        "IPv6: keepalived took over {} ms after tandem left",
        took.as_millis()
    );
    // tandem comes back with the higher priority and preempts keepalived.
    let tandem = start6(&lab, "lb1", 150, "");
    let preempted = lab.wait(
        "tandem preempted keepalived",
        Duration::from_secs(3),
        || has6(&lab, "lb1", VIP6) && !has6(&lab, "kp", VIP6),
    );
    println!(
        "IPv6: tandem preempted keepalived {} ms after its start",
        preempted.as_millis()
    );
    drop(tandem);
    drop(kp);

    // keepalived master (200), tandem backup (100): keepalived stops, tandem takes over
    // and serves the client, whose neighbour entry moves to tandem.
    let Some(mut lab) = lab6("k7") else { return };
    lab.host("kp", "10.99.0.3/24");
    ipv6(&lab, "kp", "fe80::3", "fd99::3");
    let kp = start_keepalived6(&lab, "kp", 200);
    lab.wait("keepalived master", Duration::from_secs(5), || {
        has6(&lab, "kp", VIP6)
    });
    let mut tandem = start6(&lab, "lb1", 100, "");
    tandem.wait_for("VRRP INIT -> BACKUP");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !has6(&lab, "lb1", VIP6),
        "tandem accepted keepalived as master"
    );
    let ha = support::ctl_json(&lab.socket("lb1"), &["ha"]);
    assert_eq!(ha["master"], "fe80::3", "tandem hears keepalived: {ha}");
    assert_eq!(
        ha["dropped"],
        serde_json::json!([]),
        "nothing dropped: {ha}"
    );
    let client = lab.client(
        "client",
        vip6(),
        Duration::from_millis(20),
        Duration::from_secs(30),
    );
    // keepalived serves nothing on port 80: the client is only answered once tandem
    // holds the address.
    let stopped = Instant::now();
    kp.signal(rustix::process::Signal::TERM);
    let (served, _) = client.wait_answer_after(stopped, Duration::from_secs(3));
    tandem.wait_for("VRRP BACKUP -> MASTER");
    assert!(has6(&lab, "lb1", VIP6));
    let lb1_mac = mac(&lab, "lb1");
    assert_eq!(client_neighbour(&lab).as_deref(), Some(lb1_mac.as_str()));
    println!(
        "IPv6: tandem took over from keepalived; first request served {} ms after keepalived's SIGTERM",
        served.duration_since(stopped).as_millis()
    );
}

/// A forged advert and the reason tandem counts it under.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// TTL (IPv4) or hop limit (IPv6) 254.
    Ttl,
    /// One bit of the checksum flipped.
    Checksum,
    /// VRRP version 2.
    Version,
    /// Another virtual router.
    Vrid,
    /// Shorter than the VRRP header.
    TooShort,
    /// Counts two addresses, carries one.
    Length,
    /// Priority 255, valid in every way, from a host not in `unicast_peers`.
    UnknownPeer,
}

impl Forgery {
    const ALL: [Forgery; 7] = [
        Forgery::Ttl,
        Forgery::Checksum,
        Forgery::Version,
        Forgery::Vrid,
        Forgery::TooShort,
        Forgery::Length,
        Forgery::UnknownPeer,
    ];

    fn label(self) -> &'static str {
        match self {
            Forgery::Ttl => "ttl",
            Forgery::Checksum => "checksum",
            Forgery::Version => "version",
            Forgery::Vrid => "vrid",
            Forgery::TooShort => "too_short",
            Forgery::Length => "length",
            Forgery::UnknownPeer => "unknown_peer",
        }
    }

    /// The message and the TTL/hop limit to send it with, from `source` to `to`.
    fn message(self, vip: IpAddr, source: IpAddr, to: IpAddr) -> (Vec<u8>, u32) {
        let advert = Advertisement {
            vrid: if matches!(self, Forgery::Vrid) {
                52
            } else {
                51
            },
            priority: 255,
            interval: Centis::new(10).unwrap(),
            addresses: vec![vip],
        };
        let mut bytes = advert.encode(source, to, true);
        match self {
            Forgery::Checksum => bytes[7] ^= 1,
            Forgery::Version => bytes[0] = 0x21,
            Forgery::TooShort => bytes.truncate(6),
            Forgery::Length => bytes[3] = 2,
            Forgery::Ttl | Forgery::Vrid | Forgery::UnknownPeer => {}
        }
        let ttl = if matches!(self, Forgery::Ttl) {
            254
        } else {
            255
        };
        (bytes, ttl)
    }
}

/// Sends `count` of each forgery from host `rogue` (source `source`) to the VRRP
/// multicast group of `source`'s family.
fn send_forgeries(lab: &Lab, vip: IpAddr, source: IpAddr, count: usize) {
    let ifindex: u32 = lab
        .ip_in("rogue", &["-o", "link", "show", "eth0"])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    lab.in_ns("rogue", move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if source.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(112))).unwrap();
        socket.bind_device(Some(b"eth0")).unwrap();
        let (to, addr): (IpAddr, SocketAddr) = match source {
            IpAddr::V4(s) => {
                socket.set_multicast_if_v4(&s).unwrap();
                (MULTICAST_V4.into(), SocketAddr::new(MULTICAST_V4.into(), 0))
            }
            IpAddr::V6(s) => {
                socket
                    .bind(&SocketAddrV6::new(s, 0, 0, ifindex).into())
                    .unwrap();
                socket.set_multicast_if_v6(ifindex).unwrap();
                let to = SocketAddrV6::new(MULTICAST_V6, 0, 0, ifindex);
                (MULTICAST_V6.into(), to.into())
            }
        };
        for _ in 0..count {
            for f in Forgery::ALL {
                let (bytes, ttl) = f.message(vip, source, to);
                if source.is_ipv4() {
                    socket.set_multicast_ttl_v4(ttl).unwrap();
                } else {
                    socket.set_multicast_hops_v6(ttl).unwrap();
                }
                socket.send_to(&bytes, &addr.into()).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
}

/// `tandem_vrrp_dropped_packets_total` by reason, from the admin port of host `name`.
fn dropped_metrics(lab: &Lab, name: &str) -> std::collections::BTreeMap<String, u64> {
    let body = lab.in_ns(name, || {
        let mut s = TcpStream::connect("127.0.0.1:9100").unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    // One instance per node: its counters by reason (the labels are interface, vrid,
    // reason).
    body.lines()
        .filter_map(|l| l.strip_prefix("tandem_vrrp_dropped_packets_total{"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("reason=\"")?;
            let (reason, n) = rest.split_once("\"} ")?;
            Some((reason.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

fn ha_of(lab: &Lab, name: &str) -> serde_json::Value {
    support::ctl_json(&lab.socket(name), &["ha"])
}

/// The counters of `ha.dropped` ([[reason, n], ...]).
fn dropped(ha: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    ha["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d[0].as_str().unwrap().to_string(), d[1].as_u64().unwrap()))
        .collect()
}

fn rogue_sender(v6: bool) {
    let Some(mut lab) = lab6(if v6 { "r6" } else { "r4" }) else {
        return;
    };
    lab.host("rogue", "10.99.0.66/24");
    ipv6(&lab, "rogue", "fe80::66", "fd99::66");
    let (vips, peer_of_lb1, peer_of_lb2, listen, source, vip): (String, _, _, _, IpAddr, IpAddr) =
        if v6 {
            (
                format!("[\"{LL_VIP}/64\", \"{VIP6}/64\"]"),
                "fe80::2",
                "fe80::1",
                format!("[{VIP6}]:80"),
                "fe80::66".parse().unwrap(),
                LL_VIP.parse().unwrap(),
            )
        } else {
            (
                "[\"10.99.0.100/24\"]".to_string(),
                "10.99.0.2",
                "10.99.0.1",
                "10.99.0.100:80".to_string(),
                Ipv4Addr::new(10, 99, 0, 66).into(),
                Ipv4Addr::new(10, 99, 0, 100).into(),
            )
        };
    let global = "admin_listen = \"127.0.0.1:9100\"\n";
    let ha = |peer: &str| format!("virtual_ips = {vips}\nunicast_peers = [\"{peer}\"]\n");
    let mut lb1 = start(&lab, "lb1", 150, &listen, global, &ha(peer_of_lb1));
    let mut lb2 = start(&lab, "lb2", 100, &listen, global, &ha(peer_of_lb2));
    let held = |name: &str| {
        let out = lab.ip_in(name, &["addr", "show", "dev", "eth0"]);
        let vip = vip.to_string();
        out.contains(&format!(" {vip}/"))
    };
    lab.wait("lb1 master", Duration::from_secs(5), || held("lb1"));
    lb1.wait_for("VRRP BACKUP -> MASTER");
    lb2.wait_for("VRRP INIT -> BACKUP");
    // The pair hears each other by unicast.
    lab.wait("lb2 hears lb1", Duration::from_secs(2), || {
        ha_of(&lab, "lb2")["master"] == peer_of_lb2
    });
    let before = [ha_of(&lab, "lb1"), ha_of(&lab, "lb2")];
    let metrics_before = dropped_metrics(&lab, "lb1");

    const EACH: usize = 5;
    send_forgeries(&lab, vip, source, EACH);
    // Until both nodes counted them all (or a bound passes: then the asserts say what
    // is missing), and a little longer, so that a count over the mark would show.
    let total = |name: &str, ha: &serde_json::Value| -> u64 {
        let (now, was) = (dropped(&ha_of(&lab, name)), dropped(ha));
        Forgery::ALL
            .iter()
            .map(|f| now.get(f.label()).unwrap_or(&0) - was.get(f.label()).unwrap_or(&0))
            .sum()
    };
    let expected = (EACH * Forgery::ALL.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    while (total("lb1", &before[0]) < expected || total("lb2", &before[1]) < expected)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    let after = [ha_of(&lab, "lb1"), ha_of(&lab, "lb2")];
    let metrics_after = dropped_metrics(&lab, "lb1");
    for (node, (b, a)) in ["lb1", "lb2"].iter().zip(before.iter().zip(after.iter())) {
        let (b, a) = (dropped(b), dropped(a));
        for f in Forgery::ALL {
            let delta =
                a.get(f.label()).copied().unwrap_or(0) - b.get(f.label()).copied().unwrap_or(0);
            println!(
                "{} {node}: {} forged adverts sent, dropped as {:?}: {delta}",
                if v6 { "IPv6" } else { "IPv4" },
                EACH,
                f.label()
            );
            assert_eq!(
                delta, EACH as u64,
                "{node} {f:?}: before {b:?}, after {a:?}"
            );
        }
    }
    for f in Forgery::ALL {
        let delta = metrics_after.get(f.label()).copied().unwrap_or(0)
            - metrics_before.get(f.label()).copied().unwrap_or(0);
        assert_eq!(delta, EACH as u64, "metric {f:?}: {metrics_after:?}");
    }
    // The master stayed master throughout: no state change at either node.
    assert_eq!(after[0]["state"], "MASTER", "{}", after[0]);
    assert_eq!(after[1]["state"], "BACKUP", "{}", after[1]);
    assert_eq!(after[0]["transitions"], before[0]["transitions"]);
    assert_eq!(after[1]["transitions"], before[1]["transitions"]);
    assert_eq!(after[1]["master"], peer_of_lb2);
    assert!(held("lb1") && !held("lb2"));
    // Logged, once per reason however many came.
    let log = lb1.drain_lines();
    for reason in [
        "checksum mismatch",
        "VRRP version is not 3",
        "sender is not a configured peer",
    ] {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("VRRP packet dropped: {reason}")))
            .count();
        assert_eq!(lines, 1, "{reason}: {lines} log lines in\n{log}");
    }
}

#[test]
fn forged_ipv4_adverts_are_dropped_counted_by_reason_and_the_master_stays_master() {
    rogue_sender(false);
}

#[test]
fn forged_ipv6_adverts_are_dropped_counted_by_reason_and_the_master_stays_master() {
    rogue_sender(true);
}
