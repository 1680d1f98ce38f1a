//! The site lab: examples/site.toml as shipped, on two tandem nodes in front of the
//! real servers operators run (nginx, Postfix, Dovecot, CUPS from Debian), with real
//! clients (curl, Python's imaplib, poplib and smtplib, ipptool).
//!
//!   public  br0: client 192.0.2.100 (and visitors .101-.112), lb1 .2, lb2 .3,
//!                virtual 192.0.2.10
//!   private br1: lb1 198.51.100.2, lb2 .3, srv1 .21, srv2 .22 (no route out)
//!   sync    br2: lb1 203.0.113.2, lb2 .3
//!
//! The addresses are the example's own; the test changes only the control socket and
//! key file paths, and for lb2 the four lines the example marks "per node".
//! Run it with `cargo nextest run -p tandem --test e2e -E 'test(/^site::/)' --no-capture` to see the
//! figures.

use crate::support;
use crate::support::lab;
use crate::support::servers;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::Lab;
use servers::{Daemon, ServerHost};
use support::Running;

const VIP: &str = "192.0.2.10";
const CLIENT: &str = "192.0.2.100";
const SERVERS: [(&str, Ipv4Addr); 2] = [
    ("srv1", Ipv4Addr::new(198, 51, 100, 21)),
    ("srv2", Ipv4Addr::new(198, 51, 100, 22)),
];
const BALANCERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 2),
    Ipv4Addr::new(198, 51, 100, 3),
];
/// Mail readers, each with its own address.
const VISITORS: usize = 12;

fn visitor(n: usize) -> String {
    format!("192.0.2.{}", 101 + n)
}

fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/site.toml");
    std::fs::read_to_string(path).unwrap()
}

/// Replaces the one occurrence of `from` in `text` (the example must hold it once).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "examples/site.toml should hold {from:?} once"
    );
    text.replacen(from, to, 1)
}

/// The configuration of node `name` (lb1 or lb2): the example with the lab's paths,
/// and for lb2 the lines marked "per node".
fn node_config(lab: &Lab, name: &str) -> String {
    let dir = lab.dir.path().display();
    let mut text = example();
    text = replace_once(
        &text,
        "control_socket = \"/run/tandem/tandem.sock\"",
        &format!("control_socket = \"{dir}/{name}.sock\""),
    );
    text = replace_once(
        &text,
        "key_file = \"/etc/tandem/sync.key\"",
        &format!("key_file = \"{dir}/sync.key\""),
    );
    if name == "lb2" {
        for (from, to) in [
            ("name = \"lb1\"", "name = \"lb2\""),
            ("priority = 150", "priority = 100"),
            (
                "listen = \"203.0.113.2:7946\"",
                "listen = \"203.0.113.3:7946\"",
            ),
            (
                "peers = [\"203.0.113.3:7946\"]",
                "peers = [\"203.0.113.2:7946\"]",
            ),
        ] {
            text = replace_once(&text, from, to);
        }
    }
    lab.write_config(name, &text)
}

/// The lab, its servers and its nodes (dropped in this order: servers first, the
/// namespaces last).
struct Site {
    servers: Vec<ServerHost>,
    nodes: BTreeMap<&'static str, Running>,
    lab: Lab,
}

impl Site {
    fn new() -> Option<Site> {
        let mut lab = Lab::new("st")?;
        let missing = servers::missing();
        if !missing.is_empty() {
            eprintln!(
                "SKIPPED: the site lab needs the Debian packages {} (scripts/test installs them as root)",
                missing.join(", ")
            );
            return None;
        }
        std::fs::set_permissions(
            lab.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        lab.host("client", &format!("{CLIENT}/24"));
        let visitors: Vec<String> = (0..VISITORS)
            .map(|n| format!("{}/24", visitor(n)))
            .collect();
        lab::add_addresses(&lab, "client", &visitors);
        for (name, n) in [("lb1", 2), ("lb2", 3)] {
            lab.host(name, &format!("192.0.2.{n}/24"));
            lab.attach(name, "br1", "eth1", &format!("198.51.100.{n}/24"));
            lab.attach(name, "br2", "eth2", &format!("203.0.113.{n}/24"));
        }
        for (name, address) in SERVERS {
            lab.host_on(name, "br1", &format!("{address}/24"));
        }
        std::fs::write(
            lab.dir.path().join("sync.key"),
            "the site lab's shared sync secret\n",
        )
        .unwrap();
        let site = servers::Site {
            balancers: &BALANCERS,
        };
        let servers = SERVERS
            .iter()
            .map(|(name, address)| {
                ServerHost::start(
                    name,
                    &lab.ns(name),
                    *address,
                    &lab.dir.path().join(name),
                    &site,
                )
            })
            .collect();
        Some(Site {
            servers,
            nodes: BTreeMap::new(),
            lab,
        })
    }

    fn start_node(&mut self, name: &'static str) {
        let node = self.lab.run_tandem(name, &node_config(&self.lab, name));
        self.nodes.insert(name, node);
    }

    fn node(&mut self, name: &str) -> &mut Running {
        self.nodes.get_mut(name).unwrap()
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.lab.socket(node)
    }

    fn server(&mut self, name: &str) -> &mut ServerHost {
        self.servers.iter_mut().find(|s| s.name == name).unwrap()
    }

    /// (pool, backend) of every backend that `node` does not see up.
    fn not_up(&self, node: &str) -> Vec<String> {
        let (code, out, _) = support::ctl(&self.socket(node), &["--json", "pools"]);
        if code != 0 {
            return vec!["(no answer)".into()];
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut down = Vec::new();
        for pool in v["pools"].as_array().into_iter().flatten() {
            for b in pool["backends"].as_array().into_iter().flatten() {
                if b["health"] != "up" {
                    down.push(format!(
                        "{} {} {} ({})",
                        pool["name"].as_str().unwrap_or("?"),
                        b["address"].as_str().unwrap_or("?"),
                        b["health"].as_str().unwrap_or("?"),
                        b["last_check"]["error"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        down
    }

    /// The health of one backend as `node` sees it.
    fn health(&self, node: &str, pool: &str, backend: &str) -> String {
        let v = support::ctl_json(&self.socket(node), &["pools"]);
        v["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == pool)
            .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
            .find(|b| b["address"] == backend)
            .map(|b| b["health"].as_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    }

    fn wait_all_up(&self, node: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let down = self.not_up(node);
            if down.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{node}: not every backend is up within {within:?}: {down:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `program args` in the client's namespace: (success, stdout, stderr).
    fn run_client(&self, program: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns("client"), program])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// One Python mail session (`imap`, `pop3s`, `smtp`...) from `source`: the server
    /// that answered, or the error.
    fn mail(&self, action: &str, source: &str) -> Result<String, String> {
        let script = client_script();
        let (_, out, err) = self.run_client(
            "python3",
            &[&script, action, VIP, "--source", source, "--timeout", "5"],
        );
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).map_err(|e| format!("{action}: {e}: {out} {err}"))?;
        match (&v["server"], &v["error"]) {
            (serde_json::Value::String(s), _) => Ok(s.clone()),
            (_, serde_json::Value::String(e)) => Err(format!("{action} from {source}: {e}")),
            _ => Err(format!("{action} from {source}: no server named in {v}")),
        }
    }

    /// Prints what the nodes and the servers logged about client `source` (for a
    /// failed session).
    fn explain(&mut self, source: &str) {
        // A node logs a connection when it ends.
        std::thread::sleep(Duration::from_secs(1));
        let client = format!("client={source}:");
        for (name, node) in &mut self.nodes {
            for l in node
                .drain_lines()
                .lines()
                .filter(|l| l.contains(&client) || l.contains("WARN") || l.contains("VRRP"))
            {
                println!("{name}: {l}");
            }
        }
        for s in &self.servers {
            for daemon in [Daemon::Postfix, Daemon::Dovecot] {
                for l in s
                    .log(daemon)
                    .lines()
                    .filter(|l| l.contains("rror") || l.contains("arning") || l.contains("atal"))
                {
                    println!("{} {daemon:?}: {l}", s.name);
                }
            }
        }
    }

    /// [`Site::mail`], which must succeed (or the logs are shown).
    fn mail_ok(&mut self, action: &str, source: &str) -> String {
        self.mail(action, source).unwrap_or_else(|e| {
            self.explain(source);
            panic!("{e}")
        })
    }

    /// `curl http://VIP/`: the body.
    fn http(&self) -> Result<String, String> {
        let (ok, out, err) = self.run_client(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{VIP}/")],
        );
        if ok {
            Ok(out.trim().to_string())
        } else {
            Err(err)
        }
    }

    /// ipptool's Get-Printer-Attributes on the site's queue: the server whose queue
    /// answered.
    fn ipp(&self) -> Result<String, String> {
        let test = self.lab.dir.path().join("printer-info.test");
        std::fs::write(
            &test,
            "{\n  NAME \"printer-info of the queue\"\n  OPERATION Get-Printer-Attributes\n\
  GROUP operation-attributes-tag\n  ATTR charset attributes-charset utf-8\n\
  ATTR naturalLanguage attributes-natural-language en\n  ATTR uri printer-uri $uri\n\
  ATTR name requesting-user-name $user\n  ATTR keyword requested-attributes printer-info,printer-state\n\
  STATUS successful-ok\n  EXPECT printer-info\n  DISPLAY printer-info\n}\n",
        )
        .unwrap();
        let uri = format!("ipp://{VIP}/printers/{}", servers::QUEUE);
        let (ok, out, err) =
            self.run_client("ipptool", &["-T", "5", "-t", &uri, test.to_str().unwrap()]);
        let server = out
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .map(str::to_string);
        match server {
            Some(s) if ok => Ok(s),
            _ => Err(format!("ipptool: {out}{err}")),
        }
    }
}

fn client_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/support/client.py")
        .display()
        .to_string()
}

/// One login of a running `client.py loop`.
#[derive(Debug, Clone, PartialEq)]
struct Login {
    started: Instant,
    ended: Instant,
    source: String,
    result: Result<String, String>,
}

/// `client.py loop` in the client's namespace: IMAP logins from every visitor in turn.
struct LoginLoop {
    child: std::process::Child,
    logins: Arc<Mutex<Vec<Login>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LoginLoop {
    fn start(site: &Site, period: Duration, seconds: f64, timeout: f64) -> LoginLoop {
        let sources: Vec<String> = (0..VISITORS).map(visitor).collect();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &site.lab.ns("client"), "python3"])
            .arg(client_script())
            .args(["loop", VIP, "--sources", &sources.join(",")])
            .args(["--period", &period.as_secs_f64().to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--timeout", &timeout.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let logins: Arc<Mutex<Vec<Login>>> = Arc::default();
        let record = logins.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The line is read as the login ends; its start is that instant less
                // the login's own duration.
                let ended = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let took = v["t1"].as_f64().unwrap_or(0.0) - v["t0"].as_f64().unwrap_or(0.0);
                let result = match (&v["server"], &v["error"]) {
                    (serde_json::Value::String(s), _) => Ok(s.clone()),
                    (_, e) => Err(e.as_str().unwrap_or("no server named").to_string()),
                };
                record.lock().unwrap().push(Login {
                    started: ended - Duration::from_secs_f64(took.max(0.0)),
                    ended,
                    source: v["source"].as_str().unwrap_or("").to_string(),
                    result,
                });
            }
        });
        LoginLoop {
            child,
            logins,
            reader: Some(reader),
        }
    }

    fn logins(&self) -> Vec<Login> {
        self.logins.lock().unwrap().clone()
    }

    /// Waits for the loop's end (bounded) and returns every login.
    fn finish(mut self, within: Duration) -> Vec<Login> {
        let deadline = Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the login loop did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reader.take().unwrap().join().unwrap();
        self.logins()
    }
}

impl Drop for LoginLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_site_serves_every_service_through_failures_failover_and_takeback() {
    let Some(mut site) = Site::new() else { return };
    let begun = Instant::now();
    site.start_node("lb1");
    site.lab.wait(
        "lb1 holds the virtual address",
        Duration::from_secs(5),
        || site.lab.has_address("lb1", VIP),
    );
    site.start_node("lb2");
    site.node("lb2").wait_for("VRRP INIT -> BACKUP");
    site.node("lb2").wait_for("bulk transfer received: synced");
    assert!(!site.lab.has_address("lb2", VIP));

    // Every backend healthy, as both nodes see it.
    let healthy = site.wait_all_up("lb1", Duration::from_secs(20));
    site.wait_all_up("lb2", Duration::from_secs(20));
    println!(
        "every backend up on lb1 {} ms after it held the address",
        healthy.as_millis()
    );

    // Every service answers through the virtual address.
    let mut web = Vec::new();
    for _ in 0..4 {
        web.push(site.http().expect("http through the virtual address"));
    }
    assert!(
        web.iter().any(|b| b == "srv1") && web.iter().any(|b| b == "srv2"),
        "both web servers answer: {web:?}"
    );
    for action in ["smtp", "submission", "imap", "imaps", "pop3", "pop3s"] {
        let server = site.mail_ok(action, CLIENT);
        println!("{action}: answered by {server}");
    }
    let printer = site.ipp().unwrap();
    println!("ipp: queue {} answered by {printer}", servers::QUEUE);

    // The servers log the client's own address (nginx from X-Forwarded-For, Postfix
    // and Dovecot from the PROXY header); CUPS, which has no such thing, logs the
    // balancer's.
    let logs: Vec<(Daemon, String)> = site
        .servers
        .iter()
        .flat_map(|s| Daemon::ALL.map(|d| (d, s.log(d))))
        .collect();
    let logged = |daemon: Daemon, needle: &str| {
        logs.iter()
            .any(|(d, text)| *d == daemon && text.contains(needle))
    };
    assert!(
        logged(
            Daemon::Nginx,
            &format!("{CLIENT} \"GET / HTTP/1.1\" 200 via 198.51.100.2")
        ),
        "nginx logs the client"
    );
    let logged_line = |daemon: Daemon, all: &[&str]| {
        logs.iter().any(|(d, text)| {
            *d == daemon && text.lines().any(|l| all.iter().all(|n| l.contains(n)))
        })
    };
    let connect = format!("connect from unknown[{CLIENT}]");
    for smtpd in ["postfix/smtpd[", "postfix/submission/smtpd["] {
        assert!(
            logged_line(Daemon::Postfix, &[smtpd, &connect]),
            "Postfix logs the client ({smtpd})"
        );
    }
    let rip = format!("rip={CLIENT}, lip={VIP}");
    for (login, tls) in [
        ("imap-login", false),
        ("imap-login", true),
        ("pop3-login", false),
        ("pop3-login", true),
    ] {
        let found = logs.iter().any(|(d, text)| {
            *d == Daemon::Dovecot
                && text.lines().any(|l| {
                    l.contains(login)
                        && l.contains("Login: user=<alice>")
                        && l.contains(&rip)
                        && l.contains(", TLS,") == tls
                })
        });
        assert!(found, "Dovecot logs the client ({login}, TLS {tls})");
    }
    assert!(
        logged(Daemon::Cups, "198.51.100.2 - - "),
        "CUPS logs the balancer"
    );

    // The client cannot reach a server directly: no route, and a route through the
    // site's address leads nowhere (the nodes do not forward).
    let direct = |site: &Site| {
        site.lab.in_ns("client", || {
            TcpStream::connect_timeout(
                &SocketAddr::from((SERVERS[0].1, 143)),
                Duration::from_millis(1000),
            )
            .map(drop)
        })
    };
    assert!(direct(&site).is_err(), "no route to the servers");
    site.lab
        .ip_in("client", &["route", "add", "198.51.100.0/24", "via", VIP]);
    let through = direct(&site);
    site.lab
        .ip_in("client", &["route", "del", "198.51.100.0/24", "via", VIP]);
    assert!(through.is_err(), "the nodes forward nothing: {through:?}");

    // Each IMAP reader stays on its server for its visit.
    let mut pins: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..VISITORS {
        let source = visitor(n);
        let visit: Vec<String> = (0..3).map(|_| site.mail_ok("imap", &source)).collect();
        assert!(
            visit.iter().all(|s| *s == visit[0]),
            "{source} moved during its visit: {visit:?}"
        );
        pins.insert(source, visit[0].clone());
    }
    let on_srv1 = pins.values().filter(|s| *s == "srv1").count();
    println!(
        "{VISITORS} IMAP readers, 3 logins each, none moved: {on_srv1} on srv1, {} on srv2",
        VISITORS - on_srv1
    );
    assert!(
        on_srv1 > 0 && on_srv1 < VISITORS,
        "both servers hold readers"
    );

    // Dovecot stops on the first reader's server: its next login goes to the other,
    // within the check's fall time (a refused connect is retried there at once; the
    // check takes the server out after 2 failures 2 s apart).
    let reader = visitor(0);
    let (from, to) = match pins[&reader].as_str() {
        "srv1" => ("srv1", "srv2"),
        _ => ("srv2", "srv1"),
    };
    let from_address = SERVERS.iter().find(|(n, _)| *n == from).unwrap().1;
    let asked = Instant::now();
    site.server(from).stop_daemon(Daemon::Dovecot);
    let stopped = asked.elapsed();
    let moved = site.mail_ok("imap", &reader);
    let moved_after = asked.elapsed();
    assert_eq!(moved, to, "the next login goes to the other server");
    let backend = format!("{from_address}:143");
    site.lab.wait(
        "the master's check takes the stopped Dovecot out",
        Duration::from_secs(8),
        || site.health("lb1", "imap", &backend) == "down",
    );
    let fall = asked.elapsed();
    println!(
        "Dovecot stopped on {from} (SIGTERM, exited after {} ms): {reader}'s next login done on {to} {} ms after the SIGTERM; \
         the check marked {backend} down {} ms after it (interval 2 s, fall 2: at most 4 s + 1 s timeout)",
        stopped.as_millis(),
        moved_after.as_millis(),
        fall.as_millis()
    );
    // The check's fall time is 2 failures 2 s apart: the server is out within 4 s
    // of its listeners closing (plus the last check's own time). The next login did
    // not wait for it: a refused connect is tried on the other server at once.
    assert!(
        fall < Duration::from_millis(4500),
        "the check took {fall:?} to take the server out"
    );
    assert!(
        moved_after < Duration::from_secs(4),
        "the login moved within the check's fall time ({moved_after:?})"
    );
    pins.insert(reader.clone(), to.to_string());
    site.server(from).start_daemon(Daemon::Dovecot);
    site.wait_all_up("lb1", Duration::from_secs(10));
    site.wait_all_up("lb2", Duration::from_secs(10));
    // The re-pinned reader stays where it went.
    assert_eq!(site.mail_ok("imap", &reader), to);

    // SIGKILL of the master: logins work again through the backup in under a second,
    // each on its reader's server.
    let logins = LoginLoop::start(&site, Duration::from_millis(20), 3.0, 1.0);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    site.node("lb1").signal(rustix::process::Signal::KILL);
    site.node("lb2").wait_for("VRRP BACKUP -> MASTER");
    let all = logins.finish(Duration::from_secs(10));
    // The first login that started after the kill and succeeded.
    let first = all
        .iter()
        .filter(|l| l.started >= killed && l.result.is_ok())
        .min_by_key(|l| l.ended)
        .cloned()
        .expect("a login through the backup");
    let failover = first.ended.duration_since(killed);
    let failed_after_kill = all
        .iter()
        .filter(|l| l.started >= killed && l.result.is_err())
        .count();
    let moved: Vec<&Login> = all
        .iter()
        .filter(|l| matches!(&l.result, Ok(s) if *s != pins[&l.source]))
        .collect();
    println!(
        "SIGKILL of lb1: a login worked through lb2 {} ms after the kill ({} logins failed in between, {} in all)",
        failover.as_millis(),
        failed_after_kill,
        all.len()
    );
    assert!(
        moved.is_empty(),
        "logins moved to another server: {moved:?}"
    );
    assert_eq!(
        first.result.as_deref(),
        Ok(pins[&first.source].as_str()),
        "the same server"
    );
    let kept = (0..VISITORS)
        .filter(|&n| {
            let source = visitor(n);
            site.mail("imap", &source).ok().as_deref() == Some(pins[&source].as_str())
        })
        .count();
    println!("after the failover: {kept}/{VISITORS} readers kept their server");
    assert_eq!(kept, VISITORS);
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );

    // The old master comes back and takes over: no refused login, no reader moved.
    let logins = LoginLoop::start(&site, Duration::from_millis(50), 30.0, 3.0);
    std::thread::sleep(Duration::from_millis(300));
    let restarted = Instant::now();
    drop(site.nodes.remove("lb1"));
    site.start_node("lb1");
    // The address moves between the last look that did not see it on lb1 and the
    // first that did: a session in flight then may be cut, none after or before.
    let mut not_yet = restarted;
    site.lab
        .wait("lb1 master again", Duration::from_secs(20), || {
            let look = Instant::now();
            let has = site.lab.has_address("lb1", VIP);
            if !has {
                not_yet = look;
            }
            has
        });
    let moved_at = (not_yet, Instant::now());
    let took_back = restarted.elapsed();
    site.lab
        .wait("lb2 released the address", Duration::from_secs(3), || {
            !site.lab.has_address("lb2", VIP)
        });
    site.node("lb2").wait_for("VRRP MASTER -> BACKUP");
    std::thread::sleep(Duration::from_secs(1));
    let mut logins = logins;
    let _ = logins.child.kill();
    let all = logins.finish(Duration::from_secs(10));
    let during: Vec<&Login> = all.iter().filter(|l| l.started >= restarted).collect();
    // A session under way when the address moves is cut: the new master has no
    // socket for it (relayed connections end with a takeover), whatever stage it
    // reached, even the greeting when the handshake went to lb2 just before. Any
    // other failed login is one a user sees refused.
    let in_flight_at_move = |l: &Login| l.started <= moved_at.1 && l.ended >= moved_at.0;
    let refused: Vec<&&Login> = during
        .iter()
        .filter(|l| l.result.is_err() && !in_flight_at_move(l))
        .collect();
    let cut: Vec<&&Login> = during
        .iter()
        .filter(|l| l.result.is_err() && in_flight_at_move(l))
        .collect();
    let moved: Vec<&&Login> = during
        .iter()
        .filter(|l| matches!(&l.result, Ok(s) if *s != pins[&l.source]))
        .collect();
    println!(
        "lb1 restarted: master again after {} ms (the address moved {}-{} ms after the restart); {} logins meanwhile: {} refused, {} cut while the address moved, {} on another server",
        took_back.as_millis(),
        moved_at.0.duration_since(restarted).as_millis(),
        moved_at.1.duration_since(restarted).as_millis(),
        during.len(),
        refused.len(),
        cut.len(),
        moved.len()
    );
    if let Some(first) = moved.first().or(refused.first()) {
        println!(
            "the first bad login started {} ms after the restart: {first:?}",
            first.started.duration_since(restarted).as_millis()
        );
        site.explain(&first.source.clone());
    }
    assert!(
        refused.is_empty(),
        "logins refused during the takeback: {refused:?}"
    );
    assert!(
        cut.iter()
            .all(|l| matches!(&l.result, Err(e) if e.contains("reset"))),
        "sessions in flight at the move failed otherwise than reset: {cut:?}"
    );
    assert!(
        moved.is_empty(),
        "readers moved during the takeback: {moved:?}"
    );

    // The nodes stop cleanly. A session cut by the address move stays open on the
    // node that lost the address (its client now talks to the other node) until the
    // drain deadline, 30 s by default.
    for name in ["lb1", "lb2"] {
        let node = site.node(name);
        let asked = Instant::now();
        node.signal(rustix::process::Signal::TERM);
        let deadline = asked + Duration::from_secs(35);
        let status = loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let lines = node.drain_lines();
                let tail: Vec<&str> = lines.lines().rev().take(20).collect();
                panic!("{name} did not exit within 35 s of SIGTERM: {tail:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{name} exits cleanly");
        println!(
            "{name} exited {} ms after SIGTERM",
            asked.elapsed().as_millis()
        );
    }
    // Every server process goes with its server.
    for server in &mut site.servers {
        let left = server.stop();
        assert!(left.is_empty(), "{} left processes: {left:?}", server.name);
    }
    println!("site lab done in {} s", begun.elapsed().as_secs());
}

#[test]
fn site_toml_is_valid_as_shipped_and_mail_toml_is_its_mail_part() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sync.key");
    std::fs::write(&key, "the site lab's shared sync secret\n").unwrap();
    let site = support::config(&replace_once(
        &example(),
        "key_file = \"/etc/tandem/sync.key\"",
        &format!("key_file = \"{}\"", key.display()),
    ));
    let mail_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/mail.toml");
    let mail = support::config(&std::fs::read_to_string(mail_path).unwrap());
    let names: Vec<&str> = mail.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["smtp", "submission", "imap", "imaps", "pop3", "pop3s"]
    );
    for pool in &mail.pools {
        assert_eq!(
            Some(pool),
            site.pool(&pool.name),
            "pool {} differs between mail.toml and site.toml",
            pool.name
        );
    }
    for service in &mail.services {
        let twin = site
            .services
            .iter()
            .find(|s| s.name == service.name)
            .unwrap_or_else(|| panic!("site.toml has no service {}", service.name));
        assert_eq!(
            (
                &twin.pool,
                twin.proxy_protocol,
                twin.idle_timeout,
                twin.mode
            ),
            (
                &service.pool,
                service.proxy_protocol,
                service.idle_timeout,
                service.mode
            ),
            "service {}",
            service.name
        );
    }
}
