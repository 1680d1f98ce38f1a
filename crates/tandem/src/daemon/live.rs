//! What the live status page follows: the event log (fed by what changed between
//! snapshots taken each second, and by refused reloads) and the last hour of rates
//! (a point every [`tandem_control::history::STEP_SECS`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_balance::PoolSet;

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
/// one, and a history point every `STEP_SECS`. Between history points, a pool whose
/// backends look the same as last time (see [`PoolLooks`]) is not snapshotted again:
/// with 10,000 checked backends, snapshotting and comparing them all each second cost
/// more than their checks' own work in user space.
pub(super) async fn follow(daemon: Daemon, stop: CancellationToken) {
    let live = &daemon.shared.live;
    let mut looks = PoolLooks::default();
    looks.changed(&daemon);
    let mut before = daemon.snapshot();
    let mut index = pool_index(&before);
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
        let history = n.is_multiple_of(STEP_SECS / LOOK_EVERY.as_secs());
        // Looked at before the snapshot: a change after the look shows next time.
        let changed = looks.changed(&daemon);
        let whole = history || changed.is_none();
        let mut now = match (&changed, whole) {
            (Some(names), false) => daemon.snapshot_of(|name| names.contains(name)),
            _ => daemon.snapshot(),
        };
        let at = events::now_ms();
        for (kind, subject, text) in events::changes(&before, &now) {
            live.events.record(at, kind, subject, text);
        }
        if history {
            live.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(at, &now);
        }
        if whole {
            index = pool_index(&now);
        } else {
            // The pools not taken again are as they were.
            let mut pools = std::mem::take(&mut before.pools);
            for p in now.pools.drain(..) {
                match index.get(&p.name) {
                    Some(&i) => pools[i] = p,
                    None => {
                        index.insert(p.name.clone(), pools.len());
                        pools.push(p);
                    }
                }
            }
            now.pools = pools;
        }
        before = now;
    }
}

/// Where each pool is in a snapshot's list.
fn pool_index(snapshot: &tandem_control::Snapshot) -> HashMap<String, usize> {
    snapshot
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect()
}

/// What the last look saw of the pools: which configuration and pool set, and for
/// each pool the health board's change count (up or down, first decisions, agents)
/// and its backends' enabled flags (the operator's or a peer's drain), looked at again
/// only when the backends' state epoch moved (a flag that changes moves it).
#[derive(Default)]
struct PoolLooks {
    set: Option<(Arc<tandem_config::Config>, Arc<PoolSet>)>,
    pools: HashMap<String, (u64, Vec<bool>)>,
    /// [`tandem_balance::state_epoch`] when the flags were last looked at.
    epoch: Option<u64>,
}

impl PoolLooks {
    /// The names of the pools that look different from the last look, or `None` for a
    /// new configuration or pool set (a reload, an agent's new weights).
    fn changed(&mut self, daemon: &Daemon) -> Option<HashSet<String>> {
        let (config, pools) = (daemon.config(), daemon.pools());
        let same = self
            .set
            .as_ref()
            .is_some_and(|(c, p)| Arc::ptr_eq(c, &config) && Arc::ptr_eq(p, &pools));
        let health = daemon.health();
        let mut changed = HashSet::new();
        if !same {
            self.pools.clear();
        }
        // Read before the flags: a change during the look moves it again.
        let epoch = tandem_balance::state_epoch();
        let flags_same = same && self.epoch == Some(epoch);
        self.epoch = Some(epoch);
        for pool in pools.iter() {
            let generation = health.generation(&pool.name);
            if !self.pools.contains_key(&pool.name) {
                self.pools
                    .insert(pool.name.clone(), (generation, Vec::new()));
            }
            let Some(look) = self.pools.get_mut(&pool.name) else {
                continue;
            };
            let mut differs = look.0 != generation;
            look.0 = generation;
            if flags_same {
                if differs {
                    changed.insert(pool.name.clone());
                }
                continue;
            }
            differs |= look.1.len() != pool.backends.len();
            look.1.resize(pool.backends.len(), false);
            for (seen, b) in look.1.iter_mut().zip(&pool.backends) {
                let enabled = b.state.is_enabled();
                differs |= *seen != enabled;
                *seen = enabled;
            }
            if differs && same {
                changed.insert(pool.name.clone());
            }
        }
        self.set = Some((config, pools));
        same.then_some(changed)
    }
}
