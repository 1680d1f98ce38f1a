//! Runtime control: what `tandem ctl` changes without a reload. Weights and added or
//! removed backends make a new pool generation from the pools as last changed (kept
//! until the next reload, which builds them from the file again); sticky entries are
//! shown and cleared (the peer told over sync); relayed connections are listed and
//! closed; VRRP hands master over for maintenance; agents' weights rebuild the pools.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tandem_balance::{PoolSet, now_ms, unix_ms};
use tandem_config::BackendConfig;
use tandem_control::events::EventKind;
use tandem_control::{
    BackendChangeReply, ConnectionSnapshot, HaInstances, StickyClearReply, StickyFilter,
    StickySnapshot,
};
use tandem_sync::Change;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BackendError, Daemon};

/// How long a runtime change lasts, as replies say it.
pub const UNTIL_RELOAD: &str =
    "until the next reload (the configuration file is not changed: edit it to keep this)";

/// How many kept events a `monitor` answer starts with.
const MONITOR_BACKLOG: usize = 10;

/// Why a runtime command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// A pool or backend that is not there, or an address that does not parse.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The weight is out of range.
    #[error("weight {0} is out of range: use 1 to 256 (disable the backend instead of weight 0)")]
    Weight(u32),
    /// The backend is in the pool already.
    #[error("pool {pool} has a backend {address} already")]
    Exists {
        /// The pool.
        pool: String,
        /// The address.
        address: SocketAddr,
    },
    /// Removing it would leave the pool empty.
    #[error(
        "{address} is the last backend of pool {pool}: disable it instead (tandem ctl backend disable)"
    )]
    LastBackend {
        /// The pool.
        pool: String,
        /// The address.
        address: SocketAddr,
    },
    /// A filter does not parse.
    #[error("{0:?} is not an IP address")]
    BadClient(String),
    /// No connection has this number.
    #[error("no open connection has id {0} (see tandem ctl connections)")]
    NoConnection(u64),
    /// No `[ha]` section.
    #[error("this tandem runs no VRRP ([ha] is not configured)")]
    NoHa,
    /// The health monitor refused the new pools.
    #[error("{0}")]
    Health(String),
}

/// A change to one pool's backends.
enum Edit {
    Weight(u32),
    Add(BackendConfig),
    Remove,
}

impl Daemon {
    /// Changes one backend of `pool` and builds a new generation of the pools from
    /// them as last changed at run time; returns the reply.
    async fn edit_backend(
        &self,
        pool: &str,
        address: &str,
        edit: Edit,
    ) -> Result<BackendChangeReply, RuntimeError> {
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| BackendError::BadAddress(address.to_string()))?;
        let mut inner = self.shared.inner.lock().await;
        let mut configs = self.current_pools();
        let p = configs
            .iter_mut()
            .find(|p| p.name == pool)
            .ok_or_else(|| BackendError::NoPool(pool.to_string()))?;
        let at = p.backends.iter().position(|b| b.address == addr);
        let no_backend = || BackendError::NoBackend {
            pool: pool.to_string(),
            address: addr,
        };
        let change = match edit {
            Edit::Weight(w) => {
                if !(1..=256).contains(&w) {
                    return Err(RuntimeError::Weight(w));
                }
                let b = &mut p.backends[at.ok_or_else(no_backend)?];
                let change = format!("weight {} -> {w}", b.weight);
                b.weight = w;
                change
            }
            Edit::Add(b) => {
                if at.is_some() {
                    return Err(RuntimeError::Exists {
                        pool: pool.to_string(),
                        address: addr,
                    });
                }
                if !(1..=256).contains(&b.weight) {
                    return Err(RuntimeError::Weight(b.weight));
                }
                p.backends.push(b);
                "added".to_string()
            }
            Edit::Remove => {
                let i = at.ok_or_else(no_backend)?;
                if p.backends.len() == 1 {
                    return Err(RuntimeError::LastBackend {
                        pool: pool.to_string(),
                        address: addr,
                    });
                }
                p.backends.remove(i);
                "removed".to_string()
            }
        };
        let old = self.shared.pools.load_full();
        let draining = old
            .get(pool)
            .and_then(|p| p.backend(&addr))
            .map_or(0, |b| u64::from(b.state.active()));
        let pools = PoolSet::build(&configs, Some(&old));
        inner
            .monitor
            .apply(&pools, &configs)
            .map_err(RuntimeError::Health)?;
        self.shared.pools.store(Arc::new(pools));
        *self
            .shared
            .runtime_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(configs);
        drop(inner);
        info!(pool, backend = %addr, "backend {change} by the operator, {UNTIL_RELOAD}");
        self.shared.live.note(
            EventKind::Operator,
            &format!("{pool}/{addr}"),
            change.clone(),
        );
        let pools = self.pools();
        let backend = pools
            .get(pool)
            .and_then(|p| p.backend(&addr))
            .map(|b| self.backend_snapshot(pool, b));
        Ok(BackendChangeReply {
            pool: pool.to_string(),
            address: addr.to_string(),
            draining: if backend.is_none() { draining } else { 0 },
            change,
            backend,
            lasts: UNTIL_RELOAD.to_string(),
        })
    }

    /// `tandem ctl backend weight`.
    pub async fn set_backend_weight(
        &self,
        pool: &str,
        address: &str,
        weight: u32,
    ) -> Result<BackendChangeReply, RuntimeError> {
        self.edit_backend(pool, address, Edit::Weight(weight)).await
    }

    /// `tandem ctl backend add`.
    pub async fn add_backend(
        &self,
        pool: &str,
        address: &str,
        weight: Option<u32>,
        backup: bool,
        max_conns: u32,
    ) -> Result<BackendChangeReply, RuntimeError> {
        let parsed: SocketAddr = address
            .parse()
            .map_err(|_| BackendError::BadAddress(address.to_string()))?;
        let b = BackendConfig {
            address: parsed,
            weight: weight.unwrap_or(1),
            max_conns,
            backup,
        };
        self.edit_backend(pool, address, Edit::Add(b)).await
    }

    /// `tandem ctl backend remove`: no new connections; established ones finish.
    pub async fn remove_backend(
        &self,
        pool: &str,
        address: &str,
    ) -> Result<BackendChangeReply, RuntimeError> {
        self.edit_backend(pool, address, Edit::Remove).await
    }

    /// The pools as they run: as configured, with the runtime changes since the last
    /// reload.
    fn current_pools(&self) -> Vec<tandem_config::Pool> {
        self.shared
            .runtime_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| self.config().pools.clone())
    }

    /// Forgets the runtime changes (a reload built the pools from the file).
    pub(super) fn forget_runtime_changes(&self) {
        *self
            .shared
            .runtime_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The sticky entries matching `filter`, by pool then client.
    pub fn sticky_entries(
        &self,
        filter: &StickyFilter,
    ) -> Result<Vec<StickySnapshot>, RuntimeError> {
        let (client, backend) = parse_filter(filter)?;
        let (now, unix) = (now_ms(), unix_ms());
        let mut out: Vec<StickySnapshot> = self
            .pools()
            .live_pins(now)
            .into_iter()
            .filter(|(pool, c, e)| {
                filter.pool.as_deref().is_none_or(|p| p == *pool)
                    && client.is_none_or(|want| want == *c)
                    && backend.is_none_or(|want| want == e.backend)
            })
            .map(|(pool, c, e)| StickySnapshot {
                pool: pool.to_string(),
                client: c.to_string(),
                backend: e.backend.to_string(),
                expires_in_secs: e.expires.saturating_sub(now) / 1000,
                pinned_secs_ago: unix.saturating_sub(e.pinned_at) / 1000,
            })
            .collect();
        out.sort_by(|a, b| (&a.pool, &a.client).cmp(&(&b.pool, &b.client)));
        Ok(out)
    }

    /// Removes the sticky entries matching `filter`; each removal goes to the sync
    /// peers as a delete, so the pair forgets the pin.
    pub fn clear_sticky(&self, filter: &StickyFilter) -> Result<StickyClearReply, RuntimeError> {
        let (client, backend) = parse_filter(filter)?;
        if let Some(p) = &filter.pool
            && self.pools().get(p).is_none()
        {
            return Err(BackendError::NoPool(p.clone()).into());
        }
        let pools = self.pools();
        let sync = self.sync();
        let mut cleared = 0u64;
        for (pool, c, e) in pools.live_pins(now_ms()) {
            if filter.pool.as_deref().is_some_and(|p| p != pool)
                || client.is_some_and(|want| want != c)
                || backend.is_some_and(|want| want != e.backend)
            {
                continue;
            }
            let Some(table) = pools.get(pool).and_then(|p| p.sticky.as_ref()) else {
                continue;
            };
            if table.remove(&c).is_some() {
                cleared += 1;
                if let Some(sync) = &sync {
                    sync.publish(Change::Delete(pool.to_string(), c));
                }
            }
        }
        info!(cleared, filter = ?filter, "sticky entries cleared by the operator");
        self.shared.live.note(
            EventKind::Operator,
            filter.pool.as_deref().unwrap_or("sticky"),
            format!("{cleared} sticky entries cleared"),
        );
        Ok(StickyClearReply {
            cleared,
            synced: sync.is_some(),
        })
    }

    /// The relayed connections open now (of `service` only, when given), oldest first.
    pub fn connections(&self, service: Option<&str>) -> Vec<ConnectionSnapshot> {
        let mut out: Vec<ConnectionSnapshot> = self
            .services()
            .iter()
            .filter(|s| service.is_none_or(|want| s.service.config.load().name == want))
            .flat_map(|s| {
                let name = s.service.config.load().name.clone();
                s.service
                    .connections
                    .list()
                    .into_iter()
                    .map(move |c| snapshot_of(&name, &c))
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Closes connection `id`: its relay ends and both sockets close.
    pub fn close_connection(&self, id: u64) -> Result<ConnectionSnapshot, RuntimeError> {
        for s in self.services().iter() {
            let Some(c) = s.service.connections.close(id) else {
                continue;
            };
            let name = s.service.config.load().name.clone();
            info!(service = %name, client = %c.client, backend = %c.backend, id, "connection closed by the operator");
            self.shared.live.note(
                EventKind::Operator,
                &name,
                format!("connection {id} from {} closed", c.client),
            );
            return Ok(snapshot_of(&name, &c));
        }
        Err(RuntimeError::NoConnection(id))
    }

    /// The latest kept events, which a `monitor` answer starts with.
    pub fn recent_events(&self) -> Vec<tandem_control::events::Event> {
        let all = self.shared.live.events.all();
        all[all.len().saturating_sub(MONITOR_BACKLOG)..].to_vec()
    }

    /// Subscribes to the event log.
    pub(super) fn follow_events(
        &self,
    ) -> tokio::sync::broadcast::Receiver<tandem_control::events::Event> {
        self.shared.live.events.subscribe()
    }

    /// `ha demote` (maintenance on) or `ha restore`: for every virtual router of this
    /// node; returns the VRRP state once the router took the new priority (or after a
    /// second).
    pub async fn ha_maintenance(&self, on: bool) -> Result<HaInstances, RuntimeError> {
        let routers = self.vrrp();
        if routers.is_empty() {
            return Err(RuntimeError::NoHa);
        }
        for vrrp in routers {
            vrrp.set_maintenance(on).await;
        }
        for _ in 0..20 {
            let in_maintenance = |s: tandem_vrrp::linux::Status| {
                s.effective_priority == 1
                    && s.demotions
                        .iter()
                        .any(|(why, _)| why.starts_with("maintenance"))
            };
            if routers.iter().all(|v| in_maintenance(v.status()) == on) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let what = if on {
            "maintenance: priority 1, master handed over"
        } else {
            "maintenance over: configured priority"
        };
        info!(target: "tandem::vrrp", "{what} (by the operator)");
        self.shared.live.note(EventKind::Operator, "ha", what);
        Ok(self.snapshot().ha)
    }
}

fn snapshot_of(service: &str, c: &tandem_proxy::connections::Connection) -> ConnectionSnapshot {
    let (to_backend, to_client) = c.bytes();
    ConnectionSnapshot {
        id: c.id,
        service: service.to_string(),
        client: c.client.to_string(),
        pool: c.pool.clone(),
        backend: c.backend.to_string(),
        age_secs: c.age().as_secs(),
        bytes_to_backend: to_backend,
        bytes_to_client: to_client,
    }
}

/// The client and backend filters, parsed.
fn parse_filter(
    filter: &StickyFilter,
) -> Result<(Option<IpAddr>, Option<SocketAddr>), RuntimeError> {
    let client = filter
        .client
        .as_deref()
        .map(|c| {
            c.parse()
                .map_err(|_| RuntimeError::BadClient(c.to_string()))
        })
        .transpose()?;
    let backend = filter
        .backend
        .as_deref()
        .map(|b| {
            b.parse()
                .map_err(|_| BackendError::BadAddress(b.to_string()))
        })
        .transpose()?;
    Ok((client, backend))
}

/// Builds a new pool generation each time an agent changes a backend's weight (its
/// percentage scales the configured weight when the pools are built), until `stop`.
pub(super) async fn follow_agent_weights(daemon: Daemon, stop: CancellationToken) {
    let mut changes = daemon.health().weight_changes();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
        let inner = daemon.shared.inner.lock().await;
        let configs = daemon.current_pools();
        let pools = PoolSet::build(&configs, Some(&daemon.shared.pools.load()));
        daemon.shared.pools.store(Arc::new(pools));
        drop(inner);
        if changes.has_changed().is_err() {
            warn!("agent weights: the health board is gone");
            return;
        }
    }
}
