//! Connection-state sync for redirect services: tandem runs conntrackd (the netfilter
//! project's own state replicator, FTFW mode over UDP on the sync network), writes its
//! configuration from tandem's, restarts it when it dies, and drives it through VRRP
//! transitions (the steps keepalived sites script by hand):
//!
//! - becoming master: commit the peer's states into the kernel, flush both caches,
//!   resync the internal cache from the kernel, send the peer a bulk update;
//! - becoming backup: shorten the timers of the kernel's states (the new master
//!   carries those connections now), then ask the master for a full resync.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

/// What conntrackd needs from tandem's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// The conntrackd program.
    pub program: PathBuf,
    /// Folder for its configuration, lock, control socket and log.
    pub dir: PathBuf,
    /// This node's address on the sync network.
    pub local: IpAddr,
    /// The peer's address on the sync network.
    pub peer: IpAddr,
    /// Interface that holds `local`.
    pub interface: String,
    /// UDP port, the same on both nodes.
    pub port: u16,
    /// Most connection states conntrackd holds ([`hash_limit`]).
    pub hash_limit: u64,
}

/// conntrackd's cache limit for this kernel: twice `nf_conntrack_max`, as
/// conntrackd.conf(5) asks (it keeps closed states a while for retransmission), and at
/// least [`MIN_HASH_LIMIT`]. A smaller limit leaves the states of the newest
/// connections unsynced once the kernel holds more than it, and those would not survive
/// a failover.
pub fn hash_limit() -> u64 {
    hash_limit_for(
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
            .ok()
            .and_then(|v| v.trim().parse().ok()),
    )
}

/// The least cache limit tandem gives conntrackd (its documented example's).
pub const MIN_HASH_LIMIT: u64 = 131_072;

fn hash_limit_for(conntrack_max: Option<u64>) -> u64 {
    conntrack_max
        .map_or(MIN_HASH_LIMIT, |max| max.saturating_mul(2))
        .max(MIN_HASH_LIMIT)
}

impl ConntrackSettings {
    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("conntrackd.lock")
    }
}

/// conntrackd's configuration for `s`. States of connections to or from the sync
/// addresses and loopback are not replicated (they belong to each node).
pub fn config_text(s: &ConntrackSettings) -> String {
    let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut ignore = String::new();
    for ip in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        s.local,
        s.peer,
    ] {
        let _ = writeln!(ignore, "            {}_address {ip}", family(&ip));
    }
    format!(
        "# Written by tandem at every start from its own configuration: edit that instead.
Sync {{
    Mode FTFW {{
        DisableExternalCache Off
    }}
    UDP {{
        {fam}_address {local}
        {fam}_Destination_Address {peer}
        Port {port}
        Interface {interface}
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 32768
    HashLimit {hash_limit}
    LogFile {dir}/conntrackd.log
    Syslog off
    LockFile {lock}
    UNIX {{
        Path {dir}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
        }}
        Address Ignore {{
{ignore}        }}
    }}
}}
",
        fam = family(&s.local),
        local = s.local,
        peer = s.peer,
        port = s.port,
        interface = s.interface,
        dir = s.dir.display(),
        lock = s.lock_path().display(),
        hash_limit = s.hash_limit,
    )
}

/// The interface that holds `ip` (read with iproute2's `ip -o addr`).
pub fn interface_of(ip: IpAddr) -> Option<String> {
    let prefix = if ip.is_ipv4() { "/32" } else { "/128" };
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "to", &format!("{ip}{prefix}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text.lines().next()?.split_whitespace().nth(1)?;
    Some(name.trim_end_matches(':').to_string())
}

/// What `tandem ctl redirect` shows of the state sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackStatus {
    /// conntrackd answers on its control socket.
    pub running: bool,
    /// Times tandem restarted it.
    pub restarts: u64,
    /// Connections of this node's kernel known to conntrackd.
    pub internal: u64,
    /// Connections received from the peer, ready to be committed.
    pub external: u64,
    /// Last role it was switched to.
    pub role: String,
}

/// A supervised conntrackd.
#[derive(Debug)]
pub struct Conntrackd {
    settings: ConntrackSettings,
    status: Arc<Mutex<ConntrackStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Conntrackd {
    /// Writes the configuration, stops a conntrackd left by an earlier run, and starts
    /// one that is restarted (after a second) whenever it exits.
    pub async fn start(settings: ConntrackSettings) -> std::io::Result<Conntrackd> {
        std::fs::create_dir_all(&settings.dir)?;
        std::fs::write(settings.config_path(), config_text(&settings))?;
        if settings.lock_path().exists() {
            // A conntrackd of a killed tandem may still run: ask it to leave.
            let _ = ctl(&settings, "-k").await;
            for _ in 0..30 {
                if !settings.lock_path().exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if settings.lock_path().exists() {
                warn!(target: "tandem::redirect", lock = %settings.lock_path().display(), "removing conntrackd's stale lock file");
                std::fs::remove_file(settings.lock_path())?;
            }
        }
        let status = Arc::new(Mutex::new(ConntrackStatus::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(settings.clone(), status.clone(), stopped));
        let daemon = Conntrackd {
            settings,
            status,
            stop,
            task,
        };
        // Ready when its control socket answers.
        for _ in 0..50 {
            if ctl(&daemon.settings, "-s").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(daemon)
    }

    /// The new master's steps: the peer's states into the kernel first, then a fresh
    /// start of both caches from the kernel, announced to the peer.
    pub async fn become_master(&self) {
        self.set_role("master");
        self.steps(&[
            ("-c", "commit the peer's connection states"),
            ("-f", "flush the caches"),
            ("-R", "resync with the kernel"),
            ("-B", "send a bulk update"),
        ])
        .await;
    }

    /// The new backup's steps: age out the states the new master now carries, and ask
    /// it for all of its states.
    pub async fn become_backup(&self) {
        self.set_role("backup");
        self.steps(&[
            ("-t", "shorten the kernel's timers"),
            ("-n", "request a resync"),
        ])
        .await;
    }

    /// The steps of a conntrackd that replaces another (an upgrade of tandem): its
    /// internal cache is the kernel's already; a master sends it to the peer, a backup
    /// asks the master for its states.
    pub async fn resumed(&self, master: bool) {
        if master {
            self.set_role("master");
            self.steps(&[("-B", "send a bulk update")]).await;
        } else {
            self.set_role("backup");
            self.steps(&[("-n", "request a resync")]).await;
        }
    }

    /// Runs each `(flag, what it does)` in turn; a failed step is logged, the next runs.
    async fn steps(&self, steps: &[(&str, &str)]) {
        for (flag, what) in steps {
            if let Err(e) = ctl(&self.settings, flag).await {
                warn!(target: "tandem::redirect", error = %e, "conntrackd could not {what}");
            }
        }
    }

    fn set_role(&self, role: &str) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).role = role.to_string();
    }

    /// Its state now (asks conntrackd for its statistics).
    pub async fn status(&self) -> ConntrackStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match ctl(&self.settings, "-s").await {
            Ok(text) => {
                status.running = true;
                (status.internal, status.external) = parse_cache_counts(&text);
            }
            Err(_) => status.running = false,
        }
        status
    }

    /// Stops conntrackd.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// (internal, external) "current active connections" of `conntrackd -s`.
pub fn parse_cache_counts(stats: &str) -> (u64, u64) {
    let mut section = "";
    let (mut internal, mut external) = (0, 0);
    for line in stats.lines() {
        if line.starts_with("cache internal") {
            section = "internal";
        } else if line.starts_with("cache external") {
            section = "external";
        } else if let Some(rest) = line.strip_prefix("current active connections:") {
            let n = rest.trim().parse().unwrap_or(0);
            match section {
                "internal" => internal = n,
                "external" => external = n,
                _ => {}
            }
        }
    }
    (internal, external)
}

/// Runs `conntrackd -C CONF FLAG` and returns what it printed.
async fn ctl(settings: &ConntrackSettings, flag: &str) -> std::io::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(&settings.program)
            .arg("-C")
            .arg(settings.config_path())
            .arg(flag)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| std::io::Error::other(format!("conntrackd {flag}: no answer within 10s")))??;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "conntrackd {flag}: {}",
            last_line(&out.stderr, &out.stdout)
        )))
    }
}

fn last_line(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.is_empty() { stdout } else { stderr };
    String::from_utf8_lossy(text)
        .lines()
        .last()
        .unwrap_or("failed")
        .trim()
        .to_string()
}

async fn supervise(
    settings: ConntrackSettings,
    status: Arc<Mutex<ConntrackStatus>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        let mut command = Command::new(&settings.program);
        command
            .arg("-C")
            .arg(settings.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        match command.spawn() {
            Ok(mut child) => {
                if first {
                    info!(target: "tandem::redirect", config = %settings.config_path().display(), peer = %settings.peer, "conntrackd started");
                } else {
                    status.lock().unwrap_or_else(|e| e.into_inner()).restarts += 1;
                    warn!(target: "tandem::redirect", "conntrackd restarted");
                }
                tokio::select! {
                    exit = child.wait() => {
                        warn!(target: "tandem::redirect", status = ?exit, log = %settings.dir.join("conntrackd.log").display(), "conntrackd exited");
                        let _ = std::fs::remove_file(settings.lock_path());
                    }
                    _ = stopped.changed() => {
                        let _ = ctl(&settings, "-k").await;
                        if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                            let _ = child.kill().await;
                            let _ = std::fs::remove_file(settings.lock_path());
                        }
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(target: "tandem::redirect", program = %settings.program.display(), error = %e, "cannot start conntrackd");
            }
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// conntrackd must not outlive a tandem that is killed: the kernel sends it SIGKILL
/// when its parent dies.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether `path` (or a name looked up in PATH) can be run.
pub fn program_exists(path: &Path) -> bool {
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(path).is_file()))
}

/// `name` when PATH finds it, else the system folder that holds it (services often
/// start with a PATH without /usr/sbin, where nft and conntrackd live).
pub fn locate(name: &Path) -> PathBuf {
    if program_exists(name) || name.components().count() > 1 {
        return name.to_path_buf();
    }
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConntrackSettings {
        ConntrackSettings {
            program: "conntrackd".into(),
            dir: "/run/tandem.conntrackd".into(),
            local: "10.2.0.2".parse().unwrap(),
            peer: "10.2.0.3".parse().unwrap(),
            interface: "eth2".into(),
            port: 3780,
            hash_limit: 524_288,
        }
    }

    #[test]
    fn the_cache_limit_is_twice_the_kernels_and_never_below_the_floor() {
        assert_eq!(hash_limit_for(Some(262_144)), 524_288);
        assert_eq!(hash_limit_for(Some(1_000)), MIN_HASH_LIMIT);
        assert_eq!(hash_limit_for(None), MIN_HASH_LIMIT);
        assert!(config_text(&settings()).contains("    HashLimit 524288\n"));
    }

    #[test]
    fn config_names_both_ends_and_ignores_their_own_traffic() {
        let text = config_text(&settings());
        assert!(text.contains("IPv4_address 10.2.0.2\n"));
        assert!(text.contains("IPv4_Destination_Address 10.2.0.3\n"));
        assert!(text.contains("Port 3780\n"));
        assert!(text.contains("Interface eth2\n"));
        assert!(text.contains("LockFile /run/tandem.conntrackd/conntrackd.lock\n"));
        assert!(text.contains("Path /run/tandem.conntrackd/conntrackd.ctl\n"));
        let ignore = &text[text.find("Address Ignore").unwrap()..];
        for ip in ["127.0.0.1", "::1", "10.2.0.2", "10.2.0.3"] {
            assert!(ignore.contains(&format!("_address {ip}\n")), "{ip}");
        }
        let balanced = text.matches('{').count() == text.matches('}').count();
        assert!(balanced, "{text}");
    }

    #[test]
    fn ipv6_sync_addresses_use_ipv6_keys() {
        let s = ConntrackSettings {
            local: "fd02::2".parse().unwrap(),
            peer: "fd02::3".parse().unwrap(),
            ..settings()
        };
        let text = config_text(&s);
        assert!(text.contains("IPv6_address fd02::2\n"));
        assert!(text.contains("IPv6_Destination_Address fd02::3\n"));
    }

    #[test]
    fn cache_counts_come_from_the_statistics() {
        let stats = "cache internal:\ncurrent active connections:\t          12\nconnections created:\t\t 3\tfailed:\t 0\n\ncache external:\ncurrent active connections:\t           7\n";
        assert_eq!(parse_cache_counts(stats), (12, 7));
        assert_eq!(parse_cache_counts("nonsense"), (0, 0));
    }
}
