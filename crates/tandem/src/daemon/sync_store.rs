//! The pools' sticky tables as sync sees them: the [`Store`] it reads and fills, and
//! the observer that publishes each local change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tandem_balance::{PoolSet, StickyChange, now_ms};
use tandem_config::Config;
use tandem_sync::{Change, Store, SyncNode, WireEntry};
use tracing::{info, warn};

/// The sticky tables of the current pools, as sync sees them (and the ACME state,
/// when `tls.acme` is configured).
pub(super) struct PoolStore(
    pub(super) Arc<ArcSwap<PoolSet>>,
    pub(super) Option<Arc<crate::acme::AcmeState>>,
);

impl Store for PoolStore {
    fn entries(&self) -> Vec<WireEntry> {
        let now = now_ms();
        // One shared name per pool (the pins come pool after pool).
        let mut name: Arc<str> = Arc::from("");
        self.0
            .load()
            .live_pins(now)
            .into_iter()
            .map(|(pool, client, e)| WireEntry {
                pool: if *name == *pool {
                    name.clone()
                } else {
                    name = Arc::from(pool);
                    name.clone()
                },
                client,
                backend: e.backend,
                remaining_ms: e.expires - now,
                pinned_at_ms: e.pinned_at,
                origin: e.origin,
            })
            .collect()
    }

    fn apply(&self, entries: &[WireEntry]) {
        let now = now_ms();
        let pools = self.0.load();
        // The pool of the entry before, looked up again only when the name changes.
        let mut last: Option<(&Arc<str>, Option<&Arc<tandem_balance::StickyTable>>)> = None;
        for e in entries {
            let table = match last {
                Some((pool, table)) if Arc::ptr_eq(pool, &e.pool) || *pool == e.pool => table,
                _ => {
                    let table = pools.get(&e.pool).and_then(|p| p.sticky.as_ref());
                    last = Some((&e.pool, table));
                    table
                }
            };
            if let Some(table) = table {
                table.merge(
                    e.client,
                    e.backend,
                    now + e.remaining_ms,
                    e.pinned_at_ms,
                    e.origin,
                    now,
                );
            }
        }
    }

    fn delete(&self, keys: &[(String, IpAddr)]) {
        let pools = self.0.load();
        for (pool, client) in keys {
            if let Some(table) = pools.get(pool).and_then(|p| p.sticky.as_ref()) {
                table.remove(client);
            }
        }
    }

    fn set_backend(&self, pool: &str, address: SocketAddr, enabled: bool) {
        if let Some(b) = self
            .0
            .load()
            .get(pool)
            .and_then(|p| p.backend(&address).cloned())
        {
            b.state.set_enabled(enabled);
            info!(pool, backend = %address, "backend {} by a peer's operator", if enabled { "enabled" } else { "disabled" });
        }
    }

    fn acme_records(&self) -> Vec<Vec<u8>> {
        self.1
            .as_ref()
            .map(|state| state.records().iter().map(crate::acme::encode).collect())
            .unwrap_or_default()
    }

    fn apply_acme(&self, record: &[u8]) {
        let Some(state) = &self.1 else {
            return;
        };
        match crate::acme::decode(record).and_then(|r| {
            state.apply(&r)?;
            Ok(r)
        }) {
            Ok(crate::acme::Record::Certificate { names, .. }) => {
                info!(names = ?names, "acme: certificate from the peer installed");
            }
            Ok(_) => {}
            Err(e) => warn!("acme: a record from the peer: {e:#}"),
        }
    }
}

/// Tells `sync` of every change of every sticky table of `pools`, stamped with node
/// `node`'s origin (tables that already have their observer keep it).
pub(super) fn observe_sticky_tables(sync: &Arc<SyncNode>, pools: &PoolSet, node: &str) {
    let origin = node_hash(node);
    for pool in pools.iter() {
        let Some(table) = &pool.sticky else { continue };
        let sync = Arc::downgrade(sync);
        let name: Arc<str> = Arc::from(pool.name.as_str());
        table.observe(
            origin,
            Arc::new(move |change| {
                let Some(sync) = sync.upgrade() else { return };
                sync.publish(match change {
                    StickyChange::Pinned { client, entry } => Change::Entry(WireEntry {
                        pool: name.clone(),
                        client,
                        backend: entry.backend,
                        remaining_ms: entry.expires.saturating_sub(now_ms()),
                        pinned_at_ms: entry.pinned_at,
                        origin: entry.origin,
                    }),
                    StickyChange::Evicted { client } => Change::Delete(name.to_string(), client),
                });
            }),
        );
    }
}

/// A stable hash of a node name: the origin stamped on its sticky pins.
fn node_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// A digest of the pools and their backends, equal on nodes configured alike.
pub(super) fn pools_digest(config: &Config) -> u64 {
    let mut lines: Vec<String> = config
        .pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(move |b| format!("{}\t{}", p.name, b.address))
        })
        .collect();
    lines.sort();
    xxhash_rust::xxh3::xxh3_64(lines.join("\n").as_bytes())
}

/// `bytes` without leading and trailing ASCII whitespace (a key file's newline).
pub(super) fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_loses_its_surrounding_whitespace_only() {
        assert_eq!(trim_ascii(b"  secret key\n"), b"secret key");
        assert_eq!(trim_ascii(b"\n\t "), b"");
    }
}
