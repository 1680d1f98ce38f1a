//! The sticky table: which backend a client was sent to, kept for an idle TTL.
//!
//! Sharded behind small mutexes (no global lock per connection); bounded in size;
//! time is an input (`now`, milliseconds on the caller's monotonic clock) so tests
//! drive expiry exactly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64;

const SHARDS: usize = 64;

/// One sticky entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyEntry {
    /// The backend the client is pinned to.
    pub backend: SocketAddr,
    /// When the entry expires unless used again (ms).
    pub expires: u64,
}

/// A bounded, expiring map from client address to backend.
#[derive(Debug)]
pub struct StickyTable {
    shards: Box<[Mutex<HashMap<IpAddr, StickyEntry>>]>,
    ttl_ms: AtomicU64,
    capacity: AtomicUsize,
    len: AtomicUsize,
    evicted: AtomicU64,
}

impl StickyTable {
    /// A table whose entries live `ttl` past their last use, holding at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> StickyTable {
        StickyTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            capacity: AtomicUsize::new(capacity.max(1)),
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Applies new settings from a reload; existing entries stay.
    pub fn reconfigure(&self, ttl: Duration, capacity: usize) {
        self.ttl_ms.store(ttl.as_millis() as u64, Relaxed);
        self.capacity.store(capacity.max(1), Relaxed);
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, StickyEntry>> {
        let h = xxh3_64(&crate::select::ip_bytes(key));
        &self.shards[(h as usize) % SHARDS]
    }

    fn lock(&self, key: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, StickyEntry>> {
        // A panic while holding a shard cannot leave an entry half-written: recover.
        self.shard(key).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend of `client` if its entry is live; using it extends its life.
    pub fn get(&self, client: &IpAddr, now: u64) -> Option<SocketAddr> {
        let mut shard = self.lock(client);
        let entry = shard.get_mut(client)?;
        if entry.expires <= now {
            shard.remove(client);
            self.len.fetch_sub(1, Relaxed);
            return None;
        }
        entry.expires = now + self.ttl_ms.load(Relaxed);
        Some(entry.backend)
    }

    /// Pins `client` to `backend`, evicting the entry nearest to expiry when full.
    pub fn set(&self, client: IpAddr, backend: SocketAddr, now: u64) {
        let expires = now + self.ttl_ms.load(Relaxed);
        let per_shard = self.capacity.load(Relaxed).div_ceil(SHARDS);
        let mut shard = self.lock(&client);
        if !shard.contains_key(&client) {
            if shard.len() >= per_shard {
                let before = shard.len();
                shard.retain(|_, e| e.expires > now);
                let expired = before - shard.len();
                self.len.fetch_sub(expired, Relaxed);
                if shard.len() >= per_shard
                    && let Some(oldest) =
                        shard.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k)
                {
                    shard.remove(&oldest);
                    self.len.fetch_sub(1, Relaxed);
                    self.evicted.fetch_add(1, Relaxed);
                }
            }
            self.len.fetch_add(1, Relaxed);
        }
        shard.insert(client, StickyEntry { backend, expires });
    }

    /// Removes `client`'s entry.
    pub fn remove(&self, client: &IpAddr) -> Option<StickyEntry> {
        let removed = self.lock(client).remove(client);
        if removed.is_some() {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Removes every expired entry; returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.len();
            shard.retain(|_, e| e.expires > now);
            removed += before - shard.len();
        }
        self.len.fetch_sub(removed, Relaxed);
        removed
    }

    /// Live and not yet swept entries.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// A copy of every entry (for status, sync bulk transfer and tests).
    pub fn entries(&self) -> Vec<(IpAddr, StickyEntry)> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(shard.iter().map(|(k, v)| (*k, *v)));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    }
    fn be(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], n))
    }

    #[test]
    fn entry_lives_for_ttl_after_last_use() {
        let t = StickyTable::new(Duration::from_secs(10), 100);
        t.set(ip(1), be(1), 0);
        assert_eq!(t.get(&ip(1), 9_999), Some(be(1)));
        // Use at 9.999 s extends the life to 19.999 s.
        assert_eq!(t.get(&ip(1), 19_998), Some(be(1)));
        assert_eq!(t.get(&ip(1), 29_998), None);
        assert!(t.is_empty());
    }

    #[test]
    fn expired_entry_is_gone_exactly_at_ttl() {
        let t = StickyTable::new(Duration::from_millis(500), 100);
        t.set(ip(1), be(1), 1000);
        assert_eq!(t.get(&ip(1), 1499), Some(be(1)));
        t.set(ip(2), be(2), 1000);
        assert_eq!(t.get(&ip(2), 1500), None);
    }

    #[test]
    fn sweep_removes_only_expired() {
        let t = StickyTable::new(Duration::from_secs(1), 1000);
        for n in 0..100 {
            t.set(ip(n), be(1), n as u64 * 10);
        }
        // Entries set before t=500 expire by t=1500.
        assert_eq!(t.sweep(1500), 51);
        assert_eq!(t.len(), 49);
        assert_eq!(t.entries().len(), 49);
    }

    #[test]
    fn full_table_evicts_the_oldest_and_stays_bounded() {
        let cap = 640;
        let t = StickyTable::new(Duration::from_secs(3600), cap);
        for n in 0..10_000 {
            t.set(ip(n), be(1), n as u64);
        }
        assert!(t.len() <= cap, "len {} > {cap}", t.len());
        assert_eq!(t.len(), t.entries().len());
        assert!(t.evicted() >= 10_000 - cap as u64);
        // The newest entry is always kept.
        assert_eq!(t.get(&ip(9_999), 10_000), Some(be(1)));
    }

    #[test]
    fn repin_replaces_the_backend() {
        let t = StickyTable::new(Duration::from_secs(10), 10);
        t.set(ip(1), be(1), 0);
        t.set(ip(1), be(2), 5);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&ip(1), 6), Some(be(2)));
    }
}
