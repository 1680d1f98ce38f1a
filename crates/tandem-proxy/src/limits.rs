//! Limits that protect the balancer and its backends: a node-wide connection limit,
//! and per client address a concurrency limit and a rate limit (token bucket). Every
//! table here is bounded.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tandem_balance::{Sharded, ShardedMap};

/// Connections open on the whole node, against `global.max_conns`.
#[derive(Debug, Default)]
pub struct GlobalLimit {
    max: AtomicU64,
    active: AtomicU64,
    /// Connections refused at the limit.
    pub refused: AtomicU64,
}

impl GlobalLimit {
    /// A limit of `max` open connections (0 = none).
    pub fn new(max: u64) -> Arc<GlobalLimit> {
        Arc::new(GlobalLimit {
            max: AtomicU64::new(max),
            ..GlobalLimit::default()
        })
    }

    /// Changes the limit (reload); open connections stay.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Relaxed);
    }

    /// The limit (0 = none).
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// Open connections now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// A slot, or `None` at the limit.
    pub fn enter(self: &Arc<Self>) -> Option<GlobalSlot> {
        let max = self.max.load(Relaxed);
        let ok = self
            .active
            .fetch_update(Relaxed, Relaxed, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok();
        if ok {
            Some(GlobalSlot(self.clone()))
        } else {
            self.refused.fetch_add(1, Relaxed);
            None
        }
    }
}

/// A connection counted against the node's limit until dropped.
#[derive(Debug)]
pub struct GlobalSlot(Arc<GlobalLimit>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Per-client limits of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientLimits {
    /// Connections open at once per client address (0 = none).
    pub max_conns: u32,
    /// New connections per second per client address, with a burst of as many (0 = none).
    pub rate: u32,
}

impl ClientLimits {
    /// Whether any limit is set.
    pub fn active(&self) -> bool {
        self.max_conns > 0 || self.rate > 0
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has `max_conns` open already.
    TooMany,
    /// It opened connections faster than `rate`.
    TooFast,
    /// The table of clients is full of clients with open connections.
    TableFull,
}

impl Refusal {
    /// For logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooMany => "client at its connection limit",
            Refusal::TooFast => "client over its connection rate",
            Refusal::TableFull => "client table full",
        }
    }
}

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Client {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

/// Client addresses with their open connections and rate buckets, in a bounded table.
#[derive(Debug)]
pub struct ClientTable {
    shards: ShardedMap<IpAddr, Client>,
    per_shard: usize,
}

impl ClientTable {
    /// A table of at most about `capacity` clients.
    pub fn new(capacity: usize) -> Arc<ClientTable> {
        Arc::new(ClientTable {
            shards: Sharded::new(SHARDS),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        })
    }

    /// Admits a new connection from `ip` at `now` under `limits`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: ClientLimits,
        now: Instant,
    ) -> Result<ClientSlot, Refusal> {
        let mut shard = self.shards.lock(&ip);
        if !shard.contains_key(&ip) && shard.len() >= self.per_shard {
            // Forget clients with nothing open whose bucket has refilled.
            shard.retain(|_, c| {
                c.active > 0 || now.duration_since(c.refilled) < Duration::from_secs(1)
            });
            if shard.len() >= self.per_shard {
                return Err(Refusal::TableFull);
            }
        }
        let burst = f64::from(limits.rate);
        let client = shard.entry(ip).or_insert(Client {
            active: 0,
            tokens: burst,
            refilled: now,
        });
        if limits.max_conns > 0 && client.active >= limits.max_conns {
            return Err(Refusal::TooMany);
        }
        if limits.rate > 0 {
            let elapsed = now.duration_since(client.refilled).as_secs_f64();
            client.tokens = (client.tokens + elapsed * burst).min(burst);
            client.refilled = now;
            if client.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            client.tokens -= 1.0;
        }
        client.active += 1;
        Ok(ClientSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

/// A client's connection, counted until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<ClientTable>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.table.shards.lock(&self.ip);
        if let Some(c) = shard.get_mut(&self.ip) {
            c.active = c.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn global_limit_counts_open_connections() {
        let g = GlobalLimit::new(2);
        let a = g.enter().unwrap();
        let _b = g.enter().unwrap();
        assert!(g.enter().is_none());
        assert_eq!(g.refused.load(Relaxed), 1);
        drop(a);
        assert!(g.enter().is_some());
        g.set_max(0);
        let many: Vec<_> = (0..100).map(|_| g.enter().unwrap()).collect();
        assert_eq!(g.active(), 101);
        drop(many);
    }

    #[test]
    fn per_client_concurrency_is_per_address() {
        let t = ClientTable::new(1000);
        let limits = ClientLimits {
            max_conns: 2,
            rate: 0,
        };
        let now = Instant::now();
        let a1 = t.admit(ip(1), limits, now).unwrap();
        let _a2 = t.admit(ip(1), limits, now).unwrap();
        assert_eq!(t.admit(ip(1), limits, now).unwrap_err(), Refusal::TooMany);
        let _b = t
            .admit(ip(2), limits, now)
            .expect("another client is not limited");
        drop(a1);
        assert!(t.admit(ip(1), limits, now).is_ok());
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills_with_time() {
        let t = ClientTable::new(1000);
        let limits = ClientLimits {
            max_conns: 0,
            rate: 5,
        };
        let start = Instant::now();
        for _ in 0..5 {
            drop(t.admit(ip(1), limits, start).unwrap());
        }
        assert_eq!(t.admit(ip(1), limits, start).unwrap_err(), Refusal::TooFast);
        // 200 ms later one token is back, not two.
        let later = start + Duration::from_millis(200);
        drop(t.admit(ip(1), limits, later).unwrap());
        assert_eq!(t.admit(ip(1), limits, later).unwrap_err(), Refusal::TooFast);
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_idle_clients() {
        let t = ClientTable::new(32);
        let limits = ClientLimits {
            max_conns: 1,
            rate: 0,
        };
        let start = Instant::now();
        for n in 0..=255u8 {
            drop(t.admit(ip(n), limits, start));
        }
        assert!(t.len() <= 32 + SHARDS, "{} tracked", t.len());
        // Clients holding connections are kept; when they fill it, new ones wait.
        let t = ClientTable::new(SHARDS);
        let held: Vec<_> = (0..=255u8)
            .filter_map(|n| t.admit(ip(n), limits, start).ok())
            .collect();
        assert!(held.len() <= 2 * SHARDS);
        let later = start + Duration::from_secs(2);
        let refused = (0..=255u8)
            .filter(|n| t.admit(ip(*n), limits, later).is_err())
            .count();
        assert!(refused > 0);
        drop(held);
        assert!(t.admit(ip(7), limits, later).is_ok());
    }
}
