//! A table split into shards behind small mutexes, so that threads working on
//! different keys rarely wait for one another: the sticky table, the per-client limits
//! and the open connections each keep their state in one.
//!
//! A key chooses its shard ([`ShardKey`]); a shard holds whatever state the user keeps
//! per shard (a map, or a map with what its entries refer to). A panic while a shard is
//! held cannot leave an entry half-written in these users: a poisoned shard is used on.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use xxhash_rust::xxh3::xxh3_64;

/// A key that chooses a shard by its hash.
pub trait ShardKey {
    /// The hash the shard is chosen by (modulo the number of shards).
    fn shard_hash(&self) -> u64;
}

/// Numbers handed out in sequence (connection ids): consecutive ones go to consecutive
/// shards.
impl ShardKey for u64 {
    fn shard_hash(&self) -> u64 {
        *self
    }
}

/// Client addresses: an IPv4-mapped IPv6 address is its IPv4 address, as in
/// [`crate::ip_bytes`].
impl ShardKey for IpAddr {
    fn shard_hash(&self) -> u64 {
        match self {
            IpAddr::V4(v4) => xxh3_64(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => xxh3_64(&v4.octets()),
                None => xxh3_64(&v6.octets()),
            },
        }
    }
}

/// Shards of state `S`, each behind its own mutex, chosen by keys of type `K`.
pub struct Sharded<K, S> {
    shards: Box<[Mutex<S>]>,
    key: PhantomData<fn(&K)>,
}

/// The common case: a map split by its key.
pub type ShardedMap<K, V> = Sharded<K, HashMap<K, V>>;

impl<K, S: std::fmt::Debug> std::fmt::Debug for Sharded<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<K: ShardKey, S: Default> Sharded<K, S> {
    /// `shards` empty shards (at least one).
    pub fn new(shards: usize) -> Sharded<K, S> {
        Sharded {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            key: PhantomData,
        }
    }
}

impl<K: ShardKey, S> Sharded<K, S> {
    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Locks the shard of `key`.
    pub fn lock(&self, key: &K) -> MutexGuard<'_, S> {
        let i = (key.shard_hash() as usize) % self.shards.len();
        lock(&self.shards[i])
    }

    /// Locks each shard in turn (one at a time: a shard is released before the next is
    /// locked, once the caller drops its guard).
    pub fn each(&self) -> impl Iterator<Item = MutexGuard<'_, S>> {
        self.shards.iter().map(lock)
    }
}

impl<K: ShardKey, V> Sharded<K, HashMap<K, V>> {
    /// Entries in every shard.
    pub fn len(&self) -> usize {
        self.each().map(|s| s.len()).sum()
    }

    /// Whether every shard is empty.
    pub fn is_empty(&self) -> bool {
        self.each().all(|s| s.is_empty())
    }
}

fn lock<S>(shard: &Mutex<S>) -> MutexGuard<'_, S> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_reaches_its_shard_and_ids_spread_in_turn() {
        let map: ShardedMap<u64, &str> = Sharded::new(4);
        for id in 0..8u64 {
            map.lock(&id).insert(id, "x");
        }
        assert_eq!(map.len(), 8);
        assert!(map.each().all(|s| s.len() == 2), "ids spread evenly");
        assert_eq!(map.lock(&5).get(&5), Some(&"x"));
        assert_eq!(map.lock(&5).remove(&5), Some("x"));
        assert_eq!(map.len(), 7);
        assert!(!map.is_empty());
    }

    #[test]
    fn a_mapped_ipv6_client_is_its_ipv4_address() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(v4.shard_hash(), mapped.shard_hash());
        assert_eq!(v4.shard_hash(), xxh3_64(&crate::ip_bytes(&v4)));
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(v6.shard_hash(), xxh3_64(&crate::ip_bytes(&v6)));
    }

    #[test]
    fn a_poisoned_shard_is_used_on() {
        let map: std::sync::Arc<ShardedMap<u64, u32>> = std::sync::Arc::new(Sharded::new(2));
        let m = map.clone();
        let _ = std::thread::spawn(move || {
            let mut s = m.lock(&1);
            s.insert(1, 1);
            panic!("while holding the shard");
        })
        .join();
        assert_eq!(map.lock(&1).get(&1), Some(&1));
        assert_eq!(map.len(), 1);
    }
}
