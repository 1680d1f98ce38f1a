//! The daemon's side of redirect services: keeps tandem's nftables table equal to the
//! live state of the pools (health, drain, reload), and runs conntrackd through the
//! VRRP transitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tandem_balance::{Balance, PoolSet, state_epoch};
use tandem_config::{Config, Mode, ReturnPath};
use tandem_redirect::{ConntrackSettings, Conntrackd, Forward, Nft, Spread, Target};
use tandem_vrrp::State;
use tandem_vrrp::linux::Takeover;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the pools' state epoch is compared with the applied rules.
const POLL: Duration = Duration::from_millis(100);

/// The forwards of `config`'s redirect services over the live backends of `pools`:
/// usable primaries, else usable backups, else the fallback pool's.
pub fn forwards(config: &Config, pools: &PoolSet) -> Vec<Forward> {
    let mut out = Vec::new();
    for s in config.services.iter().filter(|s| s.mode == Mode::Redirect) {
        let Some(pool_config) = config.pool(&s.pool) else {
            continue;
        };
        let spread = match pool_config.balance {
            Balance::SourceHash => Spread::SourceHash,
            Balance::Random => Spread::Random,
            _ => Spread::RoundRobin,
        };
        let targets: Vec<Target> = pools
            .serving(&s.pool)
            .iter()
            .map(|b| Target {
                address: b.address,
                weight: b.weight.max(1),
            })
            .collect();
        for listen in &s.listen {
            out.push(Forward {
                service: s.name.clone(),
                listen: *listen,
                spread,
                targets: targets.clone(),
                snat: s.return_path == ReturnPath::Snat,
            });
        }
    }
    out
}

/// Every configured backend as a target: what `tandem check` checks the host for.
pub fn configured_forwards(config: &Config) -> Vec<Forward> {
    forwards(config, &PoolSet::build(&config.pools, None))
}

/// The kernel data plane of a running daemon.
#[derive(Debug)]
pub struct RedirectPlane {
    nft: Nft,
    applied: std::sync::Mutex<Option<Vec<Forward>>>,
    wake: Notify,
    conntrackd: tokio::sync::Mutex<Option<Conntrackd>>,
    /// The configuration whose redirect services the rules follow.
    config: std::sync::Mutex<Arc<Config>>,
    /// conntrackd's state as last asked (every 5 s), for status and metrics.
    last_conntrack: std::sync::Mutex<Option<tandem_redirect::ConntrackStatus>>,
    /// conntrackd's settings while the predecessor's conntrackd runs (an upgrade):
    /// started by [`RedirectPlane::resume_state_sync`].
    deferred: std::sync::Mutex<Option<ConntrackSettings>>,
    /// A successor keeps the table (an upgrade): this process no longer changes it.
    handed_over: std::sync::atomic::AtomicBool,
}

impl RedirectPlane {
    /// Checks the host and installs the table for `config` over `pools` (replacing a
    /// stale one); [`RedirectPlane::follow`] then keeps it in step. `inherited`: the
    /// [`tandem_redirect::rules::fingerprint`] of the table a predecessor left (an
    /// upgrade); when the same rules are wanted, the table is kept as it is.
    pub async fn start(
        config: &Config,
        pools: &PoolSet,
        inherited: Option<&str>,
    ) -> anyhow::Result<Arc<RedirectPlane>> {
        let nft = Nft::default();
        let wanted = forwards(config, pools);
        let conntrackd = conntrackd_program(config);
        let problems = tandem_redirect::preflight(&wanted, &nft, conntrackd.as_deref());
        if !problems.is_empty() {
            anyhow::bail!(
                "redirect services cannot run here:\n  {}",
                problems.join("\n  ")
            );
        }
        let plane = Arc::new(RedirectPlane {
            nft,
            applied: std::sync::Mutex::new(None),
            wake: Notify::new(),
            conntrackd: tokio::sync::Mutex::new(None),
            config: std::sync::Mutex::new(Arc::new(config.clone())),
            last_conntrack: std::sync::Mutex::new(None),
            deferred: std::sync::Mutex::new(None),
            handed_over: Default::default(),
        });
        if inherited.is_some_and(|rules| rules == tandem_redirect::rules::fingerprint(&wanted)) {
            info!(target: "tandem::redirect", "nftables table kept as the previous tandem left it");
            *plane.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(wanted);
            return Ok(plane);
        }
        plane
            .sync_rules(config, pools)
            .await
            .context("installing the nftables table")?;
        Ok(plane)
    }

    /// Applies the rules for the pools' state now when they differ from the applied ones.
    async fn sync_rules(&self, config: &Config, pools: &PoolSet) -> anyhow::Result<()> {
        if self.handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let wanted = forwards(config, pools);
        if self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            == Some(&wanted)
        {
            return Ok(());
        }
        let nft = self.nft.clone();
        let rules = wanted.clone();
        tokio::task::spawn_blocking(move || nft.apply(&rules)).await??;
        for f in &wanted {
            info!(target: "tandem::redirect", "rules: {}", tandem_redirect::rules::describe(f));
        }
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(wanted);
        Ok(())
    }

    /// Keeps the table equal to the live state of `pools` until `stop`.
    pub async fn follow(self: Arc<Self>, pools: Arc<ArcSwap<PoolSet>>, stop: CancellationToken) {
        let mut seen = state_epoch();
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {
                    if state_epoch() == seen && last_error.is_empty() {
                        continue;
                    }
                }
            }
            seen = state_epoch();
            let config = self
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match self.sync_rules(&config, &pools.load()).await {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    let e = format!("{e:#}");
                    if e != last_error {
                        warn!(target: "tandem::redirect", error = %e, "cannot update the nftables table: the previous rules stay; retrying");
                    }
                    last_error = e;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Takes a reloaded configuration (its services and pools are live already).
    pub async fn reload(&self, config: &Config, pools: &PoolSet) -> anyhow::Result<()> {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config.clone());
        let result = self
            .sync_rules(config, pools)
            .await
            .context("redirect rules");
        if result.is_err() {
            // The follower retries until the kernel takes them.
            self.wake.notify_one();
        }
        result
    }

    /// The rules applied now ([`tandem_redirect::rules::fingerprint`]), for an
    /// upgrade's successor.
    pub fn fingerprint(&self) -> Option<String> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(tandem_redirect::rules::fingerprint)
    }

    /// Whether conntrackd runs under this process.
    pub async fn runs_conntrackd(&self) -> bool {
        self.conntrackd.lock().await.is_some()
    }

    /// The table as the kernel lists it.
    pub async fn table(&self) -> String {
        let nft = self.nft.clone();
        match tokio::task::spawn_blocking(move || nft.list()).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => format!("({e})"),
            Err(e) => format!("({e})"),
        }
    }

    /// Starts conntrackd for `config`, when it runs; returns VRRP's takeover hook and
    /// its other end, for [`RedirectPlane::commit_takeovers`].
    /// `defer`: a predecessor's conntrackd runs (an upgrade); this one starts at
    /// [`RedirectPlane::resume_state_sync`], once that one has stopped.
    pub async fn start_state_sync(
        &self,
        config: &Config,
        defer: bool,
    ) -> anyhow::Result<Option<(mpsc::Sender<Takeover>, mpsc::Receiver<Takeover>)>> {
        let Some(settings) = conntrack_settings(config)? else {
            return Ok(None);
        };
        if defer {
            *self.deferred.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
            return Ok(Some(mpsc::channel::<Takeover>(1)));
        }
        let daemon = Conntrackd::start(settings)
            .await
            .context("starting conntrackd")?;
        *self.conntrackd.lock().await = Some(daemon);
        Ok(Some(mpsc::channel::<Takeover>(1)))
    }

    /// Starts the conntrackd deferred at an upgrade (the predecessor's has stopped), and
    /// brings the caches back: a master sends the peer its states, a backup asks the
    /// master for its.
    pub async fn resume_state_sync(&self, master: bool) {
        let Some(settings) = self
            .deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        match Conntrackd::start(settings).await {
            Ok(daemon) => {
                daemon.resumed(master).await;
                info!(target: "tandem::redirect", "conntrackd taken over from the previous tandem");
                *self.conntrackd.lock().await = Some(daemon);
            }
            Err(e) => {
                warn!(target: "tandem::redirect", error = %e, "starting conntrackd after the upgrade: established redirect connections will not survive a failover")
            }
        }
    }

    /// Leaves the table to a successor (an upgrade): the rules are no longer changed
    /// here, nor removed at the end; conntrackd stops, for the successor's to start.
    pub async fn hand_over(&self) {
        self.handed_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = self.conntrackd.lock().await.take() {
            c.stop().await;
            info!(target: "tandem::redirect", "conntrackd stopped for the new tandem");
        }
    }

    /// Asks conntrackd its state every 5 s until `stop` (for status and metrics).
    pub async fn watch_conntrack(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.conntrack_status().await;
        }
    }

    /// Before each takeover VRRP asks for on `takeovers`, commits the connection states
    /// conntrackd received from the peer, then answers.
    pub async fn commit_takeovers(
        self: Arc<Self>,
        mut takeovers: mpsc::Receiver<Takeover>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                takeover = takeovers.recv() => {
                    let Some(done) = takeover else { return };
                    let started = std::time::Instant::now();
                    if let Some(c) = self.conntrackd.lock().await.as_ref() {
                        c.become_master().await;
                    }
                    info!(target: "tandem::redirect", elapsed_ms = started.elapsed().as_millis() as u64, "connection states committed before the takeover");
                    let _ = done.send(());
                }
            }
        }
    }

    /// Follows VRRP's `states` into backup: the states move to the new master. A router
    /// that ends before `stop` (handed over at an upgrade) has nothing more to say.
    pub async fn follow_vrrp(
        self: Arc<Self>,
        mut states: watch::Receiver<State>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = states.changed() => if changed.is_err() {
                    stop.cancelled().await;
                    return;
                },
            }
            let state = *states.borrow_and_update();
            if state == State::Backup
                && let Some(c) = self.conntrackd.lock().await.as_ref()
            {
                c.become_backup().await;
            }
        }
    }

    /// conntrackd's state, when it runs (asked now).
    pub async fn conntrack_status(&self) -> Option<tandem_redirect::ConntrackStatus> {
        let status = match self.conntrackd.lock().await.as_ref() {
            Some(c) => Some(c.status().await),
            None => None,
        };
        status.clone_into(
            &mut self
                .last_conntrack
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        status
    }

    /// conntrackd's state as last asked (at most 5 s old).
    pub fn last_conntrack_status(&self) -> Option<tandem_redirect::ConntrackStatus> {
        self.last_conntrack
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The forwards applied now.
    pub fn forwards(&self) -> Vec<Forward> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Removes the table and stops conntrackd.
    pub async fn stop(&self) {
        if let Some(c) = self.conntrackd.lock().await.take() {
            c.stop().await;
        }
        let nft = self.nft.clone();
        match tokio::task::spawn_blocking(move || nft.remove()).await {
            Ok(Ok(())) => info!(target: "tandem::redirect", "nftables table removed"),
            Ok(Err(e)) => {
                warn!(target: "tandem::redirect", error = %e, "removing the nftables table")
            }
            Err(e) => warn!(target: "tandem::redirect", error = %e, "removing the nftables table"),
        }
    }
}

/// conntrackd runs where redirect services, [ha] and [sync] meet.
pub fn conntrackd_program(config: &Config) -> Option<PathBuf> {
    (config.has_redirect() && !config.ha.is_empty())
        .then(|| {
            config
                .sync
                .as_ref()
                .map(|s| tandem_redirect::conntrackd::locate(&s.conntrackd))
        })
        .flatten()
}

fn conntrack_settings(config: &Config) -> anyhow::Result<Option<ConntrackSettings>> {
    let Some(program) = conntrackd_program(config) else {
        if config.has_redirect() && !config.ha.is_empty() {
            warn!(target: "tandem::redirect", "no [sync]: established redirect connections will not survive a failover");
        }
        return Ok(None);
    };
    let sync = config.sync.as_ref().expect("conntrackd_program checked it");
    let peer: SocketAddr = *sync
        .peers
        .first()
        .context("[sync] lists no peer to send connection states to")?;
    let local = sync.listen.ip();
    let interface = tandem_redirect::conntrackd::interface_of(local)
        .with_context(|| format!("no interface holds sync.listen's address {local}"))?;
    Ok(Some(ConntrackSettings {
        program,
        dir: config.global.control_socket.with_extension("conntrackd"),
        local,
        peer: peer.ip(),
        interface,
        port: sync.conntrack_port,
        hash_limit: tandem_redirect::conntrackd::hash_limit(),
    }))
}
