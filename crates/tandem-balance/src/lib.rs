//! Pools of backends and the choice of a backend for each new connection.
//!
//! A [`PoolSet`] is one immutable generation built from the configuration's pools: the
//! backends with their weights and limits, a [`Selector`] for the primaries and one for
//! the backups, and the pool's sticky table. The daemon swaps whole generations (with
//! `arc-swap`) on reload; [`BackendState`] (health, operator flag, counters) and sticky
//! tables carry over to the next generation for backends and pools that stay.
//!
//! Input: a client address, the backends already tried for this connection and the
//! time. Output: a [`Lease`] on a backend, which holds its connection slot until it
//! drops. No IO happens here; the hot path takes no global lock.

mod backend;
mod latency;
mod select;
mod sharded;
mod sticky;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use backend::{Agent, Backend, BackendState, Lease, state_epoch};
pub use latency::{RESPONSE_BUCKETS, ResponseTimes, ResponseTimesRead};
pub use select::{HASH_SEED, Selector, ip_bytes};
pub use sharded::{ShardKey, Sharded, ShardedMap};
pub use sticky::{StickyChange, StickyEntry, StickyObserver, StickyTable, unix_ms};
pub use tandem_config::Balance;

/// Milliseconds since the first call in this process: the clock of sticky tables.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One pool of one configuration generation.
#[derive(Debug)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Backends in configuration order.
    pub backends: Vec<Backend>,
    primary: Selector,
    backup: Selector,
    /// Sticky table, when the pool is sticky by client address.
    pub sticky: Option<Arc<StickyTable>>,
    /// Cookie name, when the pool is sticky by cookie (http mode).
    pub cookie: Option<String>,
    /// Pool used when this one has no usable backend.
    pub fallback: Option<String>,
    index: HashMap<SocketAddr, usize>,
}

/// What a pick chose.
#[derive(Debug)]
pub struct Pick {
    /// The connection slot on the chosen backend.
    pub lease: Lease,
    /// The pool the backend belongs to (differs from the asked pool after fallback).
    pub pool: Arc<Pool>,
    /// Whether the sticky table chose it.
    pub sticky: bool,
}

impl Pool {
    /// Builds a pool; `previous` supplies state to keep for backends that stay.
    pub fn build(config: &tandem_config::Pool, previous: Option<&Pool>) -> Pool {
        let initially_up = config
            .check
            .as_ref()
            .is_none_or(|c| c.initial == tandem_config::InitialHealth::Up);
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| {
                let state = previous
                    .and_then(|p| p.backend(&b.address))
                    .map(|old| old.state.clone())
                    .unwrap_or_else(|| {
                        Arc::new(if config.check.is_some() {
                            BackendState::pending(initially_up)
                        } else {
                            BackendState::new(true)
                        })
                    });
                Backend {
                    address: b.address,
                    // An agent's percentage scales the configured weight.
                    weight: state.agent().scale(b.weight.max(1)),
                    max_conns: b.max_conns,
                    backup: b.backup,
                    state,
                }
            })
            .collect();
        let members = |backup: bool| {
            backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.backup == backup)
                .map(|(i, _)| i as u32)
                .collect::<Vec<_>>()
        };
        let primary = Selector::new(config.balance, &backends, members(false));
        let backup = Selector::new(config.balance, &backends, members(true));
        let cookie = config
            .sticky
            .as_ref()
            .filter(|s| s.key == tandem_config::StickyKey::Cookie)
            .map(|s| s.cookie.clone());
        let sticky = config
            .sticky
            .as_ref()
            .filter(|s| s.key == tandem_config::StickyKey::SourceIp)
            .map(|s| match previous.and_then(|p| p.sticky.clone()) {
                Some(table) => {
                    table.reconfigure(s.ttl, s.max_entries);
                    table
                }
                None => Arc::new(StickyTable::new(s.ttl, s.max_entries)),
            });
        let index = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.address, i))
            .collect();
        Pool {
            name: config.name.clone(),
            backends,
            primary,
            backup,
            sticky,
            cookie,
            fallback: config.fallback.clone(),
            index,
        }
    }

    /// The backend at `address`.
    pub fn backend(&self, address: &SocketAddr) -> Option<&Backend> {
        self.index.get(address).map(|&i| &self.backends[i])
    }

    /// Whether any backend (primary or backup) can take a connection now.
    pub fn has_usable_backend(&self) -> bool {
        self.backends.iter().any(Backend::is_usable)
    }

    /// Picks a backend of this pool only (no fallback), skipping `tried` addresses.
    /// The sticky entry of `client` wins while its backend is usable; otherwise the
    /// algorithm chooses among primaries, then backups, and the choice is pinned.
    ///
    /// A pin to a backend whose checks have not decided yet (a node that just started:
    /// the health is only the check's `initial` guess) is followed all the same, and
    /// is never rewritten while that lasts. The pin was made where the backend was
    /// serving this client (most often the peer that synced it); "not checked yet" is
    /// no evidence against it, and moving the client would cost it its session, which
    /// is what the pin is for. When that backend cannot be used for this connection
    /// (its connect failed and it is in `tried`, or it is at `max_conns`) the client is
    /// served elsewhere this once and keeps its pin. Once the checks decide "down",
    /// the client is re-pinned as for any unusable backend; an operator's disable
    /// re-pins at once.
    pub fn pick_here(
        &self,
        client: IpAddr,
        tried: &[SocketAddr],
        now: u64,
    ) -> Option<(Lease, bool)> {
        let usable = |i: usize| {
            let b = &self.backends[i];
            b.is_usable() && !tried.contains(&b.address)
        };
        let mut keep_pin = false;
        if let Some(table) = &self.sticky
            && let Some(address) = table.get(&client, now)
            && let Some(&i) = self.index.get(&address)
        {
            let b = &self.backends[i];
            let unchecked = !b.state.is_decided() && b.state.is_enabled();
            let open = b.state.is_enabled()
                && b.state.agent().allows_new()
                && (b.max_conns == 0 || b.state.active() < b.max_conns)
                && !tried.contains(&b.address);
            if (usable(i) || (unchecked && open))
                && let Some(lease) = b.lease()
            {
                return Some((lease, true));
            }
            keep_pin = unchecked;
        }
        // A lease can lose a race for the last slot under max_conns; the loser is no
        // longer usable, so each retry narrows the choice.
        for _ in 0..=self.backends.len() {
            let i = self
                .primary
                .pick(&self.backends, client, usable)
                .or_else(|| self.backup.pick(&self.backends, client, usable))?;
            if let Some(lease) = self.backends[i].lease() {
                if let Some(table) = &self.sticky
                    && !keep_pin
                {
                    table.set(client, lease.address, now);
                }
                return Some((lease, false));
            }
        }
        None
    }

    /// The backends a kernel forwarder may send new connections to now: the healthy,
    /// enabled primaries, else the healthy, enabled backups. (Connection limits count
    /// tandem's own connections, which forwarded ones are not.)
    pub fn serving(&self) -> Vec<&Backend> {
        let live = |backup: bool| -> Vec<&Backend> {
            self.backends
                .iter()
                .filter(|b| b.backup == backup && b.state.is_selectable())
                .collect()
        };
        let primaries = live(false);
        if primaries.is_empty() {
            live(true)
        } else {
            primaries
        }
    }

    /// The primary selector (for tests and status).
    pub fn primary_selector(&self) -> &Selector {
        &self.primary
    }
}

/// One generation of every pool.
#[derive(Debug, Default)]
pub struct PoolSet {
    pools: HashMap<String, Arc<Pool>>,
}

impl PoolSet {
    /// Builds every pool of `config`, keeping state from `previous` where pools and
    /// backends stay.
    pub fn build(config: &[tandem_config::Pool], previous: Option<&PoolSet>) -> PoolSet {
        let pools = config
            .iter()
            .map(|p| {
                let old = previous.and_then(|prev| prev.get(&p.name));
                (
                    p.name.clone(),
                    Arc::new(Pool::build(p, old.map(|o| o.as_ref()))),
                )
            })
            .collect();
        PoolSet { pools }
    }

    /// The pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// Every live pin of every sticky table at `now` (table clock): pool, client,
    /// entry. What sync's bulk transfer and the state file carry.
    pub fn live_pins(&self, now: u64) -> Vec<(&str, IpAddr, StickyEntry)> {
        let mut out = Vec::new();
        for pool in self.iter() {
            let Some(table) = &pool.sticky else { continue };
            out.extend(
                table
                    .entries()
                    .into_iter()
                    .filter(|(_, e)| e.expires > now)
                    .map(|(client, e)| (pool.name.as_str(), client, e)),
            );
        }
        out
    }

    /// `pool`, then the pools of its fallback chain, in order (bounded: a cycle ends).
    fn chain<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Arc<Pool>> + 'a {
        let mut name = Some(pool);
        (0..=self.pools.len()).map_while(move |_| {
            let p = self.pools.get(name?)?;
            name = p.fallback.as_deref();
            Some(p)
        })
    }

    /// Picks a backend for `client` in `pool`, following the fallback chain when a pool
    /// has no usable backend. `tried` holds backends whose connect already failed.
    pub fn pick(&self, pool: &str, client: IpAddr, tried: &[SocketAddr], now: u64) -> Option<Pick> {
        self.chain(pool).find_map(|p| {
            p.pick_here(client, tried, now).map(|(lease, sticky)| Pick {
                lease,
                pool: p.clone(),
                sticky,
            })
        })
    }

    /// The [`Pool::serving`] backends of `pool`, or of the first pool of its fallback
    /// chain that has any.
    pub fn serving<'a>(&'a self, pool: &'a str) -> Vec<&'a Backend> {
        self.chain(pool)
            .map(|p| p.serving())
            .find(|b| !b.is_empty())
            .unwrap_or_default()
    }
}
