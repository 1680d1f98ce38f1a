//! N active balancers behind ECMP, announced by BGP through BIRD 2, in a
//! network-namespace lab: a router running BIRD with multipath routes (`merge paths`,
//! the L4 hash), tandem nodes each with its own BIRD (BGP to the router, BFD), three
//! backends that answer with their name and the node that relayed, and a client with
//! 200 source addresses. It shows: every node carries flows and each client gets the
//! same backend whichever node its connection reached (maglev); SIGKILL of one tandem
//! withdraws its route within a second and its clients keep their backends on the
//! others; a node whose pools all go down withdraws; the operator's withdraw and
//! restore; a node that rejoins announces only after its sync bulk table (every
//! client's sticky pin) and its checks; SIGTERM withdraws before the drain; the
//! router's BFD drops a node cut off the network; and the share of
//! established connections on the other nodes that a joining node breaks, with the
//! router's plain multipath routes and with a resilient next-hop group.
//!
//! Skipped (loudly) without root, iproute2 or BIRD (`bird`, `birdc`: Debian bird2).
//! BIRD runs with its configuration and control socket in the lab's temporary folder.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::lab::{self, Lab};
use crate::support::{Running, ctl, ctl_json, which};

/// The announced service address.
const VIP: &str = "10.77.100.10";
const PORT: u16 = 7000;
const ROUTER: &str = "10.77.0.1";
const CLIENTS: u8 = 200;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), PORT)
}

/// Node `n`'s address towards the router, and towards the backends (node 4, the one
/// that joins, has the lowest sync address: it dials its peers at once).
fn front(n: u8) -> String {
    format!("10.77.0.{}", 10 + n)
}
fn back(n: u8) -> String {
    if n == 4 {
        "10.78.0.10".into()
    } else {
        format!("10.78.0.{}", 10 + n)
    }
}
fn node_of_back(ip: &str) -> String {
    (1..=4)
        .find(|&n| back(n) == ip)
        .map_or(format!("? {ip}"), |n| format!("n{n}"))
}

fn client_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 79, 1, i + 1))
}

/// A backend in host `name` that answers each line with "NAME NODE-ADDRESS": who
/// served, and which tandem node relayed (its address on the backend network).
fn line_backend(lab: &Lab, name: &'static str, address: SocketAddr) {
    let listener = lab.in_ns(name, move || TcpListener::bind(address).unwrap());
    let stop = lab.stopped();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let peer = stream.peer_addr().map(|a| a.ip().to_string());
                let mut writer = stream.try_clone().unwrap();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let answer = format!("{name} {}\n", peer.as_deref().unwrap_or("?"));
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// A client connection: the backend and node of its last answer.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects from `from` (call inside the client's namespace).
    fn open(from: IpAddr) -> Option<Conn> {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        socket.bind(&SocketAddr::new(from, 0).into()).ok()?;
        socket
            .connect_timeout(&vip().into(), Duration::from_millis(300))
            .ok()?;
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_millis(700)))
            .ok()?;
        Some(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// Sends a line and reads the answer: (backend, node).
    fn ask(&mut self) -> Option<(String, String)> {
        self.stream.get_mut().write_all(b"who\n").ok()?;
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        let (backend, node) = line.trim().split_once(' ')?;
        Some((backend.to_string(), node_of_back(node)))
    }
}

/// Each client connects `per_client` times (new source ports: the router's L4 hash
/// spreads them over the nodes), retrying a failed one up to 5 times; returns every
/// answer by client.
fn round(lab: &Lab, per_client: usize) -> BTreeMap<u8, Vec<(String, String)>> {
    lab.in_ns("client", move || {
        let mut out = BTreeMap::new();
        for i in 0..CLIENTS {
            let mut answers = Vec::new();
            for _ in 0..per_client {
                for _attempt in 0..5 {
                    if let Some(a) = Conn::open(client_ip(i)).and_then(|mut c| c.ask()) {
                        answers.push(a);
                        break;
                    }
                }
            }
            out.insert(i, answers);
        }
        out
    })
}

/// One open connection per client, each answered once.
fn hold(lab: &Lab) -> Vec<(Conn, (String, String))> {
    lab.in_ns("client", move || {
        (0..CLIENTS)
            .filter_map(|i| {
                let mut c = Conn::open(client_ip(i))?;
                let first = c.ask()?;
                Some((c, first))
            })
            .collect()
    })
}

/// Of `held` connections, how many no longer answer (reset, or answered by another
/// node: the flow moved).
fn broken(held: &mut [(Conn, (String, String))]) -> usize {
    let mut n = 0;
    for (c, first) in held.iter_mut() {
        if c.ask().as_ref() != Some(&*first) {
            n += 1;
        }
    }
    n
}

fn tally(answers: &BTreeMap<u8, Vec<(String, String)>>) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for (_, node) in answers.values().flatten() {
        *by_node.entry(node.clone()).or_default() += 1;
    }
    by_node
}

/// The one backend each client got; panics if a client got two.
fn backend_by_client(answers: &BTreeMap<u8, Vec<(String, String)>>) -> BTreeMap<u8, String> {
    answers
        .iter()
        .map(|(i, list)| {
            assert!(!list.is_empty(), "client {i} was never answered");
            let first = &list[0].0;
            assert!(
                list.iter().all(|(b, _)| b == first),
                "client {i} got different backends from different nodes: {list:?}"
            );
            (*i, first.clone())
        })
        .collect()
}

/// The router's next hops for the service address, from its kernel table.
fn next_hops(lab: &Lab) -> Vec<String> {
    let out = lab.ip_in("router", &["route", "show", VIP]);
    (1..=4)
        .filter(|&n| out.contains(&format!("via {} ", front(n))))
        .map(|n| format!("n{n}"))
        .collect()
}

/// `birdc` on the router's control socket.
fn birdc(socket: &PathBuf, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bird_config(router_id: &str, body: &str) -> String {
    format!("router id {router_id};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n{body}")
}

/// Timers short enough for a lab: BGP sessions come up within a couple of seconds,
/// BFD declares a silent peer dead after 3 x 100 ms.
const BGP_TIMERS: &str =
    "connect delay time 1; connect retry time 1; error wait time 1, 2; hold time 3; bfd on;";
const BFD: &str = "protocol bfd { interface \"eth0\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n";

fn router_bird(lab: &Lab) -> String {
    let mut body = String::from(BFD);
    body += "protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n";
    body += &format!(
        "template bgp balancer {{ local {ROUTER} as 65000; {BGP_TIMERS} ipv4 {{ import all; export none; }}; }}\n"
    );
    for n in 1..=4 {
        body += &format!(
            "protocol bgp n{n} from balancer {{ neighbor {} as 65001; }}\n",
            front(n)
        );
    }
    lab.write_config("router-bird", &bird_config(ROUTER, &body))
}

fn node_bird(lab: &Lab, n: u8) -> String {
    let me = front(n);
    let body = format!(
        "{BFD}protocol direct announce {{ ipv4; interface \"tdm-ann*\"; }}\n\
protocol bgp upstream {{ local {me} as 65001; neighbor {ROUTER} as 65000; {BGP_TIMERS} \
ipv4 {{ import none; export where proto = \"announce\"; }}; }}\n"
    );
    lab.write_config(&format!("n{n}-bird"), &bird_config(&me, &body))
}

fn run_bird(lab: &Lab, host: &str, config: &str) -> (Running, PathBuf) {
    let socket = lab.dir.path().join(format!("{host}-bird.ctl"));
    let socket_arg = socket.display().to_string();
    let bird = lab.spawn(host, "bird", &["-f", "-c", config, "-s", &socket_arg]);
    (bird, socket)
}

fn node_config(lab: &Lab, n: u8) -> String {
    let dir = lab.dir.path().display();
    let key = lab.dir.path().join("sync.key");
    std::fs::write(&key, "a shared key for the lab, 32 b!!").unwrap();
    let peers: Vec<String> = (1..=4)
        .filter(|&p| p != n)
        .map(|p| format!("\"{}:7946\"", back(p)))
        .collect();
    let text = format!(
        "[global]\nname = \"n{n}\"\ncontrol_socket = \"{dir}/n{n}.sock\"\ndrain_timeout = \"1s\"\n\n\
[[pool]]\nname = \"web\"\nbalance = \"maglev\"\n\
backends = [{{ address = \"10.78.0.21:{PORT}\" }}, {{ address = \"10.78.0.22:{PORT}\" }}, {{ address = \"10.78.0.23:{PORT}\" }}]\n\
check = {{ type = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 1 }}\n\
sticky = {{ key = \"source-ip\", ttl = \"10m\" }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"{VIP}:{PORT}\"]\npool = \"web\"\nconnect_timeout = \"300ms\"\n\n\
[sync]\nlisten = \"{}:7946\"\npeers = [{}]\nkey_file = \"{}\"\n\n\
[announce]\nannounce_delay = \"500ms\"\nstop_delay = \"200ms\"\n",
        back(n),
        peers.join(", "),
        key.display()
    );
    lab.write_config(&format!("n{n}"), &text)
}

/// A running node: tandem and its BIRD.
struct Node {
    tandem: Option<Running>,
    _bird: Running,
}

fn start_node(lab: &Lab, n: u8) -> Node {
    let (bird, _) = run_bird(lab, &format!("n{n}"), &node_bird(lab, n));
    let tandem = lab.run_tandem(&format!("n{n}"), &node_config(lab, n));
    Node {
        tandem: Some(tandem),
        _bird: bird,
    }
}

fn add_node_host(lab: &mut Lab, n: u8) {
    let name = format!("n{n}");
    lab.host(&name, &format!("{}/24", front(n)));
    lab.attach(&name, "back", "eth1", &format!("{}/24", back(n)));
    lab.ip_in(&name, &["route", "add", "default", "via", ROUTER]);
}

/// Waits until the router's route has exactly `want` as next hops; the time it took.
/// On failure, says what the router's and the nodes' BIRDs and interfaces hold.
fn wait_hops(lab: &Lab, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let hops = next_hops(lab);
        if hops == want {
            return started.elapsed();
        }
        if started.elapsed() >= within {
            let mut report = format!(
                "the router's next hops are {hops:?}, not {want:?}, after {within:?}:\n{}",
                lab.ip_in("router", &["route", "show", VIP])
            );
            for host in ["router", "n1", "n2", "n3", "n4"] {
                let socket = lab.dir.path().join(format!("{host}-bird.ctl"));
                if socket.exists() {
                    report += &format!(
                        "--- {host}: birdc show protocols; show route\n{}{}",
                        birdc(&socket, &["show", "protocols"]),
                        birdc(&socket, &["show", "route"])
                    );
                }
                if host != "router" {
                    report += &Command::new("ip")
                        .args(["-n", &lab.ns(host), "addr", "show", "tdm-ann0"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                }
            }
            panic!("{report}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn n_balancers_behind_ecmp_announce_withdraw_and_agree_on_backends() {
    if which("bird").is_none() || which("birdc").is_none() {
        eprintln!("SKIPPED: the announce lab needs BIRD 2 (Debian bird2: bird, birdc)");
        return;
    }
    let Some(mut lab) = Lab::new("an") else {
        return;
    };
    let started = Instant::now();
    // The router between the client network and the balancers' network.
    lab.host("router", &format!("{ROUTER}/24"));
    lab.attach("router", "cli", "eth1", "10.79.0.1/16");
    lab.sysctl("router", "net.ipv4.ip_forward", "1");
    lab.sysctl("router", "net.ipv4.fib_multipath_hash_policy", "1");
    lab.host_on("client", "cli", "10.79.0.2/16");
    lab.ip_in("client", &["route", "add", "default", "via", "10.79.0.1"]);
    let sources: Vec<String> = (0..CLIENTS)
        .map(|i| format!("{}/16", client_ip(i)))
        .collect();
    lab::add_addresses(&lab, "client", &sources);
    for (i, name) in ["be1", "be2", "be3"].into_iter().enumerate() {
        let address = format!("10.78.0.{}", 21 + i);
        lab.host_on(name, "back", &format!("{address}/24"));
        line_backend(&lab, name, SocketAddr::new(address.parse().unwrap(), PORT));
    }
    for n in 1..=4 {
        add_node_host(&mut lab, n);
    }
    let (_router_bird, router_ctl) = run_bird(&lab, "router", &router_bird(&lab));
    let mut nodes: HashMap<u8, Node> = (1..=3).map(|n| (n, start_node(&lab, n))).collect();
    let t = wait_hops(&lab, &["n1", "n2", "n3"], Duration::from_secs(20));
    eprintln!(
        "FIGURE three nodes announced: the router has three next hops {:.1} s after the lab began ({t:?} of waiting)",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "router: {}",
        lab.ip_in("router", &["route", "show", VIP]).trim()
    );
    let status = ctl_json(&lab.socket("n1"), &["announce"]);
    assert_eq!(status["addresses"][0]["announced"], true, "{status}");

    // 1. Every node carries flows; every client has one backend whichever node.
    let a = round(&lab, 3);
    let by_node = tally(&a);
    eprintln!("FIGURE 200 clients x 3 connections, by node: {by_node:?}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            by_node.get(n).copied().unwrap_or(0) >= 60,
            "{n} carried too few of 600 flows: {by_node:?}"
        );
    }
    let backends = backend_by_client(&a);
    let multi_node = a
        .values()
        .filter(|l| {
            let first = &l[0].1;
            l.iter().any(|(_, n)| n != first)
        })
        .count();
    eprintln!(
        "FIGURE {multi_node} of 200 clients reached two or three nodes, each got one backend"
    );
    assert!(
        multi_node > 50,
        "the L4 hash should spread a client's connections"
    );

    // 2. SIGKILL of one tandem: its route goes within a second, its clients keep
    // their backends on the others.
    nodes
        .get_mut(&1)
        .unwrap()
        .tandem
        .take()
        .unwrap()
        .signal(rustix::process::Signal::KILL);
    let withdrawn = wait_hops(&lab, &["n2", "n3"], Duration::from_secs(5));
    eprintln!(
        "FIGURE SIGKILL of tandem on n1: the router lost the next hop after {} ms",
        withdrawn.as_millis()
    );
    assert!(withdrawn < Duration::from_secs(1), "{withdrawn:?}");
    let b = round(&lab, 2);
    assert_eq!(
        backend_by_client(&b),
        backends,
        "a client changed backends when n1 died"
    );
    let by_node = tally(&b);
    eprintln!("FIGURE after n1's death, by node: {by_node:?}; every client kept its backend");
    assert!(!by_node.contains_key("n1"));

    // 3. A node whose pools all go down withdraws (its backend link cut), and
    // announces again once they are back (after announce_delay).
    lab.cut_link("n3", "eth1");
    let t = wait_hops(&lab, &["n2"], Duration::from_secs(5));
    eprintln!(
        "FIGURE n3 lost every backend: withdrawn from the router {} ms after its link was cut (checks every 200 ms, fall 1)",
        t.as_millis()
    );
    let (_, text, _) = ctl(&lab.socket("n3"), &["announce"]);
    eprintln!("tandem ctl announce on n3:\n{text}");
    assert!(text.contains("no healthy backend in pool web"), "{text}");
    let c = round(&lab, 1);
    assert_eq!(backend_by_client(&c), backends);
    lab.ip_in("n3", &["link", "set", "eth1", "up"]);
    let t = wait_hops(&lab, &["n2", "n3"], Duration::from_secs(10));
    eprintln!(
        "FIGURE n3's backends back: announced again after {} ms",
        t.as_millis()
    );

    // 4. n1 restarts: it announces only after its sync bulk table and checks.
    let mut n1 = lab.run_tandem("n1", &node_config(&lab, 1));
    let t = wait_hops(&lab, &["n1", "n2", "n3"], Duration::from_secs(20));
    let ready = n1.wait_for("ready to announce");
    assert!(ready.contains("sticky tables synced"), "{ready}");
    // The table it announced with: every client's pin, from its peers' bulk transfer.
    let pins = ctl_json(&lab.socket("n1"), &["pools"])["pools"][0]["sticky_entries"].clone();
    eprintln!("FIGURE n1 announced with {pins} sticky pins from the bulk transfer");
    assert_eq!(
        pins,
        u64::from(CLIENTS),
        "n1 announced without the whole table"
    );
    eprintln!(
        "FIGURE n1 restarted: announced {} ms after start; it said: {ready}",
        t.as_millis()
    );
    nodes.get_mut(&1).unwrap().tandem = Some(n1);

    // 5. The operator's withdraw and restore.
    let (code, text, err) = ctl(&lab.socket("n2"), &["announce", "withdraw"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("withdrawn by the operator"), "{text}");
    let t = wait_hops(&lab, &["n1", "n3"], Duration::from_secs(5));
    eprintln!(
        "FIGURE tandem ctl announce withdraw on n2: off the router after {} ms",
        t.as_millis()
    );
    ctl(&lab.socket("n2"), &["announce", "restore"]);
    wait_hops(&lab, &["n1", "n2", "n3"], Duration::from_secs(5));

    // 6. A fourth node joins: the share of established connections broken on the
    // three others, with the router's plain multipath route (hash-threshold).
    let mut held = hold(&lab);
    let held_count = held.len();
    nodes.insert(4, start_node(&lab, 4));
    wait_hops(&lab, &["n1", "n2", "n3", "n4"], Duration::from_secs(20));
    let plain = broken(&mut held);
    eprintln!(
        "FIGURE n4 joined (plain ECMP, hash-threshold): {plain} of {held_count} established connections on n1-n3 broken ({:.0}%)",
        100.0 * plain as f64 / held_count as f64
    );
    drop(held);
    let d = round(&lab, 1);
    assert_eq!(backend_by_client(&d), backends, "n4 chose other backends");
    assert!(tally(&d).contains_key("n4"), "n4 carries flows");

    // 7. The same with a resilient next-hop group on the router (what BIRD 2 does not
    // install itself: made here with `ip nexthop`, the route BIRD learned copied).
    ctl(&lab.socket("n4"), &["announce", "withdraw"]);
    wait_hops(&lab, &["n1", "n2", "n3"], Duration::from_secs(5));
    let resilient = (|| {
        for n in 1..=4u8 {
            let id = n.to_string();
            lab.ip_in(
                "router",
                &["nexthop", "add", "id", &id, "via", &front(n), "dev", "eth0"],
            );
        }
        let group = |members: &str| {
            let mut args = vec!["nexthop", "replace", "id", "100", "group", members];
            args.extend(["type", "resilient", "buckets", "512", "idle_timer", "60"]);
            let out = Command::new("ip")
                .args(["-n", &lab.ns("router")])
                .args(&args)
                .output()
                .unwrap();
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
        };
        group("1/2/3")?;
        birdc(&router_ctl, &["disable", "kernel1"]);
        lab.ip_in(
            "router",
            &["route", "replace", &format!("{VIP}/32"), "nhid", "100"],
        );
        Ok::<_, String>(group)
    })();
    match resilient {
        Err(e) => eprintln!(
            "FIGURE resilient next-hop groups: not supported by this kernel ({e}); not measured"
        ),
        Ok(group) => {
            let mut held = hold(&lab);
            let held_count = held.len();
            ctl(&lab.socket("n4"), &["announce", "restore"]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !birdc(&router_ctl, &["show", "route", "protocol", "n4"]).contains(VIP) {
                assert!(Instant::now() < deadline, "n4 did not announce again");
                std::thread::sleep(Duration::from_millis(20));
            }
            group("1/2/3/4").unwrap();
            let resilient_broken = broken(&mut held);
            eprintln!(
                "FIGURE n4 joined (resilient group, 512 buckets, idle_timer 60 s): {resilient_broken} of {held_count} established connections broken ({:.0}%)",
                100.0 * resilient_broken as f64 / held_count as f64
            );
            assert!(
                resilient_broken < plain.max(1),
                "resilient hashing broke {resilient_broken}, plain {plain}"
            );
            let e = round(&lab, 1);
            assert_eq!(backend_by_client(&e), backends);
            eprintln!("after the resilient join, by node: {:?}", tally(&e));
            // Back to BIRD's own route.
            lab.ip_in(
                "router",
                &["route", "del", &format!("{VIP}/32"), "nhid", "100"],
            );
        }
    }

    // 8. SIGTERM withdraws first, then drains.
    birdc(&router_ctl, &["enable", "kernel1"]);
    wait_hops(&lab, &["n1", "n2", "n3", "n4"], Duration::from_secs(10));
    let mut n2 = nodes.get_mut(&2).unwrap().tandem.take().unwrap();
    n2.signal(rustix::process::Signal::TERM);
    let t = wait_hops(&lab, &["n1", "n3", "n4"], Duration::from_secs(5));
    let (withdrawn_at, _) = n2.wait_for_position("announcements withdrawn");
    let (stopped_at, _) = n2.wait_for_position("stopped");
    assert!(
        withdrawn_at < stopped_at,
        "withdrawn before the drain ended"
    );
    assert_eq!(n2.wait_exit(Duration::from_secs(10)), 0);
    eprintln!(
        "FIGURE SIGTERM on n2: off the router after {} ms, before its drain began",
        t.as_millis()
    );

    // 9. A whole node dies (cut off the network, tandem and BIRD still running): the
    // router's BFD drops its BGP session and its route within a second.
    lab.isolate("n3", true);
    let t = wait_hops(&lab, &["n1", "n4"], Duration::from_secs(5));
    eprintln!(
        "FIGURE n3 cut off: the router's BFD dropped its next hop after {} ms",
        t.as_millis()
    );
    assert!(t < Duration::from_secs(1), "{t:?}");
    let f = round(&lab, 1);
    assert_eq!(backend_by_client(&f), backends);
    eprintln!(
        "FIGURE the lab took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `ip monitor OBJECT` in host `name`; its lines are the returned process's (killed
/// when dropped, also when the test fails).
fn monitor(lab: &Lab, name: &str, object: &str) -> Running {
    let ns = lab.ns(name);
    Running::spawn_program("ip", &["-n", &ns, "monitor", object])
}

/// `tandem upgrade` of an announcing node: the new process takes the device BIRD
/// exports and what is announced on it, so the router sees no withdrawal (its route
/// watched continuously and by `ip monitor`), no connection is refused, the old process
/// exits, and the new one owns the route: the operator's withdraw and SIGTERM still
/// withdraw it.
#[test]
fn an_upgrade_keeps_the_route_and_hands_it_to_the_new_process() {
    if which("bird").is_none() || which("birdc").is_none() {
        eprintln!("SKIPPED: the announce lab needs BIRD 2 (Debian bird2: bird, birdc)");
        return;
    }
    let Some(mut lab) = Lab::new("au") else {
        return;
    };
    lab.host("router", &format!("{ROUTER}/24"));
    lab.attach("router", "cli", "eth1", "10.79.0.1/16");
    lab.sysctl("router", "net.ipv4.ip_forward", "1");
    lab.host_on("client", "cli", "10.79.0.2/16");
    lab.ip_in("client", &["route", "add", "default", "via", "10.79.0.1"]);
    lab.host_on("be1", "back", "10.78.0.21/24");
    line_backend(
        &lab,
        "be1",
        SocketAddr::new("10.78.0.21".parse().unwrap(), PORT),
    );
    add_node_host(&mut lab, 1);
    let (_router_bird, _) = run_bird(&lab, "router", &router_bird(&lab));
    let (_n1_bird, _) = run_bird(&lab, "n1", &node_bird(&lab, 1));
    let dir = lab.dir.path().display().to_string();
    let config = lab.write_config(
        "n1",
        &format!(
            "[global]\nname = \"n1\"\ncontrol_socket = \"{dir}/n1.sock\"\ndrain_timeout = \"3s\"\n\n\
[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.78.0.21:{PORT}\" }}]\n\
check = {{ type = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 1 }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"{VIP}:{PORT}\"]\npool = \"web\"\nconnect_timeout = \"300ms\"\n\n\
[announce]\nannounce_delay = \"500ms\"\nstop_delay = \"200ms\"\n"
        ),
    );
    let mut old = lab.run_tandem("n1", &config);
    wait_hops(&lab, &["n1"], Duration::from_secs(20));

    // Watch the route at the router and the address on the node's device.
    let mut routes = monitor(&lab, "router", "route");
    let mut addresses = monitor(&lab, "n1", "address");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll_stopped = poll_stop.clone();
    let router_ns = lab.ns("router");
    let poller = std::thread::spawn(move || {
        let (mut samples, mut missing) = (0u64, 0u64);
        while !poll_stopped.load(Ordering::Relaxed) {
            let out = Command::new("ip")
                .args(["-n", &router_ns, "route", "show", VIP])
                .output()
                .unwrap();
            samples += 1;
            if !String::from_utf8_lossy(&out.stdout).contains(&format!("via {}", front(1))) {
                missing += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (samples, missing)
    });
    // A held connection, and new ones one after the other.
    let client: IpAddr = "10.79.0.2".parse().unwrap();
    let held_stop = stop.clone();
    let held = lab.thread_in("client", move || {
        let mut conn = Conn::open(client).expect("the held connection");
        let (mut ok, mut failed) = (0u64, 0u64);
        while !held_stop.load(Ordering::Relaxed) {
            match conn.ask() {
                Some(_) => ok += 1,
                None => {
                    failed += 1;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });
    let stream_stop = stop.clone();
    let stream = lab.thread_in("client", move || {
        let (mut ok, mut failed) = (0u64, 0u64);
        while !stream_stop.load(Ordering::Relaxed) {
            match Conn::open(client).and_then(|mut c| c.ask()) {
                Some(_) => ok += 1,
                None => failed += 1,
            }
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(500));
    let crate::support::Upgraded { new_pid, took, .. } =
        crate::support::upgrade_json(&lab.socket("n1"), &mut old);
    let _new = crate::upgrade::KillOnDrop(new_pid);
    // The old process retires, drains its one connection for drain_timeout and exits:
    // its descriptor of the device closes, the new one's keeps it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (held_ok, held_failed) = held.join().unwrap();
    let (new_ok, new_failed) = stream.join().unwrap();
    assert_eq!(old.wait_exit(Duration::from_secs(10)), 0);
    std::thread::sleep(Duration::from_millis(500));
    poll_stop.store(true, Ordering::Relaxed);
    let (samples, missing) = poller.join().unwrap();
    let withdrawals: Vec<String> = routes
        .lines_now()
        .iter()
        .chain(addresses.lines_now().iter())
        .filter(|l| l.starts_with("Deleted") && l.contains(VIP))
        .cloned()
        .collect();
    eprintln!(
        "FIGURE tandem upgrade of an announcing node: {} ms; the router's route checked {samples} times, missing {missing}; netlink withdrawals {}; held connection {held_ok} answers, {held_failed} failed; new connections {new_ok} answered, {new_failed} failed",
        took.as_millis(),
        withdrawals.len()
    );
    assert!(withdrawals.is_empty(), "withdrawn: {withdrawals:?}");
    assert_eq!(missing, 0, "the router lost the route");
    assert!(samples > 100, "{samples} samples");
    assert_eq!(held_failed, 0, "the held connection broke");
    assert_eq!(new_failed, 0, "new connections failed");
    assert!(new_ok > 10, "{new_ok} new connections");
    assert_eq!(next_hops(&lab), ["n1"]);
    let status = ctl_json(&lab.socket("n1"), &["announce"]);
    assert_eq!(status["addresses"][0]["announced"], true, "{status}");

    // The new process owns the route: the operator's withdraw and restore, then
    // SIGTERM, act on it.
    let (code, _, err) = ctl(&lab.socket("n1"), &["announce", "withdraw"]);
    assert_eq!(code, 0, "{err}");
    wait_hops(&lab, &[], Duration::from_secs(5));
    ctl(&lab.socket("n1"), &["announce", "restore"]);
    wait_hops(&lab, &["n1"], Duration::from_secs(5));
    let pid = rustix::process::Pid::from_raw(new_pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t = wait_hops(&lab, &[], Duration::from_secs(5));
    eprintln!(
        "FIGURE SIGTERM on the upgraded process: off the router after {} ms",
        t.as_millis()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while rustix::process::test_kill_process(pid).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = old.drain_lines();
    assert!(out.contains("announcements withdrawn"), "{out}");
}
