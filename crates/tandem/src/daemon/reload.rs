//! Reloading: [`plan_reload`] decides from the old and the new configuration what
//! changes; [`Daemon::apply`] checks everything that can fail, then carries the plan
//! out without dropping a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tandem_balance::PoolSet;
use tandem_config::{Config, ConfigErrors, Mode};
use tandem_control::ReloadReply;
use tandem_health::Prober;
use tandem_proxy::Service;
use tracing::{error, info, warn};

use super::build::{BindError, bind_new, node_max_conns};
use super::start::{services_view, spawn_listener};
use super::{Daemon, sync_store};

/// Identifies a listener across reloads: its configured address, and for port 0 (any
/// free port, which several services may ask for) also its service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    /// The address as configured.
    pub address: SocketAddr,
    /// For port 0: the service it is bound for.
    pub ephemeral_for: Option<String>,
}

impl ListenKey {
    /// The key of `service`'s listener on `address`.
    pub fn new(service: &str, address: SocketAddr) -> ListenKey {
        ListenKey {
            address,
            ephemeral_for: (address.port() == 0).then(|| service.to_string()),
        }
    }
}

/// What applying a new configuration changes, decided from the two configurations.
/// Lists are in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Listeners to bind, with their service.
    pub bind: Vec<(ListenKey, String)>,
    /// Listeners that stay open with the same service.
    pub keep: Vec<(ListenKey, String)>,
    /// Listeners that stay open and pass to another service (the new one named).
    pub hand_over: Vec<(ListenKey, String)>,
    /// Listeners to close.
    pub close: Vec<ListenKey>,
    /// Relayed services that are new.
    pub services_added: Vec<String>,
    /// Relayed services that stay and take their new settings.
    pub services_updated: Vec<String>,
    /// Relayed services that go (their connections run on).
    pub services_removed: Vec<String>,
    /// Changed settings that apply only after a restart; the reload goes on.
    pub needs_restart: Vec<String>,
    /// Redirect services appear where there were none: the kernel data plane starts
    /// only with tandem, so the reload is refused unless it runs already.
    pub adds_redirect: bool,
}

/// Why a reload was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// There is no file to read again.
    #[error("this tandem was not started from a configuration file")]
    NoFile,
    /// The file is not a valid configuration.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// A pool's health check cannot be set up.
    #[error("pool {pool}: {reason}")]
    Check {
        /// The pool.
        pool: String,
        /// Why.
        reason: String,
    },
    /// A service's settings cannot be used (TLS material, HTTP rules).
    #[error("{0}")]
    Service(String),
    /// Redirect services were added to a tandem that started without them.
    #[error("redirect services were added: the kernel data plane starts with tandem, restart it")]
    RedirectAdded,
    /// A new listening address cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The health monitor refused the new pools.
    #[error("{0}")]
    Health(String),
}

/// The services tandem relays itself (redirect services are the kernel's).
pub(super) fn relayed(config: &Config) -> impl Iterator<Item = &tandem_config::Service> {
    config.services.iter().filter(|s| s.mode != Mode::Redirect)
}

/// Every listener `config` asks for, with its service.
fn listeners(config: &Config) -> Vec<(ListenKey, String)> {
    relayed(config)
        .flat_map(|s| {
            s.listen
                .iter()
                .map(|a| (ListenKey::new(&s.name, *a), s.name.clone()))
        })
        .collect()
}

/// Decides what a reload from `old` to `new` (both validated) changes.
pub fn plan_reload(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let open: HashMap<ListenKey, String> = listeners(old).into_iter().collect();
    let wanted = listeners(new);
    for (key, service) in &wanted {
        match open.get(key) {
            None => plan.bind.push((key.clone(), service.clone())),
            Some(s) if s == service => plan.keep.push((key.clone(), service.clone())),
            Some(_) => plan.hand_over.push((key.clone(), service.clone())),
        }
    }
    let wanted: HashMap<ListenKey, String> = wanted.into_iter().collect();
    plan.close = listeners(old)
        .into_iter()
        .filter(|(k, _)| !wanted.contains_key(k))
        .map(|(k, _)| k)
        .collect();
    let had = |name: &str| relayed(old).any(|s| s.name == name);
    for s in relayed(new) {
        if had(&s.name) {
            plan.services_updated.push(s.name.clone());
        } else {
            plan.services_added.push(s.name.clone());
        }
    }
    plan.services_removed = relayed(old)
        .filter(|s| !relayed(new).any(|n| n.name == s.name))
        .map(|s| s.name.clone())
        .collect();
    let (o, n) = (&old.global, &new.global);
    for (changed, key) in [
        (
            o.control_socket != n.control_socket,
            "global.control_socket",
        ),
        (o.admin_listen != n.admin_listen, "global.admin_listen"),
        (
            o.admin_write != n.admin_write || o.admin_allow != n.admin_allow,
            "global.admin_write",
        ),
        (o.log_format != n.log_format, "global.log_format"),
        // The worker threads are started once; an upgrade starts the new count.
        (o.threads != n.threads, "global.threads"),
        (old.ha != new.ha, "ha"),
        (old.sync != new.sync, "sync"),
        (o.user != n.user || o.group != n.group, "global.user"),
        (
            old.announce.as_ref().map(|a| &a.interface)
                != new.announce.as_ref().map(|a| &a.interface),
            "announce.interface",
        ),
    ] {
        if changed {
            plan.needs_restart.push(key.into());
        }
    }
    plan.adds_redirect = new.has_redirect() && !old.has_redirect();
    plan
}

impl Daemon {
    /// Reads the configuration file again and applies it (see [`Daemon::apply`]).
    /// A refused reload is an event of the status page's timeline.
    pub async fn reload(&self) -> Result<ReloadReply, ReloadError> {
        let path = self
            .shared
            .config_path
            .as_ref()
            .ok_or(ReloadError::NoFile)?;
        let result = match Config::load(path) {
            Ok(config) => {
                for w in &config.warnings {
                    warn!("{}", w.render(&path.display().to_string(), "warning: "));
                }
                self.apply(config).await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &result {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            self.shared.live.note(
                tandem_control::events::EventKind::Reload,
                &path.display().to_string(),
                format!("refused: {first}"),
            );
        }
        result
    }

    /// Applies a new, validated configuration without dropping connections: listeners
    /// of unchanged addresses stay open (moved to another service if need be), new
    /// ones are bound first (a failure leaves everything as it was), pools are rebuilt
    /// keeping backend state and sticky tables, health checks keep their state.
    /// Established connections run on with their backend.
    pub async fn apply(&self, config: Config) -> Result<ReloadReply, ReloadError> {
        let mut inner = self.shared.inner.lock().await;
        let old = self.shared.config.load_full();
        let plan = plan_reload(&old, &config);
        // Everything that can fail comes before any change.
        for p in &config.pools {
            if let Some(check) = &p.check {
                Prober::new(check).map_err(|reason| ReloadError::Check {
                    pool: p.name.clone(),
                    reason,
                })?;
            }
        }
        let mut prepared = HashMap::new();
        for s in relayed(&config) {
            let ready = Service::prepare(s.clone()).map_err(ReloadError::Service)?;
            prepared.insert(s.name.clone(), ready);
        }
        let redirect = self.redirect();
        if plan.adds_redirect && redirect.is_none() {
            return Err(ReloadError::RedirectAdded);
        }
        // The plan's new listeners, and any it keeps that is not open (after a failed
        // listener task): the open ones are the truth.
        let bound = bind_new(&config, |k| inner.listeners.contains_key(k))?;
        self.shared.life.limit.set_max(node_max_conns(&config));
        let pools = PoolSet::build(&config.pools, Some(&self.shared.pools.load()));
        inner
            .monitor
            .apply(&pools, &config.pools)
            .map_err(ReloadError::Health)?;
        self.shared.pools.store(Arc::new(pools));
        self.forget_runtime_changes();
        if let Some(sync) = self.sync() {
            sync_store::observe_sticky_tables(&sync, &self.pools(), &config.global.name);
        }
        // Services: update in place, add, remove.
        for name in &plan.services_updated {
            let ready = prepared.remove(name).expect("prepared above");
            match inner.services.get(name) {
                Some(existing) => existing.install(ready),
                None => {
                    let service = Service::new(ready, self.shared.pools.clone());
                    inner.services.insert(name.clone(), service);
                }
            }
        }
        for name in &plan.services_added {
            let ready = prepared.remove(name).expect("prepared above");
            let service = Service::new(ready, self.shared.pools.clone());
            inner.services.insert(name.clone(), service);
        }
        for name in &plan.services_removed {
            inner.services.remove(name);
        }
        // Listeners: keep, hand over to another service, or close.
        let mut report = ReloadReply {
            services_added: plan.services_added.clone(),
            services_removed: plan.services_removed.clone(),
            needs_restart: plan.needs_restart.clone(),
            ..ReloadReply::default()
        };
        let wanted: HashMap<&ListenKey, &str> = plan
            .keep
            .iter()
            .chain(&plan.hand_over)
            .map(|(k, s)| (k, s.as_str()))
            .collect();
        let mut current: Vec<ListenKey> = inner.listeners.keys().cloned().collect();
        current.sort();
        for key in current {
            let keep_for = wanted.get(&key).copied();
            if keep_for == Some(inner.listeners[&key].service.as_str()) {
                continue;
            }
            let l = inner.listeners.remove(&key).expect("listed");
            l.stop.cancel();
            match (l.task.join().await, keep_for) {
                (Ok(listener), Some(service)) => {
                    spawn_listener(&self.shared.life, &mut inner, key, service, listener)
                }
                (Ok(_), None) => report.listeners_closed.push(l.bound.to_string()),
                (Err(e), _) => {
                    error!(listener = %l.bound, "listener task failed: {e}; the next reload binds it again");
                }
            }
        }
        for (key, service, l) in bound {
            report
                .listeners_opened
                .push(l.local_addr().map_or(key.address, |a| a).to_string());
            spawn_listener(&self.shared.life, &mut inner, key, &service, l);
        }
        self.shared
            .services
            .store(Arc::new(services_view(&inner, &config)));
        if let Some(plane) = redirect
            && let Err(e) = plane.reload(&config, &self.shared.pools.load()).await
        {
            warn!(
                error = format!("{e:#}"),
                "the previous redirect rules stay until the kernel takes the new ones"
            );
        }
        self.shared.config.store(Arc::new(config));
        self.shared.reloads.fetch_add(1, Relaxed);
        info!(
            added = ?report.services_added,
            removed = ?report.services_removed,
            opened = ?report.listeners_opened,
            closed = ?report.listeners_closed,
            "configuration reloaded"
        );
        if !report.needs_restart.is_empty() {
            warn!(settings = ?report.needs_restart, "changed settings that apply only after a restart");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const POOLS: &str = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"127.0.0.1:8001\" }]\n\n\
[[pool]]\nname = \"api\"\nbackends = [{ address = \"127.0.0.1:8002\" }]\n\n";

    fn config(text: &str) -> Config {
        Config::parse(&format!("{POOLS}{text}"), "<test>", Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn service(name: &str, pool: &str, listen: &[&str]) -> String {
        let listen: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [{}]\npool = \"{pool}\"\n\n",
            listen.join(", ")
        )
    }

    fn key(address: &str) -> ListenKey {
        ListenKey::new("-", address.parse().unwrap())
    }

    fn keyed(address: &str, service: &str) -> (ListenKey, String) {
        (
            ListenKey::new(service, address.parse().unwrap()),
            service.into(),
        )
    }

    #[test]
    fn the_same_configuration_keeps_everything() {
        let c = config(&service(
            "www",
            "web",
            &["127.0.0.1:8080", "127.0.0.1:8443"],
        ));
        let plan = plan_reload(&c, &c);
        assert_eq!(
            plan,
            ReloadPlan {
                keep: vec![
                    keyed("127.0.0.1:8080", "www"),
                    keyed("127.0.0.1:8443", "www")
                ],
                services_updated: vec!["www".into()],
                ..ReloadPlan::default()
            }
        );
    }

    #[test]
    fn new_addresses_are_bound_and_removed_ones_closed() {
        let old = config(&service(
            "www",
            "web",
            &["127.0.0.1:8080", "127.0.0.1:8081"],
        ));
        let new = config(&service(
            "www",
            "web",
            &["127.0.0.1:8081", "127.0.0.1:8082"],
        ));
        let plan = plan_reload(&old, &new);
        assert_eq!(plan.bind, [keyed("127.0.0.1:8082", "www")]);
        assert_eq!(plan.keep, [keyed("127.0.0.1:8081", "www")]);
        assert_eq!(plan.close, [key("127.0.0.1:8080")]);
        assert!(plan.hand_over.is_empty() && plan.needs_restart.is_empty());
    }

    #[test]
    fn an_address_that_moves_to_another_service_stays_open() {
        let old = config(
            &(service("www", "web", &["127.0.0.1:8080"])
                + &service("api", "api", &["127.0.0.1:9090"])),
        );
        let new = config(
            &(service("www", "web", &["127.0.0.1:9090"])
                + &service("v2", "api", &["127.0.0.1:8080"])),
        );
        let plan = plan_reload(&old, &new);
        assert_eq!(
            plan.hand_over,
            [
                keyed("127.0.0.1:9090", "www"),
                keyed("127.0.0.1:8080", "v2")
            ]
        );
        assert!(plan.bind.is_empty() && plan.close.is_empty() && plan.keep.is_empty());
        assert_eq!(plan.services_added, ["v2"]);
        assert_eq!(plan.services_updated, ["www"]);
        assert_eq!(plan.services_removed, ["api"]);
    }

    #[test]
    fn port_zero_is_a_listener_per_service() {
        let old = config(&service("www", "web", &["127.0.0.1:0"]));
        let new = config(
            &(service("www", "web", &["127.0.0.1:0"]) + &service("api", "api", &["127.0.0.1:0"])),
        );
        let plan = plan_reload(&old, &new);
        assert_eq!(plan.keep, [keyed("127.0.0.1:0", "www")]);
        assert_eq!(plan.bind, [keyed("127.0.0.1:0", "api")]);
        let back = plan_reload(&new, &old);
        assert_eq!(
            back.close,
            [ListenKey::new("api", "127.0.0.1:0".parse().unwrap())]
        );
        assert_eq!(back.services_removed, ["api"]);
    }

    #[test]
    fn settings_that_need_a_restart_are_named_and_the_rest_applies() {
        let www = service("www", "web", &["127.0.0.1:8080"]);
        let old = config(&www);
        let new = config(&format!(
            "[global]\ncontrol_socket = \"/tmp/other.sock\"\nadmin_listen = \"127.0.0.1:9901\"\nlog_format = \"json\"\nthreads = 3\n\n\
[ha]\ninterface = \"eth0\"\nvrid = 51\npriority = 100\nvirtual_ips = [\"10.0.0.100/24\"]\n\n{www}"
        ));
        let plan = plan_reload(&old, &new);
        assert_eq!(
            plan.needs_restart,
            [
                "global.control_socket",
                "global.admin_listen",
                "global.log_format",
                "global.threads",
                "ha"
            ]
        );
        assert_eq!(plan.keep, [keyed("127.0.0.1:8080", "www")]);
        assert!(!plan.adds_redirect);
    }

    #[test]
    fn redirect_services_bind_nothing_and_their_arrival_is_flagged() {
        let www = service("www", "web", &["127.0.0.1:8080"]);
        let old = config(&www);
        let new = config(&format!(
            "{www}[[service]]\nname = \"imap\"\nlisten = [\"10.0.0.100:143\"]\nmode = \"redirect\"\nreturn_path = \"snat\"\npool = \"api\"\n\n"
        ));
        let plan = plan_reload(&old, &new);
        assert!(plan.adds_redirect);
        assert!(plan.bind.is_empty(), "the kernel forwards them: {plan:?}");
        assert_eq!(plan.services_added, Vec::<String>::new());
        assert!(!plan_reload(&new, &new).adds_redirect);
        assert!(!plan_reload(&new, &old).adds_redirect);
    }
}
