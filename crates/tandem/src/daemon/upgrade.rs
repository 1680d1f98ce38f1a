//! Upgrade in place, both sides (the wire is [`crate::upgrade`]).
//!
//! The old side, [`Daemon::upgrade`]: starts the new binary with the same arguments,
//! hands it the listening sockets (services, admin port, control socket, sync), the
//! announce device (`[announce]`'s TUN device: it lives while a descriptor of it is
//! open) with the announcer's state, the fingerprint of the redirect rules it applied,
//! the sticky tables, each VRRP router's state and the backends' decided health, waits
//! for it to accept, then retires: stops advertising (no priority 0, the addresses
//! stay), leaves the announce device and the nftables table alone (nothing withdrawn
//! or removed at its end), stops its conntrackd for the successor's, stops accepting
//! (the new process accepts from the same sockets, so nothing queued is lost; sync
//! sessions up run on until the exit), sends the pins made meanwhile, tells systemd
//! the new main pid, and lets `run` drain and exit.
//!
//! The new side, [`Inherited`]: the sockets received, matched to the configuration by
//! service and configured address when the daemon is built; the tables merged like a
//! state file's; the announcer resumed on the same device; the nftables table kept when
//! it wants the same rules; conntrackd started once the predecessor's has stopped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_balance::{PoolSet, now_ms, unix_ms};
use tandem_control::UpgradeReply;
use tandem_vrrp::State;
use tokio::net::{TcpListener, UnixListener};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use super::reload::ListenKey;
use crate::state_file;
use crate::upgrade::{
    self, AnnounceState, BackendState, Carried, Outcome, RedirectState, RouterState, Socket,
};

/// How long the new binary may take to connect for its sockets.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How long it may take from connecting to accepting (health checks, TLS, sync...).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The old side's state: what it hands over and whether it has.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// Copies of the admin port's and control socket's descriptors (their listeners
    /// live in their tasks).
    pub(super) sockets: Mutex<Vec<(Socket, OwnedFd)>>,
    /// An upgrade is under way.
    pub(super) busy: AtomicBool,
    /// Cancelled when the control socket and admin port stop accepting (at retiring,
    /// or at shutdown: a child of the tasks' token).
    pub(super) accepting: CancellationToken,
    /// Cancelled once a successor serves: `run` then drains and exits.
    pub(super) retired: CancellationToken,
}

/// Why an upgrade did not happen; the running process serves on.
#[derive(Debug, thiserror::Error)]
#[error("upgrade refused, this tandem (pid {pid}) serves on: {reason}")]
pub struct UpgradeError {
    pid: u32,
    reason: String,
}

impl Daemon {
    /// Starts `binary` (none: this process's own) with this process's arguments, hands
    /// it the listeners and sticky tables, and once it accepts, retires: see the module.
    pub async fn upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeReply, UpgradeError> {
        let handoff = &self.shared.handoff;
        let fail = |reason: String| UpgradeError {
            pid: std::process::id(),
            reason,
        };
        if let Some(why) = self.upgrade_unsupported() {
            return Err(fail(why));
        }
        if handoff.busy.swap(true, Ordering::SeqCst) {
            return Err(fail("another upgrade is under way".into()));
        }
        let result = self.hand_over(binary).await;
        if result.is_err() {
            handoff.busy.store(false, Ordering::SeqCst);
        }
        result.map_err(fail)
    }

    /// A future that ends once a successor serves (never without an upgrade).
    pub async fn retired(&self) {
        self.shared.handoff.retired.cancelled().await
    }

    /// Whether a successor serves.
    pub fn has_retired(&self) -> bool {
        self.shared.handoff.retired.is_cancelled()
    }

    /// What this configuration has that an upgrade cannot carry.
    fn upgrade_unsupported(&self) -> Option<String> {
        if self.shared.control_socket.is_none() {
            return Some("no control socket to hand over".into());
        }
        None
    }

    async fn hand_over(&self, binary: Option<PathBuf>) -> Result<UpgradeReply, String> {
        let began = Instant::now();
        let binary = match binary {
            Some(b) => b,
            None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        };
        trusted_binary(&binary)?;
        let control = self.shared.control_socket.clone().unwrap_or_default();
        let meet = meeting_path(&control);
        let listener = tandem_control::socket::bind(&meet).map_err(|e| e.to_string())?;
        let _remove = RemoveOnDrop(meet.clone());
        let mut child = tokio::process::Command::new(&binary)
            .args(std::env::args_os().skip(1))
            .env(upgrade::ENV, &meet)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id().unwrap_or_default();
        info!(binary = %binary.display(), pid, "upgrade: started the new binary, handing over");
        let stream = match accept_from(&listener, &mut child, pid).await {
            Ok(s) => s,
            Err(e) => return Err(end_child(child, e).await),
        };
        drop(listener);
        let (sockets, announce) = self.sockets_to_hand_over().await;
        let count = sockets.len() as u64;
        let redirect = match &self.shared.redirect {
            Some(plane) => Some(RedirectState {
                rules: plane.fingerprint(),
                conntrackd: plane.runs_conntrackd().await,
            }),
            None => None,
        };
        let node = self.config().global.name.clone();
        let pools = self.pools();
        let saved = state_file::snapshot(&pools, &node, now_ms(), unix_ms());
        let pins = saved.entries.len() as u64;
        let table = state_file::encode(&saved);
        // Each router's successor starts in its state (an interface that is down: as
        // usual).
        let routers: Vec<RouterState> = self
            .shared
            .vrrp
            .iter()
            .map(|v| v.status())
            .filter(|s| s.state != State::Initialize)
            .map(|s| RouterState {
                ipv6: is_ipv6(&s.virtual_ips),
                interface: s.interface,
                vrid: s.vrid,
                state: s.state.name().to_string(),
            })
            .collect();
        // Decided health only: a guess is the successor's to make again.
        let health: Vec<BackendState> = pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .filter(|b| b.state.is_decided())
                    .map(|b| BackendState {
                        pool: p.name.clone(),
                        address: b.address,
                        up: b.state.is_healthy(),
                    })
            })
            .collect();
        let exchange = tokio::task::spawn_blocking(move || {
            stream.set_read_timeout(Some(READY_WITHIN))?;
            stream.set_write_timeout(Some(READY_WITHIN))?;
            let fds: Vec<(Socket, std::os::fd::BorrowedFd<'_>)> = sockets
                .iter()
                .map(|(s, fd)| (s.clone(), fd.as_fd()))
                .collect();
            let carried = Carried {
                routers,
                health,
                announce,
                redirect,
            };
            upgrade::send(&stream, std::process::id(), carried, &fds, &table)?;
            drop(fds);
            drop(sockets);
            let outcome = upgrade::receive_outcome(&stream);
            outcome.map(|o| (o, stream))
        })
        .await
        .map_err(|e| e.to_string())?;
        let stream = match exchange {
            Ok((Outcome::Ready { .. }, stream)) => stream,
            Ok((Outcome::Failed { reason }, _)) => {
                return Err(
                    end_child(child, format!("the new tandem could not start: {reason}")).await,
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(
                    end_child(child, "the new tandem ended before it was ready".into()).await,
                );
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(end_child(
                    child,
                    format!("the new tandem was not ready within {READY_WITHIN:?}"),
                )
                .await);
            }
            Err(e) => {
                return Err(end_child(child, format!("handing over to the new tandem: {e}")).await);
            }
        };
        let ready_ms = began.elapsed().as_millis() as u64;
        self.retire().await;
        // Pins made between the snapshot and now; the new one merges them (newer wins).
        let late = state_file::encode(&state_file::snapshot(
            &self.pools(),
            &node,
            now_ms(),
            unix_ms(),
        ));
        let sent = tokio::task::spawn_blocking(move || upgrade::send_table(&stream, &late)).await;
        if let Ok(Err(e)) | Err(e) = sent.map_err(std::io::Error::other) {
            warn!("upgrade: the pins made during the handover were not sent: {e}");
        }
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(pid)]) {
            warn!(error = %e, "cannot tell systemd the new main pid");
        }
        let draining = self.open_connections();
        info!(
            pid,
            ready_ms,
            sockets = count,
            pins,
            draining,
            "upgrade: the new tandem (pid {pid}) serves; this one stopped accepting and exits when its {draining} connections end"
        );
        self.shared.handoff.retired.cancel();
        Ok(UpgradeReply {
            old_pid: std::process::id(),
            new_pid: pid,
            binary: binary.display().to_string(),
            ready_ms,
            sockets: count,
            pins,
            draining,
        })
    }

    /// Copies of every listening socket's descriptor, described, and with `[announce]`
    /// the device's and the announcer's state.
    async fn sockets_to_hand_over(&self) -> (Vec<(Socket, OwnedFd)>, Option<AnnounceState>) {
        let mut out = Vec::new();
        let mut announce = None;
        if let Some(part) = &self.shared.announce {
            match part.handover().await {
                Ok((device, fd, state)) => {
                    out.push((device, fd));
                    announce = Some(state);
                }
                // The successor makes its own device: BIRD sees the routes go and come.
                Err(e) => warn!("upgrade: cannot hand over the announce device: {e}"),
            }
        }
        for (key, l) in self.shared.inner.lock().await.listeners.iter() {
            match l.fd.as_ref().map(OwnedFd::try_clone) {
                Some(Ok(fd)) => out.push((
                    Socket::Service {
                        service: l.service.clone(),
                        address: key.address,
                    },
                    fd,
                )),
                Some(Err(e)) => {
                    warn!(listen = %l.bound, "upgrade: cannot hand over a listener: {e}")
                }
                None => {
                    warn!(listen = %l.bound, "upgrade: cannot hand over a listener: no copy of its descriptor")
                }
            }
        }
        if let (Some(sync), Some(conf)) = (&self.shared.sync, &self.config().sync) {
            match sync.listener() {
                Ok(fd) => out.push((
                    Socket::Sync {
                        address: conf.listen,
                    },
                    fd,
                )),
                Err(e) => warn!("upgrade: cannot hand over the sync listener: {e}"),
            }
        }
        for (s, fd) in self
            .shared
            .handoff
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Ok(fd) = fd.try_clone() {
                out.push((s.clone(), fd));
            }
        }
        (out, announce)
    }

    /// Stops accepting: services, control socket, admin port. The sockets stay open in
    /// the successor, which accepts what is queued.
    async fn retire(&self) {
        let handoff = &self.shared.handoff;
        // The successor advertises already (each process ignores the other's
        // advertisements: they come from its own address).
        for vrrp in &self.shared.vrrp {
            vrrp.quiet().await;
        }
        // The successor decides what is announced, on the device it holds too.
        if let Some(part) = &self.shared.announce {
            part.retire().await;
        }
        // The table stays as it is, the successor's; its conntrackd starts once this
        // one's has stopped (one per lock and port).
        if let Some(plane) = &self.shared.redirect {
            plane.hand_over().await;
        }
        handoff.accepting.cancel();
        self.shared.life.stop_accepting.cancel();
        // Sessions a peer opens from now on are the successor's.
        if let Some(sync) = &self.shared.sync {
            sync.stop_accepting();
        }
        let mut inner = self.shared.inner.lock().await;
        for (_, l) in inner.listeners.drain() {
            drop(l.task.join().await);
        }
        handoff
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Refuses a binary that a user other than root could have written, when running it
/// would give that user more than it has: tandem's capabilities (under systemd,
/// CAP_NET_ADMIN and the others of the unit), or root. A tandem without capabilities
/// may also run a binary of its own user's, as that user can anyway.
fn trusted_binary(binary: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(binary).map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let me = rustix::process::geteuid().as_raw();
    let powerless =
        me != 0 && caps::read(None, caps::CapSet::Permitted).is_ok_and(|c| c.is_empty());
    let owner_ok = meta.uid() == 0 || (powerless && meta.uid() == me);
    if !owner_ok || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is owned by uid {} with mode {:o}: tandem runs only a binary owned by root (or by its own user when it holds no capabilities) that neither group nor others may write",
            binary.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Where the old process waits for its successor: beside the control socket.
fn meeting_path(control: &Path) -> PathBuf {
    let mut name = control.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".upgrade-{}", std::process::id()));
    control.with_file_name(name)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The successor's connection, checked to come from `pid`.
async fn accept_from(
    listener: &UnixListener,
    child: &mut Child,
    pid: u32,
) -> Result<UnixStream, String> {
    let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| format!("waiting for the new tandem: {e}"))?,
            status = child.wait() => {
                return Err(match status {
                    Ok(s) => format!("the new tandem exited ({s}) before taking the sockets; its log says why"),
                    Err(e) => format!("the new tandem: {e}"),
                });
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(format!("the new tandem did not ask for the sockets within {CONNECT_WITHIN:?}"));
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.pid() == Some(pid as i32) => {
                let stream = stream.into_std().map_err(|e| e.to_string())?;
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            other => warn!(
                ?other,
                "upgrade: a connection that is not the new tandem's, ignored"
            ),
        }
    }
}

/// Makes sure a failed successor is gone (it exits by itself after saying why; one
/// that does not within a second, stuck or slow, is killed), and returns `reason` with
/// how it ended.
async fn end_child(mut child: Child, reason: String) -> String {
    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    warn!("upgrade failed, serving on: {reason}");
    match status {
        Some(s) => format!("{reason} (new process: {s})"),
        None => reason,
    }
}

/// What a new process received from its predecessor: listening sockets, consumed as
/// the daemon is built, and the sticky tables.
#[derive(Debug, Default)]
pub struct Inherited {
    from: u32,
    services: HashMap<ListenKey, OwnedFd>,
    admin: HashMap<SocketAddr, OwnedFd>,
    control: HashMap<PathBuf, OwnedFd>,
    sync: HashMap<SocketAddr, OwnedFd>,
    sticky: Vec<u8>,
    /// The single router's state, from a predecessor that sent no `routers`.
    vrrp: Option<State>,
    /// Each router's state by interface, vrid and family.
    routers: HashMap<(String, u8, bool), State>,
    /// Backends' decided health.
    health: Vec<BackendState>,
    /// The announce device by interface name.
    announce_device: HashMap<String, OwnedFd>,
    /// The announcer's state.
    announce: Option<AnnounceState>,
    /// The redirect plane's state.
    redirect: Option<RedirectState>,
}

impl Inherited {
    /// Sorts what [`upgrade::receive`] returned.
    pub fn new(from: u32, sockets: Vec<(Socket, OwnedFd)>, sticky: Vec<u8>) -> Inherited {
        let mut me = Inherited {
            from,
            sticky,
            ..Inherited::default()
        };
        for (s, fd) in sockets {
            match s {
                Socket::Service { service, address } => {
                    me.services.insert(ListenKey::new(&service, address), fd);
                }
                Socket::Admin { address } => {
                    me.admin.insert(address, fd);
                }
                Socket::Control { path } => {
                    me.control.insert(path, fd);
                }
                Socket::Sync { address } => {
                    me.sync.insert(address, fd);
                }
                Socket::Announce { interface } => {
                    me.announce_device.insert(interface, fd);
                }
            }
        }
        me
    }

    /// The state the router on `interface` with `vrid` (of the family of
    /// `virtual_ips`) starts in: its predecessor's; `routers` is how many this
    /// configuration has (a predecessor that sent one state had one router).
    pub fn vrrp(
        &self,
        interface: &str,
        vrid: u8,
        virtual_ips: &[(IpAddr, u8)],
        routers: usize,
    ) -> Option<State> {
        let key = (interface.to_string(), vrid, is_ipv6(virtual_ips));
        match self.routers.get(&key) {
            Some(s) => Some(*s),
            None if self.routers.is_empty() && routers == 1 => self.vrrp,
            None => None,
        }
    }

    /// The predecessor's pid (0: none).
    pub fn from_pid(&self) -> u32 {
        self.from
    }

    /// The service listener for `key`, when handed over.
    pub(super) fn take_service(&mut self, key: &ListenKey) -> Option<std::io::Result<TcpListener>> {
        self.services.remove(key).map(tcp_listener)
    }

    /// The admin port configured at `address`, when handed over.
    pub(super) fn take_admin(
        &mut self,
        address: SocketAddr,
    ) -> Option<std::io::Result<TcpListener>> {
        self.admin.remove(&address).map(tcp_listener)
    }

    /// The sync listener configured at `address`, when handed over.
    pub(super) fn take_sync(&mut self, address: SocketAddr) -> Option<std::net::TcpListener> {
        self.sync.remove(&address).map(std::net::TcpListener::from)
    }

    /// The control socket at `path`, when handed over.
    pub(super) fn take_control(&mut self, path: &Path) -> Option<std::io::Result<UnixListener>> {
        self.control.remove(path).map(|fd| {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)
        })
    }

    /// The announce device `interface` and what was announced on it, when handed
    /// over.
    pub(super) fn take_announce(&mut self, interface: &str) -> Option<(OwnedFd, AnnounceState)> {
        let fd = self.announce_device.remove(interface)?;
        Some((fd, self.announce.take().unwrap_or_default()))
    }

    /// The fingerprint of the redirect rules the predecessor left in the kernel.
    pub(super) fn redirect_rules(&self) -> Option<&str> {
        self.redirect.as_ref()?.rules.as_deref()
    }

    /// Whether the predecessor runs conntrackd (it stops it when it retires).
    pub(super) fn conntrackd_runs(&self) -> bool {
        self.redirect.as_ref().is_some_and(|r| r.conntrackd)
    }

    /// Gives the backends of `pools` their health as the predecessor's checks decided
    /// it (before the checks start: they go on from there).
    pub(super) fn restore_health(&self, pools: &PoolSet) {
        for h in &self.health {
            if let Some(b) = pools
                .get(&h.pool)
                .and_then(|p| p.backends.iter().find(|b| b.address == h.address))
            {
                b.state.set_healthy(h.up);
                b.state.set_decided();
            }
        }
    }

    /// Merges the predecessor's pins into `pools` (newer pin wins).
    pub(super) fn restore_sticky(&self, pools: &PoolSet) {
        if self.from == 0 {
            return;
        }
        merge_pins(pools, &self.sticky, "handed over");
    }
}

/// Merges a table in the state file's form into `pools`.
pub(super) fn merge_pins(pools: &PoolSet, bytes: &[u8], what: &str) {
    match state_file::decode(bytes) {
        Ok(saved) => {
            let done = state_file::restore(pools, &saved, now_ms(), unix_ms());
            info!(
                loaded = done.loaded,
                expired = done.expired,
                unknown_pool = done.unknown_pool,
                "sticky pins {what} by the previous tandem: {}",
                done.loaded
            );
        }
        Err(e) => warn!("sticky pins {what} by the previous tandem refused: {e}"),
    }
}

/// A state as [`State::name`] writes it; only those a router resumes in.
fn state_named(name: &str) -> Option<State> {
    match name {
        "MASTER" => Some(State::Master),
        "BACKUP" => Some(State::Backup),
        _ => None,
    }
}

/// A router's family: its first virtual address's.
fn is_ipv6(virtual_ips: &[(IpAddr, u8)]) -> bool {
    virtual_ips.first().is_some_and(|(ip, _)| ip.is_ipv6())
}

fn tcp_listener(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// The new process's side of the wire, from connecting to the end of the handover.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Connects to the predecessor waiting at `path` and receives what it hands over.
    pub fn connect(path: &Path) -> std::io::Result<(Successor, Inherited)> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(CONNECT_WITHIN))?;
        let received = upgrade::receive(&stream)?;
        stream.set_read_timeout(None)?;
        let mut inherited = Inherited::new(received.header.pid, received.sockets, received.sticky);
        inherited.vrrp = received.header.vrrp.as_deref().and_then(state_named);
        inherited.routers = received
            .header
            .routers
            .iter()
            .filter_map(|r| {
                Some((
                    (r.interface.clone(), r.vrid, r.ipv6),
                    state_named(&r.state)?,
                ))
            })
            .collect();
        inherited.health = received.header.health;
        inherited.announce = received.header.announce;
        inherited.redirect = received.header.redirect;
        Ok((Successor { stream }, inherited))
    }

    /// Tells the predecessor why this process cannot start (it serves on).
    pub fn failed(self, reason: &str) {
        let _ = upgrade::send_outcome(
            &self.stream,
            &Outcome::Failed {
                reason: reason.to_string(),
            },
        );
    }

    /// Tells the predecessor this process serves, and merges the pins it made until
    /// it stopped accepting.
    pub async fn ready(self, daemon: &Daemon) -> std::io::Result<()> {
        upgrade::send_outcome(
            &self.stream,
            &Outcome::Ready {
                pid: std::process::id(),
            },
        )?;
        let stream = self.stream;
        stream.set_read_timeout(Some(CONNECT_WITHIN))?;
        let late = tokio::task::spawn_blocking(move || upgrade::receive_table(&stream))
            .await
            .map_err(std::io::Error::other)??;
        merge_pins(&daemon.pools(), &late, "made during the handover");
        // The predecessor has retired: its conntrackd has stopped.
        if let Some(plane) = daemon.redirect() {
            let master = daemon
                .redirect_leader()
                .and_then(|i| daemon.vrrp().get(i))
                .is_some_and(|v| v.status().state == State::Master);
            plane.resume_state_sync(master).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_router_resumes_in_its_own_state_by_interface_vrid_and_family() {
        let v4: Vec<(IpAddr, u8)> = vec![("192.0.2.10".parse().unwrap(), 24)];
        let v6: Vec<(IpAddr, u8)> = vec![("2001:db8::10".parse().unwrap(), 64)];
        let inherited = Inherited {
            routers: [
                (("eth0".to_string(), 51, false), State::Master),
                (("eth0".to_string(), 52, false), State::Backup),
                (("eth0".to_string(), 51, true), State::Backup),
            ]
            .into_iter()
            .collect(),
            ..Inherited::default()
        };
        assert_eq!(inherited.vrrp("eth0", 51, &v4, 3), Some(State::Master));
        assert_eq!(inherited.vrrp("eth0", 52, &v4, 3), Some(State::Backup));
        assert_eq!(inherited.vrrp("eth0", 51, &v6, 3), Some(State::Backup));
        // A router the predecessor did not have starts as at any start.
        assert_eq!(inherited.vrrp("eth1", 51, &v4, 3), None);
        assert_eq!(inherited.vrrp("eth0", 53, &v4, 3), None);

        // A predecessor that sent one state (no `routers`): it had one router, and
        // its state goes to this configuration's router only if it has one too.
        let older = Inherited {
            vrrp: Some(State::Master),
            ..Inherited::default()
        };
        assert_eq!(older.vrrp("eth0", 51, &v4, 1), Some(State::Master));
        assert_eq!(older.vrrp("eth0", 51, &v4, 2), None);
        assert_eq!(state_named("MASTER"), Some(State::Master));
        assert_eq!(state_named("INIT"), None);
    }

    #[test]
    fn a_binary_others_may_write_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let powerless = me != 0
            && caps::read(None, caps::CapSet::Permitted)
                .unwrap()
                .is_empty();
        if me == 0 || powerless {
            assert_eq!(trusted_binary(&path), Ok(()));
        }
        for mode in [0o775, 0o757] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let refused = trusted_binary(&path).unwrap_err();
            assert!(
                refused.contains("neither group nor others may write"),
                "{refused}"
            );
        }
        let missing = trusted_binary(&dir.path().join("nope")).unwrap_err();
        assert!(missing.starts_with("cannot start"), "{missing}");
    }
}
