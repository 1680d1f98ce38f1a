//! Redirect mode in a network-namespace lab: the kernel forwards (nftables DNAT), the
//! backends route their replies through a gateway address that moves with the master,
//! and conntrackd carries the connection states to the backup. A client holds an
//! IMAP-like session (a line every 50 ms) while the master is SIGKILLed and cut off;
//! the session must go on through the backup with no reset and no lost byte.
//!
//! public br0: client 10.0.0.100, lbA 10.0.0.2, lbB 10.0.0.3, virtual 10.0.0.10
//! private br1: lbA 10.1.0.2, lbB 10.1.0.3, backends .11 .12 (gateway 10.1.0.1, virtual)
//! sync br2: lbA 10.2.0.2, lbB 10.2.0.3

use crate::support;
use crate::support::lab;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lab::Lab;
use support::{Running, TANDEM};

const VIP: &str = "10.0.0.10";
const GATEWAY: &str = "10.1.0.1";
const BACKENDS: [(&str, &str); 2] = [("b1", "10.1.0.11"), ("b2", "10.1.0.12")];

fn service() -> SocketAddr {
    format!("{VIP}:143").parse().unwrap()
}

/// The lab: two balancers on three networks, two backends, a client.
fn lab() -> Option<Lab> {
    let mut lab = Lab::new("rd")?;
    lab.host("client", "10.0.0.100/24");
    for (name, n) in [("lbA", 2), ("lbB", 3)] {
        lab.host(name, &format!("10.0.0.{n}/24"));
        lab.attach(name, "br1", "eth1", &format!("10.1.0.{n}/24"));
        lab.attach(name, "br2", "eth2", &format!("10.2.0.{n}/24"));
        lab.sysctl(name, "net.ipv4.ip_forward", "1");
    }
    for (name, address) in BACKENDS {
        lab.host_on(name, "br1", &format!("{address}/24"));
        lab.ip_in(name, &["route", "add", "default", "via", GATEWAY]);
    }
    std::fs::write(
        lab.dir.path().join("sync.key"),
        "a shared secret of the lab pair\n",
    )
    .unwrap();
    Some(lab)
}

/// A line server: answers each line with "NAME LINE". Stops listening when `stop` is
/// set (its established connections go on).
fn line_backend(lab: &Lab, name: &'static str, address: &str, stop: Arc<AtomicBool>) {
    let at: SocketAddr = format!("{address}:143").parse().unwrap();
    let listener = lab.in_ns(name, move || TcpListener::bind(at).unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            std::thread::spawn(move || {
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer
                        .write_all(format!("{name} {line}").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

fn node_config(lab: &Lab, name: &str, n: u8, peer: u8, priority: u8, global: &str) -> String {
    let dir = lab.dir.path().display();
    let backends: Vec<String> = BACKENDS
        .iter()
        .map(|(_, a)| format!("{{ address = \"{a}:143\" }}"))
        .collect();
    let text = format!(
        "[global]\nname = \"{name}\"\ncontrol_socket = \"{dir}/{name}.sock\"\ndrain_timeout = \"1s\"\n{global}\n\
[[pool]]\nname = \"mail\"\nbackends = [{}]\n\
check = {{ type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 2, initial = \"up\" }}\n\n\
[[service]]\nname = \"imap\"\nlisten = [\"{VIP}:143\"]\nmode = \"redirect\"\npool = \"mail\"\n\n\
[ha]\ninterface = \"eth0\"\nvrid = 52\npriority = {priority}\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\n\
[[ha.group]]\ninterface = \"eth1\"\nvirtual_ips = [\"{GATEWAY}/24\"]\n\n\
[sync]\nlisten = \"10.2.0.{n}:7946\"\npeers = [\"10.2.0.{peer}:7946\"]\nkey_file = \"{dir}/sync.key\"\n",
        backends.join(", ")
    );
    lab.write_config(name, &text)
}

fn start_node(lab: &Lab, name: &str, n: u8, peer: u8, priority: u8, global: &str) -> Running {
    lab.run_tandem(name, &node_config(lab, name, n, peer, priority, global))
}

/// `tandem ctl ARGS` on node `name`, which must succeed.
fn ctl(lab: &Lab, name: &str, args: &[&str]) {
    let (code, _, err) = support::ctl(&lab.socket(name), args);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
}

/// `tandem ctl redirect --json` of node `name`.
fn redirect_status(lab: &Lab, name: &str) -> serde_json::Value {
    support::ctl_json(&lab.socket(name), &["redirect"])
}

/// Whether host `name` has tandem's nftables table.
fn has_table(lab: &Lab, name: &str) -> bool {
    let nft = tandem_redirect::conntrackd::locate(std::path::Path::new("nft"));
    std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns(name)])
        .arg(nft)
        .args(["list", "table", "inet", "tandem"])
        .output()
        .unwrap()
        .status
        .success()
}

/// What a session saw.
#[derive(Debug)]
struct SessionReport {
    backend: String,
    exchanges: u64,
    longest_stall: Duration,
    error: Option<String>,
}

/// An open session from the client: a numbered line every 50 ms, each answer checked
/// (right backend, right number, nothing lost or reordered), until `stop`.
struct Session {
    exchanges: Arc<AtomicU64>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<SessionReport>,
}

impl Session {
    fn open(lab: &Lab) -> Session {
        let stream = lab.in_ns("client", || {
            TcpStream::connect_timeout(&service(), Duration::from_secs(2)).unwrap()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let exchanges = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(std::sync::Mutex::new(None));
        let (count, stopped, failed) = (exchanges.clone(), stop.clone(), failure.clone());
        let thread = std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut report = SessionReport {
                backend: String::new(),
                exchanges: 0,
                longest_stall: Duration::ZERO,
                error: None,
            };
            let mut last_answer = Instant::now();
            let mut n = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let line = format!("line {n} {}\n", "x".repeat(64));
                let mut answer = String::new();
                let result = writer
                    .write_all(line.as_bytes())
                    .and_then(|()| reader.read_line(&mut answer).map(drop));
                if let Err(e) = result {
                    report.error = Some(format!("exchange {n}: {e}"));
                    break;
                }
                let Some((backend, echoed)) = answer.split_once(' ') else {
                    report.error = Some(format!("exchange {n}: answer {answer:?}"));
                    break;
                };
                if report.backend.is_empty() {
                    report.backend = backend.to_string();
                }
                if backend != report.backend || echoed != line {
                    report.error = Some(format!(
                        "exchange {n}: {answer:?} from {backend}, expected {line:?} from {}",
                        report.backend
                    ));
                    break;
                }
                report.longest_stall = report.longest_stall.max(last_answer.elapsed());
                last_answer = Instant::now();
                report.exchanges = n;
                count.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed()));
            }
            failed.lock().unwrap().clone_from(&report.error);
            report
        });
        Session {
            exchanges,
            failure,
            stop,
            thread,
        }
    }

    fn wait_exchanges(&self, more: u64, within: Duration) {
        let target = self.exchanges.load(Ordering::Relaxed) + more;
        let started = Instant::now();
        while self.exchanges.load(Ordering::Relaxed) < target {
            assert!(
                !self.thread.is_finished(),
                "the session ended early: {:?}",
                self.failure.lock().unwrap()
            );
            assert!(
                started.elapsed() < within,
                "session stalled: {} exchanges",
                self.exchanges.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn end(self) -> SessionReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One exchange on a new connection; returns the backend that answered.
fn one_exchange(lab: &Lab) -> Result<String, String> {
    lab.in_ns("client", || {
        let mut s = TcpStream::connect_timeout(&service(), Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        match answer.split_once(' ') {
            Some((backend, "hello\n")) => Ok(backend.to_string()),
            _ => Err(format!("answer {answer:?}")),
        }
    })
}

#[test]
fn an_established_session_survives_the_masters_death_and_a_backend_leaves_the_rules() {
    let Some(lab) = lab() else { return };
    let stops: Vec<Arc<AtomicBool>> = BACKENDS
        .iter()
        .map(|(name, address)| {
            let stop = Arc::new(AtomicBool::new(false));
            line_backend(&lab, name, address, stop.clone());
            stop
        })
        .collect();
    let lb_a = start_node(&lab, "lbA", 2, 3, 150, "");
    lab.wait(
        "lbA master with both addresses",
        Duration::from_secs(5),
        || lab.has_address("lbA", VIP) && lab.has_address("lbA", GATEWAY),
    );
    // The backup runs as an ordinary user, with only CAP_NET_ADMIN and CAP_NET_RAW
    // (and CAP_NET_ADMIN passed on to nft and conntrackd).
    std::fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let mut lb_b = start_node(
        &lab,
        "lbB",
        3,
        2,
        100,
        "user = \"nobody\"\nadmin_listen = \"127.0.0.1:9901\"",
    );
    let dropped = lb_b.wait_for("running as an ordinary user");
    assert!(
        dropped.contains("capabilities=CAP_NET_ADMIN,CAP_NET_RAW"),
        "{dropped}"
    );
    lb_b.wait_for("VRRP INIT -> BACKUP");

    // The kernel's rules on both nodes; ctl shows them.
    let status = redirect_status(&lab, "lbA");
    let rules = status["rules"][0].as_str().unwrap();
    assert_eq!(
        rules,
        "imap 10.0.0.10:143 -> 10.1.0.11:143 10.1.0.12:143 [round-robin]"
    );
    assert!(
        status["table"]
            .as_str()
            .unwrap()
            .contains("dnat ip to numgen inc mod 2")
    );

    // The first connection takes the master's first slot; the session the second. A
    // backup without the session's state would send its packets to the first slot's
    // backend, which would answer with a reset.
    let first = one_exchange(&lab).unwrap();
    let session = Session::open(&lab);
    session.wait_exchanges(10, Duration::from_secs(5));

    // The backup holds the session's state before the master dies.
    let synced = lab.wait(
        "lbB received the connection states",
        Duration::from_secs(5),
        || {
            redirect_status(&lab, "lbB")["conntrack"]["external"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    println!(
        "connection states on the backup {} ms after asking",
        synced.as_millis()
    );
    let before = redirect_status(&lab, "lbB");
    assert_eq!(before["conntrack"]["running"], true);
    assert_eq!(before["conntrack"]["role"], "backup");
    // The same on the admin port, for Prometheus.
    let metrics = lab.in_ns("lbB", || {
        let mut s = TcpStream::connect("127.0.0.1:9901").unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text
    });
    assert!(
        metrics
            .contains("tandem_redirect_live_backends{service=\"imap\",listen=\"10.0.0.10:143\"} 2"),
        "{metrics}"
    );
    let peer_states: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_conntrack_states{origin=\"peer\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(peer_states >= 1, "{metrics}");
    assert!(metrics.contains("tandem_conntrackd_running 1"), "{metrics}");

    // SIGKILL, and the host's cables cut: no goodbye of any kind.
    let killed = Instant::now();
    lb_a.signal(rustix::process::Signal::KILL);
    for iface in ["eth0", "eth1", "eth2"] {
        lab.cut_link("lbA", iface);
    }
    lb_b.wait_for("VRRP BACKUP -> MASTER");
    let took_over = killed.elapsed();
    assert!(lab.has_address("lbB", VIP) && lab.has_address("lbB", GATEWAY));
    session.wait_exchanges(40, Duration::from_secs(10));
    let after_failover = killed.elapsed();

    // New connections work through the new master.
    for _ in 0..4 {
        one_exchange(&lab).expect("a new connection through the new master");
    }

    // A backend fails its check: it leaves the rules; the session (on the other) goes on.
    // The session took the slot after `first`'s: the other backend.
    let session_backend = BACKENDS.iter().find(|(n, _)| *n != first).unwrap().0;
    let leaving_index = BACKENDS.iter().position(|(n, _)| *n == first).unwrap();
    stops[leaving_index].store(true, Ordering::Relaxed);
    let left = lab.wait(
        "the failed backend leaves lbB's rules",
        Duration::from_secs(5),
        || {
            let s = redirect_status(&lab, "lbB");
            !s["rules"][0]
                .as_str()
                .unwrap_or("")
                .contains(BACKENDS[leaving_index].1)
        },
    );
    for _ in 0..6 {
        assert_eq!(
            one_exchange(&lab).unwrap(),
            session_backend,
            "new connections go to the live backend"
        );
    }
    session.wait_exchanges(10, Duration::from_secs(5));
    let report = session.end();
    println!(
        "session on {}: {} exchanges, longest stall {} ms; takeover {} ms after SIGKILL; 40 more exchanges by {} ms; \
         failed backend out of the rules {} ms after it stopped listening",
        report.backend,
        report.exchanges,
        report.longest_stall.as_millis(),
        took_over.as_millis(),
        after_failover.as_millis(),
        left.as_millis()
    );
    assert_eq!(report.error, None, "the session broke");
    assert_eq!(report.backend, session_backend);
    assert!(
        report.longest_stall < Duration::from_secs(3),
        "stall {:?}",
        report.longest_stall
    );

    // A reload changes the rules (here a weight) in place.
    let path = lab.dir.path().join("lbB.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"10.1.0.12:143\" }", "\"10.1.0.12:143\", weight = 3 }"),
    )
    .unwrap();
    ctl(&lab, "lbB", &["reload"]);
    let rules = redirect_status(&lab, "lbB")["rules"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rules.contains("10.1.0.12:143*3"), "{rules}");

    // An operator drains the last backend: it leaves the rules (new connections are
    // refused by the host) and comes back when enabled.
    let backend = |action: &str| {
        ctl(&lab, "lbB", &["backend", action, "mail", "10.1.0.12:143"]);
    };
    backend("disable");
    lab.wait(
        "the drained backend leaves the rules",
        Duration::from_secs(2),
        || {
            redirect_status(&lab, "lbB")["rules"][0]
                .as_str()
                .is_some_and(|r| r.contains("no live backend"))
        },
    );
    assert!(
        one_exchange(&lab).is_err(),
        "no backend left: new connections are refused"
    );
    backend("enable");
    lab.wait(
        "the enabled backend is back",
        Duration::from_secs(2),
        || {
            redirect_status(&lab, "lbB")["rules"][0]
                .as_str()
                .is_some_and(|r| r.contains("10.1.0.12:143*3"))
        },
    );
    assert_eq!(one_exchange(&lab).unwrap(), "b2");

    // A stopped tandem takes its table and its conntrackd with it.
    let table = |name: &str| has_table(&lab, name);
    assert!(table("lbB"));
    lb_b.signal(rustix::process::Signal::TERM);
    assert_eq!(lb_b.wait_exit(Duration::from_secs(10)), 0);
    assert!(!table("lbB"), "the table is removed at exit");
    let conntrackd_left = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("{}/lbB.conntrackd", lab.dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        !conntrackd_left.status.success(),
        "conntrackd stopped with tandem"
    );
}

#[test]
fn check_refuses_a_host_that_does_not_forward_and_accepts_it_once_it_does() {
    let Some(mut lab) = Lab::new("rc") else {
        return;
    };
    lab.host("lb", "10.0.0.2/24");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ha-pair.toml");
    let config = lab.dir.path().join("ha-pair.toml");
    std::fs::copy(example, &config).unwrap();
    std::fs::write(
        lab.dir.path().join("sync.key"),
        "a shared secret of the lab pair\n",
    )
    .unwrap();
    let check = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("lb"),
                TANDEM,
                "check",
                "--config",
                config.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A new network namespace starts with forwarding off.
    let (code, _, err) = check();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ha-pair.toml: redirect: IPv4 forwarding is off")
            && err.contains("sysctl -w net.ipv4.ip_forward=1"),
        "{err}"
    );
    lab.sysctl("lb", "net.ipv4.ip_forward", "1");
    let (code, out, err) = check();
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
}

/// A lab of one balancer (public 10.0.0.2, private 10.1.0.2 on br1, forwarding) and a
/// client (10.0.0.100).
fn one_balancer(tag: &str) -> Option<Lab> {
    let mut lab = Lab::new(tag)?;
    lab.host("client", "10.0.0.100/24");
    lab.host("lb", "10.0.0.2/24");
    lab.attach("lb", "br1", "eth1", "10.1.0.2/24");
    lab.sysctl("lb", "net.ipv4.ip_forward", "1");
    Some(lab)
}

/// The first line the client reads from the balancer's `port`.
fn first_line(lab: &Lab, port: u16) -> String {
    lab.in_ns("client", move || {
        let at: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        let s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    })
}

#[test]
fn snat_serves_backends_that_have_no_route_back_and_they_see_the_balancer() {
    let Some(mut lab) = one_balancer("rs") else {
        return;
    };
    // The backend has no route to the client's network at all.
    lab.host_on("b1", "br1", "10.1.0.11/24");
    let listener = lab.in_ns("b1", || TcpListener::bind("10.1.0.11:143").unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            let Ok(mut s) = stream else { continue };
            let peer = s.peer_addr().unwrap().ip();
            let _ = s.write_all(format!("b1 sees {peer}\n").as_bytes());
        }
    });
    let dir = lab.dir.path().display().to_string();
    let config = lab.write_config(
        "lb",
        &format!(
            "[global]\ncontrol_socket = \"{dir}/lb.sock\"\ndrain_timeout = \"1s\"\n\n\
[[pool]]\nname = \"mail\"\nbackends = [{{ address = \"10.1.0.11:143\" }}]\n\n\
[[service]]\nname = \"imap\"\nlisten = [\"10.0.0.2:143\"]\nmode = \"redirect\"\npool = \"mail\"\nreturn_path = \"snat\"\n"
        ),
    );
    let _lb = lab.run_tandem("lb", &config);
    assert!(
        redirect_status(&lab, "lb")["rules"][0]
            .as_str()
            .unwrap()
            .ends_with("[round-robin, snat]")
    );
    let answer = first_line(&lab, 143);
    // Masqueraded: the backend saw the balancer's private address, not the client's
    // (the documented price of snat), and its answer came back.
    assert_eq!(answer, "b1 sees 10.1.0.2\n");
}

/// Many redirect services on one address: the kernel's dispatch (one verdict map from
/// address and port to each service's chain) sends each port to its own pool.
#[test]
fn each_port_of_a_shared_address_reaches_its_own_pool_through_one_dispatch() {
    let Some(mut lab) = one_balancer("rm") else {
        return;
    };
    for (name, address) in BACKENDS {
        lab.host_on(name, "br1", &format!("{address}/24"));
        let at: SocketAddr = format!("{address}:143").parse().unwrap();
        let listener = lab.in_ns(name, move || TcpListener::bind(at).unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.write_all(format!("{name}\n").as_bytes());
            }
        });
    }
    let dir = lab.dir.path().display().to_string();
    let mut text = format!(
        "[global]\ncontrol_socket = \"{dir}/lb.sock\"\ndrain_timeout = \"1s\"\n\n\
[[pool]]\nname = \"one\"\nbackends = [{{ address = \"10.1.0.11:143\" }}]\n\n\
[[pool]]\nname = \"two\"\nbackends = [{{ address = \"10.1.0.12:143\" }}]\n\n"
    );
    // 40 services on ports 2000-2039, alternating pools, before the two checked ones.
    for port in 2000..2040 {
        let pool = if port % 2 == 0 { "one" } else { "two" };
        text.push_str(&format!(
            "[[service]]\nname = \"s{port}\"\nlisten = [\"10.0.0.2:{port}\"]\nmode = \"redirect\"\n\
pool = \"{pool}\"\nreturn_path = \"snat\"\n\n"
        ));
    }
    for (name, port, pool) in [("imap", 143, "one"), ("imap2", 1143, "two")] {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"10.0.0.2:{port}\"]\nmode = \"redirect\"\n\
pool = \"{pool}\"\nreturn_path = \"snat\"\n\n"
        ));
    }
    let config = lab.write_config("lb", &text);
    let _lb = lab.run_tandem("lb", &config);
    let table = redirect_status(&lab, "lb")["table"]
        .as_str()
        .unwrap()
        .to_string();
    // One dispatch rule in prerouting (and one in output), not a rule per service.
    assert_eq!(
        table.matches("ip daddr . tcp dport vmap").count(),
        2,
        "{table}"
    );
    assert_eq!(table.matches("dnat ip to").count(), 42, "{table}");
    assert_eq!(first_line(&lab, 143), "b1\n");
    assert_eq!(first_line(&lab, 1143), "b2\n");
    assert_eq!(first_line(&lab, 2000), "b1\n");
    assert_eq!(first_line(&lab, 2039), "b2\n");
    // A port with no service is not forwarded: the balancer itself refuses it.
    let refused = lab.in_ns("client", || {
        TcpStream::connect_timeout(&"10.0.0.2:2040".parse().unwrap(), Duration::from_secs(2))
            .is_err()
    });
    assert!(refused);
}

/// `tandem upgrade` of the master of a redirect pair: the new process keeps the
/// kernel's table as the old one left it (no nftables change at all during the
/// upgrade, `nft monitor` watching), takes conntrackd over, and neither a held session
/// nor a stream of new connections through the rules sees a failure; no VRRP
/// transition; the old process exits without removing the table, the new one removes
/// it at its own stop.
#[test]
fn an_upgrade_keeps_the_rules_and_conntrackd_without_a_failed_connection() {
    let Some(lab) = lab() else { return };
    for (name, address) in BACKENDS {
        line_backend(&lab, name, address, Arc::new(AtomicBool::new(false)));
    }
    let mut lb_a = start_node(&lab, "lbA", 2, 3, 150, "");
    lab.wait("lbA master", Duration::from_secs(5), || {
        lab.has_address("lbA", VIP) && lab.has_address("lbA", GATEWAY)
    });
    let mut lb_b = start_node(&lab, "lbB", 3, 2, 100, "");
    lb_b.wait_for("VRRP INIT -> BACKUP");
    lab.wait("lbA's conntrackd", Duration::from_secs(5), || {
        redirect_status(&lab, "lbA")["conntrack"]["running"] == true
    });
    let nft = tandem_redirect::conntrackd::locate(std::path::Path::new("nft"))
        .display()
        .to_string();
    // Every change to the ruleset, killed when dropped (also when the test fails).
    let mut monitor = Running::spawn_program(
        "ip",
        &["netns", "exec", &lab.ns("lbA"), &nft, "monitor", "ruleset"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (poll_stop, ns, nft_poll) = (stop.clone(), lab.ns("lbA"), nft.clone());
    let poller = std::thread::spawn(move || {
        let (mut samples, mut missing) = (0u64, 0u64);
        while !poll_stop.load(Ordering::Relaxed) {
            let out = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, &nft_poll, "list", "table", "inet", "tandem",
                ])
                .output()
                .unwrap();
            samples += 1;
            if !String::from_utf8_lossy(&out.stdout).contains("dnat ip to") {
                missing += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (samples, missing)
    });
    let session = Session::open(&lab);
    session.wait_exchanges(5, Duration::from_secs(5));
    let stream_stop = stop.clone();
    let stream = lab.thread_in("client", move || {
        let (mut ok, mut failed) = (0u64, Vec::new());
        while !stream_stop.load(Ordering::Relaxed) {
            let exchange = (|| {
                let mut s = TcpStream::connect_timeout(&service(), Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"hello\n")?;
                let mut answer = String::new();
                BufReader::new(s).read_line(&mut answer)?;
                Ok::<_, std::io::Error>(answer)
            })();
            match exchange {
                Ok(a) if a.ends_with(" hello\n") => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(300));
    let support::Upgraded { new_pid, took, .. } =
        support::upgrade_json(&lab.socket("lbA"), &mut lb_a);
    let _new = crate::upgrade::KillOnDrop(new_pid);
    // Nothing to drain (the kernel forwards): the old process exits at once.
    assert_eq!(lb_a.wait_exit(Duration::from_secs(10)), 0);
    let taken = lab.wait(
        "the new process's conntrackd",
        Duration::from_secs(10),
        || {
            let s = redirect_status(&lab, "lbA");
            s["conntrack"]["running"] == true && s["conntrack"]["role"] == "master"
        },
    );
    session.wait_exchanges(20, Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let (new_ok, new_failed) = stream.join().unwrap();
    let (samples, missing) = poller.join().unwrap();
    let report = session.end();
    let changes = monitor.lines_now();
    let lines = lb_a.drain_lines();
    println!(
        "FIGURE tandem upgrade of a redirect master: {} ms; rules checked {samples} times, missing {missing}; nft changes {}; \
         session {} exchanges, longest stall {} ms; new connections {new_ok} answered, {} failed; conntrackd taken over {} ms after the old process exited",
        took.as_millis(),
        changes.len(),
        report.exchanges,
        report.longest_stall.as_millis(),
        new_failed.len(),
        taken.as_millis()
    );
    assert_eq!(report.error, None, "the session broke");
    assert!(new_failed.is_empty(), "failed: {new_failed:?}");
    assert!(new_ok > 20, "{new_ok} new connections");
    assert_eq!(missing, 0, "the rules were missing");
    assert!(samples > 20, "{samples} samples");
    assert!(changes.is_empty(), "the table changed: {changes:?}");
    assert!(
        lines.contains("nftables table kept as the previous tandem left it"),
        "{lines}"
    );
    assert!(!lines.contains("nftables table removed"), "{lines}");
    assert!(lines.contains("conntrackd taken over"), "{lines}");
    // No VRRP transition on either node.
    let since = &lines[lines.find("upgrade: started the new binary").unwrap()..];
    assert!(
        since.contains("VRRP INIT -> MASTER (eth0 vrid 52): taken over from the previous process"),
        "{since}"
    );
    assert!(
        !since.contains("-> BACKUP") && !since.contains("MASTER ->"),
        "{since}"
    );
    let b_lines = lb_b.drain_lines();
    assert!(!b_lines.contains("BACKUP -> MASTER"), "{b_lines}");
    let conntrackds = std::process::Command::new("pgrep")
        .args([
            "-c",
            "-f",
            &format!("{}/lbA.conntrackd", lab.dir.path().display()),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&conntrackds.stdout).trim(), "1");

    // The backup's upgrade: its new conntrackd asks the master for its states, and
    // has the open session's again.
    let session = Session::open(&lab);
    session.wait_exchanges(5, Duration::from_secs(5));
    let external = || {
        redirect_status(&lab, "lbB")["conntrack"]["external"]
            .as_u64()
            .unwrap_or(0)
    };
    lab.wait(
        "lbB holds the session's state",
        Duration::from_secs(5),
        || external() >= 1,
    );
    let upgraded_b = support::upgrade_json(&lab.socket("lbB"), &mut lb_b);
    let _new_b = crate::upgrade::KillOnDrop(upgraded_b.new_pid);
    assert_eq!(lb_b.wait_exit(Duration::from_secs(10)), 0);
    let resynced = lab.wait(
        "the backup's new conntrackd has the master's states",
        Duration::from_secs(10),
        || {
            let s = redirect_status(&lab, "lbB");
            s["conntrack"]["role"] == "backup" && external() >= 1
        },
    );
    session.wait_exchanges(10, Duration::from_secs(5));
    let report = session.end();
    assert_eq!(report.error, None, "the session broke");
    let b_lines = lb_b.drain_lines();
    let since = &b_lines[b_lines.find("upgrade: started the new binary").unwrap()..];
    assert!(since.contains("conntrackd taken over"), "{since}");
    assert!(
        !since.contains("-> MASTER") && !since.contains("BACKUP ->"),
        "{since}"
    );
    println!(
        "FIGURE tandem upgrade of the redirect backup: its conntrackd had the master's states again {} ms after the old process exited",
        resynced.as_millis()
    );

    // The new process owns the table: it removes it at its stop.
    let pid = rustix::process::Pid::from_raw(new_pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    lab.wait(
        "the table removed at the new process's stop",
        Duration::from_secs(10),
        || !has_table(&lab, "lbA"),
    );
}
