//! Selection algorithms. Each picks an index into a slice of backends given a predicate
//! that says which indexes are usable now; none of them takes a lock.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwap;

use tandem_config::Balance;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::Backend;

/// Seed of every hash two nodes must agree on (source-hash, maglev). Changing it moves
/// every client of every hashed pool: never change it.
pub const HASH_SEED: u64 = 0x7461_6e64_656d_0001; // "tandem" 1

/// How many extra hash probes a hashed pick makes before walking the table.
const HASH_PROBES: u64 = 16;

/// A selector over one set of backends (the primaries or the backups of a pool).
#[derive(Debug)]
pub struct Selector {
    algorithm: Balance,
    /// Smooth weighted sequence of backend indexes: each index appears `weight` times,
    /// spread as evenly as the weights allow.
    sequence: Box<[u32]>,
    /// The same over the backends that are healthy and enabled, as of a state epoch:
    /// round-robin walks it, so a down backend's share spreads over the others by
    /// weight instead of falling to its successor. Rebuilt on the first pick after a
    /// health or operator change.
    effective: ArcSwap<Effective>,
    cursor: AtomicUsize,
    maglev: Option<Box<[u32]>>,
    /// Indexes (into the pool's backends) this selector chooses among.
    members: Box<[u32]>,
}

impl Selector {
    /// Builds a selector over `members` (indexes into `backends`).
    pub fn new(algorithm: Balance, backends: &[Backend], members: Vec<u32>) -> Selector {
        let sequence = smooth_sequence(backends, &members);
        let maglev = (algorithm == Balance::Maglev && !members.is_empty())
            .then(|| maglev_table(backends, &members));
        let effective = ArcSwap::from_pointee(Effective {
            epoch: u64::MAX,
            sequence: sequence.clone().into(),
        });
        Selector {
            algorithm,
            sequence,
            effective,
            cursor: AtomicUsize::new(0),
            maglev,
            members: members.into_boxed_slice(),
        }
    }

    /// Whether it has no backends.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Picks a usable backend index for `client`, or `None` when none is usable.
    pub fn pick(
        &self,
        backends: &[Backend],
        client: IpAddr,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.sequence.is_empty() {
            return None;
        }
        match self.algorithm {
            Balance::RoundRobin => walk(&self.live_sequence(backends), self.next_cursor(), &usable),
            Balance::LeastConn => self.least_conn(backends, &usable),
            Balance::Random => self.power_of_two(backends, &usable),
            Balance::SourceHash => self.hashed(&self.sequence, client, &usable),
            Balance::Maglev => self.hashed(
                self.maglev.as_deref().unwrap_or(&self.sequence),
                client,
                &usable,
            ),
        }
    }

    fn next_cursor(&self) -> usize {
        self.cursor.fetch_add(1, Relaxed)
    }

    /// The sequence over healthy, enabled members (all members when none is).
    fn live_sequence(&self, backends: &[Backend]) -> Arc<[u32]> {
        let epoch = crate::backend::state_epoch();
        let cached = self.effective.load();
        if cached.epoch == epoch {
            return cached.sequence.clone();
        }
        let live: Vec<u32> = self
            .members
            .iter()
            .copied()
            .filter(|&i| backends[i as usize].state.is_selectable())
            .collect();
        let sequence: Arc<[u32]> = if live.is_empty() {
            self.sequence.clone().into()
        } else {
            smooth_sequence(backends, &live).into()
        };
        self.effective.store(Arc::new(Effective {
            epoch,
            sequence: sequence.clone(),
        }));
        sequence
    }

    /// First usable entry of the full sequence from `start` on, wrapping once.
    fn walk(&self, start: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        walk(&self.sequence, start, usable)
    }

    /// Fewest active connections per weight; ties go round-robin in weighted order.
    fn least_conn(&self, backends: &[Backend], usable: &impl Fn(usize) -> bool) -> Option<usize> {
        // (active, weight) of the least loaded usable backend, compared by cross-multiplying.
        let load = |i: usize| (backends[i].state.active() as u64, backends[i].weight as u64);
        let best = self
            .members
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| usable(i))
            .map(load)
            .min_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))?;
        let start = self.next_cursor();
        let live = self.live_sequence(backends);
        walk(&live, start, &|i| {
            let l = load(i);
            l.0 * best.1 == best.0 * l.1 && usable(i)
        })
        .or_else(|| self.walk(start, usable))
    }

    /// Two weighted random draws, the less loaded wins.
    fn power_of_two(&self, backends: &[Backend], usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        let draw = || self.sequence[fastrand::usize(..len)] as usize;
        let load =
            |i: usize| backends[i].state.active() as u64 * 1024 / backends[i].weight.max(1) as u64;
        for _ in 0..4 {
            let (a, b) = (draw(), draw());
            match (usable(a), usable(b)) {
                (true, true) => return Some(if load(b) < load(a) { b } else { a }),
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                (false, false) => {}
            }
        }
        self.walk(fastrand::usize(..len), usable)
    }

    /// The slot of `client`'s hash in `table`; if unusable, further hash probes, then a
    /// walk. Deterministic, so every node maps a client to the same backend.
    fn hashed(
        &self,
        table: &[u32],
        client: IpAddr,
        usable: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let key = ip_bytes(&client);
        let slot = |probe: u64| {
            table[(xxh3_64_with_seed(&key, HASH_SEED.wrapping_add(probe)) % table.len() as u64)
                as usize] as usize
        };
        (0..=HASH_PROBES)
            .map(slot)
            .find(|&i| usable(i))
            .or_else(|| {
                if self.maglev.is_some() {
                    // Walk the table from the key's first slot: its slots name backends
                    // by address, so every node walks alike whatever the order of its
                    // configuration (the weighted sequence below follows file order).
                    if !self.sequence.iter().any(|&i| usable(i as usize)) {
                        return None;
                    }
                    let first = (xxh3_64_with_seed(&key, HASH_SEED) % table.len() as u64) as usize;
                    return (1..table.len())
                        .map(|j| table[(first + j) % table.len()] as usize)
                        .find(|&i| usable(i));
                }
                let start = slot(0);
                let at = self
                    .sequence
                    .iter()
                    .position(|&i| i as usize == start)
                    .unwrap_or(0);
                self.walk(at, usable)
            })
    }

    /// The maglev lookup table, when the algorithm is maglev (for tests and status).
    pub fn maglev_table(&self) -> Option<&[u32]> {
        self.maglev.as_deref()
    }
}

#[derive(Debug)]
struct Effective {
    epoch: u64,
    sequence: Arc<[u32]>,
}

/// First usable entry of `sequence` from `start` on, wrapping once.
fn walk(sequence: &[u32], start: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    let len = sequence.len();
    (0..len)
        .map(|k| sequence[(start + k) % len] as usize)
        .find(|&i| usable(i))
}

/// The bytes hashed for a client address (IPv4-mapped IPv6 counts as IPv4).
pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// One cycle of nginx's smooth weighted round-robin: each step every backend's current
/// weight grows by its weight, the largest is chosen and loses the total. Each backend
/// appears exactly `weight` times per cycle, spread without bursts (5,1,1 gives
/// a a b a c a a). Weights are first divided by their common divisor; a cycle too large
/// to compute this way (over 50M steps) uses an even stride interleave instead.
fn smooth_sequence(backends: &[Backend], members: &[u32]) -> Box<[u32]> {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let divisor = members
        .iter()
        .map(|&i| backends[i as usize].weight.max(1) as u64)
        .fold(0, gcd)
        .max(1);
    let weights: Vec<i64> = members
        .iter()
        .map(|&i| (backends[i as usize].weight.max(1) as u64 / divisor) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    if (total as u64).saturating_mul(members.len() as u64) <= 50_000_000 {
        let mut current = vec![0i64; members.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (n, w) in weights.iter().enumerate() {
                current[n] += w;
                if current[n] > current[best] {
                    best = n;
                }
            }
            current[best] -= total;
            sequence.push(members[best]);
        }
        return sequence.into_boxed_slice();
    }
    // Stride interleave: the k-th turn of a backend of weight w at (k + 1/2) / w.
    const SCALE: u64 = 1 << 40;
    let mut turns: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
    for (n, &i) in members.iter().enumerate() {
        let w = weights[n] as u64;
        turns.extend((0..w).map(|k| ((2 * k + 1) * SCALE / (2 * w), i)));
    }
    turns.sort_unstable();
    turns.into_iter().map(|(_, i)| i).collect()
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016) with weighted turns: each backend
/// walks its own permutation of the slots and takes `weight` free slots per round.
/// Permutations come from hashes of the backend's address, so every node builds the
/// same table from the same backends, whatever their order in the file.
fn maglev_table(backends: &[Backend], members: &[u32]) -> Box<[u32]> {
    let size = maglev_size(members.len());
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size];
    // Fill in a stable order (by address) so the table does not depend on file order.
    let mut order: Vec<u32> = members.to_vec();
    order.sort_by_key(|&i| backends[i as usize].address);
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = backends[i as usize].address.to_string();
            let offset = xxh3_64_with_seed(name.as_bytes(), HASH_SEED ^ 0x6f66) % size as u64;
            let skip =
                xxh3_64_with_seed(name.as_bytes(), HASH_SEED ^ 0x736b) % (size as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut filled = 0;
    'fill: loop {
        for (n, &i) in order.iter().enumerate() {
            for _ in 0..backends[i as usize].weight.max(1) {
                let (offset, skip) = perms[n];
                let mut slot = ((offset + next[n] * skip) % size as u64) as usize;
                while table[slot] != EMPTY {
                    next[n] += 1;
                    slot = ((offset + next[n] * skip) % size as u64) as usize;
                }
                table[slot] = i;
                next[n] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table.into_boxed_slice()
}

/// Maglev table size: the first prime of a fixed ladder that is at least 100 times the
/// backends. A fixed ladder (not "the next prime above 100 x N") keeps the size, and so
/// every other key's slot, unchanged when one backend joins or leaves.
fn maglev_size(backends: usize) -> usize {
    const LADDER: [usize; 6] = [65_537, 131_071, 262_139, 524_287, 1_048_573, 2_097_143];
    let need = backends * 100;
    LADDER
        .into_iter()
        .find(|&p| p >= need)
        .unwrap_or_else(|| next_prime(need as u64) as usize)
}

fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(n, &weight)| Backend {
                address: std::net::SocketAddr::from(([10, 0, 0, n as u8 + 1], 80)),
                weight,
                max_conns: 0,
                backup: false,
                state: std::sync::Arc::new(crate::BackendState::new(true)),
            })
            .collect()
    }

    #[test]
    fn smooth_sequence_matches_nginx() {
        let b = backends(&[5, 1, 1]);
        assert_eq!(&*smooth_sequence(&b, &[0, 1, 2]), &[0, 0, 1, 0, 2, 0, 0]);
        // Common divisors do not lengthen the cycle.
        let b = backends(&[20, 10]);
        assert_eq!(&*smooth_sequence(&b, &[0, 1]), &[0, 1, 0]);
    }

    #[test]
    fn maglev_table_is_independent_of_member_order() {
        let b = backends(&[1, 2, 1, 3]);
        let t1 = maglev_table(&b, &[0, 1, 2, 3]);
        let t2 = maglev_table(&b, &[3, 1, 0, 2]);
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 65_537);
        assert_eq!(maglev_size(656), 131_071);
        for size in [65_537, 131_071, 262_139, 524_287, 1_048_573, 2_097_143] {
            assert_eq!(next_prime(size as u64), size as u64, "{size} is prime");
        }
    }

    #[test]
    fn next_prime_finds_primes() {
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(300), 307);
        assert_eq!(next_prime(7), 7);
    }
}
