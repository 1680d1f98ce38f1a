//! The IO around the state machine on Linux: one task per virtual router that reads
//! packets, fires timers, follows the interface, and carries out the machine's actions.

pub mod arp;
pub mod netlink;
pub mod socket;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::machine::{Action, Input, Instance, Settings, State};
use crate::packet::{Centis, DropReason, MULTICAST_V4, Received, decode_ipv4};
use arp::ArpSender;
use netlink::Netlink;
use socket::VrrpSocket;

/// How often the interface's state is read.
const LINK_POLL: Duration = Duration::from_millis(200);
/// When gratuitous ARPs go out after the first advertisement as master (ms after it).
const GARP_SCHEDULE_MS: [u64; 5] = [0, 100, 300, 1000, 2000];

/// What a virtual router needs: the daemon builds it from its `[ha]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// Interface.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Configured priority.
    pub priority: u8,
    /// Advertisement interval.
    pub interval: Duration,
    /// Preempt a lower master.
    pub preempt: bool,
    /// Wait after start before preempting.
    pub preempt_delay: Duration,
    /// Virtual IPv4 addresses with prefix length.
    pub virtual_ips: Vec<(Ipv4Addr, u8)>,
    /// Unicast peers; empty = multicast.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// Program run with the new state.
    pub notify: Option<PathBuf>,
    /// Checksum over the IPv4 pseudo-header.
    pub pseudo_header: bool,
    /// Addresses on other interfaces that follow this router's state.
    pub group: Vec<GroupSettings>,
    /// While master, announce the addresses again this often (`garp_refresh`).
    pub garp_refresh: Option<Duration>,
    /// The vrids of this node's other instances on the interface: their adverts are
    /// ignored, not counted as dropped.
    pub sibling_vrids: Vec<u8>,
}

/// Virtual addresses on another interface, taken and released with the main ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Interface.
    pub interface: String,
    /// Virtual IPv4 addresses with prefix length.
    pub virtual_ips: Vec<(Ipv4Addr, u8)>,
}

/// Sent just before this node takes the virtual addresses; the router waits for the
/// reply (at most [`TAKEOVER_WAIT`]), so that state the new master needs (the kernel's
/// connection states) is in place before the first packet arrives.
pub type Takeover = oneshot::Sender<()>;

/// The longest a takeover waits for its hook.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// Why VRRP could not start.
#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    /// The interface does not exist.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// The interface has no IPv4 address to send from.
    #[error(
        "interface {0} has no IPv4 address of its own to send VRRP from (the virtual addresses do not count)"
    )]
    NoAddress(String),
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// A socket could not be opened.
    #[error("{0} (VRRP needs CAP_NET_RAW and CAP_NET_ADMIN)")]
    Io(#[from] std::io::Error),
}

/// What the router looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// State.
    pub state: State,
    /// Interface.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Configured priority.
    pub priority: u8,
    /// Priority after demotions.
    pub effective_priority: u8,
    /// Active demotions: (reason, amount).
    pub demotions: Vec<(String, u8)>,
    /// The master as last heard.
    pub master: Option<Ipv4Addr>,
    /// State changes.
    pub transitions: u64,
    /// Dropped packets by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Virtual addresses.
    pub virtual_ips: Vec<(Ipv4Addr, u8)>,
}

enum Command {
    Demote(Vec<(String, u8)>),
    HoldPreempt(bool),
    PeerExited,
    Shutdown(oneshot::Sender<()>),
}

/// A running virtual router.
#[derive(Debug)]
pub struct Vrrp {
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<Status>>,
    states: watch::Receiver<State>,
    task: JoinHandle<()>,
}

impl Drop for Vrrp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Vrrp {
    /// Opens sockets on the interface, removes virtual addresses left by a crashed run,
    /// and starts as Backup (or Master for priority 255).
    pub async fn start(settings: HaSettings) -> Result<Vrrp, VrrpError> {
        Vrrp::start_with_takeover(settings, None).await
    }

    /// As [`Vrrp::start`], and asks `takeover` before every takeover (see [`Takeover`]).
    pub async fn start_with_takeover(
        settings: HaSettings,
        takeover: Option<mpsc::Sender<Takeover>>,
    ) -> Result<Vrrp, VrrpError> {
        let netlink = Netlink::open()?;
        let link = netlink
            .link(&settings.interface)
            .await?
            .ok_or_else(|| VrrpError::NoInterface(settings.interface.clone()))?;
        let vips: Vec<Ipv4Addr> = settings.virtual_ips.iter().map(|(ip, _)| *ip).collect();
        let addresses = netlink.addresses(link.index).await?;
        let primary = addresses
            .iter()
            .find(|(ip, _, secondary)| !secondary && !vips.contains(ip))
            .or_else(|| addresses.iter().find(|(ip, _, _)| !vips.contains(ip)))
            .map(|(ip, _, _)| *ip)
            .ok_or_else(|| VrrpError::NoAddress(settings.interface.clone()))?;
        // The main interface first, then the group's.
        let mut holders =
            vec![AddressHolder::open(&netlink, &settings.interface, &settings.virtual_ips).await?];
        for g in &settings.group {
            holders.push(AddressHolder::open(&netlink, &g.interface, &g.virtual_ips).await?);
        }
        let socket = VrrpSocket::open(&settings.interface, link.index, primary)?;
        let machine = Instance::new(Settings {
            vrid: settings.vrid,
            priority: settings.priority,
            interval: Centis::from_duration(settings.interval),
            preempt: settings.preempt,
            preempt_delay: settings.preempt_delay,
            primary,
            addresses: vips,
            announce_every: settings.garp_refresh,
        });
        let status = Arc::new(Mutex::new(Status {
            state: State::Initialize,
            interface: settings.interface.clone(),
            vrid: settings.vrid,
            priority: settings.priority,
            effective_priority: settings.priority,
            demotions: Vec::new(),
            master: None,
            transitions: 0,
            dropped: BTreeMap::new(),
            virtual_ips: settings.virtual_ips.clone(),
        }));
        let (commands, rx) = mpsc::channel(16);
        let (state_tx, states) = watch::channel(State::Initialize);
        info!(target: "tandem::vrrp", interface = %settings.interface, vrid = settings.vrid, priority = settings.priority,
            primary = %primary, interval_ms = settings.interval.as_millis() as u64,
            mode = if settings.unicast_peers.is_empty() { "multicast" } else { "unicast" }, "VRRP starting");
        let runner = Runner {
            settings,
            netlink,
            primary,
            socket,
            holders: Arc::new(holders),
            machine,
            status: status.clone(),
            states: state_tx,
            origin: Instant::now(),
            interface_down: false,
            takeover,
        };
        let task = tokio::spawn(runner.run(rx));
        Ok(Vrrp {
            commands,
            status,
            states,
            task,
        })
    }

    /// The router now.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver of state changes.
    pub fn states(&self) -> watch::Receiver<State> {
        self.states.clone()
    }

    /// Replaces the set of priority demotions (tracked pools that are down).
    pub async fn set_demotions(&self, demotions: Vec<(String, u8)>) {
        let _ = self.commands.send(Command::Demote(demotions)).await;
    }

    /// Holds preemption back (while the sticky table is not synced) or lets it go.
    pub async fn hold_preempt(&self, hold: bool) {
        let _ = self.commands.send(Command::HoldPreempt(hold)).await;
    }

    /// The peer's process closed its connections (its sync session ended): a backup
    /// whose master it was takes over after one missed advertisement instead of three.
    pub async fn peer_exited(&self) {
        let _ = self.commands.send(Command::PeerExited).await;
    }

    /// Leaves gracefully: a master advertises priority 0 (the backup takes over after
    /// its skew time) and removes the virtual addresses. Returns once done.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The effective priority: the configured one less the demotions, at least 1.
pub fn effective_priority(priority: u8, demotions: &[(String, u8)]) -> u8 {
    let total: u32 = demotions.iter().map(|(_, d)| u32::from(*d)).sum();
    if total == 0 {
        return priority;
    }
    (i64::from(priority.min(254)) - i64::from(total)).clamp(1, 254) as u8
}

struct Runner {
    settings: HaSettings,
    netlink: Netlink,
    primary: Ipv4Addr,
    socket: VrrpSocket,
    /// Where the virtual addresses go: the main interface, then the group's.
    holders: Arc<Vec<AddressHolder>>,
    machine: Instance,
    status: Arc<Mutex<Status>>,
    states: watch::Sender<State>,
    origin: Instant,
    interface_down: bool,
    takeover: Option<mpsc::Sender<Takeover>>,
}

/// An interface that holds virtual addresses while this router is master.
struct AddressHolder {
    interface: String,
    index: u32,
    arp: ArpSender,
    virtual_ips: Vec<(Ipv4Addr, u8)>,
    /// The gratuitous ARP of each virtual address, built once.
    frames: Vec<[u8; 60]>,
}

impl AddressHolder {
    /// Sends the gratuitous ARP of every address.
    fn announce(&self) {
        for frame in &self.frames {
            if let Err(e) = self.arp.send_frame(frame) {
                debug!(target: "tandem::vrrp", interface = %self.interface, error = %e, "gratuitous ARP");
            }
        }
    }
}

impl AddressHolder {
    /// Opens `interface` to hold `virtual_ips`, first removing any of them left there by
    /// an earlier run that died.
    async fn open(
        netlink: &Netlink,
        interface: &str,
        virtual_ips: &[(Ipv4Addr, u8)],
    ) -> Result<AddressHolder, VrrpError> {
        let link = netlink
            .link(interface)
            .await?
            .ok_or_else(|| VrrpError::NoInterface(interface.to_string()))?;
        let ips: Vec<Ipv4Addr> = virtual_ips.iter().map(|(ip, _)| *ip).collect();
        for (ip, _, _) in netlink
            .addresses(link.index)
            .await?
            .iter()
            .filter(|(ip, _, _)| ips.contains(ip))
        {
            warn!(target: "tandem::vrrp", interface, address = %ip, "removing a virtual address left from an earlier run");
            netlink.remove_address(link.index, *ip).await?;
        }
        Ok(AddressHolder {
            interface: interface.to_string(),
            index: link.index,
            arp: ArpSender::open(link.index)?,
            virtual_ips: virtual_ips.to_vec(),
            frames: ips.iter().map(|ip| arp::frame(link.mac, *ip)).collect(),
        })
    }
}

impl Runner {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let actions = self.machine.handle(self.now(), Input::Startup);
        self.carry_out(actions).await;
        let mut buf = vec![0u8; 2048];
        let mut link_poll = tokio::time::interval(LINK_POLL);
        link_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.machine.next_deadline().map(|d| self.origin + d);
            let mut packet = None;
            let input = tokio::select! {
                received = self.socket.recv(&mut buf) => match received {
                    Ok(n) => {
                        packet = self.receive(&buf[..n]);
                        None
                    }
                    Err(e) => {
                        warn!(target: "tandem::vrrp", error = %e, "receiving VRRP packets");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        None
                    }
                },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => Some(Input::Tick),
                command = commands.recv() => match command {
                    Some(Command::Demote(demotions)) => {
                        let p = effective_priority(self.settings.priority, &demotions);
                        let changed = p != self.machine.priority();
                        {
                            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                            s.demotions = demotions.clone();
                            s.effective_priority = p;
                        }
                        if changed {
                            info!(target: "tandem::vrrp", priority = p, demotions = ?demotions, "VRRP priority changed");
                        }
                        changed.then_some(Input::Priority(p))
                    }
                    Some(Command::HoldPreempt(hold)) => Some(Input::HoldPreempt(hold)),
                    Some(Command::PeerExited) => {
                        debug!(target: "tandem::vrrp", now_ms = self.now().as_millis() as u64, master_down_ms = ?self.machine.next_deadline().map(|d| d.as_millis()), "peer exited");
                        Some(Input::PeerExited)
                    }
                    Some(Command::Shutdown(done)) => {
                        let actions = self.machine.handle(self.now(), Input::Shutdown);
                        self.carry_out(actions).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        let actions = self.machine.handle(self.now(), Input::Shutdown);
                        self.carry_out(actions).await;
                        return;
                    }
                },
                _ = link_poll.tick() => self.poll_link().await,
            };
            if let Some(rx) = packet {
                let input = Input::Advert {
                    from: rx.source,
                    advert: &rx.advertisement,
                };
                let actions = self.machine.handle(self.now(), input);
                self.carry_out(actions).await;
            }
            if input == Some(Input::Tick) {
                self.drain_queued(&mut buf).await;
            }
            if let Some(input) = input {
                let actions = self.machine.handle(self.now(), input);
                self.carry_out(actions).await;
            }
        }
    }

    /// Feeds the machine the advertisements waiting in the socket: a timer that fires
    /// late (the process was not scheduled for a while) must not beat advertisements
    /// that arrived in time, or a backup would take over from a live master.
    async fn drain_queued(&mut self, buf: &mut [u8]) {
        for _ in 0..64 {
            let Ok(Some(n)) = self.socket.try_recv(buf) else {
                return;
            };
            if let Some(rx) = self.receive(&buf[..n]) {
                let input = Input::Advert {
                    from: rx.source,
                    advert: &rx.advertisement,
                };
                let actions = self.machine.handle(self.now(), input);
                self.carry_out(actions).await;
            }
        }
    }

    /// Checks a packet as RFC 5798 section 7.1 asks; returns it when kept.
    fn receive(&mut self, packet: &[u8]) -> Option<Received> {
        let result = decode_ipv4(packet, self.settings.pseudo_header).and_then(|rx| {
            if rx.source == self.primary {
                Err(DropReason::Own)
            } else if rx.advertisement.vrid != self.settings.vrid {
                // Another instance of this node hears those: not a stranger's packet.
                if self.settings.sibling_vrids.contains(&rx.advertisement.vrid) {
                    Ok(None)
                } else {
                    Err(DropReason::Vrid)
                }
            } else if !self.settings.unicast_peers.is_empty()
                && !self.settings.unicast_peers.contains(&rx.source)
            {
                Err(DropReason::UnknownPeer)
            } else {
                Ok(Some(rx))
            }
        });
        match result {
            Ok(None) => None,
            Ok(Some(rx)) => {
                let ours = &self.machine.settings().addresses;
                if rx.advertisement.priority != 0 && &rx.advertisement.addresses != ours {
                    debug!(target: "tandem::vrrp", from = %rx.source, theirs = ?rx.advertisement.addresses, ours = ?ours,
                        "advertisement lists other virtual addresses (misconfiguration?)");
                }
                Some(rx)
            }
            Err(reason) => {
                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                *s.dropped.entry(reason).or_default() += 1;
                if matches!(
                    reason,
                    DropReason::Checksum | DropReason::Ttl | DropReason::Version
                ) {
                    debug!(target: "tandem::vrrp", %reason, "VRRP packet dropped");
                }
                None
            }
        }
    }

    async fn poll_link(&mut self) -> Option<Input<'static>> {
        // The router is only as good as its worst interface: a master that lost the
        // backends' network must hand over too.
        let mut down = None;
        for h in self.holders.iter() {
            match self.netlink.link(&h.interface).await {
                Ok(Some(l)) if l.running => {}
                Ok(_) => {
                    down = Some(h.interface.clone());
                    break;
                }
                Err(e) => {
                    debug!(target: "tandem::vrrp", error = %e, "reading the interface state");
                    return None;
                }
            }
        }
        if let Some(name) = down.as_ref().filter(|_| !self.interface_down) {
            self.interface_down = true;
            warn!(target: "tandem::vrrp", interface = %name, "interface down: giving up VRRP");
            return Some(Input::InterfaceDown);
        }
        if down.is_none() && self.interface_down {
            self.interface_down = false;
            info!(target: "tandem::vrrp", interface = %self.settings.interface, "interfaces up again: VRRP restarting");
            return Some(Input::Startup);
        }
        None
    }

    async fn carry_out(&mut self, actions: Vec<Action>) {
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.master = self.machine.master();
            s.effective_priority = self.machine.priority();
        }
        for action in actions {
            match action {
                Action::Send { priority } => self.send(priority),
                Action::TakeAddresses => self.take_addresses().await,
                Action::Announce => self.announce(),
                Action::ReleaseAddresses => {
                    for h in self.holders.iter() {
                        for (ip, _) in &h.virtual_ips {
                            if let Err(e) = self.netlink.remove_address(h.index, *ip).await {
                                warn!(target: "tandem::vrrp", error = %e, "removing a virtual address");
                            }
                        }
                    }
                }
                Action::Transition { from, to, reason } => self.transition(from, to, reason),
            }
        }
    }

    fn send(&self, priority: u8) {
        let advert = self.machine.advertisement(priority);
        let destinations: Vec<Ipv4Addr> = if self.settings.unicast_peers.is_empty() {
            vec![MULTICAST_V4]
        } else {
            self.settings.unicast_peers.clone()
        };
        for to in destinations {
            let bytes = advert.encode(self.primary, to, self.settings.pseudo_header);
            if let Err(e) = self.socket.send(&bytes, to) {
                debug!(target: "tandem::vrrp", error = %e, to = %to, "sending an advertisement");
            }
        }
    }

    async fn take_addresses(&self) {
        if let Some(takeover) = &self.takeover {
            let started = Instant::now();
            let (done, wait) = oneshot::channel();
            if takeover.send(done).await.is_ok()
                && tokio::time::timeout(TAKEOVER_WAIT, wait).await.is_err()
            {
                warn!(target: "tandem::vrrp", "the takeover hook took longer than {TAKEOVER_WAIT:?}: taking the addresses anyway");
            }
            debug!(target: "tandem::vrrp", elapsed_ms = started.elapsed().as_millis() as u64, "takeover hook done");
        }
        for h in self.holders.iter() {
            for (ip, prefix) in &h.virtual_ips {
                if let Err(e) = self.netlink.add_address(h.index, *ip, *prefix).await {
                    warn!(target: "tandem::vrrp", error = %e, "adding a virtual address");
                }
            }
        }
    }

    /// Sends the gratuitous ARPs now (frames built at start: no allocation, no await,
    /// so they leave right after the advertisement before them), then a few more
    /// times in case a frame is lost, for as long as this node stays master.
    fn announce(&self) {
        for h in self.holders.iter() {
            h.announce();
        }
        let holders = self.holders.clone();
        let mut states = self.states.subscribe();
        tokio::spawn(async move {
            let start = Instant::now();
            for at in GARP_SCHEDULE_MS.into_iter().skip(1) {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                if *states.borrow_and_update() != State::Master {
                    return;
                }
                for h in holders.iter() {
                    h.announce();
                }
            }
        });
    }

    fn transition(&self, from: State, to: State, reason: String) {
        info!(target: "tandem::vrrp", from = from.name(), to = to.name(), "VRRP {} -> {} ({} vrid {}): {reason}", from.name(), to.name(), self.settings.interface, self.settings.vrid);
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.state = to;
            s.master = self.machine.master();
            s.transitions = self.machine.transitions();
        }
        let _ = self.states.send(to);
        if let Some(program) = &self.settings.notify {
            let mut command = tokio::process::Command::new(program);
            command
                .arg(to.name())
                .env("TANDEM_VRRP_STATE", to.name())
                .env("TANDEM_VRRP_PREVIOUS", from.name())
                .env("TANDEM_VRRP_REASON", &reason)
                .env("TANDEM_VRRP_VRID", self.settings.vrid.to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let program = program.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(30), command.status()).await {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => {
                        warn!(target: "tandem::vrrp", program = %program.display(), %status, "notify program failed")
                    }
                    Ok(Err(e)) => {
                        warn!(target: "tandem::vrrp", program = %program.display(), error = %e, "cannot run the notify program")
                    }
                    Err(_) => {
                        warn!(target: "tandem::vrrp", program = %program.display(), "notify program still running after 30s: killed")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demotions_lower_the_priority_but_never_below_one() {
        assert_eq!(effective_priority(150, &[]), 150);
        assert_eq!(
            effective_priority(150, &[("pool web down".into(), 50)]),
            100
        );
        assert_eq!(
            effective_priority(100, &[("a".into(), 60), ("b".into(), 60)]),
            1
        );
        assert_eq!(
            effective_priority(255, &[("a".into(), 10)]),
            244,
            "a demoted owner is no owner"
        );
    }
}
