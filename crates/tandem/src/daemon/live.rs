//! What the live status page follows: the event log (fed by what changed between
//! snapshots taken each second, and by refused reloads) and the last hour of rates
//! (a point every [`tandem_control::history::STEP_SECS`]).

use std::sync::Mutex;
use std::time::Duration;

use tandem_control::events::{self, EventKind, EventLog};
use tandem_control::history::{History, STEP_SECS};
use tokio_util::sync::CancellationToken;

use super::Daemon;

/// How often the state is compared with the last look.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The event log and the history of one daemon.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) events: EventLog,
    pub(super) history: Mutex<History>,
}

impl Live {
    /// Records an event that happens now.
    pub(super) fn note(&self, kind: EventKind, subject: &str, text: impl Into<String>) {
        self.events.record_now(kind, subject, text);
    }
}

/// Takes a snapshot each second until `stop`: events for what changed since the last
/// one, and a history point every `STEP_SECS`.
pub(super) async fn follow(daemon: Daemon, stop: CancellationToken) {
    let live = &daemon.shared.live;
    let mut before = daemon.snapshot();
    live.history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(events::now_ms(), &before);
    let mut ticks = tokio::time::interval(LOOK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        n += 1;
        let now = daemon.snapshot();
        let at = events::now_ms();
        for (kind, subject, text) in events::changes(&before, &now) {
            live.events.record(at, kind, subject, text);
        }
        if n.is_multiple_of(STEP_SECS / LOOK_EVERY.as_secs()) {
            live.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(at, &now);
        }
        before = now;
    }
}
