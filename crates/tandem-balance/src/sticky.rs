//! The sticky table: which backend a client was sent to, kept for an idle TTL.
//!
//! Sharded behind small mutexes (no global lock per connection); bounded in size;
//! time is an input (`now`, milliseconds on the caller's monotonic clock) so tests
//! drive expiry exactly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::Sharded;

const SHARDS: usize = 64;

/// One sticky entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyEntry {
    /// The backend the client is pinned to.
    pub backend: SocketAddr,
    /// When the entry expires unless used again (ms, table clock).
    pub expires: u64,
    /// When the pin was decided (Unix ms): the newer pin wins when nodes disagree.
    pub pinned_at: u64,
    /// Which node decided it (a stable hash of its name): breaks `pinned_at` ties.
    pub origin: u64,
    /// The expiry last announced to observers (so refreshes are announced sparingly).
    announced: u64,
}

/// How an entry is kept in its shard: the backend and the origin as indexes into the
/// shard's [`Interned`] lists, so that a slot with its key takes 56 bytes, not 88 (a
/// table of a million clients is mostly these).
#[derive(Debug, Clone, Copy)]
struct Slot {
    expires: u64,
    pinned_at: u64,
    announced: u64,
    backend: u32,
    origin: u32,
}

/// The backends and origins a shard's slots refer to. They are few (the pool's backends,
/// the nodes of the pair) and only grow with a new address or node; an emptied shard
/// forgets them.
#[derive(Debug, Default)]
struct Interned {
    backends: Vec<SocketAddr>,
    backend_ids: HashMap<SocketAddr, u32>,
    origins: Vec<u64>,
}

impl Interned {
    fn backend(&mut self, backend: SocketAddr) -> u32 {
        let next = self.backends.len() as u32;
        *self.backend_ids.entry(backend).or_insert_with(|| {
            self.backends.push(backend);
            next
        })
    }

    fn origin(&mut self, origin: u64) -> u32 {
        match self.origins.iter().position(|&o| o == origin) {
            Some(i) => i as u32,
            None => {
                self.origins.push(origin);
                (self.origins.len() - 1) as u32
            }
        }
    }

    fn slot(&mut self, e: &StickyEntry) -> Slot {
        Slot {
            expires: e.expires,
            pinned_at: e.pinned_at,
            announced: e.announced,
            backend: self.backend(e.backend),
            origin: self.origin(e.origin),
        }
    }

    fn entry(&self, s: &Slot) -> StickyEntry {
        StickyEntry {
            backend: self.backends[s.backend as usize],
            expires: s.expires,
            pinned_at: s.pinned_at,
            origin: self.origins[s.origin as usize],
            announced: s.announced,
        }
    }
}

/// One shard: its entries and what they refer to.
#[derive(Debug, Default)]
struct Shard {
    slots: HashMap<IpAddr, Slot>,
    interned: Interned,
}

impl Shard {
    /// Keeps the entries `keep` says yes to; returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) -> usize {
        let before = self.slots.len();
        self.slots.retain(|_, s| keep(s));
        if self.slots.is_empty() {
            self.interned = Interned::default();
        }
        before - self.slots.len()
    }
}

/// A change an observer (state sync) hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyChange {
    /// A client was pinned, re-pinned, or its entry's life was extended.
    Pinned {
        /// The client.
        client: IpAddr,
        /// The entry now.
        entry: StickyEntry,
    },
    /// An entry was evicted because the table was full.
    Evicted {
        /// The client.
        client: IpAddr,
    },
}

/// Called on every change made by this node (not on merges from peers).
pub type StickyObserver = Arc<dyn Fn(StickyChange) + Send + Sync>;

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A bounded, expiring map from client address to backend.
pub struct StickyTable {
    shards: Sharded<IpAddr, Shard>,
    ttl_ms: AtomicU64,
    capacity: AtomicUsize,
    len: AtomicUsize,
    evicted: AtomicU64,
    origin: AtomicU64,
    observer: OnceLock<StickyObserver>,
}

impl std::fmt::Debug for StickyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyTable")
            .field("len", &self.len())
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl StickyTable {
    /// A table whose entries live `ttl` past their last use, holding at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> StickyTable {
        StickyTable {
            shards: Sharded::new(SHARDS),
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            capacity: AtomicUsize::new(capacity.max(1)),
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            origin: AtomicU64::new(0),
            observer: OnceLock::new(),
        }
    }

    /// Sets the observer of this node's changes (once; later calls do nothing) and the
    /// origin stamped on this node's pins.
    pub fn observe(&self, origin: u64, observer: StickyObserver) {
        self.origin.store(origin, Relaxed);
        let _ = self.observer.set(observer);
    }

    fn tell(&self, change: StickyChange) {
        if let Some(observer) = self.observer.get() {
            observer(change);
        }
    }

    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms.load(Relaxed)
    }

    /// Applies new settings from a reload; existing entries stay.
    pub fn reconfigure(&self, ttl: Duration, capacity: usize) {
        self.ttl_ms.store(ttl.as_millis() as u64, Relaxed);
        self.capacity.store(capacity.max(1), Relaxed);
    }

    fn lock(&self, key: &IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        self.shards.lock(key)
    }

    /// The backend of `client` if its entry is live; using it extends its life. An
    /// extension is announced to the observer once it moved the expiry by a second or
    /// more (or a tenth of a short TTL), so peers expire the entry at the same time.
    pub fn get(&self, client: &IpAddr, now: u64) -> Option<SocketAddr> {
        let mut guard = self.lock(client);
        let shard = &mut *guard;
        let slot = shard.slots.get_mut(client)?;
        if slot.expires <= now {
            shard.slots.remove(client);
            self.len.fetch_sub(1, Relaxed);
            return None;
        }
        let ttl = self.ttl_ms.load(Relaxed);
        slot.expires = now + ttl;
        let step = (ttl / 10).clamp(1, 1000);
        let announce = slot.expires >= slot.announced + step;
        if announce {
            slot.announced = slot.expires;
        }
        let copy = shard.interned.entry(slot);
        let backend = copy.backend;
        drop(guard);
        if announce {
            self.tell(StickyChange::Pinned {
                client: *client,
                entry: copy,
            });
        }
        Some(backend)
    }

    /// Pins `client` to `backend`, evicting the entry nearest to expiry when full.
    pub fn set(&self, client: IpAddr, backend: SocketAddr, now: u64) {
        let expires = now + self.ttl_ms.load(Relaxed);
        let entry = StickyEntry {
            backend,
            expires,
            pinned_at: unix_ms(),
            origin: self.origin.load(Relaxed),
            announced: expires,
        };
        let evicted = self.insert(client, entry, now);
        if let Some(gone) = evicted {
            self.tell(StickyChange::Evicted { client: gone });
        }
        self.tell(StickyChange::Pinned { client, entry });
    }

    /// Merges an entry decided by another node: a different backend replaces ours only
    /// if its pin is newer (ties: the larger origin); the same backend keeps the later
    /// expiry. Observers are not told (the change came from a peer).
    pub fn merge(
        &self,
        client: IpAddr,
        backend: SocketAddr,
        expires: u64,
        pinned_at: u64,
        origin: u64,
        now: u64,
    ) {
        if expires <= now {
            return;
        }
        {
            let mut guard = self.lock(&client);
            let shard = &mut *guard;
            if let Some(ours) = shard.slots.get_mut(&client)
                && ours.expires > now
            {
                if shard.interned.backends[ours.backend as usize] == backend {
                    ours.expires = ours.expires.max(expires);
                    ours.announced = ours.announced.max(expires);
                    return;
                }
                let our_origin = shard.interned.origins[ours.origin as usize];
                if (pinned_at, origin) <= (ours.pinned_at, our_origin) {
                    return;
                }
            }
        }
        let entry = StickyEntry {
            backend,
            expires,
            pinned_at,
            origin,
            announced: expires,
        };
        if let Some(gone) = self.insert(client, entry, now) {
            self.tell(StickyChange::Evicted { client: gone });
        }
    }

    /// Inserts or replaces; returns the client evicted to make room, if any.
    fn insert(&self, client: IpAddr, entry: StickyEntry, now: u64) -> Option<IpAddr> {
        let per_shard = self.capacity.load(Relaxed).div_ceil(SHARDS);
        let mut evicted = None;
        let mut shard = self.lock(&client);
        if !shard.slots.contains_key(&client) {
            if shard.slots.len() >= per_shard {
                let expired = shard.retain(|s| s.expires > now);
                self.len.fetch_sub(expired, Relaxed);
                if shard.slots.len() >= per_shard
                    && let Some(oldest) = shard
                        .slots
                        .iter()
                        .min_by_key(|(_, s)| s.expires)
                        .map(|(k, _)| *k)
                {
                    shard.slots.remove(&oldest);
                    self.len.fetch_sub(1, Relaxed);
                    self.evicted.fetch_add(1, Relaxed);
                    evicted = Some(oldest);
                }
            }
            self.len.fetch_add(1, Relaxed);
        }
        let slot = shard.interned.slot(&entry);
        shard.slots.insert(client, slot);
        evicted
    }

    /// Removes `client`'s entry.
    pub fn remove(&self, client: &IpAddr) -> Option<StickyEntry> {
        let mut shard = self.lock(client);
        let removed = shard.slots.remove(client)?;
        self.len.fetch_sub(1, Relaxed);
        Some(shard.interned.entry(&removed))
    }

    /// Removes every expired entry; returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        for mut shard in self.shards.each() {
            removed += shard.retain(|s| s.expires > now);
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
        for shard in self.shards.each() {
            all.extend(
                shard
                    .slots
                    .iter()
                    .map(|(k, s)| (*k, shard.interned.entry(s))),
            );
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
    fn merge_keeps_the_newest_pin_and_breaks_ties_by_origin() {
        let t = StickyTable::new(Duration::from_secs(60), 100);
        t.merge(ip(1), be(1), 50_000, 1_000, 7, 0);
        assert_eq!(t.get(&ip(1), 1), Some(be(1)));
        // An older pin elsewhere loses; a newer one wins.
        t.merge(ip(1), be(2), 50_000, 999, 9, 2);
        assert_eq!(t.get(&ip(1), 3), Some(be(1)));
        t.merge(ip(1), be(2), 50_000, 1_001, 1, 4);
        assert_eq!(t.get(&ip(1), 5), Some(be(2)));
        // Same time: the larger origin wins, whichever arrives first.
        t.merge(ip(2), be(1), 50_000, 5_000, 3, 0);
        t.merge(ip(2), be(2), 50_000, 5_000, 4, 0);
        assert_eq!(t.get(&ip(2), 1), Some(be(2)));
        t.merge(ip(2), be(3), 50_000, 5_000, 2, 0);
        assert_eq!(t.get(&ip(2), 1), Some(be(2)));
        // The same backend keeps the later expiry; expired entries are not merged.
        t.merge(ip(3), be(1), 10_000, 1, 1, 0);
        t.merge(ip(3), be(1), 20_000, 1, 1, 0);
        t.merge(ip(3), be(1), 15_000, 1, 1, 0);
        assert_eq!(t.get(&ip(3), 19_999), Some(be(1)));
        t.merge(ip(4), be(1), 100, 1, 1, 100);
        assert_eq!(t.get(&ip(4), 100), None);
    }

    #[test]
    fn the_observer_hears_pins_and_sparing_refreshes_but_not_merges() {
        let heard: Arc<std::sync::Mutex<Vec<StickyChange>>> = Arc::default();
        let t = StickyTable::new(Duration::from_secs(30), 100);
        let h = heard.clone();
        t.observe(42, Arc::new(move |c| h.lock().unwrap().push(c)));
        t.set(ip(1), be(1), 0);
        t.merge(ip(2), be(2), 10_000, 1, 1, 0);
        // Uses within a second of the last announcement stay quiet.
        for now in [100, 500, 900] {
            t.get(&ip(1), now);
        }
        t.get(&ip(1), 1_000);
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len(), 2, "{heard:?}");
        match heard[0] {
            StickyChange::Pinned { client, entry } => {
                assert_eq!(
                    (client, entry.backend, entry.origin, entry.expires),
                    (ip(1), be(1), 42, 30_000)
                );
            }
            other => panic!("{other:?}"),
        }
        match heard[1] {
            StickyChange::Pinned { entry, .. } => assert_eq!(entry.expires, 31_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_entry_with_its_key_takes_56_bytes() {
        assert_eq!(std::mem::size_of::<(IpAddr, Slot)>(), 56);
    }

    #[test]
    fn entries_keep_their_backend_and_origin_through_the_shard_lists() {
        let t = StickyTable::new(Duration::from_secs(60), 1000);
        for n in 0..200 {
            t.merge(
                ip(n),
                be(n as u16 % 7),
                50_000,
                1,
                u64::MAX - u64::from(n % 3),
                0,
            );
        }
        let mut all = t.entries();
        all.sort_by_key(|(k, _)| *k);
        for (n, (client, e)) in all.iter().enumerate() {
            assert_eq!(*client, ip(n as u32));
            assert_eq!(
                (e.backend, e.origin),
                (be(n as u16 % 7), u64::MAX - n as u64 % 3)
            );
        }
        assert_eq!(t.remove(&ip(5)).map(|e| e.backend), Some(be(5)));
        // Emptied by the sweep, the shards start afresh.
        assert_eq!(t.sweep(60_000), 199);
        t.set(ip(1), be(9), 0);
        assert_eq!(t.get(&ip(1), 1), Some(be(9)));
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
