//! Route announcement wiring (`[announce]`): the interface that BIRD exports, the
//! decision of `tandem-announce` fed with the readiness gate, the pools' health, the
//! operator's drain and the shutdown, and its state for status, metrics and events.
//!
//! One [`Announcing`] per daemon; [`Announcing::apply`] is the only place that changes
//! the interface: the follow task calls it on every health change, on the readiness
//! gate's opening and each second (reloads), the control handler after the operator's
//! command, and the shutdown before anything else stops.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tandem_announce::linux::AnnounceDevice;
use tandem_announce::{Action, Announcer, Inputs, Policy, Reason, Target};
use tandem_config::Config;
use tandem_control::events::EventKind;
use tandem_control::{AnnounceSnapshot, AnnouncedAddress};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use super::build::BuildError;
use super::tasks::{Tasks, Until};
use super::upgrade::Inherited;
use crate::readiness::{self, Gate};
use crate::upgrade::{AnnounceState, Socket};

/// The announcement part of a running daemon.
#[derive(Debug)]
pub(super) struct Announcing {
    interface: String,
    machine: Mutex<Machine>,
    ready: AtomicBool,
    operator: AtomicBool,
    stopping: AtomicBool,
    /// A successor holds the device and decides (an upgrade): this process no longer
    /// touches it, nor withdraws anything at its end.
    handed_over: AtomicBool,
    started: Instant,
    view: std::sync::Mutex<AnnounceSnapshot>,
    wake: Notify,
}

#[derive(Debug)]
struct Machine {
    announcer: Announcer,
    targets: Vec<Target>,
    policy: Policy,
    device: AnnounceDevice,
    last_error: Option<String>,
}

/// Each address of `[announce]` with the pools of the services listening on it.
pub(super) fn targets(config: &Config) -> Vec<Target> {
    let Some(announce) = &config.announce else {
        return Vec::new();
    };
    announce
        .addresses
        .iter()
        .map(|&address| {
            let mut pools: Vec<String> = Vec::new();
            for s in config
                .services
                .iter()
                .filter(|s| s.listen.iter().any(|l| l.ip() == address))
            {
                for p in s.pools() {
                    if !pools.iter().any(|x| x == p) {
                        pools.push(p.to_string());
                    }
                }
            }
            Target { address, pools }
        })
        .collect()
}

/// Creates the interface for `[announce]` (nothing announced yet), or after an
/// upgrade takes over the predecessor's with what it announced.
pub(super) async fn build(
    config: &Config,
    started: Instant,
    inherited: &mut Inherited,
) -> Result<Option<Arc<Announcing>>, BuildError> {
    let Some(announce) = &config.announce else {
        return Ok(None);
    };
    let policy = Policy::of(announce);
    let targets = targets(config);
    let (device, resumed) = match inherited.take_announce(&announce.interface) {
        Some((fd, state)) => {
            let device = AnnounceDevice::adopt(fd, &announce.interface)
                .await
                .map_err(BuildError::Announce)?;
            (device, Some(state))
        }
        None => {
            let device = AnnounceDevice::create(&announce.interface)
                .await
                .map_err(BuildError::Announce)?;
            (device, None)
        }
    };
    let state = resumed.clone().unwrap_or_default();
    let announcer = match &resumed {
        Some(s) => Announcer::resume(
            policy,
            targets.clone(),
            &s.announced,
            &s.unhealthy,
            Duration::ZERO,
        ),
        None => Announcer::new(policy, targets.clone()),
    };
    let part = Announcing {
        interface: announce.interface.clone(),
        machine: Mutex::new(Machine {
            announcer,
            targets,
            policy,
            device,
            last_error: None,
        }),
        ready: AtomicBool::new(state.ready),
        operator: AtomicBool::new(state.operator),
        stopping: AtomicBool::new(false),
        handed_over: AtomicBool::new(false),
        started,
        view: Default::default(),
        wake: Notify::new(),
    };
    if resumed.is_some() {
        info!(interface = %announce.interface, announced = ?state.announced, "announce: interface taken over from the previous tandem, announcing what it announced");
    } else {
        info!(interface = %announce.interface, addresses = ?announce.addresses, "announce: interface ready; nothing announced until the node is ready");
    }
    Ok(Some(Arc::new(part)))
}

impl Announcing {
    /// Decides now and makes the interface hold what is announced; logs and returns
    /// when the next delay runs out (time since start).
    pub(super) async fn apply(&self, daemon: &Daemon) -> Option<Duration> {
        let config = daemon.config();
        let pools = daemon.pools();
        let now = self.started.elapsed();
        let mut m = self.machine.lock().await;
        if self.handed_over.load(Relaxed) {
            return None;
        }
        if let Some(a) = &config.announce {
            let (policy, targets) = (Policy::of(a), targets(&config));
            if policy != m.policy || targets != m.targets {
                m.announcer.reconfigure(policy, targets.clone(), now);
                (m.policy, m.targets) = (policy, targets);
            }
        }
        let inputs = Inputs {
            ready: self.ready.load(Relaxed),
            operator: self.operator.load(Relaxed),
            stopping: self.stopping.load(Relaxed),
            healthy: |pool: &str| !pools.serving(pool).is_empty(),
        };
        for action in m.announcer.step(now, &inputs) {
            match action {
                Action::Announce(ip) => {
                    info!(target: "tandem::announce", address = %ip, interface = %self.interface, "announcing {ip}")
                }
                Action::Withdraw(ip, reason) => {
                    info!(target: "tandem::announce", address = %ip, interface = %self.interface, "withdrawing {ip}: {reason}")
                }
            }
        }
        let wanted: Vec<IpAddr> = m.announcer.announced();
        let result = m.device.hold(&wanted).await;
        match result {
            Ok(()) => m.last_error = None,
            Err(e) => {
                if m.last_error.as_deref() != Some(&e.to_string()) {
                    warn!(target: "tandem::announce", "{e}: tried again each second");
                }
                m.last_error = Some(e.to_string());
            }
        }
        let snapshot = AnnounceSnapshot {
            interface: self.interface.clone(),
            ready: inputs.ready,
            operator_withdrawn: inputs.operator,
            stopping: inputs.stopping,
            addresses: m
                .announcer
                .states()
                .into_iter()
                .map(|s| AnnouncedAddress {
                    address: s.address.to_string(),
                    announced: s.announced,
                    reason: s.reason.to_string(),
                    pools: s.pools,
                    for_secs: now.saturating_sub(s.since).as_secs(),
                })
                .collect(),
            last_error: m.last_error.clone(),
        };
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
        m.announcer.next_deadline()
    }

    /// The state at the last decision (the follow task decides at least each second).
    pub(super) fn snapshot(&self) -> AnnounceSnapshot {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The operator's drain (`withdrawn`) or its end; applied before it returns.
    pub(super) async fn set_operator(&self, daemon: &Daemon, withdrawn: bool) -> AnnounceSnapshot {
        if self.operator.swap(withdrawn, Relaxed) != withdrawn {
            let text = if withdrawn {
                "node withdrawn from the routers by the operator"
            } else {
                "node's announcements restored by the operator"
            };
            info!(target: "tandem::announce", "{text}");
            daemon
                .shared
                .live
                .note(EventKind::Operator, &self.interface, text);
        }
        self.apply(daemon).await;
        self.snapshot()
    }

    /// What a successor needs to go on announcing (an upgrade): the device, described,
    /// its descriptor and the decision's state.
    pub(super) async fn handover(&self) -> std::io::Result<(Socket, OwnedFd, AnnounceState)> {
        let m = self.machine.lock().await;
        let fd = m.device.descriptor()?;
        let states = m.announcer.states();
        let state = AnnounceState {
            ready: self.ready.load(Relaxed),
            operator: self.operator.load(Relaxed),
            announced: m.announcer.announced(),
            unhealthy: states
                .iter()
                .filter(|s| !s.announced && matches!(s.reason, Reason::NoHealthyBackend(_)))
                .map(|s| s.address)
                .collect(),
        };
        let device = Socket::Announce {
            interface: self.interface.clone(),
        };
        Ok((device, fd, state))
    }

    /// The successor decides from now on: this process leaves the device alone (it
    /// closes its descriptor at exit; the successor's keeps the device).
    pub(super) async fn retire(&self) {
        let _m = self.machine.lock().await;
        self.handed_over.store(true, Relaxed);
    }

    /// Withdraws everything for good: the first step of a stop.
    pub(super) async fn stop(&self, daemon: &Daemon) {
        self.stopping.store(true, Relaxed);
        self.apply(daemon).await;
    }
}

/// Spawns the tasks that open the gate and follow health, reloads and delays.
pub(super) fn start(daemon: &Daemon, tasks: &Tasks, part: &Arc<Announcing>, gate: Gate) {
    let stop = tasks.stop().clone();
    if part.ready.load(Relaxed) {
        // Resumed from a predecessor that was ready: no gate to wait for.
        tasks.spawn(
            "announce",
            Until::Shutdown,
            follow(daemon.clone(), part.clone(), stop),
        );
        return;
    }
    let waiter = part.clone();
    let synced = daemon.sync().map(|s| s.synced());
    let health = daemon.health();
    let started = daemon.shared.started;
    let gate_stop = stop.clone();
    tasks.spawn("announce readiness gate", Until::Done, async move {
        let Some(ready) = readiness::wait(gate, synced, health, started, gate_stop).await else {
            return;
        };
        let text = ready
            .to_string()
            .replace("ready to preempt", "ready to announce");
        if ready.undecided.is_empty() {
            info!(target: "tandem::announce", "{text}");
        } else {
            warn!(target: "tandem::announce", "{text}");
        }
        waiter.ready.store(true, Relaxed);
        waiter.wake.notify_one();
    });
    tasks.spawn(
        "announce",
        Until::Shutdown,
        follow(daemon.clone(), part.clone(), stop),
    );
}

/// Decides again on every health transition, wake-up (the gate) and delay, and each
/// second (reloads change pools without a transition; failed netlink calls retry).
async fn follow(daemon: Daemon, part: Arc<Announcing>, stop: CancellationToken) {
    let mut changes = daemon.health().subscribe();
    loop {
        let deadline = part.apply(&daemon).await;
        let wait = deadline
            .map(|d| d.saturating_sub(part.started.elapsed()))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(1));
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            () = part.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::daemon::plan_reload;

    fn config(announce: &str) -> Config {
        let text = format!(
            "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.1.0.11:80\" }}]\n\n\
[[pool]]\nname = \"mail\"\nbackends = [{{ address = \"10.1.0.12:25\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"192.0.2.10:80\"]\npool = \"web\"\n\n\
[[service]]\nname = \"smtp\"\nlisten = [\"192.0.2.10:25\", \"192.0.2.11:25\"]\npool = \"mail\"\n\n{announce}"
        );
        Config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_address_is_behind_the_pools_of_the_services_on_it() {
        assert_eq!(
            targets(&config("[announce]\n")),
            [
                Target {
                    address: "192.0.2.10".parse().unwrap(),
                    pools: vec!["web".into(), "mail".into()],
                },
                Target {
                    address: "192.0.2.11".parse().unwrap(),
                    pools: vec!["mail".into()],
                },
            ]
        );
        assert!(targets(&config("")).is_empty());
    }

    #[test]
    fn a_new_interface_needs_a_restart_and_the_rest_reloads() {
        let old = config("[announce]\n");
        let delays = config("[announce]\nwithdraw_delay = \"1s\"\naddresses = [\"192.0.2.11\"]\n");
        assert!(plan_reload(&old, &delays).needs_restart.is_empty());
        let renamed = config("[announce]\ninterface = \"tdm-web\"\n");
        assert_eq!(
            plan_reload(&old, &renamed).needs_restart,
            ["announce.interface"]
        );
        assert_eq!(
            plan_reload(&config(""), &old).needs_restart,
            ["announce.interface"]
        );
    }
}
