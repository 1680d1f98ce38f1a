//! VRRP wiring: the settings from `[ha]`, and the tasks that tie the router to the
//! pools (tracked pools demote it), to the readiness gate (no preemption before the
//! node is ready), to sync (a peer's exit) and to the redirect plane (conntrackd).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_health::HealthBoard;
use tandem_vrrp::linux::{GroupSettings, HaSettings, Vrrp};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use super::tasks::{Tasks, Until};
use crate::readiness::{self, Gate};

/// The VRRP settings of each instance of `[ha]`, in order.
pub(super) fn all_settings(config: &tandem_config::Config) -> Vec<HaSettings> {
    config
        .ha
        .iter()
        .map(|ha| {
            let mut s = settings(ha);
            s.sibling_vrids = config
                .ha
                .iter()
                .filter(|o| o.interface == ha.interface && o.vrid != ha.vrid)
                .map(|o| o.vrid)
                .collect();
            s
        })
        .collect()
}

/// The VRRP settings of one instance, IPv4 or IPv6 (the validator keeps a router to
/// one family; the router refuses a mix too).
pub(super) fn settings(ha: &tandem_config::Ha) -> HaSettings {
    HaSettings {
        interface: ha.interface.clone(),
        vrid: ha.vrid,
        priority: ha.priority,
        interval: ha.advert_interval,
        preempt: ha.preempt,
        preempt_delay: ha.preempt_delay,
        virtual_ips: ha.virtual_ips.clone(),
        unicast_peers: ha.unicast_peers.clone(),
        notify: ha.notify.clone(),
        pseudo_header: ha.checksum_pseudo_header,
        group: ha
            .group
            .iter()
            .map(|g| GroupSettings {
                interface: g.interface.clone(),
                virtual_ips: g.virtual_ips.clone(),
            })
            .collect(),
        garp_refresh: ha.garp_refresh,
        sibling_vrids: Vec::new(),
    }
}

/// The instance whose state the redirect plane (conntrackd's primary/backup role)
/// follows: the one holding the first redirect service's address (in file order),
/// else the first instance. conntrackd is one process per node, so one instance
/// leads it; redirect services are best kept on that instance's addresses.
pub(super) fn redirect_instance(config: &tandem_config::Config) -> Option<usize> {
    if config.ha.is_empty() {
        return None;
    }
    let holder = config
        .services
        .iter()
        .filter(|s| s.mode == tandem_config::Mode::Redirect)
        .flat_map(|s| s.listen.iter())
        .find_map(|a| config.ha.iter().position(|h| h.holds(a.ip())));
    Some(holder.unwrap_or(0))
}

/// Spawns, for each VRRP instance of `daemon`, the tasks that tie its router to the
/// rest of the daemon; `gate`, when preemption is held until the node is ready,
/// releases each instance.
pub(super) fn start(daemon: &Daemon, tasks: &Tasks, gate: Option<Gate>) {
    let followed = daemon.redirect_leader();
    for (i, vrrp) in daemon.vrrp().iter().enumerate() {
        start_instance(daemon, tasks, i, vrrp, gate.clone(), Some(i) == followed);
    }
}

/// The tasks of instance `index` (the redirect plane follows it when `leads_redirect`).
fn start_instance(
    daemon: &Daemon,
    tasks: &Tasks,
    index: usize,
    vrrp: &Arc<Vrrp>,
    gate: Option<Gate>,
    leads_redirect: bool,
) {
    let stop = tasks.stop().clone();
    if leads_redirect && let Some(plane) = daemon.redirect() {
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
        track_pools(daemon.clone(), index, vrrp.clone(), stop),
    );
}

/// Holds VRRP preemption until `gate` says the node is ready (sticky tables synced,
/// checks of the served and tracked pools decided, or their bound passed), then logs
/// what it waited for and lets preemption go.
async fn hold_until_ready(
    gate: Gate,
    vrrp: Arc<Vrrp>,
    synced: Option<tokio::sync::watch::Receiver<bool>>,
    health: Arc<HealthBoard>,
    started: Instant,
    stop: CancellationToken,
) {
    let Some(ready) = readiness::wait(gate, synced, health, started, stop).await else {
        return;
    };
    let status = vrrp.status();
    let instance = format!("{} vrid {}", status.interface, status.vrid);
    if ready.undecided.is_empty() {
        info!(target: "tandem::vrrp", "{ready}: VRRP {instance} may preempt");
    } else {
        warn!(target: "tandem::vrrp", "{ready}: VRRP {instance} may preempt");
    }
    vrrp.hold_preempt(false).await;
}

/// The demotions of instance `ha` now: each tracked pool none of whose backends is up
/// (its checks say down, or its agent says "down"), with its weight.
fn demotions(ha: Option<&tandem_config::Ha>, pools: &tandem_balance::PoolSet) -> Vec<(String, u8)> {
    ha.into_iter()
        .flat_map(|ha| ha.track_pools.iter())
        .filter(|(name, _)| {
            pools
                .get(name)
                .is_some_and(|p| !p.backends.iter().any(|b| b.state.is_up()))
        })
        .map(|(name, weight)| (format!("pool {name} has no healthy backend"), *weight))
        .collect()
}

/// Demotes the VRRP priority of instance `index` while a pool it tracks has no
/// healthy backend (the agent check's "down" counts as down; each second too, as an
/// agent's answer is no health transition).
async fn track_pools(daemon: Daemon, index: usize, vrrp: Arc<Vrrp>, stop: CancellationToken) {
    let mut changes = daemon.health().subscribe();
    loop {
        let demotions = demotions(daemon.config().ha.get(index), &daemon.pools());
        vrrp.set_demotions(demotions).await;
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            // Reloads can change pools without a health transition.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::net::Ipv4Addr;

    use tandem_config::Config;

    use super::*;

    fn ha(section: &str) -> tandem_config::Ha {
        let text = format!(
            "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"127.0.0.1:8001\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:8080\"]\npool = \"web\"\n\n{section}"
        );
        let config =
            Config::parse(&text, "<test>", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        config.ha.into_iter().next().expect("[ha]")
    }

    #[test]
    fn every_ha_key_reaches_the_router() {
        let settings = settings(&ha(
            "[ha]\ninterface = \"eth0\"\nvrid = 51\npriority = 150\n\
advert_interval = \"200ms\"\npreempt = false\npreempt_delay = \"3s\"\n\
virtual_ips = [\"10.0.0.100/24\", \"10.0.0.101/32\"]\nunicast_peers = [\"10.0.0.2\"]\n\
notify = \"/bin/true\"\nchecksum_pseudo_header = false\ngarp_refresh = \"30s\"\n\n\
[[ha.group]]\ninterface = \"eth1\"\nvirtual_ips = [\"10.1.0.1/24\"]\n",
        ));
        assert_eq!(
            settings,
            HaSettings {
                interface: "eth0".into(),
                vrid: 51,
                priority: 150,
                interval: Duration::from_millis(200),
                preempt: false,
                preempt_delay: Duration::from_secs(3),
                virtual_ips: vec![
                    (Ipv4Addr::new(10, 0, 0, 100).into(), 24),
                    (Ipv4Addr::new(10, 0, 0, 101).into(), 32)
                ],
                unicast_peers: vec![Ipv4Addr::new(10, 0, 0, 2).into()],
                notify: Some("/bin/true".into()),
                pseudo_header: false,
                group: vec![GroupSettings {
                    interface: "eth1".into(),
                    virtual_ips: vec![(Ipv4Addr::new(10, 1, 0, 1).into(), 24)],
                }],
                garp_refresh: Some(Duration::from_secs(30)),
                sibling_vrids: Vec::new(),
            }
        );
    }

    fn config(services: &str, section: &str) -> Config {
        let text = format!(
            "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.1.0.5:80\" }}]\n\n{services}\n{section}"
        );
        Config::parse(&text, "<test>", Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    const THREE: &str = "[ha]\n\n\
[[ha.instance]]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"10.0.0.100/24\"]\n\n\
[[ha.instance]]\ninterface = \"eth0\"\nvrid = 52\nvirtual_ips = [\"10.0.0.101/24\"]\n\n\
[[ha.instance]]\ninterface = \"eth1\"\nvrid = 51\nvirtual_ips = [\"10.9.0.100/24\"]\n\n\
[[ha.instance.group]]\ninterface = \"eth2\"\nvirtual_ips = [\"10.1.0.1/24\"]\n";

    #[test]
    fn each_instance_ignores_its_siblings_on_the_same_interface() {
        let www = "[[service]]\nname = \"www\"\nlisten = [\"10.0.0.100:80\"]\npool = \"web\"\n";
        let all = all_settings(&config(www, THREE));
        let siblings: Vec<(u8, Vec<u8>)> = all
            .iter()
            .map(|s| (s.vrid, s.sibling_vrids.clone()))
            .collect();
        assert_eq!(siblings, vec![(51, vec![52]), (52, vec![51]), (51, vec![])]);
    }

    #[test]
    fn the_redirect_plane_follows_the_instance_of_the_first_redirect_address() {
        let tcp = "[[service]]\nname = \"www\"\nlisten = [\"10.0.0.100:80\"]\npool = \"web\"\n";
        assert_eq!(
            redirect_instance(&config(tcp, THREE)),
            Some(0),
            "none: the first"
        );
        let redirect = format!(
            "{tcp}\n[[service]]\nname = \"smtp\"\nlisten = [\"10.9.0.100:25\"]\nmode = \"redirect\"\npool = \"web\"\n"
        );
        assert_eq!(redirect_instance(&config(&redirect, THREE)), Some(2));
        let no_ha = config(tcp, "");
        assert_eq!(redirect_instance(&no_ha), None);
    }

    #[test]
    fn a_tracked_pool_whose_agents_say_down_demotes_like_a_failed_check() {
        let c = config(
            "[[service]]\nname = \"www\"\nlisten = [\"10.0.0.100:80\"]\npool = \"web\"\n",
            "[ha]
interface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"10.0.0.100/24\"]\ntrack_pools = { web = 30 }\n",
        );
        let pools = tandem_balance::PoolSet::build(&c.pools, None);
        let backend = &pools.get("web").unwrap().backends[0];
        assert!(demotions(c.ha.first(), &pools).is_empty());
        let said = |agent| {
            backend.state.set_agent(agent);
            demotions(c.ha.first(), &pools)
        };
        let down = tandem_balance::Agent {
            down: true,
            ..tandem_balance::Agent::READY
        };
        assert_eq!(
            said(down),
            [("pool web has no healthy backend".to_string(), 30)]
        );
        // Drain and maint take no new connections but leave the backend up.
        let drain = tandem_balance::Agent {
            drain: true,
            maint: true,
            ..tandem_balance::Agent::READY
        };
        assert!(said(drain).is_empty());
        assert!(said(tandem_balance::Agent::READY).is_empty());
        backend.state.set_healthy(false);
        assert_eq!(said(tandem_balance::Agent::READY).len(), 1);
    }

    #[test]
    fn an_ipv6_router_reaches_the_router_as_ipv6() {
        let settings = settings(&ha(
            "[ha]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"fe80::10/64\", \"2001:db8::10/64\"]\nunicast_peers = [\"fe80::2\"]\n",
        ));
        let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            settings.virtual_ips,
            vec![(v6("fe80::10"), 64), (v6("2001:db8::10"), 64)]
        );
        assert_eq!(settings.unicast_peers, vec![v6("fe80::2")]);
    }
}
