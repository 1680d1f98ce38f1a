//! The IO around the state machine on Linux: one task per virtual router that reads
//! packets, fires timers, follows the interface, and carries out the machine's actions.

pub mod arp;
pub mod nd;
pub mod netlink;
pub mod socket;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::machine::{Action, Input, Instance, Settings, State};
use crate::packet::{
    Centis, DropReason, MULTICAST_V4, MULTICAST_V6, Received, decode_ipv4, decode_ipv6,
};
use arp::ArpSender;
use netlink::Netlink;
use socket::{Datagram, VrrpSocket};

/// How often the interface's state is read.
const LINK_POLL: Duration = Duration::from_millis(200);
/// When gratuitous ARPs go out after the first advertisement as master (ms after it).
const GARP_SCHEDULE_MS: [u64; 5] = [0, 100, 300, 1000, 2000];

/// What a virtual router needs: the daemon builds it from its `[ha]` section. A router
/// is IPv4 or IPv6 (RFC 5798 runs one per family): every address here is of the
/// family of the first virtual address; for IPv6 that one is link-local.
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
    /// Virtual addresses with prefix length.
    pub virtual_ips: Vec<(IpAddr, u8)>,
    /// Unicast peers; empty = multicast.
    pub unicast_peers: Vec<IpAddr>,
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
    /// Virtual addresses with prefix length.
    pub virtual_ips: Vec<(IpAddr, u8)>,
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
    /// The interface has no usable IPv6 link-local address to send from.
    #[error(
        "interface {0} has no IPv6 link-local address of its own to send VRRP from (the virtual addresses do not count; a tentative one is not usable before duplicate address detection ends)"
    )]
    NoLinkLocal(String),
    /// The settings mix IPv4 and IPv6 (or list no virtual address).
    #[error("{0}: a VRRP router is IPv4 or IPv6, not both (its first virtual address says which)")]
    MixedFamilies(String),
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
    pub master: Option<IpAddr>,
    /// State changes.
    pub transitions: u64,
    /// Dropped packets by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Virtual addresses.
    pub virtual_ips: Vec<(IpAddr, u8)>,
}

enum Command {
    Demote(Vec<(String, u8)>),
    HoldPreempt(bool),
    PeerExited,
    Shutdown(oneshot::Sender<()>),
    Maintenance(bool),
    Quiet(oneshot::Sender<()>),
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
        Vrrp::open(settings, takeover, None).await
    }

    /// As [`Vrrp::start_with_takeover`], in the state `state` of the process this one
    /// replaces (an upgrade in place, see [`Input::Resume`]): virtual addresses on the
    /// interface are kept, and a master advertises at once.
    pub async fn resume_with_takeover(
        settings: HaSettings,
        takeover: Option<mpsc::Sender<Takeover>>,
        state: State,
    ) -> Result<Vrrp, VrrpError> {
        Vrrp::open(settings, takeover, Some(state)).await
    }

    async fn open(
        settings: HaSettings,
        takeover: Option<mpsc::Sender<Takeover>>,
        resume: Option<State>,
    ) -> Result<Vrrp, VrrpError> {
        // A master resumed keeps the addresses it finds: they are its predecessor's.
        let keep = resume == Some(State::Master);
        let netlink = Netlink::open()?;
        let link = netlink
            .link(&settings.interface)
            .await?
            .ok_or_else(|| VrrpError::NoInterface(settings.interface.clone()))?;
        let ipv6 = family_of(&settings)?;
        let vips: Vec<IpAddr> = settings.virtual_ips.iter().map(|(ip, _)| *ip).collect();
        let mut addresses = netlink.addresses(link.index).await?;
        // A link-local address still in duplicate address detection (an interface just
        // up, at boot) is usable within a second or two: wait for it rather than fail.
        for _ in 0..30 {
            if !ipv6 || !matches!(own_link_local(&addresses, &vips), (None, true)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            addresses = netlink.addresses(link.index).await?;
        }
        let primary = if ipv6 {
            // RFC 5798 section 5.1.2.1: from the interface's link-local address.
            own_link_local(&addresses, &vips)
                .0
                .ok_or_else(|| VrrpError::NoLinkLocal(settings.interface.clone()))?
        } else {
            let own: Vec<_> = addresses
                .iter()
                .filter(|(ip, _, _)| ip.is_ipv4() && !vips.contains(ip))
                .collect();
            own.iter()
                .find(|(_, _, secondary)| !secondary)
                .or_else(|| own.first())
                .map(|(ip, _, _)| *ip)
                .ok_or_else(|| VrrpError::NoAddress(settings.interface.clone()))?
        };
        // The main interface first, then the group's.
        let mut holders = vec![
            AddressHolder::open(&netlink, &settings.interface, &settings.virtual_ips, keep).await?,
        ];
        for g in &settings.group {
            holders.push(AddressHolder::open(&netlink, &g.interface, &g.virtual_ips, keep).await?);
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
            drop_log: DropLog::default(),
            tracked: Vec::new(),
            maintenance: false,
            resume,
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

    /// Maintenance (`tandem ctl ha demote`) or not (`ha restore`): on, the priority
    /// drops to 1 and a master hands over (priority 0 advertisement, as at shutdown),
    /// so the peer takes over while this node keeps running; off, the priority is the
    /// configured one less the tracked demotions again (with preemption, this node
    /// takes master back).
    pub async fn set_maintenance(&self, on: bool) {
        let _ = self.commands.send(Command::Maintenance(on)).await;
    }

    /// Stops without a word: no priority 0, the addresses stay where they are. For the
    /// process an upgrade replaced, once its successor resumed its state. Returns once
    /// done.
    pub async fn quiet(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Quiet(tx)).await.is_ok() {
            let _ = rx.await;
        }
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

/// Whether the router is IPv6; an error names the first address of the other family.
fn family_of(settings: &HaSettings) -> Result<bool, VrrpError> {
    let Some((first, _)) = settings.virtual_ips.first() else {
        return Err(VrrpError::MixedFamilies("no virtual address".into()));
    };
    let ipv6 = first.is_ipv6();
    let other = settings
        .virtual_ips
        .iter()
        .chain(settings.group.iter().flat_map(|g| g.virtual_ips.iter()))
        .map(|(ip, _)| ip)
        .chain(settings.unicast_peers.iter())
        .find(|ip| ip.is_ipv6() != ipv6);
    match other {
        Some(ip) => Err(VrrpError::MixedFamilies(ip.to_string())),
        None => Ok(ipv6),
    }
}

/// The checks of a decoded packet that need the router's settings: not our own, our
/// VRID, and with unicast peers, from one of them (whatever its priority).
fn check_sender(
    rx: Received,
    primary: IpAddr,
    vrid: u8,
    unicast_peers: &[IpAddr],
) -> Result<Received, DropReason> {
    if rx.source == primary {
        Err(DropReason::Own)
    } else if rx.advertisement.vrid != vrid {
        Err(DropReason::Vrid)
    } else if !unicast_peers.is_empty() && !unicast_peers.contains(&rx.source) {
        Err(DropReason::UnknownPeer)
    } else {
        Ok(rx)
    }
}

/// The interface's own usable link-local address among `addresses` (not a virtual
/// one), and whether one is still tentative.
fn own_link_local(addresses: &[(IpAddr, u8, bool)], vips: &[IpAddr]) -> (Option<IpAddr>, bool) {
    let own = || {
        addresses
            .iter()
            .filter(|(ip, _, _)| is_link_local(*ip) && !vips.contains(ip))
    };
    let usable = own()
        .find(|(_, _, unusable)| !unusable)
        .map(|(ip, _, _)| *ip);
    (usable, own().any(|(_, _, unusable)| *unusable))
}

/// fe80::/10.
fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The effective priority: the configured one less the demotions, at least 1.
pub fn effective_priority(priority: u8, demotions: &[(String, u8)]) -> u8 {
    let total: u32 = demotions.iter().map(|(_, d)| u32::from(*d)).sum();
    if total == 0 {
        return priority;
    }
    (i64::from(priority.min(254)) - i64::from(total)).clamp(1, 254) as u8
}

/// At most one log line per drop reason every [`DropLog::EVERY`]: a flood of forged
/// packets must not flood the log. Counted in full in the status all the same.
#[derive(Debug, Default)]
struct DropLog {
    /// Per reason: when its last line went out, and drops since then.
    last: BTreeMap<DropReason, (Duration, u64)>,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts a drop at `now`; `Some(drops since the last line, this one included)` when
    /// a line is due.
    fn due(&mut self, reason: DropReason, now: Duration) -> Option<u64> {
        match self.last.get_mut(&reason) {
            Some((at, since)) if now < *at + Self::EVERY => {
                *since += 1;
                None
            }
            Some((at, since)) => {
                let n = *since + 1;
                (*at, *since) = (now, 0);
                Some(n)
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(1)
            }
        }
    }
}

struct Runner {
    settings: HaSettings,
    netlink: Netlink,
    primary: IpAddr,
    socket: VrrpSocket,
    /// Where the virtual addresses go: the main interface, then the group's.
    holders: Arc<Vec<AddressHolder>>,
    machine: Instance,
    status: Arc<Mutex<Status>>,
    states: watch::Sender<State>,
    origin: Instant,
    interface_down: bool,
    takeover: Option<mpsc::Sender<Takeover>>,
    /// Rate limit of the log lines of dropped packets.
    drop_log: DropLog,
    /// The tracked pools' demotions, as last set.
    tracked: Vec<(String, u8)>,
    /// In maintenance (`tandem ctl ha demote`): priority 1.
    maintenance: bool,
    /// The state of the process this one replaces, to start in.
    resume: Option<State>,
}

/// Why the priority is 1 in maintenance, as the status lists it.
const MAINTENANCE: &str = "maintenance (tandem ctl ha demote)";

/// An interface that holds virtual addresses while this router is master.
struct AddressHolder {
    interface: String,
    index: u32,
    arp: ArpSender,
    virtual_ips: Vec<(IpAddr, u8)>,
    /// The gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) of each
    /// virtual address, built once.
    frames: Vec<Vec<u8>>,
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
    /// an earlier run that died (unless `keep`: the addresses of the master this process
    /// replaces).
    async fn open(
        netlink: &Netlink,
        interface: &str,
        virtual_ips: &[(IpAddr, u8)],
        keep: bool,
    ) -> Result<AddressHolder, VrrpError> {
        let link = netlink
            .link(interface)
            .await?
            .ok_or_else(|| VrrpError::NoInterface(interface.to_string()))?;
        let ips: Vec<IpAddr> = virtual_ips.iter().map(|(ip, _)| *ip).collect();
        for (ip, _, _) in netlink
            .addresses(link.index)
            .await?
            .iter()
            .filter(|(ip, _, _)| !keep && ips.contains(ip))
        {
            warn!(target: "tandem::vrrp", interface, address = %ip, "removing a virtual address left from an earlier run");
            netlink.remove_address(link.index, *ip).await?;
        }
        let arp = if ips.iter().any(IpAddr::is_ipv6) {
            ArpSender::open_for(link.index, nd::ETH_P_IPV6)?
        } else {
            ArpSender::open(link.index)?
        };
        Ok(AddressHolder {
            interface: interface.to_string(),
            index: link.index,
            arp,
            virtual_ips: virtual_ips.to_vec(),
            frames: ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(ip) => arp::frame(link.mac, *ip).to_vec(),
                    IpAddr::V6(ip) => nd::frame(link.mac, *ip).to_vec(),
                })
                .collect(),
        })
    }
}

impl Runner {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let first = match self.resume {
            Some(state) => Input::Resume(state),
            None => Input::Startup,
        };
        let actions = self.machine.handle(self.now(), first);
        self.carry_out(actions).await;
        let mut buf = vec![0u8; 2048];
        let mut link_poll = tokio::time::interval(LINK_POLL);
        link_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.machine.next_deadline().map(|d| self.origin + d);
            let mut packet = None;
            let input = tokio::select! {
                received = self.socket.recv(&mut buf) => match received {
                    Ok(d) => {
                        packet = self.receive(&buf, d);
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
                        self.tracked = demotions;
                        self.reprioritize()
                    }
                    Some(Command::Maintenance(on)) => {
                        let was = std::mem::replace(&mut self.maintenance, on);
                        let input = self.reprioritize();
                        if on && !was {
                            info!(target: "tandem::vrrp", "maintenance: priority 1, handing master over");
                            if let Some(input) = input {
                                let actions = self.machine.handle(self.now(), input);
                                self.carry_out(actions).await;
                            }
                            Some(Input::Resign)
                        } else {
                            if was && !on {
                                info!(target: "tandem::vrrp", "maintenance over: priority {} again", self.machine_priority_wanted());
                            }
                            input
                        }
                    }
                    Some(Command::HoldPreempt(hold)) => Some(Input::HoldPreempt(hold)),
                    Some(Command::PeerExited) => {
                        debug!(target: "tandem::vrrp", now_ms = self.now().as_millis() as u64, master_down_ms = ?self.machine.next_deadline().map(|d| d.as_millis()), "peer exited");
                        Some(Input::PeerExited)
                    }
                    Some(Command::Quiet(done)) => {
                        info!(target: "tandem::vrrp", "VRRP handed over: no longer advertising, addresses left to the new process");
                        let _ = done.send(());
                        return;
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

    /// The priority wanted now: 1 in maintenance, else the configured one less the
    /// tracked demotions.
    fn machine_priority_wanted(&self) -> u8 {
        if self.maintenance {
            1
        } else {
            effective_priority(self.settings.priority, &self.tracked)
        }
    }

    /// Shows the demotions and the priority wanted; the machine's input when it changed.
    fn reprioritize(&mut self) -> Option<Input<'static>> {
        let p = self.machine_priority_wanted();
        let changed = p != self.machine.priority();
        let mut demotions = self.tracked.clone();
        if self.maintenance {
            let configured = effective_priority(self.settings.priority, &self.tracked);
            demotions.push((MAINTENANCE.into(), configured.saturating_sub(1)));
        }
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

    /// Feeds the machine the advertisements waiting in the socket: a timer that fires
    /// late (the process was not scheduled for a while) must not beat advertisements
    /// that arrived in time, or a backup would take over from a live master.
    async fn drain_queued(&mut self, buf: &mut [u8]) {
        for _ in 0..64 {
            let Ok(Some(d)) = self.socket.try_recv(buf) else {
                return;
            };
            if let Some(rx) = self.receive(buf, d) {
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
    fn receive(&mut self, buf: &[u8], d: Datagram) -> Option<Received> {
        let packet = &buf[..d.len.min(buf.len())];
        let decoded = match d.meta {
            None => decode_ipv4(packet, self.settings.pseudo_header),
            Some(m) => decode_ipv6(packet, m.source, m.destination, m.hop_limit),
        };
        let result = decoded.and_then(|rx| {
            // Another instance of this node hears those: not a stranger's packet.
            if rx.advertisement.vrid != self.settings.vrid
                && self.settings.sibling_vrids.contains(&rx.advertisement.vrid)
            {
                return Ok(None);
            }
            check_sender(
                rx,
                self.primary,
                self.settings.vrid,
                &self.settings.unicast_peers,
            )
            .map(Some)
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
                let total = {
                    let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    let n = s.dropped.entry(reason).or_default();
                    *n += 1;
                    *n
                };
                let from = match d.meta {
                    Some(m) => IpAddr::V6(m.source),
                    None if packet.len() >= 16 => {
                        IpAddr::from([packet[12], packet[13], packet[14], packet[15]])
                    }
                    None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                if let Some(since) = self.drop_log.due(reason, self.now()) {
                    // Other routers' VRIDs and our own looped packets are normal on a
                    // shared segment; the rest is misconfiguration or an attack.
                    if matches!(reason, DropReason::Vrid | DropReason::Own) {
                        debug!(target: "tandem::vrrp", %reason, %from, total, "VRRP packet dropped");
                    } else {
                        warn!(target: "tandem::vrrp", %reason, %from, total, dropped_since_last_line = since,
                            "VRRP packet dropped: {reason} (one line per reason every {}s at most)", DropLog::EVERY.as_secs());
                    }
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
        let destinations: Vec<IpAddr> = if !self.settings.unicast_peers.is_empty() {
            self.settings.unicast_peers.clone()
        } else if self.primary.is_ipv6() {
            vec![MULTICAST_V6.into()]
        } else {
            vec![MULTICAST_V4.into()]
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
    fn dropped_packets_are_logged_once_per_reason_and_interval() {
        let mut log = DropLog::default();
        let s = Duration::from_secs;
        assert_eq!(log.due(DropReason::Ttl, s(0)), Some(1));
        assert_eq!(
            log.due(DropReason::Checksum, s(1)),
            Some(1),
            "each reason its own"
        );
        for t in 1..10 {
            assert_eq!(log.due(DropReason::Ttl, s(t)), None);
        }
        // The next line tells how many went unlogged in between.
        assert_eq!(log.due(DropReason::Ttl, s(10)), Some(10));
        assert_eq!(log.due(DropReason::Ttl, s(11)), None);
        assert_eq!(log.due(DropReason::Ttl, s(25)), Some(2));
    }

    fn ha(virtual_ips: &[&str], peers: &[&str]) -> HaSettings {
        HaSettings {
            interface: "eth0".into(),
            vrid: 1,
            priority: 100,
            interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            virtual_ips: virtual_ips
                .iter()
                .map(|ip| (ip.parse().unwrap(), 64))
                .collect(),
            unicast_peers: peers.iter().map(|ip| ip.parse().unwrap()).collect(),
            notify: None,
            pseudo_header: true,
            group: Vec::new(),
            garp_refresh: None,
            sibling_vrids: Vec::new(),
        }
    }

    #[test]
    fn a_router_is_of_one_family() {
        assert!(!family_of(&ha(&["192.0.2.10"], &["192.0.2.2"])).unwrap());
        assert!(family_of(&ha(&["fe80::10", "2001:db8::10"], &["fe80::2"])).unwrap());
        let e = family_of(&ha(&["fe80::10", "192.0.2.10"], &[])).unwrap_err();
        assert!(e.to_string().starts_with("192.0.2.10: "), "{e}");
        assert!(family_of(&ha(&["192.0.2.10"], &["fe80::2"])).is_err());
        let mut group = ha(&["192.0.2.10"], &[]);
        group.group.push(GroupSettings {
            interface: "eth1".into(),
            virtual_ips: vec![("2001:db8::1".parse().unwrap(), 64)],
        });
        assert!(family_of(&group).is_err());
        assert!(family_of(&ha(&[], &[])).is_err());
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
        assert!(!is_link_local("192.0.2.1".parse().unwrap()));
        let a = |ip: &str, unusable| (ip.parse::<IpAddr>().unwrap(), 64, unusable);
        let vips = ["fe80::10".parse().unwrap()];
        let ll = "fe80::1".parse().ok();
        // The virtual link-local address and global ones are not the router's own.
        let addresses = [
            a("fe80::10", false),
            a("2001:db8::1", false),
            a("fe80::1", true),
        ];
        assert_eq!(own_link_local(&addresses, &vips), (None, true));
        let addresses = [
            a("fe80::10", false),
            a("fe80::2", true),
            a("fe80::1", false),
        ];
        assert_eq!(own_link_local(&addresses, &vips), (ll, true));
        assert_eq!(own_link_local(&addresses[..1], &vips), (None, false));
    }

    #[test]
    fn own_packets_other_vrids_and_unknown_peers_are_dropped() {
        let rx = |from: &str, vrid: u8| Received {
            source: from.parse().unwrap(),
            destination: crate::packet::MULTICAST_V6.into(),
            advertisement: crate::packet::Advertisement {
                vrid,
                priority: 255,
                interval: Centis::new(10).unwrap(),
                addresses: vec!["fe80::10".parse().unwrap()],
            },
        };
        let me: IpAddr = "fe80::1".parse().unwrap();
        let peers = ["fe80::2".parse().unwrap()];
        let check = |from, vrid, peers: &[IpAddr]| {
            check_sender(rx(from, vrid), me, 51, peers).map(|r| r.source)
        };
        assert_eq!(check("fe80::1", 51, &[]), Err(DropReason::Own));
        assert_eq!(check("fe80::2", 52, &peers), Err(DropReason::Vrid));
        assert_eq!(check("fe80::66", 51, &peers), Err(DropReason::UnknownPeer));
        assert_eq!(check("fe80::2", 51, &peers), Ok(peers[0]));
        assert_eq!(
            check("fe80::66", 51, &[]),
            Ok("fe80::66".parse().unwrap()),
            "multicast: anyone"
        );
    }

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
