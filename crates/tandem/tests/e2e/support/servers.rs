//! The real servers of a Debian site, each a private instance inside one lab host:
//! nginx (http), Postfix (smtp and submission behind the PROXY protocol), Dovecot
//! (imap, pop3, imaps, pop3s behind the PROXY protocol) and CUPS (ipp). Their
//! configurations and logs live in a folder of the lab. Every process is stopped on
//! Drop, also when the test panics: first politely, then whatever is still in the
//! host's network namespace (only what the test started there) is SIGKILLed.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nginx::temp_paths;
use super::which;

/// Programs the site lab runs, with the Debian package of each.
pub const PROGRAMS: [(&str, &str); 7] = [
    ("nginx", "nginx"),
    ("postfix", "postfix"),
    ("dovecot", "dovecot-imapd, dovecot-pop3d"),
    ("cupsd", "cups-daemon"),
    ("ipptool", "cups-ipp-utils"),
    ("curl", "curl"),
    ("python3", "python3"),
];

/// The Debian packages of the programs that are not installed.
pub fn missing() -> Vec<&'static str> {
    PROGRAMS
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, package)| *package)
        .collect()
}

/// The mail user every server knows.
pub const USER: &str = "alice";
/// Her password.
pub const PASSWORD: &str = "wonderland";
/// The site's mail domain (Postfix accepts mail for it).
pub const DOMAIN: &str = "site.example";
/// The print queue every CUPS server has.
pub const QUEUE: &str = "office";

/// What a server host is told about its site.
pub struct Site<'a> {
    /// The balancers' private addresses: trusted for the PROXY header and
    /// X-Forwarded-For.
    pub balancers: &'a [Ipv4Addr],
}

/// One of the daemons of a server host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// nginx, port 80.
    Nginx,
    /// Postfix, ports 25 and 587.
    Postfix,
    /// Dovecot, ports 143, 993, 110 and 995.
    Dovecot,
    /// cupsd, port 631.
    Cups,
}

impl Daemon {
    /// Every daemon.
    pub const ALL: [Daemon; 4] = [
        Daemon::Nginx,
        Daemon::Postfix,
        Daemon::Dovecot,
        Daemon::Cups,
    ];

    /// The ports it listens on.
    pub fn ports(self) -> &'static [u16] {
        match self {
            Daemon::Nginx => &[80],
            Daemon::Postfix => &[25, 587],
            Daemon::Dovecot => &[143, 993, 110, 995],
            Daemon::Cups => &[631],
        }
    }

    /// Its log file (relative to the host's folder): where it writes the client's
    /// address.
    pub fn log(self) -> &'static str {
        match self {
            Daemon::Nginx => "nginx/access.log",
            Daemon::Postfix => "postfix/maillog",
            Daemon::Dovecot => "dovecot/dovecot.log",
            Daemon::Cups => "cups/log/access_log",
        }
    }
}

/// A server host of the lab and the daemons it runs.
pub struct ServerHost {
    /// Host name (e.g. "srv1"): the servers greet with it.
    pub name: String,
    /// Its private address.
    pub address: Ipv4Addr,
    ns: String,
    /// Its folder: configurations, logs, mail, queues.
    pub dir: PathBuf,
    running: Vec<(Daemon, Child)>,
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn chown(path: &Path, user: &str) {
    let out = Command::new("chown").arg(user).arg(path).output().unwrap();
    assert!(out.status.success(), "chown {user} {}", path.display());
}

impl ServerHost {
    /// Writes the configurations of host `name` (namespace `ns`, address `address`) into
    /// `dir` and starts every daemon; returns once each listens on its ports.
    pub fn start(name: &str, ns: &str, address: Ipv4Addr, dir: &Path, site: &Site) -> ServerHost {
        std::fs::create_dir_all(dir).unwrap();
        // Postfix and Dovecot processes that run as their own users walk down to
        // their queues and sockets.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let host = ServerHost {
            name: name.to_string(),
            address,
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            running: Vec::new(),
        };
        host.write_certificate();
        host.write_nginx(site);
        host.write_postfix();
        host.write_dovecot(site);
        host.write_cups();
        let mut host = host;
        for daemon in Daemon::ALL {
            host.start_daemon(daemon);
        }
        host
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    fn write_certificate(&self) {
        let cert =
            rcgen::generate_simple_self_signed(vec![format!("{}.{DOMAIN}", self.name)]).unwrap();
        write(&self.dir.join("tls/cert.pem"), &cert.cert.pem());
        write(
            &self.dir.join("tls/key.pem"),
            &cert.signing_key.serialize_pem(),
        );
    }

    fn write_nginx(&self, site: &Site) {
        let trusted: String = site
            .balancers
            .iter()
            .map(|b| format!("  set_real_ip_from {b};\n"))
            .collect();
        let d = self.path("nginx");
        let (name, address) = (&self.name, self.address);
        let temp = temp_paths(&d);
        write(
            &self.dir.join("nginx/nginx.conf"),
            &format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nuser www-data;\nworker_processes 1;\n\
events {{ worker_connections 256; }}\n\
http {{\n{temp}\
  # The balancers relay in http mode and say who the client is.\n\
{trusted}  real_ip_header X-Forwarded-For;\n\
  log_format site '$remote_addr \"$request\" $status via $realip_remote_addr';\n\
  access_log {d}/access.log site;\n\
  server {{\n    listen {address}:80;\n    default_type text/plain;\n\
    location = /health {{ return 200 \"ok\\n\"; }}\n\
    location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n"
            ),
        );
    }

    fn write_postfix(&self) {
        let d = self.path("postfix");
        let (name, address) = (&self.name, self.address);
        std::fs::create_dir_all(self.dir.join("postfix/queue")).unwrap();
        std::fs::create_dir_all(self.dir.join("postfix/data")).unwrap();
        chown(&self.dir.join("postfix/data"), "postfix");
        let tls = self.path("tls");
        write(
            &self.dir.join("postfix/conf/main.cf"),
            &format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
mail_owner = postfix\nsetgid_group = postdrop\n\
myhostname = {name}.{DOMAIN}\nmydomain = {DOMAIN}\nmydestination = {DOMAIN}\n\
local_recipient_maps =\nlocal_transport = discard:delivered in the lab\n\
default_transport = discard:relayed in the lab\nalias_maps =\nalias_database =\n\
inet_interfaces = {address}\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
smtpd_banner = $myhostname ESMTP Postfix on {name}\n\
# Behind tandem: the PROXY header says who the client is.\n\
smtpd_upstream_proxy_protocol = haproxy\n\
smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n\
smtpd_tls_cert_file = {tls}/cert.pem\nsmtpd_tls_key_file = {tls}/key.pem\n\
smtpd_tls_security_level = may\n\
maillog_file_prefixes = {d}\nmaillog_file = {d}/maillog\nbiff = no\n"
            ),
        );
        let services = [
            "smtp inet n - n - - smtpd",
            "submission inet n - n - - smtpd -o syslog_name=postfix/submission",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ];
        write(
            &self.dir.join("postfix/conf/master.cf"),
            &(services.join("\n") + "\n"),
        );
    }

    fn write_dovecot(&self, site: &Site) {
        let d = self.path("dovecot");
        let tls = self.path("tls");
        let name = &self.name;
        let trusted: Vec<String> = site.balancers.iter().map(|b| b.to_string()).collect();
        std::fs::create_dir_all(self.dir.join("dovecot/mail")).unwrap();
        chown(&self.dir.join("dovecot/mail"), "nobody:nogroup");
        write(
            &self.dir.join("dovecot/users"),
            &format!("{USER}:{{PLAIN}}{PASSWORD}\n"),
        );
        let listener = |name: &str, port: u16, ssl: bool| {
            format!(
                "  inet_listener {name} {{\n    port = {port}\n    ssl = {}\n    haproxy = yes\n  }}\n",
                if ssl { "yes" } else { "no" }
            )
        };
        write(
            &self.dir.join("dovecot/dovecot.conf"),
            &format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = dovecot-{name}-{}\n\
protocols = imap pop3\nlisten = {}\n\
log_path = {d}/dovecot.log\ninfo_log_path = {d}/dovecot.log\n\
login_greeting = Dovecot ready on {name}\n\
# Behind tandem: the PROXY header says who the client is.\n\
haproxy_trusted_networks = {}\n\
ssl = yes\nssl_cert = <{tls}/cert.pem\nssl_key = <{tls}/key.pem\n\
disable_plaintext_auth = no\nauth_mechanisms = plain login\n\
mail_location = maildir:{d}/mail/%u\nfirst_valid_uid = 65534\n\
passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/users\n}}\n\
userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/mail/%u\n}}\n\
service imap-login {{\n{}{}}}\nservice pop3-login {{\n{}{}}}\n",
                std::process::id(),
                self.address,
                trusted.join(" "),
                listener("imap", 143, false),
                listener("imaps", 993, true),
                listener("pop3", 110, false),
                listener("pop3s", 995, true),
            ),
        );
    }

    fn write_cups(&self) {
        let d = self.path("cups");
        for sub in ["root", "cache", "state", "spool/tmp", "log"] {
            std::fs::create_dir_all(self.dir.join("cups").join(sub)).unwrap();
        }
        write(
            &self.dir.join("cups/cups-files.conf"),
            &format!(
                "ServerRoot {d}/root\nCacheDir {d}/cache\nStateDir {d}/state\nRequestRoot {d}/spool\n\
TempDir {d}/spool/tmp\nAccessLog {d}/log/access_log\nErrorLog {d}/log/error_log\n\
PageLog {d}/log/page_log\nPrintcap {d}/printcap\nFileDevice Yes\nUser lp\nGroup lp\nSystemGroup root\n"
            ),
        );
        write(
            &self.dir.join("cups/cupsd.conf"),
            &format!(
                "Listen {}:631\nServerName {}.{DOMAIN}\n# Clients name the site's address.\nServerAlias *\n\
Browsing No\nDefaultAuthType None\nWebInterface No\nLogLevel info\nAccessLogLevel all\n\
<Location />\n  Order allow,deny\n  Allow all\n</Location>\n",
                self.address, self.name
            ),
        );
        write(
            &self.dir.join("cups/root/printers.conf"),
            &format!(
                "<Printer {QUEUE}>\nInfo Printer on {}\nLocation {}\nDeviceURI file:///dev/null\n\
State Idle\nAccepting Yes\nShared Yes\n</Printer>\n",
                self.name, self.name
            ),
        );
    }

    /// The command line that runs `daemon` in the foreground.
    fn command(&self, daemon: Daemon) -> Vec<String> {
        let p = |rel: &str| self.path(rel);
        let v = |args: &[&str]| args.iter().map(|s| s.to_string()).collect();
        match daemon {
            Daemon::Nginx => v(&[
                "nginx",
                "-c",
                &p("nginx/nginx.conf"),
                "-e",
                &p("nginx/error.log"),
                "-g",
                "daemon off;",
            ]),
            Daemon::Postfix => v(&["postfix", "-c", &p("postfix/conf"), "start-fg"]),
            Daemon::Dovecot => v(&["dovecot", "-F", "-c", &p("dovecot/dovecot.conf")]),
            Daemon::Cups => v(&[
                "cupsd",
                "-f",
                "-c",
                &p("cups/cupsd.conf"),
                "-s",
                &p("cups/cups-files.conf"),
            ]),
        }
    }

    /// Starts `daemon` and waits until it listens on all its ports.
    pub fn start_daemon(&mut self, daemon: Daemon) {
        assert!(
            !self.running.iter().any(|(d, _)| *d == daemon),
            "{daemon:?} already runs on {}",
            self.name
        );
        let command = self.command(daemon);
        let out = File::create(self.dir.join(format!("{daemon:?}.out").to_lowercase())).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(&command)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.running.push((daemon, child));
        let started = Instant::now();
        loop {
            let listening = self.listening();
            if daemon.ports().iter().all(|p| listening.contains(p)) {
                break;
            }
            let exited = self
                .running
                .iter_mut()
                .find(|(d, _)| *d == daemon)
                .and_then(|(_, c)| c.try_wait().unwrap());
            assert!(
                exited.is_none() && started.elapsed() < Duration::from_secs(20),
                "{daemon:?} on {} did not start ({exited:?}): {}",
                self.name,
                self.output(daemon)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `daemon` wrote on stdout and stderr, and its log.
    pub fn output(&self, daemon: Daemon) -> String {
        let out = std::fs::read_to_string(self.dir.join(format!("{daemon:?}.out").to_lowercase()))
            .unwrap_or_default();
        format!("{out}\n{}", self.log(daemon))
    }

    /// The log where `daemon` writes its clients' addresses.
    pub fn log(&self, daemon: Daemon) -> String {
        std::fs::read_to_string(self.dir.join(daemon.log())).unwrap_or_default()
    }

    /// TCP ports listened on in the host.
    pub fn listening(&self) -> Vec<u16> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "ss", "-Hltn"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| local.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// Stops `daemon` the way its init script does and waits until it has exited.
    pub fn stop_daemon(&mut self, daemon: Daemon) {
        let Some(i) = self.running.iter().position(|(d, _)| *d == daemon) else {
            return;
        };
        let (_, mut child) = self.running.remove(i);
        self.ask_to_stop(daemon, &child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{daemon:?} on {} did not stop within 10 s: {}",
                    self.name,
                    self.output(daemon)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its children go with it (Dovecot's and Postfix's masters end them).
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon.ports().iter().any(|p| self.listening().contains(p)) {
            assert!(
                Instant::now() < deadline,
                "{daemon:?} on {} still listens",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ask_to_stop(&self, daemon: Daemon, child: &Child) {
        // postfix start-fg runs its master as a child, with its pid in the queue: the
        // master ends its own processes on SIGTERM, as `postfix stop` has it do.
        let pid = match daemon {
            Daemon::Postfix => {
                std::fs::read_to_string(self.dir.join("postfix/queue/pid/master.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
            }
            _ => i32::try_from(child.id()).ok(),
        };
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// The processes left in the host's namespace, as "pid command" lines.
    pub fn leftover(&self) -> Vec<String> {
        namespace_pids(&self.ns)
            .into_iter()
            .map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{pid} {}", comm.trim())
            })
            .collect()
    }

    /// Stops every daemon (politely) and returns what was left in the namespace.
    pub fn stop(&mut self) -> Vec<String> {
        for daemon in Daemon::ALL.into_iter().rev() {
            self.stop_daemon(daemon);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.leftover().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.leftover()
    }
}

/// The pids of the processes in network namespace `ns`.
pub fn namespace_pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for ServerHost {
    fn drop(&mut self) {
        // Politely first, in parallel: each gets a few seconds.
        let running = std::mem::take(&mut self.running);
        for (daemon, child) in &running {
            self.ask_to_stop(*daemon, child);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, mut child) in running {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever is still in the namespace was started by this host's daemons.
        for _ in 0..50 {
            let pids = namespace_pids(&self.ns);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
