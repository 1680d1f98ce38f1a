//! Selection as a pool's users see it: weights honoured, backups and fallbacks,
//! stickiness, limits, and Maglev's minimal disruption.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use tandem_balance::{Pool, PoolSet};
use tandem_config::{BackendConfig, Balance, Pool as PoolConfig, Sticky, StickyKey};

fn addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (n / 250) as u8, (n % 250) as u8 + 1], 80))
}

fn pool_config(name: &str, balance: Balance, weights: &[u32]) -> PoolConfig {
    PoolConfig {
        name: name.to_string(),
        balance,
        backends: weights
            .iter()
            .enumerate()
            .map(|(n, &weight)| BackendConfig {
                address: addr(n),
                weight,
                max_conns: 0,
                backup: false,
            })
            .collect(),
        sticky: None,
        fallback: None,
        check: None,
        agent: None,
    }
}

fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n.wrapping_mul(2_654_435_761)))
}

/// Picks `picks` times (holding every lease when `hold`) and returns each backend's share.
fn shares(pool: &Pool, picks: u32, hold: bool) -> Vec<f64> {
    let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
    let mut held = Vec::new();
    for n in 0..picks {
        let (lease, _) = pool.pick_here(client(n), &[], 0).expect("a backend");
        *counts.entry(lease.address).or_default() += 1;
        if hold {
            held.push(lease);
        }
    }
    pool.backends
        .iter()
        .map(|b| counts.get(&b.address).copied().unwrap_or(0) as f64 / picks as f64)
        .collect()
}

fn assert_weighted(shares: &[f64], weights: &[u32], tolerance: f64) {
    let total: u32 = weights.iter().sum();
    for (share, &w) in shares.iter().zip(weights) {
        let expected = w as f64 / total as f64;
        assert!(
            (share - expected).abs() <= tolerance,
            "share {share:.4} vs expected {expected:.4} (weights {weights:?}, shares {shares:?})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn weights_honoured_within_one_percent(
        weights in prop::collection::vec(1u32..=10, 2..=6),
        algorithm in prop::sample::select(vec![Balance::RoundRobin, Balance::LeastConn, Balance::Random, Balance::SourceHash, Balance::Maglev]),
    ) {
        let pool = Pool::build(&pool_config("p", algorithm, &weights), None);
        // least-conn spreads by weight while connections stay open.
        let hold = algorithm == Balance::LeastConn;
        assert_weighted(&shares(&pool, 100_000, hold), &weights, 0.01);
    }

    #[test]
    fn maglev_moves_only_the_leaving_backends_share(n in 2usize..=20, leaving in 0usize..20) {
        let leaving = leaving % n;
        let weights = vec![1; n];
        let before = Pool::build(&pool_config("p", Balance::Maglev, &weights), None);
        let mut config = pool_config("p", Balance::Maglev, &weights);
        config.backends.remove(leaving);
        let after = Pool::build(&config, None);
        let keys = 100_000;
        let moved = (0..keys)
            .filter(|&k| {
                let a = before.pick_here(client(k), &[], 0).unwrap().0.address;
                let b = after.pick_here(client(k), &[], 0).unwrap().0.address;
                a != b
            })
            .count();
        let disruption = moved as f64 / keys as f64;
        prop_assert!(disruption <= 1.0 / n as f64 + 0.01, "{moved} of {keys} keys moved with {n} backends");
    }
}

#[test]
fn round_robin_is_exact_per_cycle() {
    let pool = Pool::build(&pool_config("p", Balance::RoundRobin, &[5, 1, 1]), None);
    let picked: Vec<SocketAddr> = (0..7)
        .map(|n| pool.pick_here(client(n), &[], 0).unwrap().0.address)
        .collect();
    let expect: Vec<SocketAddr> = [0, 0, 1, 0, 2, 0, 0].iter().map(|&i| addr(i)).collect();
    assert_eq!(picked, expect);
}

#[test]
fn least_conn_picks_the_least_loaded_relative_to_weight() {
    let pool = Pool::build(&pool_config("p", Balance::LeastConn, &[1, 1, 1]), None);
    let a = pool.pick_here(client(1), &[], 0).unwrap().0;
    let b = pool.pick_here(client(2), &[], 0).unwrap().0;
    // Two busy, one idle: the idle one wins whatever the rotation says.
    for n in 0..10 {
        let c = pool.pick_here(client(n), &[], 0).unwrap().0;
        assert_ne!(c.address, a.address);
        assert_ne!(c.address, b.address);
    }
    drop((a, b));
}

#[test]
fn hashed_picks_are_stable_across_nodes_and_file_order() {
    for algorithm in [Balance::SourceHash, Balance::Maglev] {
        let config = pool_config("p", algorithm, &[1, 2, 3, 1]);
        let mut reversed = config.clone();
        reversed.backends.reverse();
        let node_a = Pool::build(&config, None);
        let node_b = Pool::build(&config, None);
        let node_c = Pool::build(&reversed, None);
        for k in 0..2000 {
            let a = node_a.pick_here(client(k), &[], 0).unwrap().0.address;
            assert_eq!(a, node_b.pick_here(client(k), &[], 0).unwrap().0.address);
            if algorithm == Balance::Maglev {
                assert_eq!(a, node_c.pick_here(client(k), &[], 0).unwrap().0.address);
            }
        }
    }
}

#[test]
fn down_backend_keys_move_elsewhere_and_come_back() {
    let pool = Pool::build(&pool_config("p", Balance::Maglev, &[1, 1, 1, 1]), None);
    let before: Vec<SocketAddr> = (0..5000)
        .map(|k| pool.pick_here(client(k), &[], 0).unwrap().0.address)
        .collect();
    pool.backends[2].state.set_healthy(false);
    for (k, was) in before.iter().enumerate() {
        let now = pool.pick_here(client(k as u32), &[], 0).unwrap().0.address;
        assert_ne!(now, addr(2));
        if *was != addr(2) {
            assert_eq!(now, *was, "a key of a healthy backend moved");
        }
    }
    pool.backends[2].state.set_healthy(true);
    let again: Vec<SocketAddr> = (0..5000)
        .map(|k| pool.pick_here(client(k), &[], 0).unwrap().0.address)
        .collect();
    assert_eq!(before, again);
}

#[test]
fn backups_serve_only_when_no_primary_is_usable() {
    let mut config = pool_config("p", Balance::RoundRobin, &[1, 1, 1]);
    config.backends[2].backup = true;
    let pool = Pool::build(&config, None);
    for n in 0..20 {
        assert_ne!(
            pool.pick_here(client(n), &[], 0).unwrap().0.address,
            addr(2)
        );
    }
    pool.backends[0].state.set_healthy(false);
    pool.backends[1].state.set_enabled(false);
    assert_eq!(
        pool.pick_here(client(0), &[], 0).unwrap().0.address,
        addr(2)
    );
    pool.backends[2].state.set_healthy(false);
    assert!(pool.pick_here(client(0), &[], 0).is_none());
}

#[test]
fn fallback_pool_serves_when_none_is_usable() {
    let mut web = pool_config("web", Balance::RoundRobin, &[1]);
    web.fallback = Some("sorry".into());
    let mut sorry = pool_config("sorry", Balance::RoundRobin, &[1]);
    sorry.backends[0].address = "10.9.9.9:80".parse().unwrap();
    let set = PoolSet::build(&[web, sorry], None);
    assert_eq!(set.pick("web", client(0), &[], 0).unwrap().pool.name, "web");
    set.get("web").unwrap().backends[0].state.set_healthy(false);
    let pick = set.pick("web", client(0), &[], 0).unwrap();
    assert_eq!(pick.pool.name, "sorry");
    assert_eq!(pick.lease.address, "10.9.9.9:80".parse().unwrap());
}

#[test]
fn tried_backends_are_skipped() {
    let pool = Pool::build(&pool_config("p", Balance::SourceHash, &[1, 1, 1]), None);
    let first = pool.pick_here(client(7), &[], 0).unwrap().0.address;
    let second = pool.pick_here(client(7), &[first], 0).unwrap().0.address;
    assert_ne!(first, second);
    let third = pool
        .pick_here(client(7), &[first, second], 0)
        .unwrap()
        .0
        .address;
    assert!(third != first && third != second);
    assert!(
        pool.pick_here(client(7), &[first, second, third], 0)
            .is_none()
    );
}

#[test]
fn max_conns_is_a_hard_limit() {
    let mut config = pool_config("p", Balance::RoundRobin, &[1, 1]);
    config.backends[0].max_conns = 2;
    config.backends[1].max_conns = 1;
    let pool = Pool::build(&config, None);
    let held: Vec<_> = (0..3)
        .map(|n| pool.pick_here(client(n), &[], 0).expect("slot").0)
        .collect();
    assert!(
        pool.pick_here(client(9), &[], 0).is_none(),
        "4th connection over the limits"
    );
    assert_eq!(pool.backends[0].state.active(), 2);
    drop(held);
    assert_eq!(pool.backends[0].state.active(), 0);
    assert!(pool.pick_here(client(9), &[], 0).is_some());
}

#[test]
fn sticky_clients_stay_and_are_repinned_when_their_backend_goes_down() {
    let mut config = pool_config("p", Balance::RoundRobin, &[1, 1, 1]);
    config.sticky = Some(Sticky {
        key: StickyKey::SourceIp,
        ttl: Duration::from_secs(60),
        cookie: String::new(),
        max_entries: 1000,
    });
    let pool = Pool::build(&config, None);
    let first = pool.pick_here(client(1), &[], 0).unwrap().0.address;
    for t in 1..50 {
        let (lease, sticky) = pool.pick_here(client(1), &[], t * 1000).unwrap();
        assert_eq!(lease.address, first);
        assert!(sticky);
    }
    let i = pool
        .backends
        .iter()
        .position(|b| b.address == first)
        .unwrap();
    pool.backends[i].state.set_enabled(false);
    let (moved, sticky) = pool.pick_here(client(1), &[], 50_000).unwrap();
    assert_ne!(moved.address, first);
    assert!(!sticky);
    // Re-pinned: the new backend is sticky now, even after the old one returns.
    pool.backends[i].state.set_enabled(true);
    assert_eq!(
        pool.pick_here(client(1), &[], 51_000).unwrap().0.address,
        moved.address
    );
    // Expired after the TTL: the algorithm chooses again.
    let table = pool.sticky.as_ref().unwrap();
    assert_eq!(table.len(), 1);
    assert!(table.get(&client(1), 51_000 + 60_000).is_none());
}

/// A sticky pool of three checked backends, each still at the check's initial
/// "down" (not checked yet), as on a node that just started.
fn unchecked_sticky_pool() -> Pool {
    let mut config = pool_config("p", Balance::RoundRobin, &[1, 1, 1]);
    config.sticky = Some(Sticky {
        key: StickyKey::SourceIp,
        ttl: Duration::from_secs(60),
        cookie: String::new(),
        max_entries: 1000,
    });
    config.check = Some(tandem_config::Check::new(tandem_config::CheckKind::Tcp));
    let pool = Pool::build(&config, None);
    for b in &pool.backends {
        assert!(!b.state.is_healthy() && !b.state.is_decided());
    }
    pool
}

#[test]
fn a_synced_pin_to_a_backend_not_yet_checked_is_followed_and_kept() {
    let pool = unchecked_sticky_pool();
    let table = pool.sticky.as_ref().unwrap();
    // A pin synced from the peer (where addr(1) was up).
    table.merge(client(1), addr(1), 60_000, 1_000, 7, 0);
    // No backend is usable for a new client yet...
    assert!(pool.pick_here(client(2), &[], 10).is_none());
    // ...but the pinned client goes to its backend.
    let (lease, sticky) = pool.pick_here(client(1), &[], 10).unwrap();
    assert_eq!((lease.address, sticky), (addr(1), true));
    drop(lease);
    // Another backend's checks decide "up" first: the pin is not moved to it.
    pool.backends[0].state.set_healthy(true);
    pool.backends[0].state.set_decided();
    let (lease, sticky) = pool.pick_here(client(1), &[], 20).unwrap();
    assert_eq!((lease.address, sticky), (addr(1), true));
    drop(lease);
    // Its connect failed (tried): served elsewhere this once, the pin stays.
    let (lease, sticky) = pool.pick_here(client(1), &[addr(1)], 30).unwrap();
    assert_eq!((lease.address, sticky), (addr(0), false));
    drop(lease);
    assert_eq!(table.get(&client(1), 40), Some(addr(1)));
    assert_eq!(
        table.entries()[0].1.origin,
        7,
        "the peer's pin, not rewritten"
    );
    // Its checks decide "down": re-pinned as today.
    pool.backends[1].state.set_decided();
    let (lease, sticky) = pool.pick_here(client(1), &[], 50).unwrap();
    assert_eq!((lease.address, sticky), (addr(0), false));
    drop(lease);
    assert_eq!(table.get(&client(1), 60), Some(addr(0)));
}

#[test]
fn a_pin_to_an_unchecked_backend_honours_the_operator_and_max_conns() {
    let pool = unchecked_sticky_pool();
    let table = pool.sticky.as_ref().unwrap();
    table.merge(client(1), addr(1), 60_000, 1_000, 7, 0);
    table.merge(client(2), addr(2), 60_000, 1_000, 7, 0);
    pool.backends[0].state.set_healthy(true);
    pool.backends[0].state.set_decided();
    // Disabled by the operator: a decision, so the client is re-pinned at once.
    pool.backends[1].state.set_enabled(false);
    let (lease, _) = pool.pick_here(client(1), &[], 10).unwrap();
    assert_eq!(lease.address, addr(0));
    assert_eq!(table.get(&client(1), 20), Some(addr(0)));
    drop(lease);
    // Backends without checks count as decided: nothing changes for them.
    let plain = Pool::build(&pool_config("q", Balance::RoundRobin, &[1]), None);
    assert!(plain.backends[0].state.is_decided());
    // An unchecked pinned backend still counts its connections.
    assert!(pool.pick_here(client(2), &[], 30).unwrap().1);
}

#[test]
fn reload_keeps_state_of_backends_that_stay() {
    let config = pool_config("web", Balance::RoundRobin, &[1, 1]);
    let gen1 = PoolSet::build(std::slice::from_ref(&config), None);
    let web1 = gen1.get("web").unwrap();
    web1.backends[0].state.set_enabled(false);
    let lease = web1.backends[1].lease().unwrap();
    let mut changed = config.clone();
    changed.backends.remove(0);
    changed.backends.push(BackendConfig {
        address: addr(5),
        weight: 3,
        max_conns: 0,
        backup: false,
    });
    let gen2 = PoolSet::build(&[changed], Some(&gen1));
    let web2 = gen2.get("web").unwrap();
    assert_eq!(web2.backends.len(), 2);
    assert_eq!(
        web2.backend(&addr(1)).unwrap().state.active(),
        1,
        "counters carried over"
    );
    assert!(web2.backend(&addr(5)).unwrap().state.is_enabled());
    drop(lease);
    assert_eq!(web2.backend(&addr(1)).unwrap().state.active(), 0);
}

#[test]
fn a_down_backends_share_spreads_over_the_others_by_weight() {
    for balance in [Balance::RoundRobin, Balance::LeastConn] {
        let pool = Pool::build(&pool_config("p", balance, &[1, 2, 1, 2]), None);
        pool.backends[1].state.set_healthy(false);
        let s = shares(&pool, 400, false);
        assert_eq!(s, vec![0.25, 0.0, 0.25, 0.5], "{balance:?}");
        pool.backends[1].state.set_healthy(true);
        let s = shares(&pool, 600, false);
        assert_eq!(
            s.iter()
                .map(|x| (x * 600.0).round() as u32)
                .collect::<Vec<_>>(),
            vec![100, 200, 100, 200],
            "{balance:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// N balancers behind ECMP: a client's connections reach any node, and every node
    /// must choose the same backend. Two pools built independently from the same
    /// configuration (for maglev, from the backends listed in another order), with the
    /// same backends down, choose the same backend for every key, IPv4 and IPv6.
    #[test]
    fn independently_built_pools_choose_the_same_backend_for_every_key(
        weights in prop::collection::vec(1u32..=8, 1..=12),
        down in prop::collection::vec(any::<bool>(), 12),
        maglev in any::<bool>(),
        rotate in 0usize..12,
    ) {
        let algorithm = if maglev { Balance::Maglev } else { Balance::SourceHash };
        let config = pool_config("p", algorithm, &weights);
        let mut other = config.clone();
        if maglev {
            let r = rotate % other.backends.len();
            other.backends.rotate_left(r);
        }
        let node_a = Pool::build(&config, None);
        let node_b = Pool::build(&other, None);
        for (i, b) in config.backends.iter().enumerate() {
            // Leave at least one backend up.
            if down[i] && i > 0 {
                node_a.backend(&b.address).unwrap().state.set_healthy(false);
                node_b.backend(&b.address).unwrap().state.set_healthy(false);
            }
        }
        for k in 0..5_000u32 {
            let v4 = client(k);
            let v6 = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            for key in [v4, v6] {
                let a = node_a.pick_here(key, &[], 0).unwrap().0.address;
                let b = node_b.pick_here(key, &[], 0).unwrap().0.address;
                prop_assert_eq!(a, b, "key {} on {:?}", key, algorithm);
            }
        }
    }
}
