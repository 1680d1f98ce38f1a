//! A running tandem: listeners, pools, services, and their orderly end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tandem_balance::{PoolSet, now_ms};
use tandem_config::Config;
use tandem_health::{HealthBoard, Monitor};
use tandem_proxy::{Lifecycle, Service, listener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// How often expired sticky entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A service and the addresses its listeners are bound to.
#[derive(Debug)]
pub struct RunningService {
    /// The service.
    pub service: Arc<Service>,
    /// Bound addresses (with the real port where the config said 0).
    pub bound: Vec<SocketAddr>,
}

/// A running balancer.
#[derive(Debug)]
pub struct Daemon {
    config: Arc<Config>,
    pools: Arc<ArcSwap<PoolSet>>,
    services: Vec<RunningService>,
    life: Lifecycle,
    background: CancellationToken,
    accept_loops: Vec<JoinHandle<()>>,
    monitor: Monitor,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when accepting stopped.
    pub open_at_start: u64,
    /// Connections still open at the deadline, closed by tandem.
    pub closed_at_deadline: u64,
}

impl Daemon {
    /// Binds every listener (failing as a whole if one cannot be bound), then starts
    /// accepting.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let pools = Arc::new(ArcSwap::from_pointee(PoolSet::build(&config.pools, None)));
        let mut monitor = Monitor::new();
        monitor
            .apply(&pools.load(), &config.pools)
            .map_err(|e| anyhow::anyhow!("health checks: {e}"))?;
        let life = Lifecycle {
            stop_accepting: CancellationToken::new(),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let mut services = Vec::new();
        let mut listeners = Vec::new();
        for s in &config.services {
            let service = Service::new(s.clone(), pools.clone());
            let mut bound = Vec::new();
            for &address in &s.listen {
                let l = listener::bind(address)
                    .with_context(|| format!("service {}: cannot listen on {address}", s.name))?;
                bound.push(l.local_addr()?);
                listeners.push((service.clone(), l));
            }
            services.push(RunningService { service, bound });
        }
        let accept_loops = listeners
            .into_iter()
            .map(|(service, l)| tokio::spawn(service.serve(l, life.clone())))
            .collect();
        let background = CancellationToken::new();
        tokio::spawn(sweep_sticky_tables(pools.clone(), background.clone()));
        for s in &services {
            let c = s.service.config.load();
            let addrs: Vec<String> = s.bound.iter().map(ToString::to_string).collect();
            info!(service = %c.name, pool = %c.pool, listen = %addrs.join(","), "service ready");
        }
        Ok(Daemon {
            config: Arc::new(config),
            pools,
            services,
            life,
            background,
            accept_loops,
            monitor,
        })
    }

    /// The configuration running now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current pool generation.
    pub fn pools(&self) -> Arc<PoolSet> {
        self.pools.load_full()
    }

    /// Health of every checked backend, and the stream of transitions.
    pub fn health(&self) -> Arc<HealthBoard> {
        self.monitor.board()
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&RunningService> {
        self.services
            .iter()
            .find(|s| s.service.config.load().name == name)
    }

    /// Every service.
    pub fn services(&self) -> &[RunningService] {
        &self.services
    }

    /// Connections open now, over all services.
    pub fn open_connections(&self) -> u64 {
        self.services
            .iter()
            .map(|s| {
                s.service
                    .stats
                    .active
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// Stops accepting (listeners close, new connections are refused), lets open
    /// connections finish until `deadline`, then closes what is left.
    pub async fn shutdown(mut self, deadline: Duration) -> DrainReport {
        self.life.stop_accepting.cancel();
        for l in std::mem::take(&mut self.accept_loops) {
            let _ = l.await;
        }
        let open_at_start = self.open_connections();
        if open_at_start > 0 {
            info!(open = open_at_start, deadline = ?deadline, "draining: accepting stopped, waiting for open connections");
        }
        self.life.tracker.close();
        let closed_at_deadline =
            match tokio::time::timeout(deadline, self.life.tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => {
                    let left = self.open_connections();
                    info!(
                        left,
                        "drain deadline passed: closing the remaining connections"
                    );
                    self.life.close_all.cancel();
                    self.life.tracker.wait().await;
                    left
                }
            };
        self.background.cancel();
        self.monitor.stop();
        DrainReport {
            open_at_start,
            closed_at_deadline,
        }
    }
}

async fn sweep_sticky_tables(pools: Arc<ArcSwap<PoolSet>>, stop: CancellationToken) {
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
