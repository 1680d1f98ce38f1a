//! The VRRPv3 state machine of RFC 5798 section 6.4, without IO.
//!
//! [`Instance::handle`] takes the time (`now`, a monotonic [`Duration`] from any
//! origin) and one [`Input`], and returns the [`Action`]s to carry out. Timers are
//! deadlines; [`Instance::next_deadline`] says when to feed [`Input::Tick`] next.

use std::net::IpAddr;
use std::time::Duration;

use crate::packet::{Advertisement, Centis};

/// Settings of one virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Virtual router id.
    pub vrid: u8,
    /// Configured priority (255 = address owner).
    pub priority: u8,
    /// Our advertisement interval.
    pub interval: Centis,
    /// Take over from a lower-priority master.
    pub preempt: bool,
    /// After start, wait this long before preempting.
    pub preempt_delay: Duration,
    /// Our primary address on the interface (breaks priority ties): IPv4, or the
    /// interface's IPv6 link-local address.
    pub primary: IpAddr,
    /// The virtual addresses, all of `primary`'s family.
    pub addresses: Vec<IpAddr>,
    /// While master, announce the addresses again this often (none: only on
    /// takeover and when a lower-priority master is heard).
    pub announce_every: Option<Duration>,
}

/// The three states of RFC 5798.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for startup (or the interface).
    Initialize,
    /// Listening to a master.
    Backup,
    /// Holding the addresses and advertising.
    Master,
}

impl State {
    /// The name used in logs, notify arguments and status.
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
        }
    }
}

/// What happens to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// The router starts (or its interface came up).
    Startup,
    /// The router stops gracefully.
    Shutdown,
    /// A timer may have fired: checks every deadline against `now`.
    Tick,
    /// An advertisement for our VRID arrived from `from`.
    Advert {
        /// Sender's IP address.
        from: IpAddr,
        /// The advertisement.
        advert: &'a Advertisement,
    },
    /// The effective priority changed (tracking demotions).
    Priority(u8),
    /// Preemption is held back (e.g. while the sticky table syncs) or allowed again.
    HoldPreempt(bool),
    /// The interface went down: nothing can be sent or held.
    InterfaceDown,
    /// The peer's process closed its connections (its sync session ended: it exited
    /// or was killed). When that peer is the master, its next advertisement is due
    /// within one interval: a backup waits for that one only (plus half an interval and
    /// its skew time) instead of three.
    PeerExited,
    /// Hand master over (maintenance): a master advertises priority 0, as RFC 5798's
    /// shutdown does, and becomes backup, so the backup takes over after its skew time;
    /// in another state, nothing happens. The caller lowers the priority first, so that
    /// this router does not preempt back.
    Resign,
    /// The router starts in the state its predecessor (the process it replaces in an
    /// upgrade) was in: as master it advertises at once and keeps the addresses it
    /// finds held (no takeover, no gratuitous ARP: nothing moved); as backup it
    /// listens as after [`Input::Startup`]. The peers see no change.
    Resume(State),
}

/// What the IO layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (our interval and addresses).
    Send {
        /// Priority to advertise (0 when leaving).
        priority: u8,
    },
    /// Add the virtual addresses (before the advertisement that follows: on that
    /// advertisement the old master lets them go, so this node must hold them already).
    TakeAddresses,
    /// Announce the virtual addresses (gratuitous ARP), right after the advertisement
    /// that follows [`Action::TakeAddresses`]: with nothing slow between the two, the
    /// gap in which clients still send to the old master, which no longer holds the
    /// addresses, stays as short as two system calls. A master also announces every
    /// [`Settings::announce_every`], and at once when it hears a lower-priority
    /// master (a healed split brain: neighbours may have learnt the other's address).
    Announce,
    /// Remove the virtual addresses.
    ReleaseAddresses,
    /// The state changed.
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why, for the log.
        reason: String,
    },
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Instance {
    settings: Settings,
    state: State,
    priority: u8,
    master_interval: Centis,
    master_down_at: Option<Duration>,
    advert_at: Option<Duration>,
    announce_at: Option<Duration>,
    started_at: Duration,
    hold_preempt: bool,
    master: Option<IpAddr>,
    master_left: bool,
    peer_exited: bool,
    transitions: u64,
}

impl Instance {
    /// A router in Initialize.
    pub fn new(settings: Settings) -> Instance {
        Instance {
            priority: settings.priority,
            master_interval: settings.interval,
            state: State::Initialize,
            master_down_at: None,
            advert_at: None,
            announce_at: None,
            started_at: Duration::ZERO,
            hold_preempt: false,
            master: None,
            master_left: false,
            peer_exited: false,
            transitions: 0,
            settings,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The master as last heard (ourselves when master).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The interval the master advertises (ours when master).
    pub fn master_interval(&self) -> Centis {
        self.master_interval
    }

    /// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256.
    pub fn skew_time(&self) -> Duration {
        let cs = (256 - u32::from(self.priority)) * u32::from(self.master_interval.get()) / 256;
        Duration::from_millis(u64::from(cs) * 10)
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_interval.to_duration() * 3 + self.skew_time()
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.master_down_at, self.advert_at, self.announce_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The advertisement this router sends with `priority`.
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.settings.vrid,
            priority,
            interval: self.settings.interval,
            addresses: self.settings.addresses.clone(),
        }
    }

    fn go(&mut self, to: State, reason: String, actions: &mut Vec<Action>) {
        if self.state == to {
            return;
        }
        actions.push(Action::Transition {
            from: self.state,
            to,
            reason,
        });
        self.state = to;
        self.transitions += 1;
    }

    /// Hold the addresses, advertise, announce: in this order, one step.
    fn become_master(&mut self, now: Duration, reason: String, actions: &mut Vec<Action>) {
        self.master_as(now, reason, true, actions);
    }

    /// Master from `now`: advertise at once; with `take`, first hold the addresses and
    /// then announce them (a takeover); without, they are held already and nothing
    /// moved (an upgrade's successor).
    fn master_as(&mut self, now: Duration, reason: String, take: bool, actions: &mut Vec<Action>) {
        if take {
            actions.push(Action::TakeAddresses);
        }
        actions.push(Action::Send {
            priority: self.priority,
        });
        if take {
            actions.push(Action::Announce);
        }
        self.master_down_at = None;
        self.advert_at = Some(now + self.settings.interval.to_duration());
        self.announce_at = self.settings.announce_every.map(|every| now + every);
        self.master_interval = self.settings.interval;
        self.master = Some(self.settings.primary);
        self.go(State::Master, reason, actions);
    }

    /// Backup from start: waits a master-down interval for a master.
    fn start_backup(&mut self, now: Duration, reason: String, actions: &mut Vec<Action>) {
        self.master_interval = self.settings.interval;
        self.master_down_at = Some(now + self.master_down_interval());
        self.master = None;
        self.go(State::Backup, reason, actions);
    }

    fn become_backup(
        &mut self,
        now: Duration,
        master_interval: Centis,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let was_master = self.state == State::Master;
        self.advert_at = None;
        self.announce_at = None;
        self.master_interval = master_interval;
        self.master_down_at = Some(now + self.master_down_interval());
        if was_master {
            // One last advertisement at our priority: when the higher master's reached
            // us first (a healed split brain), this is how it learns that neighbours
            // may hold our MAC for the addresses, and it announces them again.
            actions.push(Action::Send {
                priority: self.priority,
            });
            actions.push(Action::ReleaseAddresses);
        }
        self.go(State::Backup, reason, actions);
    }

    /// Whether a lower-priority master may be preempted now.
    fn may_preempt(&self, now: Duration) -> bool {
        self.settings.preempt
            && !self.hold_preempt
            && now >= self.started_at + self.settings.preempt_delay
    }

    /// Feeds one input at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Duration, input: Input<'_>) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.state, input) {
            (State::Initialize, Input::Startup) => {
                self.started_at = now;
                if self.priority == 255 {
                    self.become_master(
                        now,
                        "address owner (priority 255) starting".into(),
                        &mut actions,
                    );
                } else {
                    self.start_backup(now, "starting".into(), &mut actions);
                }
            }
            (_, Input::Startup) => {}
            (State::Initialize, Input::Resume(State::Master)) => {
                self.started_at = now;
                self.master_as(
                    now,
                    "taken over from the previous process (upgrade)".into(),
                    false,
                    &mut actions,
                );
            }
            (State::Initialize, Input::Resume(_)) => {
                self.started_at = now;
                self.start_backup(
                    now,
                    "taken over from the previous process (upgrade)".into(),
                    &mut actions,
                );
            }
            (_, Input::Resume(_)) => {}
            (State::Master, Input::Shutdown) => {
                self.advert_at = None;
                self.announce_at = None;
                actions.push(Action::Send { priority: 0 });
                actions.push(Action::ReleaseAddresses);
                self.master = None;
                self.go(
                    State::Initialize,
                    "shutting down: priority 0 sent".into(),
                    &mut actions,
                );
            }
            (_, Input::Shutdown) => {
                self.master_down_at = None;
                self.go(State::Initialize, "shutting down".into(), &mut actions);
            }
            (State::Master, Input::InterfaceDown) => {
                self.advert_at = None;
                self.announce_at = None;
                actions.push(Action::ReleaseAddresses);
                self.master = None;
                self.go(State::Initialize, "interface down".into(), &mut actions);
            }
            (_, Input::InterfaceDown) => {
                self.master_down_at = None;
                self.go(State::Initialize, "interface down".into(), &mut actions);
            }
            (state, Input::Tick) => {
                if state == State::Backup && self.master_down_at.is_some_and(|t| now >= t) {
                    let waited = self.master_down_interval();
                    let reason = match self.master {
                        Some(m) if self.master_left => format!("master {m} left (priority 0)"),
                        Some(m) if self.peer_exited => format!(
                            "the peer's process exited and master {m} sent no advertisement after it"
                        ),
                        Some(m) => format!(
                            "no advertisement from master {m} for {}ms",
                            waited.as_millis()
                        ),
                        None => format!("no master heard for {}ms", waited.as_millis()),
                    };
                    self.master_left = false;
                    self.peer_exited = false;
                    self.become_master(now, reason, &mut actions);
                } else if state == State::Master {
                    if self.advert_at.is_some_and(|t| now >= t) {
                        actions.push(Action::Send {
                            priority: self.priority,
                        });
                        self.advert_at = Some(now + self.settings.interval.to_duration());
                    }
                    if let (Some(at), Some(every)) =
                        (self.announce_at, self.settings.announce_every)
                        && now >= at
                    {
                        actions.push(Action::Announce);
                        self.announce_at = Some(now + every);
                    }
                }
            }
            (State::Backup, Input::Advert { from, advert }) => {
                if advert.priority == 0 {
                    self.master_down_at = Some(now + self.skew_time());
                    self.master_left = true;
                } else if advert.priority >= self.priority || !self.may_preempt(now) {
                    self.master_left = false;
                    self.peer_exited = false;
                    self.master = Some(from);
                    self.master_interval = advert.interval;
                    self.master_down_at = Some(now + self.master_down_interval());
                }
                // Otherwise: a lower-priority master; ignoring it lets the master-down
                // timer run out, and this router preempts.
            }
            (State::Master, Input::Advert { from, advert }) => {
                if advert.priority == 0 {
                    actions.push(Action::Send {
                        priority: self.priority,
                    });
                    self.advert_at = Some(now + self.settings.interval.to_duration());
                } else if advert.priority > self.priority
                    || (advert.priority == self.priority && from > self.settings.primary)
                {
                    let reason = format!(
                        "advertisement from {from} with priority {} (ours {})",
                        advert.priority, self.priority
                    );
                    self.master = Some(from);
                    self.become_backup(now, advert.interval, reason, &mut actions);
                } else {
                    // Another master, below us: a split brain has healed (RFC 5798
                    // 6.4.3: we stay master). It yields on our next advertisement, sent
                    // now; the announcement points neighbours that learnt its MAC for
                    // the addresses back to us.
                    actions.push(Action::Send {
                        priority: self.priority,
                    });
                    actions.push(Action::Announce);
                    self.advert_at = Some(now + self.settings.interval.to_duration());
                }
            }
            (State::Initialize, Input::Advert { .. }) => {}
            (state, Input::Priority(p)) => {
                self.priority = p;
                if state == State::Master {
                    // Tell the backups at once, so a higher one can take over.
                    actions.push(Action::Send { priority: p });
                    self.advert_at = Some(now + self.settings.interval.to_duration());
                }
            }
            (_, Input::HoldPreempt(hold)) => self.hold_preempt = hold,
            (State::Backup, Input::PeerExited) => {
                if let (Some(down_at), Some(_), false) =
                    (self.master_down_at, self.master, self.master_left)
                {
                    let heard = down_at.saturating_sub(self.master_down_interval());
                    let interval = self.master_interval.to_duration();
                    let due = heard + interval + interval / 2 + self.skew_time();
                    let at = due.max(now);
                    if at < down_at {
                        self.master_down_at = Some(at);
                        self.peer_exited = true;
                    }
                }
            }
            (_, Input::PeerExited) => {}
            (State::Master, Input::Resign) => {
                actions.push(Action::Send { priority: 0 });
                self.master = None;
                let interval = self.settings.interval;
                self.become_backup(
                    now,
                    interval,
                    "handing over for maintenance: priority 0 sent".into(),
                    &mut actions,
                );
            }
            (_, Input::Resign) => {}
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings(priority: u8, primary: [u8; 4]) -> Settings {
        Settings {
            vrid: 51,
            priority,
            interval: Centis::new(100).unwrap(), // 1 s
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary: Ipv4Addr::from(primary).into(),
            addresses: vec![Ipv4Addr::new(192, 0, 2, 10).into()],
            announce_every: None,
        }
    }

    fn advert(priority: u8) -> Advertisement {
        Advertisement {
            vrid: 51,
            priority,
            interval: Centis::new(100).unwrap(),
            addresses: vec![Ipv4Addr::new(192, 0, 2, 10).into()],
        }
    }

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn transitions(actions: &[Action]) -> Vec<(State, State)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_backup_whose_peer_exited_waits_for_one_advertisement_not_three() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        // No master heard yet: nothing to shorten.
        i.handle(ms(100), Input::PeerExited);
        assert_eq!(i.next_deadline(), Some(ms(3600)));
        i.handle(
            ms(1000),
            Input::Advert {
                from: PEER,
                advert: &advert(200),
            },
        );
        assert_eq!(i.next_deadline(), Some(ms(4600)));
        // The peer's process is gone: its next advert was due at 2000; with half an
        // interval and the skew (600 ms) the backup takes over at 3100, not 4600.
        i.handle(ms(1200), Input::PeerExited);
        assert_eq!(i.next_deadline(), Some(ms(3100)));
        assert!(i.handle(ms(3099), Input::Tick).is_empty());
        let a = i.handle(ms(3100), Input::Tick);
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
        let reason = a.iter().find_map(|a| match a {
            Action::Transition { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.unwrap().contains("exited"));
    }

    #[test]
    fn a_master_still_advertising_after_its_sync_session_closed_stays_master() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(
            ms(1000),
            Input::Advert {
                from: PEER,
                advert: &advert(200),
            },
        );
        i.handle(ms(1200), Input::PeerExited);
        // Its next advertisement comes: the usual timer again.
        i.handle(
            ms(2000),
            Input::Advert {
                from: PEER,
                advert: &advert(200),
            },
        );
        assert_eq!(i.next_deadline(), Some(ms(5600)));
        assert!(i.handle(ms(3100), Input::Tick).is_empty());
        assert_eq!(i.state(), State::Backup);
        // A late notice (the adverts stopped long ago) takes over at once; a master
        // ignores the notice.
        i.handle(ms(5000), Input::PeerExited);
        assert_eq!(i.next_deadline(), Some(ms(5000)));
        i.handle(ms(5000), Input::Tick);
        assert_eq!(i.state(), State::Master);
        i.handle(ms(5100), Input::PeerExited);
        assert_eq!(i.state(), State::Master);
        assert_eq!(i.next_deadline(), Some(ms(6000)));
    }

    #[test]
    fn skew_time_and_master_down_interval_follow_the_rfc() {
        // Priority 100, interval 100 cs: skew = (156 * 100) / 256 = 60 cs (integer).
        let i = Instance::new(settings(100, [192, 0, 2, 1]));
        assert_eq!(i.skew_time(), ms(600));
        assert_eq!(i.master_down_interval(), ms(3600));
        let owner = Instance::new(settings(254, [192, 0, 2, 1]));
        assert_eq!(owner.skew_time(), ms(0), "(2 * 100) / 256 = 0 cs");
    }

    #[test]
    fn startup_goes_to_backup_and_masters_after_master_down_interval() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        let a = i.handle(ms(0), Input::Startup);
        assert_eq!(transitions(&a), vec![(State::Initialize, State::Backup)]);
        assert_eq!(i.next_deadline(), Some(ms(3600)));
        assert!(i.handle(ms(3599), Input::Tick).is_empty());
        let a = i.handle(ms(3600), Input::Tick);
        // The addresses are held before the advertisement (on which the old master
        // lets them go), and announced right after it.
        assert_eq!(
            a[..3],
            [
                Action::TakeAddresses,
                Action::Send { priority: 100 },
                Action::Announce
            ]
        );
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
        // Then an advertisement every interval.
        assert_eq!(i.next_deadline(), Some(ms(4600)));
        assert_eq!(
            i.handle(ms(4600), Input::Tick),
            vec![Action::Send { priority: 100 }]
        );
    }

    #[test]
    fn a_resumed_master_advertises_at_once_and_moves_nothing() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        let a = i.handle(ms(5000), Input::Resume(State::Master));
        // No takeover: the addresses are held already and nobody must re-learn them.
        assert_eq!(a[0], Action::Send { priority: 100 });
        assert!(!a.contains(&Action::TakeAddresses) && !a.contains(&Action::Announce));
        assert_eq!(transitions(&a), vec![(State::Initialize, State::Master)]);
        assert_eq!(i.state(), State::Master);
        assert_eq!(i.next_deadline(), Some(ms(6000)));
        assert_eq!(
            i.handle(ms(6000), Input::Tick),
            vec![Action::Send { priority: 100 }]
        );
        // A lower-priority peer's advertisement does not move it.
        let a = i.handle(
            ms(6100),
            Input::Advert {
                from: Ipv4Addr::new(192, 0, 2, 2).into(),
                advert: &advert(90),
            },
        );
        assert!(transitions(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn a_resumed_backup_listens_and_takes_over_only_after_silence() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        let a = i.handle(ms(0), Input::Resume(State::Backup));
        assert_eq!(transitions(&a), vec![(State::Initialize, State::Backup)]);
        assert!(a.iter().all(|x| matches!(x, Action::Transition { .. })));
        assert_eq!(i.next_deadline(), Some(ms(3600)));
        // Once running, a second resume changes nothing.
        assert!(i.handle(ms(10), Input::Resume(State::Master)).is_empty());
    }

    #[test]
    fn the_address_owner_masters_at_once() {
        let mut i = Instance::new(settings(255, [192, 0, 2, 1]));
        let a = i.handle(ms(0), Input::Startup);
        assert_eq!(a[1], Action::Send { priority: 255 });
        assert_eq!(i.state(), State::Master);
    }

    #[test]
    fn a_backup_hearing_its_master_stays_backup() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        for t in (500..20_000).step_by(1000) {
            let adv = advert(150);
            assert!(
                i.handle(
                    ms(t),
                    Input::Advert {
                        from: PEER,
                        advert: &adv
                    }
                )
                .is_empty()
            );
            assert!(i.handle(ms(t + 999), Input::Tick).is_empty());
        }
        assert_eq!(i.state(), State::Backup);
        assert_eq!(i.master(), Some(PEER));
    }

    #[test]
    fn a_backup_adopts_the_masters_interval() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        let fast = Advertisement {
            interval: Centis::new(10).unwrap(),
            ..advert(150)
        };
        i.handle(
            ms(100),
            Input::Advert {
                from: PEER,
                advert: &fast,
            },
        );
        // 3 * 100 ms + (156 * 10 / 256 = 6 cs) = 360 ms.
        assert_eq!(i.master_interval().get(), 10);
        assert_eq!(i.next_deadline(), Some(ms(100 + 360)));
    }

    #[test]
    fn a_resigning_master_hands_over_and_stays_backup_while_demoted_then_preempts_back() {
        // Node a (priority 200) is master; b (100) is its backup.
        let mut a = Instance::new(settings(200, [10, 0, 0, 1]));
        let mut b = Instance::new(settings(100, [10, 0, 0, 2]));
        a.handle(ms(0), Input::Startup);
        a.handle(ms(3300), Input::Tick);
        assert_eq!(a.state(), State::Master);
        b.handle(ms(0), Input::Startup);
        // ha demote: a lowers its priority to 1, then resigns.
        let lowered = a.handle(ms(5000), Input::Priority(1));
        assert_eq!(lowered, vec![Action::Send { priority: 1 }]);
        let resigned = a.handle(ms(5000), Input::Resign);
        assert_eq!(resigned[0], Action::Send { priority: 0 });
        assert!(resigned.contains(&Action::ReleaseAddresses));
        assert_eq!(a.state(), State::Backup);
        // b hears priority 0 and takes over after its skew time.
        let zero = Advertisement {
            priority: 0,
            ..a.advertisement(0)
        };
        b.handle(
            ms(5000),
            Input::Advert {
                from: Ipv4Addr::new(10, 0, 0, 1).into(),
                advert: &zero,
            },
        );
        let taken = b.handle(ms(5000) + b.skew_time(), Input::Tick);
        assert!(taken.contains(&Action::TakeAddresses), "{taken:?}");
        assert_eq!(b.state(), State::Master);
        // a, demoted, follows b's adverts and stays backup.
        let from_b = b.advertisement(100);
        for t in (6000..12_000).step_by(1000) {
            a.handle(
                ms(t),
                Input::Advert {
                    from: Ipv4Addr::new(10, 0, 0, 2).into(),
                    advert: &from_b,
                },
            );
            a.handle(ms(t), Input::Tick);
            assert_eq!(a.state(), State::Backup, "at {t} ms");
        }
        // ha restore: priority 200 again; a ignores b's lower adverts and preempts
        // when its master-down timer runs out.
        a.handle(ms(12_000), Input::Priority(200));
        a.handle(
            ms(12_000),
            Input::Advert {
                from: Ipv4Addr::new(10, 0, 0, 2).into(),
                advert: &from_b,
            },
        );
        let back = a.handle(ms(12_000) + a.master_down_interval(), Input::Tick);
        assert!(back.contains(&Action::TakeAddresses), "{back:?}");
        assert_eq!(a.state(), State::Master);
        // Resign means nothing to a backup.
        assert!(b.handle(ms(20_000), Input::Priority(1)).len() == 1);
        let mut c = Instance::new(settings(100, [10, 0, 0, 3]));
        c.handle(ms(0), Input::Startup);
        assert!(c.handle(ms(1), Input::Resign).is_empty());
        assert_eq!(c.state(), State::Backup);
    }

    #[test]
    fn priority_zero_makes_the_backup_take_over_after_skew_time() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        let adv = advert(150);
        i.handle(
            ms(500),
            Input::Advert {
                from: PEER,
                advert: &adv,
            },
        );
        let leaving = advert(0);
        i.handle(
            ms(1000),
            Input::Advert {
                from: PEER,
                advert: &leaving,
            },
        );
        assert_eq!(
            i.next_deadline(),
            Some(ms(1600)),
            "skew time, not master down interval"
        );
        let a = i.handle(ms(1600), Input::Tick);
        assert_eq!(transitions(&a), vec![(State::Backup, State::Master)]);
    }

    #[test]
    fn a_master_yields_to_a_higher_priority_and_outshouts_a_lower_one() {
        let mut i = Instance::new(settings(200, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(3600), Input::Tick);
        assert_eq!(i.state(), State::Master);
        let lower = advert(100);
        assert_eq!(
            i.handle(
                ms(4000),
                Input::Advert {
                    from: PEER,
                    advert: &lower
                }
            ),
            vec![Action::Send { priority: 200 }, Action::Announce],
            "stays master, advertises and announces at once"
        );
        assert_eq!(i.state(), State::Master);
        let higher = advert(250);
        let a = i.handle(
            ms(4100),
            Input::Advert {
                from: PEER,
                advert: &higher,
            },
        );
        assert_eq!(
            a[..2],
            [Action::Send { priority: 200 }, Action::ReleaseAddresses],
            "one last advertisement at our priority (the new master announces on it)"
        );
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        assert_eq!(i.master(), Some(PEER));
    }

    #[test]
    fn equal_priorities_are_broken_by_the_higher_primary_address() {
        // Two masters that hear each other (split brain healing): the lower address yields.
        let mut low = Instance::new(settings(100, [192, 0, 2, 1]));
        let mut high = Instance::new(settings(100, [192, 0, 2, 2]));
        for r in [&mut low, &mut high] {
            r.handle(ms(0), Input::Startup);
            r.handle(ms(3600), Input::Tick);
            assert_eq!(r.state(), State::Master);
        }
        let adv = advert(100);
        let a = low.handle(
            ms(3700),
            Input::Advert {
                from: Ipv4Addr::new(192, 0, 2, 2).into(),
                advert: &adv,
            },
        );
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        let a = high.handle(
            ms(3700),
            Input::Advert {
                from: Ipv4Addr::new(192, 0, 2, 1).into(),
                advert: &adv,
            },
        );
        assert_eq!(
            a,
            vec![Action::Send { priority: 100 }, Action::Announce],
            "the higher address stays master and announces"
        );
        assert_eq!(high.state(), State::Master);
    }

    #[test]
    fn ipv6_ties_are_broken_by_the_higher_link_local_address() {
        let v6 = |primary: &str| Settings {
            primary: primary.parse().unwrap(),
            addresses: vec!["fe80::10".parse().unwrap()],
            ..settings(100, [0, 0, 0, 0])
        };
        let mut low = Instance::new(v6("fe80::1"));
        let mut high = Instance::new(v6("fe80::1:0"));
        for r in [&mut low, &mut high] {
            r.handle(ms(0), Input::Startup);
            r.handle(ms(3600), Input::Tick);
            assert_eq!(r.state(), State::Master);
        }
        let adv = Advertisement {
            addresses: vec!["fe80::10".parse().unwrap()],
            ..advert(100)
        };
        let a = low.handle(
            ms(3700),
            Input::Advert {
                from: "fe80::1:0".parse().unwrap(),
                advert: &adv,
            },
        );
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
        assert_eq!(low.master(), Some("fe80::1:0".parse().unwrap()));
        let a = high.handle(
            ms(3700),
            Input::Advert {
                from: "fe80::1".parse().unwrap(),
                advert: &adv,
            },
        );
        assert_eq!(
            a,
            vec![Action::Send { priority: 100 }, Action::Announce],
            "the higher address stays master and announces"
        );
        assert_eq!(high.state(), State::Master);
        assert_eq!(high.advertisement(100), adv);
    }

    #[test]
    fn preemption_waits_for_preempt_delay_and_honours_preempt_false() {
        let mut s = settings(200, [192, 0, 2, 1]);
        s.preempt_delay = ms(5000);
        let mut i = Instance::new(s);
        i.handle(ms(0), Input::Startup);
        let lower = advert(100);
        // Within the delay the lower master is accepted, so no takeover.
        for t in (0..5000).step_by(1000) {
            i.handle(
                ms(t),
                Input::Advert {
                    from: PEER,
                    advert: &lower,
                },
            );
            i.handle(ms(t + 999), Input::Tick);
            assert_eq!(
                i.state(),
                State::Backup,
                "preempted at {t} ms, before preempt_delay"
            );
        }
        // From then on lower adverts are ignored: the timer set by the one at 4 s runs out.
        i.handle(
            ms(5000),
            Input::Advert {
                from: PEER,
                advert: &lower,
            },
        );
        i.handle(
            ms(6000),
            Input::Advert {
                from: PEER,
                advert: &lower,
            },
        );
        let deadline = i.next_deadline().unwrap();
        assert_eq!(deadline, ms(4000) + i.master_down_interval());
        i.handle(deadline, Input::Tick);
        assert_eq!(i.state(), State::Master);

        let mut s = settings(200, [192, 0, 2, 1]);
        s.preempt = false;
        let mut i = Instance::new(s);
        i.handle(ms(0), Input::Startup);
        for t in (0..20_000).step_by(1000) {
            i.handle(
                ms(t),
                Input::Advert {
                    from: PEER,
                    advert: &lower,
                },
            );
            i.handle(ms(t + 999), Input::Tick);
        }
        assert_eq!(
            i.state(),
            State::Backup,
            "preempt = false never takes over a live master"
        );
    }

    #[test]
    fn held_preemption_waits_until_released() {
        let mut i = Instance::new(settings(200, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(0), Input::HoldPreempt(true));
        let lower = advert(100);
        for t in (0..10_000).step_by(1000) {
            i.handle(
                ms(t),
                Input::Advert {
                    from: PEER,
                    advert: &lower,
                },
            );
            i.handle(ms(t + 999), Input::Tick);
        }
        assert_eq!(i.state(), State::Backup);
        i.handle(ms(10_000), Input::HoldPreempt(false));
        i.handle(
            ms(10_000),
            Input::Advert {
                from: PEER,
                advert: &lower,
            },
        );
        let a = i.handle(ms(10_000) + i.master_down_interval(), Input::Tick);
        assert_eq!(i.state(), State::Master);
        assert_eq!(
            a[..3],
            [
                Action::TakeAddresses,
                Action::Send { priority: 200 },
                Action::Announce
            ],
            "a preempting router holds the addresses before its first advertisement"
        );
    }

    #[test]
    fn graceful_shutdown_of_a_master_sends_priority_zero() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(3600), Input::Tick);
        let a = i.handle(ms(4000), Input::Shutdown);
        assert_eq!(a[0], Action::Send { priority: 0 });
        assert_eq!(a[1], Action::ReleaseAddresses);
        assert_eq!(i.state(), State::Initialize);
        assert_eq!(i.next_deadline(), None);
    }

    #[test]
    fn a_demoted_master_tells_the_backups_at_once() {
        let mut i = Instance::new(settings(150, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(3600), Input::Tick);
        let a = i.handle(ms(3700), Input::Priority(100));
        assert_eq!(a, vec![Action::Send { priority: 100 }]);
        // A backup of 120 with preempt now ignores this master and takes over.
        let higher = advert(120);
        let a = i.handle(
            ms(3800),
            Input::Advert {
                from: PEER,
                advert: &higher,
            },
        );
        assert_eq!(transitions(&a), vec![(State::Master, State::Backup)]);
    }

    #[test]
    fn interface_down_gives_up_master() {
        let mut i = Instance::new(settings(100, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(3600), Input::Tick);
        let a = i.handle(ms(4000), Input::InterfaceDown);
        assert_eq!(a[0], Action::ReleaseAddresses);
        assert_eq!(i.state(), State::Initialize);
        let a = i.handle(ms(5000), Input::Startup);
        assert_eq!(transitions(&a), vec![(State::Initialize, State::Backup)]);
    }

    /// Delivers every advertisement in `actions` of `from` (at `primary`) to `to`;
    /// returns `to`'s actions.
    fn deliver(
        now: Duration,
        from: &Instance,
        actions: &[Action],
        to: &mut Instance,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Send { priority } = a {
                let ad = from.advertisement(*priority);
                out.extend(to.handle(
                    now,
                    Input::Advert {
                        from: from.settings().primary,
                        advert: &ad,
                    },
                ));
            }
        }
        out
    }

    #[test]
    fn a_resumed_master_keeps_its_garp_refresh() {
        let mut s = settings(200, [192, 0, 2, 1]);
        s.announce_every = Some(ms(5000));
        let mut i = Instance::new(s);
        let a = i.handle(ms(0), Input::Resume(State::Master));
        assert!(!a.contains(&Action::Announce), "nothing moved: {a:?}");
        let mut announced = Vec::new();
        let mut now = ms(0);
        for _ in 0..100 {
            now = i.next_deadline().expect("a master has deadlines");
            if now > ms(10_000) {
                break;
            }
            if i.handle(now, Input::Tick).contains(&Action::Announce) {
                announced.push(now);
            }
        }
        assert_eq!(announced, vec![ms(5000), ms(10_000)], "until {now:?}");
    }

    #[test]
    fn a_master_repeats_its_announcement_every_garp_refresh() {
        let mut s = settings(200, [192, 0, 2, 1]);
        s.announce_every = Some(ms(5000));
        let mut i = Instance::new(s);
        i.handle(ms(0), Input::Startup);
        let a = i.handle(ms(3600), Input::Tick);
        assert!(a.contains(&Action::Announce), "on takeover: {a:?}");
        let mut announced = Vec::new();
        let mut now = ms(3600);
        // 20 simulated seconds, tick by tick at each deadline.
        for _ in 0..100 {
            now = i.next_deadline().expect("a master has deadlines");
            if now > ms(23_600) {
                break;
            }
            let a = i.handle(now, Input::Tick);
            if a.contains(&Action::Announce) {
                announced.push(now);
            }
        }
        assert_eq!(
            announced,
            vec![ms(8600), ms(13_600), ms(18_600), ms(23_600)],
            "every 5 s after the takeover, until {now:?}"
        );
        // A backup does not announce, and nothing is left scheduled to do so.
        let higher = advert(250);
        i.handle(
            ms(24_000),
            Input::Advert {
                from: PEER,
                advert: &higher,
            },
        );
        assert_eq!(i.state(), State::Backup);
        assert_eq!(
            i.next_deadline(),
            Some(ms(24_000) + i.master_down_interval()),
            "only the master-down timer"
        );
        let a = i.handle(ms(26_000), Input::Tick);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn without_garp_refresh_a_master_announces_only_on_takeover() {
        let mut i = Instance::new(settings(200, [192, 0, 2, 1]));
        i.handle(ms(0), Input::Startup);
        i.handle(ms(3600), Input::Tick);
        for n in 1..=30u64 {
            let now = ms(3600 + n * 1000);
            assert_eq!(
                i.next_deadline(),
                Some(now),
                "only the advertisement is due"
            );
            let a = i.handle(now, Input::Tick);
            assert_eq!(a, vec![Action::Send { priority: 200 }]);
        }
    }

    #[test]
    fn a_healed_split_brain_leaves_the_higher_master_within_one_interval_announced() {
        let mut high = Instance::new(settings(200, [192, 0, 2, 1]));
        let mut low = Instance::new(settings(100, [192, 0, 2, 2]));
        high.handle(ms(0), Input::Startup);
        low.handle(ms(0), Input::Startup);
        // The link is cut: neither hears the other, both become master.
        for t in (100..=5000).step_by(100) {
            high.handle(ms(t), Input::Tick);
            low.handle(ms(t), Input::Tick);
        }
        assert_eq!((high.state(), low.state()), (State::Master, State::Master));
        // Healed at 5.05 s. Whichever advertisement crosses first (the high one's at
        // its next interval, or the low one's when it is due first): both orders end
        // with one master, which has announced the addresses.
        for low_first in [false, true] {
            let (mut h, mut l) = (high.clone(), low.clone());
            if low_first {
                // Shift the low one's timer before the high one's.
                l.advert_at = h.advert_at.map(|t| t - ms(50));
            }
            let healed = ms(5050);
            let mut now = healed;
            let mut announced_at = None;
            let mut yielded_at = None;
            for _ in 0..20 {
                now = [h.next_deadline(), l.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap()
                    .max(now);
                let mut from_h = h.handle(now, Input::Tick);
                let mut from_l = l.handle(now, Input::Tick);
                // Deliver both ways until nothing more is sent (bounded).
                for _ in 0..5 {
                    if from_h.iter().chain(&from_l).any(|a| *a == Action::Announce)
                        && h.state() == State::Master
                    {
                        announced_at.get_or_insert(now);
                    }
                    let to_l = deliver(now, &h, &from_h, &mut l);
                    let to_h = deliver(now, &l, &from_l, &mut h);
                    if to_l.contains(&Action::ReleaseAddresses) {
                        yielded_at.get_or_insert(now);
                    }
                    if to_h.contains(&Action::Announce) {
                        announced_at.get_or_insert(now);
                    }
                    (from_h, from_l) = (to_h, to_l);
                }
                if l.state() == State::Backup && announced_at.is_some() {
                    break;
                }
            }
            assert_eq!(h.state(), State::Master, "low first: {low_first}");
            assert_eq!(l.state(), State::Backup, "low first: {low_first}");
            let yielded = yielded_at.expect("the low master released its addresses");
            assert!(
                yielded - healed <= ms(1000),
                "one master within one interval (1 s): took {:?}",
                yielded - healed
            );
            let announced = announced_at.expect("the remaining master announced");
            assert!(
                announced >= healed && announced - healed <= ms(1000),
                "announced {:?} after the heal (low first: {low_first})",
                announced - healed
            );
        }
    }
}
