//! Frames and messages of the sync protocol.
//!
//! On the wire each frame is `u32 length | 32-byte HMAC-SHA256 | u64 sequence | payload`,
//! the payload a postcard-encoded [`Message`]. The first frame each side sends is its
//! [`Message::Hello`], authenticated with the shared key itself; every later frame is
//! authenticated with a session key derived from both sides' fresh nonces, and carries
//! the next sequence number of its direction. So a peer without the key cannot send
//! anything that is accepted, and a frame replayed, reordered, tampered with or taken
//! from another session is refused.

use std::net::{IpAddr, SocketAddr};

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Protocol version in the hello.
pub const VERSION: u16 = 1;
/// Largest frame accepted (length field included).
pub const MAX_FRAME: usize = 4 << 20;
const MAC_LEN: usize = 32;
const SEQ_LEN: usize = 8;

/// One sticky entry on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Pool.
    pub pool: String,
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
        /// Protocol version.
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

/// The hello of a node from before [`Message::Hello`]'s `resumed`: the same fields
/// without it, read as `resumed: false`.
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
    match postcard::from_bytes(payload).ok()? {
        Earlier::Hello {
            version,
            node,
            nonce,
            pools_digest,
        } => Some(Message::Hello {
            version,
            node,
            nonce,
            pools_digest,
            resumed: false,
        }),
    }
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

    #[test]
    fn hellos_with_and_without_resumed_are_read_by_both_generations() {
        let key = FrameKey::from_secret(b"key-key-key-key!");
        let earlier = Earlier::Hello {
            version: VERSION,
            node: "lb2".into(),
            nonce: [7; 32],
            pools_digest: 9,
        };
        // An earlier node's hello reads as not resumed.
        let payload = postcard::to_allocvec(&earlier).unwrap();
        let frame = seal_payload(&key, Direction::FromInitiator, 0, &payload);
        assert_eq!(
            open(&key, Direction::FromInitiator, 0, &frame[4..]),
            Ok(Message::Hello {
                version: VERSION,
                node: "lb2".into(),
                nonce: [7; 32],
                pools_digest: 9,
                resumed: false,
            })
        );
        // A resumed hello reads, for an earlier node, as its plain hello.
        let now = Message::Hello {
            version: VERSION,
            node: "lb2".into(),
            nonce: [7; 32],
            pools_digest: 9,
            resumed: true,
        };
        let bytes = postcard::to_allocvec(&now).unwrap();
        assert_eq!(postcard::from_bytes::<Earlier>(&bytes).unwrap(), earlier);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(node in "[a-z0-9-]{0,20}", nonce in any::<[u8; 32]>(), digest in any::<u64>(), seq in any::<u64>()) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            let msg = Message::Hello { version: VERSION, node, nonce, pools_digest: digest, resumed: seq % 2 == 0 };
            let frame = seal(&key, Direction::FromResponder, seq, &msg);
            prop_assert_eq!(open(&key, Direction::FromResponder, seq, &frame[4..]), Ok(msg));
        }

        #[test]
        fn arbitrary_bodies_are_refused_without_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let key = FrameKey::from_secret(b"key-key-key-key!");
            prop_assert!(open(&key, Direction::FromInitiator, 0, &body).is_err());
        }
    }
}
