//! A network lab of namespaces on one bridge, made by the test and always removed
//! (Drop runs on failure too). Needs root and iproute2; `Lab::new` returns `None`
//! otherwise and the test says SKIPPED.
//!
//! Hosts are network namespaces with one interface `eth0` on a bridge that lives in a
//! namespace of its own. Traffic stays inside these namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Running, TANDEM};

/// When each request was sent and what answered it.
type ProbeLog = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// The lab: its namespaces and a folder for configurations.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    /// Switch-side interface of each host.
    ports: std::collections::HashMap<String, String>,
    switch: String,
    /// Links made so far (names the veth pairs).
    links: usize,
    /// Files of this lab.
    pub dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// A new lab, or `None` (with a loud SKIPPED line) without root or `ip`.
    pub fn new(tag: &str) -> Option<Lab> {
        if !rustix::process::geteuid().is_root() || ip(&["-V"]).is_err() {
            eprintln!(
                "SKIPPED: the {tag} lab needs root and iproute2 (scripts/test runs as root in CI)"
            );
            return None;
        }
        let prefix = format!("td{}{}", std::process::id() % 100_000, tag);
        let switch = format!("{prefix}-sw");
        ip(&["netns", "add", &switch]).unwrap();
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]).unwrap();
        ip(&["-n", &switch, "link", "set", "br0", "up"]).unwrap();
        Some(Lab {
            ports: std::collections::HashMap::new(),
            namespaces: vec![switch.clone()],
            prefix,
            switch,
            links: 0,
            dir: tempfile::tempdir().unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Adds host `name` with `eth0` on the bridge, holding `address` (e.g. "10.99.0.1/24").
    pub fn host(&mut self, name: &str, address: &str) -> String {
        self.host_on(name, "br0", address)
    }

    /// Adds host `name` with `eth0` on bridge `bridge` (made on first use), holding `address`.
    pub fn host_on(&mut self, name: &str, bridge: &str, address: &str) -> String {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns]).unwrap();
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
        self.attach(name, bridge, "eth0", address);
        ns
    }

    /// Gives host `name` another interface `iface` on bridge `bridge` (made on first
    /// use), holding `address`.
    pub fn attach(&mut self, name: &str, bridge: &str, iface: &str, address: &str) {
        let ns = self.ns(name);
        if ip(&["-n", &self.switch, "link", "show", bridge]).is_err() {
            ip(&["-n", &self.switch, "link", "add", bridge, "type", "bridge"]).unwrap();
            ip(&["-n", &self.switch, "link", "set", bridge, "up"]).unwrap();
        }
        self.links += 1;
        let n = self.links;
        let (host_end, switch_end) = (
            format!("tdh{}x{n}", std::process::id() % 10_000),
            format!("tds{}x{n}", std::process::id() % 10_000),
        );
        ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            &switch_end,
        ])
        .unwrap();
        ip(&["link", "set", &host_end, "netns", &ns, "name", iface]).unwrap();
        ip(&["link", "set", &switch_end, "netns", &self.switch]).unwrap();
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &switch_end,
            "master",
            bridge,
            "up",
        ])
        .unwrap();
        if iface == "eth0" {
            self.ports.insert(name.to_string(), switch_end.clone());
        }
        ip(&["-n", &ns, "addr", "add", address, "dev", iface]).unwrap();
        ip(&["-n", &ns, "link", "set", iface, "up"]).unwrap();
    }

    /// Runs `ip ARGS` inside host `name` (routes, sysctl-free settings).
    pub fn ip_in(&self, name: &str, args: &[&str]) -> String {
        let ns = self.ns(name);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap()
    }

    /// Sets sysctl `key` (e.g. "net.ipv4.ip_forward") to `value` inside host `name`
    /// (through /proc: no sysctl program needed on PATH).
    pub fn sysctl(&self, name: &str, key: &str, value: &str) {
        let ns = self.ns(name);
        let file = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                &format!("echo {value} > {file}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sysctl {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets interface `iface` of host `name` down (its cable cut).
    pub fn cut_link(&self, name: &str, iface: &str) {
        ip(&["-n", &self.ns(name), "link", "set", iface, "down"]).unwrap();
    }

    /// Whether host `name` holds `address` on any interface.
    pub fn has_address(&self, name: &str, address: &str) -> bool {
        ip(&["-n", &self.ns(name), "-4", "addr", "show"])
            .map(|out| out.contains(&format!("inet {address}/")))
            .unwrap_or(false)
    }

    /// Waits until `done` holds, or panics after `within`; returns the time it took.
    pub fn wait(&self, what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }

    /// Takes host `name` off the bridge (or puts it back): its link stays up, but it
    /// hears nobody, as behind a failed switch port.
    pub fn isolate(&self, name: &str, isolated: bool) {
        let port = &self.ports[name];
        if isolated {
            ip(&["-n", &self.switch, "link", "set", port, "nomaster"]).unwrap();
        } else {
            ip(&["-n", &self.switch, "link", "set", port, "master", "br0"]).unwrap();
        }
    }

    /// Sets host `name`'s eth0 down (its cable cut).
    pub fn cut(&self, name: &str) {
        self.cut_link(name, "eth0");
    }

    /// Runs `f` on a thread that has entered host `name`'s namespace: sockets made there
    /// belong to that namespace, whatever thread uses them later.
    pub fn in_ns<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = self.ns(name);
        std::thread::spawn(move || {
            enter_ns(&ns);
            f()
        })
        .join()
        .unwrap()
    }

    /// Starts `f` on a thread inside host `name`'s namespace and returns at once; the
    /// lab's end is on [`Lab::stopped`] for loops that run until then.
    pub fn thread_in<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.ns(name);
        std::thread::spawn(move || {
            enter_ns(&ns);
            f()
        })
    }

    /// A flag that turns true when the lab ends.
    pub fn stopped(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The control socket of tandem node `name`, as the lab's configurations name it.
    pub fn socket(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// Writes `text` as NAME.toml in the lab's folder; returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Runs `tandem run --config CONFIG` in host `name`; returns once it runs.
    pub fn run_tandem(&self, name: &str, config: &str) -> Running {
        let mut node = self.spawn(name, TANDEM, &["run", "--config", config]);
        node.wait_for("tandem running");
        node
    }

    /// Starts `program args` inside host `name` (`ip netns exec`).
    pub fn spawn(&self, name: &str, program: &str, args: &[&str]) -> Running {
        let ns = self.ns(name);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        Running::spawn_program("ip", &all)
    }

    /// An HTTP/1.0 server in host `name` on `address` that answers with `body`.
    pub fn http_backend(&self, name: &str, address: SocketAddr, body: &'static str) {
        let listener = self.in_ns(name, move || TcpListener::bind(address).unwrap());
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = stream else { continue };
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
    }

    /// A client in host `name` that starts a `GET /` to `target` every `period` (each on
    /// its own thread, so a request stuck on a dead path does not delay the next) until
    /// the lab ends or `limit` passes, recording when each was sent and who answered.
    pub fn client(
        &self,
        name: &str,
        target: SocketAddr,
        period: Duration,
        limit: Duration,
    ) -> Probe {
        let log: ProbeLog = Arc::default();
        let record = log.clone();
        let stop = self.stop.clone();
        let ns = self.ns(name);
        std::thread::spawn(move || {
            enter_ns(&ns);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                let at = Instant::now();
                let record = record.clone();
                // Threads started here inherit this thread's namespace.
                std::thread::spawn(move || {
                    let answer = request(target);
                    record.lock().unwrap().push((at, answer));
                });
                std::thread::sleep(period.saturating_sub(at.elapsed()));
            }
        });
        Probe { log }
    }
}

/// Moves the calling thread into network namespace `ns`; threads it starts inherit it.
fn enter_ns(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

/// Adds `addresses` (each "a.b.c.d/len") to host `name`'s eth0 in one batch.
pub fn add_addresses(lab: &Lab, name: &str, addresses: &[String]) {
    add_addresses_on(lab, name, "eth0", addresses);
}

/// Adds `addresses` (each "a.b.c.d/len") to interface `iface` of host `name` in one
/// batch.
pub fn add_addresses_on(lab: &Lab, name: &str, iface: &str, addresses: &[String]) {
    let script: String = addresses
        .iter()
        .map(|a| format!("addr add {a} dev {iface}\n"))
        .collect();
    let mut child = Command::new("ip")
        .args(["-n", &lab.ns(name), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// One HTTP request from source address `from` (call it inside the namespace).
pub fn request_from(from: std::net::IpAddr, target: SocketAddr) -> Option<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::new(from, 0).into()).ok()?;
    socket
        .connect_timeout(&target.into(), Duration::from_millis(300))
        .ok()?;
    get_body(socket.into(), Duration::from_millis(500))
}

/// One HTTP request with short timeouts: the body, or `None`.
pub fn request(target: SocketAddr) -> Option<String> {
    let s = TcpStream::connect_timeout(&target, Duration::from_millis(150)).ok()?;
    get_body(s, Duration::from_millis(300))
}

/// `GET /` on a connected stream: the response body, or `None`.
fn get_body(mut s: TcpStream, read_timeout: Duration) -> Option<String> {
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split("\r\n\r\n")
        .nth(1)
        .map(str::to_string)
        .filter(|b| !b.is_empty())
}

/// What a lab client saw.
pub struct Probe {
    log: ProbeLog,
}

impl Probe {
    /// The first answered request sent at or after `t`, and when it was sent.
    pub fn first_answer_after(&self, t: Instant) -> Option<(Instant, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, answer)| *at >= t && answer.is_some())
            .min_by_key(|(at, _)| *at)
            .map(|(at, a)| (*at, a.clone().unwrap()))
    }

    /// Requests sent at or after `t`: (answered, failed).
    pub fn counts_after(&self, t: Instant) -> (usize, usize) {
        let log = self.log.lock().unwrap();
        let after = log.iter().filter(|(at, _)| *at >= t);
        let ok = after.clone().filter(|(_, a)| a.is_some()).count();
        (ok, after.count() - ok)
    }

    /// Waits for an answer to a request sent at or after `t`.
    pub fn wait_answer_after(&self, t: Instant, within: Duration) -> (Instant, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self.first_answer_after(t) {
                return a;
            }
            assert!(Instant::now() < deadline, "no answer within {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
