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

    #[tokio::test]
    async fn followers_get_each_event() {
        let log = EventLog::new();
        let mut rx = log.subscribe();
        log.record(1, EventKind::Vrrp, "eth0/51", "backup -> master");
        let e = rx.recv().await.unwrap();
        assert_eq!(e.text, "backup -> master");
        assert_eq!(e.kind, EventKind::Vrrp);
    }
}
