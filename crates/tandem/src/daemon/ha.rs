//! VRRP wiring: the settings from `[ha]`, and the tasks that tie the router to the
//! pools (tracked pools demote it), to the readiness gate (no preemption before the
//! node is ready), to sync (a peer's exit) and to the redirect plane (conntrackd).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_health::HealthBoard;
use tandem_vrrp::linux::{HaSettings, Vrrp};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use super::tasks::{Tasks, Until};
use crate::readiness::{Gate, Verdict};

/// Why `[ha]` cannot become VRRP settings.
pub type HaSettingsError = tandem_vrrp::linux::VrrpError;

/// The VRRP settings of `[ha]`.
pub(super) fn settings(ha: &tandem_config::Ha) -> Result<HaSettings, HaSettingsError> {
    HaSettings::from_config(ha)
}

/// Spawns the tasks that tie `vrrp` to the rest of `daemon`; `gate` when preemption
/// is held until the node is ready.
pub(super) fn start(daemon: &Daemon, tasks: &Tasks, vrrp: &Arc<Vrrp>, gate: Option<Gate>) {
    let stop = tasks.stop().clone();
    if let Some(plane) = daemon.redirect() {
        tasks.spawn(
            "conntrackd follows VRRP",
            Until::Shutdown,
            plane.follow_vrrp(vrrp.states(), stop.clone()),
        );
    }
    if let Some(gate) = gate {
        tasks.spawn(
            "VRRP readiness gate",
            Until::Done,
            hold_until_ready(
                gate,
                vrrp.clone(),
                daemon.sync().map(|s| s.synced()),
                daemon.health(),
                daemon.shared.started,
                stop.clone(),
            ),
        );
    }
    if let Some(sync) = daemon.sync() {
        // A peer whose sync session closes has most likely exited: as its backup, wait
        // for one more advertisement, not three.
        let mut ended = sync.sessions_ended();
        ended.borrow_and_update();
        let vrrp = vrrp.clone();
        let stop = stop.clone();
        tasks.spawn("VRRP hears peer exits", Until::Done, async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = ended.changed() => if r.is_err() { return },
                }
                vrrp.peer_exited().await;
            }
        });
    }
    tasks.spawn(
        "VRRP tracks pools",
        Until::Shutdown,
        track_pools(daemon.clone(), vrrp.clone(), stop),
    );
}

/// Holds VRRP preemption until `gate` says the node is ready (sticky tables synced,
/// checks of the served and tracked pools decided, or their bound passed), then logs
/// what it waited for and lets preemption go.
async fn hold_until_ready(
    mut gate: Gate,
    vrrp: Arc<Vrrp>,
    mut synced: Option<tokio::sync::watch::Receiver<bool>>,
    health: Arc<HealthBoard>,
    started: Instant,
    stop: CancellationToken,
) {
    let mut decisions = health.decisions();
    loop {
        let now = started.elapsed();
        let is_synced = synced.as_mut().is_none_or(|s| *s.borrow_and_update());
        let recheck_at = match gate.judge(now, is_synced, |pool| health.decided(pool)) {
            Verdict::Ready(ready) => {
                if ready.undecided.is_empty() {
                    info!(target: "tandem::vrrp", "{ready}: VRRP may preempt");
                } else {
                    warn!(target: "tandem::vrrp", "{ready}: VRRP may preempt");
                }
                vrrp.hold_preempt(false).await;
                return;
            }
            Verdict::Wait { recheck_at } => recheck_at,
        };
        let sync_changed = async {
            match synced.as_mut() {
                Some(s) => {
                    if s.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let bound = async {
            match recheck_at {
                Some(at) => tokio::time::sleep_until((started + at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = sync_changed => {}
            r = decisions.changed() => if r.is_err() { return },
            () = bound => {}
        }
    }
}

/// Demotes the VRRP priority while a tracked pool has no healthy backend.
async fn track_pools(daemon: Daemon, vrrp: Arc<Vrrp>, stop: CancellationToken) {
    let mut changes = daemon.health().subscribe();
    loop {
        let config = daemon.config();
        let pools = daemon.pools();
        let demotions: Vec<(String, u8)> = config
            .ha
            .iter()
            .flat_map(|ha| ha.track_pools.iter())
            .filter(|(name, _)| {
                pools
                    .get(name)
                    .is_some_and(|p| !p.backends.iter().any(|b| b.state.is_healthy()))
            })
            .map(|(name, weight)| (format!("pool {name} has no healthy backend"), *weight))
            .collect();
        vrrp.set_demotions(demotions).await;
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            // Reloads can change pools without a health transition.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
