//! The event log: what happened to this node (health transitions with their reasons,
//! VRRP state changes, sync peers joining and leaving, reloads, limits hit, operator
//! actions), the last few hundred kept for the status page's timeline, and a stream
//! for whoever follows along.
//!
//! Events that repeat (a limit hit a thousand times a second) fold into the last
//! entry of the same kind, subject and text while they come within
//! [`FOLD_WINDOW_MS`], counting `repeats`, so a storm cannot push the rest out.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::protocol::{BackendSnapshot, ServiceSnapshot, Snapshot};

/// How many events the log keeps.
pub const KEPT: usize = 500;

/// A repeat of the newest event of the same kind and subject within this many
/// milliseconds folds into it.
pub const FOLD_WINDOW_MS: u64 = 10_000;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A backend's health changed (its subject is `pool/address`).
    Health,
    /// The VRRP state of a group changed.
    Vrrp,
    /// A sync peer connected, finished its bulk transfer, or left.
    Sync,
    /// The configuration was reloaded, or a reload was refused.
    Reload,
    /// A limit turned connections away (max_conns, per-client limits, node limit).
    Limit,
    /// An operator acted (drain, enable) through `tandem ctl` or the status page.
    Operator,
    /// A service address was announced to the routers or withdrawn (its subject is
    /// the address).
    Announce,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its number: increasing, never reused while the process lives.
    pub seq: u64,
    /// When it happened (or, when folded, last happened), in milliseconds since the
    /// Unix epoch.
    pub at_ms: u64,
    /// What it is about.
    pub kind: EventKind,
    /// The thing it happened to: `pool/address`, a service, a VRRP group, a peer.
    pub subject: String,
    /// What happened, for a person: "down: connect: Connection refused".
    pub text: String,
    /// How many more times it happened since `seq` (folded repeats).
    #[serde(default)]
    pub repeats: u64,
}

/// The log: a bounded ring and a broadcast of each new event.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<Ring>,
    stream: broadcast::Sender<Event>,
}

#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog {
            ring: Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(KEPT),
            }),
            stream: broadcast::channel(256).0,
        }
    }

    /// Records an event that happened at `at_ms` (ms since the epoch); returns it as
    /// kept (folded into an earlier one when it repeats that one).
    pub fn record(
        &self,
        at_ms: u64,
        kind: EventKind,
        subject: impl Into<String>,
        text: impl Into<String>,
    ) -> Event {
        let (subject, text) = (subject.into(), text.into());
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let newest_alike = ring
            .events
            .iter_mut()
            .rev()
            .find(|e| e.kind == kind && e.subject == subject);
        let event = match newest_alike {
            Some(e) if e.text == text && at_ms.saturating_sub(e.at_ms) <= FOLD_WINDOW_MS => {
                e.repeats += 1;
                e.at_ms = at_ms.max(e.at_ms);
                e.clone()
            }
            _ => {
                let event = Event {
                    seq: ring.next_seq,
                    at_ms,
                    kind,
                    subject,
                    text,
                    repeats: 0,
                };
                ring.next_seq += 1;
                if ring.events.len() == KEPT {
                    ring.events.pop_front();
                }
                ring.events.push_back(event.clone());
                event
            }
        };
        drop(ring);
        // Nobody following is fine.
        let _ = self.stream.send(event.clone());
        event
    }

    /// Records an event that happens now.
    pub fn record_now(
        &self,
        kind: EventKind,
        subject: impl Into<String>,
        text: impl Into<String>,
    ) -> Event {
        self.record(now_ms(), kind, subject, text)
    }

    /// The kept events changed after `since` (new ones, and folded ones whose time
    /// moved past it), oldest first; `since = 0` gives all.
    pub fn since(&self, since_seq: u64, since_ms: u64) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.events
            .iter()
            .filter(|e| e.seq > since_seq || (e.repeats > 0 && e.at_ms > since_ms))
            .cloned()
            .collect()
    }

    /// The kept events, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.since(0, 0)
    }

    /// Every event recorded from now on (a slow reader loses the oldest and is told
    /// how many by [`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.stream.subscribe()
    }
}

/// What changed between two snapshots taken in turn, as events: backends changing
/// health (with the failing check's error) or being enabled and disabled, the VRRP
/// state, sync peers connecting, finishing their bulk transfer and leaving, reloads,
/// and connections turned away by limits since `before`. Pure: the daemon calls it
/// with each new snapshot.
pub fn changes(before: &Snapshot, now: &Snapshot) -> Vec<(EventKind, String, String)> {
    let mut out = Vec::new();
    if now.reloads > before.reloads {
        let path = now.config_path.as_deref().unwrap_or("the configuration");
        out.push((EventKind::Reload, path.to_string(), "reloaded".to_string()));
    }
    for n in now.ha.iter() {
        let Some(b) = before
            .ha
            .iter()
            .find(|b| b.interface == n.interface && b.vrid == n.vrid)
        else {
            continue;
        };
        let subject = format!("{} vrid {}", n.interface, n.vrid);
        if !b.state.eq_ignore_ascii_case(&n.state) {
            out.push((
                EventKind::Vrrp,
                subject,
                format!("{} -> {}", b.state.to_lowercase(), n.state.to_lowercase()),
            ));
        } else if b.effective_priority != n.effective_priority {
            out.push((
                EventKind::Vrrp,
                subject,
                format!(
                    "priority {} -> {}",
                    b.effective_priority, n.effective_priority
                ),
            ));
        }
    }
    for p in &now.pools {
        let old = before.pools.iter().find(|o| o.name == p.name);
        for b in &p.backends {
            let Some(was) = old.and_then(|o| o.backends.iter().find(|x| x.address == b.address))
            else {
                continue;
            };
            let subject = format!("{}/{}", p.name, b.address);
            if was.health != b.health {
                out.push((EventKind::Health, subject.clone(), health_text(was, b)));
            }
            // What the agent says, without its last answer's text: "drain", "ready 50%".
            let agent = |x: &BackendSnapshot| {
                x.agent
                    .as_deref()
                    .map(|a| a.split(':').next().unwrap_or_default().to_string())
            };
            if let (Some(then), Some(now)) = (agent(was), agent(b))
                && then != now
            {
                out.push((
                    EventKind::Health,
                    subject.clone(),
                    format!("agent: {then} -> {now}"),
                ));
            }
            if was.enabled != b.enabled {
                let text = if b.enabled {
                    "enabled"
                } else {
                    "disabled (draining)"
                };
                out.push((EventKind::Operator, subject, text.to_string()));
            }
        }
    }
    for peer in &now.sync {
        let was = before.sync.iter().find(|x| x.address == peer.address);
        let subject = match &peer.name {
            Some(n) => format!("{} ({n})", peer.address),
            None => peer.address.clone(),
        };
        let (was_up, was_synced) = was.map_or((false, false), |w| (w.connected, w.synced));
        if peer.connected && !was_up {
            out.push((EventKind::Sync, subject.clone(), "joined".to_string()));
        } else if !peer.connected && was_up {
            let why = peer.last_error.as_deref().unwrap_or("link lost");
            out.push((EventKind::Sync, subject.clone(), format!("left: {why}")));
        }
        if peer.synced && !was_synced {
            out.push((
                EventKind::Sync,
                subject,
                "bulk transfer done: synced".to_string(),
            ));
        }
    }
    if let (Some(b), Some(n)) = (&before.announce, &now.announce) {
        for a in &n.addresses {
            let was = b.addresses.iter().find(|x| x.address == a.address);
            if was.is_some_and(|w| w.announced != a.announced) {
                let text = if a.announced {
                    "announced".to_string()
                } else {
                    format!("withdrawn: {}", a.reason)
                };
                out.push((EventKind::Announce, a.address.clone(), text));
            }
        }
    }
    for s in &now.services {
        let Some(was) = before.services.iter().find(|x| x.name == s.name) else {
            continue;
        };
        for (what, n) in turned_away(was, s) {
            out.push((
                EventKind::Limit,
                s.name.clone(),
                format!("{n} connection(s) {what}"),
            ));
        }
    }
    out
}

fn health_text(was: &BackendSnapshot, now: &BackendSnapshot) -> String {
    let reason = match &now.last_check {
        Some(c) if !c.ok && !c.error.is_empty() => format!(": {}", c.error),
        _ => String::new(),
    };
    format!("{} -> {}{reason}", was.health, now.health)
}

/// Connections a limit closed between two snapshots of a service, by limit.
fn turned_away(was: &ServiceSnapshot, now: &ServiceSnapshot) -> Vec<(&'static str, u64)> {
    [
        ("closed at max_conns", now.rejected, was.rejected),
        (
            "closed at global.max_conns",
            now.node_limited,
            was.node_limited,
        ),
        (
            "closed by a per-client limit",
            now.client_limited,
            was.client_limited,
        ),
        ("closed: no backend", now.no_backend, was.no_backend),
    ]
    .into_iter()
    .filter(|&(_, now, was)| now > was)
    .map(|(what, now, was)| (what, now - was))
    .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_numbers_them() {
        let log = EventLog::new();
        for i in 0..(KEPT as u64 + 20) {
            log.record(i * 20_000, EventKind::Health, format!("web/{i}"), "down");
        }
        let all = log.all();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].seq, 21);
        assert_eq!(all.last().unwrap().seq, KEPT as u64 + 20);
    }

    #[test]
    fn a_storm_folds_into_one_entry_and_a_change_does_not() {
        let log = EventLog::new();
        let first = log.record(1_000, EventKind::Limit, "www", "max_conns reached");
        for t in 0..1000 {
            log.record(1_000 + t * 5, EventKind::Limit, "www", "max_conns reached");
        }
        log.record(7_000, EventKind::Health, "web/a", "down: refused");
        let folded = log.record(8_000, EventKind::Limit, "www", "max_conns reached");
        assert_eq!(folded.seq, first.seq);
        assert_eq!(folded.repeats, 1001);
        assert_eq!(log.all().len(), 2);
        // Past the window, the same text is news again.
        let later = log.record(30_000, EventKind::Limit, "www", "max_conns reached");
        assert_ne!(later.seq, first.seq);
        // A different text for the same subject is never folded.
        let up = log.record(30_001, EventKind::Health, "web/a", "up");
        assert_eq!(up.repeats, 0);
        assert_eq!(log.all().len(), 4);
    }

    #[test]
    fn since_gives_new_and_refolded_events() {
        let log = EventLog::new();
        let a = log.record(1_000, EventKind::Limit, "www", "limit");
        let b = log.record(2_000, EventKind::Reload, "config", "reloaded");
        assert_eq!(log.since(b.seq, 2_000), vec![]);
        log.record(3_000, EventKind::Limit, "www", "limit");
        let changed = log.since(b.seq, 2_000);
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].seq, changed[0].repeats), (a.seq, 1));
    }

    #[test]
    fn changes_between_snapshots_are_events() {
        use crate::protocol::*;
        let backend = |health: &str, enabled: bool, error: &str| BackendSnapshot {
            address: "10.0.0.1:80".into(),
            health: health.into(),
            enabled,
            last_check: Some(CheckSnapshot {
                ok: error.is_empty(),
                error: error.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let snap = |b: BackendSnapshot, state: &str, rejected: u64, peer: bool| Snapshot {
            reloads: u64::from(peer),
            config_path: Some("/etc/tandem/tandem.toml".into()),
            pools: vec![PoolSnapshot {
                name: "web".into(),
                backends: vec![b],
                ..Default::default()
            }],
            services: vec![ServiceSnapshot {
                name: "www".into(),
                rejected,
                ..Default::default()
            }],
            ha: HaInstances(vec![
                HaSnapshot {
                    state: state.into(),
                    interface: "eth0".into(),
                    vrid: 51,
                    ..Default::default()
                },
                HaSnapshot {
                    state: "Master".into(),
                    interface: "eth0".into(),
                    vrid: 52,
                    ..Default::default()
                },
            ]),
            sync: vec![PeerSnapshot {
                address: "10.9.0.2:7400".into(),
                connected: peer,
                synced: peer,
                last_error: (!peer).then(|| "connection reset".to_string()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = snap(backend("up", true, ""), "Backup", 0, false);
        assert!(changes(&a, &a).is_empty());
        let b = snap(
            backend("down", false, "connect: Connection refused"),
            "Master",
            7,
            true,
        );
        let got: Vec<String> = changes(&a, &b)
            .into_iter()
            .map(|(k, s, t)| format!("{k:?} {s}: {t}"))
            .collect();
        assert_eq!(
            got,
            [
                "Reload /etc/tandem/tandem.toml: reloaded",
                "Vrrp eth0 vrid 51: backup -> master",
                "Health web/10.0.0.1:80: up -> down: connect: Connection refused",
                "Operator web/10.0.0.1:80: disabled (draining)",
                "Sync 10.9.0.2:7400: joined",
                "Sync 10.9.0.2:7400: bulk transfer done: synced",
                "Limit www: 7 connection(s) closed at max_conns",
            ]
        );
        let back: Vec<String> = changes(&b, &a)
            .into_iter()
            .map(|(k, s, t)| format!("{k:?} {s}: {t}"))
            .collect();
        assert!(back.contains(&"Sync 10.9.0.2:7400: left: connection reset".to_string()));
        // Active/active: the second instance's change is its own event, named so.
        let mut c = b.clone();
        c.ha.0[1].state = "Backup".into();
        c.ha.0[1].effective_priority = 40;
        let got: Vec<String> = changes(&b, &c)
            .into_iter()
            .map(|(k, s, t)| format!("{k:?} {s}: {t}"))
            .collect();
        assert_eq!(got, ["Vrrp eth0 vrid 52: master -> backup"]);
        assert!(back.contains(&"Health web/10.0.0.1:80: down -> up".to_string()));
    }

    #[tokio::test]
    async fn followers_get_each_event() {
        let log = EventLog::new();
        let mut rx = log.subscribe();
        log.record(1, EventKind::Vrrp, "eth0/51", "backup -> master");
        let e = rx.recv().await.unwrap();
        assert_eq!(e.text, "backup -> master");
        assert_eq!(e.kind, EventKind::Vrrp);
    }

    #[test]
    fn what_an_agent_says_is_an_event_once_it_changes() {
        let with_agent = |agent: &str| {
            let mut s = Snapshot::default();
            s.pools.push(crate::protocol::PoolSnapshot {
                name: "web".into(),
                backends: vec![BackendSnapshot {
                    address: "10.0.0.1:80".into(),
                    health: "up".into(),
                    enabled: true,
                    agent: Some(agent.into()),
                    ..BackendSnapshot::default()
                }],
                ..Default::default()
            });
            s
        };
        let ready = with_agent("ready: said up");
        let drain = with_agent("drain: said drain");
        assert_eq!(
            changes(&ready, &drain),
            vec![(
                EventKind::Health,
                "web/10.0.0.1:80".to_string(),
                "agent: ready -> drain".to_string()
            )]
        );
        assert!(changes(&drain, &with_agent("drain: last ask failed: refused")).is_empty());
    }
}
