//! The sticky tables' housekeeping: restored from `state_dir` at start, saved there
//! while running and at shutdown, swept of expired pins.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tandem_balance::{PoolSet, now_ms};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use crate::state_file;

/// How often expired sticky entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Loads `dir`'s sticky state into `pools` and says what it found; a foreign or
/// damaged file is refused (tandem starts with empty tables).
pub(super) fn restore(dir: &Path, pools: &PoolSet) {
    let file = state_file::path(dir);
    let refused = |e: state_file::StateError| warn!(file = %file.display(), "sticky state refused, starting with empty tables: {e}");
    let bytes = match state_file::load(dir) {
        Ok(None) => {
            info!(file = %file.display(), "no sticky state saved yet: starting with empty tables");
            return;
        }
        Ok(Some(bytes)) => bytes,
        Err(e) => return refused(e),
    };
    match state_file::decode(&bytes) {
        Ok(saved) => {
            let unix_now = tandem_balance::unix_ms();
            let done = state_file::restore(pools, &saved, now_ms(), unix_now);
            let age = Duration::from_millis(unix_now.saturating_sub(saved.written_unix_ms));
            info!(file = %file.display(), loaded = done.loaded, expired = done.expired, unknown_pool = done.unknown_pool,
                "sticky tables restored: {} pins (written by {} {} s ago; {} expired meanwhile, {} of pools no longer sticky)",
                done.loaded, saved.node, age.as_secs(), done.expired, done.unknown_pool);
        }
        Err(e) => refused(e),
    }
}

/// Writes the sticky tables of `pools` to `dir`, as node `node`.
pub(super) fn save(dir: &Path, pools: &PoolSet, node: &str) {
    let saved = state_file::snapshot(pools, node, now_ms(), tandem_balance::unix_ms());
    if let Err(e) = state_file::save(dir, &saved) {
        warn!(dir = %dir.display(), "cannot save the sticky tables: {e}");
    }
}

/// Saves the sticky tables every [`state_file::SAVE_EVERY`] until `stop` (shutdown
/// saves once more after the connections are done).
pub(super) async fn save_every(daemon: Daemon, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state_file::SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if daemon.has_retired() {
            // The successor writes the file now.
            return;
        }
        let config = daemon.config();
        let Some(dir) = config.global.state_dir.clone() else {
            continue;
        };
        let pools = daemon.pools();
        let _ = tokio::task::spawn_blocking(move || save(&dir, &pools, &config.global.name)).await;
    }
}

/// Sweeps expired pins from every sticky table every [`SWEEP_EVERY`] until `stop`.
pub(super) async fn sweep_every(pools: Arc<ArcSwap<PoolSet>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for pool in pools.load().iter() {
            if let Some(table) = &pool.sticky {
                table.sweep(now);
            }
        }
    }
}
