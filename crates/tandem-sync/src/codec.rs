//! Frames and messages of the sync protocol.
//!
//! On the wire each frame is `u32 length | 32-byte HMAC-SHA256 | u64 sequence | payload`,
//! the payload a postcard-encoded [`Message`]. The first frame each side sends is its
//! [`Message::Hello`], authenticated with the shared key itself; every later frame is
//! authenticated with a session key derived from both sides' fresh nonces, and carries
//! the next sequence number of its direction. So a peer without the key cannot send
//! anything that is accepted, and a frame replayed, reordered, tampered with or taken
//! from another session is refused.
//!
//! Versions: each hello says the lowest and the highest protocol version its node
//! speaks ([`MIN_VERSION`]..=[`VERSION`]); a session speaks the highest both do. Version
//! 1 sends each sticky entry whole ([`Message::Entries`]); version 2 packs them
//! ([`Message::Packed`], see [`Packed`]), about a sixth to a third of the bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Highest protocol version this node speaks: 2, sticky entries packed.
pub const VERSION: u16 = 2;
/// Lowest protocol version this node speaks: 1, every entry whole (what nodes before
/// version 2 speak, and all they speak: they refuse a hello whose `version` is not 1).
pub const MIN_VERSION: u16 = 1;
/// Largest frame accepted (length field included).
pub const MAX_FRAME: usize = 4 << 20;
const MAC_LEN: usize = 32;
const SEQ_LEN: usize = 8;

/// One sticky entry on the wire. Ordered by its fields in turn (pool, client, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WireEntry {
    /// Pool (shared by the entries of a pool: a clone costs no allocation; on the wire
    /// a string, as serde's `rc` feature writes an `Arc<str>`).
    pub pool: Arc<str>,
    /// Client address (the sticky key).
    pub client: IpAddr,
    /// The backend it is pinned to.
    pub backend: SocketAddr,
    /// Milliseconds the entry has left (the receiver expires it at the same wall time).
    pub remaining_ms: u64,
    /// When the pin was decided (Unix ms): the newer pin wins a conflict.
    pub pinned_at_ms: u64,
    /// The node that decided it (a stable hash of its name): breaks ties of `pinned_at_ms`.
    pub origin: u64,
}

/// A message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message of each side.
    Hello {
        /// Lowest protocol version the node speaks ([`MIN_VERSION`]).
        version: u16,
        /// Node name.
        node: String,
        /// Fresh random nonce of this session.
        nonce: [u8; 32],
        /// Digest of the pool configuration, to report mismatched peers.
        pools_digest: u64,
        /// This node's process took over from its predecessor (`tandem upgrade`) with
        /// its table, and this is its first session with the peer: no bulk transfer is
        /// due either way, and the predecessor's session ending is not the node's exit.
        /// Sent last: a node that predates it ignores the trailing byte (postcard reads
        /// what it knows), and its hello, without the byte, reads as `false`.
        resumed: bool,
        /// Highest protocol version the node speaks ([`VERSION`]). Sent after
        /// `resumed`, for the same reason: a node of version 1 ignores it, and its hello
        /// without it reads as `version`.
        max_version: u16,
    },
    /// Please send the whole table.
    BulkRequest,
    /// Sticky entries: part of a bulk transfer, or a batch of changes.
    Entries {
        /// Part of a bulk transfer.
        bulk: bool,
        /// The entries.
        entries: Vec<WireEntry>,
    },
    /// The bulk transfer is complete.
    BulkEnd,
    /// Entries removed (evicted from a full table).
    Deletes(Vec<(String, IpAddr)>),
    /// An operator enabled or disabled a backend.
    Backend {
        /// Pool.
        pool: String,
        /// Backend address.
        address: SocketAddr,
        /// New flag.
        enabled: bool,
    },
    /// Nothing to say; the link is alive.
    Heartbeat,
    /// An ACME record (the account, a challenge, a certificate), encoded by the
    /// daemon: a bulk transfer carries the current ones, a change the new one.
    Acme(Vec<u8>),
    /// Sticky entries packed (version 2; never sent to a node of version 1): what
    /// [`Message::Entries`] carries, in a fraction of the bytes.
    Packed {
        /// Part of a bulk transfer.
        bulk: bool,
        /// The entries.
        entries: Packed,
    },
}

/// Sticky entries in version 2's packed form. Grouped by pool, the pool's name once per
/// group; each group lists its backends and its origins once, and an entry refers to
/// the pair by one index; clients are sorted and each sent as its difference from the
/// one before (IPv4 and IPv6 apart); the remaining time and the pin's age (from the
/// group's newest pin) as differences from the entry before. Every number is a
/// postcard varint (signed ones zigzag), so an entry of a pool with fewer than 128
/// backend-origin pairs takes 4 bytes when its neighbours are close in address and
/// time, and about 10 when nothing is alike (whole: 36 for IPv4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    groups: Vec<PackedGroup>,
}

/// The entries of one pool in a [`Packed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PackedGroup {
    pool: String,
    backends: Vec<SocketAddr>,
    origins: Vec<u64>,
    /// The newest `pinned_at_ms` of the group: entries carry their age from it.
    newest_pin_ms: u64,
    v4: Vec<PackedEntry<u32>>,
    v6: Vec<PackedEntry<u128>>,
}

/// One entry of a [`PackedGroup`]: every field relative to the entry before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PackedEntry<C> {
    /// The client address less the one before (the first: less zero).
    client: C,
    /// `backend index * origins + origin index`.
    slot: u64,
    /// `remaining_ms` less the one before (wrapping, two's complement).
    remaining: i64,
    /// `newest_pin_ms - pinned_at_ms` less the one before (wrapping).
    age: i64,
}

/// Deltas of the running fields of a group's entries, both ways.
#[derive(Default)]
struct Running {
    remaining: u64,
    age: u64,
}

impl Running {
    fn encode(&mut self, remaining: u64, age: u64) -> (i64, i64) {
        let d = (
            remaining.wrapping_sub(self.remaining) as i64,
            age.wrapping_sub(self.age) as i64,
        );
        (self.remaining, self.age) = (remaining, age);
        d
    }

    fn decode(&mut self, remaining: i64, age: i64) -> (u64, u64) {
        self.remaining = self.remaining.wrapping_add(remaining as u64);
        self.age = self.age.wrapping_add(age as u64);
        (self.remaining, self.age)
    }
}

impl Packed {
    /// Packs `entries` (any order; an entry given twice is sent twice).
    pub fn pack(entries: &[WireEntry]) -> Packed {
        // Each pool's entries by address family, keyed by the address as a number (so
        // the sort compares integers). Pools in order of first appearance.
        let mut pools: Vec<PoolEntries<'_>> = Vec::new();
        let mut last = 0;
        for (i, e) in entries.iter().enumerate() {
            if pools.get(last).is_none_or(|p| !p.is(&e.pool)) {
                last = match pools.iter().position(|p| p.is(&e.pool)) {
                    Some(j) => j,
                    None => {
                        pools.push(PoolEntries {
                            pool: &e.pool,
                            v4: Vec::new(),
                            v6: Vec::new(),
                        });
                        pools.len() - 1
                    }
                };
            }
            let i = i as u32;
            match e.client {
                IpAddr::V4(a) => pools[last].v4.push((u32::from(a), i)),
                IpAddr::V6(a) => pools[last].v6.push((u128::from(a), i)),
            }
        }
        let groups = pools
            .into_iter()
            .map(|mut p| {
                p.v4.sort_unstable();
                p.v6.sort_unstable();
                PackedGroup::pack(p, entries)
            })
            .collect();
        Packed { groups }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.v4.len() + g.v6.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, or why they cannot be (an index out of its table).
    pub fn unpack(&self) -> Result<Vec<WireEntry>, FrameError> {
        let mut out = Vec::with_capacity(self.len());
        for g in &self.groups {
            g.unpack(&mut out)?;
        }
        Ok(out)
    }
}

/// A client address as a number: its difference from the one before goes on the wire.
trait Address: Copy + Default {
    fn wrapping_sub(self, other: Self) -> Self;
}

impl Address for u32 {
    fn wrapping_sub(self, other: u32) -> u32 {
        u32::wrapping_sub(self, other)
    }
}

impl Address for u128 {
    fn wrapping_sub(self, other: u128) -> u128 {
        u128::wrapping_sub(self, other)
    }
}

/// Sorted `(client, entry index)` pairs as packed entries: each client as its difference
/// from the one before, the rest from `pack` (slot, remaining, age).
fn differences<C: Address>(
    sorted: &[(C, u32)],
    mut pack: impl FnMut(u32) -> (u64, i64, i64),
) -> Vec<PackedEntry<C>> {
    let mut prev = C::default();
    sorted
        .iter()
        .map(|&(client, i)| {
            let (slot, remaining, age) = pack(i);
            let delta = client.wrapping_sub(prev);
            prev = client;
            PackedEntry {
                client: delta,
                slot,
                remaining,
                age,
            }
        })
        .collect()
}

/// One pool's entries while packing: client addresses and indices into the entries.
struct PoolEntries<'a> {
    pool: &'a Arc<str>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u32)>,
}

impl PoolEntries<'_> {
    fn is(&self, pool: &Arc<str>) -> bool {
        Arc::ptr_eq(self.pool, pool) || self.pool == pool
    }
}

/// A group's backend table while packing: a list searched while short, a map beyond.
#[derive(Default)]
struct BackendTable {
    list: Vec<SocketAddr>,
    map: HashMap<SocketAddr, u64>,
}

impl BackendTable {
    const SHORT: usize = 16;

    fn index(&mut self, backend: SocketAddr) -> u64 {
        if self.list.len() <= Self::SHORT {
            if let Some(i) = self.list.iter().position(|b| *b == backend) {
                return i as u64;
            }
        } else if let Some(i) = self.map.get(&backend) {
            return *i;
        }
        self.list.push(backend);
        if self.list.len() > Self::SHORT {
            if self.map.is_empty() {
                self.map
                    .extend(self.list.iter().enumerate().map(|(i, b)| (*b, i as u64)));
            } else {
                self.map.insert(backend, self.list.len() as u64 - 1);
            }
        }
        self.list.len() as u64 - 1
    }
}

impl PackedGroup {
    /// One pool's entries, sorted by client.
    fn pack(pool: PoolEntries<'_>, entries: &[WireEntry]) -> PackedGroup {
        let all = || {
            pool.v4
                .iter()
                .map(|(_, i)| &entries[*i as usize])
                .chain(pool.v6.iter().map(|(_, i)| &entries[*i as usize]))
        };
        let mut origins: Vec<u64> = Vec::new();
        let mut newest_pin_ms = 0;
        for e in all() {
            if origins.last() != Some(&e.origin) && !origins.contains(&e.origin) {
                origins.push(e.origin);
            }
            newest_pin_ms = newest_pin_ms.max(e.pinned_at_ms);
        }
        let n_origins = origins.len() as u64;
        let mut backends = BackendTable::default();
        let mut running = Running::default();
        let mut last_origin = 0;
        let mut pack = |e: &WireEntry| {
            if origins[last_origin] != e.origin {
                last_origin = origins.iter().position(|o| *o == e.origin).unwrap_or(0);
            }
            let slot = backends.index(e.backend) * n_origins + last_origin as u64;
            let (remaining, age) = running.encode(e.remaining_ms, newest_pin_ms - e.pinned_at_ms);
            (slot, remaining, age)
        };
        let v4 = differences(&pool.v4, |i| pack(&entries[i as usize]));
        let v6 = differences(&pool.v6, |i| pack(&entries[i as usize]));
        PackedGroup {
            pool: pool.pool.to_string(),
            backends: backends.list,
            origins,
            newest_pin_ms,
            v4,
            v6,
        }
    }

    fn unpack(&self, out: &mut Vec<WireEntry>) -> Result<(), FrameError> {
        let pool: Arc<str> = Arc::from(self.pool.as_str());
        let n_origins = self.origins.len() as u64;
        let mut running = Running::default();
        let mut entry = |slot: u64, remaining: i64, age: i64, client: IpAddr| {
            let (backend, origin) = (slot.checked_div(n_origins), slot.checked_rem(n_origins));
            let backend = backend.and_then(|b| self.backends.get(usize::try_from(b).ok()?));
            let (Some(backend), Some(origin)) = (backend, origin) else {
                return Err(FrameError::Decode(format!(
                    "packed entry of pool {:?}: slot {slot} beyond its {} backends x {} origins",
                    self.pool,
                    self.backends.len(),
                    n_origins
                )));
            };
            let (remaining_ms, age) = running.decode(remaining, age);
            out.push(WireEntry {
                pool: pool.clone(),
                client,
                backend: *backend,
                remaining_ms,
                pinned_at_ms: self.newest_pin_ms.wrapping_sub(age),
                origin: self.origins[origin as usize],
            });
            Ok(())
        };
        let mut prev4 = 0u32;
        for e in &self.v4 {
            prev4 = prev4.wrapping_add(e.client);
            entry(
                e.slot,
                e.remaining,
                e.age,
                IpAddr::from(prev4.to_be_bytes()),
            )?;
        }
        let mut prev6 = 0u128;
        for e in &self.v6 {
            prev6 = prev6.wrapping_add(e.client);
            entry(
                e.slot,
                e.remaining,
                e.age,
                IpAddr::from(prev6.to_be_bytes()),
            )?;
        }
        Ok(())
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its fixed part, or longer than allowed.
    #[error("malformed frame length")]
    Length,
    /// The MAC does not verify: wrong key, tampering, or another session's frame.
    #[error("authentication failed (wrong key or tampered frame)")]
    Mac,
    /// Not the next sequence number: replayed, reordered or lost frame.
    #[error("sequence {got} where {expected} was due (replayed or reordered frame)")]
    Sequence {
        /// Expected number.
        expected: u64,
        /// Received number.
        got: u64,
    },
    /// The payload is not a message.
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// Which side of a session sends: bound into every MAC so a frame cannot be reflected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the node that connected.
    FromInitiator,
    /// From the node that accepted.
    FromResponder,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::FromInitiator => 1,
            Direction::FromResponder => 2,
        }
    }
}

/// A key for [`seal`] and [`open`].
#[derive(Clone)]
pub struct FrameKey(hmac::Key);

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

impl FrameKey {
    /// A key from the shared secret.
    pub fn from_secret(secret: &[u8]) -> FrameKey {
        FrameKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The session key of the session with these nonces.
    pub fn session(&self, initiator_nonce: &[u8; 32], responder_nonce: &[u8; 32]) -> FrameKey {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"tandem-sync session v1");
        ctx.update(initiator_nonce);
        ctx.update(responder_nonce);
        FrameKey(hmac::Key::new(hmac::HMAC_SHA256, ctx.sign().as_ref()))
    }

    fn tag(&self, direction: Direction, seq: u64, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&[direction.byte()]);
        ctx.update(&seq.to_be_bytes());
        ctx.update(payload);
        ctx.sign()
    }
}

/// A whole frame (length included) carrying `message` as number `seq` of `direction`.
pub fn seal(key: &FrameKey, direction: Direction, seq: u64, message: &Message) -> Vec<u8> {
    let payload = postcard::to_stdvec(message).expect("messages always encode");
    seal_payload(key, direction, seq, &payload)
}

/// A whole frame around an already encoded `payload` (the fuzzer signs arbitrary bytes
/// with it, to reach the decoder behind the MAC).
pub fn seal_payload(key: &FrameKey, direction: Direction, seq: u64, payload: &[u8]) -> Vec<u8> {
    let tag = key.tag(direction, seq, payload);
    let len = MAC_LEN + SEQ_LEN + payload.len();
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend_from_slice(tag.as_ref());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Checks and decodes a frame body (without its length field) that should be number
/// `expected` of `direction`.
pub fn open(
    key: &FrameKey,
    direction: Direction,
    expected: u64,
    body: &[u8],
) -> Result<Message, FrameError> {
    if body.len() < MAC_LEN + SEQ_LEN || body.len() + 4 > MAX_FRAME {
        return Err(FrameError::Length);
    }
    let (mac, rest) = body.split_at(MAC_LEN);
    let (seq, payload) = rest.split_at(SEQ_LEN);
    let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
    let mut ctx_input = Vec::with_capacity(1 + SEQ_LEN + payload.len());
    ctx_input.push(direction.byte());
    ctx_input.extend_from_slice(&seq.to_be_bytes());
    ctx_input.extend_from_slice(payload);
    hmac::verify(&key.0, &ctx_input, mac).map_err(|_| FrameError::Mac)?;
    if seq != expected {
        return Err(FrameError::Sequence { expected, got: seq });
    }
    postcard::from_bytes(payload)
        .or_else(|e| earlier_hello(payload).ok_or(e))
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// The hello of a node from before [`Message::Hello`]'s trailing fields: without
/// `max_version` (a node of version 1) it reads as speaking `version` only; without
/// `resumed` too, as not resumed.
fn earlier_hello(payload: &[u8]) -> Option<Message> {
    #[derive(Deserialize)]
    enum Earlier {
        Hello {
            version: u16,
            node: String,
            nonce: [u8; 32],
            pools_digest: u64,
        },
    }
    let (
        Earlier::Hello {
            version,
            node,
            nonce,
            pools_digest,
        },
        rest,
    ) = postcard::take_from_bytes(payload).ok()?;
    let (resumed, rest) = postcard::take_from_bytes::<bool>(rest).unwrap_or((false, rest));
    let max_version = postcard::take_from_bytes::<u16>(rest).map_or(version, |(v, _)| v);
    Some(Message::Hello {
        version,
        node,
        nonce,
        pools_digest,
        resumed,
        max_version,
    })
}

/// The payload of a hello as a node of version 1 encodes it (without
/// `max_version`): what a node limited to version 1 sends, byte for byte.
pub fn version1_hello(node: &str, nonce: [u8; 32], pools_digest: u64, resumed: bool) -> Vec<u8> {
    #[derive(Serialize)]
    enum Version1<'a> {
        Hello {
            version: u16,
            node: &'a str,
            nonce: [u8; 32],
            pools_digest: u64,
            resumed: bool,
        },
    }
    postcard::to_stdvec(&Version1::Hello {
        version: 1,
        node,
        nonce,
        pools_digest,
        resumed,
    })
    .expect("hellos always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> WireEntry {
        WireEntry {
            pool: "web".into(),
            client: IpAddr::from([192, 0, 2, n]),
            backend: "10.0.0.1:80".parse().unwrap(),
            remaining_ms: 60_000,
            pinned_at_ms: 1_700_000_000_000,
            origin: 0x006c_6231,
        }
    }

    #[test]
    fn sealed_frames_open_with_the_same_key_direction_and_sequence() {
        let key = FrameKey::from_secret(b"0123456789abcdef");
        let msg = Message::Entries {
            bulk: false,
            entries: vec![entry(1), entry(2)],
        };
        let frame = seal(&key, Direction::FromInitiator, 7, &msg);
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        assert_eq!(
            open(&key, Direction::FromInitiator, 7, &frame[4..]),
            Ok(msg)
        );
    }

    #[test]
    fn wrong_key_tampering_reflection_and_replay_are_refused() {
        let key = FrameKey::from_secret(b"0123456789abcdef");
        let frame = seal(&key, Direction::FromInitiator, 3, &Message::Heartbeat);
        let other = FrameKey::from_secret(b"fedcba9876543210");
        assert_eq!(
            open(&other, Direction::FromInitiator, 3, &frame[4..]),
            Err(FrameError::Mac)
        );
        let mut tampered = frame.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&key, Direction::FromInitiator, 3, &tampered[4..]),
            Err(FrameError::Mac)
        );
        assert_eq!(
            open(&key, Direction::FromResponder, 3, &frame[4..]),
            Err(FrameError::Mac),
            "reflected back"
        );
        assert_eq!(
            open(&key, Direction::FromInitiator, 4, &frame[4..]),
            Err(FrameError::Sequence {
                expected: 4,
                got: 3
            }),
            "replayed"
        );
        // Another session's key (other nonces) refuses this session's frames.
        let s1 = key.session(&[1; 32], &[2; 32]);
        let s2 = key.session(&[1; 32], &[3; 32]);
        let frame = seal(&s1, Direction::FromInitiator, 0, &Message::BulkRequest);
        assert_eq!(
            open(&s2, Direction::FromInitiator, 0, &frame[4..]),
            Err(FrameError::Mac)
        );
        assert!(open(&s1, Direction::FromInitiator, 0, &frame[4..]).is_ok());
    }

    #[test]
    fn ten_thousand_entries_fit_in_a_few_frames() {
        let key = FrameKey::from_secret(b"0123456789abcdef");
        let entries: Vec<WireEntry> = (0..4096u32)
            .map(|n| WireEntry {
                client: IpAddr::from(n.to_be_bytes()),
                ..entry(0)
            })
            .collect();
        let frame = seal(
            &key,
            Direction::FromInitiator,
            0,
            &Message::Entries {
                bulk: true,
                entries,
            },
        );
        assert!(frame.len() < MAX_FRAME, "{} bytes", frame.len());
        println!("4096 entries: {} bytes in one frame", frame.len());
    }
}

#[cfg(test)]
mod compatibility {
    use super::*;

    /// The hello as nodes before `resumed` encoded it.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Earlier {
        Hello {
            version: u16,
            node: String,
            nonce: [u8; 32],
            pools_digest: u64,
        },
    }

    /// The messages as nodes of version 1 (with `resumed`) know them: what such a node
    /// decodes (postcard ignores what follows the fields it knows).
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Version1 {
        Hello {
            version: u16,
            node: String,
            nonce: [u8; 32],
            pools_digest: u64,
            resumed: bool,
        },
        BulkRequest,
        Entries {
            bulk: bool,
            entries: Vec<WireEntry>,
        },
    }

    fn hello(resumed: bool, max_version: u16) -> Message {
        Message::Hello {
            version: 1,
            node: "lb2".into(),
            nonce: [7; 32],
            pools_digest: 9,
            resumed,
            max_version,
        }
    }

    fn opened(payload: &[u8]) -> Result<Message, FrameError> {
        let key = FrameKey::from_secret(b"key-key-key-key!");
        let frame = seal_payload(&key, Direction::FromInitiator, 0, payload);
        open(&key, Direction::FromInitiator, 0, &frame[4..])
    }

    #[test]
    fn hellos_of_every_generation_are_read_by_this_one() {
        // Before `resumed`: not resumed, version 1 only.
        let earlier = Earlier::Hello {
            version: 1,
            node: "lb2".into(),
            nonce: [7; 32],
            pools_digest: 9,
        };
        assert_eq!(
            opened(&postcard::to_allocvec(&earlier).unwrap()),
            Ok(hello(false, 1))
        );
        // Version 1 with `resumed`: version 1 only.
        for resumed in [false, true] {
            let v1 = Version1::Hello {
                version: 1,
                node: "lb2".into(),
                nonce: [7; 32],
                pools_digest: 9,
                resumed,
            };
            let bytes = postcard::to_allocvec(&v1).unwrap();
            assert_eq!(opened(&bytes), Ok(hello(resumed, 1)));
            assert_eq!(bytes, version1_hello("lb2", [7; 32], 9, resumed));
        }
        assert_eq!(
            opened(&postcard::to_allocvec(&hello(true, 2)).unwrap()),
            Ok(hello(true, 2))
        );
    }

    /// An entry of pool "web".
    fn web_entry() -> WireEntry {
        WireEntry {
            pool: "web".into(),
            client: IpAddr::from([192, 0, 2, 1]),
            backend: "10.0.0.1:80".parse().unwrap(),
            remaining_ms: 60_000,
            pinned_at_ms: 1_700_000_000_000,
            origin: 0x9E37_79B9_7F4A_7C15,
        }
    }

    #[test]
    fn a_node_of_version_1_reads_this_ones_hello_and_whole_entries() {
        // The hello says version 1 (all such a node accepts); it ignores `max_version`.
        let bytes = postcard::to_allocvec(&hello(true, VERSION)).unwrap();
        assert_eq!(
            postcard::from_bytes::<Version1>(&bytes).unwrap(),
            Version1::Hello {
                version: 1,
                node: "lb2".into(),
                nonce: [7; 32],
                pools_digest: 9,
                resumed: true,
            }
        );
        // Whole entries are encoded as version 1 encoded them.
        let entries = vec![web_entry()];
        let message = Message::Entries {
            bulk: true,
            entries: entries.clone(),
        };
        let bytes = postcard::to_allocvec(&message).unwrap();
        assert_eq!(
            postcard::from_bytes::<Version1>(&bytes).unwrap(),
            Version1::Entries {
                bulk: true,
                entries
            }
        );
    }

    #[test]
    fn whole_and_packed_entries_keep_their_bytes() {
        // The bytes of version 1's whole entries and version 2's packed ones, as nodes
        // already running send and expect them.
        let entries = vec![
            web_entry(),
            WireEntry {
                pool: "api".into(),
                client: "2001:db8::7".parse().unwrap(),
                backend: "[2001:db8::1]:443".parse().unwrap(),
                remaining_ms: 5,
                pinned_at_ms: 1_700_000_000_001,
                origin: 3,
            },
        ];
        let hex = |m: &Message| {
            postcard::to_allocvec(m)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let whole = Message::Entries {
            bulk: true,
            entries: entries.clone(),
        };
        let packed = Message::Packed {
            bulk: false,
            entries: Packed::pack(&entries),
        };
        assert_eq!(
            hex(&whole),
            "0201020377656200c0000201000a00000150e0d40380d095ffbc3195f8a9fa97b7de9b9e01\
             036170690120010db80000000000000000000000070120010db8000000000000000000000001\
             bb030581d095ffbc3103"
        );
        assert_eq!(
            hex(&packed),
            "0800020377656201000a000001500195f8a9fa97b7de9b9e0180d095ffbc3101818480800c00\
             c0a907000003617069010120010db8000000000000000000000001bb03010381d095ffbc3100\
             018780808080808080808080808080ee868140000a00"
        );
        assert_eq!(opened(&postcard::to_allocvec(&whole).unwrap()), Ok(whole));
    }
}

#[cfg(test)]
mod packing {
    use super::*;

    fn entry(n: u32) -> WireEntry {
        WireEntry {
            pool: "st".into(),
            client: IpAddr::from(0x0a00_0000u32.wrapping_add(n).to_be_bytes()),
            backend: SocketAddr::from(([127, 1, 0, 2 + (n % 10) as u8], 23100)),
            remaining_ms: 3_600_000,
            pinned_at_ms: 1_800_000_000_000,
            origin: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// `entries` sorted, to compare as sets.
    fn sorted(mut entries: Vec<WireEntry>) -> Vec<WireEntry> {
        entries.sort();
        entries
    }

    fn frame_len(message: &Message) -> usize {
        seal(
            &FrameKey::from_secret(b"k"),
            Direction::FromInitiator,
            0,
            message,
        )
        .len()
    }

    #[test]
    fn packed_entries_are_the_entries_in_a_fraction_of_the_bytes() {
        // The bench's table: consecutive clients, ten backends, one origin, the same
        // times; a frame's worth taken from all over the table (hash order).
        let entries: Vec<WireEntry> = (0..16_384u32).map(|n| entry(n * 61 % 1_000_000)).collect();
        let packed = Packed::pack(&entries);
        assert_eq!(sorted(packed.unpack().unwrap()), sorted(entries.clone()));
        let whole = frame_len(&Message::Entries {
            bulk: true,
            entries: entries.clone(),
        });
        let small = frame_len(&Message::Packed {
            bulk: true,
            entries: packed,
        });
        println!("16384 entries: {whole} bytes whole, {small} packed");
        assert!(small * 8 < whole, "{small} packed, {whole} whole");
        // Nothing alike: random clients, each with its own times.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let entries: Vec<WireEntry> = (0..16_384)
            .map(|_| WireEntry {
                client: IpAddr::from((next() as u32).to_be_bytes()),
                remaining_ms: next() % 7_200_000,
                pinned_at_ms: 1_800_000_000_000 - next() % 86_400_000,
                ..entry(next() as u32)
            })
            .collect();
        let packed = Packed::pack(&entries);
        assert_eq!(sorted(packed.unpack().unwrap()), sorted(entries.clone()));
        let small = frame_len(&Message::Packed {
            bulk: true,
            entries: packed,
        });
        println!("16384 random entries: {small} bytes packed");
        assert!(small < 16_384 * 12, "{small} bytes");
    }

    #[test]
    fn pools_families_backends_and_origins_mix_in_one_frame() {
        let mut entries = Vec::new();
        for n in 0..300u32 {
            let mut e = entry(n);
            if n % 3 == 0 {
                e.pool = "other".into();
            }
            if n % 5 == 0 {
                e.client = IpAddr::from(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, 0, 0, 0, 0, 7, n as u16,
                ));
                e.backend = "[2001:db8::1]:443".parse().unwrap();
            }
            e.origin = u64::from(n % 4) << 60;
            e.remaining_ms = u64::from(n) * 997;
            e.pinned_at_ms = if n == 7 { 0 } else { u64::MAX - u64::from(n) };
            entries.push(e);
        }
        let packed = Packed::pack(&entries);
        assert_eq!(packed.len(), 300);
        assert_eq!(sorted(packed.unpack().unwrap()), sorted(entries));
        assert!(Packed::pack(&[]).unpack().unwrap().is_empty());
    }

    #[test]
    fn an_index_beyond_its_tables_is_an_error() {
        let mut packed = Packed::pack(&[entry(1), entry(2)]);
        // Two backends, one origin: slots 0 and 1.
        packed.groups[0].v4[1].slot = 2;
        assert!(matches!(packed.unpack(), Err(FrameError::Decode(_))));
        packed.groups[0].v4[1].slot = 1;
        assert_eq!(packed.unpack().unwrap().len(), 2);
        packed.groups[0].origins.clear();
        assert!(matches!(packed.unpack(), Err(FrameError::Decode(_))));
        packed.groups[0].origins.push(1);
        packed.groups[0].v4[0].slot = u64::MAX;
        assert!(matches!(packed.unpack(), Err(FrameError::Decode(_))));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = WireEntry> {
        (
            prop::sample::select(vec!["a", "web", "b"]),
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ],
            prop::sample::select(vec![
                "10.0.0.1:80".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:8080".parse().unwrap(),
                "[2001:db8::2]:443".parse().unwrap(),
            ]),
            any::<u64>(),
            any::<u64>(),
            0..3u64,
        )
            .prop_map(
                |(pool, client, backend, remaining_ms, pinned_at_ms, origin)| WireEntry {
                    pool: pool.into(),
                    client,
                    backend,
                    remaining_ms,
                    pinned_at_ms,
                    origin: origin.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(node in "[a-z0-9-]{0,20}", nonce in any::<[u8; 32]>(), digest in any::<u64>(), seq in any::<u64>(), max_version in 1..5u16) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            let msg = Message::Hello { version: MIN_VERSION, node, nonce, pools_digest: digest, resumed: seq % 2 == 0, max_version };
            let frame = seal(&key, Direction::FromResponder, seq, &msg);
            prop_assert_eq!(open(&key, Direction::FromResponder, seq, &frame[4..]), Ok(msg));
        }

        #[test]
        fn packed_entries_round_trip(entries in prop::collection::vec(arb_entry(), 0..200), seq in any::<u64>()) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            let msg = Message::Packed { bulk: seq % 2 == 0, entries: Packed::pack(&entries) };
            let frame = seal(&key, Direction::FromInitiator, seq, &msg);
            let opened = open(&key, Direction::FromInitiator, seq, &frame[4..]).unwrap();
            prop_assert_eq!(&opened, &msg);
            let Message::Packed { entries: packed, .. } = opened else { unreachable!() };
            let mut got = packed.unpack().unwrap();
            let mut want = entries;
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bodies_are_refused_without_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            prop_assert!(open(&key, Direction::FromInitiator, 0, &body).is_err());
        }

        #[test]
        fn arbitrary_authentic_payloads_decode_or_are_refused_without_panic(payload in prop::collection::vec(any::<u8>(), 0..300)) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            let mut packed = payload.clone();
            packed.insert(0, 8); // Message::Packed's index
            for p in [payload, packed] {
                let frame = seal_payload(&key, Direction::FromInitiator, 3, &p);
                if let Ok(Message::Packed { entries, .. }) = open(&key, Direction::FromInitiator, 3, &frame[4..]) {
                    let _ = entries.unpack();
                }
            }
        }
    }
}
