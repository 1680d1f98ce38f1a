//! VRRPv3 advertisements for IPv4 (RFC 5798 section 5): encode, decode, checksum.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group of VRRP.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The only TTL a VRRP packet may arrive with.
pub const TTL: u8 = 255;
const VERSION: u8 = 3;
const TYPE_ADVERTISEMENT: u8 = 1;
const HEADER_LEN: usize = 8;

/// VRRPv3's unit of time: centiseconds, 12 bits on the wire (10 ms to 40.95 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centis(u16);

impl Centis {
    /// Largest value the 12-bit field holds.
    pub const MAX: Centis = Centis(0x0fff);

    /// From centiseconds, `None` outside 1..=4095.
    pub fn new(cs: u16) -> Option<Centis> {
        (1..=0x0fff).contains(&cs).then_some(Centis(cs))
    }

    /// The nearest value for `d`, clamped to 10 ms .. 40.95 s.
    pub fn from_duration(d: Duration) -> Centis {
        Centis(((d.as_millis() + 5) / 10).clamp(1, 0x0fff) as u16)
    }

    /// The raw count.
    pub fn get(self) -> u16 {
        self.0
    }

    /// As a duration.
    pub fn to_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

impl fmt::Display for Centis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", u32::from(self.0) * 10)
    }
}

/// A VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Virtual router id.
    pub vrid: u8,
    /// Sender's priority (0 = master is leaving, 255 = address owner).
    pub priority: u8,
    /// Sender's advertisement interval.
    pub interval: Centis,
    /// The virtual addresses.
    pub addresses: Vec<Ipv4Addr>,
}

/// Why a received packet was dropped (RFC 5798 section 7.1), one variant per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// Shorter than its headers.
    #[error("packet too short")]
    TooShort,
    /// Not IPv4 with protocol 112.
    #[error("not an IPv4 VRRP packet")]
    NotVrrp,
    /// IP TTL is not 255 (it crossed a router).
    #[error("IP TTL is not 255")]
    Ttl,
    /// Version field is not 3.
    #[error("VRRP version is not 3")]
    Version,
    /// Type is not ADVERTISEMENT.
    #[error("VRRP type is not advertisement")]
    Type,
    /// Length disagrees with the address count.
    #[error("length does not match the address count")]
    Length,
    /// Checksum mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// Advertisement interval of zero.
    #[error("advertisement interval is zero")]
    Interval,
    /// Another virtual router's packet.
    #[error("virtual router id is not ours")]
    Vrid,
    /// Sent by this node (looped back).
    #[error("sent by this node")]
    Own,
    /// Unicast mode: the sender is not a configured peer.
    #[error("sender is not a configured peer")]
    UnknownPeer,
}

impl DropReason {
    /// Every reason, for counters.
    pub const ALL: [DropReason; 11] = [
        DropReason::TooShort,
        DropReason::NotVrrp,
        DropReason::Ttl,
        DropReason::Version,
        DropReason::Type,
        DropReason::Length,
        DropReason::Checksum,
        DropReason::Interval,
        DropReason::Vrid,
        DropReason::Own,
        DropReason::UnknownPeer,
    ];

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::NotVrrp => "not_vrrp",
            DropReason::Ttl => "ttl",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::Length => "length",
            DropReason::Checksum => "checksum",
            DropReason::Interval => "interval",
            DropReason::Vrid => "vrid",
            DropReason::Own => "own",
            DropReason::UnknownPeer => "unknown_peer",
        }
    }
}

/// A received IPv4 packet: the fields of its IP header that VRRP checks, and the
/// advertisement it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// IP source.
    pub source: Ipv4Addr,
    /// IP destination.
    pub destination: Ipv4Addr,
    /// The advertisement.
    pub advertisement: Advertisement,
}

impl Advertisement {
    /// The VRRP message (no IP header), with its checksum for `source` -> `destination`.
    /// `pseudo_header` says whether the checksum covers the IPv4 pseudo-header (as
    /// RFC 5798 and keepalived do) or only the VRRP message (as some others do).
    pub fn encode(&self, source: Ipv4Addr, destination: Ipv4Addr, pseudo_header: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 4 * self.addresses.len());
        b.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(self.addresses.len().min(255) as u8);
        b.extend_from_slice(&(self.interval.get() & 0x0fff).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in self.addresses.iter().take(255) {
            b.extend_from_slice(&a.octets());
        }
        let sum = checksum(&b, pseudo_header.then_some((source, destination)));
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes a VRRP message (no IP header) sent from `source` to `destination`.
    pub fn decode(
        message: &[u8],
        source: Ipv4Addr,
        destination: Ipv4Addr,
        pseudo_header: bool,
    ) -> Result<Advertisement, DropReason> {
        if message.len() < HEADER_LEN {
            return Err(DropReason::TooShort);
        }
        if message[0] >> 4 != VERSION {
            return Err(DropReason::Version);
        }
        if message[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DropReason::Type);
        }
        let count = usize::from(message[3]);
        if message.len() != HEADER_LEN + 4 * count {
            return Err(DropReason::Length);
        }
        if checksum(message, pseudo_header.then_some((source, destination))) != 0 {
            return Err(DropReason::Checksum);
        }
        let interval = u16::from_be_bytes([message[4], message[5]]) & 0x0fff;
        let interval = Centis::new(interval).ok_or(DropReason::Interval)?;
        let addresses = message[HEADER_LEN..]
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect();
        Ok(Advertisement {
            vrid: message[1],
            priority: message[2],
            interval,
            addresses,
        })
    }
}

/// Parses a whole IPv4 packet as a raw socket delivers it: header checks, then the
/// advertisement.
pub fn decode_ipv4(packet: &[u8], pseudo_header: bool) -> Result<Received, DropReason> {
    if packet.len() < 20 {
        return Err(DropReason::TooShort);
    }
    if packet[0] >> 4 != 4 || packet[9] != IPPROTO_VRRP {
        return Err(DropReason::NotVrrp);
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < 20 || packet.len() < header_len || total < header_len || packet.len() < total {
        return Err(DropReason::TooShort);
    }
    if packet[8] != TTL {
        return Err(DropReason::Ttl);
    }
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let advertisement = Advertisement::decode(
        &packet[header_len..total],
        source,
        destination,
        pseudo_header,
    )?;
    Ok(Received {
        source,
        destination,
        advertisement,
    })
}

/// Internet checksum (RFC 1071) of `data`, preceded by the IPv4 pseudo-header of a
/// VRRP packet from `.0` to `.1` when given. Over data whose checksum field holds the
/// right value, the result is 0.
pub fn checksum(data: &[u8], pseudo: Option<(Ipv4Addr, Ipv4Addr)>) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    if let Some((src, dst)) = pseudo {
        add(&src.octets());
        add(&dst.octets());
        add(&[0, IPPROTO_VRRP]);
        add(&(data.len() as u16).to_be_bytes());
    }
    add(data);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    fn advert() -> Advertisement {
        Advertisement {
            vrid: 51,
            priority: 100,
            interval: Centis::new(100).unwrap(),
            addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
        }
    }

    /// Bytes worked out by hand from RFC 5798 section 5 and RFC 1071.
    #[test]
    fn encodes_known_bytes_with_the_pseudo_header() {
        let b = advert().encode(SRC, MULTICAST_V4, true);
        // 0x31 version 3 type 1 | vrid 51 | prio 100 | 1 address | interval 100 cs
        assert_eq!(&b[..6], &[0x31, 51, 100, 1, 0x00, 0x64]);
        assert_eq!(&b[8..], &[192, 168, 1, 10]);
        // 16-bit words: pseudo-header c0a8 0102 e000 0012 0070 000c (sum 0x1_a238), then
        // 3133 6401 0064 0000 c0a8 010a (sum 0x1_574a): 0x2_f982 folds to 0xf984, !0xf984.
        assert_eq!(u16::from_be_bytes([b[6], b[7]]), 0x067b);
    }

    #[test]
    fn encodes_known_bytes_without_the_pseudo_header() {
        let b = advert().encode(SRC, MULTICAST_V4, false);
        // 3133 + 6401 + 0064 + c0a8 + 010a = 0x1_574a folds to 0x574b, !0x574b = 0xa8b4.
        assert_eq!(u16::from_be_bytes([b[6], b[7]]), 0xa8b4);
        assert!(Advertisement::decode(&b, SRC, MULTICAST_V4, false).is_ok());
        assert_eq!(
            Advertisement::decode(&b, SRC, MULTICAST_V4, true),
            Err(DropReason::Checksum)
        );
    }

    #[test]
    fn round_trips() {
        let b = advert().encode(SRC, MULTICAST_V4, true);
        assert_eq!(
            Advertisement::decode(&b, SRC, MULTICAST_V4, true),
            Ok(advert())
        );
    }

    fn ip_packet(ttl: u8, message: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, IPPROTO_VRRP, 0, 0];
        p.extend_from_slice(&SRC.octets());
        p.extend_from_slice(&MULTICAST_V4.octets());
        let total = (p.len() + message.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(message);
        p
    }

    #[test]
    fn each_receive_check_has_its_reason() {
        let good = advert().encode(SRC, MULTICAST_V4, true);
        assert!(decode_ipv4(&ip_packet(255, &good), true).is_ok());
        assert_eq!(
            decode_ipv4(&ip_packet(64, &good), true),
            Err(DropReason::Ttl)
        );
        assert_eq!(
            decode_ipv4(&ip_packet(255, &good)[..10], true),
            Err(DropReason::TooShort)
        );
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(
            decode_ipv4(&ip_packet(255, &v2), true),
            Err(DropReason::Version)
        );
        let mut t = good.clone();
        t[0] = 0x32;
        assert_eq!(
            decode_ipv4(&ip_packet(255, &t), true),
            Err(DropReason::Type)
        );
        let mut count = good.clone();
        count[3] = 2;
        assert_eq!(
            decode_ipv4(&ip_packet(255, &count), true),
            Err(DropReason::Length)
        );
        let mut sum = good.clone();
        sum[7] ^= 1;
        assert_eq!(
            decode_ipv4(&ip_packet(255, &sum), true),
            Err(DropReason::Checksum)
        );
        let mut proto = ip_packet(255, &good);
        proto[9] = 6;
        assert_eq!(decode_ipv4(&proto, true), Err(DropReason::NotVrrp));
        let zero = Advertisement {
            interval: Centis(0),
            ..advert()
        };
        let z = zero.encode(SRC, MULTICAST_V4, true);
        assert_eq!(
            decode_ipv4(&ip_packet(255, &z), true),
            Err(DropReason::Interval)
        );
    }

    #[test]
    fn centiseconds() {
        assert_eq!(Centis::from_duration(Duration::from_millis(100)).get(), 10);
        assert_eq!(Centis::from_duration(Duration::from_secs(100)), Centis::MAX);
        assert_eq!(Centis::new(0), None);
        assert_eq!(Centis::new(4096), None);
        assert_eq!(
            Centis::new(250).unwrap().to_duration(),
            Duration::from_millis(2500)
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            vrid in 1u8..=255,
            priority in any::<u8>(),
            interval in 1u16..=4095,
            addresses in prop::collection::vec(any::<u32>(), 0..20),
            src in any::<u32>(),
            dst in any::<u32>(),
            pseudo in any::<bool>(),
        ) {
            let a = Advertisement {
                vrid,
                priority,
                interval: Centis::new(interval).unwrap(),
                addresses: addresses.into_iter().map(Ipv4Addr::from).collect(),
            };
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let bytes = a.encode(src, dst, pseudo);
            prop_assert_eq!(Advertisement::decode(&bytes, src, dst, pseudo), Ok(a));
        }

        #[test]
        fn any_single_bit_flip_is_caught(bit in 0usize..96, pseudo in any::<bool>()) {
            let a = Advertisement {
                vrid: 7,
                priority: 100,
                interval: Centis::new(100).unwrap(),
                addresses: vec![Ipv4Addr::new(10, 0, 0, 1)],
            };
            let src = Ipv4Addr::new(10, 0, 0, 2);
            let mut bytes = a.encode(src, MULTICAST_V4, pseudo);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Advertisement::decode(&bytes, src, MULTICAST_V4, pseudo).is_err());
        }

        #[test]
        fn arbitrary_packets_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), pseudo in any::<bool>()) {
            let _ = decode_ipv4(&bytes, pseudo);
        }
    }
}
